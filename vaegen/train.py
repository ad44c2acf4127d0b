"""One trainer for every model and objective.

The whole training split lives on the device as uint8; an epoch is **one** jitted device call:
a ``lax.scan`` over its steps that gathers each batch from the device-resident array,
binarizes it on the device (protocol from the config), computes the per-example objective
(vmapped, one key per example) and applies the optax update.  The state is donated, so
parameters are updated in place.

Randomness is stateless: every key is derived from ``config.seed`` by purpose and then by
epoch or step (``fold_in``), never carried through the loop, so a run resumed from a
checkpoint at epoch e draws exactly the noise an uninterrupted run would have drawn.

The workdir describes itself: ``config.json`` (the config), ``run.json`` (dataset, shapes,
versions, devices), ``metrics.jsonl`` (one line per epoch: training terms averaged over the
epoch, validation bound, gradient norm, steps/s), ``checkpoints/<epoch>/`` (orbax).  Training
resumes from the latest checkpoint when the workdir has one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vaegen import checkpoint as checkpoint_lib
from vaegen import config as config_lib
from vaegen import data as data_lib
from vaegen import likelihoods as likelihoods_lib
from vaegen import model as model_lib
from vaegen import objectives as objectives_lib
from vaegen import sharding as sharding_lib

# --- stateless randomness ----------------------------------------------------------------------

_PURPOSES = {"init": 0, "shuffle": 1, "noise": 2, "validation": 3, "evaluation": 4, "sample": 5}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """The root key of one random stream: ``fold_in(key(seed), purpose id)``."""
    return jax.random.fold_in(jax.random.key(seed), _PURPOSES[purpose])


# --- state and optimiser -----------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    """What changes during training: the global step, the variables and the optimizer state."""

    step: jax.Array  # int32 []
    params: Any  # {"params": {"prior", "likelihood", "posterior"}}
    opt_state: Any


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimiser and learning-rate schedule of ``config.optim``."""
    lr = float(cfg.learning_rate)
    warmup = int(round(float(cfg.warmup_epochs) * steps_per_epoch))
    decay_steps = max(1, int(round(float(cfg.decay_epochs) * steps_per_epoch)))
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.final_lr_fraction))
    elif cfg.schedule == "exponential":
        schedule = optax.exponential_decay(lr, transition_steps=decay_steps, decay_rate=float(cfg.decay_rate))
    else:
        raise config_lib.ConfigError(f"unknown schedule {cfg.schedule!r}")
    if warmup > 0:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])

    if cfg.optimizer == "adam":
        opt = optax.adam(schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps))
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
                          weight_decay=float(cfg.weight_decay))
    elif cfg.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=float(cfg.momentum) or None)
    else:
        raise config_lib.ConfigError(f"unknown optimizer {cfg.optimizer!r}")
    if float(cfg.grad_clip_norm) > 0:
        opt = optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip_norm)), opt)
    return opt


def validation_objective(config: ml_collections.ConfigDict) -> objectives_lib.Objective:
    """The bound tracked on held-out data: the true ELBO (beta = 1) for ELBO training, the
    training IWAE_k for IWAE, log p(x | z = f(x)) for an autoencoder."""
    name = config.objective.name
    if name == "elbo":
        return objectives_lib.ELBO(num_samples=int(config.eval.validation_num_samples),
                                   analytic_kl=bool(config.objective.analytic_kl))
    if name == "iwae":
        return objectives_lib.IWAE(num_samples=int(config.objective.num_samples))
    if name == "dae":  # log P(x | x~) without the walk
        from vaegen import dae

        return dae.validation_objective(config.objective)
    if name == "exact":
        return objectives_lib.build_objective(config.objective)
    return objectives_lib.Autoencoder(code_penalty=0.0)


# --- the fused epoch ---------------------------------------------------------------------------

def make_train_epoch(
    model: model_lib.LatentVariableModel,
    objective: objectives_lib.Objective,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps_per_epoch: int,
    protocol: str,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_epoch(state, data_u8, epoch) -> (state, metrics)``, jitted with the state
    donated.

    ``data_u8 [N, *event]`` is the device-resident training split; the epoch visits
    ``steps_per_epoch * batch_size`` examples in the order of a permutation drawn from
    ``(seed, epoch)``; step ``t`` draws its noise from ``(seed, t)``.  ``metrics`` holds every
    objective term averaged over the epoch's examples, and the mean gradient and parameter norms.
    """
    shuffle_root = purpose_key(seed, "shuffle")
    noise_root = purpose_key(seed, "noise")
    batch_sharding = sharding_lib.batch_sharded(mesh)

    def train_step(state: TrainState, idx: jax.Array, data_u8: jax.Array):
        key = jax.random.fold_in(noise_root, state.step)
        key_data, key_obj = jax.random.split(key)
        x = data_u8[idx]                                              # [B, *event] uint8
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        x = data_lib.to_float(key_data, x, protocol)                  # [B, *event] float32
        example_keys = jax.random.split(key_obj, batch_size)          # [B]

        def loss_fn(params):
            terms = objectives_lib.batched(objective, model, params, x, example_keys, state.step)
            return -jnp.mean(terms["objective"]), terms                # nats per example

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["param_norm"] = optax.global_norm(params)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def train_epoch(state: TrainState, data_u8: jax.Array, epoch: jax.Array):
        n = data_u8.shape[0]
        perm = jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), n)
        batches = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        state, metrics = jax.lax.scan(lambda s, idx: train_step(s, idx, data_u8), state, batches)
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit(train_epoch, donate_argnums=(0,))


def make_evaluate(
    model: model_lib.LatentVariableModel,
    objective: objectives_lib.Objective,
    *,
    protocol: str,
    batch_size: int,
) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Builds ``evaluate(params, data_u8, key) -> terms``, per-example terms ``[N]`` (nats).

    Example ``i`` uses the key ``fold_in(key, i)``, so results do not depend on ``batch_size``,
    which only bounds memory (``lax.map`` over chunks of vmapped examples).
    """

    def evaluate(params, data_u8, key):
        n = data_u8.shape[0]

        def one(args):
            i, x_u8 = args
            k = jax.random.fold_in(key, i)
            k_data, k_obj = jax.random.split(k)
            x = data_lib.to_float(k_data, x_u8, protocol)
            return objective(model, params, x, k_obj)

        return jax.lax.map(one, (jnp.arange(n), data_u8), batch_size=min(batch_size, max(n, 1)))

    return jax.jit(evaluate)


# --- the run -----------------------------------------------------------------------------------

class WorkdirError(RuntimeError):
    """The workdir cannot be used for this run (another run's, or not writable)."""


@dataclasses.dataclass
class Setup:
    """Everything a run derives from its config and data (shared by training and loading)."""

    config: ml_collections.ConfigDict
    model: model_lib.LatentVariableModel
    event_shape: tuple[int, ...]
    steps_per_epoch: int
    objective: objectives_lib.Objective
    optimizer: optax.GradientTransformation


def build_setup(config: ml_collections.ConfigDict, event_shape: tuple[int, ...], num_train: int) -> Setup:
    batch = int(config.train.batch_size)
    if batch > num_train:
        raise config_lib.ConfigError(
            f"config.train.batch_size={batch} is larger than the training set ({num_train} examples)"
        )
    steps_per_epoch = num_train // batch
    model = model_lib.build_model(config.model, config.inference, event_shape)
    objective = objectives_lib.build_objective(config.objective, steps_per_epoch=steps_per_epoch)
    optimizer = make_optimizer(config.optim, steps_per_epoch)
    return Setup(config, model, tuple(event_shape), steps_per_epoch, objective, optimizer)


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
    """A hash of everything in the config that determines the trajectory of a run (all keys but
    ``config.RESUMABLE_KEYS``)."""
    flat = {k: v for k, v in config_lib.flatten(config).items() if not _resumable(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resumable(key: str) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in config_lib.RESUMABLE_KEYS)


def _check_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Returns True if the workdir holds this run already (resume); raises if it holds another."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir} is not writable; choose another --workdir")
    stored = workdir / "config.json"
    if stored.exists():
        try:
            previous = config_lib.from_json(stored.read_text())
        except (ValueError, config_lib.ConfigError) as e:
            raise WorkdirError(f"{stored} is not a vaegen config ({e}); use a new --workdir") from None
        diff = config_lib.differences(previous, config)
        if diff:
            raise WorkdirError(
                f"workdir {workdir} belongs to a run with a different config ({'; '.join(diff)}); "
                "use a new --workdir, or resume with the same config"
            )
        return True
    if any(workdir.iterdir()):
        raise WorkdirError(
            f"workdir {workdir} is not empty and holds no vaegen run (no config.json); "
            "choose an empty or new --workdir so nothing in it is overwritten"
        )
    return False


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import distrax
    import orbax.checkpoint

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "distrax": distrax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "numpy": np.__version__,
    }


_SPLIT_SEED_OFFSET = {"train": 0, "validation": 1, "test": 2}


def split_protocol(config: ml_collections.ConfigDict, split: str) -> str:
    """The binarization protocol of a split: the configured one for training, and for held-out
    splits :func:`vaegen.data.eval_protocol` of it (a dynamic protocol's held-out sets are
    binarized once)."""
    protocol = config.data.binarization
    return protocol if split == "train" else data_lib.eval_protocol(protocol)


def stored_split(config: ml_collections.ConfigDict, x_u8: np.ndarray, split: str) -> jax.Array:
    """A split as it is stored on the device (uint8): binarized once where its protocol says so,
    with seed ``data.binarization_seed`` + (0 train, 1 validation, 2 test)."""
    seed = int(config.data.binarization_seed) + _SPLIT_SEED_OFFSET[split]
    return data_lib.binarize_once(x_u8, split_protocol(config, split), seed)


def load_data(config: ml_collections.ConfigDict) -> data_lib.Splits:
    """The run's splits, with the likelihood's support checked on what the model will see."""
    splits = data_lib.load_splits(config.data)
    if config.model.likelihood == "bernoulli" and config.data.binarization == "none":
        for name in ("train", "validation", "test"):
            arr = getattr(splits, name)
            if arr.size:
                likelihoods_lib.check_support("bernoulli", np.asarray(arr[:2000], np.float32) / 255.0,
                                              what=f"the {name} split of {config.data.name} (binarization 'none')")
    return splits


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       splits: data_lib.Splits | None = None, devices=None) -> dict[str, Any]:
    """Trains the model of ``config`` in ``workdir`` (resuming if it holds a checkpoint).

    Args:
      splits: the data (default: loaded from ``config.data``).
      devices: devices to train data-parallel on (default: all).

    Returns the last line written to ``metrics.jsonl`` (empty if nothing was left to train).
    """
    from tqdm.auto import tqdm

    workdir = pathlib.Path(workdir)
    config_lib.validate(config)
    if splits is None:
        splits = load_data(config)
    resuming = _check_workdir(workdir, config)
    event_shape = tuple(splits.train.shape[1:])
    setup = build_setup(config, event_shape, splits.train.shape[0])
    model, seed = setup.model, int(config.seed)

    mesh = sharding_lib.data_mesh(devices)
    n_dev = mesh.devices.size
    if config.train.batch_size % n_dev:
        raise config_lib.ConfigError(
            f"config.train.batch_size={config.train.batch_size} must be divisible by the number of devices ({n_dev})"
        )
    replicated = sharding_lib.replicated(mesh)
    protocol = split_protocol(config, "train")
    eval_proto = split_protocol(config, "validation")
    train_u8 = jax.device_put(stored_split(config, splits.train, "train"), replicated)
    val_u8 = jax.device_put(stored_split(config, splits.validation, "validation"), replicated)

    # Initial state (also the template that checkpoints are restored into).
    variables = model_lib.init_params(model, purpose_key(seed, "init"), event_shape)
    if config.model.init_output_bias_from_data:
        variables = model_lib.set_output_bias(variables, model, data_lib.data_mean(splits.train, protocol))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables,
                       opt_state=setup.optimizer.init(variables))
    state = jax.device_put(state, replicated)

    checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", int(config.train.keep_checkpoints))
    fingerprint = config_fingerprint(config)
    start_epoch = 0
    latest = checkpointer.latest_epoch()
    if latest is not None:
        meta = checkpointer.restore_meta(latest)
        if meta.get("config_fingerprint") != fingerprint:
            raise checkpoint_lib.CheckpointError(
                f"checkpoint {checkpointer.directory / str(latest)} was written under a different config "
                f"(fingerprint {meta.get('config_fingerprint')} != {fingerprint}); use a new --workdir"
            )
        params, rest = checkpointer.restore(latest, state.params, {"step": state.step, "opt_state": state.opt_state})
        state = TrainState(step=rest["step"], params=params, opt_state=rest["opt_state"])
        start_epoch = int(meta["epoch"])

    metrics_path = workdir / "metrics.jsonl"
    if not resuming:
        _write_atomic(workdir / "config.json", config_lib.to_json(config) + "\n")
    _write_atomic(workdir / "run.json", json.dumps({
        "event_shape": list(event_shape),
        "data": splits.info,
        "steps_per_epoch": setup.steps_per_epoch,
        "devices": [str(d) for d in jax.devices()],
        "platform": jax.default_backend(),
        "versions": _versions(),
        "config_fingerprint": fingerprint,
    }, indent=2, default=str) + "\n")
    _truncate_metrics(metrics_path, start_epoch)

    num_epochs = int(config.train.num_epochs)
    if start_epoch >= num_epochs:
        checkpointer.close()
        return _last_metrics(metrics_path)

    train_epoch = make_train_epoch(
        model, setup.objective, setup.optimizer, batch_size=int(config.train.batch_size),
        steps_per_epoch=setup.steps_per_epoch, protocol=protocol, seed=seed, mesh=mesh,
    )
    evaluate = make_evaluate(model, validation_objective(config), protocol=eval_proto,
                             batch_size=int(config.eval.batch_size))
    bound = setup.objective.bound_name
    val_key = purpose_key(seed, "validation")

    t0 = time.perf_counter()
    compiled = train_epoch.lower(state, train_u8, jnp.int32(start_epoch)).compile()
    compile_s = time.perf_counter() - t0

    last: dict[str, Any] = {}
    bar = tqdm(range(start_epoch, num_epochs), initial=start_epoch, total=num_epochs, unit="epoch",
               disable=not config.train.progress, dynamic_ncols=True, desc="train")
    for epoch in bar:
        t = time.perf_counter()
        state, metrics = compiled(state, train_u8, jnp.int32(epoch))
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - t
        line: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": int(state.step),
            **{f"train/{k}": float(v) for k, v in metrics.items()},
            "steps_per_second": setup.steps_per_epoch / seconds,
            "examples_per_second": setup.steps_per_epoch * int(config.train.batch_size) / seconds,
            "epoch_seconds": seconds,
        }
        if epoch == start_epoch:
            line["compile_seconds"] = compile_s
        every = int(config.train.eval_every_epochs)
        if val_u8.shape[0] and every and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs):
            terms = jax.device_get(evaluate(state.params, val_u8, val_key))
            line.update({f"validation/{k}": float(np.mean(v)) for k, v in terms.items()})
        _append_jsonl(metrics_path, line)
        last = line
        postfix = {f"train_{bound}": f"{line[f'train/{bound}']:.2f}", "ex/s": f"{line['examples_per_second']:.3g}"}
        if f"validation/{bound}" in line:
            postfix[f"val_{bound}"] = f"{line[f'validation/{bound}']:.2f}"
        bar.set_postfix(postfix)
        if (epoch + 1) % int(config.train.checkpoint_every_epochs) == 0 or epoch + 1 == num_epochs:
            checkpointer.save(epoch + 1, state.params, {"step": state.step, "opt_state": state.opt_state},
                              {"epoch": epoch + 1, "step": int(state.step), "config_fingerprint": fingerprint})
    bar.close()
    checkpointer.close()
    return last


def _append_jsonl(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: pathlib.Path, epoch: int) -> None:
    """Drops lines of epochs after ``epoch`` (left by a run that died before checkpointing
    them); they are recomputed, identically, by the resumed run."""
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    keep = [l for l in lines if json.loads(l).get("epoch", 0) <= epoch]
    if len(keep) != len(lines):
        _write_atomic(path, "".join(l + "\n" for l in keep))


def _last_metrics(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    return json.loads(lines[-1]) if lines else {}
