"""Operating-system plumbing: procfs, prctl, stacks, call sites, scratch files, at-fork work,
bounded polling.

None of these modules imports pytest.
"""
