"""Discrete latent variables: categorical and Bernoulli posteriors q(z | x) and priors p(z).

A discrete-latent VAE is the same :class:`vaegen.model.latent.LatentVariableModel` as every
other: the same encoder and decoder trunks and the same likelihood p(x | z); only z is discrete.
The decoder reads z as a vector ``[D]``:

* **categorical** -- M independent variables of K categories each, every one one-hot, the M
  one-hot vectors concatenated: z in {0, 1}^{M K}, D = M K (Jang et al. 2017 use M = 30, K = 10).
  q(z | x) = prod_m Cat(z_m; softmax(l_m(x))), p(z) = prod_m Cat(z_m; softmax(l_m)) with logits
  l_m = 0 (uniform) or learned.
* **bernoulli** -- D independent binary variables: z in {0, 1}^D,
  q(z | x) = prod_d Bern(z_d; sigmoid(l_d(x))), p(z) = prod_d Bern(z_d; sigmoid(l_d)).

Both distributions are :class:`DiscreteLatents`: besides distrax's ``sample``, ``log_prob``
(nats), ``entropy``, ``mean`` (E[z], the category probabilities) and a closed-form
``kl_divergence`` to another of their kind, they give what the discrete objectives
(:mod:`vaegen.objectives.discrete`) and exact enumeration (:mod:`vaegen.estimators.enumeration`) need:

``relaxed_sample(key, temperature)``   ``(hard, soft)`` from one draw of noise: ``hard`` an exact
                                        sample of the distribution (Gumbel-max; logistic noise for a
                                        Bernoulli), ``soft`` its concrete / Gumbel-softmax relaxation
                                        at that temperature (Maddison et al. 2017; Jang et al. 2017)
``support_size``                        the number of configurations, K^M or 2^D (a Python int)
``configurations(index)``               the configurations with these indices ``[C]`` -> ``[C, D]``,
                                        traceable, so the K^M of them can be summed chunk by chunk

The posterior's and the prior's number of categories must agree, and a discrete q(z | x) has no
reparameterization gradient: each registered posterior's ``check`` says so in one line (train it
with ``objective=discrete_elbo`` or ``objective=vimco``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.registry import OBJECTIVES, POSTERIORS, PRIORS, Settings, setting
from vaegen.spec.run import RunSpec


class DiscreteLatents(distrax.Distribution):
    """A distribution over discrete z ``[D]`` (vectors of 0s and 1s) with the extra methods the
    discrete objectives need (module docstring).  Subclasses implement them and distrax's
    ``_sample_n``, ``log_prob`` and ``event_shape``."""

    def relaxed_sample(self, key: jax.Array, temperature: Any, sample_shape: tuple[int, ...] = ()
                       ) -> tuple[jax.Array, jax.Array]:
        """``(hard, soft)``, each ``sample_shape + batch_shape + [D]``, from the same noise: ``hard``
        is distributed exactly as the distribution (and equals ``sample(seed=key)``), ``soft`` is its
        relaxation at ``temperature`` > 0 (tending to ``hard`` as the temperature tends to 0)."""
        raise NotImplementedError

    @property
    def support_size(self) -> int:
        """The number of configurations of z (a Python int; may be astronomically large)."""
        raise NotImplementedError

    def configurations(self, index: jax.Array) -> jax.Array:
        """Configurations number ``index [C]`` (int32, each in [0, support_size)) as ``[C, D]``
        float32 vectors; every configuration has exactly one index."""
        raise NotImplementedError

    def kl_divergence(self, other_dist, **kwargs) -> jax.Array:
        """KL(self || other) in nats, closed form, for ``other`` of the same kind (``[]`` per batch
        element)."""
        raise NotImplementedError


class OneHotCategoricals(DiscreteLatents):
    """M independent categorical variables of K categories, one-hot and flattened: event ``[M K]``.

    Args:
      logits: ``[..., M, K]`` unnormalised log-probabilities; batch shape ``[...]``.
    """

    def __init__(self, logits: jax.Array):
        super().__init__()
        self._logits = jnp.asarray(logits, jnp.float32)

    @property
    def logits(self) -> jax.Array:
        return self._logits

    @property
    def log_probs(self) -> jax.Array:
        """log q(z_m = k), ``[..., M, K]``."""
        return jax.nn.log_softmax(self._logits, axis=-1)

    @property
    def probs(self) -> jax.Array:
        """q(z_m = k), ``[..., M, K]``."""
        return jax.nn.softmax(self._logits, axis=-1)

    @property
    def num_variables(self) -> int:
        return int(self._logits.shape[-2])

    @property
    def num_categories(self) -> int:
        return int(self._logits.shape[-1])

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.num_variables * self.num_categories,)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._logits.shape[:-2])

    def _flat(self, v: jax.Array) -> jax.Array:
        return v.reshape(v.shape[:-2] + (v.shape[-2] * v.shape[-1],))

    def _split(self, z: jax.Array) -> jax.Array:
        return z.reshape(z.shape[:-1] + (self.num_variables, self.num_categories))

    def relaxed_sample(self, key, temperature, sample_shape=()):
        # Gumbel-max: argmax_k (log pi_k + g_k), g_k ~ Gumbel(0, 1), is an exact draw of Cat(pi);
        # softmax((log pi + g) / tau) is the Gumbel-softmax (concrete) relaxation of it.
        shape = tuple(sample_shape) + self._logits.shape
        s = self.log_probs + jax.random.gumbel(key, shape, jnp.float32)          # [..., M, K]
        hard = jax.nn.one_hot(jnp.argmax(s, axis=-1), self.num_categories, dtype=jnp.float32)
        soft = jax.nn.softmax(s / temperature, axis=-1)
        return self._flat(hard), self._flat(soft)

    def _sample_n(self, key, n):
        return self.relaxed_sample(key, 1.0, (n,))[0]                            # [n, ..., M K]

    def log_prob(self, value):
        # log q(z) = sum_m sum_k z_mk log pi_mk for one-hot z_m   [...]
        return jnp.sum(self._split(value) * self.log_probs, axis=(-2, -1))

    def entropy(self):
        return -jnp.sum(self.probs * self.log_probs, axis=(-2, -1))

    def mean(self):
        return self._flat(self.probs)                                            # E[z] = pi, flattened

    def mode(self):
        return self._flat(jax.nn.one_hot(jnp.argmax(self._logits, -1), self.num_categories, dtype=jnp.float32))

    def kl_divergence(self, other_dist, **kwargs):
        if not isinstance(other_dist, OneHotCategoricals):
            raise TypeError(f"no closed-form KL between OneHotCategoricals and {type(other_dist).__name__}")
        # KL = sum_m sum_k pi_mk (log pi_mk - log rho_mk)
        return jnp.sum(self.probs * (self.log_probs - other_dist.log_probs), axis=(-2, -1))

    @property
    def support_size(self) -> int:
        return self.num_categories ** self.num_variables

    def configurations(self, index):
        # Configuration i has z_m = the m-th digit of i in base K (the first variable most significant).
        k, m = self.num_categories, self.num_variables
        powers = jnp.asarray([k ** (m - 1 - j) for j in range(m)], jnp.int32)  # [M]
        digits = (jnp.asarray(index, jnp.int32)[:, None] // powers) % k          # [C, M]
        return self._flat(jax.nn.one_hot(digits, k, dtype=jnp.float32))          # [C, M K]


class Bernoullis(DiscreteLatents):
    """D independent Bernoulli variables: event ``[D]``, values 0.0 / 1.0.

    Args:
      logits: ``[..., D]`` log-odds; batch shape ``[...]``.
    """

    def __init__(self, logits: jax.Array):
        super().__init__()
        self._logits = jnp.asarray(logits, jnp.float32)

    @property
    def logits(self) -> jax.Array:
        return self._logits

    @property
    def probs(self) -> jax.Array:
        return jax.nn.sigmoid(self._logits)

    @property
    def num_variables(self) -> int:
        return int(self._logits.shape[-1])

    num_categories = 2

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.num_variables,)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._logits.shape[:-1])

    def relaxed_sample(self, key, temperature, sample_shape=()):
        # 1[l + L > 0] with L = log u - log(1 - u) logistic is an exact draw of Bern(sigmoid(l));
        # sigmoid((l + L) / tau) is the binary concrete relaxation of it.
        shape = tuple(sample_shape) + self._logits.shape
        s = self._logits + jax.random.logistic(key, shape, jnp.float32)
        return (s > 0).astype(jnp.float32), jax.nn.sigmoid(s / temperature)

    def _sample_n(self, key, n):
        return self.relaxed_sample(key, 1.0, (n,))[0]

    def log_prob(self, value):
        # log q(z) = sum_d z_d log sigmoid(l_d) + (1 - z_d) log sigmoid(-l_d)   [...]
        l = self._logits
        return jnp.sum(value * jax.nn.log_sigmoid(l) + (1.0 - value) * jax.nn.log_sigmoid(-l), axis=-1)

    def entropy(self):
        l, p = self._logits, self.probs
        return -jnp.sum(p * jax.nn.log_sigmoid(l) + (1.0 - p) * jax.nn.log_sigmoid(-l), axis=-1)

    def mean(self):
        return self.probs

    def mode(self):
        return (self._logits > 0).astype(jnp.float32)

    def kl_divergence(self, other_dist, **kwargs):
        if not isinstance(other_dist, Bernoullis):
            raise TypeError(f"no closed-form KL between Bernoullis and {type(other_dist).__name__}")
        l, r, p = self._logits, other_dist.logits, self.probs
        return jnp.sum(p * (jax.nn.log_sigmoid(l) - jax.nn.log_sigmoid(r))
                       + (1.0 - p) * (jax.nn.log_sigmoid(-l) - jax.nn.log_sigmoid(-r)), axis=-1)

    @property
    def support_size(self) -> int:
        return 2 ** self.num_variables

    def configurations(self, index):
        d = self.num_variables
        shifts = jnp.asarray([d - 1 - j for j in range(d)], jnp.int32)           # [D], first bit most significant
        bits = (jnp.asarray(index, jnp.int32)[:, None] >> shifts) & 1             # [C, D]
        return bits.astype(jnp.float32)


def is_discrete(d: distrax.Distribution) -> bool:
    """Whether ``d`` is a distribution over discrete latents (:class:`DiscreteLatents`)."""
    return isinstance(d, DiscreteLatents)


# --- modules -----------------------------------------------------------------------------------------


class CategoricalPosterior(nn.Module):
    """q(z | x) = prod_m Cat(z_m; softmax(l_m(x))): M = latent_dim / K categorical variables.

    The encoder trunk's features go through one dense head to the M K logits.

    Attributes:
      encoder: trunk mapping ``x [..., *event]`` to features ``[..., F]``.
      latent_dim: D = M K, the length of z as the decoder reads it.
      settings: :class:`CategoricalSettings`: K = ``categories``.
    """

    encoder: nn.Module
    latent_dim: int
    settings: "CategoricalSettings"

    @nn.compact
    def __call__(self, x: jax.Array) -> OneHotCategoricals:
        logits = nn.Dense(self.latent_dim, name="logits")(self.encoder(x))          # [..., M K]
        k = self.settings.categories
        return OneHotCategoricals(logits.reshape(logits.shape[:-1] + (self.latent_dim // k, k)))


class BernoulliPosterior(nn.Module):
    """q(z | x) = prod_d Bern(z_d; sigmoid(l_d(x))): D binary variables.

    Attributes:
      encoder: trunk mapping ``x`` to features.
      latent_dim: D.
    """

    encoder: nn.Module
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> Bernoullis:
        return Bernoullis(nn.Dense(self.latent_dim, name="logits")(self.encoder(x)))


class CategoricalPrior(nn.Module):
    """p(z) = prod_m Cat(z_m; softmax(l_m)): uniform (l = 0, no parameters) or learned logits
    ``logits [M, K]`` (init 0, the uniform prior).

    Attributes:
      latent_dim: D = M K.
      settings: :class:`CategoricalPriorSettings`: K = ``categories``; ``learned``: whether the logits
        are parameters.
    """

    latent_dim: int
    settings: "CategoricalPriorSettings"

    @nn.compact
    def __call__(self, posterior: Any = None) -> OneHotCategoricals:
        del posterior
        k = self.settings.categories
        shape = (self.latent_dim // k, k)
        logits = self.param("logits", nn.initializers.zeros, shape) if self.settings.learned else jnp.zeros(shape)
        return OneHotCategoricals(logits)


class BernoulliPrior(nn.Module):
    """p(z) = prod_d Bern(z_d; sigmoid(l_d)): uniform (l = 0, p = 1/2) or learned ``logits [D]``.

    Attributes:
      latent_dim: D.
      settings: :class:`BernoulliPriorSettings`: ``learned``: whether the logits are parameters.
    """

    latent_dim: int
    settings: "BernoulliPriorSettings"

    @nn.compact
    def __call__(self, posterior: Any = None) -> Bernoullis:
        del posterior
        shape = (self.latent_dim,)
        logits = self.param("logits", nn.initializers.zeros, shape) if self.settings.learned else jnp.zeros(shape)
        return Bernoullis(logits)


# --- registered posteriors and priors ----------------------------------------------------------------
#
# Traits: ``discrete`` (the name of the latent space, "one_hot_categorical" or "bernoulli": a prior and a
# posterior must live on the same one); ``support_size(settings, latent_dim)`` (the posterior's number of
# configurations, K^M or 2^D, for the checks of objectives that enumerate them).  An objective that can
# train a discrete q(z | x) (whose gradient does not pass through z) declares the trait ``discrete_gradients``.

CATEGORICAL, BERNOULLI = "one_hot_categorical", "bernoulli"

NO_HMC = ("AIS moves z by Hamiltonian Monte Carlo, which needs a continuous z, and this z is discrete; use "
          "importance sampling (is), or exact enumeration (exact) on a small latent space")


@dataclasses.dataclass(frozen=True)
class CategoricalSettings(Settings):
    categories: int = setting(10, "K, the categories of each variable; latent_dim = M K (M variables, one-hot each)",
                              ge=2)


@dataclasses.dataclass(frozen=True)
class CategoricalPriorSettings(Settings):
    categories: int = setting(10, "K, the categories of each variable (as the posterior's)", ge=2)
    learned: bool = setting(False, "learn the logits of p(z) (False: the uniform prior, no parameters)")


@dataclasses.dataclass(frozen=True)
class BernoulliPriorSettings(Settings):
    learned: bool = setting(False, "learn the logits of p(z) (False: p(z_d = 1) = 1/2, no parameters)")


def _discrete_objectives() -> str:
    return ", ".join(c.name for c in OBJECTIVES if c.trait("discrete_gradients"))


def _check_discrete_posterior(settings: Settings, spec: RunSpec) -> None:
    """How a discrete q(z | x) fits the run: one latent vector, a prior on the same latent space
    (with as many categories), and an objective whose gradient does not pass through z."""
    posterior, prior = spec.inference.posterior, spec.model.prior
    where = f"config.inference.posterior={posterior.name}"
    space = posterior.trait("discrete")
    if not spec.model.kind.trait("one_latent_vector"):
        raise ConfigError(f"{where} is a discrete z for one latent vector: set config.model.kind=latent_variable")
    categories = getattr(settings, "categories", None)
    if categories is not None and spec.model.latent_dim % categories:
        raise ConfigError(f"config.inference.posterior.categories={categories} must divide "
                          f"config.model.latent_dim={spec.model.latent_dim} (latent_dim = M variables x K categories)")
    if prior.trait("discrete") != space:
        same = ", ".join(c.name for c in PRIORS if c.trait("discrete") == space)
        raise ConfigError(f"{where} has a discrete z, which config.model.prior={prior.name} is not a distribution "
                          f"over; set config.model.prior={same}")
    if categories is not None and getattr(prior.settings, "categories", categories) != categories:
        raise ConfigError(f"config.model.prior.categories={prior.settings.categories} and "
                          f"config.inference.posterior.categories={categories} must be equal")
    objective = spec.objective
    if not objective.trait("discrete_gradients"):
        raise ConfigError(f"{where} has a discrete z, so objective {objective.name!r} has no gradient for q(z|x) "
                          f"(nothing to reparameterize); use config.objective.name= one of {_discrete_objectives()}")


def _check_discrete_prior(settings: Settings, spec: RunSpec) -> None:
    space = spec.model.prior.trait("discrete")
    if spec.inference.posterior.trait("discrete") != space:
        same = ", ".join(c.name for c in POSTERIORS if c.trait("discrete") == space)
        raise ConfigError(f"config.model.prior={spec.model.prior.name} is a distribution over discrete z; "
                          f"config.inference.posterior={spec.inference.posterior.name} is not: set "
                          f"config.inference.posterior={same}")


def _categorical_support(settings: CategoricalSettings, latent_dim: int) -> int:
    return settings.categories ** (latent_dim // settings.categories)


def _bernoulli_support(settings: Any, latent_dim: int) -> int:
    return 2 ** latent_dim


@POSTERIORS.register("categorical", settings=CategoricalSettings, check=_check_discrete_posterior,
                     traits={"discrete": CATEGORICAL, "support_size": _categorical_support, "reparameterized": False})
def categorical_posterior(settings: CategoricalSettings, *, encoder: nn.Module, latent_dim: int) -> CategoricalPosterior:
    """q(z | x) = prod_m Cat(z_m; softmax(l_m(x))): M = latent_dim / K one-hot categorical variables."""
    return CategoricalPosterior(encoder=encoder, latent_dim=latent_dim, settings=settings)


@POSTERIORS.register("bernoulli", check=_check_discrete_posterior,
                     traits={"discrete": BERNOULLI, "support_size": _bernoulli_support, "reparameterized": False})
def bernoulli_posterior(settings: Any, *, encoder: nn.Module, latent_dim: int) -> BernoulliPosterior:
    """q(z | x) = prod_d Bern(z_d; sigmoid(l_d(x))): latent_dim binary variables."""
    del settings
    return BernoulliPosterior(encoder=encoder, latent_dim=latent_dim)


@PRIORS.register("categorical", settings=CategoricalPriorSettings, check=_check_discrete_prior,
                 traits={"discrete": CATEGORICAL, "label": "categorical p(z)"})
def categorical_prior(settings: CategoricalPriorSettings, *, latent_dim: int,
                      event_shape: tuple[int, ...]) -> CategoricalPrior:
    """p(z) = prod_m Cat(z_m; softmax(l_m)): M = latent_dim / K one-hot variables, uniform or learned."""
    del event_shape
    return CategoricalPrior(latent_dim=latent_dim, settings=settings)


@PRIORS.register("bernoulli", settings=BernoulliPriorSettings, check=_check_discrete_prior,
                 traits={"discrete": BERNOULLI, "label": "Bernoulli p(z)"})
def bernoulli_prior(settings: BernoulliPriorSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> BernoulliPrior:
    """p(z) = prod_d Bern(z_d; sigmoid(l_d)): latent_dim binary variables, uniform or learned."""
    del event_shape
    return BernoulliPrior(latent_dim=latent_dim, settings=settings)


def support_size(spec: RunSpec) -> int | None:
    """K^M (or 2^D) configurations of the run's discrete q(z | x), or None for a continuous z."""
    fn = spec.inference.posterior.trait("support_size")
    return None if fn is None else int(fn(spec.inference.posterior.settings, spec.model.latent_dim))


def size_text(n: int) -> str:
    """``n`` for a message: exact up to a million, else as a power of ten (``~1.0e+30``)."""
    return f"{n:,}" if n <= 10**6 else f"~1e{math.log10(n):.1f}"
