"""The server process's open-files limit, raised to what the system allows.

Each kernel holds about 15 descriptors in the server (three zmq sockets, their context, two
output pipes) and each client connection one more, while the usual soft limit on Linux is 1024.
A server out of descriptors fails in the worst places: a replacement kernel cannot start, a
connection cannot be accepted. The hard limit is the system's real cap, and a process may raise
its soft limit up to it, as servers commonly do at start. Kernels inherit the raised limit.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# macOS reports an unlimited hard limit but refuses a soft limit above its per-process cap.
_UNLIMITED_FALLBACK = 10240


def raise_open_files_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (no-op where there is none)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.debug("cannot raise the open-files limit from %d: %s", soft, exc)
            return
        logger.debug("open-files limit raised from %d to %d", soft, target)
