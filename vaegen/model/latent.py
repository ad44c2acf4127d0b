"""The generative model p(x, z) = p(z) p(x | z) and, beside it, the inference network q(z | x).

:class:`LatentVariableModel` holds three sub-modules side by side -- ``prior`` (p(z)),
``likelihood`` (p(x | z)) and ``posterior`` (q(z | x)) -- and exposes the generative process
exactly as written in the papers::

    p_z()              -> distrax distribution over z            event [D]
    p_x_given_z(z)     -> distrax distribution over x            event [*x.shape], batch z.shape[:-1]
    q_z_given_x(x)     -> distrax distribution over z            event [D]
    log_joint(x, z)    =  log p(z) + log p(x | z)                [...] nats, for z [..., D]
    sample(key, n)     :  z ~ p(z), x ~ p(x | z)                 [n, *x.shape]

Parameters live in one tree ``{"params": {"prior": ..., "likelihood": ..., "posterior": ...}}``:
the generative model's parameters are ``prior`` and ``likelihood``; the inference network's are
``posterior``.

An autoencoder is the same class with ``posterior`` a point mass and ``prior=None``: it has a
decoder p(x | z) but no p(z), so ``p_z``, ``log_joint`` and ``sample`` raise
:class:`NoPriorError` -- there is nothing to sample from until a density over the codes is
supplied (e.g. a mixture fitted to the training codes, which then becomes ``prior``).
"""

from __future__ import annotations

from typing import Any, Protocol

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.blocks import likelihoods as likelihoods_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.errors import NO_LATENT_MESSAGE, NO_PRIOR_MESSAGE, NoLatentError, NoPriorError
from vaegen.registry import MODEL_KINDS, NoSettings
from vaegen.spec.run import InferenceSpec, ModelSpec


class Model(Protocol):
    """What every model kind builds (:class:`LatentVariableModel` and its subclasses, MADE, the
    categorical MADE over codes, a density over vectors): a Flax module that can be initialised,
    applied and sampled, and answers what it is.  A model without a z answers the questions about
    z with :class:`vaegen.errors.NoLatentError` (:class:`NoLatents`); one without a p(z) with
    :class:`vaegen.errors.NoPriorError`.

    ``init``, ``apply`` and ``bind`` are Flax's; every method below is called through them
    (``model.apply(variables, ..., method=...)``)."""

    @property
    def is_autoencoder(self) -> bool:
        """Whether q(z | x) is a point mass (no ELBO)."""

    @property
    def has_prior(self) -> bool:
        """Whether it has a p(z) to sample from."""

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any: ...

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...

    def bind(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """x ~ p(x): ``[n, *event]``."""

    def p_z(self) -> Any:
        """p(z) (event [D])."""

    def q_z_given_x(self, x: jax.Array) -> distrax.Distribution:
        """q(z | x) for ``x [..., *event]``."""

    def p_x_given_z(self, z: jax.Array) -> distrax.Distribution:
        """p(x | z) for ``z [..., D]``."""

    def with_output_bias(self, variables: Any, data_mean: Any) -> Any:
        """``variables`` with the output layer started at the data mean ``[*event]`` (see
        :func:`set_output_bias`)."""


class NoLatents:
    """What a model without a latent variable z answers to the questions asked of one (a mixin of
    MADE and of a density over vectors): it is no autoencoder, has no prior over z, and has no
    q(z | x) or p(x | z) (:class:`vaegen.errors.NoLatentError`)."""

    @property
    def is_autoencoder(self) -> bool:
        return False

    @property
    def has_prior(self) -> bool:
        return False

    def q_z_given_x(self, x: jax.Array):
        raise NoLatentError(NO_LATENT_MESSAGE)

    def p_x_given_z(self, z: jax.Array):
        raise NoLatentError(NO_LATENT_MESSAGE)


class LatentVariableModel(nn.Module):
    """p(x, z) = p(z) p(x | z), with an amortized q(z | x) beside it.

    Attributes:
      prior: module returning p(z) (see :mod:`vaegen.blocks.priors`), or ``None`` for an autoencoder.
      likelihood: module mapping ``z [..., D]`` to p(x | z) (see :mod:`vaegen.blocks.likelihoods`).
      posterior: module mapping ``x [..., *event]`` to q(z | x) (see :mod:`vaegen.blocks.posteriors`).
    """

    prior: nn.Module | None
    likelihood: nn.Module
    posterior: nn.Module

    # --- the generative process -------------------------------------------------------------
    def p_z(self) -> distrax.Distribution:
        """p(z): event shape [D]."""
        if self.prior is None:
            raise NoPriorError(NO_PRIOR_MESSAGE)
        return self.prior(posterior=self.posterior)

    def p_x_given_z(self, z: jax.Array) -> distrax.Distribution:
        """p(x | z) for ``z [..., D]``: batch shape [...], event shape = one observation."""
        return self.likelihood(z)

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z) in nats, ``[...]`` for ``x [*event]`` and ``z [..., D]``."""
        return self.p_x_given_z(z).log_prob(x)

    def log_joint(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x, z) = log p(z) + log p(x | z) in nats, ``[...]`` for ``z [..., D]``."""
        return self.p_z().log_prob(z) + self.log_likelihood(x, z)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples x ~ p(x | z), z ~ p(z): ``[n, *event]``."""
        return self.sample_with_latents(key, n)[1]

    def sample_with_latents(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Ancestral sampling returning ``(z [n, D], x [n, *event])``."""
        key_z, key_x = jax.random.split(key)
        z = self.p_z().sample(seed=key_z, sample_shape=(n,))
        x = self.p_x_given_z(z).sample(seed=key_x)
        return z, x

    # --- inference, beside the model --------------------------------------------------------
    def q_z_given_x(self, x: jax.Array) -> distrax.Distribution:
        """q(z | x) for ``x [..., *event]``: batch shape [...], event shape [D]."""
        return self.posterior(x)

    @property
    def is_autoencoder(self) -> bool:
        """True when q(z | x) is a point mass (the deterministic autoencoder)."""
        return posteriors_lib.is_point_mass(self.posterior)

    @property
    def has_prior(self) -> bool:
        return self.prior is not None

    def with_output_bias(self, variables: Any, data_mean: Any) -> Any:
        """``variables`` with the likelihood head's bias set so that p(x | z) starts at the data mean
        ``[H, W, C]`` (see :func:`set_output_bias`)."""
        head = type(self.likelihood).head_name
        bias = jnp.asarray(likelihoods_lib.output_bias(self.likelihood, data_mean), jnp.float32)
        params = jax.tree_util.tree_map(lambda a: a, variables["params"])  # shallow copy of the tree
        old = params["likelihood"][head]["bias"]
        if old.shape != bias.shape:
            raise ValueError(f"output bias of shape {bias.shape} does not fit head {head!r} {old.shape}")
        params["likelihood"][head] = dict(params["likelihood"][head], bias=bias)
        return {**variables, "params": params}

    def __call__(self, x: jax.Array) -> jax.Array:
        """Touches every sub-module (used by ``init``): returns log p(x | z = E_q[z]) in nats."""
        z = self.q_z_given_x(x).mean()
        if self.prior is not None:
            self.p_z().log_prob(z)  # creates the parameters of every factor of p(z)
        return self.log_likelihood(x, z)


# --- the registered model kind, and building any kind -----------------------------------------------
#
# A model is assembled from its parts, each a registered component chosen in the config: the prior
# p(z), the likelihood p(x | z) on a decoder trunk, the posterior q(z | x) on an encoder trunk.  The
# model kind says how the parts make a model: one latent vector (here), two stochastic layers
# (:mod:`vaegen.model.two_layer`), or no latent at all (:mod:`vaegen.model.autoregressive`).  Traits
# (declared with :data:`vaegen.registry.MODEL_KINDS`): ``latents`` (continuous, discrete or none),
# ``one_latent_vector``, ``exact_log_likelihood``, ``over_codes``, and ``training`` (which objectives
# train it).


@MODEL_KINDS.register("latent_variable", traits={"one_latent_vector": True})
def latent_variable(settings: NoSettings, *, model: ModelSpec, inference: InferenceSpec,
                    event_shape: tuple[int, ...]) -> LatentVariableModel:
    """p(z) p(x | z) with q(z | x) beside it: one latent vector z [D]."""
    del settings
    d = int(model.latent_dim)
    prior = model.prior.build(latent_dim=d, event_shape=event_shape)
    decoder = model.decoder.build(event_ndims=1, output_shape=event_shape)
    likelihood = model.likelihood.build(decoder=decoder, event_shape=event_shape)
    encoder = inference.encoder.build(event_ndims=len(event_shape))
    posterior = inference.posterior.build(encoder=encoder, latent_dim=d)
    return LatentVariableModel(prior=prior, likelihood=likelihood, posterior=posterior)


def build_model(model: ModelSpec, inference: InferenceSpec, event_shape: tuple[int, ...]) -> Model:
    """The model of the typed ``model`` and ``inference`` sections of a run spec
    (:class:`vaegen.spec.run.ModelSpec`, :class:`~vaegen.spec.run.InferenceSpec`), of the kind
    ``model.kind`` names, for observations of shape ``event_shape`` (e.g. ``(28, 28, 1)``)."""
    return model.kind.build(model=model, inference=inference, event_shape=tuple(int(s) for s in event_shape))


def init_params(model: Model, key: jax.Array, event_shape: tuple[int, ...]):
    """Initialises the parameters ``{"params": {...}}`` with a dummy observation."""
    return model.init(key, jnp.zeros(tuple(event_shape), jnp.float32))


def set_output_bias(variables, model: Model, data_mean) -> Any:
    """Returns ``variables`` with the likelihood head's bias set so that p(x | z) starts at the
    data mean ``[H, W, C]`` (Bernoulli: logit of the pixel means, as in Burda et al. 2016;
    Gaussian: the means; discretized logistic: every component's mean).  A head on a spatial
    decoder trunk (``spatial_output``) has one bias per channel, set from each channel's mean
    over the pixels (:func:`vaegen.blocks.likelihoods.output_bias`).  A model without p(x | z)
    starts otherwise (its own ``with_output_bias``: MADE at the pixel means, a density unchanged)."""
    return model.with_output_bias(variables, data_mean)
