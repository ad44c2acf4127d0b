"""Objectives: bounds on log p(x) and the autoencoder's reconstruction objective.

Every objective is a frozen dataclass called on **one** observation::

    terms = objective(model, variables, x, key, step)     # x [*event], key: PRNG key

and returns a dict of scalars in nats, each term separately.  ``terms["objective"]`` is the
quantity the trainer maximises; the other entries are the bound and its parts.  Batches are
handled by ``jax.vmap`` (:func:`batched`), with one key per example, so results do not depend
on how examples are grouped into batches.

=================  =====================================================================
``ELBO``           L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  (beta and KL warm-up optional)
``IWAE``           L_k(x) = E[log 1/k sum_i p(x, z_i) / q(z_i | x)],  z_i ~ q(z | x)
``Autoencoder``    log p(x | z = f(x))  [- lambda/2 ||f(x)||^2, the RAE code penalty]
=================  =====================================================================

For any q: ELBO <= IWAE_k <= IWAE_{k+1} <= log p(x).  For a point-mass q the ELBO does not
exist (the KL to any density is +inf; see :mod:`vaegen.posteriors`): ``ELBO`` and ``IWAE``
refuse a point mass and :class:`Autoencoder` is what is left.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import optax

from vaegen.model.latent import LatentVariableModel
from vaegen.errors import UndefinedObjectiveError

Terms = dict[str, jax.Array]


def kl_divergence(q: distrax.Distribution, p: distrax.Distribution, z: jax.Array) -> tuple[jax.Array, bool]:
    """KL(q || p) in nats: analytic where distrax has it, else the Monte Carlo estimate
    mean_s[log q(z_s) - log p(z_s)] over the samples ``z [S, D]`` drawn from q.

    Returns ``(kl [], analytic: bool)``.
    """
    try:
        return q.kl_divergence(p), True
    except (NotImplementedError, TypeError, ValueError):
        return jnp.mean(q.log_prob(z) - p.log_prob(z)), False


def _require_density(model: LatentVariableModel, name: str) -> None:
    if model.posterior is not None and _is_point_mass(model):
        raise UndefinedObjectiveError(
            f"the {name} is undefined for a point-mass posterior q(z|x) = delta(z - f(x)): its "
            "KL to p(z) is +inf (a point mass has differential entropy -inf). Train an autoencoder "
            "with --config.objective.name=ae, or use a posterior with a density "
            "(--config.inference.posterior=diagonal_gaussian)"
        )
    if model.prior is None:
        raise UndefinedObjectiveError(
            f"the {name} needs a prior p(z), and this model has none (--config.model.prior=none); "
            "set --config.model.prior=standard_normal"
        )


def _is_point_mass(model: LatentVariableModel) -> bool:
    from vaegen.blocks.posteriors import is_point_mass

    return is_point_mass(model.posterior)


def kl_weight(beta: float, warmup_steps: int, step: jax.Array) -> jax.Array:
    """beta * min(1, step / warmup_steps): the KL warm-up schedule (beta from the first step if
    ``warmup_steps == 0``)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return optax.linear_schedule(0.0, beta, warmup_steps)(step)


@dataclasses.dataclass(frozen=True)
class ELBO:
    """The evidence lower bound, with an optional weight on its KL term.

    L(x) = E_{q(z|x)}[log p(x | z)] - KL(q(z|x) || p(z)) <= log p(x)

    Attributes:
      num_samples: S, Monte Carlo samples of z ~ q(z|x) for the reconstruction term.
      analytic_kl: use the closed-form KL where distrax has one (else a Monte Carlo estimate
        from the same S samples).
      beta: weight of the KL in the *training* objective (beta-VAE); the reported ``elbo`` is
        always the true bound (beta = 1).
      kl_warmup_steps: the KL weight rises linearly from 0 to ``beta`` over this many steps.

    Terms (nats, one example): ``reconstruction`` E_q[log p(x|z)], ``kl`` KL(q || p),
    ``elbo`` = reconstruction - kl, ``kl_weight``, ``objective`` = reconstruction - w * kl.
    """

    num_samples: int = 1
    analytic_kl: bool = True
    beta: float = 1.0
    kl_warmup_steps: int = 0
    bound_name = "elbo"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        _require_density(model, "ELBO")

        def terms(m: LatentVariableModel) -> Terms:
            q = m.q_z_given_x(x)                                   # q(z | x), event [D]
            if self.num_samples == 1:
                # The same draw as sample_shape=(1,), without the sample axis: vmapped over a
                # batch, the decoder is then one plain matrix product per layer (with the axis,
                # XLA transposes its activations for the weight gradients: ~25% slower on CPU).
                z1 = q.sample(seed=key)                            # [D]
                log_px_z = m.log_likelihood(x, z1)[None]           # log p(x | z)     [1]
                z = z1[None]                                       # [1, D]
            else:
                z = q.sample(seed=key, sample_shape=(self.num_samples,))  # [S, D]
                log_px_z = m.log_likelihood(x, z)                  # log p(x | z_s)   [S]
            p = m.p_z()                                            # p(z)
            if self.analytic_kl:
                kl, _ = kl_divergence(q, p, z)                     # []
            else:
                kl = jnp.mean(q.log_prob(z) - p.log_prob(z))       # []
            reconstruction = jnp.mean(log_px_z)                    # []
            w = kl_weight(self.beta, self.kl_warmup_steps, jnp.asarray(step))
            return {
                "reconstruction": reconstruction,
                "kl": kl,
                "elbo": reconstruction - kl,
                "kl_weight": w,
                "objective": reconstruction - w * kl,
            }

        return model.apply(variables, method=terms)


@dataclasses.dataclass(frozen=True)
class IWAE:
    """The importance-weighted bound of Burda et al. (2016).

    L_k(x) = E_{z_1..k ~ q(z|x)}[ log (1/k) sum_i w_i ],  w_i = p(x, z_i) / q(z_i | x)

    L_1 is the ELBO; L_k increases with k and tends to log p(x).

    Terms (nats, one example): ``iwae`` (the k-sample bound estimate), ``elbo`` (mean of the
    log-weights: an unbiased ELBO estimate from the same samples), ``reconstruction``
    (mean log p(x|z_i)), ``kl`` (analytic KL(q || p) if available, else its estimate),
    ``ess`` (effective sample size of the normalised weights), ``objective`` = iwae.
    """

    num_samples: int = 5
    bound_name = "iwae"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        _require_density(model, "IWAE bound")
        del step
        k = self.num_samples

        def terms(m: LatentVariableModel) -> Terms:
            q = m.q_z_given_x(x)
            z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(k,))  # [k, D], [k]
            p = m.p_z()
            log_pz = p.log_prob(z)                                 # [k]
            log_px_z = m.log_likelihood(x, z)                      # [k]
            log_w = log_pz + log_px_z - log_q                      # [k]
            iwae = jax.nn.logsumexp(log_w) - math.log(k)
            kl, _ = kl_divergence(q, p, z)
            w = jax.nn.softmax(log_w)
            return {
                "iwae": iwae,
                "elbo": jnp.mean(log_w),
                "reconstruction": jnp.mean(log_px_z),
                "kl": kl,
                "ess": 1.0 / jnp.sum(w**2),
                "objective": iwae,
            }

        return model.apply(variables, method=terms)


@dataclasses.dataclass(frozen=True)
class Autoencoder:
    """The autoencoder's objective: what is left of the ELBO for q(z|x) = delta(z - f(x)).

    objective(x) = log p(x | z = f(x)) - (code_penalty / 2) ||f(x)||^2

    With ``code_penalty > 0`` this is the RAE's penalty on the codes (Ghosh et al. 2020).  This
    is not a bound on any log p(x): there is no p(z).

    Terms (nats, one example): ``reconstruction`` log p(x | z = f(x)), ``code_norm_sq``
    ||f(x)||^2, ``objective``.
    """

    code_penalty: float = 0.0
    bound_name = "reconstruction"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        del key, step

        def terms(m: LatentVariableModel) -> Terms:
            z = m.q_z_given_x(x).mean()                            # f(x)   [D]
            reconstruction = m.log_likelihood(x, z)                # log p(x | z = f(x))   []
            code_norm_sq = jnp.sum(z**2)
            return {
                "reconstruction": reconstruction,
                "code_norm_sq": code_norm_sq,
                "objective": reconstruction - 0.5 * self.code_penalty * code_norm_sq,
            }

        return model.apply(variables, method=terms)


Objective = ELBO | IWAE | Autoencoder
OBJECTIVES = {"elbo": ELBO, "iwae": IWAE, "ae": Autoencoder}


def build_objective(cfg: Any, *, steps_per_epoch: int = 1) -> Objective:
    """Builds the training objective from ``config.objective``."""
    name = cfg.name
    if name == "elbo":
        return ELBO(
            num_samples=int(cfg.num_samples),
            analytic_kl=bool(cfg.analytic_kl),
            beta=float(cfg.beta),
            kl_warmup_steps=int(round(float(cfg.kl_warmup_epochs) * steps_per_epoch)),
        )
    if name == "iwae":
        return IWAE(num_samples=int(cfg.num_samples))
    if name == "ae":
        return Autoencoder(code_penalty=float(cfg.code_penalty))
    if name == "rae":  # regularised autoencoder (Ghosh et al. 2020)
        from vaegen.objectives import rae as rae

        return rae.build_objective(cfg)
    if name == "dae":  # denoising autoencoder with walkback (Bengio et al. 2013)
        from vaegen.objectives import denoising as dae

        return dae.build_objective(cfg)
    if name == "exact":  # exact log p(x) of a model without latents (autoregressive)
        from vaegen.model import autoregressive as autoregressive

        return autoregressive.ExactLogLikelihood()
    if name == "semi_amortized":
        from vaegen.inference.svi import semi_amortized_from_config

        return semi_amortized_from_config(cfg)
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")


def batched(objective: Callable[..., Terms], model: LatentVariableModel, variables: Any, x: jax.Array, keys: jax.Array, step: jax.Array | int = 0) -> Terms:
    """Applies a per-example objective to a batch: ``x [B, *event]``, ``keys [B]`` -> terms ``[B]``."""
    return jax.vmap(lambda xi, ki: objective(model, variables, xi, ki, step))(x, keys)
