"""Amortized inference networks q(z | x).

An inference network is an encoder trunk (:mod:`vaegen.blocks.networks`) followed by a head that
returns a distrax distribution over ``z`` with event shape ``[D]``.  It sits *beside* the
generative model p(x, z) (:mod:`vaegen.model`), never inside it.

* :class:`DiagonalGaussian` -- q(z | x) = N(z; mu(x), diag sigma(x)^2): the VAE.
* :class:`FixedScaleGaussian` -- q(z | x) = N(z; mu(x), s^2 I) with a constant s: the path from a
  VAE to an AE as s -> 0.
* :class:`PointMass` -- q(z | x) = delta(z - f(x)): the autoencoder.
* :class:`FullCovarianceGaussian` -- q(z | x) = N(z; mu(x), L(x) L(x)^T), L(x) a Cholesky factor.
* :class:`FlowPosterior` -- a coupling flow (RealNVP layers from ``distrax.MaskedCoupling``) on a
  diagonal Gaussian base, conditioned on a context c(x).

The last two (and the diagonal Gaussian) are also available as pure functions of per-example
parameters phi (``diagonal_gaussian``, ``full_covariance_gaussian``, ``flow_distribution``): the
non-amortized inference of :mod:`vaegen.inference` optimises phi per example in the same family.

Why the ELBO does not exist for the AE: ELBO(x) = E_q[log p(x | z)] - KL(q(z|x) || p(z)), and
for a point mass KL(delta_f(x) || p(z)) = -H[delta] - log p(f(x)) with differential entropy
H[delta] = -inf, so the KL is +inf and the bound is -inf for every encoder: it cannot rank
models or be optimised.  What is left is the reconstruction term log p(x | z = f(x)) -- the AE
objective (:class:`vaegen.objectives.autoencoder.Autoencoder`) -- and without a p(z) nothing to sample from.
"""

from __future__ import annotations

import dataclasses

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.activations import ACTIVATIONS
from vaegen.activations import activation as activation_fn
from vaegen.blocks.numerics import softplus
from vaegen.errors import ConfigError
from vaegen.registry import POSTERIORS, NoSettings, Settings, setting
from vaegen.spec.run import RunSpec


# --- settings: what a config's posterior section holds, and what each module reads ------------------

def _check_log_scales(settings, key) -> None:
    if settings.min_log_scale >= settings.max_log_scale:
        raise ConfigError(f"{key('min_log_scale')} must be below {key('max_log_scale')}")


@dataclasses.dataclass(frozen=True)
class GaussianPosteriorSettings(Settings):
    min_log_scale: float = setting(-10.0, "lower bound on log sigma (numerical safety, softly enforced)")
    max_log_scale: float = setting(3.0, "upper bound on log sigma")

    def validate(self, key):
        _check_log_scales(self, key)


@dataclasses.dataclass(frozen=True)
class FixedScaleSettings(Settings):
    scale: float = setting(1.0, "the constant s of N(mu(x), s^2 I); s -> 0 is the autoencoder", gt=0)


@dataclasses.dataclass(frozen=True)
class FlowSettings(Settings):
    layers: int = setting(4, "affine coupling layers", gt=0)
    hidden: tuple[int, ...] = setting((64,), "hidden widths of each coupling layer's network", items_gt=0)
    context_dim: int = setting(16, "dimension of the context c(x) that conditions every layer", ge=0)
    activation: str = setting("tanh", "nonlinearity of the coupling networks", choices=tuple(ACTIVATIONS))
    min_log_scale: float = setting(-10.0, "lower bound on the base's log sigma")
    max_log_scale: float = setting(3.0, "upper bound on the base's log sigma")

    def validate(self, key):
        _check_log_scales(self, key)


# --- the modules ---------------------------------------------------------------------------------

def soft_clip(x: jax.Array, low: float, high: float) -> jax.Array:
    """Smoothly clips ``x`` to ``[low, high]`` (identity well inside, softplus near the ends)."""
    x = low + softplus(x - low)
    return high - softplus(high - x)


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
      settings: :class:`GaussianPosteriorSettings`: bounds on log sigma (numerical safety, not a
        modelling choice: the defaults allow sigma in [4.5e-5, 20]).
    """

    family = "diag"  # the variational family of its parameters phi(x) (vaegen.inference.families)

    encoder: nn.Module
    latent_dim: int
    settings: GaussianPosteriorSettings = GaussianPosteriorSettings()

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        h = self.encoder(x)
        loc = nn.Dense(self.latent_dim, name="loc")(h)
        raw = nn.Dense(self.latent_dim, name="log_scale")(h)
        log_scale = soft_clip(raw, self.settings.min_log_scale, self.settings.max_log_scale)
        return distrax.MultivariateNormalDiag(loc, jnp.exp(log_scale))


class FixedScaleGaussian(nn.Module):
    """q(z | x) = N(z; mu(x), s^2 I) with a constant s; as s -> 0 this tends to the AE's point mass.

    Attributes:
      encoder: trunk mapping ``x`` to features.
      latent_dim: D.
      settings: :class:`FixedScaleSettings`: the constant s > 0 (``scale``).
    """

    family = "diag"  # the variational family of its parameters phi(x) (vaegen.inference.families)

    encoder: nn.Module
    latent_dim: int
    settings: FixedScaleSettings = FixedScaleSettings()

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        loc = nn.Dense(self.latent_dim, name="loc")(self.encoder(x))
        return distrax.MultivariateNormalDiag(loc, jnp.full_like(loc, self.settings.scale))


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


def is_point_mass(posterior: nn.Module) -> bool:
    """Whether ``posterior`` is deterministic (the autoencoder case)."""
    return isinstance(posterior, PointMass)


# --- richer families: full-covariance Gaussian and a normalizing flow --------------------------
#
# Each family below is defined by its *local parameters* phi, a pytree per example, and a pure
# function phi -> distrax distribution (``full_covariance_gaussian``, ``flow_distribution``).
# The amortized modules compute phi = phi(x) with an encoder (``parameters(x)``); the
# non-amortized inference of :mod:`vaegen.inference` optimises a free phi per example with the
# same functions, so an amortized q and its per-example optimum q* are members of one family.


def num_tril(latent_dim: int) -> int:
    """Number of strictly-lower-triangular entries of a D x D matrix: D (D - 1) / 2."""
    return latent_dim * (latent_dim - 1) // 2


def scale_tril(log_scale: jax.Array, tril: jax.Array) -> jax.Array:
    """The Cholesky factor L = diag(exp(log_scale)) + strictly_lower(tril).

    Args:
      log_scale: ``[..., D]`` log of L's diagonal (positive diagonal: L is a valid Cholesky factor).
      tril: ``[..., D (D - 1) / 2]`` the strictly-lower entries, row-major (``np.tril_indices(D, -1)``).
    Returns:
      ``[..., D, D]`` lower-triangular.
    """
    d = log_scale.shape[-1]
    rows, cols = jnp.tril_indices(d, -1)
    L = jnp.zeros(tril.shape[:-1] + (d, d), tril.dtype).at[..., rows, cols].set(tril)
    return L + jnp.exp(log_scale)[..., None] * jnp.eye(d, dtype=log_scale.dtype)


def full_covariance_gaussian(phi: dict) -> distrax.MultivariateNormalTri:
    """q(z) = N(z; loc, L L^T) from ``phi = {"loc" [..., D], "log_scale" [..., D], "tril" [..., D(D-1)/2]}``."""
    return distrax.MultivariateNormalTri(phi["loc"], scale_tril(phi["log_scale"], phi["tril"]))


def diagonal_gaussian(phi: dict) -> distrax.MultivariateNormalDiag:
    """q(z) = N(z; loc, diag(exp(2 log_scale))) from ``phi = {"loc" [..., D], "log_scale" [..., D]}``."""
    return distrax.MultivariateNormalDiag(phi["loc"], jnp.exp(phi["log_scale"]))


class FullCovarianceGaussian(nn.Module):
    """q(z | x) = N(z; mu(x), L(x) L(x)^T), L(x) lower triangular with a positive diagonal.

    The encoder's heads give mu(x) ``[D]``, log diag L(x) ``[D]`` (softly bounded like
    :class:`DiagonalGaussian`'s log sigma) and the D (D - 1) / 2 entries below the diagonal,
    initialised at zero so that training starts from a diagonal Gaussian.

    ``parameters(x)`` returns the local parameters phi(x) = ``{"loc", "log_scale", "tril"}``;
    ``__call__(x)`` returns ``full_covariance_gaussian(phi(x))`` (a ``distrax.MultivariateNormalTri``,
    with a closed-form KL to Gaussian priors).
    """

    family = "fullcov"  # the variational family of its parameters phi(x) (vaegen.inference.families)

    encoder: nn.Module
    latent_dim: int
    settings: GaussianPosteriorSettings = GaussianPosteriorSettings()

    @nn.compact
    def parameters(self, x: jax.Array) -> dict:
        h = self.encoder(x)
        loc = nn.Dense(self.latent_dim, name="loc")(h)
        raw = nn.Dense(self.latent_dim, name="log_scale")(h)
        tril = nn.Dense(num_tril(self.latent_dim), name="tril", kernel_init=nn.initializers.zeros)(h)
        s = self.settings
        return {"loc": loc, "log_scale": soft_clip(raw, s.min_log_scale, s.max_log_scale), "tril": tril}

    def __call__(self, x: jax.Array) -> distrax.Distribution:
        return full_covariance_gaussian(self.parameters(x))


def coupling_masks(latent_dim: int, num_layers: int) -> list[jax.Array]:
    """Boolean masks ``[D]`` of the coupling layers (True = passed through, conditions the rest).

    Layers alternate parity masks (even / odd coordinates) and half masks (first / second half),
    so that after four layers every coordinate has been transformed conditioned on every other
    group.
    """
    idx = jnp.arange(latent_dim)
    masks = []
    for layer in range(num_layers):
        if (layer // 2) % 2 == 0:
            m = idx % 2 == 0
        else:
            m = idx < latent_dim // 2
        masks.append(m if layer % 2 == 0 else ~m)
    return masks


def _mlp_apply(layer: dict, h: jax.Array, activation) -> jax.Array:
    """A dense MLP from a parameter dict ``{"dense_0": {"kernel", "bias"}, ...}``; no activation
    after the last layer."""
    n = len(layer)
    for j in range(n):
        p = layer[f"dense_{j}"]
        h = h @ p["kernel"] + p["bias"]
        if j < n - 1:
            h = activation(h)
    return h


def coupling_flow_bijector(flow: dict, context: jax.Array, *, activation: str = "tanh",
                           max_log_scale: float = 3.0) -> distrax.Bijector:
    """The bijector z = T(z0) of a stack of affine coupling layers (RealNVP), conditioned on a context.

    Layer l keeps the coordinates where ``mask_l`` is True and maps the others by
    z_i -> z_i exp(s_i) + t_i, with (s, t) = MLP_l([mask_l * z, context]) and
    s = max_log_scale * tanh(raw / max_log_scale) (a soft bound on the log-scale per layer).
    The last dense layer of every MLP starts at zero, so a fresh flow is the identity.

    Args:
      flow: ``{"layer_0": {"dense_0": {"kernel", "bias"}, ...}, ...}`` (see :class:`CouplingFlow`).
      context: ``[..., C]`` (C may be 0): broadcast against the leading dimensions of z.
    Returns:
      A ``distrax.Chain`` acting on events ``[D]``; arrays only, so it can be built inside any
      jitted or vmapped function.
    """
    act = activation_fn(activation)
    num_layers = len(flow)
    latent_dim = flow["layer_0"][f"dense_{len(flow['layer_0']) - 1}"]["bias"].shape[-1] // 2
    layers = []
    for l, mask in enumerate(coupling_masks(latent_dim, num_layers)):
        params = flow[f"layer_{l}"]

        def conditioner(z_masked, params=params):
            c = jnp.broadcast_to(context, z_masked.shape[:-1] + context.shape[-1:])
            out = _mlp_apply(params, jnp.concatenate([z_masked, c], -1), act)  # [..., 2D]
            shift, raw = jnp.split(out, 2, axis=-1)
            return shift, max_log_scale * jnp.tanh(raw / max_log_scale)

        layers.append(distrax.MaskedCoupling(
            mask=mask, conditioner=conditioner,
            bijector=lambda p: distrax.ScalarAffine(shift=p[0], log_scale=p[1])))
    return distrax.Chain(layers[::-1])  # Chain applies its last element first: layer 0 acts first


class FlowDistribution(distrax.Transformed):
    """q(z) = T_# N(loc, diag sigma^2): a Gaussian base pushed through a coupling flow T.

    ``mean()`` returns T(loc), the flow's image of the base mean: the point used as *the* code
    (reconstructions, initialisation). It is not E_q[z], which has no closed form for a flow.
    """

    def mean(self) -> jax.Array:
        return self.bijector.forward(self.distribution.mean())

    def kl_divergence(self, other_dist, **kwargs):
        """No closed form: KL terms involving a flow are estimated by Monte Carlo."""
        raise NotImplementedError("KL(flow || .) has no closed form; estimate it by Monte Carlo")


def flow_distribution(phi: dict, *, activation: str = "tanh", max_log_scale: float = 3.0) -> FlowDistribution:
    """q(z) from ``phi = {"loc" [..., D], "log_scale" [..., D], "context" [..., C], "flow": {...}}``."""
    base = distrax.MultivariateNormalDiag(phi["loc"], jnp.exp(phi["log_scale"]))
    bijector = coupling_flow_bijector(phi["flow"], phi["context"], activation=activation,
                                      max_log_scale=max_log_scale)
    return FlowDistribution(base, bijector)


def init_coupling_flow(key: jax.Array, latent_dim: int, context_dim: int, num_layers: int,
                       hidden: tuple[int, ...]) -> dict:
    """Parameters of a fresh coupling flow (the identity map): LeCun-normal hidden layers, zero
    last layer; ``{"layer_l": {"dense_j": {"kernel", "bias"}}}``."""
    if latent_dim < 2:
        raise ValueError("a coupling flow needs latent_dim >= 2 (each layer conditions one group of "
                         "coordinates on another)")
    sizes = [latent_dim + context_dim, *hidden, 2 * latent_dim]
    flow = {}
    for l, k in enumerate(jax.random.split(key, num_layers)):
        layer = {}
        for j, kj in enumerate(jax.random.split(k, len(sizes) - 1)):
            last = j == len(sizes) - 2
            init = nn.initializers.zeros if last else nn.initializers.lecun_normal()
            layer[f"dense_{j}"] = {"kernel": init(kj, (sizes[j], sizes[j + 1]), jnp.float32),
                                   "bias": jnp.zeros((sizes[j + 1],), jnp.float32)}
        flow[f"layer_{l}"] = layer
    return flow


class CouplingFlow(nn.Module):
    """The parameters of a coupling flow (see :func:`coupling_flow_bijector`) as a Flax module:
    calling it returns the parameter tree, shared by every x of an amortized posterior.
    ``settings``: the flow posterior's (``layers``, ``hidden``, ``context_dim``)."""

    latent_dim: int
    settings: FlowSettings = FlowSettings()

    @nn.compact
    def __call__(self) -> dict:
        s = self.settings
        return self.param("layers", lambda key: init_coupling_flow(
            key, self.latent_dim, s.context_dim, s.layers, tuple(s.hidden)))


class FlowPosterior(nn.Module):
    """q(z | x) = T(. ; c(x))_# N(mu(x), diag sigma(x)^2): a normalizing flow on a Gaussian base
    (inverse-autoregressive-flow style amortization, Kingma et al. 2016, with RealNVP coupling
    layers built from ``distrax.MaskedCoupling``).

    The encoder gives the base's mu(x), log sigma(x) (softly bounded) and a context c(x) ``[C]``
    that conditions every coupling layer; the coupling networks are shared across x.  A fresh
    flow is the identity, so training starts from the diagonal Gaussian.

    ``parameters(x)`` returns phi(x) = ``{"loc", "log_scale", "context", "flow"}`` (``flow``: the
    shared coupling parameters); ``__call__(x)`` returns ``flow_distribution(phi(x))``.  The
    density is exact: log q(z) = log N(z0) - log |det dT/dz0|, and sampling is one pass.
    """

    family = "flow"  # the variational family of its parameters phi(x) (vaegen.inference.families)

    encoder: nn.Module
    latent_dim: int
    settings: FlowSettings = FlowSettings()

    @nn.compact
    def parameters(self, x: jax.Array) -> dict:
        s = self.settings
        h = self.encoder(x)
        loc = nn.Dense(self.latent_dim, name="loc")(h)
        raw = nn.Dense(self.latent_dim, name="log_scale")(h)
        context = nn.Dense(s.context_dim, name="context")(h)
        flow = CouplingFlow(self.latent_dim, s, name="flow")()
        return {"loc": loc, "log_scale": soft_clip(raw, s.min_log_scale, s.max_log_scale),
                "context": context, "flow": flow}

    def __call__(self, x: jax.Array) -> distrax.Distribution:
        return flow_distribution(self.parameters(x), activation=self.settings.activation)



DEFAULT_RELATIVE_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)
"""The s_j of :class:`CodeProposal`: widths around the code, relative to the codes' spread."""


class CodeProposal(nn.Module):
    """r(z | x) = 1/J sum_j N(z; f(x), diag((s_j sigma)^2)): an importance-sampling proposal around
    an autoencoder's code, for a model whose q(z | x) is a point mass but which has a p(z) (an AE
    with a density fitted to its codes, a WAE, an AAE).

    The decoder of an autoencoder was only trained at z = f(x), so the width of p(z | x) is
    unknown; the equal-weight mixture spends 1/J of the samples at each width and is never much
    worse than the best single width (at most log J nats).  Any proposal gives a stochastic lower
    bound on log p(x).

    Same ``encoder`` and ``loc`` head as :class:`PointMass`, so an autoencoder's parameters drop
    in; ``code_scale [D]`` (sigma, the per-dimension standard deviation of the training codes) is
    a parameter set from the codes (:func:`code_proposal`).
    """

    encoder: nn.Module
    latent_dim: int
    relative_scales: tuple[float, ...] = DEFAULT_RELATIVE_SCALES

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        loc = nn.Dense(self.latent_dim, name="loc")(self.encoder(x))                 # f(x)   [..., D]
        sigma = self.param("code_scale", nn.initializers.ones, (self.latent_dim,))  # [D]
        s = jnp.asarray(self.relative_scales, jnp.float32)                           # [J]
        j = s.shape[0]
        scales = s[:, None] * sigma[None, :]                                         # [J, D]
        locs = jnp.broadcast_to(loc[..., None, :], loc.shape[:-1] + (j, self.latent_dim))  # [..., J, D]
        scales = jnp.broadcast_to(scales, locs.shape)
        return distrax.MixtureSameFamily(distrax.Categorical(logits=jnp.zeros(locs.shape[:-1])),
                                         distrax.MultivariateNormalDiag(locs, scales))


def code_proposal(point_mass: PointMass, params: dict, code_scale, relative_scales=DEFAULT_RELATIVE_SCALES
                  ) -> tuple[CodeProposal, dict]:
    """The importance-sampling proposal around an autoencoder's code: ``(module, params)`` from a
    point-mass posterior and its parameters, with sigma = ``code_scale [D]`` (the per-dimension
    standard deviation of the training codes, floored at 1e-6)."""
    module = CodeProposal(encoder=point_mass.encoder, latent_dim=point_mass.latent_dim,
                          relative_scales=tuple(float(s) for s in relative_scales))
    sigma = jnp.maximum(jnp.asarray(code_scale, jnp.float32), 1e-6)
    return module, {**params, "code_scale": sigma}


# --- registered posteriors -------------------------------------------------------------------------
#
# Traits (declared with :data:`vaegen.registry.POSTERIORS`): ``deterministic``, ``batched_density``,
# ``refinable``, ``layer_factors``, ``factorized``.  The variational family whose per-example form
# :mod:`vaegen.inference` optimises is each module's ``family``.


def _flow_latent_dim(settings: FlowSettings, spec: RunSpec) -> None:
    if spec.model.latent_dim < 2:
        raise ConfigError("config.inference.posterior=flow needs config.model.latent_dim >= 2")


@POSTERIORS.register("diagonal_gaussian", settings=GaussianPosteriorSettings, aliases=("diag",),
                     traits={"batched_density": True, "refinable": True, "layer_factors": True, "factorized": True})
def diagonal_gaussian_posterior(settings: GaussianPosteriorSettings, *, encoder: nn.Module,
                                latent_dim: int) -> DiagonalGaussian:
    """q(z | x) = N(z; mu(x), diag sigma(x)^2): the VAE's."""
    return DiagonalGaussian(encoder=encoder, latent_dim=latent_dim, settings=settings)


@POSTERIORS.register("fixed_scale_gaussian", settings=FixedScaleSettings,
                     traits={"batched_density": True, "factorized": True})
def fixed_scale_gaussian_posterior(settings: FixedScaleSettings, *, encoder: nn.Module,
                                   latent_dim: int) -> FixedScaleGaussian:
    """q(z | x) = N(z; mu(x), s^2 I), s constant: the path from a VAE to an AE as s -> 0."""
    return FixedScaleGaussian(encoder=encoder, latent_dim=latent_dim, settings=settings)


@POSTERIORS.register("point_mass", traits={"deterministic": True})
def point_mass_posterior(settings: NoSettings, *, encoder: nn.Module, latent_dim: int) -> PointMass:
    """q(z | x) = delta(z - f(x)): the autoencoder's deterministic encoder (no density, no ELBO)."""
    del settings
    return PointMass(encoder=encoder, latent_dim=latent_dim)


@POSTERIORS.register("full_covariance_gaussian", settings=GaussianPosteriorSettings, aliases=("fullcov",),
                     traits={"batched_density": True, "refinable": True})
def full_covariance_gaussian_posterior(settings: GaussianPosteriorSettings, *, encoder: nn.Module,
                                       latent_dim: int) -> FullCovarianceGaussian:
    """q(z | x) = N(z; mu(x), L(x) L(x)^T), L(x) a Cholesky factor."""
    return FullCovarianceGaussian(encoder=encoder, latent_dim=latent_dim, settings=settings)


@POSTERIORS.register("flow", settings=FlowSettings, check=_flow_latent_dim,
                     traits={"refinable": True})
def flow_posterior(settings: FlowSettings, *, encoder: nn.Module, latent_dim: int) -> FlowPosterior:
    """q(z | x) = T(.; c(x))_# N(mu(x), diag sigma(x)^2): RealNVP coupling layers on a Gaussian base."""
    return FlowPosterior(encoder=encoder, latent_dim=latent_dim, settings=settings)
