"""Operating-system plumbing: procfs, stacks, call sites, scratch files, at-fork work.

None of these modules imports pytest.
"""
