"""deploy/: the Dockerfile and Kubernetes manifests, checked offline, and the image's command.

There is no Docker engine here, so the image is tested by what it is made of: the files its
final stage copies are laid out as in the image, its ENTRYPOINT + CMD runs with its ENV (only
``tini --`` is left out, and the port and paths under /tmp are moved to the test's own), and
its HEALTHCHECK command probes the server the way Docker would.
"""

from __future__ import annotations

import http.server
import json
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cellserve.settings import Settings, env_names
from tests.conftest import HOUSING_CSV
from tests.processes import Process, assert_gone, kernel_pids
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
BIN = Path(sys.executable).parent

# The sizing rule of the README (measured with benchmarks/memory.py on the example notebook).
SERVER_MIB = 64
KERNEL_MIB = 230


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)


# -- offline validators -------------------------------------------------------------------


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = _run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter is really at work: an unpinned base image and apt package fail it.
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install -y tini\n")
    result = _run([str(BIN / "hadolint"), "--no-color", str(careless)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout
    assert "DL3008" in result.stdout


def test_manifests_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    assert {path.name for path in MANIFESTS} >= {
        "deployment.yaml",
        "service.yaml",
        "poddisruptionbudget.yaml",
        "horizontalpodautoscaler.yaml",
    }
    validate = str(BIN / "kubernetes-validate")
    result = _run([validate, "--strict", *map(str, MANIFESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(MANIFESTS)
    # Strict mode is really on: a misspelt field fails.
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        (DEPLOY / "kubernetes" / "deployment.yaml")
        .read_text()
        .replace("revisionHistoryLimit:", "revisionHistoryLimits:")
    )
    result = _run([validate, "--strict", str(typo)])
    assert result.returncode != 0
    assert "revisionHistoryLimits" in result.stdout + result.stderr


# -- the manifests agree with each other, with the image and with cellserve ---------------


def _resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def test_manifests_fit_together() -> None:
    resources = _resources()
    deployment = resources["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources["Service"]["spec"]["selector"].items() <= labels.items()
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert pod["spec"]["serviceAccountName"] == resources["ServiceAccount"]["metadata"]["name"]

    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(_image()["env"]["CELLSERVE_PORT"])
    assert resources["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    for probe, path in [
        ("startupProbe", "/_cellserve/ready"),
        ("readinessProbe", "/_cellserve/ready"),
        ("livenessProbe", "/_cellserve/health"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/_cellserve/metrics"


def test_deployment_settings_are_real_and_shutdown_fits_the_grace_period() -> None:
    pod = _resources()["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    known = {name for field in Settings.__dataclass_fields__ for name in env_names(field)}
    ours = {name for name in env if name.startswith(("CELLSERVE_", "KG_"))}
    assert ours <= known, "the manifest sets variables cellserve does not read"
    settings = Settings.load(environ=env)
    # Drain, then the grace for requests, then up to 10 s to stop kernels, with margin.
    assert settings.drain_delay >= 5, "endpoints need a few seconds to forget a pod"
    needed = settings.drain_delay + settings.shutdown_grace + 10
    assert pod["spec"]["terminationGracePeriodSeconds"] > needed

    memory = container["resources"]["requests"]["memory"]
    assert memory.endswith("Mi") or memory.endswith("Gi")
    mebibytes = int(memory[:-2]) * (1024 if memory.endswith("Gi") else 1)
    assert mebibytes >= SERVER_MIB + settings.kernels * KERNEL_MIB
    assert float(container["resources"]["requests"]["cpu"]) >= settings.kernels


# -- the image's command, run locally -----------------------------------------------------


def _image() -> dict[str, Any]:
    """The final stage of the Dockerfile: workdir, env, copied files, healthcheck, command."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    final = max(i for i, (word, _) in enumerate(instructions) if word.upper() == "FROM")
    image: dict[str, Any] = {"workdir": "/", "env": {}, "copies": [], "healthcheck": None}
    for word, rest in instructions[final + 1 :]:
        word = word.upper()
        if word == "WORKDIR":
            image["workdir"] = rest
        elif word == "ENV":
            image["env"].update(item.split("=", 1) for item in shlex.split(rest))
        elif word == "COPY" and not rest.startswith("--from"):
            source, destination = rest.split()
            image["copies"].append((source, destination, image["workdir"]))
        elif word == "HEALTHCHECK":
            image["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
        elif word in ("ENTRYPOINT", "CMD"):
            image[word.lower()] = json.loads(rest)
    return image


def _lay_out(image: dict[str, Any], root: Path) -> None:
    """Copy the files the final stage copies, to where the image has them, under `root`."""
    for source, destination, workdir in image["copies"]:
        target = Path(destination if destination.startswith("/") else f"{workdir}/{destination}")
        target = root / target.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / source, target)


def _in_root(arg: str, root: Path) -> str:
    """An image path moved under `root`; commands found on the image's PATH from our venv."""
    if arg in ("python", "cellserve"):
        return str(BIN / arg) if arg == "cellserve" else sys.executable
    return str(root / arg[1:]) if arg.startswith("/") else arg


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies = [
        line.split()[1:-1]
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    sources = [source for sources in copies for source in sources]
    assert "src/" in sources and "pyproject.toml" in sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything is left out of the build context, except what is listed
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in kept, f"{source} is not sent to the build (dockerignore)"


def test_image_command_serves_the_notebook_and_passes_its_healthcheck(
    tmp_path: Path,
) -> None:
    if not HOUSING_CSV.is_file():
        pytest.fail(f"the test data set is missing: {HOUSING_CSV}")
    image = _image()
    assert image["entrypoint"] == ["tini", "--"]
    assert "--no-reload" in image["cmd"]
    root = tmp_path / "root"
    _lay_out(image, root)
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {
        **{k: v.replace("/tmp/", f"{tmp_path}/tmp/") for k, v in image["env"].items()},
        "HOME": str(home),
        "CELLSERVE_HOST": "127.0.0.1",
        "CELLSERVE_PORT": str(port),
        # The image fetches scikit-learn's copy at build time; here the notebook reads a CSV.
        "CALIFORNIA_HOUSING_CSV": str(HOUSING_CSV),
    }
    command = [_in_root(arg, root) for arg in image["cmd"]]
    healthcheck = [_in_root(arg, root) for arg in image["healthcheck"]]
    workdir = root / image["workdir"].lstrip("/")

    def probe() -> int:
        return subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode

    assert probe() == 1  # nothing listens yet: unhealthy
    server = Process(command, tmp_path / "log", env, cwd=workdir)
    try:
        deadline = time.monotonic() + 180
        while probe() != 0:
            assert server.popen.poll() is None, server.output
            assert time.monotonic() < deadline, server.output
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        server.wait_ready(url)
        stats = httpx.get(url + "/housing_stats", timeout=60)
        assert stats.status_code == 200
        assert stats.json()["total_houses"] == 20640
        pids = kernel_pids(url)
        server.popen.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert_gone(pids)
        assert probe() == 1
    finally:
        server.close()
    # Nothing was written to the home directory: a read-only root filesystem is enough.
    assert list(home.iterdir()) == []


class _TokenHealth(http.server.BaseHTTPRequestHandler):
    """Answers /_cellserve/health with 200 only to ``Authorization: token s3cret``."""

    def do_GET(self) -> None:
        ok = self.path == "/_cellserve/health" and (
            self.headers.get("Authorization") == "token s3cret"
        )
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("source", ["file", "variable", "none"])
def test_healthcheck_sends_the_token_the_server_reads(tmp_path: Path, source: str) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _TokenHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    env = {"CELLSERVE_PORT": str(server.server_address[1])}
    if source == "file":
        env["CELLSERVE_AUTH_TOKEN_FILE"] = str(token_file)
    elif source == "variable":
        env["CELLSERVE_AUTH_TOKEN"] = "s3cret"
    try:
        probe = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py")], env=env, timeout=30
        )
    finally:
        server.shutdown()
        server.server_close()
    assert probe.returncode == (1 if source == "none" else 0)
