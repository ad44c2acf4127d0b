"""Start-up of ``vaegen train`` with a cold and a warm persistent compilation cache; prints JSON.

Each round runs ``vaegen train --config <preset> --config.train.num_epochs=1`` in a fresh process
and a fresh workdir, first with an empty cache directory (cold: every program compiled), then
again with the same directory (warm: the programs loaded).  ``startup_seconds`` is the process's
wall time minus the epoch's own training time (``epoch_seconds`` of metrics.jsonl): imports,
data loading, initialisation, compilation (``compile_seconds``: the training step) and the
validation and checkpoint of the epoch.

    python scripts/bench_startup.py                          # vae_mlp_fmnist, 3 rounds
    python scripts/bench_startup.py --config tiny --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

VAEGEN = pathlib.Path(sys.executable).with_name("vaegen")


def one_run(config: str, cache: pathlib.Path, workdir: pathlib.Path, extra: list[str]) -> dict:
    env = {**os.environ, "VAEGEN_COMPILATION_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [str(VAEGEN), "train", "--config", config, "--workdir", str(workdir), "--config.train.num_epochs=1",
           "--config.train.progress=False", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    line = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    return {"wall_seconds": wall, "epoch_seconds": line["epoch_seconds"],
            "compile_seconds": line.get("compile_seconds", 0.0), "startup_seconds": wall - line["epoch_seconds"],
            "cache_files": sum(1 for _ in cache.rglob("*") if _.is_file())}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vae_mlp_fmnist")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="--config.KEY=VALUE overrides, repeatable")
    args = p.parse_args()
    runs = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="vaegen-startup-") as tmp:
        for r in range(args.rounds):
            cache = pathlib.Path(tmp) / f"cache{r}"
            for kind in ("cold", "warm"):
                runs[kind].append(one_run(args.config, cache, pathlib.Path(tmp) / f"run{r}_{kind}", args.set))
    out = {"config": args.config, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "rounds": args.rounds}
    for kind, rs in runs.items():
        out[kind] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        out[kind]["startup_seconds_all"] = [round(r["startup_seconds"], 2) for r in rs]
    out["startup_speedup_median"] = out["cold"]["startup_seconds"] / out["warm"]["startup_seconds"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
