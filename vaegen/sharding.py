"""Device meshes and data-parallel shardings.

vaegen trains data-parallel over all devices with one code path: parameters and the
(device-resident, uint8) dataset are replicated, every batch is split along its first axis
over the mesh axis ``"data"``, and XLA inserts the gradient all-reduce.  A single device is
the 1-device mesh.  On several hosts, :func:`initialize_distributed` must run first.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state, dataset)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def initialize_distributed(**kwargs) -> None:
    """Starts the multi-process runtime (``jax.distributed.initialize``) when more than one
    process takes part; a no-op for a single process.  Keyword arguments go to
    ``jax.distributed.initialize`` (coordinator_address, num_processes, process_id); on TPU pods
    and SLURM/Open MPI clusters they are discovered automatically."""
    if kwargs or _cluster_detected():
        jax.distributed.initialize(**kwargs)


def _cluster_detected() -> bool:
    import os

    return any(v in os.environ for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                                          "JAX_COORDINATOR_ADDRESS"))
