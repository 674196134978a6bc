"""Turn ``results.json`` into markdown tables, the targets check and the chart.

Results are plain JSON written by ``run.py``: ``meta``, and lists of rows under
``throughput`` (endpoint, server, kernels, concurrency, median rps/p50/p99, summed errors,
the samples), ``memory``, ``coldstart`` and ``reload``. Everything here is a pure function
of that document, so ``run.py --report-only`` redraws the README without measuring again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

Row = dict[str, Any]

# How each server is named in tables and the chart.
LABELS = {
    "cellserve": "cellserve (fast)",
    "cellserve-execute": "cellserve (execute)",
    "kg": "Kernel Gateway 3.0.1",
    "floor-fast": "raw floor (fast: comm)",
    "floor-execute": "raw floor (execute_request)",
    "http-floor": "HTTP floor (hypercorn + bare ASGI app)",
    "hypercorn-asyncio": "cellserve app, hypercorn -k asyncio",
    "hypercorn-uvloop": "cellserve app, hypercorn -k uvloop",
}


# Floors and alternative hosts are in the tables, not among the chart's bars.
_NOT_CHARTED = ("floor", "hypercorn", "http-floor")


@dataclass(frozen=True)
class Target:
    """One goal from the issue, checked against measured values of the same run; or a
    reading (a value with no goal to pass or miss)."""

    name: str
    value: float | None
    goal: str
    passed: bool | None
    detail: str

    @property
    def result(self) -> str:
        if self.passed is not None:
            return "**pass**" if self.passed else "**miss**"
        return "not measured" if self.value is None else "—"


def find(rows: Iterable[Row], **match: Any) -> Row | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _ratio(a: Row | None, b: Row | None, key: str) -> float | None:
    if a is None or b is None or not b[key]:
        return None
    return float(a[key]) / float(b[key])


def _target(
    name: str, value: float | None, goal: str, ok: Callable[[float], bool], detail: str
) -> Target:
    return Target(name, value, goal, None if value is None else ok(value), detail)


def targets(results: dict[str, Any]) -> list[Target]:
    """The issue's targets, as ratios between measurements of this run."""
    rows = results.get("throughput", [])
    out: list[Target] = []

    def ping(server: str, concurrency: int, kernels: int = 1) -> Row | None:
        return find(rows, endpoint="ping", server=server, kernels=kernels, concurrency=concurrency)

    for c in (1, 64):
        cs, kg = ping("cellserve", c), ping("kg", c)
        out.append(
            _target(
                f"/ping, 1 kernel, concurrency {c}: cellserve ÷ KG req/s",
                _ratio(cs, kg, "rps"),
                "≥ 4×",
                lambda v: v >= 4,
                _pair(cs, kg, "rps", "req/s"),
            )
        )
    cs, kg = ping("cellserve", 64), ping("kg", 64)
    out.append(
        _target(
            "/ping, 1 kernel, concurrency 64: cellserve ÷ KG p99",
            _ratio(cs, kg, "p99_ms"),
            "≤ 0.25",
            lambda v: v <= 0.25,
            _pair(cs, kg, "p99_ms", "ms"),
        )
    )
    # Pipelining: at 64 connections the kernel never waits for the server.
    base = ping("floor-fast", 1)
    for c, goal in ((1, 0.85), (64, 1.1)):
        row = ping("cellserve", c)
        out.append(
            _target(
                f"/ping, 1 kernel, concurrency {c}: cellserve (fast) ÷ {LABELS['floor-fast']}",
                _ratio(row, base, "rps"),
                f"≥ {goal:.2f}",
                lambda v, goal=goal: v >= goal,
                _pair(row, base, "rps", "req/s"),
            )
        )
    # A reading, not a goal: the c=1 ratio above also prices HTTP itself, which the raw floor
    # does not have. The HTTP floor (hypercorn + the thinnest app over the same kernel) splits
    # it into what HTTP costs and what cellserve adds.
    row, http = ping("cellserve", 1), ping("http-floor", 1)
    if http is not None:
        out.append(
            Target(
                f"/ping, 1 kernel, concurrency 1: cellserve (fast) ÷ {LABELS['http-floor']}, "
                f"which is {_num(_ratio(http, base, 'rps'))} of the raw floor",
                _ratio(row, http, "rps"),
                "— (a reading)",
                None,
                _pair(row, http, "rps", "req/s"),
            )
        )
    base = ping("floor-execute", 1)
    for c in (1, 64):
        row = ping("cellserve-execute", c)
        out.append(
            _target(
                f"/ping, 1 kernel, concurrency {c}: {LABELS['cellserve-execute']} ÷ "
                f"{LABELS['floor-execute']}",
                _ratio(row, base, "rps"),
                "≥ 0.90",
                lambda v: v >= 0.9,
                _pair(row, base, "rps", "req/s"),
            )
        )
    for c in (1, 64):
        row = ping("cellserve", c)
        cpu = None if row is None else row.get("server_cpu_ms")
        out.append(
            _target(
                f"/ping, 1 kernel, concurrency {c}: cellserve server CPU per request "
                "(access log, metrics, reload on)",
                cpu,
                "≤ 0.8 ms",
                lambda v: v <= 0.8,
                f"{_num(cpu)} ms server, {_num(None if row is None else row.get('kernel_cpu_ms'))}"
                " ms kernel",
            )
        )
    batched = find(rows, endpoint="predict_batch", server="cellserve", kernels=1, concurrency=64)
    kg = find(rows, endpoint="predict", server="kg", kernels=1, concurrency=64)
    out.append(
        _target(
            "/predict, 1 kernel, concurrency 64: cellserve batched ÷ KG req/s",
            _ratio(batched, kg, "rps"),
            "≥ 10×",
            lambda v: v >= 10,
            _pair(batched, kg, "rps", "req/s"),
        )
    )
    out.append(
        _target(
            "/predict, 1 kernel, concurrency 64: cellserve batched ÷ KG p99",
            _ratio(batched, kg, "p99_ms"),
            "≤ 0.20",
            lambda v: v <= 0.2,
            _pair(batched, kg, "p99_ms", "ms"),
        )
    )
    out.append(
        _target(
            "/predict, 1 kernel, concurrency 64: cellserve batched, failed requests",
            None if batched is None else float(batched["errors"]),
            "0",
            lambda v: v == 0,
            "—" if batched is None else f"{batched['errors']} of {batched['requests']:,}",
        )
    )
    for check in results.get("batched_equal", []):
        out.append(
            _target(
                "/predict_batch answers equal to /predict's for the same input (64 at once)",
                float(check["compared"] - check["equal"]),
                "0 differ",
                lambda v: v == 0,
                f"{check['equal']} of {check['compared']} equal",
            )
        )
    for c in (8, 64):
        two = find(rows, endpoint="sleep", server="cellserve", kernels=2, concurrency=c)
        one = find(rows, endpoint="sleep", server="cellserve", kernels=1, concurrency=c)
        out.append(
            _target(
                f"/sleep, concurrency {c}: cellserve 2 kernels ÷ 1 kernel req/s",
                _ratio(two, one, "rps"),
                "≥ 1.8×",
                lambda v: v >= 1.8,
                _pair(two, one, "rps", "req/s"),
            )
        )
    starts = results.get("coldstart", [])
    cs_start = find(starts, server="cellserve", kernels=2)
    kg_start = find(starts, server="kg", kernels=2)
    out.append(
        _target(
            "cold start, 2 kernels: cellserve ÷ KG (spawn → first 200 on /ping)",
            _ratio(cs_start, kg_start, "first_ok_median_s"),
            "≤ 1.0",
            lambda v: v <= 1.0,
            _pair(cs_start, kg_start, "first_ok_median_s", "s"),
        )
    )
    for trial in results.get("reload", []):
        out.append(
            _target(
                f"reload under load, {trial['kernels']} kernel(s): failed requests",
                float(trial["errors"]),
                "0",
                lambda v: v == 0,
                f"{trial['errors']} of {trial['requests']} requests",
            )
        )
    return out


def _pair(a: Row | None, b: Row | None, key: str, unit: str) -> str:
    def show(row: Row | None) -> str:
        return "—" if row is None else f"{_num(row[key])} {unit}"

    return f"{show(a)} vs {show(b)}"


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _table(header: list[str], lines: list[list[str]]) -> str:
    rule = ["---" if i == 0 else "---:" for i in range(len(header))]
    rows = [header, rule, *lines]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


_SAMPLE_HEADER = [
    "p50 ms",
    "p99 ms",
    "errors / requests",
    "CPU ms/req: server",
    "kernels",
    "other load",
]


def _sample_cells(row: dict[str, Any]) -> list[str]:
    """A measured row's req/s, then the cells under ``_SAMPLE_HEADER``."""
    return [
        _num(row["rps"]),
        _num(row["p50_ms"]),
        _num(row["p99_ms"]),
        f"{row['errors']} / {row['requests']:,}",
        _num(row.get("server_cpu_ms")),
        _num(row.get("kernel_cpu_ms")),
        _percent(row.get("foreign_cpu_percent")),
    ]


def throughput_table(results: dict[str, Any]) -> str:
    header = ["scenario", "server", "kernels", "concurrency", "req/s (median)"]
    header += _SAMPLE_HEADER
    rows = results.get("throughput", [])
    # Runs before the load monitor existed have no per-row background load: drop the column.
    width = len(header) if any("foreign_cpu_percent" in row for row in rows) else len(header) - 1
    lines = [
        [
            f"`{row['method']} /{row['endpoint']}`",
            LABELS.get(row["server"], row["server"]),
            str(row["kernels"]),
            str(row["concurrency"]),
            *_sample_cells(row),
        ][:width]
        for row in rows
    ]
    return _table(header[:width], lines)


def scaling_table(results: dict[str, Any]) -> str:
    rows = results.get("scaling", [])
    lines = [
        [
            f"`{row['method']} /{row['endpoint']}`",
            str(row["workers"]),
            str(row["kernels"]),
            str(row["total_kernels"]),
            str(row["concurrency"]),
            *_sample_cells(row),
        ]
        for row in sorted(rows, key=lambda r: (r["endpoint"], r["workers"], r["kernels"]))
    ]
    header = ["scenario", "workers", "kernels per worker", "kernels in all", "concurrency", "req/s"]
    header += _SAMPLE_HEADER
    return _table(header, lines)


def targets_table(results: dict[str, Any]) -> str:
    lines = [[t.name, t.goal, _num(t.value), t.result, t.detail] for t in targets(results)]
    return _table(["target", "goal", "measured", "result", "values (this run)"], lines)


def memory_table(results: dict[str, Any]) -> str:
    lines = [
        [
            LABELS.get(row["server"], row["server"]),
            str(row["kernels"]),
            _num(row["per_kernel_mb"]),
            ", ".join(_num(v) for v in row["kernel_rss_mb"]),
            _num(row["server_rss_mb"]) if row["server_rss_mb"] is not None else "—",
        ]
        for row in results.get("memory", [])
    ]
    return _table(
        ["server", "kernels", "RSS per kernel (MiB, mean)", "each kernel", "server process(es)"],
        lines,
    )


def coldstart_table(results: dict[str, Any]) -> str:
    lines = [
        [
            LABELS.get(row["server"], row["server"]),
            str(row["kernels"]),
            _num(row["first_ok_median_s"]),
            _num(row["all_ready_median_s"]),
            ", ".join(_num(v) for v in row["first_ok_s"]),
        ]
        for row in results.get("coldstart", [])
    ]
    return _table(
        [
            "server",
            "kernels",
            "spawn → first 200 (s, median)",
            "→ all kernels up (s)",
            "runs (first 200)",
        ],
        lines,
    )


def reload_table(results: dict[str, Any]) -> str:
    lines = [
        [
            str(row["kernels"]),
            str(row["clients"]),
            _num(row["endpoint_edit_median_s"]),
            _num(row["seed_edit_median_s"]),
            _num(row["server_seed_reload_median_s"]),
            f"{row['errors']} / {row['requests']:,}",
            ", ".join(f"{k}: {v}" for k, v in row["error_kinds"].items()) or "—",
        ]
        for row in results.get("reload", [])
    ]
    return _table(
        [
            "kernels",
            "clients",
            "endpoint edit → new body (s)",
            "seed edit → new body (s)",
            "seed reload, server's own timing (s)",
            "failed / requests",
            "failures",
        ],
        lines,
    )


def results_markdown(results: dict[str, Any], chart_name: str) -> str:
    """The README's generated section."""
    meta = results["meta"]
    load = meta.get("load", {})
    parts = [
        "## Results",
        "",
        f"Run of {meta['finished']} (UTC), {meta['runtime_s'] / 60:.1f} min, "
        f"with `{meta['command']}`. "
        f"{meta['windows']} — each figure is the median of the repeats.",
        "",
        f"**Machine:** {meta['machine']}. **Load while measuring:** {load.get('summary', '—')}",
        "",
        f"Code measured: {meta.get('cellserve_code', '—')}. Versions: {meta['versions']}.",
        "",
        *(f"**Note:** {note}\n" for note in meta.get("notes", [])),
        f"![requests per second and p99 latency]({chart_name})",
        "",
        "### Targets (ratios from this run)",
        "",
        targets_table(results),
        "",
        "### Throughput and latency",
        "",
        "Errors are failed requests (non-2xx, timeouts, socket errors) over all repeats, "
        "out of all requests. The raw floors run one round trip at a time (concurrency 1) and "
        "have no HTTP. CPU ms/req is the CPU time (user + system) used per completed request "
        "by the server's own processes (for a floor: its jupyter_client process) and by its "
        "kernels, over the measured windows (median)."
        + (
            " Other load is the CPU used by processes outside the benchmark while that row's "
            "windows ran (100% = one core)."
            if any("foreign_cpu_percent" in row for row in results.get("throughput", []))
            else ""
        ),
        "",
        throughput_table(results),
        "",
        *(
            [
                "### Scaling: kernels and workers",
                "",
                f"cellserve alone on this {_cores(results)}-core machine, one configuration at "
                "a time, each window at the concurrency shown; `--workers W` runs W server "
                "processes with their own kernels each. Throughput stops growing once the "
                "cores are busy: compare CPU ms per request with the core count to read a "
                "row (server + kernels CPU × req/s ≈ cores in use).",
                "",
                scaling_table(results),
                "",
            ]
            if results.get("scaling")
            else []
        ),
        "### Cold start",
        "",
        "From process spawn to the first `200` on `GET /ping` (polled every 10 ms), and to "
        "every kernel seeded (cellserve's health endpoint; Kernel Gateway: kernel processes "
        "present).",
        "",
        coldstart_table(results),
        "",
        "### Memory",
        "",
        "Resident set size after the throughput runs: each kernel process, and the server's "
        "own process tree without its kernels.",
        "",
        memory_table(results),
        "",
        "### Hot reload under load",
        "",
        "Time from saving the notebook to the first reply with the new body while clients "
        "call `GET /version` back to back; every failed request over the whole run.",
        "",
        reload_table(results),
    ]
    return "\n".join(parts) + "\n"


def _cores(results: dict[str, Any]) -> str:
    rows = results.get("scaling", [])
    return str(rows[0]["cores"]) if rows else "?"


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the results markers (append the markers if missing)."""
    text = readme.read_text("utf-8") if readme.exists() else ""
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text, "utf-8")


def draw_chart(results: dict[str, Any], path: Path) -> None:
    """Req/s and p99 per endpoint and concurrency, one bar per server and kernel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("throughput", [])
    endpoints = list(dict.fromkeys(r["endpoint"] for r in rows))
    series = [
        (server, kernels)
        for server in ("cellserve", "cellserve-execute", "kg")
        for kernels in (1, 2)
        if any(r["server"] == server and r["kernels"] == kernels for r in rows)
    ]
    if not endpoints or not series:
        return
    colors = {"cellserve": "#1f77b4", "cellserve-execute": "#17becf", "kg": "#d62728"}
    figure, axes = plt.subplots(
        2, len(endpoints), figsize=(4.2 * len(endpoints), 7.5), squeeze=False
    )
    for column, endpoint in enumerate(endpoints):
        shown = [
            (server, kernels)
            for server, kernels in series
            if find(rows, endpoint=endpoint, server=server, kernels=kernels) is not None
        ]
        width = 0.8 / max(len(shown), 1)
        concurrencies = sorted(
            {
                r["concurrency"]
                for r in rows
                if r["endpoint"] == endpoint and not r["server"].startswith(_NOT_CHARTED)
            }
        )
        for line, (key, title) in enumerate((("rps", "req/s"), ("p99_ms", "p99 latency, ms"))):
            ax = axes[line][column]
            for i, (server, kernels) in enumerate(shown):
                values = []
                for c in concurrencies:
                    row = find(
                        rows, endpoint=endpoint, server=server, kernels=kernels, concurrency=c
                    )
                    values.append(row[key] if row else 0.0)
                positions = [
                    x + (i - (len(shown) - 1) / 2) * width for x in range(len(concurrencies))
                ]
                ax.bar(
                    positions,
                    values,
                    width,
                    color=colors[server],
                    alpha=1.0 if kernels == 1 else 0.55,
                    label=f"{LABELS[server]}, {kernels} kernel{'s' if kernels > 1 else ''}",
                )
            floor = find(rows, endpoint=endpoint, server="floor-fast", kernels=1)
            if floor is not None and key == "rps":
                ax.axhline(
                    floor["rps"],
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label="raw floor (fast), 1 kernel",
                )
            ax.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
            ax.set_yscale("log")
            ax.set_title(f"/{endpoint}: {title}")
            ax.grid(axis="y", which="both", alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
