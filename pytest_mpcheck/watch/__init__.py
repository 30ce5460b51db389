"""The per-test watch: session state, start sites, the reaper, ending leftovers, named resources."""
