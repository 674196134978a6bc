"""Prometheus metrics, served at ``/_cellserve/metrics`` through ``prometheus_client``.

Request metrics are recorded once per request by ``access.AccessLogMiddleware``; kernel and
queue metrics are read from each pool's ``PoolStats`` (``track_pools`` every second and at
every scrape), so the pool itself knows nothing of Prometheus.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (set before the
process starts), ``prometheus_client`` keeps every value in a file there and a scrape of any
worker answers the sum over all workers (gauges: the sum over live workers). The directory
must be empty when the first worker starts, and whoever supervises the workers calls
``prometheus_client.multiprocess.mark_process_dead(pid)`` when one exits.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from cellserve.pool import KernelPool, PoolStats
from cellserve.scheduler import KernelState

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry()
"""cellserve's own registry (a host app's default registry stays its own)."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SEED_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "cellserve_requests",
    "HTTP requests answered, by notebook, route, method and status",
    ("notebook", "route", "method", "status"),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "cellserve_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route",
    ("notebook", "route"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "cellserve_queue_wait_seconds",
    "Time a request waited for a free kernel",
    ("notebook",),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "cellserve_requests_in_flight",
    "Requests being served now",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "cellserve_queue_depth",
    "Requests waiting for a kernel",
    ("notebook",),
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
KERNELS = Gauge(
    "cellserve_kernels",
    "Kernels by state (starting, idle, busy, restarting, failed)",
    ("notebook", "state"),
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
GENERATION = Gauge(
    "cellserve_generation",
    "The notebook's current generation (1 at start, +1 per applied reload)",
    ("notebook",),
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
RESTARTS = Counter(
    "cellserve_kernel_restarts", "Kernels replaced", ("notebook",), registry=REGISTRY
)
CRASHES = Counter(
    "cellserve_kernel_crashes",
    "Kernels that died or hung and had to be replaced",
    ("notebook",),
    registry=REGISTRY,
)
TIMEOUTS = Counter(
    "cellserve_request_timeouts",
    "Requests whose cell ran past its timeout (answered 504)",
    ("notebook",),
    registry=REGISTRY,
)
INTERRUPTS = Counter(
    "cellserve_kernel_interrupts",
    "Interrupts sent to a kernel (timeouts, abandoned requests)",
    ("notebook",),
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "cellserve_queue_rejections",
    "Requests refused by the queue (full, timed out, no kernel), answered 503",
    ("notebook",),
    registry=REGISTRY,
)
SEED_DURATION = Histogram(
    "cellserve_seed_duration_seconds",
    "Time to start and seed one kernel",
    ("notebook",),
    buckets=_SEED_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "cellserve_batch_size",
    "Requests answered by one run of a batched route's cell (count: batches; sum: requests)",
    ("notebook", "route"),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
RELOADS = Counter(
    "cellserve_reloads",
    "Reloads by kind (none, docs, routes, kernels) and outcome (applied, failed)",
    ("notebook", "kind", "outcome"),
    registry=REGISTRY,
)


_request_children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}


def record_request(notebook: str, route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration.

    The labelled children are kept (labels are bounded: declared routes, known methods, HTTP
    statuses), since looking them up through ``labels()`` costs more than the update itself.
    """
    key = (notebook, route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (
            REQUESTS.labels(notebook, route, method, str(status)),
            LATENCY.labels(notebook, route),
        )
    children[0].inc()
    children[1].observe(seconds)


def record_reload(notebook: str, kind: str, outcome: str) -> None:
    RELOADS.labels(notebook, kind, outcome).inc()


@dataclass
class _Seen:
    """What a pool's counters were at the last look, so the next look adds only the change."""

    timeouts: int = 0
    crashes: int = 0
    rejected: int = 0
    restarts: int = 0
    interrupts: int = 0
    seeded: frozenset[str] = frozenset()


_seen: weakref.WeakKeyDictionary[KernelPool, _Seen] = weakref.WeakKeyDictionary()

PoolSource = Callable[[], Iterable[tuple[str, int, KernelPool]]]
"""Yields ``(notebook, generation, pool)`` for every pool serving now."""


def track_pools(pools: Iterable[tuple[str, int, KernelPool]]) -> None:
    """Bring the kernel, queue and generation metrics up to date with the pools' stats."""
    by_notebook: dict[str, list[tuple[int, PoolStats, KernelPool]]] = {}
    for notebook, generation, pool in pools:
        by_notebook.setdefault(notebook, []).append((generation, pool.stats(), pool))
    for notebook, entries in by_notebook.items():
        states = dict.fromkeys((s.value for s in KernelState if s != KernelState.STOPPED), 0)
        depth = 0
        for _, stats, pool in entries:
            depth += stats.queue_depth
            for kernel in stats.kernels:
                if kernel.state in states:
                    states[kernel.state] += 1
            _add_counts(notebook, pool, stats)
        for state, count in states.items():
            KERNELS.labels(notebook, state).set(count)
        QUEUE_DEPTH.labels(notebook).set(depth)
        GENERATION.labels(notebook).set(max(generation for generation, _, _ in entries))


def _add_counts(notebook: str, pool: KernelPool, stats: PoolStats) -> None:
    seen = _seen.setdefault(pool, _Seen())
    now = _Seen(
        timeouts=stats.timeouts,
        crashes=stats.crashes,
        rejected=stats.rejected,
        restarts=sum(k.restarts for k in stats.kernels),
        interrupts=stats.interrupts,
        seeded=frozenset(k.kernel_id for k in stats.kernels if k.kernel_id is not None),
    )
    for kernel in stats.kernels:
        new = kernel.kernel_id is not None and kernel.kernel_id not in seen.seeded
        if new and kernel.seed_seconds is not None:
            SEED_DURATION.labels(notebook).observe(kernel.seed_seconds)
    for counter, before, after in (
        (TIMEOUTS, seen.timeouts, now.timeouts),
        (CRASHES, seen.crashes, now.crashes),
        (REJECTIONS, seen.rejected, now.rejected),
        (RESTARTS, seen.restarts, now.restarts),
        (INTERRUPTS, seen.interrupts, now.interrupts),
    ):
        if after > before:
            counter.labels(notebook).inc(after - before)
    _seen[pool] = now


def scrape() -> bytes:
    """The exposition text: this process's registry, or every worker's in multiprocess mode."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest(REGISTRY))


def metrics_endpoint(pools: PoolSource) -> Callable[[Request], Awaitable[Response]]:
    """The ``/_cellserve/metrics`` endpoint for the pools `pools` yields."""

    async def metrics(_: Request) -> Response:
        track_pools(pools())
        return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

    return metrics
