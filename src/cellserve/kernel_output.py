"""What a kernel process writes to its own stdout and stderr, as cellserve log records.

Cell output reaches cellserve over IOPub; the process's file descriptors 1 and 2 carry the
rest: a library's warning at import, a C library's message, ipykernel's own notices, a crash
message before the kernel dies. Inherited, those bytes would reach the server's stderr raw,
breaking ``--log-format json`` and naming no kernel. Instead a local kernel starts with a pipe
on each, and every line read from them is one record of the ``cellserve.kernels.output``
logger naming the notebook and the kernel::

    WARNING cellserve.kernels.output: api.ipynb kernel 1f2e3d4c5b6a stderr: DeprecationWarning…

stderr lines are WARNING (a kernel writes there when something is off); stdout lines are
INFO: visible by default, as they were when inherited, but no sign of trouble. ``print`` in a
cell goes to IOPub, so fd 1 carries only what bypasses Python's streams (a C library, a
subprocess), which an operator may need to see, not only when debugging.

The pipes are read by the event loop whenever they are readable (``add_reader``, no thread),
so a kernel writing a lot never blocks on a full pipe; one line is cut at
``MAX_LINE_BYTES``. A kernel started by another provisioner (a remote one) keeps its own
output: the pipes are only handed to the local provisioner (or a subclass of it), which gives
them to ``Popen``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from importlib.metadata import entry_points
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

logger = logging.getLogger("cellserve.kernels.output")

MAX_LINE_BYTES = 8192
"""The longest line logged as is; the rest of a longer line is dropped and said to be."""
_READ_BYTES = 65536
_DRAIN_BYTES = 1 << 20  # read at most this much more once the kernel is stopped


class _Stream:
    """One pipe's read end, turned into log records line by line."""

    def __init__(self, name: str, level: int, read_fd: int, write_fd: int) -> None:
        self.name = name
        self.level = level
        self.read_fd = read_fd
        self.write_fd: int | None = write_fd
        self.where = "kernel"
        self._line = bytearray()
        self._dropped = 0  # bytes of the current line past MAX_LINE_BYTES

    def read(self) -> int:
        """Log the complete lines now readable; how many bytes were read (0: none waiting),
        or -1 at end of file or on an error."""
        try:
            data = os.read(self.read_fd, _READ_BYTES)
        except BlockingIOError:
            return 0
        except OSError:
            logger.debug("%s %s: reading failed", self.where, self.name, exc_info=True)
            return -1
        if not data:
            return -1
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end])
            self._emit()
            start = end + 1
        self._take(data[start:])
        return len(data)

    def _take(self, chunk: bytes) -> None:
        room = MAX_LINE_BYTES - len(self._line)
        self._line += chunk[:room]
        self._dropped += max(0, len(chunk) - room)

    def _emit(self) -> None:
        text = self._line.decode("utf-8", "replace").rstrip("\r")
        if self._dropped:
            text += f" [{self._dropped} more bytes dropped]"
        self._line.clear()
        self._dropped = 0
        logger.log(self.level, "%s %s: %s", self.where, self.name, text)

    def finish(self) -> None:
        """Log a last line that had no newline."""
        if self._line or self._dropped:
            self._emit()


class KernelOutput:
    """A kernel's stdout and stderr pipes, from launch to shutdown.

    ``launch_arguments()`` go to ``start_kernel``; once it returns, ``read_as(label, id)``
    starts logging; ``close()`` (after the process stopped, or when the launch failed)
    logs what is left and closes every descriptor. An instance for a kernel that is not
    local is inert.
    """

    def __init__(self, streams: list[_Stream]) -> None:
        self._streams = streams
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_manager(cls, manager: Any) -> KernelOutput:
        """Pipes for the kernel `manager` is about to start, if its provisioner is local."""
        if not _launched_by_popen(manager):
            return cls([])
        streams = []
        for name, level in (("stdout", logging.INFO), ("stderr", logging.WARNING)):
            read_fd, write_fd = os.pipe()
            os.set_blocking(read_fd, False)
            streams.append(_Stream(name, level, read_fd, write_fd))
        return cls(streams)

    def launch_arguments(self) -> dict[str, int]:
        """``stdout=``/``stderr=`` for ``Popen``, through jupyter_client's local provisioner."""
        return {s.name: s.write_fd for s in self._streams if s.write_fd is not None}

    def read_as(self, label: str, kernel_id: str) -> None:
        """The kernel is launched: log its lines as those of `label`'s kernel `kernel_id`."""
        self._close_write_ends()  # the kernel holds its copies; EOF comes when it exits
        self._loop = asyncio.get_running_loop()
        # In a context of their own: a kernel started during a request must not tag all its
        # lines with that request's id.
        unrelated = contextvars.Context()
        for stream in self._streams:
            stream.where = f"{label} kernel {kernel_id}"
            self._loop.add_reader(stream.read_fd, unrelated.run, self._on_readable, stream)

    def _on_readable(self, stream: _Stream) -> None:
        if stream.read() < 0:
            self._close(stream)

    def close(self) -> None:
        """Log what the stopped kernel left in the pipes, then close them; safe to repeat."""
        self._close_write_ends()
        for stream in list(self._streams):
            drained = 0
            while drained < _DRAIN_BYTES and (read := stream.read()) > 0:
                drained += read
            self._close(stream)

    def _close(self, stream: _Stream) -> None:
        if stream not in self._streams:
            return
        self._streams.remove(stream)
        stream.finish()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(stream.read_fd)
        os.close(stream.read_fd)

    def _close_write_ends(self) -> None:
        for stream in self._streams:
            if stream.write_fd is not None:
                os.close(stream.write_fd)
                stream.write_fd = None


def _launched_by_popen(manager: Any) -> bool:
    """Whether `manager`'s kernelspec names jupyter_client's local provisioner or a subclass
    of it: those hand ``stdout=``/``stderr=`` to ``Popen``; another one might not accept them."""
    factory = KernelProvisionerFactory.instance(parent=manager.parent)
    stanza = manager.kernel_spec.metadata.get("kernel_provisioner", {})
    name = stanza.get("provisioner_name", factory.default_provisioner_name)
    # The factory's cache holds the entry points found when it was made; if the name is not
    # there, look again (scanning every installed distribution), as starting the kernel will.
    entry_point = factory.provisioners.get(name) or next(
        iter(entry_points(group=KernelProvisionerFactory.GROUP_NAME, name=name)), None
    )
    if entry_point is None:
        return False  # unknown: starting the kernel says so
    try:
        provisioner = entry_point.load()
    except Exception:
        return False
    return isinstance(provisioner, type) and issubclass(provisioner, LocalProvisioner)
