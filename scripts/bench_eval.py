"""Benchmark of the likelihood estimators on the 784-200-200-50 MLP VAE; prints one JSON object.

Measures, on whatever device JAX finds (GPU, TPU or CPU):

* ``is``: importance-sampled log p(x) with k samples over n test images
  (:func:`vaegen.estimators.importance.importance_sampling`, IWAE-k bounds of ``--ks`` from the same pass);
* ``bare_is``: the same estimate written as bare JAX (one jitted ``lax.map`` over batches of
  examples, no chunking over k, no distrax/flax), the reference point for the library's overhead;
* ``ais``: forward AIS with HMC (``--ais-steps`` distributions, ``--ais-chains`` chains,
  ``--leapfrog`` steps) on ``--ais-images`` images, and its projection to ``--n-images``.

Each is timed twice: the first call includes compilation, the second is the steady state.
Peak memory: the host's maximum resident set size, and the device's peak bytes where the
backend reports it.

Examples::

    # the targets: one H100, 10,000 test images
    python scripts/bench_eval.py --n-images 10000 --k 5000 --ais-images 10000
    # a 2-core CPU: k = 5000 over 1,000 images, AIS on 20 images
    python scripts/bench_eval.py --n-images 1000 --k 5000 --ais-images 20

``--workdir W`` benchmarks a trained run instead of the preset's freshly initialised network
(the cost is the same; the estimates are then meaningful).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout this script belongs to

import jax
import jax.numpy as jnp
import numpy as np


def _peak_device_bytes() -> int | None:
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 -- not every backend reports memory
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _host_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _timed(f):
    t = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t


def _model_and_data(args):
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.data import binarization
    from vaegen.data import splits as splits_lib
    from vaegen.model import latent as model_lib
    from vaegen.runs import run as run_lib
    from vaegen.train import trainer as train_lib

    if args.workdir:
        run = run_lib.restore(args.workdir)
        spec, model, variables = run.spec, run.model, run.variables
    else:
        spec = to_spec(config_lib.load_config(args.config))
    protocol = splits_lib.split_protocol(spec.data, "test")
    try:
        splits = train_lib.load_data(spec)
        test, train, source = splits.test, splits.train, f"{spec.data.name} test split"
    except Exception as e:  # e.g. no prepared dataset on an offline GPU machine
        if args.workdir or not args.synthetic_if_missing:
            raise
        # Random binary images of the dataset's shape: the timings do not depend on the pixels.
        test = (np.random.RandomState(0).rand(10000, 28, 28, 1) < 0.3).astype(np.uint8) * np.uint8(255)
        train, source = test, f"random binary 28x28 images ({spec.data.name} unavailable: {type(e).__name__})"
    reps = -(-args.n_images // test.shape[0])
    x_u8 = np.concatenate([test] * reps)[: args.n_images]
    xs = binarization.to_float(None, splits_lib.stored_split(spec.data, x_u8, "test"), protocol)
    if not args.workdir:
        event_shape = tuple(test.shape[1:])
        model = model_lib.build_model(spec.model, spec.inference, event_shape)
        variables = model_lib.init_params(model, jax.random.key(0), event_shape)
        variables = model_lib.set_output_bias(variables, model, binarization.data_mean(train, protocol))
    return spec, model, variables, xs, source


def _bare_is(params, xs, key, k, batch):
    """IS with k samples of q(z|x) for a tanh MLP VAE (Bernoulli p(x|z), N(0, I) p(z)), in bare JAX."""
    enc, dec = params

    def mlp(layers, h):
        for w, b in layers[:-1]:
            h = jnp.tanh(h @ w + b)
        return h

    def one(args):
        i, x = args
        x = x.reshape(-1)
        h = mlp(enc, x)
        (wl, bl), (ws, bs) = enc[-1]
        mu, log_sigma = h @ wl + bl, h @ ws + bs
        eps = jax.random.normal(jax.random.fold_in(key, i), (k, mu.shape[-1]))
        z = mu + jnp.exp(log_sigma) * eps                                     # [k, D]
        logits = mlp(dec, z) @ dec[-1][0] + dec[-1][1]                        # [k, 784]
        log_px_z = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
        log_pz = -0.5 * jnp.sum(z**2, -1)
        log_q = -0.5 * jnp.sum(eps**2, -1) - jnp.sum(log_sigma)
        return jax.nn.logsumexp(log_px_z + log_pz - log_q) - math.log(k)      # the 2 pi terms cancel

    n = xs.shape[0]
    return jax.lax.map(one, (jnp.arange(n), xs), batch_size=batch)


def _bare_params(variables):
    """(encoder [(w, b)... , (loc), (log_scale)], decoder [(w, b)..., (logits)]) from the flax tree,
    with the posterior's soft clip of log sigma left out (inactive for these weights)."""
    p = variables["params"]
    enc_trunk = p["posterior"]["encoder"]
    enc = [(enc_trunk[f"dense_{i}"]["kernel"], enc_trunk[f"dense_{i}"]["bias"]) for i in range(len(enc_trunk))]
    enc.append(((p["posterior"]["loc"]["kernel"], p["posterior"]["loc"]["bias"]),
                (p["posterior"]["log_scale"]["kernel"], p["posterior"]["log_scale"]["bias"])))
    dec_trunk = p["likelihood"]["decoder"]
    dec = [(dec_trunk[f"dense_{i}"]["kernel"], dec_trunk[f"dense_{i}"]["bias"]) for i in range(len(dec_trunk))]
    dec.append((p["likelihood"]["logits"]["kernel"], p["likelihood"]["logits"]["bias"]))
    return enc, dec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vae_mlp_fmnist", help="preset of the model (ignored with --workdir)")
    p.add_argument("--workdir", help="benchmark a trained run")
    p.add_argument("--n-images", type=int, default=10000, help="test images (the test set is repeated if smaller)")
    p.add_argument("--k", type=int, default=5000, help="importance samples")
    p.add_argument("--ks", default="1,10,100,1000", help="IWAE k's from the same pass")
    p.add_argument("--chunk-size", type=int, default=None, help="IS samples per chunk (default: the library's)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per vmapped step (default: the library's)")
    p.add_argument("--bare-batch", type=int, default=None, help="examples per step of the bare-JAX reference")
    p.add_argument("--ais-images", type=int, default=None, help="images for AIS (default: all; 0 = skip AIS)")
    p.add_argument("--ais-steps", type=int, default=1000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--synthetic-if-missing", action="store_true",
                   help="without a prepared dataset, time on random binary images of its shape (recorded as 'data')")
    args = p.parse_args(argv)

    from vaegen import sharding
    from vaegen.estimators import ais as ais_lib
    from vaegen.spec.eval import AISSettings
    from vaegen.estimators import importance as E

    spec, model, variables, xs, source = _model_and_data(args)
    n, k = int(xs.shape[0]), int(args.k)
    ks = tuple(int(v) for v in args.ks.split(",") if v.strip() and int(v) <= k)
    key = jax.random.key(0)
    out: dict = {
        "device": str(jax.local_devices()[0].device_kind), "backend": jax.default_backend(),
        "num_devices": jax.local_device_count(), "jax": jax.__version__, "python": platform.python_version(),
        "model": "784-200-200-50 MLP VAE" if args.config == "vae_mlp_fmnist" and not args.workdir else args.workdir or args.config,
        "data": source, "n_images": n, "k": k, "ks": list(ks),
    }

    log_joint, q = E.model_functions(model, variables)
    run_is = lambda: E.importance_sampling(log_joint, q, xs, key, num_samples=k, ks=ks, chunk_size=args.chunk_size,
                                           batch_size=args.batch_size)
    est, first = _timed(run_is)
    est, steady = _timed(run_is)
    out["is"] = {"first_call_seconds": first, "seconds": steady, "samples_per_second": n * k / steady,
                 "log_px_mean": float(jnp.mean(est["log_px"])),
                 **{f"iwae_{i}_mean": float(jnp.mean(est[f"iwae_{i}"])) for i in ks},
                 "ess_mean": float(jnp.mean(est["ess"]))}
    out["host_peak_rss_mib_after_is"] = _host_peak_mib()
    out["device_peak_bytes_after_is"] = _peak_device_bytes()

    if not args.skip_bare:
        params = _bare_params(variables)
        bare_batch = int(args.bare_batch or max(1, sharding.default_rows() // k))
        f = jax.jit(lambda p, x, key: _bare_is(p, x, key, k, bare_batch))
        bare, first = _timed(lambda: f(params, xs, key))
        bare, steady = _timed(lambda: f(params, xs, key))
        out["bare_is"] = {"first_call_seconds": first, "seconds": steady, "batch": bare_batch,
                          "log_px_mean": float(jnp.mean(bare))}
        out["is"]["overhead_vs_bare"] = out["is"]["seconds"] / steady

    ais_images = n if args.ais_images is None else int(args.ais_images)
    if ais_images:
        settings = ais_lib.AIS(AISSettings(num_steps=args.ais_steps, num_chains=args.ais_chains,
                                           num_leapfrog=args.leapfrog))
        log_joint, prior = E.model_functions(model, variables, proposal="prior")
        xa = xs[:ais_images]
        run_ais = lambda: settings.forward(log_joint, prior, xa, jax.random.key(1))
        est, first = _timed(run_ais)
        if ais_images < n or first < 600:
            est, steady = _timed(run_ais)
        else:
            steady = first
        out["ais"] = {"images": ais_images, "num_steps": settings.num_steps, "num_chains": settings.num_chains,
                      "num_leapfrog": settings.num_leapfrog, "first_call_seconds": first, "seconds": steady,
                      f"projected_seconds_for_{n}_images": steady * n / ais_images,
                      "log_px_mean": float(jnp.mean(est["log_px"])), "acceptance": float(jnp.mean(est["acceptance"]))}
    out["host_peak_rss_mib"] = _host_peak_mib()
    out["device_peak_bytes"] = _peak_device_bytes()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
