"""Densities over a real vector z [D] that are learned from samples: the ex-post priors.

Each is a prior component (:mod:`vaegen.blocks.priors`): a Flax module whose call returns a
distrax distribution with event ``[D]`` (``log_prob`` in nats, ``sample``), so it is p(z) of a
:class:`vaegen.LatentVariableModel` like any prior.  They are fitted to the codes of a trained
autoencoder or VAE (:mod:`vaegen.studies.expost`) by vaegen's trainer, as the model kind
``density`` (:mod:`vaegen.model.densities`): the codes are the data (``data.binarization=real``)
and the objective ``density`` maximises :func:`training_terms`.

================  ============================================  ===================================
``flow``          a normalizing flow on a N(0, I) base:         ``log_prob``: **exact**
                  affine coupling layers (RealNVP, distrax
                  ``MaskedCoupling``) or masked autoregressive
                  affine layers (MAF)
``two_stage``     a second VAE whose data are the codes         ``log_prob``: log of an **unbiased
                  (Dai & Wipf 2019): p(z) = E_p(u) p(z | u)     importance-sampling estimate** of
                                                                p(z) (a lower bound in expectation)
``diffusion``     a variational diffusion model on z            ``log_prob``: a Monte Carlo estimate
                  (Kingma et al. 2021), sampled by its          of its **variational lower bound**
                  reverse process                               (unbiased for the bound)
================  ============================================  ===================================

Every density first standardises z with a fixed per-dimension affine map, s = (z - m) / c,
``data_loc`` m and ``data_log_scale`` log c set from the training codes before training (the
prior's ``data_init`` trait; gradients are stopped through them), so that
log p(z) = log p_s(s) - sum_d log c_d.

The estimates inside ``log_prob`` need randomness but a distribution's ``log_prob`` takes no key:
they draw their noise from the fixed key ``seed`` (a setting).  The noise is independent of z, so
for every z the value is an unbiased estimate of p(z) (two-stage) or of the bound (diffusion)
over the draw of that key.  All values are in nats.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.activations import ACTIVATIONS, activation
from vaegen.errors import ConfigError
from vaegen.registry import PRIORS, Settings, setting
from vaegen.spec.run import RunSpec

Terms = dict[str, jax.Array]
CV_POWER = 2.0
"""The control variate of the diffusion bound's estimate is c_t (|eps|^2 - D) with c_t = alpha_t^4 (measured:
three times less standard deviation per code than none on 2-D Gaussian codes)."""

LOG_PROB_MEANING = {
    "flow": "exact",
    "two_stage": "unbiased importance-sampling estimate of p(z) (its log: a lower bound in expectation)",
    "diffusion": "variational lower bound (Monte Carlo estimate)",
}
"""What each density's ``log_prob`` is."""


# --- settings: what a config's prior section holds, and what each module reads ----------------------

@dataclasses.dataclass(frozen=True)
class FlowDensitySettings(Settings):
    kind: str = setting("autoregressive", "autoregressive: masked autoregressive affine layers (MAF; density in one "
                        "pass, sampling D passes per layer); coupling: affine coupling layers (RealNVP, "
                        "distrax.MaskedCoupling; needs D >= 2)", choices=("autoregressive", "coupling"))
    layers: int = setting(5, "flow layers (depth)", gt=0)
    hidden: tuple[int, ...] = setting((128, 128), "hidden widths of each layer's conditioner", items_gt=0,
                                      nonempty=True)
    activation: str = setting("relu", "nonlinearity of the conditioners", choices=tuple(ACTIVATIONS))
    max_log_scale: float = setting(3.0, "bound on each layer's log scale (tanh-squashed)", gt=0)


@dataclasses.dataclass(frozen=True)
class TwoStageSettings(Settings):
    latent_dim: int = setting(0, "K, the second VAE's latent dimension (0 = the codes' D)", ge=0)
    hidden: tuple[int, ...] = setting((256, 256), "hidden widths of its encoder and decoder", items_gt=0,
                                      nonempty=True)
    activation: str = setting("relu", "nonlinearity", choices=tuple(ACTIVATIONS))
    is_samples: int = setting(64, "importance samples S of log p(z) (evaluation and sampling use p(z) itself)", gt=0)
    min_log_scale: float = setting(-5.0, "floor of the decoder's log sigma (standardised units)")
    seed: int = setting(0, "key of the importance samples inside log p(z)")


@dataclasses.dataclass(frozen=True)
class DiffusionSettings(Settings):
    hidden: tuple[int, ...] = setting((256, 256), "hidden widths of the noise-prediction MLP", items_gt=0,
                                      nonempty=True)
    activation: str = setting("silu", "nonlinearity", choices=tuple(ACTIVATIONS))
    schedule: str = setting("fixed", "fixed: gamma(t) linear from gamma_min to gamma_max; learned: learned end "
                            "points and monotone shape", choices=("fixed", "learned"))
    gamma_min: float = setting(-10.0, "gamma(0) (log SNR -gamma: 10 = nearly noiseless)")
    gamma_max: float = setting(8.0, "gamma(1) (nearly pure noise)")
    schedule_bins: int = setting(16, "pieces of the learned piecewise-linear schedule", gt=0)
    bound_samples: int = setting(128, "Monte Carlo times per code in the bound on log p(z) (evaluation)", gt=0)
    train_samples: int = setting(1, "Monte Carlo times per code in the training objective", gt=0)
    bound_steps: int = setting(0, "T of the bound: 0 = continuous time; T = the bound of the T-step model", ge=0)
    sample_steps: int = setting(100, "reverse-process steps of the sampler", gt=0)
    seed: int = setting(0, "key of the Monte Carlo draws inside log p(z)")

    def validate(self, key):
        if self.gamma_max <= self.gamma_min:
            raise ConfigError(f"{key('gamma_max')}={self.gamma_max} must exceed {key('gamma_min')}={self.gamma_min}")


# --- small networks on explicit parameter arrays ---------------------------------------------------

def _mlp_params(module: nn.Module, name: str, sizes: tuple[int, ...], *, zero_last: bool = False) -> list:
    """Parameters ``[(w [fan_in, fan_out], b [fan_out]), ...]`` of an MLP with layer sizes ``sizes``
    (input first), created on ``module`` as ``{name}_w{i}``, ``{name}_b{i}``; the last layer starts
    at zero with ``zero_last`` (the layer then starts as the identity map)."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        init = nn.initializers.zeros if (last and zero_last) else nn.initializers.lecun_normal()
        w = module.param(f"{name}_w{i}", init, (fan_in, fan_out))
        b = module.param(f"{name}_b{i}", nn.initializers.zeros, (fan_out,))
        layers.append((w, b))
    return layers


def _mlp(layers: list, h: jax.Array, activation: Callable, masks: list | None = None) -> jax.Array:
    """The MLP of :func:`_mlp_params` on ``h [..., fan_in]`` (kernels times ``masks`` where given)."""
    for i, (w, b) in enumerate(layers):
        if masks is not None:
            w = w * masks[i]
        h = h @ w + b
        if i < len(layers) - 1:
            h = activation(h)
    return h


def _standardizer(module: nn.Module, d: int) -> tuple[jax.Array, jax.Array]:
    """The fixed affine map s = (z - m) / c: ``(m [D], log c [D])``, gradients stopped."""
    loc = module.param("data_loc", nn.initializers.zeros, (d,))
    log_scale = module.param("data_log_scale", nn.initializers.zeros, (d,))
    return jax.lax.stop_gradient(loc), jax.lax.stop_gradient(log_scale)


def _standardized(dist: distrax.Distribution, loc: jax.Array, log_scale: jax.Array) -> distrax.Distribution:
    """p(z) from p_s(s), s = (z - m) / c: log p(z) = log p_s(s) - sum log c (a bound stays a bound)."""
    return distrax.Transformed(dist, distrax.Block(distrax.ScalarAffine(shift=loc, log_scale=log_scale), 1))


# --- flow ----------------------------------------------------------------------------------------------

def coupling_mask(d: int, layer: int) -> np.ndarray:
    """The {0, 1} mask ``[D]`` of coupling layer ``layer``: the dimensions it keeps (they condition the
    others); alternating halves of an interleaved split, so every dimension is transformed."""
    return ((np.arange(d) + layer) % 2 == 0)


def made_masks(d: int, hidden: tuple[int, ...], reverse: bool) -> list[np.ndarray]:
    """Masks ``[fan_in, fan_out]`` of a MADE conditioner over z [D] whose outputs are (shift, log
    scale) of every dimension: output d sees inputs before d in the order (natural, or reversed).
    Hidden unit k has degree k mod D in {0, .., D - 1} (it sees inputs of order <= its degree;
    degree 0 sees none), so D = 1 works too."""
    order = np.arange(1, d + 1)[::-1] if reverse else np.arange(1, d + 1)   # order[i]: position of input i
    degrees = [order]
    for width in hidden:
        degrees.append(np.arange(width) % d)
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    out = (order[None, :] > degrees[-1][:, None]).astype(np.float32)           # [H_last, D]
    masks.append(np.concatenate([out, out], axis=1))                           # shift and log scale
    return masks


class MaskedAutoregressiveAffine(distrax.Bijector):
    """One MAF layer (Papamakarios et al. 2017) on events [D]: forward (base u -> z)
    z_i = u_i exp(a_i(z_<i)) + b_i(z_<i), sequential over the D dimensions; inverse (z -> u) in
    one pass, u = (z - b(z)) exp(-a(z)), log |det d u / d z| = -sum_i a_i(z)."""

    def __init__(self, layers: list, masks: list, activation: Callable, max_log_scale: float):
        super().__init__(event_ndims_in=1)
        self._layers, self._masks, self._activation = layers, masks, activation
        self._max = max_log_scale

    def _shift_log_scale(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = _mlp(self._layers, z, self._activation, self._masks)
        shift, raw = jnp.split(h, 2, axis=-1)
        return shift, self._max * jnp.tanh(raw / self._max)

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = x.shape[-1]

        def body(_, y):                      # after pass i the first i + 1 dimensions (in order) are final
            shift, log_scale = self._shift_log_scale(y)
            return x * jnp.exp(log_scale) + shift

        y = jax.lax.fori_loop(0, d, body, jnp.zeros_like(x))
        _, log_scale = self._shift_log_scale(y)
        return y, jnp.sum(log_scale, -1)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        shift, log_scale = self._shift_log_scale(y)
        return (y - shift) * jnp.exp(-log_scale), -jnp.sum(log_scale, -1)


class FlowDensity(nn.Module):
    """p(z) = T_# N(0, I): ``layers`` affine coupling (``kind="coupling"``) or masked autoregressive
    (``kind="autoregressive"``) layers, each conditioned by an MLP of widths ``hidden``, after the
    fixed standardisation (``settings``: :class:`FlowDensitySettings`).  Exact log p(z) (nats);
    sampling is one pass (coupling) or D passes per layer (autoregressive).  Every layer starts as
    the identity."""

    latent_dim: int
    settings: FlowDensitySettings = FlowDensitySettings()

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        s = self.settings
        d = self.latent_dim
        act = activation(s.activation)
        max_log_scale = s.max_log_scale
        loc, log_scale = _standardizer(self, d)
        bijectors = []
        for l in range(s.layers):
            if s.kind == "coupling":
                params = _mlp_params(self, f"layer{l}", (d, *s.hidden, 2 * d), zero_last=True)
                mask = jnp.asarray(coupling_mask(d, l))

                def conditioner(z_kept, params=params):
                    shift, raw = jnp.split(_mlp(params, z_kept, act), 2, axis=-1)
                    return shift, max_log_scale * jnp.tanh(raw / max_log_scale)

                bijectors.append(distrax.MaskedCoupling(
                    mask=mask, conditioner=conditioner,
                    bijector=lambda p: distrax.ScalarAffine(shift=p[0], log_scale=p[1])))
            else:
                hidden = tuple(s.hidden)
                params = _mlp_params(self, f"layer{l}", (d, *hidden, 2 * d), zero_last=True)
                masks = [jnp.asarray(m) for m in made_masks(d, hidden, reverse=bool(l % 2))]
                bijectors.append(MaskedAutoregressiveAffine(params, masks, act, max_log_scale))
        base = distrax.MultivariateNormalDiag(jnp.zeros((d,)), jnp.ones((d,)))
        flow = distrax.Transformed(base, distrax.Chain(bijectors[::-1]))  # the Chain applies its last first
        return _standardized(flow, loc, log_scale)


class _VectorDistribution(distrax.Distribution):
    """A distribution over one vector of ``self._d`` numbers: event ``[d]``, no batch."""

    @property
    def event_shape(self):
        return (self._d,)

    @property
    def batch_shape(self):
        return ()


# --- second-stage VAE ------------------------------------------------------------------------------

class TwoStageDistribution(_VectorDistribution):
    """p(s) = E_{u ~ N(0, I_K)} N(s; mu(u), diag sigma^2) of a VAE on the standardised codes s [D],
    with its encoder q(u | s) = N(m(s), diag v(s)) beside it (Dai & Wipf 2019).

    ``log_prob(s)``: log (1/S sum_j p(s | u_j) p(u_j) / q(u_j | s)), u_j ~ q(u | s), with the S
    standard-normal draws of the fixed ``key``: an unbiased estimate of p(s) inside the log.
    :meth:`training_terms`: the ELBO (nats), the objective the trainer maximises."""

    def __init__(self, enc: list, dec: list, dec_log_scale: jax.Array, *, latent_dim: int, data_dim: int,
                 activation: Callable, num_samples: int, key: jax.Array):
        self._enc, self._dec, self._dec_log_scale = enc, dec, dec_log_scale
        self._k, self._d, self._act = latent_dim, data_dim, activation
        self._num_samples, self._key = num_samples, key

    def encode(self, s: jax.Array) -> distrax.Distribution:
        mean, raw = jnp.split(_mlp(self._enc, s, self._act), 2, axis=-1)
        return distrax.MultivariateNormalDiag(mean, jnp.exp(jnp.clip(raw, -10.0, 5.0)))

    def decode(self, u: jax.Array) -> distrax.Distribution:
        mean = _mlp(self._dec, u, self._act)
        return distrax.MultivariateNormalDiag(mean, jnp.broadcast_to(jnp.exp(self._dec_log_scale), mean.shape))

    def _prior(self) -> distrax.Distribution:
        return distrax.MultivariateNormalDiag(jnp.zeros((self._k,)), jnp.ones((self._k,)))

    def log_weights(self, s: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """log p(s | u_j) + log p(u_j) - log q(u_j | s), u_j ~ q(u | s): ``[S, ...]`` for ``s [..., D]``."""
        q = self.encode(s)
        eps = jax.random.normal(key, (num_samples, self._k))                      # [S, K]
        eps = eps.reshape((num_samples,) + (1,) * (s.ndim - 1) + (self._k,))
        u = q.loc + q.scale_diag * eps                                             # [S, ..., K]
        return self.decode(u).log_prob(s) + self._prior().log_prob(u) - q.log_prob(u)

    def log_prob(self, value: jax.Array) -> jax.Array:
        return self.estimate(value, self._key)

    def estimate(self, value: jax.Array, key: jax.Array) -> jax.Array:
        """log of the S-sample importance-sampling estimate of p(s) with the draws of ``key``."""
        lw = self.log_weights(value, key, self._num_samples)
        return jax.nn.logsumexp(lw, axis=0) - math.log(self._num_samples)

    def training_terms(self, s: jax.Array, key: jax.Array) -> Terms:
        q = self.encode(s)
        u = q.sample(seed=key)
        reconstruction = self.decode(u).log_prob(s)
        kl = q.kl_divergence(self._prior())
        elbo = reconstruction - kl
        return {"log_pz": elbo, "reconstruction": reconstruction, "kl": kl, "objective": elbo}

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        key_u, key_s = jax.random.split(key)
        u = jax.random.normal(key_u, (n, self._k))
        return self.decode(u).sample(seed=key_s)


class TwoStageDensity(nn.Module):
    """The second-stage VAE over z [D] (Dai & Wipf 2019): p(z) through its own latent u [K];
    see :class:`TwoStageDistribution`.  Decoder scale: one learned sigma per dimension, floored at
    ``exp(min_log_scale)`` (in standardised units).  ``settings``: :class:`TwoStageSettings` (K =
    ``latent_dim``, 0 for the codes' D; S = ``is_samples``)."""

    latent_dim: int
    settings: TwoStageSettings = TwoStageSettings()

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        s = self.settings
        d = self.latent_dim
        k = s.latent_dim or d
        loc, log_scale = _standardizer(self, d)
        enc = _mlp_params(self, "encoder", (d, *s.hidden, 2 * k))
        dec = _mlp_params(self, "decoder", (k, *s.hidden, d))
        raw = self.param("decoder_log_scale", nn.initializers.zeros, (d,))
        dec_log_scale = s.min_log_scale + jax.nn.softplus(raw - s.min_log_scale)   # >= min_log_scale
        dist = TwoStageDistribution(enc, dec, dec_log_scale, latent_dim=k, data_dim=d,
                                    activation=activation(s.activation),
                                    num_samples=s.is_samples, key=jax.random.key(s.seed))
        return _standardized(dist, loc, log_scale)


# --- variational diffusion ------------------------------------------------------------------------

class DiffusionDistribution(_VectorDistribution):
    """A variational diffusion model (Kingma et al. 2021) on the standardised codes s [D].

    Forward process q(z_t | s) = N(alpha_t s, sigma_t^2 I), alpha_t^2 = sigmoid(-gamma(t)),
    sigma_t^2 = sigmoid(gamma(t)), gamma increasing on [0, 1]; noise prediction eps_hat(z_t, t).
    The variational lower bound (nats), each term separately:

      log p(s) >= reconstruction - prior - diffusion
      reconstruction = E_q[log N(s; z_0 / alpha_0, exp(gamma(0)) I)] = -D/2 (log 2 pi + 1 + gamma(0))   (exact)
      prior          = KL(q(z_1 | s) || N(0, I))                                                       (exact)
      diffusion      = 1/2 E_{t, eps}[gamma'(t) |eps - eps_hat(z_t, t)|^2]          (T = 0: continuous time)
                     = T/2 E_{i, eps}[(exp(gamma(t_i) - gamma(t_{i-1})) - 1) |eps - eps_hat(z_{t_i}, t_i)|^2]
                                                                       (T steps, t_i = i / T)

    estimated with ``num_samples`` stratified times (and their noise) per code (``train_samples`` in
    training), with |eps|^2 - D as a control variate (mean zero): unbiased for the bound.  Its exp is
    not: E[exp(estimate)] >= exp(bound) (Jensen), by about exp(Var / 2); ``log_prob`` therefore
    averages enough samples (``bound_samples``) for that variance to be small, and the ex-post
    report states it (``log_pz_mc_std`` in the fit's ``fitted.json``).  ``log_prob``
    uses the fixed ``key``; :meth:`training_terms` a fresh one.  Sampling: z_1 ~ N(0, I), the
    reverse process p(z_s | z_t) = q(z_s | z_t, s = s_hat(z_t)) over ``sample_steps`` equal steps,
    then s ~ N(z_0 / alpha_0, exp(gamma(0)) I) -- the T-step model, whose own bound is the one with
    ``bound_steps = sample_steps``.
    """

    def __init__(self, net: list, gamma: Callable, dgamma: Callable, *, data_dim: int, activation: Callable,
                 num_samples: int, bound_steps: int, sample_steps: int, key: jax.Array, train_samples: int = 1):
        self._net, self._gamma, self._dgamma = net, gamma, dgamma
        self._train_samples = train_samples
        self._d, self._act = data_dim, activation
        self._num_samples, self._bound_steps, self._sample_steps, self._key = num_samples, bound_steps, sample_steps, key

    def eps_hat(self, z: jax.Array, t: jax.Array) -> jax.Array:
        """The noise prediction for ``z [..., D]`` at times ``t [...]``."""
        freqs = jnp.pi * 2.0 ** jnp.arange(4)
        emb = jnp.concatenate([t[..., None] * 2 - 1, jnp.sin(t[..., None] * freqs), jnp.cos(t[..., None] * freqs)], -1)
        return _mlp(self._net, jnp.concatenate([z, emb], -1), self._act)

    def bound_terms(self, s: jax.Array, key: jax.Array, num_samples: int | None = None) -> Terms:
        """The bound's terms for ``s [..., D]`` (each ``[...]``, nats) with the noise of ``key`` and
        ``num_samples`` times per code (default: the distribution's)."""
        d, n = self._d, int(num_samples or self._num_samples)
        g0, g1 = self._gamma(jnp.zeros(())), self._gamma(jnp.ones(()))
        reconstruction = jnp.broadcast_to(-0.5 * d * (math.log(2 * math.pi) + 1.0 + g0), s.shape[:-1])
        a1_sq, s1_sq = jax.nn.sigmoid(-g1), jax.nn.sigmoid(g1)
        prior = 0.5 * jnp.sum(a1_sq * s ** 2 + s1_sq - 1.0 - jnp.log(s1_sq), -1)
        key_t, key_e = jax.random.split(key)
        batch = s.shape[:-1]
        u = jax.random.uniform(key_t, batch)                                        # one offset per code
        strata = (jnp.arange(n).reshape((n,) + (1,) * len(batch)) + u) / n          # [S, ...] stratified in (0, 1)
        eps = jax.random.normal(key_e, (n,) + s.shape)                              # [S, ..., D]
        if self._bound_steps:
            steps = self._bound_steps
            i = jnp.floor(strata * steps) + 1.0                                     # in {1, .., T}
            t, t_prev = i / steps, (i - 1.0) / steps
            weight = steps * jnp.expm1(self._gamma(t) - self._gamma(t_prev))        # [S, ...]
        else:
            t = strata
            weight = self._dgamma(t)
        g = self._gamma(t)[..., None]                                               # [S, ..., 1]
        z_t = jnp.sqrt(jax.nn.sigmoid(-g)) * s + jnp.sqrt(jax.nn.sigmoid(g)) * eps
        # |eps - eps_hat|^2 less the control variate c_t (|eps|^2 - D), mean zero whatever the network: the
        # same expectation, without most of the chi-square noise of the low-noise end (eps_hat near 0 there,
        # c_t = alpha_t^CV_POWER near 1; near 0 at the high-noise end, where eps_hat follows eps).
        c = jax.nn.sigmoid(-g[..., 0]) ** CV_POWER
        err = jnp.sum((eps - self.eps_hat(z_t, t)) ** 2, -1) - c * (jnp.sum(eps ** 2, -1) - d)   # [S, ...]
        diffusion = 0.5 * jnp.mean(weight * err, 0)
        bound = reconstruction - prior - diffusion
        return {"log_pz": bound, "reconstruction": reconstruction, "prior_loss": prior, "diffusion_loss": diffusion,
                "gamma_0": jnp.broadcast_to(g0, bound.shape), "gamma_1": jnp.broadcast_to(g1, bound.shape)}

    def log_prob(self, value: jax.Array) -> jax.Array:
        return self.estimate(value, self._key)

    def estimate(self, value: jax.Array, key: jax.Array) -> jax.Array:
        """The Monte Carlo estimate of the bound with the draws of ``key``."""
        return self.bound_terms(value, key)["log_pz"]

    def training_terms(self, s: jax.Array, key: jax.Array) -> Terms:
        terms = self.bound_terms(s, key, self._train_samples)
        return {**terms, "objective": terms["log_pz"]}

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        steps = self._sample_steps
        key_1, key_loop, key_0 = jax.random.split(key, 3)
        z = jax.random.normal(key_1, (n, self._d))

        def body(j, z):
            i = steps - j                                                          # i = T .. 1
            t, s_ = i / steps, (i - 1) / steps
            g_t, g_s = self._gamma(t), self._gamma(s_)
            a_t, a_s = jnp.sqrt(jax.nn.sigmoid(-g_t)), jnp.sqrt(jax.nn.sigmoid(-g_s))
            var_t, var_s = jax.nn.sigmoid(g_t), jax.nn.sigmoid(g_s)
            eps = self.eps_hat(z, jnp.full((n,), t))
            s_hat = (z - jnp.sqrt(var_t) * eps) / a_t
            # q(z_s | z_t, s): alpha_{t|s} = a_t / a_s, sigma_{t|s}^2 = var_t - alpha_{t|s}^2 var_s
            a_ts = a_t / a_s
            var_ts = -jnp.expm1(g_s - g_t) * var_t        # = var_t - a_ts^2 var_s, computed stably
            mean = a_ts * var_s / var_t * z + a_s * var_ts / var_t * s_hat
            std = jnp.sqrt(var_ts * var_s / var_t)
            return mean + std * jax.random.normal(jax.random.fold_in(key_loop, j), z.shape)

        z0 = jax.lax.fori_loop(0, steps, body, z)
        g0 = self._gamma(0.0)
        a0 = jnp.sqrt(jax.nn.sigmoid(-g0))
        return z0 / a0 + jnp.exp(0.5 * g0) * jax.random.normal(key_0, z0.shape)


class DiffusionDensity(nn.Module):
    """The latent diffusion prior over z [D]: see :class:`DiffusionDistribution`.

    Schedule ``fixed``: gamma(t) = gamma_min + (gamma_max - gamma_min) t; ``learned``: gamma(0)
    and gamma(1) learned (starting at gamma_min, gamma_max) with a monotone piecewise-linear shape
    of ``schedule_bins`` bins in between (``settings``: :class:`DiffusionSettings`)."""

    latent_dim: int
    settings: DiffusionSettings = DiffusionSettings()

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        s = self.settings
        d = self.latent_dim
        loc, log_scale = _standardizer(self, d)
        net = _mlp_params(self, "eps", (d + 9, *s.hidden, d), zero_last=True)
        if s.schedule == "fixed":
            g0, g1 = jnp.asarray(s.gamma_min, jnp.float32), jnp.asarray(s.gamma_max, jnp.float32)
            widths = jnp.full((s.schedule_bins,), 1.0 / s.schedule_bins)
        else:
            g0 = self.param("gamma_0", nn.initializers.constant(s.gamma_min), ())
            span = self.param("gamma_span", nn.initializers.constant(math.log(math.expm1(s.gamma_max - s.gamma_min))), ())
            g1 = g0 + jax.nn.softplus(span)
            widths = jax.nn.softmax(self.param("gamma_shape", nn.initializers.zeros, (s.schedule_bins,)))
        bins = s.schedule_bins
        knots = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(widths)])                # [bins + 1], 0 .. 1

        def gamma(t):
            t = jnp.asarray(t, jnp.float32)
            pos = jnp.clip(t * bins, 0.0, bins - 1e-6)
            j = jnp.floor(pos).astype(jnp.int32)
            frac = jnp.clip(t * bins - j, 0.0, 1.0)
            return g0 + (g1 - g0) * (knots[j] + frac * widths[j])

        def dgamma(t):
            j = jnp.clip(jnp.floor(jnp.asarray(t) * bins), 0, bins - 1).astype(jnp.int32)
            return (g1 - g0) * widths[j] * bins

        dist = DiffusionDistribution(net, gamma, dgamma, data_dim=d, activation=activation(s.activation),
                                     num_samples=s.bound_samples, bound_steps=s.bound_steps,
                                     sample_steps=s.sample_steps, key=jax.random.key(s.seed),
                                     train_samples=s.train_samples)
        return _standardized(dist, loc, log_scale)


# --- training terms of any density -------------------------------------------------------------------

def training_terms(p: distrax.Distribution, z: jax.Array, key: jax.Array) -> Terms:
    """What the trainer maximises for a density ``p`` over one code ``z [D]`` (nats): its exact
    log p(z) (flow, or any distribution with a density), the second-stage ELBO, or the diffusion
    bound; ``objective`` is the one maximised, ``log_pz`` the value or bound on log p(z)."""
    inner, correction = p, 0.0
    if isinstance(p, distrax.Transformed) and hasattr(p.distribution, "training_terms"):
        s, log_det = p.bijector.inverse_and_log_det(z)                       # s = (z - m) / c
        inner, z, correction = p.distribution, s, log_det
    if hasattr(inner, "training_terms"):
        terms = dict(inner.training_terms(z, key))
        terms["log_pz"] = terms["log_pz"] + correction
        terms["objective"] = terms["objective"] + correction
        return terms
    log_pz = p.log_prob(z)
    return {"log_pz": log_pz, "objective": log_pz}


def log_prob_estimate(p: distrax.Distribution, z: jax.Array, key: jax.Array) -> jax.Array:
    """log p(z) as ``p.log_prob`` computes it, but with the Monte Carlo draws of ``key`` where it has any
    (two-stage, diffusion; ``p.log_prob`` itself for exact densities): two keys give two independent
    estimates, whose spread is the estimate's Monte Carlo error."""
    if isinstance(p, distrax.Transformed) and hasattr(p.distribution, "estimate"):
        s, log_det = p.bijector.inverse_and_log_det(z)
        return p.distribution.estimate(s, key) + log_det
    return p.log_prob(z)


# --- data-dependent initialisation: the standardisation ------------------------------------------

def _standardize_from_data(settings: Any, variables: Any, *, examples: Callable[[int], np.ndarray],
                           num_examples: int) -> Any:
    """``data_loc`` and ``data_log_scale`` set to the mean and log standard deviation of (up to
    10,000) training examples when they are vectors of the density's dimension (its codes);
    unchanged otherwise (e.g. the density used as the prior of a model trained on images)."""
    del settings
    params = variables.get("params", {})
    prior = params.get("prior")
    if prior is None or "data_loc" not in prior:
        return variables
    d = int(prior["data_loc"].shape[0])
    x = np.asarray(examples(min(int(num_examples), 10000)), np.float64)
    if x.ndim != 2 or x.shape[1] != d:
        return variables
    loc = x.mean(0)
    log_scale = np.log(np.maximum(x.std(0), 1e-6))
    prior = {**prior, "data_loc": jnp.asarray(loc, jnp.float32), "data_log_scale": jnp.asarray(log_scale, jnp.float32)}
    return {**variables, "params": {**params, "prior": prior}}


# --- registered priors ------------------------------------------------------------------------------

def _coupling_needs_two_dims(settings: FlowDensitySettings, spec: RunSpec) -> None:
    if settings.kind == "coupling" and spec.model.latent_dim < 2:
        raise ConfigError("config.model.prior=flow with kind=coupling needs config.model.latent_dim >= 2; "
                          "use kind=autoregressive")


@PRIORS.register("flow", settings=FlowDensitySettings, check=_coupling_needs_two_dims,
                 traits={"data_init": _standardize_from_data, "log_prob": LOG_PROB_MEANING["flow"], "expost": True})
def flow(settings: FlowDensitySettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> FlowDensity:
    """p(z) a normalizing flow (MAF or RealNVP layers on N(0, I)): exact log p(z); an ex-post density for codes."""
    del event_shape
    return FlowDensity(latent_dim=latent_dim, settings=settings)


@PRIORS.register("two_stage", settings=TwoStageSettings,
                 traits={"data_init": _standardize_from_data, "log_prob": LOG_PROB_MEANING["two_stage"],
                         "expost": True})
def two_stage(settings: TwoStageSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> TwoStageDensity:
    """p(z) a second VAE on the codes (Dai & Wipf 2019): log p(z) by importance sampling in its own latent space."""
    del event_shape
    return TwoStageDensity(latent_dim=latent_dim, settings=settings)


@PRIORS.register("diffusion", settings=DiffusionSettings,
                 traits={"data_init": _standardize_from_data, "log_prob": LOG_PROB_MEANING["diffusion"],
                         "expost": True})
def diffusion(settings: DiffusionSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> DiffusionDensity:
    """p(z) a variational diffusion model (Kingma et al. 2021): log p(z) >= its VLB; sampled by its reverse process."""
    del event_shape
    return DiffusionDensity(latent_dim=latent_dim, settings=settings)
