"""The ``optim`` section of a config: the optimiser and its learning-rate schedule
(:func:`vaegen.train.optim.make_optimizer` builds the optax transformation it describes)."""

from __future__ import annotations

import dataclasses

from vaegen.errors import ConfigError
from vaegen.registry import Settings, setting


@dataclasses.dataclass(frozen=True)
class OptimSettings(Settings):
    """The ``optim`` section."""

    optimizer: str = setting("adam", "adam | adamw | sgd", choices=("adam", "adamw", "sgd"))
    learning_rate: float = setting(1e-3, "the (peak) learning rate", gt=0)
    b1: float = setting(0.9, "Adam's first-moment decay", ge=0, lt=1)
    b2: float = setting(0.999, "Adam's second-moment decay", ge=0, lt=1)
    eps: float = setting(1e-8, "Adam's epsilon (> 0: a finite gradient then gives a finite update)", gt=0)
    weight_decay: float = setting(0.0, "adamw only", ge=0)
    momentum: float = setting(0.0, "sgd only", ge=0)
    schedule: str = setting("constant", "constant | cosine | exponential | stages (piecewise constant: learning_rate "
                            "* stage_factors[i] for stage_epochs[i] epochs; the IWAE paper's 3^i epochs at 10^(-i/7))",
                            choices=("constant", "cosine", "exponential", "stages"))
    stage_epochs: tuple[int, ...] = setting((1, 3, 9, 27, 81, 243, 729, 2187), "stages: epochs of each stage",
                                            items_gt=0, nonempty=True)
    stage_factors: tuple[float, ...] = setting((1.0, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1),
                                               "stages: learning-rate factor of each stage", items_gt=0, nonempty=True)
    warmup_epochs: float = setting(0.0, "linear learning-rate warm-up", ge=0)
    decay_rate: float = setting(0.1, "exponential: factor per decay_epochs", gt=0)
    decay_epochs: float = setting(100.0, "exponential: period of decay_rate; cosine: length of the decay", gt=0)
    final_lr_fraction: float = setting(0.0, "cosine: final lr / initial lr", ge=0)
    grad_clip_norm: float = setting(0.0, "clip the gradient's global norm (0 = no clipping)", ge=0)
    normalize_gradients: str = setting("none", "none | per_tensor: each parameter's gradient scaled to unit norm "
                                       "(the VampPrior code's AdamNormGrad) | global: the whole gradient",
                                       choices=("none", "per_tensor", "global"))

    def validate(self, key):
        if len(self.stage_epochs) != len(self.stage_factors):
            raise ConfigError(f"{key('stage_epochs')} and stage_factors must be non-empty and of equal length, got "
                              f"{len(self.stage_epochs)} and {len(self.stage_factors)}")
