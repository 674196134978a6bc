"""Server processes for tests: start, wait until ready, stop, and check nothing is left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import psutil
import pytest

BIN = Path(sys.executable).parent
CELLSERVE = str(BIN / "cellserve")
HYPERCORN = str(BIN / "hypercorn")


class Process:
    """A server subprocess whose output goes to a file (a full pipe would block it)."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=new_session,  # so that a test can signal the whole group
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, url: str, timeout: float = 120.0) -> None:
        """Poll /_cellserve/ready until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"server exited with {self.popen.returncode}:\n{self.output}")
            try:
                if httpx.get(url + "/_cellserve/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready after {timeout} s:\n{self.output}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            pytest.fail(f"process still running after {timeout} s:\n{self.output}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)
        self._file.close()


def kernel_pids(url: str) -> list[int]:
    health = httpx.get(url + "/_cellserve/health", timeout=10).json()
    pids = [kernel["pid"] for kernel in health["stats"]["kernels"]]
    assert pids and all(isinstance(pid, int) for pid in pids), health
    return pids


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(pids: list[int], timeout: float = 30.0) -> None:
    """The kernel processes end (an orphan may take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if is_running(pid)] == []


def run_quick(
    args: Sequence[str], timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command expected to finish on its own within `timeout` seconds; `env` adds
    variables to this process's environment."""
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        # argparse wraps help to the terminal width
        env={**os.environ, "COLUMNS": "120", **(env or {})},
    )
