"""The optional C hot path of the checked locks; everything else is in ``pyproject.toml``.

``optional=True``: where it cannot be compiled (no C compiler), the package installs all the same
and ``pytest_mpcheck.locks.checked`` uses its pure-Python hot path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pytest_mpcheck.locks._lockrec", ["src/pytest_mpcheck/locks/_lockrec.c"], optional=True
        ),
    ],
)
