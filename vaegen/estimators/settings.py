"""The ``eval`` section of a config: which estimators ``vaegen evaluate`` runs, and their settings
(:class:`EvalSettings`); also the held-out bound the trainer tracks at every validation."""

from __future__ import annotations

import dataclasses

from vaegen.errors import ConfigError
from vaegen.estimators.ais import AIS, STARTS
from vaegen.registry import ESTIMATORS, Settings, setting


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
    return [c.name for c in sorted(ESTIMATORS, key=lambda c: c.trait("order", 0))]


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
    ais: AIS = dataclasses.field(default_factory=AIS, metadata={"doc": "annealed importance sampling with HMC"})
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
