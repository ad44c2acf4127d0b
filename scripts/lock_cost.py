"""What the workdir lock costs: prints one JSON object.

Trains ``--epochs`` epochs of a preset in a temporary workdir (``vaegen.train_and_evaluate``,
which holds the lock once for the whole command), takes the training step time from its
``metrics.jsonl`` (the last epoch's ``steps_per_second``), and times ``--repeats`` acquisitions
and releases of :func:`vaegen.train.workdir.lock` in the same process (median).

Usage::

    python scripts/lock_cost.py --config vae_mlp_fmnist --epochs 2 --repeats 500
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vae_mlp_fmnist")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=500)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()

    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.train import trainer as train_lib
    from vaegen.train import workdir as workdir_lib

    with tempfile.TemporaryDirectory() as d:
        spec = to_spec(config_lib.load_config(args.config, [f"train.num_epochs={args.epochs}", "train.progress=False",
                                                            *args.overrides]))
        run = pathlib.Path(d) / "run"
        train_lib.train_and_evaluate(spec, run)
        last = workdir_lib.read_jsonl(run / workdir_lib.METRICS_FILE)[-1]
        step_s = 1.0 / last["steps_per_second"]
        seconds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            with workdir_lib.lock(run):
                pass
            seconds.append(time.perf_counter() - t)
    lock_s = float(np.median(seconds))
    print(json.dumps({"config": args.config, "overrides": args.overrides, "step_seconds": step_s,
                      "lock_acquire_release_seconds_median": lock_s, "lock_in_steps": lock_s / step_s,
                      "lock_acquire_release_seconds_p99": float(np.percentile(seconds, 99))}, indent=2))


if __name__ == "__main__":
    main()
