"""Training throughput of vaegen's trainer, in examples per second; prints JSON.

The model is the one of Burda et al. (2016) and the speed table in REFERENCES.md: a
784-200-200-50 tanh MLP VAE with a Bernoulli likelihood, N(0, I) prior, diagonal Gaussian
q(z|x), single-sample ELBO with analytic KL, Adam; 60,000 examples per epoch resident on the
device, dynamically binarized inside the step.

    python scripts/bench_train.py                       # batch 128 and 1024, vaegen's fused epoch
    python scripts/bench_train.py --baselines torch     # also an eager PyTorch loop of the same model

Measured: ``vaegen``, the trainer's own fused epoch (``vaegen.train.make_train_epoch``, one
``lax.scan`` per epoch, donated state); ``jax_step_loop``, the same step jitted alone and
dispatched once per batch from Python (what a naive loop does); ``torch_eager``, an eager
PyTorch training loop of the same model (if torch is installed).  Timings exclude compilation
and the first epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

N = 60_000


def _data(n=N):
    return np.random.RandomState(0).randint(0, 256, size=(n, 28, 28, 1)).astype(np.uint8)


def bench_vaegen(batch: int, epochs: int) -> dict:
    from vaegen import config, model, sharding, train

    cfg = config.load_config("vae_mlp_fmnist", [f"train.batch_size={batch}"])
    setup = train.build_setup(cfg, (28, 28, 1), N)
    mesh = sharding.data_mesh()
    rep = sharding.replicated(mesh)
    data = jax.device_put(_data(), rep)
    v = model.init_params(setup.model, jax.random.key(0), (28, 28, 1))
    state = jax.device_put(train.TrainState(step=jnp.zeros((), jnp.int32), params=v, opt_state=setup.optimizer.init(v)), rep)
    epoch_fn = train.make_train_epoch(setup.model, setup.objective, setup.optimizer, batch_size=batch,
                                      steps_per_epoch=setup.steps_per_epoch, protocol="dynamic", seed=0, mesh=mesh)
    t = time.perf_counter()
    compiled = epoch_fn.lower(state, data, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t
    state, m = compiled(state, data, jnp.int32(0))
    jax.block_until_ready(m)
    t = time.perf_counter()
    for e in range(1, epochs + 1):
        state, m = compiled(state, data, jnp.int32(e))
    jax.block_until_ready(m)
    dt = time.perf_counter() - t
    return {"examples_per_second": epochs * setup.steps_per_epoch * batch / dt, "compile_seconds": compile_s,
            "final_train_elbo": float(m["elbo"])}


def bench_jax_step_loop(batch: int, epochs: int) -> dict:
    """The same step, jitted alone and dispatched once per batch (for comparison)."""
    import optax

    from vaegen import config, data as data_lib, model, objectives, train

    cfg = config.load_config("vae_mlp_fmnist", [f"train.batch_size={batch}"])
    setup = train.build_setup(cfg, (28, 28, 1), N)
    data = jax.device_put(_data())
    v = model.init_params(setup.model, jax.random.key(0), (28, 28, 1))
    opt_state = setup.optimizer.init(v)

    @jax.jit
    def step(v, opt_state, idx, key):
        kd, ko = jax.random.split(key)
        x = data_lib.to_float(kd, data[idx], "dynamic")
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
    v, opt_state, l = step(v, opt_state, perm[0], key)
    jax.block_until_ready(l)
    t = time.perf_counter()
    for e in range(epochs):
        for i in range(steps):
            v, opt_state, l = step(v, opt_state, perm[i], jax.random.fold_in(key, e * steps + i))
    jax.block_until_ready(l)
    dt = time.perf_counter() - t
    return {"examples_per_second": epochs * steps * batch / dt}


def bench_torch_eager(batch: int, epochs: int) -> dict:
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

    def epoch():
        perm = torch.randperm(N)
        for i in range(steps):
            x = torch.bernoulli(data[perm[i * batch:(i + 1) * batch]].float() / 255)
            loss = -model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss

    epoch()
    t = time.perf_counter()
    for _ in range(epochs):
        epoch()
    dt = time.perf_counter() - t
    return {"examples_per_second": epochs * steps * batch / dt, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="128,1024")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement (after a warm-up epoch)")
    p.add_argument("--baselines", default="", help="comma-separated: jax_step_loop, torch")
    args = p.parse_args()
    out = {
        "model": "MLP VAE 784-200-200-50 tanh, Bernoulli, analytic-KL ELBO, Adam; 60,000 examples/epoch",
        "device": str(jax.devices()[0].device_kind if hasattr(jax.devices()[0], "device_kind") else jax.devices()[0]),
        "backend": jax.default_backend(), "num_devices": jax.device_count(), "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__, "results": {},
    }
    baselines = [b for b in args.baselines.split(",") if b]
    for b in (int(s) for s in args.batch_sizes.split(",")):
        r = {"vaegen": bench_vaegen(b, args.epochs)}
        if "jax_step_loop" in baselines:
            r["jax_step_loop"] = bench_jax_step_loop(b, max(1, args.epochs // 2))
        if "torch" in baselines:
            r["torch_eager"] = bench_torch_eager(b, args.epochs)
            r["speedup_vs_torch_eager"] = r["vaegen"]["examples_per_second"] / r["torch_eager"]["examples_per_second"]
        out["results"][f"batch_{b}"] = r
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
