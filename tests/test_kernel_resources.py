"""What a kernel costs the server process in descriptors and threads, and that a killed kernel
gives them all back: a pool that restarts kernels under load must not run out of either."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import anyio
import pytest

from cellserve.cells import CellCall
from cellserve.kernels import Kernel, KernelConfig


def _descriptors() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.mark.anyio
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
async def test_a_kernel_holds_few_descriptors_and_no_thread_and_a_killed_one_leaves_none(
    tmp_path: Path,
) -> None:
    """Shell, IOPub and control sockets on one zmq context, and the two output pipes: no
    heartbeat thread, no stdin socket, no second context (27 descriptors and a thread before)."""
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path)
    before, threads = _descriptors(), threading.active_count()
    kernel = await Kernel.start(config)
    try:
        with anyio.fail_after(60):
            outcome = await kernel.finish(kernel.begin(CellCall("print(1)", "{}")), timeout=60)
        assert outcome.cell.stdout == "1\n"
        assert len(_descriptors() - before) <= 16
        assert threading.active_count() == threads
        assert kernel.pid is not None
        os.kill(kernel.pid, signal.SIGKILL)
    finally:
        await kernel.shutdown()
    assert _descriptors() - before == set()
    assert threading.active_count() == threads
