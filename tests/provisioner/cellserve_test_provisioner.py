"""A kernel provisioner for tests: jupyter_client's LocalProvisioner, observed and faultable.

Registered through the ``jupyter_client.kernel_provisioners`` entry point of the dist-info
folder beside this file, and used by the ``cellserve-provisioned`` kernelspec in
``kernels/``. Tests put this folder on ``sys.path`` / ``PYTHONPATH`` and ``kernels/``'s parent
on ``JUPYTER_PATH``; nothing is installed.

* Every launch, kill and terminate is appended to ``$CELLSERVE_PROVISIONER_LOG`` as
  ``event pid`` lines, so a test can check that kernels are stopped through the provisioner
  and that none outlives the server.
* While the file ``$CELLSERVE_PROVISIONER_FAULT`` exists, ``poll()`` deletes it and raises
  once: an unexpected error inside the pool's supervision of the kernel.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner


def _record(event: str, pid: object) -> None:
    log = os.environ.get("CELLSERVE_PROVISIONER_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{event} {pid}\n")


class ObservedProvisioner(LocalProvisioner):  # type: ignore[misc]
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        info = await super().launch_kernel(cmd, **kwargs)
        _record("launch", self.pid)
        return info

    async def poll(self) -> int | None:
        fault = os.environ.get("CELLSERVE_PROVISIONER_FAULT")
        if fault:
            try:
                os.unlink(fault)
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError("injected provisioner fault")
        result: int | None = await super().poll()
        return result

    async def kill(self, restart: bool = False) -> None:
        _record("kill", self.pid)
        await super().kill(restart)

    async def terminate(self, restart: bool = False) -> None:
        _record("terminate", self.pid)
        await super().terminate(restart)
