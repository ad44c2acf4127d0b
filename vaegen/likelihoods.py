"""Likelihoods p(x | z): a decoder trunk followed by a head that parameterises a distrax
distribution over one observation.

Every likelihood returns a distribution whose *event* shape is the observation's shape
(e.g. ``[28, 28, 1]``), so ``log_prob(x)`` is the log-density of a whole image in nats,
``[...]`` for latents of shape ``[..., D]``.

Support: each likelihood states the values it is defined on (``support`` attribute) and
:func:`check_support` turns a violation into a clear error before any training happens
(distrax would silently return a number for grey levels under a Bernoulli).
"""

from __future__ import annotations

import math
from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class SupportError(ValueError):
    """Data lie outside the support of the likelihood they are given to."""


def _head(features: jax.Array, event_shape: Sequence[int], num_params: int, bias_init, name: str):
    """Maps decoder features ``[..., F]`` to ``num_params`` arrays of shape ``[..., *event_shape]``."""
    size = math.prod(event_shape)
    out = nn.Dense(size * num_params, name=name, bias_init=bias_init)(features)
    out = out.reshape(features.shape[:-1] + (num_params,) + tuple(event_shape))
    axis = out.ndim - len(event_shape) - 1
    # Static slices (not jnp.take, whose gather makes XLA copy the [..., *event] outputs).
    return [jax.lax.index_in_dim(out, i, axis=axis, keepdims=False) for i in range(num_params)]


class _Observation(distrax.Independent):
    """``distrax.Independent`` over the dimensions of one observation whose ``log_prob`` sums the
    elementwise log-densities over the *flattened* observation, ``[..., H*W*C]`` rather than
    ``[..., H, W, C]``: the same value, but XLA fuses the decoder's output layer with a one-axis
    reduction about twice as fast on CPU (the inner loop of training and of every estimator).

    Args:
      distribution: the elementwise distribution, batch shape ``[..., *event]``.
      reinterpreted_batch_ndims: ``len(event)``.
      flat: the same distribution with parameters reshaped to ``[..., prod(event)]``.
    """

    def __init__(self, distribution, reinterpreted_batch_ndims: int, flat):
        super().__init__(distribution, reinterpreted_batch_ndims=reinterpreted_batch_ndims)
        self._flat = flat

    def log_prob(self, value):
        n = self.reinterpreted_batch_ndims
        value = jnp.asarray(value)
        return jnp.sum(self._flat.log_prob(value.reshape(value.shape[: value.ndim - n] + (-1,))), -1)


def _flatten(a: jax.Array, event_ndims: int) -> jax.Array:
    return a.reshape(a.shape[: a.ndim - event_ndims] + (-1,))


class _BernoulliLogits(distrax.Bernoulli):
    """``distrax.Bernoulli`` whose log-probability from logits l is x l - softplus(l) (the same
    value as distrax's -softplus(-l) x - softplus(l) (1 - x) for finite logits, with one softplus
    instead of two: this is the inner loop of every likelihood estimate)."""

    def log_prob(self, value):
        if self._logits is None:
            return super().log_prob(value)
        return value * self._logits - jax.nn.softplus(self._logits)


class Bernoulli(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)) for binary images, x_i in {0, 1}.

    Attributes:
      decoder: trunk mapping ``z [..., D]`` to features ``[..., F]``.
      event_shape: shape of one observation, e.g. ``(28, 28, 1)``.
    """

    decoder: nn.Module
    event_shape: tuple[int, ...]
    support = "binary"  # x in {0, 1}

    @nn.compact
    def __call__(self, z: jax.Array) -> distrax.Distribution:
        (logits,) = _head(self.decoder(z), self.event_shape, 1, nn.initializers.zeros, "logits")
        n = len(self.event_shape)
        return _Observation(_BernoulliLogits(logits=logits), n, _BernoulliLogits(logits=_flatten(logits, n)))

    @staticmethod
    def output_bias(data_mean: np.ndarray) -> np.ndarray:
        """Bias of the logits head that makes p(x | z) the data's pixel means at init:
        logit(mean), clipped to [1e-3, 1 - 1e-3] (Burda et al. 2016)."""
        m = np.clip(np.asarray(data_mean, np.float64).reshape(-1), 1e-3, 1 - 1e-3)
        return np.log(m) - np.log1p(-m)

    head_name = "logits"


class Gaussian(nn.Module):
    """p(x | z) = prod_i N(x_i; mu(z)_i, sigma^2) for real-valued data.

    Attributes:
      decoder: trunk mapping ``z [..., D]`` to features ``[..., F]``.
      event_shape: shape of one observation.
      scale: ``"fixed"`` (sigma = ``fixed_scale``), ``"learned"`` (one global learned sigma), or
        ``"per_pixel"`` (a learned sigma per dimension of x, independent of z).
      fixed_scale: sigma for ``"fixed"`` and the initial sigma otherwise.
      min_scale: lower bound on a learned sigma (keeps the density bounded).
    """

    decoder: nn.Module
    event_shape: tuple[int, ...]
    scale: str = "fixed"
    fixed_scale: float = 1.0
    min_scale: float = 1e-3
    support = "real"

    @nn.compact
    def __call__(self, z: jax.Array) -> distrax.Distribution:
        (loc,) = _head(self.decoder(z), self.event_shape, 1, nn.initializers.zeros, "loc")
        if self.scale == "fixed":
            sigma = jnp.full(self.event_shape, self.fixed_scale, jnp.float32)
        elif self.scale in ("learned", "per_pixel"):
            shape = () if self.scale == "learned" else tuple(self.event_shape)
            init = math.log(math.expm1(max(self.fixed_scale - self.min_scale, 1e-6)))
            raw = self.param("raw_scale", nn.initializers.constant(init), shape)
            sigma = self.min_scale + nn.softplus(raw) * jnp.ones(self.event_shape)
        else:
            raise ValueError(
                f"unknown Gaussian scale {self.scale!r}; choose 'fixed', 'learned' or 'per_pixel'"
            )
        sigma = jnp.broadcast_to(sigma, loc.shape)
        n = len(self.event_shape)
        return _Observation(distrax.Normal(loc=loc, scale=sigma), n,
                            distrax.Normal(loc=_flatten(loc, n), scale=_flatten(sigma, n)))

    @staticmethod
    def output_bias(data_mean: np.ndarray) -> np.ndarray:
        """Bias of the mean head that makes mu(z) the data mean at init."""
        return np.asarray(data_mean, np.float64).reshape(-1)

    head_name = "loc"


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def check_support(likelihood: str, x: np.ndarray, *, what: str = "data") -> None:
    """Raises :class:`SupportError` if ``x`` is not in the support of ``likelihood``.

    Args:
      likelihood: a name in ``LIKELIHOODS``.
      x: observations as the likelihood would see them (floats after binarization/scaling).
      what: how to name the data in the message.
    """
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise SupportError(f"{what} contains NaN or infinite values")
    if likelihood == "bernoulli":
        bad = (x != 0) & (x != 1)
        if bad.any():
            example = x[bad].reshape(-1)[0]
            raise SupportError(
                f"{what} has values outside {{0, 1}} (e.g. {float(example):.4g}, "
                f"{int(bad.sum())} values in all) but the Bernoulli likelihood is only defined on "
                "binary data: choose a binarization protocol (--config.data.binarization="
                "dynamic|static|threshold) or a likelihood for grey levels "
                "(--config.model.likelihood=gaussian)"
            )
