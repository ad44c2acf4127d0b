"""Annealed importance sampling with HMC (Neal 2001) and bidirectional Monte Carlo (Grosse et al. 2015).

Like importance sampling (:mod:`vaegen.estimators.importance`) they take the model as two functions
of one observation, ``log_joint(x, z)`` and ``initial(x)`` (pi_0: the prior p(z), or q(z | x)),
and run per example through :func:`vaegen.sharding.map_examples` (example ``i`` keyed by
``fold_in(key, i)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.errors import ConfigError, UndefinedEstimateError
from vaegen.estimators.importance import Estimates, LogJoint, Proposal, is_point_mass
from vaegen.spec.eval import SCHEDULES, AISSettings



def annealing_schedule(num_steps: int, kind: str = "sigmoid", radius: float = 4.0) -> np.ndarray:
    """Inverse temperatures 0 = beta_0 < beta_1 < ... < beta_T = 1, ``[T + 1]`` float64.

    ``linear``: beta_t = t / T.  ``sigmoid`` (Grosse et al. 2015; Wu et al. 2017): beta_t =
    (s(t) - s(0)) / (s(T) - s(0)), s(t) = sigmoid(radius (2 t / T - 1)): more distributions at
    both ends, where the intermediate distributions change fastest.
    """
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-radius * (2.0 * t - 1.0)))
        return (s - s[0]) / (s[-1] - s[0])
    raise ConfigError(f"unknown annealing schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclasses.dataclass(frozen=True)
class AIS:
    """Annealed importance sampling (Neal 2001) with HMC transitions.

    The intermediate distributions interpolate geometrically from pi_0 (the prior p(z), or
    q(z | x)) to the unnormalised posterior p(x, z):

        f_t(z) = pi_0(z)^(1 - beta_t) p(x, z)^beta_t,   beta_0 = 0 < ... < beta_T = 1.

    Each of ``num_chains`` chains starts at z_0 ~ pi_0 and accumulates
    log w = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log pi_0(z_{t-1})], moving z by one HMC
    transition (``num_leapfrog`` leapfrog steps, fresh momentum, Metropolis correction) that
    leaves f_t invariant after each step.  log (1/M) sum_m w_m is a stochastic lower bound on
    log p(x) (E[w] = p(x)).  The reverse direction (:meth:`reverse`) runs the same chain from an
    exact posterior sample down to pi_0 and estimates 1 / p(x): a stochastic upper bound.

    Step sizes are per chain; with ``adapt_step_size`` each is multiplied by (1 + adapt_rate)
    when the chain's running mean acceptance probability exceeds ``target_accept`` and by
    (1 - adapt_rate) otherwise, within [min_step_size, max_step_size] (the scheme of Wu et al.
    2017).  The HMC kernels are written here rather than taken from a sampling library so that
    log pi_0, log p(x, z) and their gradients are computed once per leapfrog step and reused
    across temperatures.

    Attributes:
      settings: :class:`vaegen.spec.eval.AISSettings` (the ``eval.ais`` section): T = ``num_steps``,
        M = ``num_chains``, the leapfrog steps, the step-size adaptation, the schedule
        (:func:`annealing_schedule`) and ``start`` (where evaluation starts the chains: pi_0 is the
        ``initial`` function the methods are given; :func:`vaegen.evaluate` builds it from it).
    """

    settings: AISSettings = AISSettings()

    def betas(self) -> np.ndarray:
        """The schedule beta_0..beta_T, ``[T + 1]``."""
        s = self.settings
        return annealing_schedule(s.num_steps, s.schedule, s.sigmoid_radius)

    def _batch_size(self, batch_size):
        return int(batch_size or max(1, sharding_lib.default_rows() // self.settings.num_chains))

    def forward(self, log_joint: LogJoint, initial: Proposal, xs: jax.Array, key: jax.Array, *,
                batch_size: int | None = None, devices=None, progress: bool = False) -> Estimates:
        """Forward AIS from pi_0 = ``initial(x)`` to p(z | x) for every example.

        Returns ``[N]`` arrays: ``log_px`` (log mean of the chains' weights, nats; a stochastic
        lower bound on log p(x)), ``acceptance`` (mean HMC acceptance probability),
        ``step_size`` (mean final step size), ``ess`` (effective sample size of the chains'
        weights), and ``log_w [N, M]``.
        """
        fn = jax.tree_util.Partial(_AISChain(self, reverse=False), (log_joint, initial))
        return sharding_lib.map_examples(fn, jnp.asarray(xs), key, batch_size=self._batch_size(batch_size),
                            devices=devices, progress=progress, desc=f"AIS T={self.settings.num_steps}")

    def reverse(self, log_joint: LogJoint, initial: Proposal, xs: jax.Array, zs: jax.Array, key: jax.Array, *,
                batch_size: int | None = None, devices=None, progress: bool = False) -> Estimates:
        """Reverse AIS from exact posterior samples ``zs [N, D]`` (z_n ~ p(z | x_n), e.g. the latents
        that simulated ``xs``) down to pi_0.

        Returns the same fields as :meth:`forward`; ``log_px`` = -log mean of the reverse
        weights (which estimate 1 / p(x)) is a stochastic *upper* bound on log p(x).
        """
        fn = jax.tree_util.Partial(_AISChain(self, reverse=True), (log_joint, initial))
        return sharding_lib.map_examples(fn, (jnp.asarray(xs), jnp.asarray(zs)), key, batch_size=self._batch_size(batch_size),
                            devices=devices, progress=progress, desc=f"reverse AIS T={self.settings.num_steps}")


@dataclasses.dataclass(frozen=True)
class _AISChain:
    """Per-example AIS (see :class:`AIS`); ``reverse`` runs from an exact posterior sample."""

    ais: AIS
    reverse: bool

    def __call__(self, fns, data, key):
        s = self.ais.settings
        log_joint, initial = fns
        x, z_exact = data if self.reverse else (data, None)
        pi0 = initial(x)
        if is_point_mass(pi0):
            raise UndefinedEstimateError(
                "AIS cannot start from a point mass q(z|x) = delta(z - f(x)) (an autoencoder's "
                "encoder has no density); start from the prior (--ais-start prior)")
        M = s.num_chains

        def potential(z):
            """log pi_0, log p(x, z) and their gradients at z [M, D]: ([M], [M], [M, D], [M, D])."""
            l0, vjp0 = jax.vjp(pi0.log_prob, z)
            lj, vjpj = jax.vjp(lambda z: log_joint(x, z), z)
            return (z, l0, lj, vjp0(jnp.ones_like(l0))[0], vjpj(jnp.ones_like(lj))[0])

        def log_f(state, beta):                                   # log f_beta(z)  [M]
            return (1.0 - beta) * state[1] + beta * state[2]

        def grad_log_f(state, beta):                              # [M, D]
            return (1.0 - beta) * state[3] + beta * state[4]

        def hmc(state, beta, eps, key):
            """One HMC transition leaving f_beta invariant; returns (state, acceptance prob [M])."""
            k_mom, k_acc = jax.random.split(key)
            p0 = jax.random.normal(k_mom, state[0].shape)          # [M, D]
            e = eps[:, None]

            def leapfrog(carry, _):
                st, p = carry
                p = p + 0.5 * e * grad_log_f(st, beta)
                st = potential(st[0] + e * p)
                p = p + 0.5 * e * grad_log_f(st, beta)
                return (st, p), None

            (new, p1), _ = jax.lax.scan(leapfrog, (state, p0), None, length=s.num_leapfrog)
            log_ratio = (log_f(new, beta) - 0.5 * jnp.sum(p1**2, -1)) - (log_f(state, beta) - 0.5 * jnp.sum(p0**2, -1))
            log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
            accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))     # [M]
            accept = jax.random.uniform(k_acc, (M,)) < accept_prob
            state = jax.tree_util.tree_map(
                lambda a, b: jnp.where(accept.reshape((M,) + (1,) * (a.ndim - 1)), a, b), new, state)
            return state, accept_prob

        betas = jnp.asarray(self.ais.betas(), jnp.float32)                # [T + 1]
        if self.reverse:
            betas = betas[::-1]
        key_init, key_run = jax.random.split(key)
        if self.reverse:
            z0 = jnp.broadcast_to(z_exact, (M,) + z_exact.shape)   # every chain starts at the exact sample
        else:
            z0 = pi0.sample(seed=key_init, sample_shape=(M,))      # [M, D]

        def step(carry, t):
            state, eps, log_w, acc_sum = carry
            log_w = log_w + (betas[t] - betas[t - 1]) * (state[2] - state[1])   # at z_{t-1}
            state, acc = hmc(state, betas[t], eps, jax.random.fold_in(key_run, t))
            acc_sum = acc_sum + acc
            if s.adapt_step_size:
                up = acc_sum / t.astype(jnp.float32) > s.target_accept
                eps = jnp.clip(eps * jnp.where(up, 1.0 + s.adapt_rate, 1.0 - s.adapt_rate),
                               s.min_step_size, s.max_step_size)
            return (state, eps, log_w, acc_sum), None

        init = (potential(z0), jnp.full((M,), s.step_size, jnp.float32), jnp.zeros((M,), jnp.float32),
                jnp.zeros((M,), jnp.float32))
        (state, eps, log_w, acc_sum), _ = jax.lax.scan(step, init, jnp.arange(1, s.num_steps + 1))
        log_mean_w = jax.nn.logsumexp(log_w) - math.log(M)
        return {
            "log_px": -log_mean_w if self.reverse else log_mean_w,
            "acceptance": jnp.mean(acc_sum) / s.num_steps,
            "step_size": jnp.mean(eps),
            "ess": jnp.exp(2.0 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2.0 * log_w)),
            "log_w": log_w,
        }


def bdmc(ais: AIS, log_joint: LogJoint, initial: Proposal, sample_joint: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]],
         key: jax.Array, *, num_examples: int, batch_size: int | None = None, devices=None,
         progress: bool = False) -> Estimates:
    """Bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017).

    Simulates ``(z_n, x_n) ~ p(z) p(x | z)``; z_n is then an exact sample of p(z | x_n), so
    reverse AIS can start from it.  Forward AIS gives a stochastic lower bound and reverse AIS a
    stochastic upper bound on each log p(x_n): their gap bounds the error of forward AIS with
    these settings, on data like the simulated data.

    Args:
      ais: the :class:`AIS` run in both directions.
      sample_joint: ``sample_joint(key, n) -> (z [n, D], x [n, *event])`` (:func:`vaegen.estimators.importance.model_sampler`).
      key: ``fold_in(key, 0)`` simulates, ``fold_in(key, 1)`` runs forward, ``fold_in(key, 2)`` reverse.
      num_examples: how many (x, z) to simulate.
    Returns:
      ``[N]`` arrays (nats): ``lower``, ``upper``, ``gap`` = upper - lower, the forward and
      reverse ``acceptance``; and the simulated ``xs [N, *event]`` and ``zs [N, D]``.
    """
    if int(num_examples) < 1:
        raise ConfigError(f"BDMC needs at least one simulated example, got {num_examples}")
    zs, xs = sample_joint(jax.random.fold_in(key, 0), int(num_examples))
    kw = dict(batch_size=batch_size, devices=devices, progress=progress)
    fwd = ais.forward(log_joint, initial, xs, jax.random.fold_in(key, 1), **kw)
    rev = ais.reverse(log_joint, initial, xs, zs, jax.random.fold_in(key, 2), **kw)
    return {
        "lower": fwd["log_px"],
        "upper": rev["log_px"],
        "gap": rev["log_px"] - fwd["log_px"],
        "forward_acceptance": fwd["acceptance"],
        "reverse_acceptance": rev["acceptance"],
        "xs": xs,
        "zs": zs,
    }
