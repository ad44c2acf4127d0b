"""Importance-sampled log p(x) side by side: the compute floor, vaegen and pythae; prints JSON.

The model is the 784-200-200-50 tanh MLP VAE (Bernoulli p(x|z), N(0, I) p(z), diagonal Gaussian
q(z|x)), freshly initialised (the cost does not depend on the weights), on binary 28x28 images.
For each k of ``--ks``:

* ``floor``: the computation of ``../shared/bench/cpu_is_floor.py K N CHUNK`` (only the decoder's
  matrix products for k samples of each image, the least any implementation of importance
  sampling must do: its shapes, its z drawn beforehand, its chunked ``lax.scan`` per image and
  ``lax.map`` over images), timed here in the same rounds as vaegen; ``floor_script`` is the
  script's own figure, run as a subprocess before (``--floor``);
* ``vaegen``: :func:`vaegen.estimators.importance.importance_sampling` (compiled);
* ``pythae``: pythae's ``VAE.get_nll`` (PyTorch) on the same architecture with ``--pythae-batch``
  samples per forward pass, over ``--pythae-images`` images (it loops over images in Python), at
  each PyTorch thread setting of ``--pythae-threads`` in the same run (``pythae_threads_<n>``; 0:
  PyTorch's default, all cores), since which is fastest depends on how busy the CPU is; the
  comparison is with the fastest (``pythae_images_per_s``, ``pythae_best_threads``).  Needs the
  optional ``bench`` extra: ``pip install -e '.[bench]'``.

The floor, vaegen (and ``--bare-batch``'s bare JAX) are timed in ``--repeats`` interleaved rounds
after a first call that compiles, so that a machine busy with other work slows them alike; rates
are images/s, the best round's and the median's.  ``vaegen_percent_of_floor`` (best over best;
``_median`` likewise) and ``vaegen_speedup_vs_pythae`` compare them.

    python scripts/bench_is.py                        # k = 1000 and 5000
    python scripts/bench_is.py --ks 1000 --chunk-sizes 250,500,1000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np

FLOOR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "cpu_is_floor.py"
D, H, Z = 784, 200, 50


def images(n: int) -> np.ndarray:
    """``n`` random binary images ``[n, 28, 28, 1]`` in {0, 1} (float32)."""
    return (np.random.RandomState(0).rand(n, 28, 28, 1) < 0.3).astype(np.float32)


def floor_script(path: str, k: int, n: int, chunk: int) -> float:
    """The floor script's own images/s (a subprocess; its best of 3, timed on its own)."""
    out = subprocess.run([sys.executable, path, str(k), str(n), str(chunk)], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])


def floor(k: int, n: int, chunk: int) -> Callable[[], float]:
    """``run() -> seconds`` of ``cpu_is_floor.py``'s computation for ``k`` samples of ``n`` images in
    chunks of ``chunk``, compiled and run once."""
    shapes = [(Z, H), (H, H), (H, D)]
    ws = [jax.numpy.asarray(np.random.default_rng(i).normal(size=s).astype(np.float32) * 0.05)
          for i, s in enumerate(shapes)]
    z = jax.numpy.asarray(np.random.default_rng(9).normal(size=(n, k // chunk, chunk, Z)).astype(np.float32))

    def per_image(ws, zi):
        def one_chunk(acc, zc):
            h = zc
            for w in ws:
                h = h @ w
            return acc + jax.numpy.sum(h), None
        return jax.lax.scan(one_chunk, jax.numpy.float32(0), zi)[0]

    compiled = jax.jit(lambda ws, z: jax.lax.map(lambda zi: per_image(ws, zi), z))
    jax.block_until_ready(compiled(ws, z))

    def run() -> float:
        t = time.perf_counter()
        jax.block_until_ready(compiled(ws, z))
        return time.perf_counter() - t

    return run


def vaegen(k: int, n: int, chunk: int | None) -> tuple[Callable[[], float], float]:
    """``run() -> seconds`` of vaegen's importance sampling over ``n`` images (compiled and run
    once), and the mean log p(x) (nats)."""
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.estimators import importance
    from vaegen.model import latent

    spec = to_spec(config_lib.load_config("vae_mlp_fmnist"))
    model = latent.build_model(spec.model, spec.inference, (28, 28, 1))
    variables = latent.init_params(model, jax.random.key(0), (28, 28, 1))
    log_joint, proposal = importance.model_functions(model, variables)
    xs = jax.device_put(images(n))
    run = jax.jit(lambda lj, q, xs, key: importance.importance_sampling(lj, q, xs, key, num_samples=k,
                                                                        chunk_size=chunk)["log_px"])
    key = jax.random.key(1)
    out = jax.block_until_ready(run(log_joint, proposal, xs, key))

    def timed() -> float:
        t = time.perf_counter()
        jax.block_until_ready(run(log_joint, proposal, xs, key))
        return time.perf_counter() - t

    return timed, float(np.mean(out))


def bare(k: int, n: int, batch: int) -> Callable[[], float]:
    """``run() -> seconds`` of the same estimate in bare JAX (``bench_eval.py``'s reference: encoder, sampling,
    decoder with its tanh, the Bernoulli log-likelihood, logsumexp; no chunking over k): what
    surrounds the floor's matrix products at its least."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import bench_eval
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.model import latent

    spec = to_spec(config_lib.load_config("vae_mlp_fmnist"))
    model = latent.build_model(spec.model, spec.inference, (28, 28, 1))
    params = bench_eval._bare_params(latent.init_params(model, jax.random.key(0), (28, 28, 1)))
    xs = jax.device_put(images(n))
    run = jax.jit(lambda params, xs, key: bench_eval._bare_is(params, xs, key, k, batch))
    key = jax.random.key(1)
    jax.block_until_ready(run(params, xs, key))

    def timed() -> float:
        t = time.perf_counter()
        jax.block_until_ready(run(params, xs, key))
        return time.perf_counter() - t

    return timed


_TORCH_DEFAULT_THREADS: dict[str, int] = {}
"""PyTorch's own thread count, read before the first setting changes it."""


def pythae(k: int, n: int, batch: int, threads: int = 0) -> tuple[float, float]:
    """images/s of pythae's get_nll on the same architecture, and its mean log p(x) (nats);
    ``threads`` > 0 sets PyTorch's intra-op threads."""
    import torch

    default = _TORCH_DEFAULT_THREADS.setdefault("threads", torch.get_num_threads())
    torch.set_num_threads(threads or default)
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, H), torch.nn.Tanh(),
                                             torch.nn.Linear(H, H), torch.nn.Tanh())
            self.loc, self.log_var = torch.nn.Linear(H, Z), torch.nn.Linear(H, Z)

        def forward(self, x):
            h = self.trunk(x)
            return ModelOutput(embedding=self.loc(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(Z, H), torch.nn.Tanh(), torch.nn.Linear(H, H),
                                           torch.nn.Tanh(), torch.nn.Linear(H, D), torch.nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).reshape(-1, 1, 28, 28))

    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=Z, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder()).eval()
    data = torch.from_numpy(images(n).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        model.get_nll(data[:1], n_samples=k, batch_size=batch)  # warm-up
        t = time.perf_counter()
        nll = model.get_nll(data, n_samples=k, batch_size=batch)
        seconds = time.perf_counter() - t
    return n / seconds, float(nll)  # get_nll returns the mean log p(x) (nats), not its negative


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1000,5000")
    p.add_argument("--n-images", type=int, default=200, help="images for the floor and vaegen")
    p.add_argument("--chunk", type=int, default=1000, help="the floor's samples per chunk")
    p.add_argument("--chunk-sizes", default="default", help="vaegen's chunk_size values ('default': its own)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (after a first call)")
    p.add_argument("--floor", default=str(FLOOR),
                   help="cpu_is_floor.py, also run on its own; 'none' to leave out the floor")
    p.add_argument("--pythae-images", type=int, default=50)
    p.add_argument("--pythae-batch", type=int, default=1000, help="pythae's batch_size (samples per forward pass)")
    p.add_argument("--no-pythae", action="store_true")
    p.add_argument("--pythae-threads", default="1,2,0",
                   help="comma-separated PyTorch thread settings, each timed in the same run (0: its default, all "
                        "cores); the fastest is the one compared")
    p.add_argument("--bare-batch", type=int, default=0, help="also the bare-JAX estimate, this many images per step")
    args = p.parse_args()
    out = {"model": "MLP VAE 784-200-200-50 tanh, Bernoulli; random binary 28x28 images",
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
           "backend": jax.default_backend(), "results": {}}
    for k in (int(s) for s in args.ks.split(",")):
        r: dict = {}
        runs: dict[str, Callable[[], float]] = {}
        if args.floor != "none":
            if os.path.exists(args.floor):
                r["floor_script_images_per_s"] = floor_script(args.floor, k, args.n_images, min(args.chunk, k))
            runs["floor"] = floor(k, args.n_images, min(args.chunk, k))
        for c in args.chunk_sizes.split(","):
            chunk = None if c == "default" else int(c)
            name = "vaegen" if chunk is None else f"vaegen_chunk_{chunk}"
            runs[name], r[f"{name}_mean_log_px"] = vaegen(k, args.n_images, chunk)
        if args.bare_batch:
            runs["bare_jax"] = bare(k, args.n_images, args.bare_batch)
        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved rounds
            for name, run in runs.items():
                seconds[name].append(run())
        for name, times in seconds.items():
            rates = sorted(args.n_images / t for t in times)
            r[f"{name}_images_per_s"], r[f"{name}_images_per_s_median"] = rates[-1], float(np.median(rates))
        if "floor" in runs:
            for name in runs:
                if name != "floor":
                    r[f"{name}_percent_of_floor"] = 100 * r[f"{name}_images_per_s"] / r["floor_images_per_s"]
                    r[f"{name}_percent_of_floor_median"] = (100 * r[f"{name}_images_per_s_median"]
                                                            / r["floor_images_per_s_median"])
        if not args.no_pythae:
            settings = [int(t) for t in args.pythae_threads.split(",")]
            rates = {}
            for threads in settings:
                rates[threads], log_px = pythae(k, args.pythae_images, min(args.pythae_batch, k), threads)
                r[f"pythae_threads_{threads}_images_per_s"] = rates[threads]
            best = max(rates, key=rates.get)
            r["pythae_best_threads"], r["pythae_images_per_s"], r["pythae_mean_log_px"] = best, rates[best], log_px
            for name in [n for n in runs if n.startswith("vaegen")]:
                r[f"{name}_speedup_vs_pythae"] = r[f"{name}_images_per_s"] / rates[best]
        out["results"][f"k_{k}"] = r
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
