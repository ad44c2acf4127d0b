"""Device meshes, data-parallel shardings and multi-host runs.

vaegen trains data-parallel over all devices of all processes with **one** code path; a
single device is the 1-device mesh, and a multi-host run (a multi-node GPU cluster, a TPU pod
slice) is the same program started once per host after :func:`initialize_distributed`.

* Parameters and optimizer state are replicated (``P()``).
* Each device-resident split is **sharded by rows** over the mesh axis ``"data"``
  (:func:`shard_rows`): every device holds ``ceil(N / devices)`` examples, and every host
  places on its devices only the rows they hold (``jax.make_array_from_callback``), so device
  memory per host falls as hosts are added.
* A step's **global batch** (``batch_size`` examples, the same indices as on one device) is
  gathered from the sharded rows by :func:`gather_rows`: each device contributes the
  examples it holds and a reduce-scatter leaves every device its ``batch_size / devices``
  slice of the batch.  XLA inserts the gradient all-reduce.  Because the batch is the same
  whatever the number of devices, a run on 8 devices follows the 1-device trajectory up to
  the order of floating-point reductions.
* Per-example work (:func:`map_examples`, :func:`map_rows`) runs on each device's own rows,
  example ``i`` keyed by its global index, so the numbers do not depend on the device count.

See ``docs/scaling.md`` for launch recipes (multi-GPU, multi-node, TPU pod slices).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

DATA_AXIS = "data"

logger = logging.getLogger(__name__)


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch / example) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


# --- multi-host ---------------------------------------------------------------------------------

def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, **kwargs) -> bool:
    """Starts the multi-process runtime (``jax.distributed.initialize``) when more than one
    process takes part; returns whether it did.

    With no arguments it starts only where a cluster of several processes is detected (SLURM
    with ``SLURM_NTASKS > 1``, Open MPI with ``OMPI_COMM_WORLD_SIZE > 1``, a multi-host Cloud
    TPU slice, or ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES > 1``), and JAX
    discovers the coordinator and the process ids itself.  Elsewhere, pass
    ``coordinator_address="host0:1234"``, ``num_processes`` and ``process_id`` (the same on
    every host but the id).  Must run before anything touches a device.
    """
    explicit = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                      process_id=process_id, **kwargs).items() if v is not None}
    if not explicit and not cluster_detected():
        return False
    if _distributed_started():
        return True
    jax.distributed.initialize(**explicit)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a job of several processes that JAX can join by itself."""
    env = os.environ if environ is None else environ

    def more_than_one(name: str) -> bool:
        try:
            return int(env.get(name, "1")) > 1
        except ValueError:
            return False

    if more_than_one("SLURM_NTASKS") or more_than_one("OMPI_COMM_WORLD_SIZE"):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return bool(env.get("JAX_COORDINATOR_ADDRESS")) and more_than_one("JAX_NUM_PROCESSES")


def _distributed_started() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except (ImportError, AttributeError):  # private API moved: assume not started
        return False


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always True on one host)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a host-side vote, e.g. to stop)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    votes = multihost_utils.process_allgather(np.asarray(int(bool(flag)), np.int32))
    return bool(np.max(votes))


# --- sharded rows ------------------------------------------------------------------------------

def padded_rows(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the number of devices."""
    d = mesh.devices.size
    return d * max(1, math.ceil(n / d))


def shard_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places ``x [N, ...]`` on the mesh sharded by rows, zero-padded to
    :func:`padded_rows` (padding rows are never used as examples).

    Every process passes the same host array (each host reads the small datasets whole) and
    puts on its own devices only the rows those devices hold.
    """
    x = np.asarray(x)
    n_pad = padded_rows(x.shape[0], mesh)
    shape = (n_pad, *x.shape[1:])
    sharding = batch_sharded(mesh)

    def rows(index: tuple[slice, ...]) -> np.ndarray:
        r = index[0]
        start, stop = r.start or 0, shape[0] if r.stop is None else r.stop
        block = np.zeros((stop - start, *x.shape[1:]), x.dtype)
        have = max(0, min(stop, x.shape[0]) - start)
        block[:have] = x[start:start + have]
        return block

    return jax.make_array_from_callback(shape, sharding, rows)


def gather_rows(data: jax.Array, idx: jax.Array, mesh: Mesh) -> jax.Array:
    """``data[idx]`` for row-sharded ``data [N_pad, ...]`` and replicated ``idx [B]``: the
    global batch ``[B, ...]``, sharded over the batch axis.

    Each device selects the requested rows it holds (zeros for the others) and a
    reduce-scatter over the mesh leaves device ``d`` the rows ``d*B/D .. (d+1)*B/D``; the
    traffic per step is one batch, whatever the size of the dataset.  ``B`` must be divisible
    by the number of devices.  On a mesh of one device it is the plain gather ``data[idx]``.
    """
    if mesh.shape[DATA_AXIS] == 1:
        return data[idx]

    def local(shard, idx):                                      # shard [M, ...], idx [B]
        m = shard.shape[0]
        local_idx = idx - jax.lax.axis_index(DATA_AXIS) * m     # [B]
        mine = (local_idx >= 0) & (local_idx < m)
        rows = shard[jnp.clip(local_idx, 0, m - 1)]             # [B, ...]
        rows = jnp.where(mine.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, jnp.zeros_like(rows))
        # Exactly one device holds each row, so the sum is that row (exact, also for uint8).
        return jax.lax.psum_scatter(rows, DATA_AXIS, scatter_dimension=0, tiled=True)  # [B/D, ...]

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA_AXIS), P()), out_specs=P(DATA_AXIS))(data, idx)


# --- the per-example map ------------------------------------------------------------------------
#
# Every per-example computation of vaegen -- bounds on held-out data during training, importance
# sampling, AIS, per-example inference, diagnostics, codes -- runs through one function:
# ``out[i] = fn(data[i], fold_in(key, i))``, each device applying ``fn`` to its own rows in
# chunks (``lax.map``), example ``i`` keyed by its *global* index, so no number depends on the
# batch size, the chunking, the number of devices or how the set is dispatched.
# :func:`map_examples` is the host-driven form (it pads, places and dispatches a whole set, with
# a progress bar); :func:`map_rows` the in-program form for rows already sharded on the devices
# (the trainer's validation pass).


def _per_device(fn: Callable[[Any, jax.Array], Any], key: jax.Array, data: Any, index: jax.Array,
                batch_size: int) -> Any:
    """``fn(data[j], fold_in(key, index[j]))`` for every row ``j`` of this device's ``data``."""
    leaves, treedef = jax.tree_util.tree_flatten(data)

    def one(args):
        i, d = args
        return fn(jax.tree_util.tree_unflatten(treedef, d), jax.random.fold_in(key, i))

    return jax.lax.map(one, (index, leaves), batch_size=batch_size)


def map_rows(fn: Callable[[Any, jax.Array, jax.Array], Any], mesh: Mesh, *, batch_size: int
             ) -> Callable[[Any, jax.Array, jax.Array], Any]:
    """Builds ``apply(params, data, key)`` (traceable, for use inside ``jax.jit``):
    ``fn(params, data[i], fold_in(key, i))`` for every row ``i`` of the row-sharded
    ``data [N_pad, ...]`` (from :func:`shard_rows`), each device on its own rows in chunks of
    ``batch_size``, ``i`` the **global** row index.

    Returns per-row outputs ``[N_pad, ...]``, replicated on every device (and process), so a
    host can read them; callers drop the padding rows.
    """

    def local(params, shard, key):                              # shard [M, ...]
        m = shard.shape[0]
        index = jax.lax.axis_index(DATA_AXIS) * m + jnp.arange(m)   # global row indices [M]
        return _per_device(lambda x, k: fn(params, x, k), key, shard, index, max(1, min(batch_size, m)))

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(DATA_AXIS))

    def apply(params, data, key):
        out = mapped(params, data, key)
        return jax.lax.with_sharding_constraint(out, replicated(mesh))

    return apply


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def default_rows(backend: str | None = None) -> int:
    """Rows (examples x samples or chains) evaluated together per device and step by default:
    2^13 on CPU, 2^18 on accelerators.  Memory per step is about rows x (width of the widest
    layer, e.g. 784) x 4 bytes."""
    backend = backend or jax.default_backend()
    return 2**13 if backend == "cpu" else 2**18


@functools.lru_cache(maxsize=64)
def _runner(treedef, static, dyn_pos, n_leaves, data_def, batch_size, mesh):
    def per_device(dyn, data_leaves, idx, key):
        leaves = [None] * n_leaves
        for i, leaf in static:
            leaves[i] = leaf
        for i, leaf in zip(dyn_pos, dyn):
            leaves[i] = leaf
        fn = jax.tree_util.tree_unflatten(treedef, leaves)
        return _per_device(fn, key, jax.tree_util.tree_unflatten(data_def, data_leaves), idx, batch_size)

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                           out_specs=P(DATA_AXIS), check_vma=False)
    return jax.jit(mapped)


def map_examples(fn: Callable[[Any, jax.Array], Any], data: Any, key: jax.Array, *, batch_size: int,
                 devices=None, progress: bool = False, desc: str | None = None, max_blocks: int = 20) -> Any:
    """``out[i] = fn(data[i], fold_in(key, i))`` for every example ``i``, on all local devices.

    Args:
      fn: per-example function ``fn(d, key) -> pytree of arrays``; a pytree itself (e.g. a
        ``jax.tree_util.Partial``) whose array leaves are passed to the compiled program as
        arguments (replicated), its other leaves as static values.
      data: pytree of arrays with a leading example axis ``[N, ...]``.
      key: PRNG key of the whole computation.
      batch_size: examples vmapped together on each device (memory only; results do not depend
        on it).
      devices: devices to shard examples over (default: all local devices).
      progress: show a tqdm bar (the set is then dispatched in up to ``max_blocks`` blocks).
    Returns:
      The outputs stacked along a leading axis ``[N, ...]`` (device arrays).

    Traceable: inside ``jax.jit`` it becomes a ``lax.map`` in the enclosing program (same keys,
    same numbers), placed and sharded by that program.
    """
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    dyn_pos = tuple(i for i, leaf in enumerate(leaves) if _is_array(leaf))
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
    dyn = [leaves[i] for i in dyn_pos]
    data_leaves, data_def = jax.tree_util.tree_flatten(data)
    n = int(data_leaves[0].shape[0])
    if any(int(d.shape[0]) != n for d in data_leaves):
        raise ValueError("all data arrays must have the same number of examples (leading axis)")
    if n == 0:
        raise ValueError("no examples to evaluate")
    if any(isinstance(a, jax.core.Tracer) for a in [*data_leaves, *dyn, key]):
        # Called inside jax.jit (or another transformation): the same per-example computation,
        # traced into the caller's program, which decides placement; no blocks, no progress bar.
        b = max(1, min(int(batch_size), n))
        return _per_device(fn, key, jax.tree_util.tree_unflatten(data_def, data_leaves), jnp.arange(n), b)
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = data_mesh(devices)
    n_dev = mesh.devices.size
    n_local = -(-n // n_dev)                                   # examples per device
    b = max(1, min(int(batch_size), n_local))
    steps = -(-n_local // b)                                   # lax.map steps per device
    blocks = min(steps, max_blocks) if progress else 1
    steps_per_block = -(-steps // blocks)
    blocks = -(-steps // steps_per_block)
    b = -(-n_local // (blocks * steps_per_block))              # the same steps, least padding
    block = n_dev * b * steps_per_block
    n_pad = blocks * block

    def pad(a):
        a = jnp.asarray(a)
        if n_pad == n:
            return a
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (n_pad - n,) + a.shape[1:])])

    data_leaves = [pad(a) for a in data_leaves]
    try:
        run = _runner(treedef, static, dyn_pos, len(leaves), data_def, b, mesh)
    except TypeError:  # an unhashable static leaf: compile without the cache
        run = _runner.__wrapped__(treedef, static, dyn_pos, len(leaves), data_def, b, mesh)
    sharded = NamedSharding(mesh, P(DATA_AXIS))
    on_every_device = NamedSharding(mesh, P())
    dyn = jax.device_put(dyn, on_every_device)
    key = jax.device_put(key, on_every_device)
    outs = []
    for s in range(0, n_pad, block):  # dispatched asynchronously; waited on below
        idx = jax.device_put(jnp.arange(s, s + block, dtype=jnp.int32), sharded)
        chunk = jax.device_put([a[s: s + block] for a in data_leaves], sharded)
        outs.append(run(dyn, chunk, idx, key))
    if progress:
        with tqdm(total=n, desc=desc, unit="ex", dynamic_ncols=True, leave=False) as bar:
            for i, out in enumerate(outs):
                jax.block_until_ready(out)
                bar.update(min(block, n - i * block))
    if len(outs) == 1:
        return jax.tree_util.tree_map(lambda a: a[:n], outs[0])
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[:n], *outs)


