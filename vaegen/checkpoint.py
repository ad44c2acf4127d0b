"""Checkpoints through orbax: atomic, self-describing, never unpickled.

Layout: ``<workdir>/checkpoints/<epoch>/{params,train_state,meta}``.  Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a checkpoint that was
being written when the process died is never listed or loaded.  ``meta`` is JSON: the epoch,
the step and the fingerprint of the config that produced it; restoring under a different
config is refused.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used with this run (corrupt, or from another config)."""


class Checkpointer:
    """Saves and restores ``(params, train_state, meta)`` by epoch.

    Args:
      directory: where the checkpoints live (created on the first save).
      max_to_keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2, *, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        with _quiet_absl():
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                enable_async_checkpointing=False,
            )
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=("params", "train_state", "meta"), options=options
            )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, epoch: int, params: Any, train_state: Any, meta: dict) -> None:
        """Writes the checkpoint of ``epoch`` (blocking, atomic)."""
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

    def restore_meta(self, epoch: int) -> dict:
        try:
            out = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint {self.directory / str(epoch)} is unreadable ({type(e).__name__}: {e}); "
                "delete that checkpoint directory to fall back to an earlier one, or use a new workdir"
            ) from None
        return dict(out["meta"])

    def restore(self, epoch: int, abstract_params: Any, abstract_train_state: Any | None = None) -> tuple[Any, Any]:
        """Restores ``(params, train_state)`` (``train_state`` None if not asked for) with the
        structure, shapes, dtypes and shardings of the given abstract trees."""
        items = {"params": ocp.args.StandardRestore(_abstract(abstract_params))}
        if abstract_train_state is not None:
            items["train_state"] = ocp.args.StandardRestore(_abstract(abstract_train_state))
        try:
            out = self._manager.restore(epoch, args=ocp.args.Composite(**items))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.directory / str(epoch)} does not match this model or is corrupt "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "it was written by a different configuration or damaged: use a new workdir"
            ) from None
        return out["params"], out.get("train_state") if abstract_train_state is not None else None

    def close(self) -> None:
        self._manager.close()


@contextlib.contextmanager
def _quiet_absl():
    """Silences orbax's informational warnings (e.g. on opening a checkpoint read-only)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _abstract(tree: Any) -> Any:
    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree)
