"""Bounds on log p(x): the ELBO and the importance-weighted bound.

Every objective is a frozen dataclass (an :class:`vaegen.objectives.base.Objective` holding its
registered settings) called on **one** observation::

    terms = objective(model, variables, x, key, step)     # x [*event], key: PRNG key

and returns a dict of scalars in nats, each term separately.  ``terms["objective"]`` is the
quantity the trainer maximises; the other entries are the bound and its parts.  Batches are
handled by ``jax.vmap`` (:func:`vaegen.objectives.batch.batched`), with one key per example, so results do not depend
on how examples are grouped into batches.

=================  =====================================================================
``ELBO``           L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  (beta and KL warm-up optional)
``IWAE``           L_k(x) = E[log 1/k sum_i p(x, z_i) / q(z_i | x)],  z_i ~ q(z | x)
=================  =====================================================================

For any q: ELBO <= IWAE_k <= IWAE_{k+1} <= log p(x).  For a point-mass q the ELBO does not
exist (the KL to any density is +inf; see :mod:`vaegen.blocks.posteriors`): ``ELBO`` and ``IWAE``
refuse a point mass, and the autoencoder's objective (:mod:`vaegen.objectives.autoencoder`) is
what is left.

:func:`elbo_terms` is the one implementation of the ELBO of any q (the amortized q(z | x) here,
a per-example q of :mod:`vaegen.inference`, which optimises it).

Each objective also says what is tracked on held-out data during training
(``for_validation``): the true bound without training-only weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import optax

from vaegen import sharding as sharding_lib
from vaegen.errors import ConfigError, UndefinedObjectiveError
from vaegen.objectives import surrogates
from vaegen.objectives.base import Objective, Terms
from vaegen.registry import OBJECTIVES, Settings, setting
from vaegen.spec.run import RunSpec


def bits_per_dim(nats: Any, num_dims: int) -> Any:
    """A log-likelihood or bound of one observation in nats as bits per dimension,
    -nats / (num_dims ln 2), lower is better (a code length for discrete data only: see
    :func:`vaegen.runs.evaluate.bits_per_dim_definition`)."""
    return -nats / (num_dims * math.log(2))


def kl_divergence(q: distrax.Distribution, p: distrax.Distribution, z: jax.Array) -> tuple[jax.Array, bool]:
    """KL(q || p) in nats: analytic where distrax has it, else the Monte Carlo estimate
    mean_s[log q(z_s) - log p(z_s)] over the samples ``z [S, D]`` drawn from q.

    Returns ``(kl [], analytic: bool)``.
    """
    try:
        return q.kl_divergence(p), True
    except (NotImplementedError, TypeError, ValueError):
        return jnp.mean(q.log_prob(z) - p.log_prob(z)), False


def kl_per_dimension(q: distrax.Distribution, p: distrax.Distribution) -> jax.Array:
    """KL(q_d || p_d) for each latent dimension d, in nats, ``[D]`` (summing to KL(q || p)):
    closed form for two diagonal Gaussians q = N(mu, diag s^2), p = N(m, diag t^2),

        KL_d = log(t_d / s_d) + (s_d^2 + (mu_d - m_d)^2) / (2 t_d^2) - 1/2.

    Raises TypeError for any other pair (their KL does not split over dimensions)."""
    if not (isinstance(q, distrax.MultivariateNormalDiag) and isinstance(p, distrax.MultivariateNormalDiag)):
        raise TypeError(f"the KL splits over dimensions only for two diagonal Gaussians, not {type(q).__name__} "
                        f"and {type(p).__name__}")
    s, t = q.scale_diag, p.scale_diag
    return jnp.log(t / s) + (s**2 + (q.loc - p.loc) ** 2) / (2 * t**2) - 0.5


def free_bits_kl(kl_dims: jax.Array, free_bits: float, group_size: int = 1) -> jax.Array:
    """sum_g max(lambda, KL_g): the KL with "free bits" (Kingma et al. 2016), ``[]`` nats.

    ``kl_dims [D]`` is split into D / group_size consecutive groups; each group's KL counts as at
    least ``free_bits`` = lambda nats, so the gradient stops pushing a group's KL below lambda
    (no incentive to collapse it).  Applied per example (Kingma et al. clamp the minibatch mean
    of each group's KL; per example is the stricter form: mean_x max(lambda, KL_g(x)) >=
    max(lambda, mean_x KL_g(x))).
    """
    groups = kl_dims.reshape(-1, group_size).sum(-1)                # [D / group_size]
    return jnp.sum(jnp.maximum(groups, free_bits))


def elbo_terms(m: Any, q: distrax.Distribution, x: jax.Array, key: jax.Array, *, num_samples: int = 1,
               analytic_kl: bool = True, q_density: distrax.Distribution | None = None) -> Terms:
    """L(x; q) = E_q[log p(x | z)] - KL(q || p(z)) for one example, inside a bound model ``m``.

    Args:
      m: the model with its parameters bound (inside ``model.apply``).
      q: a distribution over z with event ``[D]``: the amortized q(z | x), or any per-example q.
      x: one observation ``[*event]``.
      num_samples: S samples z_s ~ q for E_q[log p(x | z)] (and a Monte Carlo KL).
      analytic_kl: the closed-form KL where distrax has one (Gaussian q and p), else
        mean_s[log q(z_s) - log p(z_s)].
      q_density: where given, log q(z_s) of a Monte Carlo KL is evaluated under this distribution:
        the same q built from stop-gradient parameters gives the path-derivative ("sticking the
        landing", Roeder et al. 2017) gradient -- the same value, lower variance.
    Returns:
      Scalars in nats: ``reconstruction`` E_q[log p(x|z)], ``kl``, ``elbo`` = reconstruction - kl,
      and ``per_sample [S]`` (the single-sample ELBO estimates, for a Monte Carlo error).
    """
    if num_samples == 1:
        # The same draw as sample_shape=(1,), without the sample axis: vmapped over a batch, the
        # decoder is then one plain matrix product per layer (with the axis, XLA transposes its
        # activations for the weight gradients: ~25% slower on CPU).
        z1 = q.sample(seed=key)                                    # [D]
        log_px_z = m.log_likelihood(x, z1)[None]                   # log p(x | z)     [1]
        z = z1[None]                                               # [1, D]
    else:
        z = q.sample(seed=key, sample_shape=(num_samples,))        # [S, D]
        log_px_z = m.log_likelihood(x, z)                          # log p(x | z_s)   [S]
    p = m.p_z()                                                    # p(z)
    kl = None
    if analytic_kl:
        try:
            kl = q.kl_divergence(p)                                # []
        except (NotImplementedError, TypeError, ValueError):
            pass
    if kl is None:
        log_q = (q_density if q_density is not None else q).log_prob(z)   # [S]
        log_p = p.log_prob(z)                                             # [S]
        kl = jnp.mean(log_q - log_p)
        per_sample = log_px_z + log_p - log_q
    else:
        per_sample = log_px_z - kl
    reconstruction = jnp.mean(log_px_z)                            # []
    return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl, "per_sample": per_sample}


def elbo_of(model: Any, variables: Any, q: distrax.Distribution | Callable[[Any], distrax.Distribution],
            x: jax.Array, key: jax.Array, num_samples: int = 1, *, analytic_kl: bool = True,
            q_density: distrax.Distribution | None = None) -> Terms:
    """:func:`elbo_terms` with the model's parameters applied: L(x; q) for one example.

    ``q`` is a distribution over z (event [D]) or a function of the bound model returning one
    (e.g. ``lambda m: m.q_z_given_x(x)``).  Returns ``{"elbo", "reconstruction", "kl",
    "mc_stderr"}`` in nats; ``mc_stderr`` is the Monte Carlo standard error of the ``elbo``
    estimate (NaN for one sample).
    """

    def terms(m: Any) -> Terms:
        dist = q(m) if callable(q) and not isinstance(q, distrax.Distribution) else q
        t = elbo_terms(m, dist, x, key, num_samples=num_samples, analytic_kl=analytic_kl, q_density=q_density)
        per_sample = t.pop("per_sample")
        t["mc_stderr"] = (jnp.std(per_sample) / math.sqrt(num_samples) if num_samples > 1
                          else jnp.asarray(jnp.nan))
        return t

    return model.apply(variables, method=terms)


# --- what every bound needs: one rule, checked on a run spec and on a model ---------------------------

def density_and_prior_problem(name: str, *, point_mass: bool, has_prior: bool) -> str | None:
    """The rule of every bound on log p(x), stated once: q(z | x) must have a density (not a point
    mass, whose KL to any p(z) is +inf) and the model a prior p(z).  Returns the message of the
    first thing missing (``name`` names the bound), or None.  :func:`needs_density_and_prior`
    checks it on a run spec's traits when the spec is built; :func:`require_density` on a model
    when a bound is applied to it."""
    if point_mass:
        return (f"{name} is undefined for a point-mass posterior q(z|x) = delta(z - f(x)): its KL to p(z) is +inf "
                "(a point mass has differential entropy -inf); train an autoencoder with --config.objective.name=ae, "
                "or use a posterior with a density (--config.inference.posterior=diagonal_gaussian)")
    if not has_prior:
        return (f"{name} needs a prior p(z), and this model has none (--config.model.prior=none); set "
                "--config.model.prior=standard_normal")
    return None


def needs_density_and_prior(settings: Settings, spec: RunSpec) -> None:
    """The check of every bound (:func:`density_and_prior_problem`) on the run spec: a
    :class:`vaegen.errors.ConfigError`."""
    problem = density_and_prior_problem(f"objective {spec.objective.name!r}",
                                        point_mass=spec.inference.posterior.trait("deterministic"),
                                        has_prior=spec.model.prior.trait("exists"))
    if problem:
        raise ConfigError(problem)
    surrogates.check_estimator_posterior(settings, spec)


def require_density(model: Any, name: str) -> None:
    """The check of every bound (:func:`density_and_prior_problem`) on a model: a
    :class:`vaegen.errors.UndefinedObjectiveError` unless it has a q(z | x) with a density and a
    prior p(z)."""
    problem = density_and_prior_problem(f"the {name}", point_mass=model.posterior is not None and model.is_autoencoder,
                                        has_prior=model.prior is not None)
    if problem:
        raise UndefinedObjectiveError(problem)


def kl_weight(beta: float, warmup_steps: int, step: jax.Array, cycle_steps: int = 0,
              cycle_ratio: float = 0.5) -> jax.Array:
    """The weight of the KL term at ``step`` (0-based):

    - warm-up: beta * min(1, step / warmup_steps) (beta from the first step if ``warmup_steps == 0``);
    - cyclical (Fu et al. 2019), when ``cycle_steps > 0``: beta * min(1, tau / cycle_ratio) with
      tau = (step mod cycle_steps) / cycle_steps -- in each cycle the weight rises linearly from 0
      to beta over the first ``cycle_ratio`` of it and stays at beta for the rest.
    """
    if cycle_steps > 0:
        tau = jnp.mod(jnp.asarray(step), cycle_steps).astype(jnp.float32) / cycle_steps
        return beta * jnp.minimum(1.0, tau / cycle_ratio)
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return optax.linear_schedule(0.0, beta, warmup_steps)(step)


@dataclasses.dataclass(frozen=True)
class ELBOSettings(Settings):
    num_samples: int = setting(1, "S samples of z ~ q(z|x) for E_q[log p(x|z)]", gt=0)
    analytic_kl: bool = setting(True, "closed-form KL where distrax has one, else Monte Carlo from the S samples")
    beta: float = setting(1.0, "weight of the KL in the training objective (beta-VAE); the reported elbo has beta = 1",
                          ge=0)
    kl_warmup_epochs: float = setting(0.0, "linear warm-up of the KL weight from 0 to beta", ge=0)
    kl_cycle_epochs: float = setting(0.0, "cyclical KL weight (Fu et al. 2019): the length of one cycle in epochs "
                                     "(0 = none)", ge=0)
    kl_cycle_ratio: float = setting(0.5, "cyclical KL weight: the fraction of each cycle over which it rises from 0 "
                                    "to beta", gt=0, le=1)
    free_bits: float = setting(0.0, "free bits (Kingma et al. 2016): each group's KL counts as at least this many "
                               "nats in the training objective, per example (0 = none)", ge=0)
    free_bits_group_size: int = setting(1, "free bits: latent dimensions per group (1 = per dimension)", gt=0)
    estimator: str = setting("reparam", surrogates.ESTIMATOR_DOC + "; stl needs analytic_kl=false",
                             choices=surrogates.ESTIMATORS)

    def validate(self, key):
        if self.kl_cycle_epochs and self.kl_warmup_epochs:
            raise ConfigError(f"{key('kl_cycle_epochs')} and kl_warmup_epochs are two schedules of the KL weight; "
                              "set one of them to 0")
        problem = surrogates.elbo_estimator_problem(self.estimator, self.analytic_kl, self.free_bits, key)
        if problem:
            raise ConfigError(f"{key('estimator')}={self.estimator!r}: {problem}")


@dataclasses.dataclass(frozen=True)
class IWAESettings(Settings):
    num_samples: int = setting(5, "k importance samples per example", gt=0)
    estimator: str = setting("reparam", surrogates.ESTIMATOR_DOC, choices=surrogates.ESTIMATORS)


@dataclasses.dataclass(frozen=True)
class ELBO(Objective):
    """The evidence lower bound, with an optional weight on its KL term.

    L(x) = E_{q(z|x)}[log p(x | z)] - KL(q(z|x) || p(z)) <= log p(x)

    Attributes:
      settings: :class:`ELBOSettings`: S = ``num_samples`` Monte Carlo samples of z ~ q(z|x) for
        the reconstruction term; ``analytic_kl``: the closed-form KL where distrax has one (else a
        Monte Carlo estimate from the same S samples); ``beta``: the weight of the KL in the
        *training* objective (beta-VAE; the reported ``elbo`` is always the true bound, beta = 1),
        rising linearly from 0 over ``kl_warmup_epochs`` or cyclical (``kl_cycle_epochs``,
        ``kl_cycle_ratio``; :func:`kl_weight`); ``free_bits`` lambda > 0 replaces the KL of the
        *training* objective by sum_g max(lambda, KL_g) over groups of ``free_bits_group_size``
        latent dimensions (:func:`free_bits_kl`; needs a KL that splits over dimensions,
        :func:`kl_per_dimension`); ``estimator``, ``reparam`` or ``stl``
        (:mod:`vaegen.objectives.surrogates`): stl differentiates the Monte Carlo ELBO
        log p(x, z) - log q(z | x) with log q's parameters stopped (needs ``analytic_kl=False`` and
        no free bits), unbiased for the ELBO's gradient.
      steps_per_epoch: the build context: the schedules given in epochs run in steps.

    Terms (nats, one example): ``reconstruction`` E_q[log p(x|z)], ``kl`` KL(q || p),
    ``elbo`` = reconstruction - kl, ``kl_weight``, ``objective`` = reconstruction - w * kl
    (with free bits, reconstruction - w * ``kl_free_bits``).
    """

    settings: ELBOSettings = ELBOSettings()
    steps_per_epoch: int = 1
    bound_name = "elbo"

    @property
    def kl_warmup_steps(self) -> int:
        """The steps over which the KL weight rises from 0 to beta (0: none)."""
        return int(round(self.settings.kl_warmup_epochs * self.steps_per_epoch))

    @property
    def kl_cycle_steps(self) -> int:
        """The steps of one cycle of a cyclical KL weight (0: none)."""
        epochs = self.settings.kl_cycle_epochs
        return max(1, int(round(epochs * self.steps_per_epoch))) if epochs else 0

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        require_density(model, "ELBO")
        s = self.settings
        q_density = None
        if s.estimator != "reparam":  # stl: log q(z|x) of the Monte Carlo KL with q's parameters stopped
            problem = surrogates.elbo_estimator_problem(s.estimator, s.analytic_kl, s.free_bits, lambda name: name)
            if problem:
                raise ConfigError(f"ELBO(estimator={s.estimator!r}): {problem}")
            q_density = model.apply(surrogates.stop_posterior(variables), x, method="q_z_given_x")

        def terms(m: Any) -> Terms:
            q = m.q_z_given_x(x)
            t = elbo_terms(m, q, x, key, num_samples=s.num_samples, analytic_kl=s.analytic_kl, q_density=q_density)
            w = kl_weight(s.beta, self.kl_warmup_steps, jnp.asarray(step), self.kl_cycle_steps, s.kl_cycle_ratio)
            out = {"reconstruction": t["reconstruction"], "kl": t["kl"], "elbo": t["elbo"], "kl_weight": w}
            penalized = t["kl"]
            if s.free_bits > 0:
                penalized = free_bits_kl(kl_per_dimension(q, m.p_z()), s.free_bits, s.free_bits_group_size)
                out["kl_free_bits"] = penalized
            out["objective"] = t["reconstruction"] - w * penalized
            return out

        return model.apply(variables, method=terms)

    def for_validation(self, validation_num_samples: int) -> "ELBO":
        """The true ELBO (beta = 1, no warm-up) with ``validation_num_samples`` samples."""
        return ELBO(ELBOSettings(num_samples=int(validation_num_samples), analytic_kl=self.settings.analytic_kl))


@dataclasses.dataclass(frozen=True)
class IWAE(Objective):
    """The importance-weighted bound of Burda et al. (2016).

    L_k(x) = E_{z_1..k ~ q(z|x)}[ log (1/k) sum_i w_i ],  w_i = p(x, z_i) / q(z_i | x)

    L_1 is the ELBO; L_k increases with k and tends to log p(x).

    Terms (nats, one example): ``iwae`` (the k-sample bound estimate), ``elbo`` (mean of the
    log-weights: an unbiased ELBO estimate from the same samples), ``reconstruction``
    (mean log p(x|z_i)), ``kl`` (analytic KL(q || p) if available, else its estimate),
    ``ess`` (effective sample size of the normalised weights), ``objective`` = iwae.

    ``estimator``: ``reparam`` | ``stl`` | ``dreg``, the gradient of the same values
    (:mod:`vaegen.objectives.surrogates`): dreg's phi-gradient is unbiased for the bound's, stl's is
    biased for k > 1.

    Attributes:
      settings: :class:`IWAESettings`: k = ``num_samples``; the gradient ``estimator``.
    """

    settings: IWAESettings = IWAESettings()
    bound_name = "iwae"

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        require_density(model, "IWAE bound")
        del step
        k = self.settings.num_samples
        if self.settings.estimator != "reparam":
            return surrogates.importance_weighted(model, variables, x, key, k, self.settings.estimator)

        def terms(m: Any) -> Terms:
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

    def for_validation(self, validation_num_samples: int) -> "IWAE":
        """The training bound itself, IWAE_k with the training k (its value; no gradient is taken)."""
        del validation_num_samples
        return IWAE(IWAESettings(num_samples=self.settings.num_samples))


@dataclasses.dataclass(frozen=True)
class _ObjectiveTerms:
    """One example's terms of a per-example objective (for :func:`vaegen.sharding.map_examples`)."""

    model: Any
    objective: Objective

    def __call__(self, variables, x, key):
        return self.objective(self.model, variables, x, key)


def objective_terms(model: Any, variables: Any, objective: Objective, xs: Any, key: jax.Array, *,
                    batch_size: int | None = None, devices=None, progress: bool = False) -> Terms:
    """Per-example terms ``[N]`` of ``objective`` (e.g. :class:`ELBO`) over ``xs [N, *event]``,
    example i keyed by ``fold_in(key, i)``, batched and sharded over the devices
    (:func:`vaegen.sharding.map_examples`)."""
    fn = jax.tree_util.Partial(_ObjectiveTerms(model, objective), variables)
    samples = int(objective.samples_per_example)
    b = int(batch_size or max(1, sharding_lib.default_rows() // (8 * samples)))
    return sharding_lib.map_examples(fn, jnp.asarray(xs), key, batch_size=b, devices=devices, progress=progress,
                                     desc=objective.bound_name)


# --- registered objectives -------------------------------------------------------------------------
#
# Build context: ``steps_per_epoch`` (for schedules given in epochs).  Checks use the posterior's
# and prior's traits: every bound needs a q(z | x) with a density and a prior p(z)
# (:func:`needs_density_and_prior`).  Traits (declared with :data:`vaegen.registry.OBJECTIVES`):
# ``training`` (latent, the default, for these), ``bound_from_log_joint`` (the objective needs only
# log p(x, z) and q(z | x), so any latent structure serves, two stochastic layers included),
# ``bound_of_any_q`` (a bound of any given q, which the semi-amortized objective can train its refined
# q on: :func:`vaegen.objectives.multisample.terms_of_q`).  The ``estimator`` setting (stl, dreg) asks
# of the posterior the trait ``reparameterized``.


def _check_elbo(settings: ELBOSettings, spec: RunSpec) -> None:
    """Every bound's check; free bits also need a KL that splits over latent dimensions."""
    needs_density_and_prior(settings, spec)
    if settings.free_bits > 0:
        if not (spec.model.kind.trait("one_latent_vector") and spec.inference.posterior.trait("factorized")
                and spec.model.prior.trait("factorized")):
            raise ConfigError("config.objective.free_bits needs a KL that splits over latent dimensions: one latent "
                              "vector with a factorized posterior (diagonal_gaussian, fixed_scale_gaussian) and prior "
                              "(standard_normal); set free_bits=0 or change them")
        if spec.model.latent_dim % settings.free_bits_group_size:
            raise ConfigError(f"config.objective.free_bits_group_size={settings.free_bits_group_size} must divide "
                              f"config.model.latent_dim={spec.model.latent_dim}")


@OBJECTIVES.register("elbo", settings=ELBOSettings, check=_check_elbo,
                     traits={"bound_from_log_joint": True, "bound_of_any_q": True})
def elbo(settings: ELBOSettings, *, steps_per_epoch: int = 1) -> ELBO:
    """L(x) = E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) (beta = 1: the ELBO; KL warm-up, cyclical KL weight and free bits optional)."""
    return ELBO(settings, steps_per_epoch=steps_per_epoch)


@OBJECTIVES.register("iwae", settings=IWAESettings, check=needs_density_and_prior,
                     traits={"bound_from_log_joint": True, "bound_of_any_q": True})
def iwae(settings: IWAESettings, *, steps_per_epoch: int = 1) -> IWAE:
    """L_k(x) = E log 1/k sum_i p(x, z_i) / q(z_i | x): the importance-weighted bound (Burda et al. 2016)."""
    del steps_per_epoch
    return IWAE(settings)
