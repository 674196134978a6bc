"""One Jupyter kernel: start, seed, run a request, interrupt, shut down.

This is the only module that talks to jupyter_client and nbclient. Seed cells run through
nbclient (its errors carry the formatted traceback). Requests take one of two paths:

* **fast** (IPython kernels): one ``comm_msg`` to the dispatcher in ``kernel_dispatch.py``;
* **execute** (any kernel language; also streaming routes): an ``execute_request`` that binds
  ``REQUEST`` to an escaped string literal, then one that runs the cell, as Kernel Gateway does.

Both use ``store_history=False``, Python kernels start with IPython's history off, and shell
kernels run with their history off (``HISTORY_OFF``), so no request reaches the disk.
Messages are turned into ``CellOutput`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import nbformat
import zmq
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from cellserve.cells import CellCall, CellError, CellOutcome, CellOutput, PendingCall, StdoutSink
from cellserve.channel_reader import ChannelReader
from cellserve.dispatch_common import LimitedText, hides_value
from cellserve.exceptions import KernelDied, KernelError, SeedError
from cellserve.in_flight import CallsInFlight
from cellserve.kernel_output import KernelOutput
from cellserve.memory_limit import check_allocation, limit_kernel_memory
from cellserve.notebook import SeedCell
from cellserve.wire import BadMessage, CommWire

logger = logging.getLogger("cellserve.kernels")

# nbclient's own lines repeat what SeedError says (or, while stopping, are noise).
_NBCLIENT_LOG = logging.getLogger("cellserve.kernels.nbclient")
_NBCLIENT_LOG.setLevel(logging.CRITICAL)
_COMM_TARGET = "cellserve.dispatch"
_POLL_SECONDS = 0.25
_HIDDEN_ENV = ("KG_AUTH_TOKEN", "CELLSERVE_AUTH_TOKEN")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

HISTORY_OFF = {"bash": "set +o history; unset HISTFILE"}
"""Code run first in kernels of these languages: their shells would save every request."""


@dataclass(frozen=True)
class KernelConfig:
    """How to start and prepare every kernel of one notebook."""

    kernel_name: str
    language: str
    cwd: Path
    fast: bool = True
    max_output_chars: int = 10_000_000
    startup_timeout: float = 60.0
    seed_timeout: float | None = 600.0
    transport: str = "ipc"
    memory_limit: int | None = None  # bytes of address space (memory_limit.py)
    label: str = "notebook"
    """The notebook's name in log lines."""
    seed_output: bool = False
    """Log what seed cells print at INFO (always at DEBUG)."""

    @property
    def uses_dispatcher(self) -> bool:
        return self.fast and self.is_python

    @property
    def is_python(self) -> bool:
        return self.language.lower() == "python"


def kernel_environment() -> dict[str, str]:
    """The server's environment, plus ``KERNEL_GATEWAY=1``, minus auth tokens.

    ``HISTFILE`` is empty, so a shell kernel (bash, zsh) saves no history even before
    ``HISTORY_OFF`` runs.
    """
    env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
    env["KERNEL_GATEWAY"] = "1"
    env["HISTFILE"] = ""
    return env


def request_assignment(language: str, request_json: str, variable: str = "REQUEST") -> str:
    """Code that binds `variable` to `request_json` as an escaped literal in `language`."""
    lang = language.lower()
    if lang == "bash":
        return f"{variable}='" + request_json.replace("'", "'\\''") + "'"
    if lang == "perl":
        escaped = request_json.replace("\\", "\\\\").replace("'", "\\'")
        return f"my ${variable} = '{escaped}';"
    # A JSON string literal, ASCII only, with the interpolation sigils of Julia, Scala, Ruby,
    # Perl-like and shell-like languages escaped, is a valid and inert string literal in
    # Python, R, Julia, Scala, Ruby and C-like languages.
    literal = json.dumps(request_json)
    for sigil in "$@`#":
        literal = literal.replace(sigil, f"\\u{ord(sigil):04x}")
    return f"{variable} = {literal}"


class Kernel:
    """A started kernel with its client; one request at a time (the scheduler guarantees it)."""

    def __init__(self, manager: Any, client: Any, config: KernelConfig) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self._manager = manager
        self._client = client
        self._wire: CommWire | None = None
        self._known_keys: set[str] = set()
        self._unsupported_keys: set[str] = set()
        self._exiting = False
        # Several fast-path calls may be in flight (pipelining). One task reads IOPub at a
        # time; answers it reads for another call in flight are kept in `_calls`, and
        # `_changed` wakes the calls waiting for them.
        self._reading = False
        self._changed = asyncio.Event()
        self._calls = CallsInFlight()
        self._readers: dict[Any, ChannelReader] = {}
        self._output = KernelOutput([])
        self._seeded = False

    @property
    def pid(self) -> int | None:
        pid = getattr(self._manager.provisioner, "pid", None)
        return int(pid) if pid is not None else None

    @classmethod
    async def start(cls, config: KernelConfig) -> Kernel:
        """Start a kernel process and wait until it answers."""
        manager = AsyncKernelManager(kernel_name=config.kernel_name, **_connection(config))
        if config.memory_limit is not None:
            limit_kernel_memory(manager, config.memory_limit)
        extra = ["--HistoryManager.enabled=False"] if config.is_python else []
        output = KernelOutput.for_manager(manager)
        try:
            await manager.start_kernel(
                env=kernel_environment(),
                cwd=str(config.cwd),
                extra_arguments=extra,
                **output.launch_arguments(),
            )
        except BaseException as exc:
            # Cancelled or failed half-way: a process may exist already; never leave it behind.
            with anyio.CancelScope(shield=True):
                if manager.has_kernel:
                    await manager.shutdown_kernel(now=True)
                output.close()
            if isinstance(exc, Exception):
                raise KernelError(f"cannot start kernel {config.kernel_name!r}: {exc}") from exc
            raise
        # One zmq context per kernel, shared with its manager, and only the channels cellserve
        # reads: no heartbeat thread (the manager tells whether the process lives) and no stdin
        # (requests never get to prompt). 15 descriptors and 2 threads per kernel instead of 27
        # and 5, which counts when a pool restarts kernels under load.
        client = manager.client(context=manager.context)
        client.start_channels(stdin=False, hb=False)
        kernel = cls(manager, client, config)
        kernel._output = output
        output.read_as(config.label, kernel.id)
        try:
            await client.wait_for_ready(timeout=config.startup_timeout)
        except BaseException as exc:
            await kernel.shutdown()
            if isinstance(exc, Exception):
                hint = " (is --kernel-memory-limit too low?)" if config.memory_limit else ""
                raise KernelError(
                    f"kernel {config.kernel_name!r} did not start: {exc}{hint}"
                ) from exc
            raise
        return kernel

    async def is_alive(self) -> bool:
        """Whether the kernel process lives, as its provisioner sees it (a local process poll,
        or whatever a remote provisioner does)."""
        try:
            return bool(await self._manager.is_alive())
        except Exception as exc:
            raise KernelError(f"cannot tell whether kernel {self.id} lives: {exc!r}") from exc

    async def seed(
        self, seeds: Sequence[SeedCell], on_cell: Callable[[int, int], None] | None = None
    ) -> None:
        """Run the seed cells in order; a failure is a SeedError naming the cell.

        `on_cell(i, n)` is told before seed cell `i` (1-based) of `n` runs. A kernel is
        seeded once: afterwards its replies are read here, not by nbclient.
        """
        if self._seeded:
            raise KernelError(f"kernel {self.id} is seeded already")
        history_off = HISTORY_OFF.get(self.config.language.lower())
        if history_off is not None:
            output = await self._execute(history_off, deadline=time.monotonic() + 30)
            if output.error is not None:
                raise KernelError(f"cannot turn the kernel's history off: {output.error.evalue}")
        cells = [nbformat.v4.new_code_cell(s.source) for s in seeds]  # type: ignore[no-untyped-call]
        notebook = nbformat.v4.new_notebook(cells=cells)  # type: ignore[no-untyped-call]
        runner = NotebookClient(
            notebook,
            km=self._manager,
            timeout=self.config.seed_timeout,
            allow_errors=False,
            log=_NBCLIENT_LOG,
        )
        runner.kc = self._client
        for index, (seed, cell) in enumerate(zip(seeds, notebook.cells, strict=True)):
            if on_cell is not None:
                on_cell(index + 1, len(seeds))
            where = f"{self.config.label} kernel {self.id}: seed cell {seed.number}"
            logger.info("%s (%d of %d) running", where, index + 1, len(seeds))
            started = time.monotonic()
            try:
                await runner.async_execute_cell(cell, index, store_history=False)
                logger.info("%s done in %.2f s", where, time.monotonic() - started)
                self._log_seed_output(where, cell)
            except CellExecutionError as exc:
                raise SeedError(
                    f"seed cell {seed.number} raised {exc.ename}: {exc.evalue}",
                    cell_index=seed.number,
                    traceback=_ANSI_ESCAPE.sub("", str(exc)),
                ) from exc
            except (CellTimeoutError, TimeoutError) as exc:
                raise SeedError(
                    f"seed cell {seed.number} ran longer than {self.config.seed_timeout} s",
                    cell_index=seed.number,
                    traceback="",
                ) from exc
            except DeadKernelError as exc:
                raise SeedError(
                    f"the kernel died while running seed cell {seed.number}",
                    cell_index=seed.number,
                    traceback="",
                ) from exc
        if self.config.is_python:
            await self._install_dispatcher()
        # nbclient is done with the kernel: its replies are read here from now on.
        self._seeded = True
        for channel in (self._client.shell_channel, self._client.iopub_channel):
            self._reader(channel).take_over()

    def _log_seed_output(self, where: str, cell: Any) -> None:
        level = logging.INFO if self.config.seed_output else logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        for output in cell.get("outputs", ()):
            if output.get("output_type") == "stream":
                for line in str(output.get("text", "")).splitlines():
                    logger.log(level, "%s printed: %s", where, line)

    async def _install_dispatcher(self) -> None:
        """Make the kernel's output always encodable; in fast mode, install the dispatcher."""
        common, source = await anyio.to_thread.run_sync(_dispatcher_sources)
        install = (
            f"    namespace['install'](get_ipython(), {_COMM_TARGET!r}, "
            f"{self.config.max_output_chars})\n"
        )
        bootstrap = (
            "def __cellserve_bootstrap():\n"
            "    namespace = {'__name__': 'cellserve_dispatch'}\n"
            f"    exec(compile({common!r}, '<cellserve dispatcher>', 'exec'), namespace)\n"
            f"    exec(compile({source!r}, '<cellserve dispatcher>', 'exec'), namespace)\n"
            "    namespace['make_output_encodable'](get_ipython().kernel.session)\n"
            f"{install if self.config.uses_dispatcher else ''}"
            "__cellserve_bootstrap()\n"
            "del __cellserve_bootstrap\n"
        )
        output = await self._execute(bootstrap, deadline=time.monotonic() + 30)
        if output.error is not None and self.config.uses_dispatcher:
            raise KernelError(f"cannot install the dispatcher: {output.error.traceback}")
        if output.error is not None:  # not IPython: execute mode works without it
            logger.warning("kernel %s: %s", self.id, output.error.evalue)
            return
        if not self.config.uses_dispatcher:
            return
        comm_id = uuid.uuid4().hex
        self._send("comm_open", {"comm_id": comm_id, "target_name": _COMM_TARGET, "data": {}})
        session = self._client.session
        self._wire = CommWire(session.auth, session.session, session.username, comm_id)

    def can_pipeline(self, call: CellCall) -> bool:
        """Whether `call` takes the fast path, so it may be sent while another one runs.

        A batch still open is not: it must take in what queues until a kernel is free for it.
        """
        return (
            self._wire is not None
            and call.seal is None
            and not call.stream
            and _code_key(call.source) not in self._unsupported_keys
        )

    @property
    def calls_held(self) -> int:
        """Fast-path calls sent and not yet answered, with those whose requester left."""
        return len(self._calls)

    def begin(self, call: CellCall) -> PendingCall:
        """Send `call` now if it takes the fast path; ``finish`` collects the answer.

        Split from ``finish`` so that the pool can hand a freed kernel its next request
        without waiting for the requesting task to be scheduled. A batch is sealed here.
        """
        if call.seal is not None:
            call = call.seal()
        key = _code_key(call.source)
        if self._wire is None or call.stream or key in self._unsupported_keys:
            return PendingCall(call, key, None)
        return PendingCall(call, key, self._send_dispatch(call, key, with_code=False))

    async def finish(
        self, pending: PendingCall, *, timeout: float | None, on_stdout: StdoutSink | None = None
    ) -> CellOutcome:
        """The answer to a begun call; TimeoutError past `timeout`, KernelDied if it exits
        (KernelOutOfMemory if the cell failed an allocation under a memory limit)."""
        outcome = await self._finish(pending, timeout, on_stdout)
        check_allocation(outcome, self.config.memory_limit)
        return outcome

    async def _finish(
        self, pending: PendingCall, timeout: float | None, on_stdout: StdoutSink | None
    ) -> CellOutcome:
        call, key = pending.call, pending.key
        if pending.msg_id is not None:
            answer = await self._dispatch_answer(pending, timeout)
            if answer is not None:
                return answer
            self._unsupported_keys.add(key)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        # Bound by an execution of its own, as Kernel Gateway does: the cell's traceback then
        # counts the cell's own lines and never quotes the request's data in the log.
        assignment = request_assignment(self.config.language, call.request_json, call.variable)
        await self._execute(assignment, deadline)
        cell = await self._execute(call.source, deadline, on_stdout)
        if cell.result is not None and self.config.is_python and hides_value(call.source):
            # IPython checks the semicolon against its history, which requests never enter.
            cell = replace(cell, result=None)
        info = None
        if call.response_info is not None and cell.error is None:
            info = await self._execute(call.response_info, deadline)
        return CellOutcome(cell, info, kernel_exiting=self._exiting)

    def _send_dispatch(self, call: CellCall, key: str, *, with_code: bool) -> str:
        """One comm message to the dispatcher; route code rides along when it may be unknown."""
        data: dict[str, Any] = {"key": key, "info_key": None, "request": call.request_json}
        if call.variable != "REQUEST":
            data["variable"] = call.variable
        if with_code or key not in self._known_keys:
            data["code"] = call.source
        if call.response_info is not None:
            info_key = _code_key(call.response_info)
            data["info_key"] = info_key
            if with_code or info_key not in self._known_keys:
                data["info_code"] = call.response_info
        assert self._wire is not None
        msg_id, frames = self._wire.comm_msg(data)
        try:
            # Sent at once, without a zmq future: the queue to the kernel is far from full.
            self._reader(self._client.shell_channel).socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise KernelError(f"kernel {self.id} takes no more messages") from None
        except zmq.ZMQError as exc:
            raise KernelError(f"cannot send to kernel {self.id}: {exc}") from exc
        self._calls.sent(msg_id)
        return msg_id

    async def _dispatch_answer(
        self, pending: PendingCall, timeout: float | None
    ) -> CellOutcome | None:
        """The dispatcher's answer, or None when the route needs execute_request instead.

        The call is sent again, with its code, once: when the kernel lost the route's code,
        or when an interrupt meant for the call ahead of it (pipelining) reached it instead.
        """
        msg_id = pending.msg_id
        assert msg_id is not None
        for attempt in range(2):
            try:
                answer = await self._comm_answer(msg_id, timeout)
            except TimeoutError:
                self._calls.leave(msg_id, None)  # the pool interrupts it
                raise
            except BaseException:
                self._calls.leave(msg_id, timeout)  # abandoned: it may still run
                raise
            sent_after = self._calls.forget(msg_id)
            self._known_keys.add(pending.key)
            if pending.call.response_info is not None:
                self._known_keys.add(_code_key(pending.call.response_info))
            if answer["status"] == "unsupported":
                return None
            stray_interrupt = sent_after != self._calls.interrupts and _hit_by_interrupt(answer)
            if answer["status"] == "ok" and (attempt == 1 or not stray_interrupt):
                info = answer["info"]
                return CellOutcome(
                    _output_from_answer(answer["cell"]),
                    _output_from_answer(info) if info is not None else None,
                    kernel_exiting=bool(answer.get("exiting")),
                )
            if attempt == 0:
                msg_id = self._send_dispatch(pending.call, pending.key, with_code=True)
        raise KernelError("the dispatcher lost the route's code twice")

    async def _comm_answer(self, msg_id: str, timeout: float | None) -> dict[str, Any]:
        """The comm answer to `msg_id`, read by this task or by another call's task."""
        while (answer := self._calls.answer(msg_id)) is None:
            deadline = self._calls.deadline_of(msg_id, timeout)
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            horizon = min(deadline, now + _POLL_SECONDS)
            if self._reading:
                await self._wait_changed(horizon)
                continue
            self._reading = True
            try:
                self._route(
                    await self._next_frames(self._client.iopub_channel, horizon, skip_status=True)
                )
            except TimeoutError:
                if time.monotonic() >= self._calls.deadline_of(msg_id, timeout):
                    raise
                if not await self.is_alive():
                    raise KernelDied(f"kernel {self.id} (pid {self.pid}) exited") from None
            finally:
                self._reading = False
                self._notify()
        return answer

    def _route(self, frames: list[bytes]) -> bool:
        """Keep a comm answer for the call in flight it belongs to; False if not a comm answer."""
        assert self._wire is not None
        try:
            parsed = self._wire.answer(frames)
        except BadMessage as exc:
            logger.warning("kernel %s: dropped %s", self.id, exc)
            return True
        if parsed is None:
            return False
        self._calls.answered(*parsed)
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self, until: float) -> None:
        """Wait until the reader stored an answer or stepped down, or until `until`."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with _deadline(until):
                await changed.wait()

    async def _become_reader(self, deadline: float) -> None:
        while self._reading:
            if time.monotonic() >= deadline:
                raise TimeoutError
            await self._wait_changed(min(deadline, time.monotonic() + _POLL_SECONDS))
        self._reading = True

    async def _execute(
        self, code: str, deadline: float, on_stdout: StdoutSink | None = None
    ) -> CellOutput:
        msg_id = self._send(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": False,
            },
        )
        await self._become_reader(deadline)
        try:
            return await self._read_execution(msg_id, deadline, on_stdout)
        finally:
            self._reading = False
            self._notify()

    async def _read_execution(
        self, msg_id: str, deadline: float, on_stdout: StdoutSink | None
    ) -> CellOutput:
        """Collect `msg_id`'s output until the kernel is idle; comm answers for calls in
        flight met on the way go to the inbox."""
        session = self._client.session
        stdout = LimitedText(self.config.max_output_chars)
        result: Mapping[str, Any] | None = None
        displays: list[Mapping[str, Any]] = []
        error: CellError | None = None
        while True:
            frames = await self._next_frames(self._client.iopub_channel, deadline)
            if self._wire is not None and self._route(frames):
                self._notify()
                continue
            _, message = session.feed_identities(frames)
            msg = session.deserialize(message)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "stream" and content.get("name", "stdout") == "stdout":
                kept = stdout.write(content["text"])
                if on_stdout is not None and kept:
                    await on_stdout(content["text"][:kept])
            elif kind == "execute_result":
                if stdout.admit(content["data"]):
                    result = content["data"]
            elif kind == "display_data":
                if stdout.admit(content["data"]):
                    displays.append(content["data"])
            elif kind == "error":
                error = CellError(
                    content["ename"], content["evalue"], "\n".join(content.get("traceback", []))
                )
        await self._drain_shell_reply(msg_id, deadline)
        return CellOutput(stdout.text, stdout.truncated, result, tuple(displays), error)

    async def _drain_shell_reply(self, msg_id: str, deadline: float) -> None:
        while True:
            reply = await self._next(self._client.shell_channel, deadline)
            if reply["parent_header"].get("msg_id") == msg_id:
                payloads = reply["content"].get("payload") or []
                if any(p.get("source") == "ask_exit" and not p.get("keepkernel") for p in payloads):
                    self._exiting = True  # the cell called exit(): the kernel stops soon
                return

    async def _next(self, channel: Any, deadline: float) -> dict[str, Any]:
        """The next message from `channel`, decoded by jupyter_client."""
        session = self._client.session
        _, message = session.feed_identities(await self._next_frames(channel, deadline))
        decoded: dict[str, Any] = session.deserialize(message)
        return decoded

    async def _next_frames(
        self, channel: Any, deadline: float, *, skip_status: bool = False
    ) -> list[bytes]:
        """The next message's frames from `channel`, watching the deadline and the process.

        With `skip_status`, busy/idle messages are dropped by their topic frame: the fast
        path never needs them, and they are two of the three messages each request causes.
        """
        reader = self._reader(channel)
        while True:
            try:
                frames = reader.read_nowait()
                if frames is None:
                    remaining = deadline - time.monotonic()
                    if remaining > 0 and await reader.wait(min(_POLL_SECONDS, remaining)):
                        continue
                    if time.monotonic() >= deadline:
                        raise TimeoutError
                    if not await self.is_alive():
                        raise KernelDied(f"kernel {self.id} (pid {self.pid}) exited")
                    continue
            except zmq.ZMQError as exc:
                raise KernelError(f"cannot read from kernel {self.id}: {exc}") from exc
            if skip_status and frames[0].endswith(b".status"):
                continue
            return frames

    def _reader(self, channel: Any) -> ChannelReader:
        reader = self._readers.get(channel)
        if reader is None:
            reader = self._readers[channel] = ChannelReader(channel.socket)
        return reader

    def _send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self._client.session.msg(msg_type, content)
        try:
            self._client.session.send(self._reader(self._client.shell_channel).socket, msg)
        except zmq.ZMQError as exc:
            raise KernelError(f"cannot send to kernel {self.id}: {exc}") from exc
        return str(msg["header"]["msg_id"])

    async def interrupt(self, grace: float) -> bool:
        """Interrupt the running cell; True once the kernel answers again within `grace`."""
        self._calls.interrupts += 1
        try:
            await self._manager.interrupt_kernel()
        except Exception as exc:
            logger.warning("interrupting kernel %s failed: %s", self.id, exc)
            return False
        try:
            msg_id = self._send("kernel_info_request", {})
            await self._drain_shell_reply(msg_id, time.monotonic() + grace)
        except Exception:
            return False
        return True

    async def shutdown(self) -> None:
        """Stop the kernel process for good; safe to call twice and under cancellation."""
        with anyio.CancelScope(shield=True):
            for reader in self._readers.values():
                reader.release()
            try:
                self._client.stop_channels()
            except Exception:
                logger.debug("closing channels of kernel %s failed", self.id, exc_info=True)
            try:
                with anyio.move_on_after(10):
                    await self._manager.shutdown_kernel(now=True)
            except Exception:
                logger.debug("shutting down kernel %s failed", self.id, exc_info=True)
            provisioner = self._manager.provisioner
            try:
                with anyio.move_on_after(10):
                    if provisioner is not None and await provisioner.poll() is None:
                        logger.warning("kernel %s outlived its shutdown; killing it", self.id)
                        await provisioner.kill()
            except Exception:
                logger.warning("killing kernel %s failed", self.id, exc_info=True)
            self._output.close()  # after the process is gone: its last lines are logged


@functools.cache
def _private_dir() -> Path:
    """A folder of this process's own, readable by its user alone (``mkdtemp`` makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cellserve-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _connection(config: KernelConfig) -> dict[str, str]:
    """Where a kernel's connection file (and, over IPC, its sockets) live: a private folder."""
    stem = _private_dir() / f"kernel-{uuid.uuid4().hex[:12]}"
    files = {"connection_file": f"{stem}.json"}
    if config.transport == "ipc":
        files |= {"transport": "ipc", "ip": f"{stem}-ipc"}
    return files


@functools.cache
def _dispatcher_sources() -> tuple[str, str]:
    """The source sent to each kernel: ``dispatch_common.py``, then ``kernel_dispatch.py``."""
    package = resources.files("cellserve")
    common = package.joinpath("dispatch_common.py").read_text("utf-8")
    return common, package.joinpath("kernel_dispatch.py").read_text("utf-8")


@functools.lru_cache(maxsize=1024)
def _code_key(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()


def _hit_by_interrupt(answer: Mapping[str, Any]) -> bool:
    error = answer["cell"]["error"]
    return error is not None and error["ename"] == "KeyboardInterrupt"


def _deadline(deadline: float) -> asyncio.Timeout:
    """A timeout context raising TimeoutError at `deadline` (``time.monotonic`` time)."""
    if deadline == math.inf:
        return asyncio.timeout_at(None)
    return asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic())


def _output_from_answer(answer: Mapping[str, Any]) -> CellOutput:
    error = answer["error"]
    return CellOutput(
        stdout=answer["stdout"],
        truncated=answer["truncated"],
        result=answer["result"],
        displays=tuple(answer["displays"]),
        error=CellError(error["ename"], error["evalue"], error["traceback"]) if error else None,
    )
