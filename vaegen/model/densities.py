"""A density over real vectors as a model of its own: the model kind ``density``.

An ex-post prior (:mod:`vaegen.blocks.densities`) is fitted to the codes of a trained run by
vaegen's one trainer (fused epochs, checkpoints, resume, the non-finite guard).  For the trainer
the codes are data: ``[N, D]`` float32 under ``data.binarization=real``, and the model is
:class:`DensityModel`, p(x) = p(z = x) with ``config.model.prior`` the density and
``config.model.latent_dim`` = D.  ``config.objective=density``
(:mod:`vaegen.objectives.density`) maximises the density's training terms: its exact log p(z)
(flow), the second-stage ELBO, or the diffusion bound.  Its parameters sit at ``params/prior``,
exactly where a :class:`vaegen.LatentVariableModel` keeps its prior's, so a fitted density drops
into the generative model as p(z).
"""

from __future__ import annotations

from typing import Any

import distrax
import flax.linen as nn
import jax

from vaegen.blocks import densities as densities_lib
from vaegen.errors import ConfigError
from vaegen.model.latent import NoLatents
from vaegen.registry import MODEL_KINDS, NoSettings
from vaegen.spec.run import InferenceSpec, ModelSpec, RunSpec


class DensityModel(NoLatents, nn.Module):
    """p(x) = p_prior(x) for vectors ``x [D]``: the prior component is the whole model."""

    prior: nn.Module

    def p_z(self) -> distrax.Distribution:
        return self.prior()

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x) in nats (exact, an estimate or a bound: the density's ``log_prob`` trait)."""
        return self.p_z().log_prob(x)

    def terms(self, x: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """:func:`vaegen.blocks.densities.training_terms` for one vector ``x [D]``."""
        return densities_lib.training_terms(self.p_z(), x, key)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return self.p_z().sample(seed=key, sample_shape=(n,))

    def with_output_bias(self, variables: Any, data_mean: Any) -> Any:
        """No output bias: unchanged (the standardisation is the prior's ``data_init``)."""
        del data_mean
        return variables

    def __call__(self, x: jax.Array) -> jax.Array:
        """Touches every parameter (used by ``init``): the training objective with a fixed key."""
        return self.terms(x, jax.random.key(0))["objective"]


def _check(settings: NoSettings, spec: RunSpec) -> None:
    if not spec.model.prior.trait("exists"):
        raise ConfigError("config.model.kind=density needs a density as config.model.prior (flow, two_stage, "
                          "diffusion, mixture, ...), not 'none'")
    if spec.model.prior.trait("needs_posterior"):
        raise ConfigError(f"config.model.kind=density cannot fit config.model.prior={spec.model.prior.name!r}: it "
                          "is defined through an inference network")
    if spec.data.binarization != "real":
        raise ConfigError("config.model.kind=density models real vectors: set config.data.binarization=real and "
                          "pass the data as float arrays [N, D]")


@MODEL_KINDS.register("density", check=_check, traits={"latents": "none", "training": "density"})
def build(settings: NoSettings, *, model: ModelSpec, inference: InferenceSpec, event_shape: tuple[int, ...]) -> DensityModel:
    """No z: a density over real vectors [D] (config.model.prior), e.g. an ex-post prior fitted to codes."""
    del settings, inference
    if len(event_shape) != 1 or int(event_shape[0]) != int(model.latent_dim):
        raise ConfigError(f"config.model.kind=density fits vectors of config.model.latent_dim={model.latent_dim} "
                          f"dimensions; the data are {tuple(event_shape)}")
    return DensityModel(prior=model.prior.build(latent_dim=int(model.latent_dim), event_shape=tuple(event_shape)))
