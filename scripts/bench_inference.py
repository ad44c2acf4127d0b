"""Speed of non-amortized inference: q* for a whole test set, in seconds; prints JSON.

The model is the 784-200-200-50 tanh MLP VAE of ``vae_mlp_fmnist`` (Bernoulli likelihood,
N(0, I) prior).  For each of ``--num-examples`` test images, q*_F(z | x) is found by
``--steps`` Adam steps on the per-example ELBO (one reparameterised sample per step, analytic
KL), vmapped over a chunk of examples and ``lax.scan``-ned over the steps
(:func:`vaegen.inference.svi.fit_local`), followed by the selection and a 100-sample ELBO estimate of
q* and of the initial q.  The issue's target: 10,000 images x 500 steps in <= 60 s on one H100.

    python scripts/bench_inference.py                                   # 10,000 x 500, diag
    python scripts/bench_inference.py --num-examples 1000 --chunk-size 500   # a CPU-sized run
    python scripts/bench_inference.py --workdir runs/vae --family diag,fullcov

Timing: a warm-up call on the first chunk compiles the program (``compile_and_first_chunk_seconds``);
``seconds`` is then the wall time of the whole run (compiled, data on the device), and
``example_steps_per_second`` = examples x steps / seconds.  Uses a trained run's parameters with
``--workdir``, else a freshly initialised model (speed does not depend on the values); the test
images of Fashion-MNIST if prepared, else random binary images of the same shape.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np


def _model_and_data(workdir: str | None, n: int):
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.data import binarization
    from vaegen.data import datasets as data_lib
    from vaegen.studies import gaps as gaps
    from vaegen.model import latent as model_lib

    if workdir:
        import vaegen

        run = vaegen.load(workdir)
        return run.model, run.variables, gaps.split_data(run, "test", n), f"test split of {workdir}"
    spec = to_spec(config_lib.load_config("vae_mlp_fmnist"))
    model = model_lib.build_model(spec.model, spec.inference, (28, 28, 1))
    variables = model_lib.init_params(model, jax.random.key(0), (28, 28, 1))
    try:
        test = data_lib.load_splits(spec.data).test[:n]
        stored = binarization.binarize_once(test, "static", 2)
        xs, source = np.asarray(binarization.to_float(None, stored, "static")), "fashion_mnist test (static binarization)"
    except Exception:  # no prepared dataset: the timing does not depend on the pixels
        xs = (np.random.RandomState(0).rand(n, 28, 28, 1) < 0.3).astype(np.float32)
        source = "random binary images"
    if xs.shape[0] < n:
        xs = np.concatenate([xs] * (-(-n // xs.shape[0])))[:n]
    return model, variables, xs, source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-examples", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--family", default="diag", help="comma-separated: diag, fullcov, flow")
    p.add_argument("--chunk-size", type=int, default=0, help="examples per vmapped chunk (default: all on a GPU/TPU, 1000 on CPU)")
    p.add_argument("--samples-per-step", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--workdir", help="a trained run (default: a fresh vae_mlp_fmnist model)")
    args = p.parse_args()

    from vaegen.inference import svi as inference

    model, variables, xs, source = _model_and_data(args.workdir, args.num_examples)
    backend = jax.default_backend()
    chunk = args.chunk_size or (args.num_examples if backend != "cpu" else 1000)
    chunk = min(chunk, args.num_examples)
    settings = inference.SVISettings(num_steps=args.steps, learning_rate=args.learning_rate,
                                     num_samples=args.samples_per_step)
    key = jax.random.key(0)
    results = []
    for family in [f.strip() for f in args.family.split(",") if f.strip()]:
        kw = dict(family=family, settings=settings, chunk_size=chunk, eval_samples=args.eval_samples,
                  keep_parameters=False, progress=False)
        t = time.perf_counter()
        inference.fit_local(model, variables, xs[:chunk * jax.local_device_count()], key, **kw)  # compiles (same dispatch shape)
        warmup = time.perf_counter() - t
        fit = inference.fit_local(model, variables, xs, key, **kw)
        results.append({
            "family": family,
            "seconds": fit.seconds,
            "compile_and_first_chunk_seconds": warmup,
            "examples_per_second": args.num_examples / fit.seconds,
            "example_steps_per_second": args.num_examples * args.steps / fit.seconds,
            "mean_elbo_q_star": float(np.mean(fit.elbo)),
            "mean_elbo_initial_q": float(np.mean(fit.elbo_init)),
            "fraction_improved": float(np.mean(fit.improved)),
        })
    print(json.dumps({
        "benchmark": "q* by per-example SVI (vaegen.inference.svi.fit_local)",
        "model": "784-200-200-50 tanh MLP VAE, Bernoulli p(x|z), N(0, I) p(z)",
        "data": source,
        "num_examples": args.num_examples, "steps": args.steps, "chunk_size": chunk,
        "samples_per_step": args.samples_per_step, "eval_samples": args.eval_samples,
        "optimizer": f"adam, lr {args.learning_rate}, cosine",
        "backend": backend, "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__, "python": platform.python_version(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
