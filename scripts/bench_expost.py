"""Fit time and sampling throughput of the learned ex-post densities (flow, second-stage VAE, latent
diffusion) on 50,000 codes in 50-D; prints JSON.

The codes are synthetic and known: a mixture of 10 Gaussians in 50-D with random full covariances
(codes of a trained AE look like that: clustered and correlated), 50,000 to fit to and 10,000 held
out.  Each density is fitted by vaegen's trainer (:meth:`vaegen.runs.recipes.learned.LearnedDensity.fit_codes`) with the
compare study's ``quick`` settings; reported are the fit's wall seconds (compilation included, and
split out), its held-out log p(z) (exact / estimate / bound, labelled), samples/s (after a
warm-up call, so without compilation) and the Fréchet distance between 10,000 samples and the
held-out codes (in code space, lower is better).  The diffusion sampler is timed at several step
counts, each with the FD its samples give.

    python scripts/bench_expost.py                               # 50,000 codes, 50-D, 10 epochs
    python scripts/bench_expost.py --num-codes 5000 --epochs 2   # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time

import jax
import numpy as np

from vaegen.runs.recipes.learned import DensityFit
from vaegen.studies import compare
from vaegen.studies import metrics as metrics_lib


def synthetic_codes(n: int, d: int, seed: int = 0, clusters: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(clusters, d)) * 2.0
    factors = rng.normal(size=(clusters, d, d)) / np.sqrt(d) * rng.uniform(0.3, 1.0, size=(clusters, 1, d))
    k = rng.integers(0, clusters, size=n)
    eps = rng.normal(size=(n, d))
    return (means[k] + np.einsum("nij,nj->ni", factors[k], eps)).astype(np.float32)


def _samples_per_second(fitted: DensityFit, n: int, seed: int = 0) -> tuple[float, np.ndarray]:
    fn = jax.jit(lambda k: fitted.sample(k, n))
    jax.block_until_ready(fn(jax.random.key(seed + 1)))          # compile
    t = time.perf_counter()
    z = jax.block_until_ready(fn(jax.random.key(seed)))
    return n / (time.perf_counter() - t), np.asarray(z)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-codes", type=int, default=50000)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--samples", type=int, default=10000, help="samples for throughput and FD")
    p.add_argument("--steps", default="10,50,200", help="diffusion sampler step counts")
    p.add_argument("--densities", default="flow,two_stage,diffusion")
    args = p.parse_args()
    study = compare.study_settings("quick")
    codes = synthetic_codes(args.num_codes + 10000, args.dim)
    train, held = codes[:args.num_codes], codes[args.num_codes:]
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "jax_backend": jax.default_backend(), "jax": jax.__version__},
           "codes": {"num": args.num_codes, "dim": args.dim, "held_out": int(held.shape[0]),
                     "kind": "synthetic: 10-component Gaussian mixture, random full covariances"},
           "fd_held_out_vs_train": metrics_lib.frechet_distance(train[:args.samples], held[:args.samples]),
           "densities": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [d for d in args.densities.split(",") if d]:
            density = compare.expost_recipe(study, name).build()   # the quick study's settings of the density
            density = dataclasses.replace(density, settings=dataclasses.replace(
                density.settings, epochs=args.epochs, validate_every=0, checkpoint_every=args.epochs))
            t = time.perf_counter()
            fitted = density.fit_codes(train, held[:2000], f"{tmp}/{name}")
            seconds = time.perf_counter() - t
            metrics = [json.loads(l) for l in open(f"{tmp}/{name}/metrics.jsonl")]
            row = {"fit_seconds": seconds, "compile_seconds": sum(m.get("compile_seconds", 0.0) for m in metrics),
                   "train_steps_per_second": float(np.mean([m["steps_per_second"] for m in metrics])),
                   "epochs": args.epochs, "settings": fitted.info["settings"],
                   "held_out_log_pz": fitted.info["validation_log_pz"],
                   "held_out_log_pz_stderr": fitted.info["validation_log_pz_stderr"],
                   "log_pz_is": fitted.info["log_pz_meaning"], "log_pz_mc_std": fitted.info["log_pz_mc_std"]}
            if name == "diffusion":
                row["sampler"] = {}
                for steps in [int(s) for s in args.steps.split(",") if s]:
                    f = fitted.with_settings(sample_steps=steps)
                    rate, z = _samples_per_second(f, args.samples)
                    row["sampler"][str(steps)] = {"samples_per_second": rate,
                                                  "fd_to_held_out": metrics_lib.frechet_distance(held[:args.samples], z)}
            else:
                rate, z = _samples_per_second(fitted, args.samples)
                row["samples_per_second"] = rate
                row["fd_to_held_out"] = metrics_lib.frechet_distance(held[:args.samples], z)
            out["densities"][name] = row
            print(json.dumps({name: row}, default=float), flush=True)
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
