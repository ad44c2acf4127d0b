"""Semi-amortized variational inference (Kim et al. 2018) as a training objective: K SVI steps on
each example's ELBO inside the training step, from the encoder's q (or from N(0, I)); the model is
trained on the ELBO of the refined q, or on another bound of it (``bound``: IWAE, MIWAE, CIWAE,
PIWAE with their gradient estimators, :mod:`vaegen.objectives.multisample`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vaegen.errors import ConfigError
from vaegen.inference.families import Family, amortized_parameters, family_of
from vaegen.inference.svi import SVISettings, refine
from vaegen.objectives import surrogates
from vaegen.objectives.base import Objective
from vaegen.objectives.bounds import ELBOSettings, elbo_of, needs_density_and_prior, require_density
from vaegen.objectives.multisample import terms_of_q
from vaegen.objectives.surrogates import Proposal
from vaegen.registry import OBJECTIVES, POSTERIORS, Selected, Settings, setting, slot
from vaegen.spec.run import RunSpec

Terms = dict[str, jax.Array]

GRADIENTS = ("unrolled", "total", "stop")


@dataclasses.dataclass(frozen=True)
class SemiAmortizedSettings(Settings):
    num_samples: int = setting(1, "S samples of z for the final bound", gt=0)
    analytic_kl: bool = setting(True, "closed-form KL where distrax has one")
    steps: int = setting(10, "K SVI steps per example inside the training step", ge=0)
    learning_rate: float = setting(0.05, "the inner step size", gt=0)
    optimizer: str = setting("adam", "the inner optimiser (optax); Kim et al. used sgd with momentum",
                             choices=("adam", "sgd"))
    momentum: float = setting(0.5, "sgd only", ge=0)
    step_samples: int = setting(1, "z samples per inner step", gt=0)
    grad_clip_norm: float = setting(0.0, "clip each example's inner gradient to this norm (0 = off)", ge=0)
    init: str = setting("amortized", "amortized: from the encoder's q; prior: from N(0, I) (non-amortized SVI)",
                        choices=("amortized", "prior"))
    gradient: str = setting("unrolled", "unrolled: through the K steps to the encoder (SA-VAE); total: theta's "
                            "gradient also through the steps; stop: q_K held fixed, the encoder trained on its own "
                            "ELBO (VAE+SVI)", choices=GRADIENTS)
    bound: Selected = slot("objective", "elbo", "the bound of the refined q the model is trained on, with its own "
                           "settings and estimator (e.g. bound=iwae, bound.estimator=dreg); left at the default ELBO, "
                           "this section's num_samples and analytic_kl are its", accepts=lambda c: c.trait(
                               "bound_of_any_q"), role="the refined q's bound")


@dataclasses.dataclass(frozen=True)
class SemiAmortizedELBO(Objective):
    """Semi-amortized variational inference (Kim et al. 2018) as a training objective.

    Per example: phi_0 = phi(x) from the encoder (or the standard point), then K SVI steps
    phi_{k+1} = phi_k + opt(grad_phi L(x; phi_k, theta)) (:func:`refine`), and the model is
    trained on the refined bound L(x; phi_K, theta).  How gradients reach the parameters:

    ``unrolled`` (SA-VAE, Kim et al.'s Algorithm 1): theta gets the partial derivative
        dL(phi_K, theta)/dtheta at phi_K; the encoder gets dL/dphi_K dphi_K/dphi_0 dphi_0/dphi,
        back-propagated through the K unrolled steps (the inner loop sees theta as a constant).
    ``total``: as ``unrolled``, but theta's gradient also flows through the inner loop (the total
        derivative of L(phi_K(theta), theta)).
    ``stop``: phi_K is a constant for the gradient; the encoder is trained on its own bound
        L(x; phi_0(x), theta) with theta held fixed in that term (Kim et al.'s VAE+SVI).

    With ``init="prior"`` the decoder never sees the encoder (non-amortized training, SVI); the
    encoder is then trained alongside on its own bound with theta fixed, so that the amortized q
    of such a model can still be measured, without it influencing the model.

    Terms (nats, one example): ``elbo`` L(x; phi_K) (the refined bound, what the model is trained
    on), ``elbo_amortized`` L(x; phi_0) (same noise), ``refinement_gain`` = their difference,
    ``reconstruction`` and ``kl`` of q(z; phi_K), and ``objective``: ``elbo``, plus
    ``elbo_amortized`` where the encoder is trained on its own bound.

    With ``bound`` (an ELBO with an estimator, IWAE, MIWAE, CIWAE or PIWAE object), the model is
    trained on that bound of q(z; phi_K) instead (:func:`vaegen.objectives.multisample.terms_of_q`,
    stl and dreg with log q(z; sg(phi_K))): every term of the bound of q(z; phi_K), and
    ``<bound>_amortized`` and ``refinement_gain`` for the bound's own value.

    Attributes:
      settings: :class:`SemiAmortizedSettings`: K = ``steps``, the inner optimiser (``learning_rate``,
        ``optimizer``, ``momentum``, ``step_samples`` samples of z per step, ``grad_clip_norm``), the
        ``init`` (``amortized`` | ``prior``), the ``gradient`` (``unrolled`` | ``total`` | ``stop``),
        S = ``num_samples`` samples of z for the final bound, and the ``bound`` of q(z; phi_K) the
        model is trained on (left at the default ELBO: the ELBO with S samples, the KL analytic as
        ``analytic_kl``).
      family: the family refined; None = the family of the model's q(z | x).
      steps_per_epoch: the build context (the bound's schedules given in epochs run in steps).
    """

    settings: SemiAmortizedSettings = SemiAmortizedSettings()
    family: Family | None = None
    steps_per_epoch: int = 1

    @property
    def bound(self) -> Objective | None:
        """The bound object q(z; phi_K) is trained on, or None for the default ELBO."""
        chosen = self.settings.bound
        return None if chosen == _DEFAULT_BOUND else chosen.build(steps_per_epoch=self.steps_per_epoch)

    @property
    def bound_name(self) -> str:
        bound = self.bound
        return "elbo" if bound is None else bound.bound_name

    @property
    def inner(self) -> SVISettings:
        """The inner optimiser, as :func:`vaegen.inference.svi.refine` takes it: a constant step size
        and no path gradient (gradients are taken *through* the optimiser)."""
        s = self.settings
        return SVISettings(num_steps=s.steps, learning_rate=s.learning_rate, optimizer=s.optimizer,
                           momentum=s.momentum, schedule="constant", num_samples=s.step_samples,
                           grad_clip_norm=s.grad_clip_norm, analytic_kl=s.analytic_kl, path_gradient=False)

    @property
    def samples_per_example(self) -> int:
        bound = self.bound
        return self.settings.num_samples if bound is None else bound.samples_per_example

    @property
    def encoder_trained_separately(self) -> bool:
        return self.settings.gradient == "stop" or self.settings.init == "prior"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> Terms:
        del step
        require_density(model, "semi-amortized ELBO")
        family = self.family or family_of(model)
        sg = jax.lax.stop_gradient
        k_inner, k_final = jax.random.split(key)

        s = self.settings
        amortized_phi = family.embed(*amortized_parameters(model, variables, x))
        phi0 = family.standard() if s.init == "prior" else amortized_phi
        inner_variables = variables if s.gradient == "total" else sg(variables)
        if s.gradient == "stop":
            phi0 = sg(phi0)
        phi_k, _ = refine(model, inner_variables, family, phi0, x, k_inner, self.inner)
        if s.gradient == "stop":
            phi_k = sg(phi_k)
        bound = self.bound
        if bound is not None:
            return self._bound_terms(bound, model, variables, family, phi_k, amortized_phi, x, k_final)
        refined = elbo_of(model, variables, family.distribution(phi_k), x, k_final, s.num_samples,
                          analytic_kl=s.analytic_kl)
        if self.encoder_trained_separately:
            # The encoder's own bound, with the generative model held fixed in this term.
            params = dict(sg(variables["params"]))
            params["posterior"] = variables["params"]["posterior"]
            encoder_vars = {**variables, "params": params}
            amortized = elbo_of(model, encoder_vars, family.distribution(amortized_phi), x, k_final,
                                s.num_samples, analytic_kl=s.analytic_kl)
            objective = refined["elbo"] + amortized["elbo"]
        else:
            amortized = elbo_of(model, variables, family.distribution(sg(amortized_phi)), x, k_final,
                                s.num_samples, analytic_kl=s.analytic_kl)
            objective = refined["elbo"]
        return {
            "elbo": refined["elbo"],
            "reconstruction": refined["reconstruction"],
            "kl": refined["kl"],
            "elbo_amortized": amortized["elbo"],
            "refinement_gain": sg(refined["elbo"] - amortized["elbo"]),
            "objective": objective,
        }

    def _bound_terms(self, bound: Objective, model: Any, variables: Any, family: Family, phi_k: Any,
                     amortized_phi: Any, x: jax.Array, key: jax.Array) -> Terms:
        """The terms of ``bound`` of q(z; phi_K), as ``__call__`` with the ELBO."""
        sg = jax.lax.stop_gradient
        name = bound.bound_name

        def of(v, phi):
            return terms_of_q(bound, model, v, x, key, Proposal(family.distribution(phi), family.distribution(sg(phi))))

        refined = of(variables, phi_k)
        if self.encoder_trained_separately:  # the encoder's own bound, the generative model held fixed
            amortized = of(surrogates.stop_generative(variables), amortized_phi)
            objective = refined["objective"] + amortized["objective"]
        else:
            amortized = of(variables, sg(amortized_phi))
            objective = refined["objective"]
        return {**{k: v for k, v in refined.items() if k != "objective"}, f"{name}_amortized": amortized[name],
                "refinement_gain": sg(refined[name] - amortized[name]), "objective": objective}

_DEFAULT_BOUND = OBJECTIVES.select("elbo")


def _check(settings: SemiAmortizedSettings, spec: RunSpec) -> None:
    needs_density_and_prior(settings, spec)
    posterior = spec.inference.posterior
    if not posterior.trait("refinable"):
        allowed = [c.name for c in POSTERIORS if c.trait("refinable")]
        raise ConfigError(f"objective 'semi_amortized' refines a {', '.join(allowed)} posterior, not "
                          f"{posterior.name!r}")
    if settings.bound != _DEFAULT_BOUND:
        if settings.num_samples != 1:
            raise ConfigError("config.objective.num_samples is the default ELBO's; with config.objective.bound set, "
                              "set the bound's own (e.g. config.objective.bound.num_samples)")
        b = settings.bound.settings
        if isinstance(b, ELBOSettings) and (b.beta != 1 or b.kl_warmup_epochs or b.kl_cycle_epochs or b.free_bits):
            raise ConfigError("config.objective.bound: the refined q's ELBO is the true bound; leave its beta, KL "
                              "schedules and free bits at their defaults")


@OBJECTIVES.register("semi_amortized", settings=SemiAmortizedSettings, check=_check)
def semi_amortized(settings: SemiAmortizedSettings, *, steps_per_epoch: int = 1) -> SemiAmortizedELBO:
    """The ELBO of q refined by K SVI steps per example inside the training step (SA-VAE, Kim et al. 2018)."""
    return SemiAmortizedELBO(settings, steps_per_epoch=steps_per_epoch)
