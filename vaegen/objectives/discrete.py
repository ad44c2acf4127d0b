"""Objectives for a discrete z: the ELBO with four gradient estimators, and VIMCO for IWAE_k.

A discrete q(z | x) (:mod:`vaegen.blocks.discrete`) has no reparameterization: z ~ q is not a
differentiable function of q's parameters phi, so the gradient of E_q[log p(x | z)] with respect
to phi needs another estimator.  Every objective here reports the **true bound** in nats, each
term separately (the ELBO with KL(q || p) in closed form for factorized categoricals or
Bernoullis; IWAE_k for VIMCO); what differs between estimators is only the gradient, carried by a
surrogate whose value is replaced by the bound's (``objective = surrogate + stop_gradient(bound -
surrogate)``): the trainer maximises a number equal to the bound and follows the surrogate's
gradient.

The ELBO (``discrete_elbo``), L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)).  The KL and its
gradient are exact (closed form) in every estimator; the estimators differ in the gradient of
the reconstruction term R(x) = E_q[log p(x | z)]:

====================  =================================================================================
``enumerate``         R = sum over all K^M configurations z of q(z | x) log p(x | z): the exact ELBO and
                      its exact gradient (only where K^M <= ``max_configurations``)
``reinforce``         the score function (Williams 1992): (1/S) sum_s [grad log p(x | z_s) + (log p(x | z_s)
                      - b_s) grad log q(z_s | x)], z_s ~ q: **unbiased** for grad L, with a baseline b_s that
                      does not depend on z_s -- the mean of the other samples (``loo``), or a learned b(x)
                      = c + b_psi(x) with c a moving average of log p(x | z) and b_psi an MLP on x trained
                      to predict the rest (``learned``, Mnih & Gregor 2014), or none
``gumbel_softmax``    the concrete / Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017):
                      grad (1/S) sum_s log p(x | y_s), y_s = softmax((log pi + g_s) / tau) -- the exact
                      gradient of a *different* objective, the relaxed one, in which the decoder reads
                      relaxed points of the simplex it never meets at test time: **biased** for grad L
                      (for phi and the decoder's parameters theta alike), the bias vanishing as tau -> 0
                      while the variance grows
``straight_through``  the forward pass reads the one-hot sample z_s = argmax(log pi + g_s) (so the value
                      and the decoder's gradient are those of an exact sample: unbiased for theta), the
                      backward pass differentiates it as if it were y_s: **biased** for phi at every
                      temperature (the decoder's gradient at the vertex z_s stands in for that along the
                      path of y_s)
====================  =================================================================================

``vimco``: the multi-sample bound L_k(x) = E log (1/k) sum_j w_j, w_j = p(x, z_j) / q(z_j | x),
with the leave-one-out control variate of Mnih & Rezende (2016): each sample's learning signal
is L^ - L^_{-j}, where L^_{-j} replaces log w_j by the mean of the other log-weights.  The
baseline does not depend on z_j, so the gradient is **unbiased** for grad L_k.

The temperature of the relaxations is tau_t = max(tau_min, tau_0 exp(-r t)) at training step t
(Jang et al.'s schedule; r = 0 keeps it at tau_0); it is reported as the term ``temperature``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vaegen.blocks import discrete as discrete_lib
from vaegen.blocks.networks import MLP, MLPSettings
from vaegen.errors import ConfigError
from vaegen.objectives.base import Objective
from vaegen.objectives.bounds import ELBO, ELBOSettings, require_density
from vaegen.registry import OBJECTIVES, Settings, setting
from vaegen.spec.run import RunSpec

Terms = dict[str, jax.Array]
stop = jax.lax.stop_gradient

ESTIMATORS = ("gumbel_softmax", "straight_through", "reinforce", "enumerate")
BASELINES = ("loo", "learned", "none")


def with_gradient_of(value: jax.Array, surrogate: jax.Array) -> jax.Array:
    """A number equal to ``value`` (up to rounding) whose gradient is ``surrogate``'s."""
    return surrogate + stop(value - surrogate)


def temperature_at(step: Any, temperature: float, temperature_min: float, anneal_rate: float) -> jax.Array:
    """tau_t = max(tau_min, tau_0 exp(-r t)) (Jang et al. 2017) at training step ``step``."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.maximum(temperature_min, temperature * jnp.exp(-anneal_rate * t))


def _log_likelihood(m: Any, x: jax.Array, z: jax.Array) -> jax.Array:
    """log p(x | z_s), ``[S]`` for ``z [S, D]``; one sample without the sample axis (vmapped over a
    batch, the decoder is then one plain matrix product per layer, as in :func:`vaegen.objectives.bounds.elbo_terms`)."""
    if z.shape[0] == 1:
        return m.log_likelihood(x, z[0])[None]
    return m.log_likelihood(x, z)


def enumerated_reconstruction(m: Any, q: discrete_lib.DiscreteLatents, x: jax.Array) -> jax.Array:
    """E_q[log p(x | z)] = sum_z q(z | x) log p(x | z) over every configuration of z, exactly (and
    differentiably), ``[]`` nats.  All K^M configurations go through the decoder at once: for small
    latent spaces (the objective's ``max_configurations``); :mod:`vaegen.estimators.enumeration`
    sums larger ones in chunks."""
    z = q.configurations(jnp.arange(q.support_size, dtype=jnp.int32))          # [N, D]
    return jnp.sum(jnp.exp(q.log_prob(z)) * m.log_likelihood(x, z))


def enumerated_iwae(m: Any, q: discrete_lib.DiscreteLatents, x: jax.Array, k: int) -> jax.Array:
    """The IWAE_k bound itself, L_k(x) = sum over k-tuples (z_1..z_k) of prod_j q(z_j | x)
    log (1/k) sum_j p(x, z_j) / q(z_j | x), by enumerating all N^k tuples of the N configurations
    (exact, differentiable), ``[]`` nats.  For tests and tiny latent spaces only (N^k grows fast)."""
    n = q.support_size
    z = q.configurations(jnp.arange(n, dtype=jnp.int32))                        # [N, D]
    log_q = q.log_prob(z)                                                        # [N]
    log_w = m.log_joint(x, z) - log_q                                            # [N]
    tuples = jnp.stack(jnp.meshgrid(*([jnp.arange(n)] * k), indexing="ij"), -1).reshape(-1, k)   # [N^k, k]
    log_prob_tuple = jnp.sum(log_q[tuples], axis=-1)                             # [N^k]
    bound = jax.nn.logsumexp(log_w[tuples], axis=-1) - math.log(k)               # [N^k]
    return jnp.sum(jnp.exp(log_prob_tuple) * bound)


# --- settings ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DiscreteELBOSettings(Settings):
    estimator: str = setting("gumbel_softmax", "the gradient of E_q[log p(x|z)]: gumbel_softmax (relaxed, biased) | "
                             "straight_through (biased) | reinforce (unbiased) | enumerate (exact, small K^M only)",
                             choices=ESTIMATORS)
    num_samples: int = setting(1, "S draws of z ~ q(z|x) per example (not used by enumerate)", gt=0)
    temperature: float = setting(1.0, "tau_0 of the relaxations (gumbel_softmax, straight_through)", gt=0)
    temperature_min: float = setting(0.5, "tau_min: the temperature is max(tau_min, tau_0 exp(-r t)) at step t", gt=0)
    anneal_rate: float = setting(0.0, "r, per training step (Jang et al. 2017 use 1e-5 to 1e-4; 0 = constant)", ge=0)
    baseline: str = setting("loo", "reinforce's baseline: loo (the mean of the other samples, S >= 2) | learned "
                            "(c + MLP(x), Mnih & Gregor 2014) | none", choices=BASELINES)
    baseline_hidden: tuple[int, ...] = setting((100,), "the learned baseline's hidden widths (tanh)", items_gt=0)
    baseline_learning_rate: float = setting(1e-3, "Adam learning rate of the learned baseline's network", gt=0)
    baseline_decay: float = setting(0.9, "decay of the moving average c of the learned baseline", ge=0, lt=1)
    max_configurations: int = setting(1024, "enumerate: the most configurations K^M of z summed per example", gt=0)

    def validate(self, key):
        if self.temperature_min > self.temperature:
            raise ConfigError(f"{key('temperature_min')}={self.temperature_min} must be at most "
                              f"{key('temperature')}={self.temperature}")


@dataclasses.dataclass(frozen=True)
class VIMCOSettings(Settings):
    num_samples: int = setting(5, "k samples per example (VIMCO's leave-one-out needs k >= 2)", ge=2)


# --- the reconstruction term's estimators: (value, surrogate) of E_q[log p(x | z)] ---------------------
#
# Each returns the value reported (an unbiased estimate of E_q[log p(x | z)], or its exact value) and the
# surrogate whose gradient is the estimator's, and extra terms.

def _gumbel_softmax(obj: "DiscreteELBO", m, q, x, key, step, baseline):
    tau = temperature_at(step, obj.settings.temperature, obj.settings.temperature_min, obj.settings.anneal_rate)
    hard, soft = q.relaxed_sample(key, tau, (obj.settings.num_samples,))                  # [S, D] each
    value = jnp.mean(_log_likelihood(m, x, stop(hard)))                          # an exact sample's log p(x|z)
    surrogate = jnp.mean(_log_likelihood(m, x, soft))                            # the relaxed objective
    return value, surrogate, {"temperature": tau}


def _straight_through(obj: "DiscreteELBO", m, q, x, key, step, baseline):
    tau = temperature_at(step, obj.settings.temperature, obj.settings.temperature_min, obj.settings.anneal_rate)
    hard, soft = q.relaxed_sample(key, tau, (obj.settings.num_samples,))
    z = hard + (soft - stop(soft))                  # = hard exactly; d z / d phi := d soft / d phi
    f = jnp.mean(_log_likelihood(m, x, z))
    return f, f, {"temperature": tau}


def _reinforce(obj: "DiscreteELBO", m, q, x, key, step, baseline):
    s = obj.settings.num_samples
    z = stop(q.sample(seed=key, sample_shape=(s,)))                              # [S, D]
    f = _log_likelihood(m, x, z)                                                 # log p(x | z_s)   [S]
    log_q = q.log_prob(z)                                                        # log q(z_s | x)   [S]
    if obj.settings.baseline == "loo":
        b = (jnp.sum(f) - f) / (s - 1)             # the mean of the other samples: independent of z_s
    else:
        b = jnp.broadcast_to(jnp.asarray(0.0 if baseline is None else baseline, jnp.float32), f.shape)
    signal = stop(f - b)                                                         # [S]
    surrogate = jnp.mean(f + signal * log_q)
    return jnp.mean(f), surrogate, {"learning_signal": jnp.mean(signal)}


def _enumerate(obj: "DiscreteELBO", m, q, x, key, step, baseline):
    r = enumerated_reconstruction(m, q, x)
    return r, r, {}


_RECONSTRUCTION: dict[str, Callable[..., tuple[jax.Array, jax.Array, Terms]]] = {
    "gumbel_softmax": _gumbel_softmax, "straight_through": _straight_through, "reinforce": _reinforce,
    "enumerate": _enumerate,
}


@dataclasses.dataclass(frozen=True)
class DiscreteELBO(Objective):
    """The ELBO of a model with a discrete z, with the gradient estimator ``estimator`` (see the
    module's table for what each is unbiased for).

    L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))

    Attributes:
      settings: :class:`DiscreteELBOSettings`: ``estimator`` (``gumbel_softmax`` | ``straight_through``
        | ``reinforce`` | ``enumerate``), S = ``num_samples`` draws of z per example (not used by
        ``enumerate``), tau_0, tau_min and r of the relaxations' schedule (``temperature``,
        ``temperature_min``, ``anneal_rate``: :func:`temperature_at`), REINFORCE's ``baseline``
        (``loo`` with S >= 2, ``learned`` or ``none``) and the learned baseline's MLP widths, Adam
        learning rate and moving-average decay (``baseline_hidden``, ``baseline_learning_rate``,
        ``baseline_decay``).

    Terms (nats, one example): ``reconstruction`` E_q[log p(x | z)] (an unbiased estimate from S
    exact samples; exact for ``enumerate``), ``kl`` KL(q || p) (closed form), ``elbo`` =
    reconstruction - kl, ``objective`` (equal to ``elbo``; its gradient is the estimator's), and
    ``temperature`` (relaxations) or ``learning_signal`` (REINFORCE: the mean of log p(x | z_s) - b_s).
    """

    settings: DiscreteELBOSettings = DiscreteELBOSettings()
    bound_name = "elbo"

    @property
    def samples_per_example(self) -> int:
        return 1 if self.settings.estimator == "enumerate" else self.settings.num_samples

    def terms(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: Any = 0,
              baseline: jax.Array | None = None) -> Terms:
        """The terms of one example ``x [*event]``; ``baseline`` is REINFORCE's learned b(x) ``[]``."""
        require_density(model, "ELBO")
        estimate = _RECONSTRUCTION[self.settings.estimator]

        def terms(m: Any) -> Terms:
            q, p = m.q_z_given_x(x), m.p_z()
            kl = q.kl_divergence(p)                                              # closed form   []
            value, surrogate, extra = estimate(self, m, q, x, key, step, baseline)
            elbo = value - kl
            return {"reconstruction": value, "kl": kl, "elbo": elbo,
                    "objective": with_gradient_of(elbo, surrogate - kl), **extra}

        return model.apply(variables, method=terms)

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: Any = 0) -> Terms:
        return self.terms(model, variables, x, key, step)

    def for_validation(self, validation_num_samples: int) -> Any:
        """The exact ELBO for ``enumerate``; else the ELBO estimated from ``validation_num_samples``
        exact samples of q with the closed-form KL (:class:`vaegen.objectives.bounds.ELBO`)."""
        if self.settings.estimator == "enumerate":
            return self
        return ELBO(ELBOSettings(num_samples=int(validation_num_samples)))


class BaselineNetwork(nn.Module):
    """b_psi(x): an MLP (tanh) on the flattened observation with one output, ``[..., *event] -> [...]``."""

    hidden: tuple[int, ...] = (100,)
    event_ndims: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = MLP(MLPSettings(hidden=tuple(self.hidden), activation="tanh"), event_ndims=self.event_ndims,
                name="trunk")(x)
        return nn.Dense(1, name="out", kernel_init=nn.initializers.zeros)(h)[..., 0]


@dataclasses.dataclass(frozen=True)
class LearnedBaselineELBO(DiscreteELBO):
    """:class:`DiscreteELBO` with REINFORCE and the learned baseline of Mnih & Gregor (2014):
    b(x) = c + b_psi(x), the objective's own parameters ``{"center": c, "network": psi}`` (trained
    beside the model by their own optimizer and checkpointed with it).  Both minimise
    (1/2) mean_s (log p(x | z_s) - c - b_psi(x))^2 over the batch: psi by Adam, c by gradient descent
    with step 1 - ``baseline_decay``, which makes c a moving average of mean(log p(x | z) - b_psi(x)).

    Extra terms: ``baseline/loss``, ``baseline/center``, ``baseline/residual_std`` (the standard
    deviation of log p(x | z_s) - b(x) over the batch, nats: what is left of the learning signal's
    scale)."""

    has_auxiliary = True
    auxiliary_name = "baseline"

    def network(self, x: jax.Array) -> BaselineNetwork:
        return BaselineNetwork(hidden=tuple(self.settings.baseline_hidden), event_ndims=x.ndim - 1)

    def _baseline(self, auxiliary: Any, x: jax.Array) -> jax.Array:
        return auxiliary["center"] + self.network(x).apply(auxiliary["network"], x)          # [B]

    def batch_terms(self, model: Any, variables: Any, x: jax.Array, keys: jax.Array, step: Any = 0,
                    auxiliary: Any = None) -> Terms:
        b = self._baseline(auxiliary, x)                                                      # [B]
        return jax.vmap(lambda xi, ki, bi: self.terms(model, variables, xi, ki, step, bi))(x, keys, b)

    def init_auxiliary(self, key: jax.Array, model: Any, variables: Any) -> Any:
        x = jnp.zeros((1,) + tuple(model.likelihood.event_shape), jnp.float32)   # one observation
        return {"center": jnp.zeros((), jnp.float32), "network": self.network(x).init(key, x)}

    def auxiliary_optimizer(self) -> optax.GradientTransformation:
        s = self.settings
        return optax.multi_transform({"center": optax.sgd(1.0 - s.baseline_decay),
                                      "network": optax.adam(s.baseline_learning_rate)},
                                     {"center": "center", "network": "network"})

    def auxiliary_loss(self, auxiliary: Any, model: Any, variables: Any, x: jax.Array, keys: jax.Array,
                       step: Any = 0) -> tuple[jax.Array, Terms]:
        s = self.settings.num_samples

        def samples(xi, ki):
            def f(m):
                z = m.q_z_given_x(xi).sample(seed=ki, sample_shape=(s,))          # the same z as the terms'
                return _log_likelihood(m, xi, z)                                   # [S]
            return model.apply(variables, method=f)

        f = stop(jax.vmap(samples)(x, keys))                                       # [B, S]
        residual = f - self._baseline(auxiliary, x)[:, None]                       # [B, S]
        loss = 0.5 * jnp.mean(residual**2)
        return loss, {"center": auxiliary["center"], "residual_std": jnp.std(residual)}


@dataclasses.dataclass(frozen=True)
class VIMCO(Objective):
    """IWAE_k with the VIMCO gradient estimator (Mnih & Rezende 2016), for a discrete z.

    L_k(x) = E[log (1/k) sum_j w_j],  w_j = p(x, z_j) / q(z_j | x),  z_j ~ q(z | x)

    Gradient (unbiased for grad L_k): sum_j (L^ - L^_{-j}) grad log q(z_j | x) + sum_j w~_j grad log w_j,
    w~ the normalised weights and L^_{-j} = log (1/k) (sum_{i != j} w_i + exp(mean_{i != j} log w_i)).

    Terms (nats, one example): ``iwae`` (the k-sample estimate of L_k), ``elbo`` (mean of the
    log-weights: an unbiased ELBO estimate), ``reconstruction`` (mean log p(x | z_j)), ``kl``
    (closed form), ``ess`` (effective sample size), ``objective`` (equal to ``iwae``).

    Attributes:
      settings: :class:`VIMCOSettings`: k = ``num_samples``.
    """

    settings: VIMCOSettings = VIMCOSettings()
    bound_name = "iwae"

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: Any = 0) -> Terms:
        require_density(model, "IWAE bound")
        del step
        k = self.settings.num_samples

        def terms(m: Any) -> Terms:
            q, p = m.q_z_given_x(x), m.p_z()
            z = stop(q.sample(seed=key, sample_shape=(k,)))                        # [k, D]
            log_q = q.log_prob(z)                                                  # [k]
            log_px_z = m.log_likelihood(x, z)                                      # [k]
            log_w = p.log_prob(z) + log_px_z - log_q                               # [k]
            bound = jax.nn.logsumexp(log_w) - math.log(k)
            lw = stop(log_w)
            others = (jnp.sum(lw) - lw) / (k - 1)                                  # mean_{i != j} log w_i   [k]
            replaced = jnp.where(jnp.eye(k, dtype=bool), others[:, None], lw[None, :])   # row j: log w, j-th replaced
            loo = jax.nn.logsumexp(replaced, axis=1) - math.log(k)                 # L^_{-j}   [k]
            surrogate = bound + jnp.sum(stop(stop(bound) - loo) * log_q)
            w = jax.nn.softmax(lw)
            return {"iwae": bound, "elbo": jnp.mean(log_w), "reconstruction": jnp.mean(log_px_z),
                    "kl": q.kl_divergence(p), "ess": 1.0 / jnp.sum(w**2),
                    "objective": with_gradient_of(bound, surrogate)}

        return model.apply(variables, method=terms)

    def for_validation(self, validation_num_samples: int) -> "VIMCO":
        """The training bound itself, IWAE_k with the training k."""
        del validation_num_samples
        return self


# --- registered objectives -------------------------------------------------------------------------
#
# Trait ``discrete_gradients``: the objective's gradient does not pass through z, so it trains a discrete
# q(z | x) (the discrete posteriors' check asks for it).


def _needs_discrete_posterior(spec: RunSpec) -> None:
    name = spec.objective.name
    if not spec.inference.posterior.trait("discrete"):
        raise ConfigError(f"objective {name!r} trains a discrete q(z|x): set config.inference.posterior=categorical "
                          "(or bernoulli) and config.model.prior to match")


def _check_discrete_elbo(settings: DiscreteELBOSettings, spec: RunSpec) -> None:
    _needs_discrete_posterior(spec)
    if settings.estimator == "reinforce" and settings.baseline == "loo" and settings.num_samples < 2:
        raise ConfigError("config.objective.baseline=loo takes each sample's baseline from the others: set "
                          "config.objective.num_samples >= 2 (or baseline=learned)")
    if settings.estimator == "enumerate":
        n = discrete_lib.support_size(spec)
        if n > settings.max_configurations:
            raise ConfigError(f"config.objective.estimator=enumerate sums over all {discrete_lib.size_text(n)} "
                              f"configurations of z, more than config.objective.max_configurations="
                              f"{settings.max_configurations}; choose another estimator or a smaller latent space")


def _check_vimco(settings: VIMCOSettings, spec: RunSpec) -> None:
    _needs_discrete_posterior(spec)


@OBJECTIVES.register("discrete_elbo", settings=DiscreteELBOSettings, check=_check_discrete_elbo,
                     traits={"discrete_gradients": True})
def discrete_elbo(settings: DiscreteELBOSettings, *, steps_per_epoch: int = 1) -> DiscreteELBO:
    """L(x) = E_q[log p(x|z)] - KL(q || p) for a discrete z, gradient by Gumbel-softmax, straight-through, REINFORCE or enumeration."""
    del steps_per_epoch
    cls = LearnedBaselineELBO if settings.estimator == "reinforce" and settings.baseline == "learned" else DiscreteELBO
    return cls(settings)


@OBJECTIVES.register("vimco", settings=VIMCOSettings, check=_check_vimco, traits={"discrete_gradients": True})
def vimco(settings: VIMCOSettings, *, steps_per_epoch: int = 1) -> VIMCO:
    """L_k(x) = E log 1/k sum_j p(x, z_j) / q(z_j | x) for a discrete z, with VIMCO's leave-one-out gradient (Mnih & Rezende 2016)."""
    del steps_per_epoch
    return VIMCO(settings)
