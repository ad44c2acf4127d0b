"""Semi-amortized variational inference (Kim et al. 2018) as a training objective: K SVI steps on
each example's ELBO inside the training step, from the encoder's q (or from N(0, I))."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vaegen.errors import ConfigError
from vaegen.inference.families import Family, amortized_parameters, family_of
from vaegen.inference.svi import SVISettings, refine
from vaegen.objectives.base import Objective
from vaegen.objectives.bounds import elbo_of, needs_density_and_prior, require_density
from vaegen.registry import OBJECTIVES, POSTERIORS, Settings, setting
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

    Attributes:
      settings: :class:`SemiAmortizedSettings`: K = ``steps``, the inner optimiser (``learning_rate``,
        ``optimizer``, ``momentum``, ``step_samples`` samples of z per step, ``grad_clip_norm``), the
        ``init`` (``amortized`` | ``prior``), the ``gradient`` (``unrolled`` | ``total`` | ``stop``),
        and S = ``num_samples`` samples of z for the final bound.
      family: the family refined; None = the family of the model's q(z | x).
    """

    settings: SemiAmortizedSettings = SemiAmortizedSettings()
    family: Family | None = None
    bound_name = "elbo"

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
        return self.settings.num_samples

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


def _check(settings: SemiAmortizedSettings, spec: RunSpec) -> None:
    needs_density_and_prior(settings, spec)
    posterior = spec.inference.posterior
    if not posterior.trait("refinable"):
        allowed = [c.name for c in POSTERIORS if c.trait("refinable")]
        raise ConfigError(f"objective 'semi_amortized' refines a {', '.join(allowed)} posterior, not "
                          f"{posterior.name!r}")


@OBJECTIVES.register("semi_amortized", settings=SemiAmortizedSettings, check=_check)
def semi_amortized(settings: SemiAmortizedSettings, *, steps_per_epoch: int = 1) -> SemiAmortizedELBO:
    """The ELBO of q refined by K SVI steps per example inside the training step (SA-VAE, Kim et al. 2018)."""
    del steps_per_epoch
    return SemiAmortizedELBO(settings)
