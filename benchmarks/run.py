"""Run cellserve's benchmarks and regenerate ``benchmarks/README.md``'s results section.

    python benchmarks/run.py                  # everything (about 25 minutes on 2 cores)
    python benchmarks/run.py --quick          # a short smoke run; results go to results/raw/
    python benchmarks/run.py --scenarios throughput,coldstart
    python benchmarks/run.py --report-only    # redraw README and chart from results.json

Scenarios:

* ``throughput``: cellserve (fast and execute modes), Kernel Gateway 3.0.1 and the raw
  in-kernel floors, 1 and 2 kernels, concurrency 1/8/64, measured by wrk. Every server of a
  kernel count runs at the same time and their windows are interleaved (A, B, C, A, B, C...),
  so slow drifts in background load hit all of them alike. Memory is read after the windows.
  cellserve also serves ``/predict_batch`` (the same model behind ``# cellserve: batch``),
  whose answers are first checked equal to ``/predict``'s for 64 inputs sent at once.
* ``scaling``: cellserve with 1, 2, 4 and 8 kernels per worker and 1 and 2 workers, at
  concurrency 64 (``/ping``, ``/predict``, ``/predict_batch``), with the machine's core count.
* ``loop`` (not in the default run): cellserve's app under hypercorn's CLI,
  ``--worker-class asyncio`` vs ``uvloop``.
* ``coldstart``: process spawn → first 200 on ``GET /ping``, 1 and 2 kernels.
* ``reload``: hot-reload timings and failed requests under load (see ``reloading.py``).

Needs wrk (``apt-get install wrk``); installs Kernel Gateway into ``benchmarks/.kg-venv``
from PyPI on first use. Nothing is downloaded while measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench_notebook import BODIES, NOTEBOOK_PATH, write_notebook
from load import FloorProcess, Sample, run_wrk
from machine import LoadMonitor, describe_machine
from reloading import ReloadTrial, run_reload_trial
from report import LABELS, draw_chart, results_markdown, update_readme
from servers import (
    KG_VENV,
    KG_VERSION,
    RunningServer,
    ServerSpec,
    cellserve_spec,
    ensure_kernel_gateway,
    http_floor_spec,
    hypercorn_spec,
    kernel_gateway_spec,
)

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
SCENARIOS = ("throughput", "scaling", "loop", "coldstart", "reload")
DEFAULT_SCENARIOS = ("throughput", "scaling", "coldstart", "reload")
ENDPOINTS = ("ping", "echo", "predict", "predict_batch", "sleep")
BATCHED = ("predict_batch",)  # cellserve-only routes: Kernel Gateway and the floors skip them


@dataclass(frozen=True)
class Plan:
    """How much to measure. Window lengths are whole seconds (wrk's resolution)."""

    seconds: int = 5
    warmup: int = 2
    repeats: int = 3
    concurrencies: tuple[int, ...] = (1, 8, 64)
    kernels: tuple[int, ...] = (1, 2)
    endpoints: tuple[str, ...] = ENDPOINTS
    execute_endpoints: tuple[str, ...] = ("ping",)
    coldstart_repeats: int = 3
    reload_repeats: int = 3
    reload_clients: int = 8
    reload_settle: float = 2.0
    scaling_kernels: tuple[int, ...] = (1, 2, 4, 8)
    scaling_workers: tuple[int, ...] = (1, 2)
    scaling_endpoints: tuple[str, ...] = ("ping", "predict", "predict_batch")
    scaling_concurrency: int = 64
    scaling_repeats: int = 1

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            seconds=1,
            warmup=1,
            repeats=1,
            concurrencies=(1, 64),
            coldstart_repeats=1,
            reload_repeats=1,
            reload_settle=1.0,
            scaling_kernels=(1, 2),
        )


@dataclass
class Contender:
    """Something to put load on: an HTTP server or a raw floor."""

    name: str
    kernels: int
    measure: Callable[[str, int, int], Sample]  # endpoint, concurrency, seconds
    endpoints: tuple[str, ...]
    concurrencies: tuple[int, ...] | None = None  # None: every concurrency of the plan
    drain: Callable[[], float] = lambda: 0.0  # wait out work left from a window; seconds
    cpu: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)  # (server, kernels) CPU s
    restart: Callable[[], None] = lambda: None  # replace a server that stopped answering
    server: RunningServer | None = None
    floor: FloorProcess | None = None

    def takes(self, endpoint: str, concurrency: int) -> bool:
        allowed = self.concurrencies is None or concurrency in self.concurrencies
        return endpoint in self.endpoints and allowed


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    coldstart: list[dict[str, Any]] = field(default_factory=list)
    reload: list[dict[str, Any]] = field(default_factory=list)
    scaling: list[dict[str, Any]] = field(default_factory=list)
    batched_equal: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """What every scenario gets: the plan, where results and logs go, the load monitor."""

    plan: Plan
    results: Results
    raw: Path
    monitor: LoadMonitor


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# -- throughput ------------------------------------------------------------------------------


def _server_contender(server: RunningServer, endpoints: tuple[str, ...], raw: Path) -> Contender:
    def running() -> RunningServer:
        assert contender.server is not None
        return contender.server

    def measure(endpoint: str, concurrency: int, seconds: int) -> Sample:
        return run_wrk(running().url(f"/{endpoint}"), endpoint, concurrency, seconds)

    def restart() -> None:
        hung = running()
        hung.stop()
        contender.server = RunningServer.launch(hung.spec, raw)

    contender = Contender(
        server.spec.name,
        server.spec.kernels,
        measure,
        endpoints,
        server.spec.concurrencies,
        drain=lambda: running().drain(),
        cpu=lambda: running().cpu_seconds(),
        restart=restart,
        server=server,
    )
    return contender


def _floor_contender(floor: FloorProcess, endpoints: tuple[str, ...]) -> Contender:
    def measure(endpoint: str, _concurrency: int, seconds: int) -> Sample:
        return floor.measure(endpoint, seconds)

    return Contender(
        f"floor-{floor.mode}", 1, measure, endpoints, (1,), cpu=floor.cpu_seconds, floor=floor
    )


@contextlib.contextmanager
def contenders(
    specs: Sequence[tuple[ServerSpec, tuple[str, ...]]],
    floors: Sequence[str],
    endpoints: tuple[str, ...],
    raw: Path,
) -> Iterator[list[Contender]]:
    """Start every server and floor, yield them as contenders, stop them all."""
    started: list[Contender] = []
    try:
        for spec, spec_endpoints in specs:
            workers = f" in each of {spec.workers} workers" if spec.workers > 1 else ""
            log(f"starting {spec.name} with {spec.kernels} kernel(s){workers}")
            server = RunningServer.launch(spec, raw)
            started.append(_server_contender(server, spec_endpoints, raw))
        for mode in floors:
            log(f"starting the raw floor ({mode})")
            floor = FloorProcess(mode, raw / f"floor-{mode}.log")
            started.append(_floor_contender(floor, endpoints))
        yield started
    finally:
        for contender in started:
            if contender.server is not None:
                contender.server.stop()
            if contender.floor is not None:
                contender.floor.close()


def measure_interleaved(group: Sequence[Contender], run: Run, plan: Plan | None = None) -> None:
    """Warm up, then `plan.repeats` windows per contender, rotated; store the medians.

    After every window the contender is drained (see ``RunningServer.drain``), so work left
    over from one window never runs during another contender's window.
    """
    plan = plan or run.plan
    for endpoint in plan.endpoints:
        for concurrency in plan.concurrencies:
            active = [c for c in group if c.takes(endpoint, concurrency)]
            if not active:
                continue
            for contender in active:
                contender.measure(endpoint, concurrency, plan.warmup)
                contender.drain()
            started = run.monitor.now()
            samples: dict[str, list[Sample]] = {c.name: [] for c in active}
            cpu: dict[str, list[tuple[float, float]]] = {c.name: [] for c in active}
            drains: dict[str, list[float]] = {c.name: [] for c in active}
            for repeat in range(plan.repeats):
                shift = repeat % len(active)
                for contender in active[shift:] + active[:shift]:
                    before = contender.cpu()
                    sample = contender.measure(endpoint, concurrency, plan.seconds)
                    after = contender.cpu()
                    samples[contender.name].append(sample)
                    cpu[contender.name].append(_cpu_ms_per_request(before, after, sample))
                    drains[contender.name].append(_drain(contender, run, endpoint, concurrency))
            foreign = run.monitor.mean_between(started, run.monitor.now())
            for contender in active:
                row = summarize(endpoint, contender, concurrency, samples[contender.name])
                row["foreign_cpu_percent"] = foreign
                row["server_cpu_ms"] = statistics.median(c[0] for c in cpu[contender.name])
                row["kernel_cpu_ms"] = statistics.median(c[1] for c in cpu[contender.name])
                row["drain_s"] = drains[contender.name]
                run.results.throughput.append(row)
                log(
                    f"/{endpoint} c={concurrency} {contender.name} k={contender.kernels}: "
                    f"{row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                    f"p99 {row['p99_ms']:.2f} ms, {row['errors']} errors, "
                    f"drained in {max(row['drain_s']):.1f} s"
                )


def _drain(contender: Contender, run: Run, endpoint: str, concurrency: int) -> float:
    """Drain `contender`; one that stopped answering is restarted and named in the notes.

    Kernel Gateway stopped answering for good after a window at 64 connections in two runs
    (its log shows ``StreamClosedError`` from ``finish()`` for clients that left; nothing after
    that was answered)."""
    started = time.monotonic()
    try:
        return contender.drain()
    except httpx.TimeoutException:
        note = (
            f"{LABELS.get(contender.name, contender.name)} stopped answering after the "
            f"/{endpoint} window at concurrency {concurrency} and was restarted; its windows "
            "after that come from the new process."
        )
        log(note)
        run.results.meta.setdefault("notes", []).append(note)
        contender.restart()
        return time.monotonic() - started


def _cpu_ms_per_request(
    before: tuple[float, float], after: tuple[float, float], sample: Sample
) -> tuple[float, float]:
    """CPU milliseconds per completed request: (server or floor client, all kernels)."""
    requests = max(sample.requests, 1)
    return (
        (after[0] - before[0]) * 1000 / requests,
        (after[1] - before[1]) * 1000 / requests,
    )


def summarize(
    endpoint: str, contender: Contender, concurrency: int, samples: Sequence[Sample]
) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "method": "GET" if BODIES[endpoint] is None else "POST",
        "server": contender.name,
        "kernels": contender.kernels,
        "concurrency": concurrency,
        "rps": statistics.median(s.rps for s in samples),
        "p50_ms": statistics.median(s.p50_ms for s in samples),
        "p99_ms": statistics.median(s.p99_ms for s in samples),
        "errors": sum(s.errors for s in samples),
        "requests": sum(s.requests for s in samples),
        "samples": [{**asdict(s), "rps": s.rps} for s in samples],
    }


def record_memory(group: Sequence[Contender], results: Results) -> None:
    for contender in group:
        if contender.server is not None:
            kernel_rss, server_rss = contender.server.rss_mb()
            server_mb: float | None = server_rss
        elif contender.floor is not None:
            kernel_rss = [
                float(psutil.Process(contender.floor.kernel_pid).memory_info().rss) / 2**20
            ]
            server_mb = None
        else:
            continue
        results.memory.append(
            {
                "server": contender.name,
                "kernels": contender.kernels,
                "kernel_rss_mb": kernel_rss,
                "per_kernel_mb": statistics.mean(kernel_rss) if kernel_rss else 0.0,
                "server_rss_mb": server_mb,
            }
        )


def run_throughput(run: Run) -> None:
    plan = run.plan
    unbatched = tuple(e for e in plan.endpoints if e not in BATCHED)
    for kernels in plan.kernels:
        specs = [
            (cellserve_spec(NOTEBOOK_PATH, kernels), plan.endpoints),
            (cellserve_spec(NOTEBOOK_PATH, kernels, execution="execute"), plan.execute_endpoints),
            (kernel_gateway_spec(NOTEBOOK_PATH, kernels), unbatched),
        ]
        floors = ("fast", "execute") if kernels == 1 else ()
        if kernels == 1:
            specs.append((http_floor_spec(), ("ping",)))
        with contenders(specs, floors, unbatched, run.raw) as group:
            if kernels == 1 and group[0].server is not None:
                run.results.batched_equal.append(check_batched_answers(group[0].server))
            measure_interleaved(group, run)
            record_memory(group, run.results)


def check_batched_answers(server: RunningServer, count: int = 64) -> dict[str, Any]:
    """Send `count` different rows to /predict_batch at once (so they batch) and one by one
    to /predict; how many answers are equal."""
    base = json.loads(BODIES["predict"] or "{}")["rows"][0]
    bodies = [{"rows": [[value * (1 + i / 100) for value in base]]} for i in range(count)]
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(count) as threads:
        batched = list(
            threads.map(lambda body: client.post(server.url("/predict_batch"), json=body), bodies)
        )
        single = [client.post(server.url("/predict"), json=body) for body in bodies]
    equal = sum(
        1
        for b, s in zip(batched, single, strict=True)
        if b.status_code == s.status_code == 200 and b.json() == json.loads(s.text)
    )
    log(f"batched answers equal to unbatched ones: {equal} of {count}")
    return {"equal": equal, "compared": count}


def run_scaling(run: Run) -> None:
    """cellserve alone, one configuration at a time, so each has the whole machine."""
    plan = run.plan
    measure_plan = Plan(
        **{
            **asdict(plan),
            "endpoints": plan.scaling_endpoints,
            "concurrencies": (plan.scaling_concurrency,),
            "repeats": plan.scaling_repeats,
        }
    )
    for workers in plan.scaling_workers:
        for kernels in plan.scaling_kernels:
            spec = cellserve_spec(NOTEBOOK_PATH, kernels, workers=workers)
            mark = len(run.results.throughput)
            with contenders([(spec, plan.scaling_endpoints)], (), (), run.raw) as group:
                measure_interleaved(group, run, measure_plan)
            # These rows belong to the scaling table, not the throughput table.
            rows = run.results.throughput[mark:]
            del run.results.throughput[mark:]
            for row in rows:
                row["workers"] = workers
                row["total_kernels"] = kernels * workers
                row["cores"] = psutil.cpu_count()
                run.results.scaling.append(row)


def run_loop(run: Run) -> None:
    plan = Plan(**{**asdict(run.plan), "endpoints": ("ping", "echo")})
    specs = [
        (hypercorn_spec(NOTEBOOK_PATH, 1, loop), plan.endpoints) for loop in ("asyncio", "uvloop")
    ]
    with contenders(specs, (), plan.endpoints, run.raw) as group:
        measure_interleaved(group, run, plan)


# -- cold start and reload -------------------------------------------------------------------


def run_coldstart(run: Run) -> None:
    plan = run.plan
    specs = [
        spec(NOTEBOOK_PATH, kernels)
        for kernels in plan.kernels
        for spec in (cellserve_spec, kernel_gateway_spec)
    ]
    runs: dict[ServerSpec, list[tuple[float, float]]] = {spec: [] for spec in specs}
    for repeat in range(plan.coldstart_repeats):
        for spec in specs:
            server = RunningServer.launch(spec, run.raw)
            server.stop()
            assert server.first_ok is not None and server.all_ready is not None
            runs[spec].append((server.first_ok, server.all_ready))
            log(
                f"cold start {repeat + 1}: {spec.name} k={spec.kernels}: first 200 after "
                f"{server.first_ok:.2f} s, all kernels after {server.all_ready:.2f} s"
            )
    for spec, timings in runs.items():
        run.results.coldstart.append(
            {
                "server": spec.name,
                "kernels": spec.kernels,
                "first_ok_s": [first for first, _ in timings],
                "all_ready_s": [ready for _, ready in timings],
                "first_ok_median_s": statistics.median(first for first, _ in timings),
                "all_ready_median_s": statistics.median(ready for _, ready in timings),
            }
        )


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def run_reload(run: Run) -> None:
    plan = run.plan
    for kernels in plan.kernels:
        trials: list[ReloadTrial] = []
        for repeat in range(plan.reload_repeats):
            trial = run_reload_trial(
                run.raw / f"reload-k{kernels}-{repeat}",
                kernels,
                plan.reload_clients,
                plan.reload_settle,
            )
            trials.append(trial)
            log(
                f"reload k={kernels} run {repeat + 1}: endpoint edit {trial.endpoint_edit_s} s, "
                f"seed edit {trial.seed_edit_s} s, {trial.errors} of {trial.requests} failed"
            )
        kinds: dict[str, int] = {}
        for trial in trials:
            for kind, count in trial.error_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        run.results.reload.append(
            {
                "kernels": kernels,
                "clients": plan.reload_clients,
                "endpoint_edit_median_s": _median_or_none([t.endpoint_edit_s for t in trials]),
                "seed_edit_median_s": _median_or_none([t.seed_edit_s for t in trials]),
                "server_seed_reload_median_s": _median_or_none(
                    [t.server_seed_reload_s for t in trials]
                ),
                "errors": sum(t.errors for t in trials),
                "requests": sum(t.requests for t in trials),
                "error_kinds": kinds,
                "trials": [asdict(t) for t in trials],
            }
        )


# -- the run ---------------------------------------------------------------------------------


def _git_revision() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def snapshot_cellserve(raw: Path) -> str:
    """Copy the cellserve package under test into `raw` and make every process import it.

    The work tree may change while a run lasts; every server then still runs the same code.
    Returns a short digest of that code, for the results.
    """
    import cellserve

    source = Path(cellserve.__file__).parent
    target = raw / "src" / "cellserve"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(target).as_posix().encode())
            digest.update(path.read_bytes())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(target.parent), os.environ.get("PYTHONPATH")) if p
    )
    return digest.hexdigest()[:12]


def _source_state() -> str:
    """The commit and which files of src/ differ from it, as ``git`` sees them."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [line[3:] for line in status if line.strip()]
    return _git_revision() + (f", uncommitted changes in {', '.join(changed)}" if changed else "")


def _versions() -> str:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?"
    ours = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "hypercorn",
            "uvloop",
            "starlette",
            "jupyter_client",
            "ipykernel",
            "scikit-learn",
        )
    )
    return (
        f"cellserve {metadata.version('cellserve')}, {ours}; "
        f"Kernel Gateway {KG_VERSION} from {KG_VENV.name}; Python {platform.python_version()}; "
        f"wrk {wrk_version}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark cellserve against Kernel Gateway.")
    parser.add_argument("--quick", action="store_true", help="short smoke run (results/raw/)")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--seconds", type=int, help="length of one measured window")
    parser.add_argument("--repeats", type=int, help="measured windows per contender")
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a remark about this run, shown with its results (repeatable)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate README and chart from results/results.json",
    )
    return parser.parse_args(argv)


def write_report(results: dict[str, Any], out: Path, readme: Path | None) -> None:
    chart = out / "chart.png"
    draw_chart(results, chart)
    if readme is not None:
        section = results_markdown(results, chart.relative_to(readme.parent).as_posix())
        update_readme(readme, section)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        results = json.loads((RESULTS / "results.json").read_text("utf-8"))
        write_report(results, RESULTS, BENCHMARKS / "README.md")
        return 0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenario(s): {', '.join(sorted(unknown))}; pick from {SCENARIOS}")
    plan = Plan.quick() if args.quick else Plan()
    if args.seconds or args.repeats:
        changes = {"seconds": args.seconds or plan.seconds, "repeats": args.repeats or plan.repeats}
        plan = Plan(**{**asdict(plan), **changes})
    raw = RESULTS / "raw" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw.mkdir(parents=True, exist_ok=True)
    write_notebook()
    ensure_kernel_gateway()
    code = snapshot_cellserve(raw)
    source_state = _source_state()
    started = time.monotonic()
    results = Results()
    runners = {
        "throughput": run_throughput,
        "scaling": run_scaling,
        "loop": run_loop,
        "coldstart": run_coldstart,
        "reload": run_reload,
    }
    with LoadMonitor() as monitor:
        for scenario in scenarios:
            log(f"scenario {scenario}")
            runners[scenario](Run(plan, results, raw, monitor))
    runtime = time.monotonic() - started
    command = "python benchmarks/run.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    results.meta = {
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "runtime_s": runtime,
        "command": command,
        "quick": args.quick,
        "scenarios": scenarios,
        "plan": asdict(plan),
        "windows": f"{plan.warmup} s warm-up, then {plan.repeats} × {plan.seconds} s windows "
        "per measurement",
        "machine": describe_machine(),
        "versions": _versions(),
        "cellserve_code": f"{source_state}; snapshot digest {code}",
        "load": monitor.report(),
        "notes": args.note,
    }
    document = asdict(results)
    # A quick or partial run is a smoke test: it must not replace the published numbers.
    out = raw if args.quick or set(scenarios) != set(DEFAULT_SCENARIOS) else RESULTS
    (out / "results.json").write_text(json.dumps(document, indent=1) + "\n", "utf-8")
    write_report(document, out, None if out == raw else BENCHMARKS / "README.md")
    if out == raw:
        (raw / "README-section.md").write_text(results_markdown(document, "chart.png"), "utf-8")
    log(f"done in {runtime / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
