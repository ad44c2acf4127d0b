"""What each part of a VAE training step costs beyond the compute floor; prints JSON.

Starts from the floor of ``../shared/bench/cpu_roofline.py`` (the benchmark model's layer shapes,
linear, plain SGD, one fused ``lax.scan`` per epoch: only the matrix products) and adds, one at a
time and cumulatively, the work every implementation of the 784-200-200-50 tanh VAE of
``bench_train.py`` must also do, written in bare JAX:

  floor        the floor's step (the latent is the first 50 of the encoder's 100 outputs)
  bias         + the biases of all six layers
  tanh         + tanh after the four hidden layers
  sample_kl    + z = mu + sigma * eps, eps ~ N(0, I), and the analytic KL to N(0, I)
  bernoulli    + the Bernoulli log-likelihood x l - softplus(l) (vaegen's softplus)
  adam         + Adam instead of SGD
  binarize     + dynamic binarization of the uint8 images inside the step
  shuffle      + a fresh permutation per epoch (each step gathers its batch)

and, in the same interleaved rounds, vaegen's own trainer (``bench_train.bench_vaegen``: the same
model with per-example keys, the non-finite guard and every metric).  ``percent_of_floor`` is each
one's examples/s over the floor's: how far a bare step of the same model is from the floor shows
what the floor leaves out, and vaegen against the last bare step shows what vaegen's own
machinery costs.

    python scripts/bench_step_parts.py                    # batch 128 and 1024
    python scripts/bench_step_parts.py --batch-sizes 128 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (the benchmark model's trainer and data)

from vaegen import compilation  # noqa: E402,F401  (random bits lowered as vaegen's programs are)
from vaegen.blocks.numerics import softplus  # noqa: E402

D, H, Z = 784, 200, 50
N = 60_000
PARTS = ("floor", "bias", "tanh", "sample_kl", "bernoulli", "adam", "binarize", "shuffle")
SHAPES = [(D, H), (H, H), (H, 2 * Z), (Z, H), (H, H), (H, D)]


def bare_step(level: int, batch: int):
    """``(info, run)`` of the bare step with ``PARTS[:level + 1]``, as ``bench_train.measure``
    takes them; ``run(epoch)`` trains one epoch and returns seconds."""
    has = set(PARTS[: level + 1])
    steps = N // batch
    ws = [jnp.asarray(np.random.default_rng(i).normal(size=s).astype(np.float32) * 0.05) for i, s in enumerate(SHAPES)]
    bs = [jnp.zeros(s[1], jnp.float32) for s in SHAPES]
    if "binarize" in has:
        data = jnp.asarray(np.random.RandomState(0).randint(0, 256, size=(steps * batch, D)).astype(np.uint8))
    else:
        data = jnp.asarray((np.random.default_rng(9).random((steps * batch, D)) > 0.5).astype(np.float32))

    def layer(params, i, h, hidden):
        h = h @ params[0][i]
        if "bias" in has:
            h = h + params[1][i]
        return jnp.tanh(h) if "tanh" in has and hidden else h

    def loss(params, x, key):
        h = x
        for i in range(3):
            h = layer(params, i, h, i < 2)
        if "sample_kl" in has:
            loc, log_scale = h[:, :Z], h[:, Z:]
            scale = jnp.exp(log_scale)
            z = loc + scale * jax.random.normal(key, loc.shape)
            kl = 0.5 * jnp.sum(loc**2 + scale**2 - 1 - 2 * log_scale, -1)
        else:
            z, kl = h[:, :Z], 0.0
        h = z
        for i in range(3, 6):
            h = layer(params, i, h, i < 5)
        if "bernoulli" in has:
            return -jnp.mean(jnp.sum(x * h - softplus(h), -1) - kl)
        return jnp.mean(h * x) + jnp.mean(kl)

    opt = optax.adam(1e-3) if "adam" in has else optax.sgd(1e-6)
    params = (ws, bs)

    def epoch(carry, data, key):
        order = jax.random.permutation(jax.random.fold_in(key, steps), steps * batch) if "shuffle" in has else None

        def step(carry, i):
            params, opt_state = carry
            k_data, k_noise = jax.random.split(jax.random.fold_in(key, i))
            if order is None:
                x = jax.lax.dynamic_slice_in_dim(data, i * batch, batch)
            else:
                x = data[jax.lax.dynamic_slice_in_dim(order, i * batch, batch)]
            if "binarize" in has:
                x = (jax.random.uniform(k_data, x.shape) * 255 < x.astype(jnp.float32)).astype(jnp.float32)
            g = jax.grad(loss)(params, x, k_noise)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, carry, jnp.arange(steps))[0]

    run_epoch = jax.jit(epoch, donate_argnums=0)
    key = jax.random.key(0)
    box = {"carry": run_epoch((params, opt.init(params)), data, key)}
    jax.block_until_ready(box["carry"])

    def run(epoch: int) -> float:
        del epoch  # the same data and keys every epoch: the cost does not depend on them
        t = time.perf_counter()
        box["carry"] = run_epoch(box["carry"], data, key)
        jax.block_until_ready(box["carry"])
        return time.perf_counter() - t

    return {"examples_per_epoch": steps * batch}, run


def measure(batch: int, repeats: int, with_vaegen: bool) -> dict:
    """Every bare step and (``with_vaegen``) vaegen's trainer in interleaved rounds, with each one's
    examples/s as a percentage of the floor's (best over best, median over median)."""
    benches = {name: (lambda level=level: bare_step(level, batch)) for level, name in enumerate(PARTS)}
    if with_vaegen:
        benches["vaegen"] = lambda: bench_train.bench_vaegen(batch)
    out = bench_train.measure(benches, repeats)
    for r in out.values():
        for stat in ("best", "median"):
            r[f"percent_of_floor_{stat}"] = 100 * (r[f"examples_per_second_{stat}"]
                                                   / out["floor"][f"examples_per_second_{stat}"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="128,1024")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed epochs per step (after a warm-up)")
    p.add_argument("--no-vaegen", action="store_true", help="leave out vaegen's own trainer")
    args = p.parse_args()
    out = {"model": "MLP VAE 784-200-200-50 tanh, Bernoulli, analytic-KL ELBO; 60,000 examples/epoch",
           "parts": list(PARTS), "backend": jax.default_backend(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "jax": jax.__version__, "repeats": args.repeats, "results": {}}
    for b in (int(s) for s in args.batch_sizes.split(",")):
        out["results"][f"batch_{b}"] = measure(b, args.repeats, not args.no_vaegen)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
