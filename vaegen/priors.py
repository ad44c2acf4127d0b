"""Priors p(z).

A prior is a Flax module whose call returns a distrax distribution with event shape ``[D]``
and empty batch shape.  It receives the model's inference network as ``posterior`` so that
priors defined through the encoder (the VampPrior, p(z) = 1/K sum_k q(z | u_k)) can use it;
priors that do not need it ignore it.
"""

from __future__ import annotations

from typing import Any

import distrax
import flax.linen as nn
import jax.numpy as jnp


class StandardNormal(nn.Module):
    """p(z) = N(z; 0, I_D), the VAE's default prior. No parameters."""

    latent_dim: int

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        d = self.latent_dim
        return distrax.MultivariateNormalDiag(jnp.zeros((d,)), jnp.ones((d,)))
