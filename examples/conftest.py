from __future__ import annotations

# The examples that show a report run the buggy code in an inner pytest session.
pytest_plugins = ["pytester"]
