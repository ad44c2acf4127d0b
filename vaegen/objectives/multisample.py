"""Multi-sample bounds with separate roles for the encoder and the decoder (Rainforth et al. 2018,
"Tighter variational bounds are not necessarily better").

The tighter IWAE_k is for the generative model, the worse its gradient is for the inference
network: the encoder's gradient signal-to-noise ratio falls like 1/sqrt(k) while the decoder's
rises like sqrt(k).  Three objectives trade the two off, each on n = M k importance samples
z_{m,i} ~ q(z | x), log w_{m,i} = log p(x, z_{m,i}) - log q(z_{m,i} | x) (nats, one example)::

    MIWAE(M, k)   1/M sum_m log 1/k sum_i w_{m,i}            M independent IWAE_k estimates averaged
    CIWAE(beta)   beta ELBO_k + (1 - beta) IWAE_k             ELBO_k = 1/k sum_i log w_i, same k samples
    PIWAE(M, k)   theta (p's parameters) on IWAE_{Mk}, phi (q's) on MIWAE(M, k), from the same samples

Each is a lower bound on log p(x) (MIWAE(1, k) = IWAE_k, MIWAE(M, 1) = the ELBO with M samples,
CIWAE(1) = the ELBO, CIWAE(0) = IWAE_k; PIWAE is two bounds).  Each reports the value of every bound
it is made of, separately, whatever gradient estimator it uses (``estimator``:
:mod:`vaegen.objectives.surrogates`; dreg is unbiased for each bound's phi-gradient, stl is
biased for k > 1).  PIWAE is implemented with stop-gradients on the parameter subtrees
(``params/posterior`` is q's, ``params/prior`` and ``params/likelihood`` are p's):
objective = IWAE_{Mk}(theta, sg(phi)) + MIWAE(sg(theta), phi) - sg(MIWAE), whose value is
IWAE_{Mk} and whose gradient is each target's for its own parameters.

:func:`terms_of_q` evaluates any of these bounds (and the ELBO and IWAE of
:mod:`vaegen.objectives.bounds`) of a given q(z; phi): the semi-amortized objective
(:mod:`vaegen.inference.semi_amortized`) trains the model on the bound of the q it refined.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.objectives import surrogates
from vaegen.objectives.base import Objective
from vaegen.objectives.bounds import ELBO, IWAE, elbo_of, needs_density_and_prior, require_density
from vaegen.objectives.surrogates import Proposal
from vaegen.registry import OBJECTIVES, Settings, setting

Terms = dict[str, jax.Array]


# --- settings ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MIWAESettings(Settings):
    num_groups: int = setting(8, "M, independent IWAE_k estimates averaged", gt=0)
    num_samples: int = setting(8, "k, importance samples per estimate", gt=0)
    estimator: str = setting("reparam", surrogates.ESTIMATOR_DOC, choices=surrogates.ESTIMATORS)


@dataclasses.dataclass(frozen=True)
class CIWAESettings(Settings):
    beta: float = setting(0.5, "the ELBO's weight: beta ELBO_k + (1 - beta) IWAE_k", ge=0, le=1)
    num_samples: int = setting(8, "k, importance samples (shared by both bounds)", gt=0)
    estimator: str = setting("reparam", surrogates.ESTIMATOR_DOC, choices=surrogates.ESTIMATORS)


@dataclasses.dataclass(frozen=True)
class PIWAESettings(Settings):
    num_groups: int = setting(8, "M: the encoder's target is MIWAE(M, k), the decoder's IWAE_{Mk}", gt=0)
    num_samples: int = setting(8, "k, importance samples per group", gt=0)
    estimator: str = setting("reparam", "the encoder's gradient estimator: " + surrogates.ESTIMATOR_DOC,
                             choices=surrogates.ESTIMATORS)


# --- the bounds ---------------------------------------------------------------------------------------

def _group_bounds(log_w: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(miwae, iwae, ess)`` of ``log_w [M k]``: 1/M sum_m log 1/k sum_i w_{m,i}, log 1/(Mk) sum w
    (nats), and the mean over groups of each group's effective sample size 1 / sum_i w~_i^2."""
    n = log_w.shape[-1]
    k = n // num_groups
    groups = log_w.reshape(num_groups, k)                                        # [M, k]
    miwae = jnp.mean(jax.nn.logsumexp(groups, axis=-1) - math.log(k))
    iwae = jax.nn.logsumexp(log_w) - math.log(n)
    w = surrogates.self_normalized(jax.lax.stop_gradient(groups))
    return miwae, iwae, jnp.mean(1.0 / jnp.sum(w**2, axis=-1))


def _report(lw: Terms) -> Terms:
    """The terms every multi-sample bound reports beside its own: ``elbo`` (mean log w, an unbiased
    ELBO estimate), ``reconstruction`` (mean log p(x | z_i)), ``kl``."""
    return {"elbo": jnp.mean(lw["log_w"]), "reconstruction": jnp.mean(lw["log_px_z"]), "kl": lw["kl"]}


@dataclasses.dataclass(frozen=True)
class MIWAE(Objective):
    """L_{M,k}(x) = 1/M sum_m E log 1/k sum_i w_{m,i} (Rainforth et al. 2018), M k samples.

    Attributes:
      settings: :class:`MIWAESettings`: M = ``num_groups`` independent IWAE_k estimates averaged
        (more: better encoder gradients), k = ``num_samples`` importance samples per estimate (more:
        a tighter bound), the gradient ``estimator`` (``reparam`` | ``stl`` | ``dreg``; dreg: each
        group's DReG, unbiased for the bound's phi-gradient).

    Terms (nats, one example): ``miwae``, ``iwae`` (IWAE_{Mk} of the same samples, >= miwae),
    ``elbo``, ``reconstruction``, ``kl``, ``ess`` (mean over groups), ``objective`` = miwae.
    """

    settings: MIWAESettings = MIWAESettings()
    bound_name = "miwae"

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_groups * self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        del step
        require_density(model, "MIWAE bound")
        return self.terms(model, variables, x, key)

    def terms(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, proposal: Proposal | None = None
              ) -> Terms:
        """The terms for one example, with q the model's q(z | x) or ``proposal``'s q."""
        m = self.settings.num_groups
        lw = surrogates.log_weights(model, variables, x, key, m * self.settings.num_samples, self.settings.estimator,
                                    scale=functools.partial(surrogates.dreg_scale, num_groups=m), proposal=proposal)
        miwae, iwae, ess = _group_bounds(lw["log_w"], m)
        return {"miwae": miwae, "iwae": jax.lax.stop_gradient(iwae), **_report(lw), "ess": ess, "objective": miwae}

    def for_validation(self, validation_num_samples: int) -> "MIWAE":
        """The training bound itself (its value)."""
        del validation_num_samples
        return MIWAE(dataclasses.replace(self.settings, estimator="reparam"))


@dataclasses.dataclass(frozen=True)
class CIWAE(Objective):
    """L(x) = beta ELBO_k(x) + (1 - beta) IWAE_k(x) from the same k samples (Rainforth et al. 2018).

    A convex combination of two lower bounds on log p(x), itself one; beta = 1 is the ELBO (with
    a Monte Carlo KL), beta = 0 IWAE_k.

    Attributes:
      settings: :class:`CIWAESettings`: ``beta``, the ELBO's weight in [0, 1]; k = ``num_samples``;
        the gradient ``estimator`` (``reparam`` | ``stl`` | ``dreg``; dreg: unbiased for the
        phi-gradient of the combination, :func:`vaegen.objectives.surrogates.dreg_scale`).

    Terms (nats, one example): ``ciwae``, ``iwae``, ``elbo`` (ELBO_k), ``reconstruction``, ``kl``,
    ``ess``, ``objective`` = ciwae.
    """

    settings: CIWAESettings = CIWAESettings()
    bound_name = "ciwae"

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        del step
        require_density(model, "CIWAE bound")
        return self.terms(model, variables, x, key)

    def terms(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, proposal: Proposal | None = None
              ) -> Terms:
        """The terms for one example, with q the model's q(z | x) or ``proposal``'s q."""
        s = self.settings
        lw = surrogates.log_weights(model, variables, x, key, s.num_samples, s.estimator,
                                    scale=functools.partial(surrogates.dreg_scale, beta=float(s.beta)),
                                    proposal=proposal)
        _, iwae, ess = _group_bounds(lw["log_w"], 1)
        report = _report(lw)
        ciwae = s.beta * report["elbo"] + (1.0 - s.beta) * iwae
        return {"ciwae": ciwae, "iwae": jax.lax.stop_gradient(iwae),
                **{k: jax.lax.stop_gradient(v) for k, v in report.items()}, "ess": ess, "objective": ciwae}

    def for_validation(self, validation_num_samples: int) -> "CIWAE":
        """The training bound itself (its value)."""
        del validation_num_samples
        return CIWAE(dataclasses.replace(self.settings, estimator="reparam"))


@dataclasses.dataclass(frozen=True)
class PIWAE(Objective):
    """Separate targets (Rainforth et al. 2018): the generative model's parameters theta
    (``params/prior``, ``params/likelihood``) are trained on IWAE_{Mk}, the inference network's
    phi (``params/posterior``) on MIWAE(M, k), both from the same M k samples.

    objective = IWAE_{Mk}(theta, sg(phi)) + MIWAE(sg(theta), phi) - sg(MIWAE(...)): its value is
    IWAE_{Mk}, its theta-gradient IWAE_{Mk}'s (reparameterized), its phi-gradient MIWAE's with
    ``estimator``.  A VampPrior's pseudo-inputs are p's parameters; the encoder's weights it uses
    are q's, trained by the encoder's target only.

    Attributes:
      settings: :class:`PIWAESettings`: M = ``num_groups``, k = ``num_samples`` (the decoder's
        bound uses all M k), the encoder's gradient ``estimator`` (``reparam`` | ``stl`` | ``dreg``).

    Terms (nats, one example): ``iwae`` (IWAE_{Mk}, the decoder's target), ``miwae`` (the
    encoder's), ``elbo``, ``reconstruction``, ``kl``, ``ess``, ``objective``.
    """

    settings: PIWAESettings = PIWAESettings()
    bound_name = "iwae"

    @property
    def samples_per_example(self) -> int:
        return self.settings.num_groups * self.settings.num_samples

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        del step
        require_density(model, "PIWAE bound")
        return self.terms(model, variables, x, key)

    def terms(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, proposal: Proposal | None = None
              ) -> Terms:
        """The terms for one example, with q the model's q(z | x) or ``proposal``'s q."""
        m, n = self.settings.num_groups, self.settings.num_groups * self.settings.num_samples
        sg = jax.lax.stop_gradient
        # theta's target: q entirely stopped (its samples and its density), p free.
        if proposal is not None and proposal.q_stopped is None:
            raise ValueError("PIWAE of a given q needs the proposal's q_stopped")
        decoder_proposal = None if proposal is None else Proposal(q=proposal.q_stopped)
        lw_p = surrogates.log_weights(model, surrogates.stop_posterior(variables), x, key, n, "reparam",
                                      proposal=decoder_proposal)
        _, iwae, ess = _group_bounds(lw_p["log_w"], m)
        # phi's target: the same samples, p stopped.
        lw_q = surrogates.log_weights(model, surrogates.stop_generative(variables), x, key, n, self.settings.estimator,
                                      scale=functools.partial(surrogates.dreg_scale, num_groups=m), proposal=proposal)
        miwae, _, _ = _group_bounds(lw_q["log_w"], m)
        return {"iwae": sg(iwae), "miwae": sg(miwae), **{k: sg(v) for k, v in _report(lw_p).items()}, "ess": ess,
                "objective": iwae + miwae - sg(miwae)}

    def for_validation(self, validation_num_samples: int) -> "PIWAE":
        """The training bounds themselves (their values)."""
        del validation_num_samples
        return PIWAE(dataclasses.replace(self.settings, estimator="reparam"))


def terms_of_q(bound: Any, model: Any, variables: Any, x: jax.Array, key: jax.Array, proposal: Proposal) -> Terms:
    """The terms of ``bound`` (an :class:`~vaegen.objectives.bounds.ELBO`,
    :class:`~vaegen.objectives.bounds.IWAE`, :class:`MIWAE`, :class:`CIWAE` or :class:`PIWAE`)
    for one example with ``proposal.q`` in place of the amortized q(z | x), e.g. a per-example
    q(z; phi_K) refined by SVI; ``proposal.q_stopped`` (the same q from stop-gradient parameters)
    serves stl and dreg.  The ELBO is the true bound (beta = 1, no schedules); ``objective`` is
    the bound's own."""
    if isinstance(bound, ELBO):
        s = bound.settings
        problem = surrogates.elbo_estimator_problem(s.estimator, s.analytic_kl, s.free_bits, lambda name: name)
        if problem:
            raise ConfigError(f"ELBO(estimator={s.estimator!r}): {problem}")
        t = elbo_of(model, variables, proposal.q, x, key, s.num_samples, analytic_kl=s.analytic_kl,
                    q_density=proposal.q_stopped if s.estimator == "stl" else None)
        return {**t, "objective": t["elbo"]}
    if isinstance(bound, IWAE):
        s = bound.settings
        return surrogates.importance_weighted(model, variables, x, key, s.num_samples, s.estimator, proposal=proposal)
    return bound.terms(model, variables, x, key, proposal)


# --- registered objectives -------------------------------------------------------------------------

_TRAITS = {"bound_from_log_joint": True, "bound_of_any_q": True}


@OBJECTIVES.register("miwae", settings=MIWAESettings, check=needs_density_and_prior, traits=_TRAITS)
def miwae(settings: MIWAESettings, *, steps_per_epoch: int = 1) -> MIWAE:
    """L = 1/M sum_m log 1/k sum_i w_{m,i}: M independent IWAE_k estimates averaged (Rainforth et al. 2018)."""
    del steps_per_epoch
    return MIWAE(settings)


@OBJECTIVES.register("ciwae", settings=CIWAESettings, check=needs_density_and_prior, traits=_TRAITS)
def ciwae(settings: CIWAESettings, *, steps_per_epoch: int = 1) -> CIWAE:
    """L = beta ELBO_k + (1 - beta) IWAE_k from the same k samples (Rainforth et al. 2018)."""
    del steps_per_epoch
    return CIWAE(settings)


@OBJECTIVES.register("piwae", settings=PIWAESettings, check=needs_density_and_prior, traits=_TRAITS)
def piwae(settings: PIWAESettings, *, steps_per_epoch: int = 1) -> PIWAE:
    """The decoder on IWAE_{Mk}, the encoder on MIWAE(M, k), same samples (Rainforth et al. 2018)."""
    del steps_per_epoch
    return PIWAE(settings)

