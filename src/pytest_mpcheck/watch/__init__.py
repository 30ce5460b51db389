"""The per-test watch: start sites, the reaper, ending leftovers, named resources, helpers."""
