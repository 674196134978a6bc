"""Kernels behind a kernel provisioner, beyond what test_supervision.py covers: a cell past its
timeout is interrupted through the provisioner and the same kernel serves on, and the local
memory limit is refused for such kernels instead of being silently ignored."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx
import pytest

from cellserve import app_from_notebook
from cellserve.exceptions import KernelError
from cellserve.kernels import Kernel, KernelConfig
from cellserve.notebook import SeedCell
from tests.servers import serving, write_notebook
from tests.test_supervision import CELLS, KERNEL, provisioned  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("provisioned")


@pytest.mark.anyio
async def test_timeout_interrupts_through_the_provisioner_and_the_kernel_serves_on(
    tmp_path: Path,
) -> None:
    path = write_notebook(tmp_path / "api.ipynb", CELLS, kernel=KERNEL)
    async with (
        serving(app_from_notebook(path, timeout=2)) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        with anyio.fail_after(60):
            while (await client.get("/_cellserve/health")).json()["kernels"] != {"idle": 1}:
                await anyio.sleep(0.05)
        seeded = (await client.get("/seeded")).text  # the fast path, through the provisioner
        slept = await client.get("/sleep")
        assert slept.status_code == 504
        assert (await client.get("/seeded")).text == seeded  # same kernel, state kept
        (kernel,) = (await client.get("/_cellserve/health")).json()["stats"]["kernels"]
        assert kernel["restarts"] == 0
        assert kernel["pid"] == int(seeded)


@pytest.mark.anyio
async def test_a_provisioned_local_kernels_own_stderr_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The test provisioner subclasses the local one, so it takes the output pipes too."""
    caplog.set_level(logging.INFO, logger="cellserve.kernels.output")
    kernel = await Kernel.start(KernelConfig(KERNEL, "python", cwd=tmp_path, label="remote"))
    try:
        await kernel.seed([SeedCell(1, "import os\nos.write(2, b'via the provisioner\\n')")])
        expected = f"remote kernel {kernel.id} stderr: via the provisioner"
        with anyio.fail_after(60):
            while expected not in [r.getMessage() for r in caplog.records]:
                await anyio.sleep(0.05)
    finally:
        await kernel.shutdown()


@pytest.mark.anyio
async def test_the_memory_limit_is_refused_for_a_provisioned_kernel(tmp_path: Path) -> None:
    config = KernelConfig(KERNEL, "python", cwd=tmp_path, memory_limit=2 * 1024**3)
    with pytest.raises(KernelError, match="'cellserve-test-provisioner' provisioner"):
        await Kernel.start(config)
