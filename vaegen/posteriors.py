"""Amortized inference networks q(z | x).

An inference network is an encoder trunk (:mod:`vaegen.networks`) followed by a head that
returns a distrax distribution over ``z`` with event shape ``[D]``.  It sits *beside* the
generative model p(x, z) (:mod:`vaegen.model`), never inside it.

* :class:`DiagonalGaussian` -- q(z | x) = N(z; mu(x), diag sigma(x)^2): the VAE.
* :class:`FixedScaleGaussian` -- q(z | x) = N(z; mu(x), s^2 I) with a constant s: the path from a
  VAE to an AE as s -> 0.
* :class:`PointMass` -- q(z | x) = delta(z - f(x)): the autoencoder.

Why the ELBO does not exist for the AE: ELBO(x) = E_q[log p(x | z)] - KL(q(z|x) || p(z)), and
for a point mass KL(delta_f(x) || p(z)) = -H[delta] - log p(f(x)) with differential entropy
H[delta] = -inf, so the KL is +inf and the bound is -inf for every encoder: it cannot rank
models or be optimised.  What is left is the reconstruction term log p(x | z = f(x)) -- the AE
objective (:class:`vaegen.objectives.Autoencoder`) -- and without a p(z) nothing to sample from.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp


def soft_clip(x: jax.Array, low: float, high: float) -> jax.Array:
    """Smoothly clips ``x`` to ``[low, high]`` (identity well inside, softplus near the ends)."""
    x = low + nn.softplus(x - low)
    return high - nn.softplus(high - x)


def soft_clip_inverse(y: jax.Array, low: float, high: float) -> jax.Array:
    """The ``x`` with ``soft_clip(x, low, high) == y`` for ``low < y < high``."""
    softplus_inv = lambda v: v + jnp.log(-jnp.expm1(-v))  # log(exp(v) - 1), stable
    u = high - softplus_inv(high - y)
    return low + softplus_inv(u - low)


class DiagonalGaussian(nn.Module):
    """q(z | x) = N(z; mu(x), diag(sigma(x)^2)), log sigma softly bounded.

    Attributes:
      encoder: trunk mapping ``x [..., *event]`` to features ``[..., F]``.
      latent_dim: D.
      min_log_scale, max_log_scale: bounds on log sigma (numerical safety, not a modelling
        choice: the defaults allow sigma in [4.5e-5, 20]).
    """

    encoder: nn.Module
    latent_dim: int
    min_log_scale: float = -10.0
    max_log_scale: float = 3.0

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        h = self.encoder(x)
        loc = nn.Dense(self.latent_dim, name="loc")(h)
        raw = nn.Dense(self.latent_dim, name="log_scale")(h)
        log_scale = soft_clip(raw, self.min_log_scale, self.max_log_scale)
        return distrax.MultivariateNormalDiag(loc, jnp.exp(log_scale))


class FixedScaleGaussian(nn.Module):
    """q(z | x) = N(z; mu(x), s^2 I) with a constant s; as s -> 0 this tends to the AE's point mass.

    Attributes:
      encoder: trunk mapping ``x`` to features.
      latent_dim: D.
      scale: the constant s > 0.
    """

    encoder: nn.Module
    latent_dim: int
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        loc = nn.Dense(self.latent_dim, name="loc")(self.encoder(x))
        return distrax.MultivariateNormalDiag(loc, jnp.full_like(loc, self.scale))


class PointMass(nn.Module):
    """q(z | x) = delta(z - f(x)): the deterministic encoder of an autoencoder.

    Same trunk and the same ``loc`` head as :class:`DiagonalGaussian`; there is no scale.
    ``sample`` returns f(x); ``log_prob`` is 0 at f(x) and -inf elsewhere (a point mass has no
    density on R^D, see the module docstring).
    """

    encoder: nn.Module
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        loc = nn.Dense(self.latent_dim, name="loc")(self.encoder(x))
        return distrax.Independent(distrax.Deterministic(loc=loc), reinterpreted_batch_ndims=1)


POSTERIORS = {
    "diagonal_gaussian": DiagonalGaussian,
    "fixed_scale_gaussian": FixedScaleGaussian,
    "point_mass": PointMass,
}


def is_point_mass(posterior: nn.Module) -> bool:
    """Whether ``posterior`` is deterministic (the autoencoder case)."""
    return isinstance(posterior, PointMass)
