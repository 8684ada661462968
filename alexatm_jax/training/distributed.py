"""Multi-process start-up through JAX's own runtime (``jax.distributed``).

Flags win; otherwise the environment decides: JAX's own ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, or a cluster JAX auto-detects (SLURM with more than one task, Cloud TPU pods,
Open MPI). A single process on one host needs nothing and calls nothing.
"""

from __future__ import annotations

import os
from typing import Optional


def _cluster_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:  # multi-host Cloud TPU slice
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Joins the process group if this is a multi-process run; returns True if it did.

    Must run before anything touches a JAX device. On CPU the cross-process collectives use gloo.
    """
    import jax

    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator_address is None and not _cluster_detected():
        if num_processes not in (None, 1):
            raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                             "(--coordinator_address=HOST:PORT or JAX_COORDINATOR_ADDRESS)")
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError("With a coordinator address, also give the number of processes and this process's "
                         "id (--num_processes, --process_id, or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    # Only matters for CPU devices; accelerators use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
