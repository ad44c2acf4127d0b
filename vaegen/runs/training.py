"""Training a run from a config: the boundary between a loose config and the trainer."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from vaegen.config import schema
from vaegen.data import datasets
from vaegen.train import trainer as trainer_lib


def spec_of(config: ml_collections.ConfigDict | schema.RunSpec) -> schema.RunSpec:
    """The typed run spec of a config (converted once, here) or of a spec (as it is)."""
    return config if isinstance(config, schema.RunSpec) else schema.to_spec(config)


def train_and_evaluate(config: ml_collections.ConfigDict | schema.RunSpec, workdir: str | os.PathLike, *,
                       splits: datasets.Splits | None = None, devices=None) -> dict[str, Any]:
    """Trains the model of ``config`` (a ConfigDict from :func:`vaegen.load_config`, or a
    :class:`vaegen.config.schema.RunSpec`) in ``workdir``, resuming if it holds a checkpoint;
    see :func:`vaegen.train.trainer.train_and_evaluate`.  Returns the last line of
    ``metrics.jsonl``."""
    return trainer_lib.train_and_evaluate(spec_of(config), workdir, splits=splits, devices=devices)
