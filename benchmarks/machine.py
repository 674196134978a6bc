"""What machine the benchmarks ran on, and how busy other people's processes kept it.

Benchmarks on a shared machine are only as good as the note on what else was running. The
``LoadMonitor`` samples, every few seconds for the whole run, the CPU used by every process
that is not part of this run's process tree (the runner, wrk, the servers, their kernels),
so each measurement can carry the background load it was taken under.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil


def describe_machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return f"{psutil.cpu_count()} × {cpu}, {memory:.0f} GiB RAM, {platform.platform()}"


@dataclass(frozen=True)
class LoadSample:
    """One interval: CPU % used outside this run (100 = one core busy), and by whom."""

    at: float  # seconds since the monitor started
    foreign_cpu_percent: float
    loadavg_1m: float
    top: tuple[str, ...]


class LoadMonitor:
    """A thread sampling foreign CPU use every `interval` seconds; use as a context manager.

    A process is foreign unless it descends from this one. Processes that start and end
    within one interval are missed, so the figures are a lower bound.
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[LoadSample] = []
        self._seconds: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> LoadMonitor:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> float:
        return time.monotonic() - self._started

    def _run(self) -> None:
        seen: dict[tuple[int, float], float] = {}
        last = time.time()
        self._cpu_by_process(seen, last)  # the baseline: CPU used before the run is not counted
        while not self._stop.wait(self.interval):
            now = time.time()
            used = self._cpu_by_process(seen, last)
            elapsed = now - last
            last = now
            busy = sorted(used.items(), key=lambda item: item[1], reverse=True)
            self.samples.append(
                LoadSample(
                    at=round(self.now(), 1),
                    foreign_cpu_percent=round(100 * sum(used.values()) / elapsed, 1),
                    loadavg_1m=round(os.getloadavg()[0], 2),
                    top=tuple(
                        f"{name} {100 * cpu / elapsed:.0f}%"
                        for name, cpu in busy[:3]
                        if cpu / elapsed >= 0.05
                    ),
                )
            )
            self._seconds.update(used)

    def _cpu_by_process(self, seen: dict[tuple[int, float], float], since: float) -> Counter[str]:
        """CPU seconds used since the last call by each foreign process name."""
        ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
        used: Counter[str] = Counter()
        for process in psutil.process_iter(["name", "create_time", "cpu_times"]):
            if process.pid in ours or process.info["cpu_times"] is None:
                continue
            key = (process.pid, process.info["create_time"])
            total = process.info["cpu_times"].user + process.info["cpu_times"].system
            previous = seen.get(key)
            if previous is None:
                # Started since the last sample: all its CPU is recent. Otherwise (the
                # baseline, or a process that just stopped being ours) count from now on.
                previous = 0.0 if key[1] >= since else total
            seen[key] = total
            if total > previous:
                used[process.info["name"] or "?"] += total - previous
        return used

    def mean_between(self, start: float, end: float) -> float | None:
        """Mean foreign CPU % of the samples taken between `start` and `end` (``now()``)."""
        values = [s.foreign_cpu_percent for s in self.samples if start <= s.at <= end + 1e-9]
        return round(statistics.mean(values), 1) if values else None

    def report(self) -> dict[str, Any]:
        values = [s.foreign_cpu_percent for s in self.samples]
        if not values:
            return {"summary": "not sampled.", "samples": []}
        busy = sum(1 for v in values if v >= 50)
        heaviest = ", ".join(f"{name} {cpu:.0f} s" for name, cpu in self._seconds.most_common(3))
        loads = [s.loadavg_1m for s in self.samples]
        summary = (
            f"processes outside the benchmark used {statistics.mean(values):.0f}% CPU on "
            f"average (100% = one core of {psutil.cpu_count()}), sampled every "
            f"{self.interval:.0f} s over the whole run; median {statistics.median(values):.0f}%, "
            f"max {max(values):.0f}%; {busy} of {len(values)} samples at ≥ 50%. "
            f"Most CPU: {heaviest or 'none'}. 1-minute load average "
            f"{min(loads):.1f}–{max(loads):.1f} (the benchmark's own processes included)."
        )
        return {"summary": summary, "samples": [asdict(s) for s in self.samples]}
