"""How long other clients wait while the server parses a hostile body.

Serves a one-route notebook, then posts a large body (a 7 MB form of 2.3 M empty fields, or
a multipart body of 190 k parts) while another client polls ``/_cellserve/health``; reports
the parse-to-answer time of the big request and the slowest health answer during it.
``--inline`` parses every body on the event loop, as cellserve did before, for comparison.

    .venv/bin/python benchmarks/hostile_bodies.py [--inline]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import ServerThread, write_notebook

import cellserve.request
from cellserve import app_from_notebook

BOUNDARY = "b"


def form_body() -> tuple[bytes, str]:
    return b"a=&" * 2_333_333, "application/x-www-form-urlencoded"


def multipart_body() -> tuple[bytes, str]:
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'.encode()
    return (
        part * 190_000 + f"--{BOUNDARY}--\r\n".encode(),
        f"multipart/form-data; boundary={BOUNDARY}",
    )


def measure(server: ServerThread, body: bytes, content_type: str) -> tuple[float, float, int]:
    """(seconds for the big request, slowest health answer meanwhile, health answers)."""
    done = threading.Event()
    latencies: list[float] = []

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/_cellserve/health")
                latencies.append(time.perf_counter() - started)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    response = httpx.post(
        server.url + "/size", content=body, headers={"Content-Type": content_type}, timeout=300
    )
    elapsed = time.perf_counter() - started
    done.set()
    poller.join()
    assert response.status_code == 200, response.text
    return elapsed, max(latencies), len(latencies)


def main() -> None:
    if "--inline" in sys.argv:
        cellserve.request.INLINE_BODY_LIMIT = sys.maxsize
    folder = Path(tempfile.mkdtemp())
    path = write_notebook(folder / "size.ipynb", ["# POST /size\nprint(len(REQUEST))"])
    app = app_from_notebook(path, max_body_size=20_000_000, timeout=300)
    with ServerThread(app) as server:
        for name, make in (
            ("form, 7 MB, 2.3 M fields", form_body),
            ("multipart, 190 k parts", multipart_body),
        ):
            body, content_type = make()
            runs = [measure(server, body, content_type) for _ in range(3)]
            request = statistics.median(r[0] for r in runs)
            slowest = statistics.median(r[1] for r in runs) * 1000
            print(
                f"{name}: request {request:.2f} s, slowest health answer meanwhile "
                f"{slowest:.0f} ms (median of 3; {runs[0][2]} health answers in the first run)"
            )


if __name__ == "__main__":
    main()
