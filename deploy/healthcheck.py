"""Container health check: exit 0 when cellserve answers 200 on its health path, else 1.

The image's ``HEALTHCHECK`` runs it (the slim image has no curl); Kubernetes can run it as
an ``exec`` probe when an auth token is set, since an ``httpGet`` probe cannot read a secret.
It reads the variables the server reads, so it always probes the port and prefix in use:

    python healthcheck.py                      # /_cellserve/health
    python healthcheck.py /_cellserve/ready    # readiness instead
"""

from __future__ import annotations

import os
import sys
import urllib.request


def _setting(*names: str, default: str) -> str:
    return next((os.environ[name] for name in names if os.environ.get(name)), default)


def _token() -> str:
    """The server's token: from its token file (a mounted secret) or its variables."""
    path = _setting("CELLSERVE_AUTH_TOKEN_FILE", default="")
    if path:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    return _setting("CELLSERVE_AUTH_TOKEN", "KG_AUTH_TOKEN", default="")


def main() -> int:
    port = _setting("CELLSERVE_PORT", "KG_PORT", default="9090")
    base = _setting("CELLSERVE_BASE_URL", "KG_BASE_URL", default="/").rstrip("/")
    path = sys.argv[1] if len(sys.argv) > 1 else "/_cellserve/health"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{base}{path}")
    try:
        token = _token()
        if token:
            request.add_header("Authorization", f"token {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # no token file, refused, timed out, or an HTTP error status
        print(f"cellserve health check failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
