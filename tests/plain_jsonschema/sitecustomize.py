"""Run by every Python process the tests start (``tests/conftest.py`` puts this folder on
``PYTHONPATH``): jsonschema without its ``rfc3987_syntax`` backend, as a plain install has it.
See ``tests/conftest.py`` for why."""

import sys

sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
