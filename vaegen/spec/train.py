"""The ``train`` section of a config: how the one trainer (:mod:`vaegen.train.trainer`) runs."""

from __future__ import annotations

import dataclasses

from vaegen.registry import Settings, setting


@dataclasses.dataclass(frozen=True)
class TrainSettings(Settings):
    """The ``train`` section."""

    batch_size: int = setting(128, "global batch, split over all devices", gt=0)
    num_epochs: int = setting(10, "one epoch = one fused device call (lax.scan over its steps)", gt=0)
    eval_every_epochs: int = setting(1, "validation bound every n epochs (0 = never)", ge=0)
    checkpoint_every_epochs: int = setting(1, "an end-of-epoch checkpoint every n epochs (and the last)", gt=0)
    early_stopping_patience: int = setting(0, "stop after this many validations without improvement (0 = never); "
                                           "the best parameters are kept in <workdir>/best/ and loaded by default",
                                           ge=0)
    early_stopping_min_epochs: int = setting(0, "no stopping (and no patience counted) before this epoch (KL "
                                             "warm-up)", ge=0)
    keep_checkpoints: int = setting(2, "end-of-epoch checkpoints kept", gt=0)
    progress: bool = setting(True, "progress bar")
    max_consecutive_skips: int = setting(10, "this many consecutive steps with a non-finite loss or gradient (each "
                                         "skipped on the device) stop the run", gt=0)
    steps_per_call: int = setting(0, "steps per device call (0 = a whole epoch); SIGINT/SIGTERM wait for the call "
                                  "to return; results do not depend on it", ge=0)
    handle_signals: bool = setting(True, "SIGINT/SIGTERM: save a checkpoint and stop (main thread only)")
    tensorboard: bool = setting(True, "TensorBoard event files in <workdir>/tensorboard: every number of "
                                "metrics.jsonl, and image grids at each validation")
    latent_health_examples: int = setting(1000, "at each validation, the latent diagnostics (active units, KL per "
                                          "unit, rate, distortion, I_q(x;z)) on the first n validation examples, "
                                          "into metrics.jsonl as latent/...; 0 = none", ge=0)
    tensorboard_images: int = setting(16, "images in each TensorBoard grid (samples, reconstructions) at each "
                                      "validation; 0 = scalars only", ge=0)
