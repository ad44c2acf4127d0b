"""Gradient estimators of the bounds: what is differentiated, the bound's value unchanged.

Every bound of :mod:`vaegen.objectives.bounds` and :mod:`vaegen.objectives.multisample` is a
function of the log-weights of reparameterized samples::

    log w_i = log p(x, z_i) - log q(z_i | x),   z_i = T(eps_i; phi) ~ q(z | x),   eps_i ~ r(eps)

with theta the generative model's parameters (``params/prior``, ``params/likelihood``) and phi the
inference network's (``params/posterior``).  The log-weight depends on phi twice: along the *path*
z_i = T(eps_i; phi), and directly through q's density at fixed z (the *score*,
d log q(z; phi) / d phi).  The estimator says which surrogate the trainer differentiates; the
surrogate's *value* is always the bound's, so every reported number is the true bound in nats.

=========  =====================================================================================
estimator  gradient with respect to phi (theta's is the plain reparameterized gradient in all)
=========  =====================================================================================
reparam    d/dphi of the bound's estimate through the path and the score (the default; the bound's
           code path of before estimators existed, bitwise).
stl        "sticking the landing" (Roeder et al. 2017): log q(z_i | x) is evaluated with
           stop-gradient parameters, so the gradient flows along the path only; the score term is
           dropped.
dreg       doubly reparameterized (Tucker et al. 2019): for L_k = E log 1/k sum_i w_i,
           sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi),  w~_i = w_i / sum_j w_j,
           computed with stop-gradient parameters in log q (as stl) and one extra factor w~_i on
           the cotangent that reaches z_i (:func:`path_reweighted`, :func:`scale_cotangent`).
=========  =====================================================================================

What is unbiased for what (E over eps):

* reparam is unbiased for the gradient of every bound, in theta and in phi.
* stl is unbiased for the ELBO's phi-gradient (E_q[d log q(z; phi)/d phi] = 0 at any fixed phi;
  the KL's weight beta does not matter), and for k = 1 it has zero variance when q(z | x) is the
  exact posterior (then log w is constant in z).  For IWAE_k with k > 1 it is **biased**: the
  dropped score term is weighted by w~_i, which depends on z_i, and no longer averages to zero
  (Tucker et al. 2019, section 4).  Its theta-gradient is IWAE's, unbiased.
* dreg is unbiased for the gradient of IWAE_k in phi (the score term is rewritten by the
  reparameterization identity E_z[f(z) d log q(z)/dphi] = E_eps[df/dz dz/dphi], not dropped) and
  reduces to stl at k = 1.  Its theta-gradient is IWAE's own, sum_i w~_i d log w_i / d theta.
  For a linear combination of such bounds (CIWAE, MIWAE's groups) the same identity gives the
  per-sample factor of :func:`dreg_scale`.

The estimators need a q(z | x) whose samples are a differentiable function of phi and noise (a
*reparameterized* sampler) and that has a density; a posterior that has not declares the trait
``reparameterized: False`` and the config refuses stl and dreg for it.

Gradients of the VampPrior's p(z) = 1/K sum_k q(z | u_k) with respect to the encoder's weights
are part of p's: they are kept as in reparam (only the density of the proposal q(z | x) is
stopped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.registry import Settings
from vaegen.spec.run import RunSpec

Terms = dict[str, jax.Array]

ESTIMATORS = ("reparam", "stl", "dreg")
"""The gradient estimators a bound's ``estimator`` setting chooses from."""

ESTIMATOR_DOC = ("the gradient estimator (the bound's value is the same): reparam (plain reparameterized) | stl "
                 "(sticking the landing, Roeder et al. 2017: log q with stop-gradient parameters) | dreg (doubly "
                 "reparameterized, Tucker et al. 2019)")


def elbo_estimator_problem(estimator: str, analytic_kl: bool, free_bits: float,
                           key: Callable[[str], str] = lambda name: f"config.objective.{name}") -> str | None:
    """Why the ELBO cannot take ``estimator`` with these settings (None if it can).

    stl differentiates the Monte Carlo ELBO log p(x, z) - log q(z | x) along z's path only; a
    closed-form KL has no log q(z) to stop (its gradient is exact, and replacing it by the path
    derivative of a Monte Carlo KL is what stl *is*), and free bits replace the KL of the training
    objective by a closed form.  DReG of one sample is stl."""
    if estimator == "dreg":
        return ("for the ELBO (one importance sample per term), DReG is STL: use estimator=stl, or the IWAE "
                "bound (objective=iwae) for DReG")
    if estimator == "stl" and analytic_kl:
        return (f"STL differentiates the Monte Carlo KL log q(z|x) - log p(z) along z's path; set "
                f"{key('analytic_kl')}=false")
    if estimator == "stl" and free_bits > 0:
        return (f"free bits replace the KL of the training objective by its closed form; set {key('free_bits')}=0 "
                "for stl")
    return None


def check_estimator_posterior(settings: Settings, spec: RunSpec) -> None:
    """Raises ConfigError if ``settings.estimator`` (stl, dreg) differentiates through the samples of
    a posterior that has no reparameterized sampler (its ``reparameterized`` trait).  Objectives
    without the setting pass."""
    estimator = getattr(settings, "estimator", "reparam")
    posterior = spec.inference.posterior
    if estimator != "reparam" and not posterior.trait("reparameterized"):
        raise ConfigError(f"config.objective.estimator={estimator!r} differentiates through the samples of q(z|x), "
                          f"and the posterior {posterior.name!r} has no reparameterized sampler; use "
                          "estimator=reparam or another posterior")


# --- stop-gradient on the parameter subtrees ---------------------------------------------------

def stop_posterior(variables: Any) -> Any:
    """``variables`` with q's parameters (``params/posterior``) gradient-stopped."""
    params = dict(variables["params"])
    params["posterior"] = jax.lax.stop_gradient(params["posterior"])
    return {**variables, "params": params}


def stop_generative(variables: Any) -> Any:
    """``variables`` with every parameter but q's (``params/prior``, ``params/likelihood``, ...)
    gradient-stopped: what the encoder's own target of PIWAE sees."""
    params = {k: (v if k == "posterior" else jax.lax.stop_gradient(v)) for k, v in variables["params"].items()}
    return {**variables, "params": params}


# --- the doubly reparameterized cotangent ------------------------------------------------------

def self_normalized(log_w: jax.Array) -> jax.Array:
    """w~_i = w_i / sum_j w_j over the last axis, ``[..., n]``."""
    return jax.nn.softmax(log_w, axis=-1)


def scale_cotangent(z: jax.Array, s: jax.Array) -> jax.Array:
    """``z`` itself, whose cotangent is multiplied by ``s`` on the way back: ``z [n, D]``,
    ``s [n]`` (a constant: no gradient reaches it)."""
    return _scale_cotangent(z, jax.lax.stop_gradient(s))


@jax.custom_vjp
def _scale_cotangent(z, s):
    return z


def _scale_cotangent_forward(z, s):
    return z, s


def _scale_cotangent_backward(s, cotangent):
    return cotangent * s.reshape(s.shape + (1,) * (cotangent.ndim - s.ndim)), jnp.zeros_like(s)


_scale_cotangent.defvjp(_scale_cotangent_forward, _scale_cotangent_backward)


def path_reweighted(fn: Callable[[jax.Array, Any], tuple[jax.Array, Any]], z: jax.Array, variables: Any,
                    scale: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, Any]:
    """``fn(z, variables)``, whose backward pass multiplies the cotangent that reaches ``z_i`` by
    ``scale(log_w)_i`` (a constant for the gradient).

    Args:
      fn: ``(z [n, D], variables) -> (log_w [n], extras)``; each log_w_i depends on z_i alone.
      z: the samples ``[n, D]``, a differentiable function of phi (the path).
      variables: the model's variables (theta's gradient passes unchanged).
      scale: ``log_w [n] -> [n]``, evaluated at the log-weights of the forward pass.
    Returns:
      ``fn(z, variables)``; differentiating ``sum_i c_i log_w_i`` gives theta the cotangent
      sum_i c_i d log w_i / d theta and z_i the cotangent c_i scale_i d log w_i / d z_i: with
      c = w~ (the IWAE bound) and scale = w~, the DReG estimator.  ``extras`` are returned
      gradient-stopped (for reporting).

    The factor is computed from ``fn`` at gradient-stopped inputs and applied by
    :func:`scale_cotangent` to the z that ``fn`` then sees; both calls of ``fn`` are the same
    computation on the same arrays, which XLA evaluates once, so the cost is that of one forward
    and one backward pass (the theta-gradient stays one contraction over the batch).
    """
    sg = jax.lax.stop_gradient
    log_w0, _ = fn(sg(z), sg(variables))
    log_w, extras = fn(scale_cotangent(z, scale(sg(log_w0))), variables)
    return log_w, sg(extras)


def dreg_scale(log_w: jax.Array, *, num_groups: int = 1, beta: float = 0.0) -> jax.Array:
    """The factor DReG puts on the cotangent of z_i, ``[n]`` for ``log_w [n]``, for the bound

        F = beta mean_i log w_i + (1 - beta) 1/M sum_m log 1/k sum_{i in group m} w_i

    (n = M k samples in M groups of k; IWAE: M = 1, beta = 0; MIWAE: M groups; CIWAE: beta).
    Rewriting the score term of dF/dphi by the reparameterization identity gives z_i the weight
    a_i = g_i - dg_i/d log w_i with g_i = dF/d log w_i (Tucker et al. 2019's identity, term by
    term), i.e. a_i = beta / n + (1 - beta) w~_i^2 / M (w~ normalized within i's group), while
    F's own cotangent is g_i = beta / n + (1 - beta) w~_i / M: the factor is a_i / g_i.
    """
    n = log_w.shape[-1]
    w = self_normalized(log_w.reshape(log_w.shape[:-1] + (num_groups, n // num_groups))).reshape(log_w.shape)
    if beta == 0.0:
        return w
    a = beta / n + (1 - beta) * w**2 / num_groups
    g = beta / n + (1 - beta) * w / num_groups
    return a / g


# --- the proposal, and log-weights with an estimator ------------------------------------------

def _draw(m: Any, x: jax.Array, key: jax.Array, n: int, with_log_prob: bool):
    """z [n, D] ~ q(z | x) inside the bound model (and log q(z) [n], the analytic KL or None)."""
    q = m.q_z_given_x(x)
    if with_log_prob:
        z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(n,))
    else:
        z, log_q = q.sample(seed=key, sample_shape=(n,)), None
    return z, log_q, _analytic_kl(q, m.p_z())


def _analytic_kl(q: distrax.Distribution, p: distrax.Distribution) -> jax.Array | None:
    """KL(q || p) where distrax has it in closed form, else None (as bounds.kl_divergence)."""
    try:
        return q.kl_divergence(p)
    except (NotImplementedError, TypeError, ValueError):
        return None


def _log_q(m: Any, x: jax.Array, z: jax.Array) -> jax.Array:
    return m.q_z_given_x(x).log_prob(z)


def _log_p_parts(m: Any, x: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(z) [n], log p(x | z) [n]) inside the bound model."""
    return m.p_z().log_prob(z), m.log_likelihood(x, z)


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A q(z) to draw the importance samples from in place of the model's amortized q(z | x): a
    per-example q(z; phi) built from arrays (e.g. refined by SVI inside the training step).

    Attributes:
      q: the distribution, a differentiable function of its parameters (event ``[D]``).
      q_stopped: the same distribution built from stop-gradient parameters (stl, dreg).
    """

    q: distrax.Distribution
    q_stopped: distrax.Distribution | None = None


def log_weights(model: Any, variables: Any, x: jax.Array, key: jax.Array, num_samples: int,
                estimator: str = "reparam", *, scale: Callable[[jax.Array], jax.Array] = self_normalized,
                proposal: Proposal | None = None) -> Terms:
    """n = ``num_samples`` reparameterized samples z_i ~ q and their log-weights, for one example.

    Args:
      model: the model.
      variables: its variables.
      x: one observation ``[*event]``.
      key: the samples' key (the same z for every estimator).
      estimator: ``reparam`` | ``stl`` | ``dreg`` (see the module docstring).
      scale: dreg only: the factor on z_i's cotangent, ``log_w [n] -> [n]`` (:func:`dreg_scale`;
        the default w~ is IWAE's).
      proposal: the q to sample; default the model's amortized q(z | x).
    Returns:
      ``log_w [n]`` (nats; the value is the same for every estimator, its gradient is the
      estimator's), and for reporting: ``log_px_z [n]`` log p(x | z_i), ``log_pz [n]`` log p(z_i),
      ``log_q [n]`` log q(z_i), ``kl []`` KL(q || p(z)) (closed form where distrax has one,
      else mean_i[log q(z_i) - log p(z_i)]).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    n = int(num_samples)
    reparam = estimator == "reparam"
    if proposal is None:
        z, log_q, kl = model.apply(variables, x, key, n, reparam, method=_draw)
        stopped_log_q = lambda v, z: model.apply(stop_posterior(v), x, z, method=_log_q)
    else:
        q = proposal.q
        if reparam:
            z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(n,))
        else:
            z, log_q = q.sample(seed=key, sample_shape=(n,)), None
        kl = model.apply(variables, method=lambda m: _analytic_kl(q, m.p_z()))
        q_stopped = proposal.q_stopped
        if not reparam and q_stopped is None:
            raise ValueError(f"estimator {estimator!r} needs the proposal's q_stopped")
        stopped_log_q = lambda v, z: q_stopped.log_prob(z)

    if reparam:
        log_pz, log_px_z = model.apply(variables, x, z, method=_log_p_parts)
        log_w = log_pz + log_px_z - log_q
    else:
        def parts(z, v):
            log_pz, log_px_z = model.apply(v, x, z, method=_log_p_parts)
            log_q = stopped_log_q(v, z)
            return log_pz + log_px_z - log_q, (log_pz, log_px_z, log_q)

        if estimator == "dreg":
            log_w, (log_pz, log_px_z, log_q) = path_reweighted(parts, z, variables, scale)
        else:
            log_w, (log_pz, log_px_z, log_q) = parts(z, variables)
    if kl is None:
        kl = jnp.mean(log_q - log_pz)
    return {"log_w": log_w, "log_px_z": log_px_z, "log_pz": log_pz, "log_q": log_q, "kl": kl}


def importance_weighted(model: Any, variables: Any, x: jax.Array, key: jax.Array, num_samples: int,
                        estimator: str, *, proposal: Proposal | None = None) -> Terms:
    """The terms of :class:`vaegen.objectives.bounds.IWAE` for one example, with the gradient of
    ``estimator``: ``iwae`` = log 1/k sum_i w_i, ``elbo`` = mean_i log w_i, ``reconstruction`` =
    mean_i log p(x | z_i), ``kl`` (closed form where available), ``ess`` = 1 / sum_i w~_i^2 and
    ``objective`` = iwae (nats; the same values as the reparameterized bound's, up to rounding)."""
    lw = log_weights(model, variables, x, key, num_samples, estimator, proposal=proposal)
    log_w = lw["log_w"]
    iwae = jax.nn.logsumexp(log_w) - math.log(num_samples)
    w = self_normalized(jax.lax.stop_gradient(log_w))
    return {"iwae": iwae, "elbo": jnp.mean(log_w), "reconstruction": jnp.mean(lw["log_px_z"]), "kl": lw["kl"],
            "ess": 1.0 / jnp.sum(w**2), "objective": iwae}
