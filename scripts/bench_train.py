"""Training throughput of vaegen's trainer, in examples per second; prints JSON.

The model is the one of Burda et al. (2016) and of the project's reference speed table: a
784-200-200-50 tanh MLP VAE with a Bernoulli likelihood, N(0, I) prior, diagonal Gaussian
q(z|x), single-sample ELBO with analytic KL, Adam; 60,000 examples per epoch resident on the
device, dynamically binarized inside the step.

    python scripts/bench_train.py                       # batch 128 and 1024: vaegen and the compute floor
    python scripts/bench_train.py --baselines torch     # also an eager PyTorch loop of the same model
    python scripts/bench_train.py --estimators          # also the STL and DReG steps beside reparam's

Measured: ``vaegen``, the trainer's own fused epoch (``vaegen.train.steps.make_train_steps`` as
the trainer compiles it, one ``lax.scan`` per epoch, donated state); ``floor``, the compute floor
of ``--floor`` (``../shared/bench/cpu_roofline.py``: the same layer shapes, linear, plain SGD,
fused epoch, i.e. only the matrix products any implementation of this VAE must do), measured in
the same rounds, and vaegen's rate as a share of it (``percent_of_floor_*``); ``jax_step_loop``, the same step jitted alone and
dispatched once per batch from Python (what a naive loop does); ``torch_eager``, an eager
PyTorch training loop of the same model (if torch is installed).  Timings exclude compilation
and a warm-up epoch; the implementations are timed in interleaved rounds (``--repeats``) and the
best and median rates reported, so that a machine shared with other work slows all alike.

``--estimators`` adds the gradient estimators' steps of the same model (the trainer's fused epoch,
in the same interleaved rounds): ``elbo_mc_reparam`` and ``elbo_mc_stl`` (the ELBO with a Monte
Carlo KL, reparameterized and "sticking the landing"), ``iwae<k>_reparam``, ``iwae<k>_stl`` and
``iwae<k>_dreg`` (``--iwae-k``, default 5), and for each STL/DReG step its rate as a percentage
of the reparameterized step of the same bound (``percent_of_reparam_*``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import kernel_profile

N = 60_000
FLOOR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "cpu_roofline.py"


def _data(n=N):
    return np.random.RandomState(0).randint(0, 256, size=(n, 28, 28, 1)).astype(np.uint8)


def bench_floor(batch: int, path: str) -> tuple[dict, Callable[[int], float]]:
    """The compute floor of ``path`` (cpu_roofline.py): its loss and layer shapes, its fused SGD
    epoch, timed here in the same rounds as vaegen."""
    spec = importlib.util.spec_from_file_location("_cpu_roofline", path)
    roofline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roofline)
    steps = N // batch
    ws = [jnp.asarray(np.random.default_rng(i).normal(size=s).astype(np.float32) * 0.05)
          for i, s in enumerate(roofline.shapes)]
    data = jnp.asarray(np.random.default_rng(9).random((steps * batch, roofline.D), np.float32))

    def epoch(ws, data):
        def step(ws, i):
            x = jax.lax.dynamic_slice_in_dim(data, i * batch, batch)
            g = jax.grad(roofline.loss)(ws, x)
            return [w - 1e-6 * gw for w, gw in zip(ws, g)], None
        return jax.lax.scan(step, ws, jnp.arange(steps))[0]

    compiled = jax.jit(epoch).lower(ws, data).compile()
    jax.block_until_ready(compiled(ws, data))

    def run(epoch_index: int) -> float:
        del epoch_index
        t = time.perf_counter()
        jax.block_until_ready(compiled(ws, data))
        return time.perf_counter() - t

    return {"examples_per_epoch": steps * batch, "script": os.path.abspath(path)}, run


def _vaegen_steps(batch: int, overrides: tuple[str, ...] = ()):
    """The trainer's fused epoch for the benchmark model: ``(train_steps, state, data, steps)``."""
    from vaegen import sharding
    from vaegen.config import loading as config
    from vaegen.config.schema import to_spec
    from vaegen.model import latent as model
    from vaegen.train import steps
    from vaegen.train import trainer as train

    spec = to_spec(config.load_config("vae_mlp_fmnist", [f"train.batch_size={batch}", *overrides]))
    setup = train.build_setup(spec, (28, 28, 1), N)
    mesh = sharding.data_mesh()
    rep = sharding.replicated(mesh)
    data = sharding.shard_rows(_data(), mesh)
    v = model.init_params(setup.model, jax.random.key(0), (28, 28, 1))
    state = jax.device_put(steps.TrainState(step=jnp.zeros((), jnp.int32), params=v, opt_state=setup.optimizer.init(v)), rep)
    spe = setup.steps_per_epoch
    train_steps = steps.make_train_steps(setup.model, setup.objective, setup.optimizer, batch_size=batch,
                                         steps_per_epoch=spe, num_steps=spe, protocol="dynamic", seed=0, mesh=mesh,
                                         num_examples=N)
    return train_steps, state, data, spe


def bench_vaegen(batch: int, overrides: tuple[str, ...] = ()) -> tuple[dict, Callable[[int], float]]:
    """vaegen's fused epoch: ``(info, run)``, ``run(epoch)`` trains one epoch and returns seconds."""
    train_steps, state, data, spe = _vaegen_steps(batch, overrides)
    t = time.perf_counter()
    compiled = train_steps.compile(state, data, jnp.int32(0), jnp.int32(0))
    info = {"compile_seconds": time.perf_counter() - t, "examples_per_epoch": spe * batch}
    box = {"state": state}

    def run(epoch: int) -> float:
        t = time.perf_counter()
        box["state"], m = compiled(box["state"], data, jnp.int32(epoch), jnp.int32(0))
        jax.block_until_ready(m)
        info["final_train_elbo"] = float(np.mean(m["elbo"]))
        return time.perf_counter() - t

    return info, run


def profile_vaegen(batch: int, overrides: tuple[str, ...] = ()) -> dict:
    """Where one epoch of vaegen's trainer spends its kernel time, by part of the step
    (``kernel_profile.TRAIN_PARTS``), after a warm-up epoch."""
    train_steps, state, data, spe = _vaegen_steps(batch, overrides)
    hlo = train_steps.lower(state, data, jnp.int32(0), jnp.int32(0)).compile().as_text()
    compiled = train_steps.compile(state, data, jnp.int32(0), jnp.int32(0))
    box = {"state": state}

    def epoch(e: int):
        box["state"], m = compiled(box["state"], data, jnp.int32(e), jnp.int32(0))
        jax.block_until_ready(m)

    epoch(0)
    return {"examples": spe * batch, **kernel_profile.profile(lambda: epoch(1), hlo, kernel_profile.TRAIN_PARTS)}


def bench_jax_step_loop(batch: int) -> tuple[dict, Callable[[int], float]]:
    """The same step, jitted alone and dispatched once per batch (for comparison)."""
    import optax

    from vaegen.config import loading as config
    from vaegen.config.schema import to_spec
    from vaegen.data import binarization
    from vaegen.model import latent as model
    from vaegen.objectives import batch as objectives
    from vaegen.train import trainer as train

    spec = to_spec(config.load_config("vae_mlp_fmnist", [f"train.batch_size={batch}"]))
    setup = train.build_setup(spec, (28, 28, 1), N)
    data = jax.device_put(_data())
    v = model.init_params(setup.model, jax.random.key(0), (28, 28, 1))
    opt_state = setup.optimizer.init(v)

    @jax.jit
    def step(v, opt_state, idx, key):
        kd, ko = jax.random.split(key)
        x = binarization.to_float(kd, data[idx], "dynamic")
        keys = jax.random.split(ko, batch)

        def loss(v):
            return -jnp.mean(objectives.batched(setup.objective, setup.model, v, x, keys)["objective"])

        l, g = jax.value_and_grad(loss)(v)
        u, opt_state = setup.optimizer.update(g, opt_state, v)
        return optax.apply_updates(v, u), opt_state, l

    steps = N // batch
    perm = np.random.RandomState(1).permutation(N)[: steps * batch].reshape(steps, batch)
    perm = jax.device_put(perm)
    key = jax.random.key(0)
    box = {"v": v, "opt_state": opt_state}
    v, opt_state, l = step(v, opt_state, perm[0], key)
    jax.block_until_ready(l)

    def run(epoch: int) -> float:
        v, opt_state = box["v"], box["opt_state"]
        t = time.perf_counter()
        for i in range(steps):
            v, opt_state, l = step(v, opt_state, perm[i], jax.random.fold_in(key, epoch * steps + i))
        jax.block_until_ready(l)
        box["v"], box["opt_state"] = v, opt_state
        return time.perf_counter() - t

    return {"examples_per_epoch": steps * batch}, run


def bench_torch_eager(batch: int) -> tuple[dict, Callable[[int], float]]:
    """An eager PyTorch loop of the same model (torch's own threads: all cores)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh())
            self.loc, self.log_scale = nn.Linear(200, 50), nn.Linear(200, 50)
            self.dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))

        def forward(self, x):
            h = self.enc(x)
            mu, log_sigma = self.loc(h), self.log_scale(h)
            z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
            logits = self.dec(z)
            rec = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
            kl = 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(-1)
            return (rec - kl).mean()

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.from_numpy(_data().reshape(N, 784))
    steps = N // batch

    def epoch_loop():
        perm = torch.randperm(N)
        for i in range(steps):
            x = torch.bernoulli(data[perm[i * batch:(i + 1) * batch]].float() / 255)
            loss = -model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss

    def run(epoch: int) -> float:
        del epoch
        t = time.perf_counter()
        epoch_loop()
        return time.perf_counter() - t

    epoch_loop()  # warm-up
    return {"examples_per_epoch": steps * batch, "torch": torch.__version__, "threads": torch.get_num_threads()}, run


def measure(benches: dict, repeats: int) -> dict:
    """Times one epoch of every implementation per round, ``repeats`` interleaved rounds (after
    each one's warm-up), so that a busy machine slows all of them alike; reports the best and the
    median examples/s."""
    runners = {name: make() for name, make in benches.items()}
    seconds = {name: [] for name in benches}
    for r in range(repeats):
        for name, (_, run) in runners.items():
            seconds[name].append(run(r + 1))
    out = {}
    for name, (info, _) in runners.items():
        rates = sorted(info["examples_per_epoch"] / s for s in seconds[name])
        out[name] = {"examples_per_second_best": rates[-1], "examples_per_second_median": float(np.median(rates)),
                     "rounds": repeats, **{k: v for k, v in info.items() if k != "examples_per_epoch"}}
    return out


def estimator_benches(k: int) -> dict[str, tuple[str, ...]]:
    """The gradient estimators' steps: name -> config overrides of the benchmark model."""
    mc = ("objective.analytic_kl=false",)
    iwae = ("objective=iwae", f"objective.num_samples={k}")
    return {
        "elbo_mc_reparam": mc, "elbo_mc_stl": mc + ("objective.estimator=stl",),
        f"iwae{k}_reparam": iwae, f"iwae{k}_stl": iwae + ("objective.estimator=stl",),
        f"iwae{k}_dreg": iwae + ("objective.estimator=dreg",),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="128,1024")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed epochs per implementation (after a warm-up)")
    p.add_argument("--baselines", default="", help="comma-separated: jax_step_loop, torch")
    p.add_argument("--floor", default=str(FLOOR), help="the compute-floor script (cpu_roofline.py); 'none' to skip")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for vaegen's model (e.g. optim.flatten=true), repeatable")
    p.add_argument("--estimators", action="store_true",
                   help="also the STL and DReG steps (ELBO with a Monte Carlo KL, IWAE-k) beside the reparameterized ones")
    p.add_argument("--iwae-k", type=int, default=5, help="k of the IWAE steps of --estimators")
    p.add_argument("--profile", action="store_true",
                   help="also profile one epoch of vaegen's trainer: its kernel time by part of the step")
    args = p.parse_args()
    if args.profile:
        kernel_profile.enable_kernel_tracing()  # before JAX starts its backend
    out = {
        "model": "MLP VAE 784-200-200-50 tanh, Bernoulli, analytic-KL ELBO, Adam; 60,000 examples/epoch",
        "device": str(jax.devices()[0].device_kind if hasattr(jax.devices()[0], "device_kind") else jax.devices()[0]),
        "backend": jax.default_backend(), "num_devices": jax.device_count(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "results": {},
    }
    baselines = [b for b in args.baselines.split(",") if b]
    for b in (int(s) for s in args.batch_sizes.split(",")):
        benches = {"vaegen": lambda b=b: bench_vaegen(b, tuple(args.set))}
        if args.floor != "none" and os.path.exists(args.floor):
            benches["floor"] = lambda b=b: bench_floor(b, args.floor)
        if "jax_step_loop" in baselines:
            benches["jax_step_loop"] = lambda b=b: bench_jax_step_loop(b)
        if "torch" in baselines:
            benches["torch_eager"] = lambda b=b: bench_torch_eager(b)
        if args.estimators:
            for name, extra in estimator_benches(args.iwae_k).items():
                benches[name] = lambda b=b, extra=extra: bench_vaegen(b, tuple(args.set) + extra)
        r = measure(benches, args.repeats)
        if args.estimators:
            for name in estimator_benches(args.iwae_k):
                base = name.rsplit("_", 1)[0] + "_reparam"
                if name != base:
                    for stat in ("best", "median"):
                        r[name][f"percent_of_reparam_{stat}"] = 100 * (r[name][f"examples_per_second_{stat}"]
                                                                       / r[base][f"examples_per_second_{stat}"])
        if "floor" in r:
            for stat in ("best", "median"):
                r[f"percent_of_floor_{stat}"] = 100 * (r["vaegen"][f"examples_per_second_{stat}"]
                                                       / r["floor"][f"examples_per_second_{stat}"])
        if "torch_eager" in r:
            for stat in ("best", "median"):
                r[f"speedup_vs_torch_eager_{stat}"] = (r["vaegen"][f"examples_per_second_{stat}"]
                                                       / r["torch_eager"][f"examples_per_second_{stat}"])
        if args.profile:
            r["profile"] = profile_vaegen(b, tuple(args.set))
        out["results"][f"batch_{b}"] = r
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
