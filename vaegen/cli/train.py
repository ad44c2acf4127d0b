"""``vaegen train``: train a model from a preset or a config file (resumes from a checkpoint)."""

from __future__ import annotations

import os

from vaegen import sharding as sharding_lib
from vaegen.cli.common import non_negative_int, positive_int
from vaegen.config import loading as config_lib
from vaegen.config.schema import to_spec
from vaegen.train import trainer as trainer_lib


def cmd_train(args, overrides) -> int:
    sharding_lib.initialize_distributed(coordinator_address=args.coordinator_address,
                                        num_processes=args.num_processes, process_id=args.process_id)
    spec = to_spec(config_lib.load_config(args.config, overrides))
    workdir = args.workdir or os.path.join("runs", args.config.split(":")[0].split("/")[-1].removesuffix(".py"))
    last = trainer_lib.train_and_evaluate(spec, workdir)
    if not sharding_lib.is_primary():
        return 0
    bound = spec.objective.build().bound_name
    finished_before = getattr(last, "finished_before", False)
    if finished_before:
        why = (f"it stopped early at epoch {last.checkpoint_epoch} (config.train.early_stopping_patience="
               f"{spec.train.early_stopping_patience})" if last.stopped_early else
               f"its checkpoint of epoch {last.checkpoint_epoch} is the last of config.train.num_epochs="
               f"{spec.train.num_epochs}")
        print(f"{workdir} is trained already: {why}; nothing was done (to train longer, raise "
              f"--config.train.num_epochs; to evaluate it: vaegen evaluate --workdir {workdir})")
    if last:
        val = last.get(f"validation/{bound}")
        train = last.get(f"train/{bound}")
        msg = (f"epoch {last['epoch']}" + (" (trained before)" if finished_before else "") + f": train {bound} "
               + ("nan" if train is None else f"{train:.3f}") + " nats")
        if val is not None:
            msg += f", validation {bound} {val:.3f} nats"
        print(msg)
    print(f"workdir: {workdir}")
    return 0


def add(sub) -> None:
    t = sub.add_parser("train", help="train a model (resumes if the workdir has a checkpoint)",
                       description="Train a model. Any config key can be overridden with --config.KEY=VALUE "
                                   "(e.g. --config.model.latent_dim=2); unknown keys are errors.")
    t.add_argument("--config", required=True, help="preset name (see `vaegen config`) or path to a config .py, optionally :ARG")
    t.add_argument("--workdir", help="run directory (default runs/<preset>)")
    dist = t.add_argument_group("multi-host (docs/scaling.md); detected automatically on SLURM, Open MPI and Cloud TPU")
    dist.add_argument("--coordinator-address", help="host:port of process 0, for jax.distributed")
    dist.add_argument("--num-processes", type=positive_int, help="number of processes (hosts)")
    dist.add_argument("--process-id", type=non_negative_int, help="this process's index, 0 .. num-processes - 1")
    t.set_defaults(func=cmd_train, accepts_overrides=True)
