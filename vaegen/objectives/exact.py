"""Maximum likelihood for a model with a tractable p(x): the objective is log p(x) itself (an
autoregressive model, :mod:`vaegen.model.autoregressive`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vaegen.objectives.base import Objective
from vaegen.registry import OBJECTIVES, NoSettings


@dataclasses.dataclass(frozen=True)
class ExactLogLikelihood(Objective):
    """log p(x) of a model whose ``log_prob`` is exact.

    Terms (nats, one example): ``log_px``, ``objective`` = ``log_px``.
    """

    bound_name = "log_px"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> dict[str, jax.Array]:
        del key, step
        log_px = model.apply(variables, x, method="log_prob")
        return {"log_px": log_px, "objective": log_px}


@OBJECTIVES.register("exact", traits={"training": "exact"})
def exact(settings: NoSettings, *, steps_per_epoch: int = 1) -> ExactLogLikelihood:
    """log p(x) itself, for a model with a tractable p(x) (model.kind=autoregressive)."""
    del settings, steps_per_epoch
    return ExactLogLikelihood()
