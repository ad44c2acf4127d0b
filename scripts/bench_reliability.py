"""What reliability costs: prints one JSON object.

* ``guard``: steps/s of the fused trainer with the non-finite guard (the check of the loss,
  gradient and update, and the selection that leaves the state untouched) and without it, in
  wall time and per CPU-second of the process (steadier on a shared machine).
* ``steps_per_call``: steps/s when an epoch is split into calls of n steps (the bound on how
  long SIGINT/SIGTERM waits), against one call per epoch.
* ``checkpoint``: seconds to save (with the SHA-256 checksums), to checksum, and to restore
  and verify a checkpoint of the model.

Usage (Fashion-MNIST must be prepared; any preset and overrides work)::

    python scripts/bench_reliability.py --config vae_mlp_fmnist --steps 200 --repeats 3

The numbers are for the device JAX picks (CPU here; the same script runs on a GPU or TPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vae_mlp_fmnist")
    p.add_argument("--steps", type=int, default=200, help="steps per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant (the best is reported)")
    p.add_argument("--chunks", default="10,50", help="steps_per_call values to compare with whole calls")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()

    from vaegen.train import checkpoint as checkpoint_lib
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.data import splits as splits_lib
    from vaegen.train import faults as faults_lib
    from vaegen.model import latent as model_lib
    from vaegen import sharding as sharding_lib
    from vaegen.train import steps as steps_lib
    from vaegen.train import trainer as train_lib

    spec = to_spec(config_lib.load_config(args.config, args.overrides))
    splits = train_lib.load_data(spec)
    event_shape = splits.train.shape[1:]
    setup = train_lib.build_setup(spec, event_shape, splits.train.shape[0])
    batch = int(spec.train.batch_size)
    steps = min(args.steps, setup.steps_per_epoch)
    mesh = sharding_lib.data_mesh()
    rows = sharding_lib.shard_rows(np.asarray(splits_lib.stored_split(spec.data, splits.train, "train")), mesh)
    protocol = splits_lib.split_protocol(spec.data, "train")

    def fresh_state():
        params = model_lib.init_params(setup.model, jax.random.key(0), event_shape)
        state = steps_lib.TrainState(step=jnp.int32(0), params=params, opt_state=setup.optimizer.init(params))
        return jax.device_put(state, sharding_lib.replicated(mesh))

    def build(num_steps):
        return steps_lib.make_train_steps(
            setup.model, setup.objective, setup.optimizer, batch_size=batch, steps_per_epoch=setup.steps_per_epoch,
            num_steps=num_steps, protocol=protocol, seed=0, mesh=mesh,
            max_consecutive_skips=int(spec.train.max_consecutive_skips), num_examples=splits.train.shape[0])

    def variant(num_steps, guarded=True):
        """A compiled call of ``num_steps`` steps (with or without the non-finite guard) and the
        number of calls that make ``steps`` steps."""
        finite_step = faults_lib.finite_step
        if not guarded:
            faults_lib.finite_step = lambda *args: jnp.asarray(True)  # the cond folds away: no guard
        try:
            fn = build(num_steps)
            state = fresh_state()
            fn = fn.lower(state, rows, jnp.int32(0), jnp.int32(0)).compile()
        finally:
            faults_lib.finite_step = finite_step
        return {"fn": fn, "calls": steps // num_steps, "num_steps": num_steps, "state": state, "best": 0.0,
                "best_cpu": 0.0}

    variants = {"guarded": variant(steps), "unguarded": variant(steps, guarded=False)}
    for n in (int(c) for c in args.chunks.split(",") if c):
        if n < steps:
            variants[f"steps_per_call={n}"] = variant(n)

    # Interleaved repeats (every variant once per round), best of the rounds; also steps per
    # CPU-second of this process (all its threads), which the load of a shared machine disturbs
    # far less than wall time.
    for r in range(args.repeats + 1):
        for v in variants.values():
            t, cpu = time.perf_counter(), time.process_time()
            for c in range(v["calls"]):
                v["state"], m = v["fn"](v["state"], rows, jnp.int32(r), jnp.int32(c * v["num_steps"]))
                steps_lib.EpochLog(m)  # the host reads every call's per-step metrics, as the trainer does
            done = v["num_steps"] * v["calls"]
            if r:  # round 0 warms up
                v["best"] = max(v["best"], done / (time.perf_counter() - t))
                v["best_cpu"] = max(v["best_cpu"], done / (time.process_time() - cpu))

    out = {"config": args.config, "overrides": args.overrides, "device": str(jax.devices()[0].device_kind),
           "platform": jax.default_backend(), "devices": jax.device_count(), "batch_size": batch,
           "steps": steps, "repeats": args.repeats}
    g, u = variants["guarded"], variants["unguarded"]
    out["guard"] = {"steps_per_second_guarded": g["best"], "steps_per_second_unguarded": u["best"],
                    "overhead_percent": 100.0 * (u["best"] / g["best"] - 1.0),
                    "steps_per_cpu_second_guarded": g["best_cpu"], "steps_per_cpu_second_unguarded": u["best_cpu"],
                    "cpu_overhead_percent": 100.0 * (u["best_cpu"] / g["best_cpu"] - 1.0)}
    out["steps_per_call"] = {"whole": {"steps_per_second": g["best"], "steps_per_cpu_second": g["best_cpu"]},
                             **{k.split("=")[1]: {"steps_per_second": v["best"], "steps_per_cpu_second": v["best_cpu"]}
                                for k, v in variants.items() if k.startswith("steps_per_call")}}

    state = fresh_state()
    items = state.checkpoint_items()
    with tempfile.TemporaryDirectory() as d:
        ckpt = checkpoint_lib.Checkpointer(d, max_to_keep=10)
        t = time.perf_counter()
        checkpoint_lib.tree_checksum(state.params), checkpoint_lib.tree_checksum(items)
        checksum_s = time.perf_counter() - t
        save_s, restore_s = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            ckpt.save(i + 1, state.params, items, {"epoch": i + 1})
            save_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ckpt.restore(i + 1, state.params, items)
            restore_s.append(time.perf_counter() - t)
        ckpt.close()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    out["checkpoint"] = {"parameters": n_params, "checksum_seconds": checksum_s, "save_seconds": min(save_s),
                         "restore_and_verify_seconds": min(restore_s)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
