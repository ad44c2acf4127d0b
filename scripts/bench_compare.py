"""Throughput of the pieces of ``vaegen compare`` (samplers, likelihood estimation, sample metrics);
prints JSON.

Models have the study's architecture (the ``vae_mlp_fmnist`` nets, 784-200-200-50 tanh,
Bernoulli likelihood) with random parameters: only speed is measured.  Sizes default to the
``full`` preset (10,000 samples, k = 1000, 20,000 codes), the workload meant for a GPU.

    python scripts/bench_compare.py                      # full-preset sizes
    python scripts/bench_compare.py --scale 0.1          # a tenth of every size (a quick CPU check)

Every timing excludes compilation (each function runs once before it is timed).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn, *args, repeats: int = 2):
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeats


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every size")
    args = p.parse_args()
    s = lambda n: max(8, int(n * args.scale))

    from vaegen.model import autoregressive as autoregressive
    from vaegen.studies import compare as compare
    from vaegen.config import loading as config
    from vaegen.config.schema import to_spec
    from vaegen.objectives import denoising as dae
    from vaegen.runs.recipes import Fit, recipe
    from vaegen.runs.recipes import mixture as mixture_lib
    from vaegen.runs.recipes.base import _ancestral
    from vaegen.studies import metrics as metrics
    from vaegen.model import latent as model_lib
    from vaegen.objectives import bounds as objectives
    from vaegen.runs.run import Run

    event = (28, 28, 1)
    out = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "num_devices": jax.device_count(),
           "cpu": platform.processor() or platform.machine(), "jax": jax.__version__, "scale": args.scale, "results": {}}
    r = out["results"]
    key = jax.random.key(0)

    vae_spec = to_spec(config.load_config("vae_mlp_fmnist"))
    vae = model_lib.build_model(vae_spec.model, vae_spec.inference, event)
    v_vae = model_lib.init_params(vae, key, event)
    n = s(10000)
    dt = _time(lambda k: _ancestral(vae, n, v_vae, k), key)
    r["vae_ancestral_samples_per_second"] = n / dt

    ae_spec = to_spec(config.load_config("ae_mlp_fmnist"))
    ae = model_lib.build_model(ae_spec.model, ae_spec.inference, event)
    v_ae = model_lib.init_params(ae, key, event)
    codes = np.random.RandomState(0).normal(size=(s(20000), 50))
    t = time.perf_counter()
    mixture = mixture_lib.fit_mixture(codes, num_components=10, seed=0)
    r["gmm_fit_seconds"] = {"seconds": time.perf_counter() - t, "num_codes": codes.shape[0], "latent_dim": 50}
    run = Run(workdir=None, spec=ae_spec, model=ae, variables=v_ae, event_shape=event, epoch=0, info={})
    gen = recipe("gmm").attach(run, Fit("gmm", value=mixture, code_scale=codes.std(0)))
    dt = _time(lambda k: _ancestral(gen.model, n, gen.variables, k), key)
    r["ae_gmm_ancestral_samples_per_second"] = n / dt

    xs = (jax.random.uniform(jax.random.key(1), (s(1000),) + event) > 0.5).astype(jnp.float32)
    k = 1000
    chunk = max(1, min(500, 50_000 // k))
    for name, g in (("vae", (vae, v_vae)), ("ae_gmm", (gen.model, gen.variables))):
        iwae = objectives.IWAE(objectives.IWAESettings(num_samples=k))
        dt = _time(lambda x, kk: compare._per_example(g[0], iwae, chunk, g[1], x, kk), xs, key, repeats=1)
        r[f"{name}_is_k{k}_examples_per_second"] = xs.shape[0] / dt

    chains, steps = s(2000), 100
    dt = _time(lambda kk: dae.sample_chain(ae, v_ae, kk, chains, num_steps=steps, corruption="salt_and_pepper",
                                           noise_level=0.3, event_shape=event)["x"], key, repeats=1)
    r["dae_chain_steps_per_second"] = {"value": chains * steps / dt, "chains": chains, "steps": steps}

    for hidden in ((500,), (1000, 1000)):
        made = autoregressive.MADE(event_shape=event, settings=autoregressive.MADESettings(hidden=hidden))
        v_made = made.init(key, jnp.zeros(event))
        m = s(2000)
        f = jax.jit(lambda v, kk: made.apply(v, kk, m, method="sample_with_probs")[0])
        dt = _time(f, v_made, key, repeats=1)
        r[f"made_{'x'.join(map(str, hidden))}_samples_per_second"] = m / dt

    feats_a = np.random.RandomState(1).normal(size=(s(10000), 128)).astype(np.float32)
    feats_b = np.random.RandomState(2).normal(size=(s(10000), 128)).astype(np.float32)
    t = time.perf_counter()
    metrics.frechet_distance(feats_a, feats_b)
    r["frechet_distance_seconds"] = time.perf_counter() - t
    metrics.precision_recall(feats_a[:64], feats_b[:64])
    t = time.perf_counter()
    metrics.precision_recall(feats_a, feats_b, k=3)
    r["precision_recall_seconds"] = {"seconds": time.perf_counter() - t, "n": feats_a.shape[0]}
    z = np.random.RandomState(3).normal(size=(s(10000), 50)).astype(np.float32)
    t = time.perf_counter()
    metrics.prior_mass_off_codes(codes.astype(np.float32), z)
    r["prior_mass_off_codes_seconds"] = {"seconds": time.perf_counter() - t, "codes": codes.shape[0], "prior_samples": z.shape[0]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
