"""Every accelerator speed target of vaegen measured in one call: trainer, estimators, q*.

Runs the three benchmark scripts one after another, each under its own time limit, keeps each
one's JSON and log in ``--out``, and writes ``summary.json``: every target with its measured
value and whether it was met.  The stages' time limits add up to 570 s, so that one command on a
lent GPU machine (at most 600 s) measures everything; how long they take there is not measured yet:

    python scripts/device_check.py --out $OUT                 # on the GPU machine
    python scripts/device_check.py --out $OUT --only compare_full   # a second call: the comparison, full preset
    python scripts/device_check.py --out /tmp/dc --tiny       # a CPU smoke run of the same path

Targets (one NVIDIA H100; ``docs/speed.md``): the trainer of the 784-200-200-50 MLP VAE at >= 1.2M
examples/s at batch 128 and >= 5.5M at batch 1024 (``bench_train.py``); importance sampling with
k = 5000 over 10,000 test images in <= 1 s, AIS (1000 steps x 16 chains x 10 leapfrog) over
10,000 images in minutes (``bench_eval.py``; without a prepared dataset it times random binary
images, recorded as ``data``); per-example q* for 10,000 images x 500 Adam steps in <= 60 s
(``bench_inference.py``).

Only the standard library is imported here; the benchmarks run as subprocesses with this
interpreter, so packages carried as wheels must be on ``PYTHONPATH`` (``scripts/device_wheels.sh``
downloads the ones a bare GPU image lacks).  The comparison study needs Fashion-MNIST, which a bare
image cannot prepare (no tensorflow-datasets, no network): ``scripts/device_data.py`` copies the
prepared dataset's cached arrays into ``.device-data/`` (carried with the wheels), which this script
points ``TFDS_DATA_DIR`` at.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name: (arguments, arguments with --tiny, time limit in seconds)
STAGES = {
    "bench_train": (["scripts/bench_train.py", "--batch-sizes", "128,1024", "--repeats", "5",
                     "--baselines", "jax_step_loop"],
                    ["scripts/bench_train.py", "--batch-sizes", "1024", "--repeats", "1", "--baselines", ""], 150),
    "bench_eval": (["scripts/bench_eval.py", "--n-images", "10000", "--k", "5000", "--synthetic-if-missing"],
                   ["scripts/bench_eval.py", "--n-images", "16", "--k", "50", "--ks", "1,10", "--ais-images", "4",
                    "--ais-steps", "5", "--ais-chains", "2", "--leapfrog", "2", "--skip-bare",
                    "--synthetic-if-missing"], 300),
    "bench_inference": (["scripts/bench_inference.py", "--num-examples", "10000", "--steps", "500", "--family", "diag"],
                        ["scripts/bench_inference.py", "--num-examples", "16", "--steps", "5", "--family", "diag",
                         "--eval-samples", "4"], 120),
    # The comparison study's full preset (every model up to 100 epochs, early-stopped, 3 seeds, k = 1000 on the
    # whole test set), within a budget: seed 0 first, then every further seed that fits; the report says what was
    # skipped.  Sized from the trainer's target (1.2M examples/s at batch 128: 100 epochs of 50,000 images in about
    # 4 s plus compilation per model, 17 models in about 5 minutes per seed): seed 0 and its rows fit in 8.5 min.
    "compare_full": (["-m", "vaegen.cli", "compare", "--preset", "full", "--workdir", "runs/compare-full", "--budget",
                      "8.5", "--no-progress"],
                     ["-m", "vaegen.cli", "compare", "--preset", "tiny", "--workdir", "runs/compare-tiny", "--only",
                      "vae,ae", "--seeds", "2", "--no-progress"], 560),
}
DEFAULT_STAGES = ("bench_train", "bench_eval", "bench_inference")
"""The stages of one call (570 s in all); ``--only compare_full`` is the second call, the study's full preset."""
STUDY_DIRS = {"compare_full": ("runs/compare-full", "runs/compare-tiny")}
"""Stages whose result is a study's ``results.json`` and ``report/`` (copied into ``--out``), not stdout."""


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def targets(results: dict) -> list[dict]:
    """Each target with its measured value (``None`` where the stage failed) and whether it was met
    (``None`` where it was not measured at the target's own sizes, as in a ``--tiny`` run)."""
    train, ev, inf = results.get("bench_train") or {}, results.get("bench_eval") or {}, results.get("bench_inference") or {}
    rows = []

    def add(name, value, unit, goal, met, at_size):
        rows.append({"target": name, "value": value, "unit": unit, "goal": goal,
                     "met": bool(met(value)) if value is not None and at_size else None})

    for batch, goal in ((128, 1.2e6), (1024, 5.5e6)):
        v = _get(train, "results", f"batch_{batch}", "vaegen", "examples_per_second_best")
        add(f"trainer, batch {batch}", v, "examples/s", f">= {goal:,.0f}", lambda x, g=goal: x >= g, True)
    is_size = ev.get("n_images") == 10000 and ev.get("k") == 5000
    add("importance sampling, k = 5000, 10,000 images", _get(ev, "is", "seconds"), "s", "<= 1",
        lambda x: x <= 1.0, is_size)
    ais = _get(ev, "ais") or {}
    ais_size = is_size and (ais.get("num_steps"), ais.get("num_chains"), ais.get("num_leapfrog")) == (1000, 16, 10)
    add("AIS 1000 steps x 16 chains x 10 leapfrog, 10,000 images", ais.get("projected_seconds_for_10000_images"),
        "s", "minutes (<= 600)", lambda x: x <= 600.0, ais_size)
    diag = next((r for r in _get(inf, "results") or [] if r.get("family") == "diag"), None)
    add("q*, 10,000 images x 500 steps", None if diag is None else diag["seconds"], "s", "<= 60",
        lambda x: x <= 60.0, (inf.get("num_examples"), inf.get("steps")) == (10000, 500))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("OUT", "runs/device_check")))
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of the same path on a CPU")
    p.add_argument("--only", help="comma-separated stages (default all): " + ", ".join(STAGES))
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",")] if args.only else list(DEFAULT_STAGES)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        p.error(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH", "")) if x)
    if (ROOT / ".device-data").is_dir():    # Fashion-MNIST copied by scripts/device_data.py (no TFDS on the image)
        env["TFDS_DATA_DIR"] = str(ROOT / ".device-data")
    results, stages = {}, {}
    for name in names:
        full, tiny, limit = STAGES[name]
        cmd = [sys.executable, *(tiny if args.tiny else full)]
        t = time.perf_counter()
        with open(args.out / f"{name}.log", "w") as log:
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                      timeout=limit)
                status, stdout = ("ok" if proc.returncode == 0 else f"exit {proc.returncode}"), proc.stdout
            except subprocess.TimeoutExpired as e:
                status, stdout = f"timed out after {limit} s", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        seconds = time.perf_counter() - t
        if name in STUDY_DIRS:      # the study's results and report, small enough to bring back
            study = ROOT / STUDY_DIRS[name][1 if args.tiny else 0]
            if (study / "results.json").is_file():
                shutil.copytree(study / "report", args.out / name / "report", dirs_exist_ok=True)
                stdout = (study / "results.json").read_text()
        try:
            results[name] = json.loads(stdout[stdout.index("{"):]) if "{" in stdout else None
        except ValueError:
            results[name] = None
        if results[name] is not None:
            (args.out / f"{name}.json").write_text(json.dumps(results[name], indent=2) + "\n")
        elif status == "ok":
            status = "no JSON on stdout"
        stages[name] = {"command": " ".join(cmd[1:]), "status": status, "seconds": round(seconds, 1)}
        print(f"[device_check] {name}: {status} in {seconds:.0f} s", flush=True)

    summary = {"tiny": args.tiny, "stages": stages, "targets": targets(results),
               "device": _get(results, "bench_eval", "device") or _get(results, "bench_train", "device")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(s["status"] == "ok" for s in stages.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
