"""Checkpoints through orbax: atomic, verified, self-describing, never unpickled.

Layout: ``<workdir>/checkpoints/<epoch>/{params,train_state,meta}``; a checkpoint written on
SIGINT/SIGTERM in the middle of an epoch lives in ``<workdir>/interrupted/<global step>/``
until the next end-of-epoch checkpoint supersedes it.

* **Atomic.**  Orbax writes each checkpoint into ``<name>.orbax-checkpoint-tmp`` and renames
  it when every file is written, so a checkpoint that was being written when the process died
  is never listed, hence never loaded (the next save of the same step replaces the leftover).
* **Verified.**  ``meta`` records a SHA-256 of the parameters and of the train state, and a hash
  of their structure (paths, shapes, dtypes); a restored checkpoint whose arrays do not hash to
  it (a damaged file, a missing chunk read back as zeros), or that orbax cannot read although
  its structure is this model's (a truncated file), is refused as corrupt with
  :class:`CheckpointError`; one of another structure is refused as another model's.
* **Self-describing.**  ``meta`` is JSON: epoch, step and the fingerprint of the config that
  produced it; the trainer refuses to resume under a different config.
* **Safe to read.**  Arrays are tensorstore/zarr and metadata JSON: nothing is unpickled.

Nothing here deletes a checkpoint on an error: a corrupt or foreign checkpoint stays where it
is for the user to inspect.  A save that fails on a full disk removes only its own unfinished
temporary directory and raises :class:`vaegen.errors.DiskFullError` naming the checkpoint kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from vaegen.errors import CheckpointError
from vaegen.train import faults as faults_lib


class Checkpointer:
    """Saves and restores ``(params, train_state, meta)`` under integer keys (epochs for the
    end-of-epoch checkpoints, global steps for the interrupt checkpoints).

    Args:
      directory: where the checkpoints live (created on the first save).
      max_to_keep: how many of the latest checkpoints to keep.
      read_only: open for reading only (nothing is created).
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2, *, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        with _quiet_absl():
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=False, read_only=read_only,
                enable_async_checkpointing=False,
            )
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=("params", "train_state", "meta"), options=options
            )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, key: int) -> pathlib.Path:
        return self.directory / str(key)

    def save(self, epoch: int, params: Any, train_state: Any, meta: dict) -> None:
        """Writes the checkpoint ``epoch`` (blocking, atomic); ``meta`` (JSON-able) is stored
        with the checksums of ``params`` and ``train_state`` added."""
        meta = dict(meta, checksums={"params": tree_checksum(params), "train_state": tree_checksum(train_state)},
                    structure={"params": tree_structure(params), "train_state": tree_structure(train_state)})
        try:
            faults_lib.before_write("checkpoint", self.path(epoch))
            self.directory.mkdir(parents=True, exist_ok=True)
            with _quiet_absl(logging.CRITICAL):  # a failed save is reported once, below, not logged by orbax
                self._manager.save(
                    epoch,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardSave(params),
                        train_state=ocp.args.StandardSave(train_state),
                        meta=ocp.args.JsonSave(meta),
                    ),
                    force=True,
                )
                self._manager.wait_until_finished()
        except Exception as e:
            if not faults_lib.is_disk_full(e):
                raise
            self._remove_partial(epoch)
            kept = [k for k in self.all_epochs() if k != epoch]
            raise faults_lib.disk_full_error(
                f"checkpoint {self.path(epoch)}",
                f"the previous checkpoint {self.path(max(kept))} is kept, complete, and the run resumes from it"
                if kept else "no earlier checkpoint is in that directory (nothing was lost)") from None

    def _remove_partial(self, epoch: int) -> None:
        """Removes what a failed save of ``epoch`` left (orbax's temporary directory, never a
        finished checkpoint), to give the space back."""
        for leftover in self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def delete(self, epoch: int) -> None:
        """Removes checkpoint ``epoch`` (used for interrupt checkpoints once superseded)."""
        self._manager.delete(epoch)

    def restore_meta(self, epoch: int) -> dict:
        try:
            out = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(out["meta"])
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint {self.path(epoch)} is unreadable ({type(e).__name__}: {_first_line(e)}); "
                "move that checkpoint directory away to fall back to an earlier one, or use a new workdir"
            ) from None
        return meta

    def restore(self, epoch: int, abstract_params: Any, abstract_train_state: Any | None = None,
                meta: dict | None = None) -> tuple[Any, Any]:
        """Restores ``(params, train_state)`` (``train_state`` None if not asked for) with the
        structure, shapes, dtypes and shardings of the given abstract trees, and checks them
        against the checksums in ``meta`` (read from the checkpoint if not given)."""
        if meta is None:
            meta = self.restore_meta(epoch)
        items = {"params": ocp.args.StandardRestore(_abstract(abstract_params))}
        if abstract_train_state is not None:
            items["train_state"] = ocp.args.StandardRestore(_abstract(abstract_train_state))
        structure = meta.get("structure") or {}
        for name, tree in (("params", abstract_params), ("train_state", abstract_train_state)):
            if name in items and structure.get(name) not in (None, tree_structure(tree)):
                raise CheckpointError(
                    f"checkpoint {self.path(epoch)} holds {name} of other shapes than this model's: it was "
                    "written by a run of another configuration (copied from another workdir?); move that "
                    "checkpoint directory away to fall back to an earlier one, or use a new workdir")
        try:
            with _quiet_absl(logging.CRITICAL):
                out = self._manager.restore(epoch, args=ocp.args.Composite(**items))
        except Exception as e:
            if structure:  # the shapes match (checked above): the files are damaged
                raise CheckpointError(
                    f"checkpoint {self.path(epoch)} is corrupt: its files cannot be read back "
                    f"({type(e).__name__}: {_first_line(e)}); move that checkpoint directory away to fall back "
                    "to an earlier one, or use a new workdir"
                ) from None
            raise CheckpointError(
                f"checkpoint {self.path(epoch)} does not match this model or is corrupt "
                f"({type(e).__name__}: {_first_line(e)}); move that checkpoint directory away to fall back "
                "to an earlier one, or use a new workdir"
            ) from None
        checksums = meta.get("checksums") or {}
        for name in items:
            expected = checksums.get(name)
            if expected is not None and tree_checksum(out[name]) != expected:
                raise CheckpointError(
                    f"checkpoint {self.path(epoch)} is corrupt: its {name} do not match the checksum "
                    "recorded when it was written; move that checkpoint directory away to fall back to "
                    "an earlier one, or use a new workdir"
                )
        return out["params"], out.get("train_state") if abstract_train_state is not None else None

    def close(self) -> None:
        self._manager.close()


def tree_checksum(tree: Any) -> str | None:
    """SHA-256 over the dtypes, shapes and bytes of a tree's leaves, in tree order (``None``
    if a leaf is not readable from this process)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array):
            if leaf.is_fully_replicated:
                leaf = leaf.addressable_data(0)
            elif not leaf.is_fully_addressable:
                return None
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tree_structure(tree: Any) -> str:
    """A short hash of a tree's paths, shapes and dtypes (not its values): a checkpoint whose
    structure differs was written by another model."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            dtype = "key"
        h.update(f"{jax.tree_util.keystr(path)}:{tuple(getattr(leaf, 'shape', ()))}:{dtype};".encode())
    return h.hexdigest()[:16]


def _first_line(e: BaseException, limit: int = 160) -> str:
    """The gist of an orbax/tensorstore error: its first sentence, without the dumped specs."""
    text = str(e).strip()
    text = text.splitlines()[0] if text else ""
    text = text.split(" See full TensorStore details")[0].rstrip(". ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_absl(level_while: int = logging.ERROR):
    """Silences orbax's informational warnings (e.g. on opening a checkpoint read-only) or, with
    ``logging.CRITICAL``, its error logs too (for a call whose exception vaegen reports itself)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(level_while)
    try:
        yield
    finally:
        logger.setLevel(level)


def _abstract(tree: Any) -> Any:
    """Restore targets: the shardings of the given arrays, or this process's first device for
    leaves without one (so a checkpoint written on a pod loads on a laptop and vice versa)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree)
