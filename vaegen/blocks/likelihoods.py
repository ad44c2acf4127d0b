"""Likelihoods p(x | z): a decoder trunk followed by a head that parameterises a distrax
distribution over one observation.

Every likelihood returns a distribution whose *event* shape is the observation's shape
(e.g. ``[28, 28, 1]``), so ``log_prob(x)`` is the log-density of a whole image in nats,
``[...]`` for latents of shape ``[..., D]``.

Support: each registered likelihood declares the values it is defined on (its ``support`` trait)
and :func:`check_support` turns a violation into a clear error before any training happens
(distrax would silently return a number for grey levels under a Bernoulli).

Heads: a decoder trunk returns either a feature vector ``[..., F]`` (e.g. an MLP), which a
dense layer maps to every parameter of the whole observation, or -- a trunk whose class sets
``spatial_output = True``, e.g. a convolutional decoder -- per-pixel features
``[..., H, W, F]``, which a per-pixel dense layer (a 1x1 convolution on the last axis) maps to
each pixel's parameters.  A spatial head's bias is therefore per channel, not per pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from vaegen.blocks.numerics import softplus
from vaegen.errors import ConfigError, SupportError
from vaegen.registry import LIKELIHOODS, NoSettings, Settings, setting
from vaegen.spec.run import RunSpec


def _is_spatial(decoder: nn.Module | None) -> bool:
    """Whether ``decoder`` returns per-pixel features ``[..., H, W, F]`` (``spatial_output``)."""
    return bool(getattr(decoder, "spatial_output", False))


def _check_spatial_features(features: jax.Array, pixel_shape: Sequence[int]) -> None:
    pixel_shape = tuple(pixel_shape)
    if features.ndim < len(pixel_shape) + 1 or tuple(features.shape[-len(pixel_shape) - 1:-1]) != pixel_shape:
        raise ValueError(
            f"a spatial decoder trunk must return per-pixel features [..., {', '.join(map(str, pixel_shape))}, F], "
            f"got shape {tuple(features.shape)}: make its output match the observation's spatial shape"
        )


def _head(features: jax.Array, event_shape: Sequence[int], num_params: int, bias_init, name: str,
          spatial: bool = False):
    """Maps decoder features to ``num_params`` arrays of shape ``[..., *event_shape]``.

    Vector features ``[..., F]``: one dense layer to all ``num_params * prod(event_shape)`` outputs
    (bias ``[num_params * prod(event_shape)]``, parameter-major).  Spatial features
    ``[..., *event_shape[:-1], F]`` (``spatial``): a per-pixel dense layer to
    ``num_params * C`` outputs, ``C = event_shape[-1]`` (bias ``[num_params * C]``,
    parameter-major).
    """
    event_shape = tuple(event_shape)
    if spatial:
        _check_spatial_features(features, event_shape[:-1])
        c = event_shape[-1]
        out = nn.Dense(num_params * c, name=name, bias_init=bias_init)(features)
        out = out.reshape(out.shape[:-1] + (num_params, c))
        axis = out.ndim - 2
    else:
        size = math.prod(event_shape)
        out = nn.Dense(size * num_params, name=name, bias_init=bias_init)(features)
        out = out.reshape(features.shape[:-1] + (num_params,) + event_shape)
        axis = out.ndim - len(event_shape) - 1
    # Static slices (not jnp.take, whose gather makes XLA copy the [..., *event] outputs).
    return [jax.lax.index_in_dim(out, i, axis=axis, keepdims=False) for i in range(num_params)]


def _pixel_head(features: jax.Array, pixel_shape: Sequence[int], num_params: int, bias_init, name: str,
                spatial: bool = False) -> jax.Array:
    """Maps decoder features to ``[..., *pixel_shape, num_params]``: each pixel's parameters.

    Vector features ``[..., F]``: one dense layer to ``prod(pixel_shape) * num_params`` outputs
    (bias ``[prod(pixel_shape) * num_params]``, pixel-major).  Spatial features
    ``[..., *pixel_shape, F]``: a per-pixel dense layer to ``num_params`` outputs (bias
    ``[num_params]``).
    """
    pixel_shape = tuple(pixel_shape)
    if spatial:
        _check_spatial_features(features, pixel_shape)
        return nn.Dense(num_params, name=name, bias_init=bias_init)(features)
    out = nn.Dense(math.prod(pixel_shape) * num_params, name=name, bias_init=bias_init)(features)
    return out.reshape(features.shape[:-1] + pixel_shape + (num_params,))


def _channel_mean(data_mean: np.ndarray) -> np.ndarray:
    """Per-channel mean over the pixels of a data mean ``[..., C]``: ``[C]``."""
    m = np.asarray(data_mean, np.float64)
    return m.reshape(-1, m.shape[-1]).mean(axis=0)


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
        return value * self._logits - softplus(self._logits)


# --- settings: what a config's likelihood section holds, and what each module reads -----------------

@dataclasses.dataclass(frozen=True)
class GaussianLikelihoodSettings(Settings):
    scale: str = setting("fixed", "fixed: sigma = fixed_scale; learned: one global sigma; per_pixel: a sigma per "
                         "dimension of x (independent of z)", choices=("fixed", "learned", "per_pixel"))
    fixed_scale: float = setting(1.0, "sigma when fixed, the initial sigma otherwise", gt=0)


@dataclasses.dataclass(frozen=True)
class DiscretizedLogisticSettings(Settings):
    mixtures: int = setting(1, "mixture components per pixel (PixelCNN++)", gt=0)
    channel_coupling: bool = setting(True, "with 3 channels, the mean of channel c depends linearly on the channels "
                                     "before it in the same pixel (PixelCNN++)")


# --- the modules ---------------------------------------------------------------------------------

class Bernoulli(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)) for binary images, x_i in {0, 1}.

    Attributes:
      decoder: trunk mapping ``z [..., D]`` to features ``[..., F]``, or to per-pixel features
        ``[..., H, W, F]`` if its class sets ``spatial_output = True``.
      event_shape: shape of one observation, e.g. ``(28, 28, 1)``.
    """

    decoder: nn.Module
    event_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, z: jax.Array) -> distrax.Distribution:
        (logits,) = _head(self.decoder(z), self.event_shape, 1, nn.initializers.zeros, "logits",
                          _is_spatial(self.decoder))
        n = len(self.event_shape)
        return _Observation(_BernoulliLogits(logits=logits), n, _BernoulliLogits(logits=_flatten(logits, n)))

    @staticmethod
    def output_bias(data_mean: np.ndarray, spatial: bool = False) -> np.ndarray:
        """Bias of the logits head that makes p(x | z) the data's pixel means at init:
        logit(mean), clipped to [1e-3, 1 - 1e-3] (Burda et al. 2016); ``[H*W*C]`` for
        ``data_mean [H, W, C]``.  A spatial head's bias is per channel: the logit of each
        channel's mean over the pixels, ``[C]``."""
        m = _channel_mean(data_mean) if spatial else np.asarray(data_mean, np.float64).reshape(-1)
        m = np.clip(m, 1e-3, 1 - 1e-3)
        return np.log(m) - np.log1p(-m)

    head_name = "logits"


class Gaussian(nn.Module):
    """p(x | z) = prod_i N(x_i; mu(z)_i, sigma^2) for real-valued data.

    Attributes:
      decoder: trunk mapping ``z [..., D]`` to features ``[..., F]``, or to per-pixel features
        ``[..., H, W, F]`` if its class sets ``spatial_output = True``.
      event_shape: shape of one observation.
      settings: :class:`GaussianLikelihoodSettings`: ``scale``, ``"fixed"`` (sigma =
        ``fixed_scale``), ``"learned"`` (one global learned sigma) or ``"per_pixel"`` (a learned
        sigma per dimension of x, independent of z); ``fixed_scale``, sigma for ``"fixed"`` and
        the initial sigma otherwise.

    A learned sigma is at least ``min_scale`` (keeps the density bounded).
    """

    decoder: nn.Module
    event_shape: tuple[int, ...]
    settings: GaussianLikelihoodSettings = GaussianLikelihoodSettings()
    min_scale = 1e-3

    @nn.compact
    def __call__(self, z: jax.Array) -> distrax.Distribution:
        (loc,) = _head(self.decoder(z), self.event_shape, 1, nn.initializers.zeros, "loc",
                       _is_spatial(self.decoder))
        scale, fixed_scale = self.settings.scale, self.settings.fixed_scale
        if scale == "fixed":
            sigma = jnp.full(self.event_shape, fixed_scale, jnp.float32)
        elif scale in ("learned", "per_pixel"):
            shape = () if scale == "learned" else tuple(self.event_shape)
            init = math.log(math.expm1(max(fixed_scale - self.min_scale, 1e-6)))
            raw = self.param("raw_scale", nn.initializers.constant(init), shape)
            sigma = self.min_scale + nn.softplus(raw) * jnp.ones(self.event_shape)
        else:
            raise ValueError(
                f"unknown Gaussian scale {scale!r}; choose 'fixed', 'learned' or 'per_pixel'"
            )
        sigma = jnp.broadcast_to(sigma, loc.shape)
        n = len(self.event_shape)
        return _Observation(distrax.Normal(loc=loc, scale=sigma), n,
                            distrax.Normal(loc=_flatten(loc, n), scale=_flatten(sigma, n)))

    @staticmethod
    def output_bias(data_mean: np.ndarray, spatial: bool = False) -> np.ndarray:
        """Bias of the mean head that makes mu(z) the data mean at init, ``[H*W*C]``; a spatial
        head's bias is per channel: each channel's mean over the pixels, ``[C]``."""
        return _channel_mean(data_mean) if spatial else np.asarray(data_mean, np.float64).reshape(-1)

    head_name = "loc"


NUM_LEVELS = 256
"""Grey levels of 8-bit data: the discretized logistic's observations are x = k / 255, k in 0..255."""

_HALF_BIN = 0.5 / (NUM_LEVELS - 1)  # half the width of one level's bin, 1 / 510


def _log_bin_mass(x: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log P(level of x) under a logistic(loc, s = exp(log_scale)) discretized to 256 bins, nats.

    The bin of x = k / 255 is [x - 1/510, x + 1/510], and the edge bins k = 0 and k = 255 extend to
    -inf and +inf.  With a = (x + 1/510 - loc) / s and b = (x - 1/510 - loc) / s,
        log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log(1 - sigmoid(b)) + log(1 - exp(b - a))
                                     = -softplus(-a) - softplus(b) + log(-expm1(-1 / (255 s))),
    an exact identity whose terms are each stable.  The difference of two CDFs, which underflows
    in float32 wherever both sigmoids saturate (where PixelCNN++ falls back to the density at
    the bin centre times the bin width), is never formed, so that approximation is not needed:
    the tails are exact.  Edge bins drop the term of their infinite edge.
    """
    inv_s = jnp.exp(-log_scale)
    centered = x - loc
    a = inv_s * (centered + _HALF_BIN)
    b = inv_s * (centered - _HALF_BIN)
    lowest = x < _HALF_BIN  # k = 0
    highest = x > 1.0 - _HALF_BIN  # k = 255
    log_below_upper = -jax.nn.softplus(-a)  # log sigmoid(a)
    log_above_lower = -jax.nn.softplus(b)  # log (1 - sigmoid(b))
    log_width = jnp.log(-jnp.expm1(-2.0 * _HALF_BIN * inv_s))  # log(1 - exp(b - a))
    return (jnp.where(highest, 0.0, log_below_upper) + jnp.where(lowest, 0.0, log_above_lower)
            + jnp.where(lowest | highest, 0.0, log_width))


def _chain(loc: jax.Array, coupling: jax.Array | None, value) -> tuple[jax.Array, jax.Array]:
    """Channel by channel, m_c = loc_c + sum_{j<c} a_cj v_j with v_c = ``value(c, m_c)``.

    ``loc [..., C]``; ``coupling [..., C(C-1)/2]`` (a_cj for (c, j) = (1, 0), (2, 0), (2, 1), ...)
    or ``None`` (m = loc).  Returns ``(m, v)``, each stacked on a last axis of size C.
    """
    means, values, i = [], [], 0
    for c in range(loc.shape[-1]):
        m = loc[..., c]
        if coupling is not None:
            for j in range(c):
                m = m + coupling[..., i] * values[j]
                i += 1
        means.append(m)
        values.append(value(c, m))
    return jnp.stack(jnp.broadcast_arrays(*means), axis=-1), jnp.stack(jnp.broadcast_arrays(*values), axis=-1)


class DiscretizedLogisticMixture(distrax.Distribution):
    """A mixture of discretized logistics per pixel over 8-bit images (PixelCNN++, Salimans et al.
    2017), x_pc = k / 255 for k in 0..255:

        p(x) = prod_p sum_k pi_pk prod_c DLogistic(x_pc; m_pkc, s_pkc)
        m_pkc = mu_pkc + sum_{j<c} a_pkcj x_pj      (channel coupling: red, then green, then blue)

    where DLogistic(x; m, s) is the mass that a logistic(m, s) puts on the bin of x (width 1/255,
    centred on x; the bins of 0 and 1 extend to -inf and +inf).  The mixture indicator k is shared
    by the channels of a pixel.  Event shape ``[*pixel, C]`` (e.g. ``[32, 32, 3]``), batch shape the
    parameters' leading dimensions; ``log_prob`` is in nats.

    Args:
      logits: ``[..., *pixel, K]`` unnormalised log pi, or ``None`` for K = 1.
      loc: ``[..., *pixel, K, C]`` mu, in the units of x (grey level / 255).
      log_scale: ``[..., *pixel, K, C]`` log s (bounded by the caller: s > 0 finite).
      coupling: ``[..., *pixel, K, C(C-1)/2]`` coefficients a_kcj of x_j in m_kc, pairs (c, j) in
        the order (1, 0), (2, 0), (2, 1), ...; ``None`` for independent channels.
      pixel_ndims: number of pixel axes (2: ``[H, W]``).
    """

    def __init__(self, logits: jax.Array | None, loc: jax.Array, log_scale: jax.Array,
                 coupling: jax.Array | None = None, pixel_ndims: int = 2):
        super().__init__()
        self._logits = logits
        self._loc = loc
        self._log_scale = log_scale
        self._coupling = coupling
        self._pixel_ndims = int(pixel_ndims)

    @property
    def event_shape(self) -> tuple[int, ...]:
        n = self._pixel_ndims
        return tuple(self._loc.shape[self._loc.ndim - n - 2: -2]) + (self._loc.shape[-1],)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._loc.shape[: self._loc.ndim - self._pixel_ndims - 2])

    @property
    def num_components(self) -> int:
        return self._loc.shape[-2]

    def _log_weights(self) -> jax.Array:
        """log pi ``[..., *pixel, K]``."""
        if self._logits is None:
            return jnp.zeros(self._loc.shape[:-1], self._loc.dtype)
        return jax.nn.log_softmax(self._logits, axis=-1)

    def log_prob(self, value: jax.Array) -> jax.Array:
        """log p(x) in nats, ``[...]``, for ``x [..., *pixel, C]`` with values k / 255."""
        x = jnp.asarray(value, self._loc.dtype)[..., None, :]  # [..., *pixel, 1, C]
        loc, _ = _chain(self._loc, self._coupling, lambda c, m: x[..., c])  # m_kc(x_<c)
        log_mass = jnp.sum(_log_bin_mass(x, loc, self._log_scale), axis=-1)  # [..., *pixel, K]
        log_px = jax.nn.logsumexp(self._log_weights() + log_mass, axis=-1)  # [..., *pixel]
        return jnp.sum(log_px, axis=tuple(range(-self._pixel_ndims, 0)))

    def level_log_probs(self, value: jax.Array, channel: int) -> jax.Array:
        """log p(x_c = k / 255 | x_<c) for every level k of channel ``channel`` of every pixel, in nats:
        ``[..., *pixel, 256]`` for ``x [..., *pixel, C]``, of which only the channels before ``channel``
        are read.  The mixture's weights given the channels before are pi_k prod_{j<c} DLogistic(x_j;
        m_kj, s_kj), normalized; a pixel's levels sum to 1.  What codes x channel by channel."""
        x = jnp.asarray(value, self._loc.dtype)[..., None, :]                         # [..., *pixel, 1, C]
        loc, _ = _chain(self._loc, self._coupling, lambda c, m: x[..., c])            # m_kc(x_<c)
        log_w = self._log_weights()
        if channel:
            before = _log_bin_mass(x[..., :channel], loc[..., :channel], self._log_scale[..., :channel])
            log_w = log_w + jnp.sum(before, axis=-1)                                    # [..., *pixel, K]
        log_w = jax.nn.log_softmax(log_w, axis=-1)
        levels = jnp.arange(NUM_LEVELS, dtype=self._loc.dtype) / (NUM_LEVELS - 1)       # [256]
        log_mass = _log_bin_mass(levels[:, None], loc[..., None, :, channel],
                                 self._log_scale[..., None, :, channel])              # [..., *pixel, 256, K]
        return jax.nn.logsumexp(log_w[..., None, :] + log_mass, axis=-1)

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        """``[n, ..., *pixel, C]``: k ~ pi, then channel by channel y_c ~ logistic(m_kc(x_<c), s_kc)
        rounded to its level, x_c = clip(round(255 y_c), 0, 255) / 255."""
        key_k, key_y = jax.random.split(key)
        shape = (n,) + self._loc.shape[:-2]  # [n, ..., *pixel]
        if self.num_components > 1:
            k = jax.random.categorical(key_k, self._logits, axis=-1, shape=shape)
            onehot = jax.nn.one_hot(k, self.num_components, dtype=self._loc.dtype)[..., None]
            pick = lambda a: jnp.sum(onehot * a, axis=-2)  # [n, ..., *pixel, K, P] -> [n, ..., *pixel, P]
        else:
            pick = lambda a: jnp.broadcast_to(a[..., 0, :], shape + a.shape[-1:])
        loc, log_scale = pick(self._loc), pick(self._log_scale)
        coupling = pick(self._coupling) if self._coupling is not None else None
        noise = jax.random.logistic(key_y, shape + loc.shape[-1:], self._loc.dtype)

        def draw(c, m):
            y = m + jnp.exp(log_scale[..., c]) * noise[..., c]
            return jnp.clip(jnp.round(y * (NUM_LEVELS - 1)), 0, NUM_LEVELS - 1) / (NUM_LEVELS - 1)

        return _chain(loc, coupling, draw)[1]

    def mean(self) -> jax.Array:
        """``[..., *pixel, C]``: sum_k pi_k m_kc with the coupling applied to the component means
        (m_kc = mu_kc + sum_{j<c} a_kcj m_kj), clipped to [0, 1].  This is the mean of the
        continuous logistic mixture, clipped; it is not quantised to the 256 levels and ignores
        the tail mass the edge bins gather, so near 0 and 1 it differs from the discretized
        E[x] (which with coupling has no closed form).  Used for reconstructions and sample grids.
        """
        loc, _ = _chain(self._loc, self._coupling, lambda c, m: m)
        weights = jnp.exp(self._log_weights())[..., None]  # [..., *pixel, K, 1]
        return jnp.clip(jnp.sum(weights * loc, axis=-2), 0.0, 1.0)


class DiscretizedLogistic(nn.Module):
    """p(x | z) = prod_p sum_k pi_pk(z) prod_c DLogistic(x_pc; m_pkc(z, x_p,<c), s_pkc(z)) for 8-bit
    images x = k / 255, k in 0..255 (:class:`DiscretizedLogisticMixture`; PixelCNN++'s output
    distribution, Salimans et al. 2017).  With one component and no coupling it is the
    independent discretized logistic of the VampPrior code (``log_Logistic_256``).

    Each pixel's parameters come from the head: K mixture logits (none for K = 1), K*C means, K*C
    log-scales (s >= exp(``min_log_scale``)) and, with ``channel_coupling``, K*C(C-1)/2 coupling
    coefficients a = tanh(.) in [-1, 1] (C = 3: green on red, blue on red, blue on green).

    Attributes:
      decoder: trunk mapping ``z [..., D]`` to features ``[..., F]``, or to per-pixel features
        ``[..., H, W, F]`` if its class sets ``spatial_output = True``.
      event_shape: shape of one observation ``(H, W, C)``.
      settings: :class:`DiscretizedLogisticSettings`: K = ``mixtures`` components per pixel;
        ``channel_coupling``: the mean of channel c depends linearly on the observed channels
        before it.

    log s is at least ``min_log_scale`` (x in [0, 1]; PixelCNN++'s -7).
    """

    decoder: nn.Module
    event_shape: tuple[int, ...]
    settings: DiscretizedLogisticSettings = DiscretizedLogisticSettings()
    min_log_scale = -7.0
    head_name = "head"
    init_scale = 0.1  # s of every logistic at initialisation (logistic std 0.18)

    def _sizes(self) -> tuple[int, int, int]:
        """(mixture logits, means = log-scales, coupling coefficients) per pixel."""
        k, c = int(self.settings.mixtures), int(self.event_shape[-1])
        coupled = self.settings.channel_coupling and c > 1
        return (k if k > 1 else 0), k * c, (k * c * (c - 1) // 2 if coupled else 0)

    def num_params(self) -> int:
        """Parameters per pixel."""
        n_logits, n_loc, n_coupling = self._sizes()
        return n_logits + 2 * n_loc + n_coupling

    def _pixel_bias(self, pixel_means: np.ndarray) -> np.ndarray:
        """``[N, P]`` head biases for ``pixel_means [N, C]``: logits 0, every component's mean at
        the pixel mean, log s = log ``init_scale``, coupling 0."""
        n_logits, _, n_coupling = self._sizes()
        k = int(self.settings.mixtures)
        n = pixel_means.shape[0]
        loc = np.tile(pixel_means, (1, k))
        log_scale = np.full_like(loc, math.log(self.init_scale))
        return np.concatenate([np.zeros((n, n_logits)), loc, log_scale, np.zeros((n, n_coupling))], axis=1)

    def output_bias(self, data_mean: np.ndarray, spatial: bool = False) -> np.ndarray:
        """Bias of the head that puts every component's mean at the data mean at init (mixture
        logits and coupling 0, s = ``init_scale``): ``[H*W*P]`` for ``data_mean [H, W, C]``, P
        parameters per pixel; a spatial head's bias is per channel, ``[P]``, with the means at
        each channel's mean over the pixels."""
        c = int(self.event_shape[-1])
        m = _channel_mean(data_mean)[None] if spatial else np.asarray(data_mean, np.float64).reshape(-1, c)
        return self._pixel_bias(m).reshape(-1)

    @nn.compact
    def __call__(self, z: jax.Array) -> distrax.Distribution:
        pixel_shape, c = tuple(self.event_shape[:-1]), int(self.event_shape[-1])
        k = int(self.settings.mixtures)
        if k < 1:
            raise ValueError(f"the discretized logistic needs at least one mixture component, got mixtures={k}")
        p = self.num_params()
        default = self._pixel_bias(np.full((1, c), 0.5))[0]

        def bias_init(key, shape, dtype=jnp.float32):
            del key
            return jnp.asarray(np.tile(default, shape[0] // p), dtype)

        out = _pixel_head(self.decoder(z), pixel_shape, p, bias_init, self.head_name, _is_spatial(self.decoder))
        n_logits, n_loc, n_coupling = self._sizes()
        cut = lambda start, size: jax.lax.slice_in_dim(out, start, start + size, axis=-1)
        lead = out.shape[:-1]
        logits = cut(0, n_logits) if n_logits else None
        loc = cut(n_logits, n_loc).reshape(lead + (k, c))
        log_scale = jnp.maximum(cut(n_logits + n_loc, n_loc).reshape(lead + (k, c)), self.min_log_scale)
        coupling = None
        if n_coupling:
            coupling = jnp.tanh(cut(n_logits + 2 * n_loc, n_coupling).reshape(lead + (k, c * (c - 1) // 2)))
        return DiscretizedLogisticMixture(logits, loc, log_scale, coupling, pixel_ndims=len(pixel_shape))


def output_bias(likelihood: nn.Module, data_mean: np.ndarray) -> np.ndarray:
    """The bias of ``likelihood``'s head (``head_name``) that starts p(x | z) at the data mean
    ``[H, W, C]``: per pixel for a vector head, per channel for a spatial head (see each
    likelihood's ``output_bias``)."""
    if _is_spatial(getattr(likelihood, "decoder", None)):
        return np.asarray(likelihood.output_bias(data_mean, spatial=True))
    return np.asarray(likelihood.output_bias(data_mean))


def check_support(likelihood: str, x: np.ndarray, *, what: str = "data") -> None:
    """Raises :class:`SupportError` if ``x`` is not in the support of ``likelihood``.

    Args:
      likelihood: a registered likelihood's name, or a support (``binary``, ``real``, ``8bit``).
      x: observations as the likelihood would see them (floats after binarization/scaling).
      what: how to name the data in the message.
    """
    support = LIKELIHOODS.get(likelihood).trait("support") if likelihood in LIKELIHOODS else likelihood
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise SupportError(f"{what} contains NaN or infinite values")
    if support == "binary":
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
    elif support == "8bit":
        levels = x.astype(np.float64) * (NUM_LEVELS - 1)
        bad = (np.abs(levels - np.round(levels)) > 1e-3) | (levels < -1e-3) | (levels > NUM_LEVELS - 1 + 1e-3)
        if bad.any():
            example = x[bad].reshape(-1)[0]
            raise SupportError(
                f"{what} has values that are not 8-bit grey levels k/255, k in 0..255 (e.g. {float(example):.6g}, "
                f"{int(bad.sum())} values in all); the discretized logistic likelihood is defined on those 256 "
                "levels only: feed uint8 data with --config.data.binarization=none, or choose a likelihood for "
                "continuous values (--config.model.likelihood=gaussian)"
            )


# --- registered likelihoods ------------------------------------------------------------------------
#
# Traits (declared with :data:`vaegen.registry.LIKELIHOODS`): ``support``: ``binary`` (x in {0, 1}),
# ``real`` or ``8bit`` (x = k / 255): what the data must be (:func:`check_support`,
# :func:`vaegen.data.checks.check_splits`).


def _needs_8bit_data(settings: DiscretizedLogisticSettings, spec: RunSpec) -> None:
    if spec.data.binarization != "none":
        raise ConfigError(
            "config.model.likelihood=discretized_logistic models the 256 grey levels of 8-bit data, but "
            f"config.data.binarization={spec.data.binarization!r} makes the data binary: set "
            "--config.data.binarization=none (or use --config.model.likelihood=bernoulli for binary data)")


@LIKELIHOODS.register("bernoulli", traits={"support": "binary"})
def bernoulli(settings: NoSettings, *, decoder: nn.Module, event_shape: tuple[int, ...]) -> Bernoulli:
    """p(x | z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)): binary images."""
    del settings
    return Bernoulli(decoder=decoder, event_shape=event_shape)


@LIKELIHOODS.register("gaussian", settings=GaussianLikelihoodSettings, traits={"support": "real"})
def gaussian(settings: GaussianLikelihoodSettings, *, decoder: nn.Module, event_shape: tuple[int, ...]) -> Gaussian:
    """p(x | z) = prod_i N(x_i; mu(z)_i, sigma^2): real-valued data."""
    return Gaussian(decoder=decoder, event_shape=event_shape, settings=settings)


@LIKELIHOODS.register("discretized_logistic", settings=DiscretizedLogisticSettings, check=_needs_8bit_data,
                      traits={"support": "8bit"})
def discretized_logistic(settings: DiscretizedLogisticSettings, *, decoder: nn.Module,
                         event_shape: tuple[int, ...]) -> DiscretizedLogistic:
    """A mixture of discretized logistics per pixel with channel coupling (PixelCNN++): 8-bit images, bits/dim."""
    return DiscretizedLogistic(decoder=decoder, event_shape=event_shape, settings=settings)
