"""The ``eval`` section of a config: which estimators ``vaegen evaluate`` runs, and their settings
(:class:`EvalSettings`, with the AIS settings :class:`AISSettings` that
:class:`vaegen.estimators.ais.AIS` holds); also the held-out bound the trainer tracks at every
validation."""

from __future__ import annotations

import dataclasses

from vaegen.errors import ConfigError
from vaegen.registry import ESTIMATORS, Settings, setting

SCHEDULES = ("linear", "sigmoid")
"""The inverse-temperature schedules of AIS (:func:`vaegen.estimators.ais.annealing_schedule`)."""
STARTS = ("prior", "posterior")
"""Where importance sampling's proposal and AIS's chains start: p(z) or q(z | x)."""


def parse_estimators(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"elbo,is"`` or ``["elbo", "is"]`` (or ``"all"``) -> the registered estimators asked for, in
    registration order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    registered = _in_order()
    if names == ["all"]:
        return tuple(registered)
    unknown = [n for n in names if n not in registered]
    if unknown or not names:
        raise ConfigError(f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(registered)} or 'all'")
    return tuple(e for e in registered if e in names)


def _in_order() -> list[str]:
    """The registered estimators in their ``order`` (the order of their results)."""
    return [c.name for c in sorted(ESTIMATORS, key=lambda c: c.trait("order"))]


@dataclasses.dataclass(frozen=True)
class AISSettings(Settings):
    """The ``eval.ais`` section: annealed importance sampling with HMC
    (:class:`vaegen.estimators.ais.AIS`)."""

    num_steps: int = setting(1000, "T intermediate distributions", gt=0, flags=("--ais-steps",))
    num_chains: int = setting(16, "M chains per example", gt=0, flags=("--ais-chains",))
    num_leapfrog: int = setting(10, "leapfrog steps per HMC transition", gt=0, flags=("--leapfrog",))
    step_size: float = setting(0.01, "initial leapfrog step size", gt=0, flags=("--step-size",))
    adapt_step_size: bool = setting(True, "adapt each chain's step size toward target_accept",
                                   flags=("--adapt-step-size",))
    target_accept: float = setting(0.65, "the acceptance rate the step size adapts toward", gt=0, lt=1,
                                   flags=("--target-accept",))
    adapt_rate: float = setting(0.02, "step sizes are multiplied by 1 +- adapt_rate per transition", ge=0, lt=1)
    min_step_size: float = setting(1e-4, "lower bound of an adapted step size", gt=0)
    max_step_size: float = setting(0.5, "upper bound of an adapted step size", gt=0)
    schedule: str = setting("sigmoid", "inverse temperatures: sigmoid (more at both ends) or linear", choices=SCHEDULES,
                            flags=("--schedule",))
    sigmoid_radius: float = setting(4.0, "steepness of the sigmoid schedule", gt=0)
    start: str = setting("prior", "pi_0 of the annealing path: prior p(z) or posterior q(z|x)", choices=STARTS)

    def validate(self, key):
        if self.max_step_size < self.min_step_size:
            raise ConfigError(f"{key('max_step_size')} must be >= {key('min_step_size')}")


@dataclasses.dataclass(frozen=True)
class EvalSettings(Settings):
    """The ``eval`` section: the estimators of ``vaegen evaluate`` and the validation bound of training."""

    estimators: str = setting("elbo,iwae,is,diagnostics", "comma-separated estimators of `vaegen evaluate` (see "
                              "`vaegen config --components estimator`) or 'all'")
    num_samples: int = setting(1000, "k: importance samples per example for log p(x) and IWAE_k", gt=0,
                               flags=("--k",))
    ks: tuple[int, ...] = setting((1, 10, 100), "IWAE-k bounds from the importance-sampling pass (k above "
                                  "num_samples skipped)", items_gt=0)
    chunk_size: int = setting(0, "importance samples drawn at once per example (0 = min(k, 1024)); memory only", ge=0)
    is_proposal: str = setting("posterior", "the proposal of importance sampling: posterior q(z|x) or prior p(z)",
                               choices=STARTS)
    elbo_samples: int = setting(1, "z ~ q(z|x) per example for the ELBO's reconstruction term and the distortion",
                                gt=0)
    mi_samples: int = setting(1, "z ~ q(z|x) per example for the I_q(x; z) estimate", gt=0)
    active_unit_threshold: float = setting(0.01, "unit d is active if Var_x E_q[z_d|x] > this (Burda et al. 2016)",
                                           ge=0)
    collapse_threshold: float = setting(0.01, "nats: a unit with mean KL(q(z_d|x) || p(z_d)) below this is collapsed",
                                        ge=0)
    ais: AISSettings = dataclasses.field(default_factory=AISSettings,
                                         metadata={"doc": "annealed importance sampling with HMC"})
    ais_examples: int = setting(0, "AIS on the first n examples of the split only (0 = all)", ge=0)
    bdmc_examples: int = setting(100, "examples (x, z) simulated from the model for BDMC", ge=0)
    batch_size: int = setting(100, "examples per vmapped chunk of the validation pass in training (memory only)",
                              gt=0)
    validation_num_samples: int = setting(1, "k of the bound tracked on the validation set in training", gt=0)

    TRAINING_ONLY = ("batch_size", "validation_num_samples")
    """Settings of the validation pass in training, not of `vaegen evaluate` (which has no flag for them)."""

    def validate(self, key):
        if ESTIMATORS.names():  # the registry is filled once vaegen is imported
            try:
                parse_estimators(self.estimators)
            except ConfigError as e:
                raise ConfigError(f"{key('estimators')}: {e}") from None
