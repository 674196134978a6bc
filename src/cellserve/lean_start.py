"""What the ``cellserve`` command does before the package imports nbformat.

``jsonschema``, which nbformat imports, loads its optional format-checking backends at once.
One of them, ``rfc3987_syntax`` (installed with ``jsonschema[format-nongpl]``, so by
jupyter_server and in most JupyterLab environments), compiles some thirty grammars on import:
1.3 to 3.3 s on 2 cores, when the rest of ``cellserve serve``'s imports take 0.4 s. The command,
and the worker processes it spawns (which inherit its ``argv``), mark that module absent, so
jsonschema skips it as it does in a plain ``pip install cellserve``: the ``iri`` and
``iri-reference`` formats then go unchecked, in every environment alike. An application that
imports cellserve keeps its own jsonschema untouched.
"""

import os
import sys


def is_the_command_line() -> bool:
    """Whether this process is the ``cellserve`` command (or one of its workers)."""
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "cellserve"


if is_the_command_line():
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None: absent
