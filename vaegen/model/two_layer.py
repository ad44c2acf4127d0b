"""Two stochastic layers: z = [z1, z2], with z1 [D1] next to x and z2 [D2] above it.

The generative process and its two inference orders::

    p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1)            (IWAE two-layer model, Burda et al. 2016)
                   p(z2) p(z1 | z2) p(x | z1, z2)        (VampPrior HVAE, Tomczak & Welling 2018)

    bottom_up   q(z1, z2 | x) = q(z1 | x) q(z2 | z1)      (IWAE)
    top_down    q(z1, z2 | x) = q(z2 | x) q(z1 | x, z2)   (VampPrior HVAE)

p(z2) is any prior of :mod:`vaegen.blocks.priors` (N(0, I), a mixture, or the VampPrior
p(z2) = 1/K sum_k q(z2 | u_k), which needs the top-down q(z2 | x)); p(z1 | z2) and the
conditional factors of q are diagonal Gaussians whose parameters come from networks.

Nothing else in vaegen needs to know that z has two layers: the model is a
:class:`vaegen.model.latent.LatentVariableModel` whose latent is the concatenation ``[z1, z2]``
(event ``[D1 + D2]``).  Its prior and posterior are :class:`TwoStage` distributions over that
vector -- ``log_prob`` is the sum of the two factors' log-densities, ``sample`` is ancestral --
so the ELBO, IWAE-k, importance sampling, AIS and the trainer apply unchanged.  KL(q || p) has no
closed form here and is estimated by Monte Carlo (``objectives.kl_divergence`` falls back).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.blocks import networks as networks_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.errors import ConfigError
from vaegen.model import latent as latent_lib
from vaegen.registry import MODEL_KINDS, OBJECTIVES, Selected, Settings, reads_images, reads_vectors, setting, slot
from vaegen.spec.run import InferenceSpec, ModelSpec, RunSpec


class TwoStage(distrax.Distribution):
    """A distribution over ``z = [z1, z2]`` (event ``[D1 + D2]``) that factorises into a first
    block and the other block given it: ``p(z) = p(a) p(b | a)``, (a, b) = (z1, z2) or (z2, z1).

    Args:
      first: the distribution of the first block ``a``, event ``[D_a]``, batch ``[...]``.
      conditional: ``a [..., D_a] -> `` the distribution of ``b`` given ``a``, event ``[D_b]`` and
        batch ``a.shape[:-1]``.
      dims: ``(D1, D2)``.
      first_is_z1: whether ``a`` is z1 (bottom-up inference) or z2 (the generative order, and
        top-down inference).

    Built from arrays and bound networks inside a transformed function (never passed across a
    jit/vmap boundary).  ``mean()`` is the *mean pass* -- a = E[a], b = E[b | a = E[a]] -- the code
    used for reconstructions; it is not E[z] when the conditional is nonlinear.
    """

    def __init__(self, first: distrax.Distribution, conditional: Callable[[jax.Array], distrax.Distribution],
                 dims: tuple[int, int], first_is_z1: bool):
        super().__init__()
        self._first = first
        self._conditional = conditional
        self._dims = (int(dims[0]), int(dims[1]))
        self._first_is_z1 = bool(first_is_z1)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (sum(self._dims),)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._first.batch_shape)

    @property
    def first(self) -> distrax.Distribution:
        return self._first

    def conditional(self, a: jax.Array) -> distrax.Distribution:
        return self._conditional(a)

    def split(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``z [..., D1 + D2] -> (a, b)`` in sampling order."""
        z1, z2 = z[..., : self._dims[0]], z[..., self._dims[0]:]
        return (z1, z2) if self._first_is_z1 else (z2, z1)

    def _join(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.concatenate([a, b] if self._first_is_z1 else [b, a], axis=-1)

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        key_a, key_b = jax.random.split(key)
        a = self._first.sample(seed=key_a, sample_shape=(n,))            # [n, ..., D_a]
        b = self._conditional(a).sample(seed=key_b)                      # [n, ..., D_b]
        return self._join(a, b)

    def _sample_n_and_log_prob(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        key_a, key_b = jax.random.split(key)
        a, log_pa = self._first.sample_and_log_prob(seed=key_a, sample_shape=(n,))
        b, log_pb = self._conditional(a).sample_and_log_prob(seed=key_b)
        return self._join(a, b), log_pa + log_pb

    def log_prob(self, value: jax.Array) -> jax.Array:
        """log p(a) + log p(b | a) in nats, ``[...]`` for ``value [..., D1 + D2]``."""
        a, b = self.split(jnp.asarray(value))
        return self._first.log_prob(a) + self._conditional(a).log_prob(b)

    def mean(self) -> jax.Array:
        a = self._first.mean()
        return self._join(a, self._conditional(a).mean())


def ConditionalGaussian(trunk: nn.Module, latent_dim: int,
                        settings: posteriors_lib.GaussianPosteriorSettings) -> nn.Module:
    """A diagonal Gaussian whose parameters are networks of an input vector, N(mu(h), diag
    sigma(h)^2) with h = trunk(v) and log sigma softly bounded (``settings``): p(z1 | z2) and,
    bottom-up, q(z2 | z1).  The same module as the amortized
    :class:`vaegen.blocks.posteriors.DiagonalGaussian` (its ``encoder`` is the trunk):
    ``__call__(v [..., D_in])`` returns a ``distrax.MultivariateNormalDiag`` with event
    ``[latent_dim]`` and batch ``[...]``."""
    return posteriors_lib.DiagonalGaussian(encoder=trunk, latent_dim=latent_dim, settings=settings)


class JoinedTrunk(nn.Module):
    """A trunk of two inputs: ``trunk(concat(branch_a(a), branch_b(b)))`` (branches may be
    ``None``: the input as it is).  ``a [..., *a_event]`` and ``b [..., D_b]`` share the
    leading dimensions (``a``'s features are broadcast against ``b``'s leading dimensions)."""

    branch_a: nn.Module | None
    branch_b: nn.Module | None
    trunk: nn.Module

    @property
    def spatial_output(self) -> bool:
        return bool(getattr(self.trunk, "spatial_output", False))

    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        ha = a if self.branch_a is None else self.branch_a(a)            # [..., F_a]
        hb = b if self.branch_b is None else self.branch_b(b)            # [..., F_b]
        lead = jnp.broadcast_shapes(ha.shape[:-1], hb.shape[:-1])
        ha = jnp.broadcast_to(ha, lead + ha.shape[-1:])
        hb = jnp.broadcast_to(hb, lead + hb.shape[-1:])
        return self.trunk(jnp.concatenate([ha, hb], axis=-1))


class LatentDecoder(nn.Module):
    """The decoder trunk of p(x | z) for ``z = [z1, z2]``: it sees z1 only (``joined=None``:
    ``trunk(z1)``, the IWAE model) or both layers (``trunk(concat(branch(z1), branch(z2)))``, the
    VampPrior HVAE)."""

    top_dim_start: int  # D1: z[..., :D1] is z1
    trunk: nn.Module | None = None  # p(x | z1)
    joined: JoinedTrunk | None = None  # p(x | z1, z2)

    @property
    def spatial_output(self) -> bool:
        inner = self.joined if self.joined is not None else self.trunk
        return bool(getattr(inner, "spatial_output", False))

    def __call__(self, z: jax.Array) -> jax.Array:
        z1, z2 = z[..., : self.top_dim_start], z[..., self.top_dim_start:]
        if self.joined is not None:
            return self.joined(z1, z2)
        return self.trunk(z1)


class TwoLayerPrior(nn.Module):
    """p(z1, z2) = p(z2) p(z1 | z2) over ``z = [z1, z2]``.

    Attributes:
      top: the prior module of z2 (:mod:`vaegen.blocks.priors`); a VampPrior gets q(z2 | x) through the
        model's top-down posterior.
      conditional: :func:`ConditionalGaussian` for p(z1 | z2).
      dims: ``(D1, D2)``.
    """

    top: nn.Module
    conditional: nn.Module  # ConditionalGaussian
    dims: tuple[int, int]

    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        q_z2 = getattr(posterior, "q_z2", None)                          # x -> q(z2 | x), top-down only
        p_z2 = self.top(posterior=q_z2)                                  # p(z2), event [D2]
        return TwoStage(p_z2, self.conditional, self.dims, first_is_z1=False)


class BottomUpPosterior(nn.Module):
    """q(z1, z2 | x) = q(z1 | x) q(z2 | z1) (the IWAE two-layer recognition model).

    Attributes:
      q_z1_given_x: a :class:`vaegen.blocks.posteriors.DiagonalGaussian` on an encoder of x.
      q_z2_given_z1: a :func:`ConditionalGaussian` on z1.
      dims: ``(D1, D2)``.
    """

    q_z1_given_x: nn.Module
    q_z2_given_z1: nn.Module  # ConditionalGaussian
    dims: tuple[int, int]

    @property
    def latent_dim(self) -> int:
        return sum(self.dims)

    def __call__(self, x: jax.Array) -> distrax.Distribution:
        return TwoStage(self.q_z1_given_x(x), self.q_z2_given_z1, self.dims, first_is_z1=True)


class TopDownPosterior(nn.Module):
    """q(z1, z2 | x) = q(z2 | x) q(z1 | x, z2) (the VampPrior HVAE's recognition model).

    Attributes:
      q_z2_given_x: a :class:`vaegen.blocks.posteriors.DiagonalGaussian` on an encoder of x; also what a
        VampPrior on z2 passes its pseudo-inputs through.
      z1_trunk: :class:`JoinedTrunk` of (x, z2) for q(z1 | x, z2).
      dims: ``(D1, D2)``.
      settings: the posterior's :class:`vaegen.blocks.posteriors.GaussianPosteriorSettings` (the
        bounds on q(z1 | x, z2)'s log sigma).
    """

    q_z2_given_x: nn.Module
    z1_trunk: JoinedTrunk
    dims: tuple[int, int]
    settings: posteriors_lib.GaussianPosteriorSettings = posteriors_lib.GaussianPosteriorSettings()

    @property
    def latent_dim(self) -> int:
        return sum(self.dims)

    def setup(self):
        self.loc = nn.Dense(self.dims[0], name="loc")
        self.log_scale = nn.Dense(self.dims[0], name="log_scale")

    def q_z2(self, x: jax.Array) -> distrax.Distribution:
        """q(z2 | x) for ``x [..., *event]``: batch ``[...]``, event ``[D2]``."""
        return self.q_z2_given_x(x)

    def q_z1(self, x: jax.Array, z2: jax.Array) -> distrax.Distribution:
        """q(z1 | x, z2) for ``x [*event]`` and ``z2 [..., D2]``: batch ``[...]``, event ``[D1]``."""
        h = self.z1_trunk(x, z2)
        log_scale = posteriors_lib.soft_clip(self.log_scale(h), self.settings.min_log_scale,
                                             self.settings.max_log_scale)
        return distrax.MultivariateNormalDiag(self.loc(h), jnp.exp(log_scale))

    def __call__(self, x: jax.Array) -> distrax.Distribution:
        return TwoStage(self.q_z2(x), lambda z2: self.q_z1(x, z2), self.dims, first_is_z1=False)


# --- the registered model kind ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TwoLayerSettings(Settings):
    """Settings of the ``two_layer`` model kind (``config.model.kind``)."""

    top_latent_dim: int = setting(10, "D2, the dimension of z2 (model.latent_dim is z1's)", gt=0)
    top_decoder: Selected = slot("network", "mlp", "p(z1 | z2)'s trunk", accepts=reads_vectors,
                                 role="p(z1 | z2)'s trunk", hidden=(100, 100))
    top_encoder: Selected = slot("network", "mlp", "bottom_up: q(z2 | z1)'s trunk; top_down: q(z1 | x, z2)'s, "
                                 "after the x and z2 branches", accepts=reads_images,
                                 role="the top encoder's trunk", hidden=(100, 100))
    hierarchy: str = setting("bottom_up", "bottom_up: q(z1 | x) q(z2 | z1) (IWAE); top_down: q(z2 | x) q(z1 | x, z2) "
                             "(VampPrior HVAE; inference.encoder is q(z2 | x)'s trunk)",
                             choices=("bottom_up", "top_down"))
    decoder_sees_top: bool = setting(False, "p(x | z1, z2) (VampPrior HVAE) rather than p(x | z1) (IWAE)")
    decoder_branch_hidden: tuple[int, ...] = setting((), "p(x | z1, z2): widths of the dense branch each of z1 and "
                                                     "z2 passes before the two are joined", items_gt=0)
    encoder_branch_hidden: tuple[int, ...] = setting((), "top_down q(z1 | x, z2): widths of the branch of x (the "
                                                     "top encoder's network) and of z2 before they are joined",
                                                     items_gt=0)
    min_log_scale: float = setting(-10.0, "lower bound on log sigma of p(z1 | z2)")
    max_log_scale: float = setting(3.0, "upper bound on log sigma of p(z1 | z2)")

    def conditional(self) -> posteriors_lib.GaussianPosteriorSettings:
        """The bounds on p(z1 | z2)'s log sigma, as the settings of its diagonal Gaussian."""
        return posteriors_lib.GaussianPosteriorSettings(min_log_scale=self.min_log_scale,
                                                        max_log_scale=self.max_log_scale)

    def validate(self, key):
        if self.min_log_scale >= self.max_log_scale:
            raise ConfigError(f"{key('min_log_scale')} must be below {key('max_log_scale')}")
        if self.hierarchy == "bottom_up" and self.top_encoder.trait("reads") == "image":
            raise ConfigError(f"{key('top_encoder')}.name={self.top_encoder.name!r} reads images, but with "
                              f"{key('hierarchy')}=bottom_up q(z2 | z1) reads z1; use an mlp")


def _check(settings: TwoLayerSettings, spec: RunSpec) -> None:
    """What two stochastic layers need of the rest of the run."""
    if not spec.inference.posterior.trait("layer_factors"):
        raise ConfigError("with two stochastic layers (config.model.kind=two_layer) each factor of q is a diagonal "
                          "Gaussian: set config.inference.posterior=diagonal_gaussian")
    if not spec.model.prior.trait("exists"):
        raise ConfigError("a model with two stochastic layers needs a prior p(z2): set config.model.prior")
    if spec.model.prior.trait("needs_posterior") and settings.hierarchy != "top_down":
        raise ConfigError("a VampPrior on z2 is 1/K sum_k q(z2 | u_k) and needs q(z2 | x): set "
                          "config.model.kind.hierarchy=top_down (bottom_up inference has only q(z2 | z1))")
    if not spec.objective.trait("bound_from_log_joint"):
        usable = [c.name for c in OBJECTIVES if c.trait("bound_from_log_joint")]
        raise ConfigError(f"objective {spec.objective.name!r} is not available with two stochastic layers; "
                          f"use {' or '.join(usable)}")


def _branch(trunk: Selected, widths: tuple[int, ...]) -> nn.Module | None:
    """Dense layers of ``widths`` with ``trunk``'s activation and gating (None if empty)."""
    return networks_lib.dense(trunk.settings, widths)


@MODEL_KINDS.register("two_layer", settings=TwoLayerSettings, check=_check)
def build(settings: TwoLayerSettings, *, model: ModelSpec, inference: InferenceSpec,
          event_shape: tuple[int, ...]) -> latent_lib.LatentVariableModel:
    """z = [z1, z2]: p(z2) p(z1 | z2) p(x | z1) (IWAE) or p(x | z1, z2) (VampPrior HVAE), inferred bottom-up or top-down."""
    d1, d2 = int(model.latent_dim), int(settings.top_latent_dim)
    dims = (d1, d2)
    event_ndims = len(event_shape)

    # p(z2) p(z1 | z2)
    top_prior = model.prior.build(latent_dim=d2, event_shape=event_shape)
    if top_prior is None:
        raise ConfigError("a model with two stochastic layers needs a prior p(z2) (config.model.prior)")
    p_z1 = ConditionalGaussian(trunk=settings.top_decoder.build(event_ndims=1), latent_dim=d1,
                               settings=settings.conditional())
    prior = TwoLayerPrior(top=top_prior, conditional=p_z1, dims=dims)

    # p(x | z1) or p(x | z1, z2)
    trunk = model.decoder.build(event_ndims=1, output_shape=event_shape)
    if settings.decoder_sees_top:
        branch = tuple(settings.decoder_branch_hidden)
        decoder = LatentDecoder(top_dim_start=d1, joined=JoinedTrunk(
            branch_a=_branch(model.decoder, branch), branch_b=_branch(model.decoder, branch), trunk=trunk))
    else:
        decoder = LatentDecoder(top_dim_start=d1, trunk=trunk)
    likelihood = model.likelihood.build(decoder=decoder, event_shape=event_shape)

    # q(z | x): diagonal Gaussian factors
    q_settings = inference.posterior.settings     # each factor's bounds on log sigma: the posterior's own
    top = settings.top_encoder
    if settings.hierarchy == "bottom_up":
        q_z1 = posteriors_lib.DiagonalGaussian(encoder=inference.encoder.build(event_ndims=event_ndims), latent_dim=d1,
                                               settings=q_settings)
        q_z2 = ConditionalGaussian(trunk=top.build(event_ndims=1), latent_dim=d2, settings=q_settings)
        posterior = BottomUpPosterior(q_z1_given_x=q_z1, q_z2_given_z1=q_z2, dims=dims)
    else:
        q_z2 = posteriors_lib.DiagonalGaussian(encoder=inference.encoder.build(event_ndims=event_ndims), latent_dim=d2,
                                               settings=q_settings)
        branch = tuple(settings.encoder_branch_hidden)
        x_branch = top.component.build(dataclasses.replace(top.settings, hidden=branch), event_ndims=event_ndims)
        joint = networks_lib.MLP(settings=networks_lib.MLPSettings(
            hidden=tuple(top.settings.hidden), activation=top.settings.activation, gated=top.settings.gated), event_ndims=1)
        z1_trunk = JoinedTrunk(branch_a=x_branch, branch_b=_branch(top, branch), trunk=joint)
        posterior = TopDownPosterior(q_z2_given_x=q_z2, z1_trunk=z1_trunk, dims=dims, settings=q_settings)
    return latent_lib.LatentVariableModel(prior=prior, likelihood=likelihood, posterior=posterior)


def is_hierarchical(model: Any) -> bool:
    """Whether ``model``'s latent has two stochastic layers."""
    return isinstance(getattr(model, "prior", None), TwoLayerPrior)


__all__ = ["BottomUpPosterior", "ConditionalGaussian", "JoinedTrunk", "LatentDecoder", "TopDownPosterior",
           "TwoLayerPrior", "TwoStage", "build", "is_hierarchical"]
