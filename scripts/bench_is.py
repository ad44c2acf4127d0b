"""Importance-sampled log p(x) side by side: the compute floor, vaegen and pythae; prints JSON.

The model is the 784-200-200-50 tanh MLP VAE (Bernoulli p(x|z), N(0, I) p(z), diagonal Gaussian
q(z|x)), freshly initialised (the cost does not depend on the weights), on binary 28x28 images.
For each k of ``--ks``:

* ``floor``: ``--floor`` (``../shared/bench/cpu_is_floor.py K N CHUNK``), run as a subprocess:
  only the decoder's matrix products for k samples of each image, the least any implementation
  of importance sampling must do;
* ``vaegen``: :func:`vaegen.estimators.importance.importance_sampling` (compiled; best of
  ``--repeats`` after a first call that compiles);
* ``pythae``: pythae's ``VAE.get_nll`` (PyTorch; ``--pythae-threads``) on the same architecture with
  ``--pythae-batch`` samples per forward pass, over ``--pythae-images`` images (it loops over
  images in Python).  Needs the optional ``bench`` extra: ``pip install -e '.[bench]'``.

Rates are images/s; ``vaegen_percent_of_floor`` and ``vaegen_speedup_vs_pythae`` compare them.

    python scripts/bench_is.py                        # k = 1000 and 5000
    python scripts/bench_is.py --ks 1000 --chunk-sizes 250,500,1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import numpy as np

FLOOR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "cpu_is_floor.py"
D, H, Z = 784, 200, 50


def images(n: int) -> np.ndarray:
    """``n`` random binary images ``[n, 28, 28, 1]`` in {0, 1} (float32)."""
    return (np.random.RandomState(0).rand(n, 28, 28, 1) < 0.3).astype(np.float32)


def floor(path: str, k: int, n: int, chunk: int) -> float:
    out = subprocess.run([sys.executable, path, str(k), str(n), str(chunk)], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])


def vaegen(k: int, n: int, chunk: int | None, repeats: int) -> tuple[float, float]:
    """images/s of vaegen's importance sampling, and the mean log p(x) (nats)."""
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
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(log_joint, proposal, xs, key))
        best = min(best, time.perf_counter() - t)
    return n / best, float(np.mean(out))


def bare(k: int, n: int, batch: int, repeats: int) -> float:
    """images/s of the same estimate in bare JAX (``bench_eval.py``'s reference: encoder, sampling,
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
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(params, xs, key))
        best = min(best, time.perf_counter() - t)
    return n / best


def pythae(k: int, n: int, batch: int, threads: int = 0) -> tuple[float, float]:
    """images/s of pythae's get_nll on the same architecture, and its mean log p(x) (nats);
    ``threads`` > 0 sets PyTorch's intra-op threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--floor", default=str(FLOOR), help="cpu_is_floor.py; 'none' to skip")
    p.add_argument("--pythae-images", type=int, default=50)
    p.add_argument("--pythae-batch", type=int, default=1000, help="pythae's batch_size (samples per forward pass)")
    p.add_argument("--no-pythae", action="store_true")
    p.add_argument("--pythae-threads", type=int, default=0,
                   help="PyTorch threads (0: its default, all cores; 1 is faster on a CPU busy with other work)")
    p.add_argument("--bare-batch", type=int, default=0, help="also the bare-JAX estimate, this many images per step")
    args = p.parse_args()
    out = {"model": "MLP VAE 784-200-200-50 tanh, Bernoulli; random binary 28x28 images",
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
           "backend": jax.default_backend(), "results": {}}
    for k in (int(s) for s in args.ks.split(",")):
        r: dict = {}
        if args.floor != "none" and os.path.exists(args.floor):
            r["floor_images_per_s"] = floor(args.floor, k, args.n_images, min(args.chunk, k))
        for c in args.chunk_sizes.split(","):
            chunk = None if c == "default" else int(c)
            rate, log_px = vaegen(k, args.n_images, chunk, args.repeats)
            name = "vaegen" if chunk is None else f"vaegen_chunk_{chunk}"
            r[f"{name}_images_per_s"], r[f"{name}_mean_log_px"] = rate, log_px
            if "floor_images_per_s" in r:
                r[f"{name}_percent_of_floor"] = 100 * rate / r["floor_images_per_s"]
        if args.bare_batch:
            r["bare_jax_images_per_s"] = bare(k, args.n_images, args.bare_batch, args.repeats)
            if "floor_images_per_s" in r:
                r["bare_jax_percent_of_floor"] = 100 * r["bare_jax_images_per_s"] / r["floor_images_per_s"]
        if not args.no_pythae:
            rate, log_px = pythae(k, args.pythae_images, min(args.pythae_batch, k), args.pythae_threads)
            r["pythae_images_per_s"], r["pythae_mean_log_px"] = rate, log_px
            for name in [n[:-len("_images_per_s")] for n in list(r) if n.startswith("vaegen") and n.endswith("_images_per_s")]:
                r[f"{name}_speedup_vs_pythae"] = r[f"{name}_images_per_s"] / rate
        out["results"][f"k_{k}"] = r
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
