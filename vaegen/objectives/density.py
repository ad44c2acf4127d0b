"""The objective of a density over real vectors (``config.model.kind=density``,
:mod:`vaegen.model.densities`): the density's own training terms, per vector."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vaegen.objectives.base import Objective
from vaegen.registry import OBJECTIVES, NoSettings


@dataclasses.dataclass(frozen=True)
class DensityObjective(Objective):
    """Terms (nats, one vector): ``log_pz`` (exact for a flow, the ELBO for the second-stage VAE, the
    variational bound for the diffusion prior), their parts, and ``objective``."""

    bound_name = "log_pz"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> dict[str, jax.Array]:
        del step
        return model.apply(variables, x, key, method="terms")


@OBJECTIVES.register("density", traits={"training": "density"})
def density(settings: NoSettings, *, steps_per_epoch: int = 1) -> DensityObjective:
    """A density's own training terms on real vectors (model.kind=density): exact log p, an ELBO or a diffusion bound."""
    del settings, steps_per_epoch
    return DensityObjective()
