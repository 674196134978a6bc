"""``--kernel-memory-limit``: a greedy cell costs its own kernel, not the server or the machine.

**How (Linux).** Each local kernel's command is prefixed by a one-line Python launcher that
sets ``RLIMIT_AS`` (the address-space limit) on itself and then ``exec``s the kernel, so the
kernel process, and anything it starts, inherits the limit. An allocation past it fails
inside the kernel: Python raises ``MemoryError`` (numpy too: "Unable to allocate ..."), and a
C extension that cannot cope may abort the process. Either way the request is answered 503
and the kernel is replaced and re-seeded (``KernelOutOfMemory``): a cell interrupted by a
failed allocation may have left half-built state behind, so that kernel is not used again.

``RLIMIT_AS`` counts address space, not memory in use: a bare Python kernel already reserves
about 0.5 GiB, one that has imported numpy and scikit-learn 1-1.5 GiB (thread stacks, BLAS
buffers, malloc arenas), before it holds any data. Set the limit to a seeded kernel's VMS
(``benchmarks/memory.py`` prints it) plus what one request may allocate, measured with the
same ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` as in production: BLAS thread pools size
themselves from the machine's cores, and each thread reserves address space.

**Why not cgroup v2 here.** A cgroup gives a true resident-memory limit, but creating one
per kernel needs a delegated, writable cgroup subtree (systemd's ``Delegate=yes``, or root
with the server moved out of its own cgroup first), which neither a container nor a normal
user session gives a process. Where cgroups are the right tool they are applied from
outside, to the whole server: a container's memory limit (Kubernetes ``resources.limits``,
see deploy/) or ``systemd-run --scope -p MemoryMax=...``. The kernel that the kernel's
OOM killer picks is then handled as any crashed kernel (503, replaced).

**Other platforms.** macOS accepts ``RLIMIT_AS`` but does not enforce it, and Windows has no
rlimits, so the option is refused there with a message saying so. Kernels started by a
provisioner other than the local one (remote kernels) take their limits from that
provisioner's own configuration, and the option is refused for them too.
"""

from __future__ import annotations

import sys
from typing import Any

from cellserve.cells import CellOutcome
from cellserve.exceptions import KernelError, KernelOutOfMemory

# Kept on one line, without imports beyond the standard library, so starting it costs only
# an interpreter start-up; it replaces itself with the kernel, which keeps its pid.
_LAUNCHER = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)
_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}


def limit_kernel_memory(manager: Any, limit: int) -> None:
    """Make the kernel that `manager` starts run under an address-space limit of `limit` bytes.

    Raises KernelError where the limit cannot be applied (see the module's docstring).
    """
    if not sys.platform.startswith("linux"):
        raise KernelError(
            f"--kernel-memory-limit needs Linux (RLIMIT_AS), not {sys.platform}; "
            "limit the whole server instead (a container's memory limit)"
        )
    spec = manager.kernel_spec
    provisioner = spec.metadata.get("kernel_provisioner", {}).get("provisioner_name")
    if provisioner not in (None, "local-provisioner"):
        raise KernelError(
            f"--kernel-memory-limit applies to local kernels; kernelspec {manager.kernel_name!r} "
            f"uses the {provisioner!r} provisioner: set its limits in that provisioner"
        )
    spec.argv = limited_command(list(spec.argv), limit)


def limited_command(argv: list[str], limit: int) -> list[str]:
    """`argv`, started through the launcher that sets ``RLIMIT_AS`` to `limit` bytes."""
    if argv and argv[0] in _PYTHON_NAMES:
        argv = [sys.executable, *argv[1:]]  # as jupyter_client does for a bare "python"
    return [sys.executable, "-c", _LAUNCHER, str(limit), *argv]


def check_allocation(outcome: CellOutcome, limit: int | None) -> None:
    """Raise KernelOutOfMemory if the cell of a memory-limited kernel ran out of memory."""
    error = outcome.cell.error
    if limit is not None and error is not None and error.ename == "MemoryError":
        raise KernelOutOfMemory(
            f"the cell went past the kernel memory limit ({limit / 1024**2:.0f} MiB of "
            f"address space): {error.evalue or 'MemoryError'}"
        )
