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
epoch, validation bound, gradient norm, steps/s, skipped steps), ``checkpoints/<epoch>/``
(orbax).  Training resumes from the latest checkpoint when the workdir has one.

Faults (:mod:`vaegen.faults`, ``docs/errors.md``): a step with a non-finite loss or gradient
is skipped on the device and counted, and ``train.max_consecutive_skips`` consecutive skips
stop the run with :class:`vaegen.faults.NonFiniteError`.  SIGINT/SIGTERM are honoured when
the current device call returns (an epoch, or ``train.steps_per_call`` steps): a checkpoint
is written (``interrupted/<step>/`` in the middle of an epoch) and
:class:`vaegen.faults.TrainingInterrupted` is raised.  A run killed at any moment resumes
from its latest checkpoint to bitwise the parameters of an uninterrupted run (on the CPU;
results do not depend on ``steps_per_call``).  Every check on the config, the data and the
workdir runs before anything is written, and no error deletes or overwrites what a workdir
holds.

Multi-host (:mod:`vaegen.sharding`, ``docs/scaling.md``): the same code runs on one device,
several, or several hosts; the splits are sharded by rows over all devices and each step
gathers the same global batch as on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
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

from vaegen.train import checkpoint as checkpoint_lib
from vaegen.config import loading as config_lib
from vaegen.data import datasets as data_lib
from vaegen.train import faults as faults_lib
from vaegen.data import checks as inputs_lib
from vaegen.model import latent as model_lib
from vaegen.objectives import bounds as objectives_lib
from vaegen import sharding as sharding_lib
from vaegen.errors import WorkdirError

# --- stateless randomness ----------------------------------------------------------------------

_PURPOSES = {"init": 0, "shuffle": 1, "noise": 2, "validation": 3, "evaluation": 4, "sample": 5}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """The root key of one random stream: ``fold_in(key(seed), purpose id)``."""
    return jax.random.fold_in(jax.random.key(seed), _PURPOSES[purpose])


# --- state and optimiser -----------------------------------------------------------------------

def _zero() -> jax.Array:
    return jnp.zeros((), jnp.int32)


@flax.struct.dataclass
class TrainState:
    """What changes during training: the global step, the variables, the optimizer state and
    the count of skipped (non-finite) steps.

    ``step`` counts every step taken, skipped ones included (it indexes the data order and the
    noise); the optimizer's own count (inside ``opt_state``) counts applied updates only.
    """

    step: jax.Array  # int32 []
    params: Any  # {"params": {"prior", "likelihood", "posterior"}}
    opt_state: Any
    skipped_steps: jax.Array = flax.struct.field(default_factory=_zero)  # int32 [], in all
    consecutive_skips: jax.Array = flax.struct.field(default_factory=_zero)  # int32 [], current streak

    def checkpoint_items(self) -> dict[str, Any]:
        """Everything but ``params``, as stored in a checkpoint's ``train_state``."""
        return {"step": self.step, "opt_state": self.opt_state, "skipped_steps": self.skipped_steps,
                "consecutive_skips": self.consecutive_skips}


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
    elif cfg.schedule == "stages":
        schedule = stage_schedule(lr, cfg.stage_epochs, cfg.stage_factors, steps_per_epoch)
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
    if cfg.normalize_gradients != "none":
        opt = optax.chain(normalize_gradients(cfg.normalize_gradients), opt)
    if float(cfg.grad_clip_norm) > 0:
        opt = optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip_norm)), opt)
    return opt


def stage_schedule(lr: float, stage_epochs, stage_factors, steps_per_epoch: int) -> optax.Schedule:
    """A piecewise-constant learning rate: ``lr * stage_factors[i]`` for ``stage_epochs[i]`` epochs,
    the last factor thereafter (the IWAE paper's schedule: 3^i epochs at 1e-3 * 10^(-i/7),
    i = 0..7, 3,280 epochs in all)."""
    factors = [float(f) for f in stage_factors]
    ends = np.cumsum([int(e) * steps_per_epoch for e in stage_epochs])[:-1]
    values = jnp.asarray([lr * f for f in factors], jnp.float32)
    bounds = jnp.asarray(ends, jnp.int32)

    def schedule(step):
        return values[jnp.searchsorted(bounds, step, side="right")]

    return schedule


def normalize_gradients(mode: str, eps: float = 1e-7) -> optax.GradientTransformation:
    """Scales the gradient to unit norm before the optimiser: ``per_tensor`` divides each
    parameter's gradient by its own norm (+ eps), as the VampPrior code's AdamNormGrad does;
    ``global`` divides the whole gradient by its global norm."""
    if mode == "per_tensor":
        def per_tensor(grads, params):
            del params
            return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g) + eps), grads)

        return optax.stateless(per_tensor)
    if mode == "global":
        def global_(grads, params):
            del params
            norm = optax.global_norm(grads)
            return jax.tree_util.tree_map(lambda g: g / (norm + eps), grads)

        return optax.stateless(global_)
    raise config_lib.ConfigError(f"unknown optim.normalize_gradients {mode!r}; choose none, per_tensor or global")


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
        from vaegen.objectives import denoising as dae

        return dae.validation_objective(config.objective)
    if name in ("exact", "semi_amortized"):  # semi_amortized: the refined bound L[q_K] (and L[q_0] beside it)
        return objectives_lib.build_objective(config.objective)
    return objectives_lib.Autoencoder(code_penalty=0.0)


# --- the fused steps ---------------------------------------------------------------------------

def make_train_steps(
    model: model_lib.LatentVariableModel,
    objective: objectives_lib.Objective,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps_per_epoch: int,
    num_steps: int,
    protocol: str,
    seed: int,
    mesh: jax.sharding.Mesh,
    max_consecutive_skips: int = 10,
    num_examples: int | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_steps(state, train_rows, epoch, offset) -> (state, metrics)``: steps
    ``offset .. offset + num_steps - 1`` of ``epoch`` in one device call (a ``lax.scan``),
    jitted with the state donated.

    ``train_rows [N_pad, *event]`` is the training split as stored on the device (uint8),
    sharded by rows (:func:`vaegen.sharding.shard_rows`), of which the first ``num_examples``
    (default: all) are examples and the rest padding.  The epoch visits
    ``steps_per_epoch * batch_size`` examples in the order of a permutation drawn from
    ``(seed, epoch)``; step ``t`` (global) draws its noise from ``(seed, t)``.  Which steps
    share a call does not change the result.

    A step whose loss or gradient is not finite leaves ``params`` and ``opt_state`` as they
    were: the optimizer does not run (``vaegen.faults``) and is counted in ``skipped_steps`` and
    ``consecutive_skips``; once ``consecutive_skips`` reaches ``max_consecutive_skips`` the
    remaining steps of the call do nothing (the host then stops the run).

    ``metrics`` are per step, ``[num_steps]``: every objective term (mean over the batch, nats),
    ``grad_norm``, ``param_norm``, ``step`` (global index), ``finite`` (the update was applied)
    and ``ran`` (False for the steps after a stop).
    """
    return jax.jit(_train_steps_fn(model, objective, optimizer, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                                   num_steps=num_steps, protocol=protocol, seed=seed, mesh=mesh,
                                   max_consecutive_skips=max_consecutive_skips, num_examples=num_examples),
                   donate_argnums=(0,))


def _train_steps_fn(model, objective, optimizer, *, batch_size, steps_per_epoch, num_steps, protocol, seed, mesh,
                    max_consecutive_skips, num_examples):
    """The function :func:`make_train_steps` jits."""
    shuffle_root = purpose_key(seed, "shuffle")
    noise_root = purpose_key(seed, "noise")
    n_examples = steps_per_epoch * batch_size

    def step_fn(state: TrainState, idx: jax.Array, train_rows: jax.Array):
        # After max_consecutive_skips consecutive skips the call has halted: the remaining steps
        # apply nothing, count nothing and report NaN metrics with ran = False.  Halting is folded
        # into the update's predicate and a few scalar selections rather than a cond around the
        # whole step, which would cost every healthy step a copy of the carried state.
        halted = state.consecutive_skips >= max_consecutive_skips
        key = jax.random.fold_in(noise_root, state.step)
        key_data, key_obj = jax.random.split(key)
        x = sharding_lib.gather_rows(train_rows, idx, mesh)            # [B, *event] uint8, batch-sharded
        x = data_lib.to_float(key_data, x, protocol)                  # [B, *event] float32
        example_keys = jax.random.split(key_obj, batch_size)          # [B]

        def loss_fn(params):
            terms = objectives_lib.batched(objective, model, params, x, example_keys, state.step)
            return -jnp.mean(terms["objective"]), terms                # nats per example

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        finite = faults_lib.finite_step(loss, grad_norm)

        def update(params, opt_state):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        applied = finite & ~halted
        params, opt_state = faults_lib.guard_update(applied, update, state.params, state.opt_state)
        skipped = (~finite & ~halted).astype(jnp.int32)
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics["grad_norm"] = grad_norm
        metrics["param_norm"] = optax.global_norm(params)
        metrics = {k: jnp.where(halted, jnp.nan if jnp.issubdtype(v.dtype, jnp.floating) else 0, v)
                   for k, v in metrics.items()}
        metrics["step"] = state.step
        metrics["finite"] = applied
        metrics["ran"] = ~halted
        new_state = TrainState(step=state.step + (~halted).astype(state.step.dtype), params=params,
                               opt_state=opt_state, skipped_steps=state.skipped_steps + skipped,
                               consecutive_skips=jnp.where(halted, state.consecutive_skips,
                                                           (state.consecutive_skips + 1) * skipped))
        return new_state, metrics

    def train_steps(state: TrainState, train_rows: jax.Array, epoch: jax.Array, offset: jax.Array):
        n = num_examples or train_rows.shape[0]                        # the split's rows, not the padding
        perm = jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), n)
        batches = perm[:n_examples].reshape(steps_per_epoch, batch_size)           # [steps, B]
        batches = jax.lax.dynamic_slice_in_dim(batches, offset, num_steps, axis=0)  # [num_steps, B]

        def body(s, idx):
            return step_fn(s, idx, train_rows)

        return jax.lax.scan(body, state, batches)

    return train_steps


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
    max_consecutive_skips: int = 10,
    num_examples: int | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_epoch(state, train_rows, epoch) -> (state, metrics)``: a whole epoch in one
    device call (jitted, state donated), ``metrics`` averaged on the device over the epoch's
    applied (finite) steps, with ``skipped_steps`` their count.  See :func:`make_train_steps`
    (the trainer uses that, to split epochs and log every step)."""
    steps = _train_steps_fn(model, objective, optimizer, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                            num_steps=steps_per_epoch, protocol=protocol, seed=seed, mesh=mesh,
                            max_consecutive_skips=max_consecutive_skips, num_examples=num_examples)

    def train_epoch(state, train_rows, epoch):
        state, m = steps(state, train_rows, epoch, jnp.int32(0))
        ok = m["finite"] & m["ran"]
        count = jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)
        means = {k: jnp.sum(jnp.where(ok, v, 0.0)) / count for k, v in m.items() if k not in ("step", "finite", "ran")}
        means["skipped_steps"] = jnp.sum(m["ran"] & ~m["finite"])
        return state, means

    return jax.jit(train_epoch, donate_argnums=(0,))


class EpochLog:
    """The per-step metrics of an epoch, gathered call by call on the host.

    Means are taken in float64 over the applied (finite) steps only, so they do not depend on
    how the epoch was split into calls (nor on an interruption in between).
    """

    def __init__(self, metrics: dict[str, Any] | None = None):
        self.steps: dict[str, list] = {}
        if metrics is not None:
            self.add(metrics)

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in jax.device_get(metrics).items():
            self.steps.setdefault(k, []).extend(np.asarray(v).tolist())

    def __len__(self) -> int:
        return len(self.steps.get("step", []))

    def _mask(self) -> np.ndarray:
        return np.asarray(self.steps.get("finite", []), bool) & np.asarray(self.steps.get("ran", []), bool)

    def means(self) -> dict[str, float]:
        ok = self._mask()
        out = {}
        for k, v in self.steps.items():
            if k in ("step", "finite", "ran"):
                continue
            vals = np.asarray(v, np.float64)[ok]
            out[k] = float(vals.mean()) if vals.size else float("nan")
        return out

    def skipped_at(self) -> list[int]:
        """Global indices of the steps skipped as non-finite."""
        ran = np.asarray(self.steps.get("ran", []), bool)
        bad = ran & ~np.asarray(self.steps.get("finite", []), bool)
        return [int(s) for s in np.asarray(self.steps.get("step", []))[bad]]

    def last_finite(self) -> tuple[int, dict[str, float]] | None:
        """``(step, metrics)`` of the last applied step, or None."""
        ok = np.flatnonzero(self._mask())
        if not ok.size:
            return None
        i = int(ok[-1])
        return int(self.steps["step"][i]), {k: float(v[i]) for k, v in self.steps.items()
                                            if k not in ("step", "finite", "ran")}

    def to_json(self) -> dict[str, list]:
        """JSON-able (non-finite values as None), for an interrupt checkpoint's meta."""
        return {k: [faults_lib.finite_or_none(x) if isinstance(x, float) else x for x in v]
                for k, v in self.steps.items()}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> "EpochLog":
        log = cls()
        log.steps = {k: [float("nan") if x is None else x for x in v] for k, v in data.items()}
        return log


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


def make_sharded_evaluate(
    model: model_lib.LatentVariableModel,
    objective: objectives_lib.Objective,
    *,
    protocol: str,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """:func:`make_evaluate` over row-sharded data (:func:`vaegen.sharding.shard_rows`): each
    device evaluates its own rows, example ``i`` with the key ``fold_in(key, i)`` (``i`` the
    global row index), so the per-example terms are those of :func:`make_evaluate` whatever
    the number of devices.  Returns terms ``[N_pad]``, replicated; drop the padding rows."""

    def one(params, x_u8, i, key):
        k_data, k_obj = jax.random.split(jax.random.fold_in(key, i))
        x = data_lib.to_float(k_data, x_u8, protocol)
        return objective(model, params, x, k_obj)

    def evaluate(params, rows, key):
        return sharding_lib.map_examples(lambda p, x, i: one(p, x, i, key), mesh, batch_size=batch_size)(params, rows)

    return jax.jit(evaluate)


# --- the run -----------------------------------------------------------------------------------

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


def config_fingerprint(config: ml_collections.ConfigDict | dict) -> str:
    """A hash of everything in the config that determines the trajectory of a run (all keys but
    ``config.RESUMABLE_KEYS``); a config and its JSON (``config.json``) hash alike."""
    flat = {k: v for k, v in config_lib.flatten(config).items() if not _resumable(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resumable(key: str) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in config_lib.RESUMABLE_KEYS)


def _check_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Returns True if the workdir holds this run already (resume); raises
    :class:`WorkdirError` if it cannot be used.  Writes nothing (see :func:`_create_workdir`)."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkdirError(f"cannot create workdir {workdir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == workdir else f" ({existing} is not writable)"
        raise WorkdirError(f"workdir {workdir} is not writable{where}; choose another --workdir")
    if not workdir.exists():
        return False
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


def _create_workdir(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror}") from None


def data_fingerprint(splits: data_lib.Splits) -> str:
    """A hash of the training and validation data (shapes and bytes): a workdir trained on
    other data is not resumed."""
    h = hashlib.sha256()
    for name in ("train", "validation"):
        x = np.ascontiguousarray(getattr(splits, name))
        h.update(f"{name}{x.dtype.str}{x.shape};".encode())
        h.update(memoryview(x).cast("B"))
    return h.hexdigest()[:16]


def _check_run_json(workdir: pathlib.Path, fingerprint: str) -> None:
    path = workdir / "run.json"
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text()).get("data_fingerprint")
    except (ValueError, AttributeError):
        raise WorkdirError(f"{path} is not a vaegen run description; use a new --workdir") from None
    if previous is not None and previous != fingerprint:
        raise WorkdirError(
            f"workdir {workdir} belongs to a run trained on other data (data fingerprint {previous} != "
            f"{fingerprint}); use a new --workdir"
        )


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
    """The run's splits, checked (:func:`vaegen.inputs.check_splits`: shapes, dtype, the
    likelihood's support on what the model will see)."""
    try:
        splits = data_lib.load_splits(config.data)
    except ValueError as e:
        if type(e) is not ValueError:  # e.g. IDXFormatError: already a clear error of its own
            raise
        raise config_lib.ConfigError(str(e).rstrip(".")) from None
    inputs_lib.check_splits(splits, config)
    return splits


def init_pseudo_inputs(config: ml_collections.ConfigDict, variables: Any, train_u8: np.ndarray) -> Any:
    """``variables`` with the VampPrior's K pseudo-inputs set to K training examples (grey levels
    / 255 as stored for the run's protocol), drawn without replacement by the run's init seed."""
    from vaegen.blocks import priors as priors_lib

    k = int(config.model.prior_components)
    if k > train_u8.shape[0]:
        raise config_lib.ConfigError(
            f"config.model.vampprior_init=data takes {k} pseudo-inputs (config.model.prior_components) from "
            f"{train_u8.shape[0]} training examples; lower prior_components or use vampprior_init=random")
    rows = np.asarray(jax.random.choice(jax.random.fold_in(purpose_key(int(config.seed), "init"), 1),
                                        train_u8.shape[0], (k,), replace=False))
    x = np.asarray(stored_split(config, train_u8[np.sort(rows)], "train"), np.float32) / 255.0
    return priors_lib.init_pseudo_inputs_from_data(variables, x)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       splits: data_lib.Splits | None = None, devices=None) -> dict[str, Any]:
    """Trains the model of ``config`` in ``workdir`` (resuming if it holds a checkpoint).

    Args:
      splits: the data (default: loaded from ``config.data``); checked by
        :func:`vaegen.inputs.check_splits`.
      devices: devices to train data-parallel on (default: all, of all processes).

    Returns the last line written to ``metrics.jsonl`` (empty if nothing was left to train).

    Raises (each before anything is written, except the last two):
      vaegen.ConfigError, vaegen.inputs.DataError, vaegen.likelihoods.SupportError,
      vaegen.data.DatasetNotFoundError: bad config or data.
      WorkdirError: the workdir holds another run, other data, or cannot be written.
      vaegen.checkpoint.CheckpointError: its checkpoint is corrupt or from another config.
      vaegen.faults.NonFiniteError: ``train.max_consecutive_skips`` consecutive non-finite steps.
      vaegen.faults.TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was written.
    """
    from tqdm.auto import tqdm

    # --- checks: nothing is written until all of them pass ----------------------------------
    workdir = pathlib.Path(workdir)
    config_lib.validate(config)
    if splits is None:
        splits = load_data(config)
    else:
        inputs_lib.check_splits(splits, config)
    event_shape = tuple(splits.train.shape[1:])
    num_train = splits.train.shape[0]
    setup = build_setup(config, event_shape, num_train)
    model, seed, spe = setup.model, int(config.seed), setup.steps_per_epoch
    batch_size = int(config.train.batch_size)
    max_skips = int(config.train.max_consecutive_skips)
    mesh = sharding_lib.data_mesh(devices)
    n_dev = mesh.devices.size
    if batch_size % n_dev:
        raise config_lib.ConfigError(
            f"config.train.batch_size={batch_size} must be divisible by the number of devices ({n_dev})"
        )
    resuming = _check_workdir(workdir, config)
    data_hash = data_fingerprint(splits)
    if resuming:
        _check_run_json(workdir, data_hash)
    primary = sharding_lib.is_primary()
    replicated = sharding_lib.replicated(mesh)

    # Initial state (also the template that checkpoints are restored into).
    protocol = split_protocol(config, "train")
    eval_proto = split_protocol(config, "validation")
    variables = model_lib.init_params(model, purpose_key(seed, "init"), event_shape)
    if config.model.init_output_bias_from_data:
        variables = model_lib.set_output_bias(variables, model, data_lib.data_mean(splits.train, protocol))
    if config.model.prior == "vampprior" and config.model.vampprior_init == "data":
        variables = init_pseudo_inputs(config, variables, splits.train)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables, opt_state=setup.optimizer.init(variables))
    state = jax.device_put(state, replicated)

    # A resumed run is identified by its config as written: keys added to the schema since then
    # (filled in with their defaults, which _check_workdir has compared) do not orphan it.
    fingerprint = (config_fingerprint(json.loads((workdir / "config.json").read_text())) if resuming
                   else config_fingerprint(config))
    checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", int(config.train.keep_checkpoints),
                                               read_only=not workdir.exists())
    interrupts = checkpoint_lib.Checkpointer(workdir / INTERRUPTED_DIR, 1, read_only=not workdir.exists())
    try:
        resume = _restore(state, fingerprint, checkpointer, interrupts)
    except BaseException:
        checkpointer.close()
        interrupts.close()
        raise
    state = resume.state
    start_epoch, start_offset, epoch_log, last_finite = resume.epoch, resume.offset, resume.log, resume.last_finite
    patience = int(config.train.early_stopping_patience)
    stopper = EarlyStopping.from_json(resume.early_stopping, patience=patience,
                                      min_epochs=int(config.train.early_stopping_min_epochs))

    # --- from here on the workdir is written ---------------------------------------------------
    checkpointer.close()
    interrupts.close()
    metrics_path = workdir / "metrics.jsonl"
    if primary:
        _create_workdir(workdir)
        if not resuming:
            _write_atomic(workdir / "config.json", config_lib.to_json(config) + "\n")
        _write_atomic(workdir / "run.json", json.dumps({
            "event_shape": list(event_shape),
            "data": splits.info,
            "data_fingerprint": data_hash,
            "steps_per_epoch": spe,
            "devices": [str(d) for d in mesh.devices.flat],
            "processes": jax.process_count(),
            "platform": jax.default_backend(),
            "versions": _versions(),
            "config_fingerprint": fingerprint,
        }, indent=2, default=str) + "\n")
        _truncate_metrics(metrics_path, start_epoch)
    checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", int(config.train.keep_checkpoints))
    interrupts = checkpoint_lib.Checkpointer(workdir / INTERRUPTED_DIR, 1)
    best = checkpoint_lib.Checkpointer(workdir / BEST_DIR, 1) if patience else None

    num_epochs = int(config.train.num_epochs)
    if start_epoch >= num_epochs or stopper.stopped:
        checkpointer.close()
        interrupts.close()
        if best is not None:
            best.close()
        return _last_metrics(metrics_path)

    train_rows = sharding_lib.shard_rows(np.asarray(stored_split(config, splits.train, "train")), mesh)
    num_val = splits.validation.shape[0]
    val_rows = sharding_lib.shard_rows(np.asarray(stored_split(config, splits.validation, "validation")), mesh)
    evaluate = make_sharded_evaluate(model, validation_objective(config), protocol=eval_proto,
                                     batch_size=int(config.eval.batch_size), mesh=mesh)
    bound = setup.objective.bound_name
    val_key = purpose_key(seed, "validation")
    chunk = int(config.train.steps_per_call) or spe
    compiled: dict[int, Any] = {}

    def train_steps(num_steps: int):
        """The compiled call for ``num_steps`` steps (at most two lengths: a full call and the
        rest of an epoch) and the seconds spent compiling it now."""
        if num_steps in compiled:
            return compiled[num_steps], 0.0
        t0 = time.perf_counter()
        fn = make_train_steps(model, setup.objective, setup.optimizer, batch_size=batch_size, steps_per_epoch=spe,
                              num_steps=num_steps, protocol=protocol, seed=seed, mesh=mesh,
                              max_consecutive_skips=max_skips, num_examples=num_train)
        compiled[num_steps] = fn.lower(state, train_rows, jnp.int32(0), jnp.int32(0)).compile()
        return compiled[num_steps], time.perf_counter() - t0

    def meta(epoch: int, **extra) -> dict[str, Any]:
        return {"epoch": epoch, "step": int(state.step), "config_fingerprint": fingerprint,
                "last_finite": _last_finite_json(last_finite), "early_stopping": stopper.to_json(), **extra}

    last: dict[str, Any] = {}
    bar = tqdm(range(start_epoch, num_epochs), initial=start_epoch, total=num_epochs, unit="epoch",
               disable=not (config.train.progress and primary), dynamic_ncols=True, desc="train")
    try:
        with faults_lib.stop_signals(bool(config.train.handle_signals)) as stop:
            for epoch in bar:
                log = epoch_log if epoch == start_epoch else EpochLog()
                offset = start_offset if epoch == start_epoch else 0
                first_offset, seconds, compile_s = offset, 0.0, 0.0
                while offset < spe:
                    n = min(chunk, spe - offset)
                    fn, c = train_steps(n)
                    compile_s += c
                    t = time.perf_counter()
                    state, step_metrics = fn(state, train_rows, jnp.int32(epoch), jnp.int32(offset))
                    log.add(step_metrics)
                    seconds += time.perf_counter() - t
                    offset += n
                    last_finite = log.last_finite() or last_finite
                    if int(state.consecutive_skips) >= max_skips:
                        if primary:
                            _append_jsonl(metrics_path, _halted_line(epoch, state, log))
                        raise faults_lib.NonFiniteError(
                            _halt_message(epoch, state, max_skips, last_finite, checkpointer.latest_epoch()))
                    if offset < spe and sharding_lib.any_process(stop.requested is not None):
                        key = int(state.step)
                        interrupts.save(key, state.params, state.checkpoint_items(),
                                        meta(epoch, offset=offset, epoch_log=log.to_json(),
                                             signal=_signal_name(stop.requested)))
                        raise _interrupted(stop.requested, key, interrupts.path(key), epoch, offset, spe)

                line: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": int(state.step),
                    **{f"train/{k}": faults_lib.finite_or_none(v) for k, v in log.means().items()},
                    "train/skipped_steps": len(log.skipped_at()),
                    "skipped_steps_total": int(state.skipped_steps),
                    "steps_per_second": (spe - first_offset) / seconds,
                    "examples_per_second": (spe - first_offset) * batch_size / seconds,
                    "epoch_seconds": seconds,
                }
                skipped = log.skipped_at()
                if skipped:
                    line["skipped_at"] = skipped[:_MAX_LOGGED_SKIPS]
                    logger.warning("epoch %d: skipped %d step(s) with a non-finite loss or gradient (steps %s)",
                                   epoch + 1, len(skipped), ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else ""))
                if first_offset:
                    line["resumed_at_offset"] = first_offset
                if compile_s:
                    line["compile_seconds"] = compile_s
                every = int(config.train.eval_every_epochs)
                if num_val and every and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs):
                    terms = jax.device_get(evaluate(state.params, val_rows, val_key))
                    line.update({f"validation/{k}": float(np.mean(v[:num_val])) for k, v in terms.items()})
                if patience and f"validation/{bound}" in line:
                    if stopper.update(epoch + 1, line[f"validation/{bound}"]):
                        best.save(epoch + 1, state.params, {"step": state.step}, meta(epoch + 1, bound=bound))
                    line.update(stopper.metrics())
                if primary:
                    _append_jsonl(metrics_path, line)
                last = line
                train_bound = line.get(f"train/{bound}")
                postfix = {f"train_{bound}": "nan" if train_bound is None else f"{train_bound:.2f}",
                           "ex/s": f"{line['examples_per_second']:.3g}"}
                if f"validation/{bound}" in line:
                    postfix[f"val_{bound}"] = f"{line[f'validation/{bound}']:.2f}"
                bar.set_postfix(postfix)
                stopping = epoch + 1 < num_epochs and sharding_lib.any_process(stop.requested is not None)
                if ((epoch + 1) % int(config.train.checkpoint_every_epochs) == 0 or epoch + 1 == num_epochs or stopping
                        or stopper.stopped):
                    checkpointer.save(epoch + 1, state.params, state.checkpoint_items(), meta(epoch + 1))
                    for key in interrupts.all_epochs():  # superseded interrupt checkpoints
                        interrupts.delete(key)
                        if primary:
                            with contextlib.suppress(OSError):
                                interrupts.directory.rmdir()  # only if empty
                if stopping:
                    raise _interrupted(stop.requested, int(state.step), checkpointer.path(epoch + 1),
                                       epoch + 1, 0, spe)
                if stopper.stopped:
                    logger.info("early stopping at epoch %d: validation %s has not improved on %.4f (epoch %d) "
                                "for %d evaluations", epoch + 1, bound, stopper.best_value, stopper.best_epoch,
                                patience)
                    break
    finally:
        bar.close()
        checkpointer.close()
        interrupts.close()
        if best is not None:
            best.close()
    return last


@dataclasses.dataclass
class EarlyStopping:
    """Early stopping on a validation bound (higher is better), as in the VampPrior code.

    Every validation result ``update``s it: a better value becomes the best (its parameters are
    saved by the trainer in ``<workdir>/best/``) and resets the count of evaluations without
    improvement; otherwise the count grows, except before ``min_epochs`` (e.g. during a KL
    warm-up, when the bound being trained is not yet the ELBO).  Once the count reaches
    ``patience`` the run is ``stopped``.  The state is stored in every checkpoint, so a resumed
    run stops where an uninterrupted one would.
    """

    patience: int
    min_epochs: int = 0
    best_value: float = -math.inf
    best_epoch: int = 0
    bad_evaluations: int = 0
    stopped: bool = False

    def update(self, epoch: int, value: float) -> bool:
        """Records the validation value after ``epoch``; returns whether it is the best so far."""
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_epoch, self.bad_evaluations = float(value), int(epoch), 0
            return True
        if epoch > self.min_epochs:
            self.bad_evaluations += 1
        self.stopped = self.bad_evaluations >= self.patience
        return False

    def metrics(self) -> dict[str, Any]:
        return {"early_stopping/best": self.best_value, "early_stopping/best_epoch": self.best_epoch,
                "early_stopping/bad_evaluations": self.bad_evaluations, "early_stopping/stopped": self.stopped}

    def to_json(self) -> dict[str, Any] | None:
        if not self.patience:
            return None
        return {"best_value": self.best_value if math.isfinite(self.best_value) else None,
                "best_epoch": self.best_epoch, "bad_evaluations": self.bad_evaluations, "stopped": self.stopped}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, *, patience: int, min_epochs: int) -> "EarlyStopping":
        out = cls(patience=patience, min_epochs=min_epochs)
        if data and patience:
            best = data.get("best_value")
            out.best_value = -math.inf if best is None else float(best)
            out.best_epoch = int(data.get("best_epoch", 0))
            out.bad_evaluations = int(data.get("bad_evaluations", 0))
            out.stopped = bool(data.get("stopped", False))
        return out


BEST_DIR = "best"


INTERRUPTED_DIR = "interrupted"
_MAX_LOGGED_SKIPS = 100
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Resume:
    state: TrainState
    epoch: int = 0  # epochs completed
    offset: int = 0  # steps of epoch ``epoch`` already taken (interrupt checkpoints)
    log: "EpochLog" = dataclasses.field(default_factory=lambda: EpochLog())
    last_finite: tuple[int, dict[str, float]] | None = None
    early_stopping: dict[str, Any] | None = None


def _restore(state: TrainState, fingerprint: str, checkpointer: checkpoint_lib.Checkpointer,
             interrupts: checkpoint_lib.Checkpointer) -> _Resume:
    """The latest state in the workdir: its latest end-of-epoch checkpoint or, if later, its
    interrupt checkpoint.  Checks fingerprints and checksums; writes nothing."""
    candidates = []
    latest = checkpointer.latest_epoch()
    if latest is not None:
        candidates.append((checkpointer, latest, checkpointer.restore_meta(latest)))
    latest_interrupt = interrupts.latest_epoch()
    if latest_interrupt is not None:
        candidates.append((interrupts, latest_interrupt, interrupts.restore_meta(latest_interrupt)))
    if not candidates:
        return _Resume(state=state)
    manager, key, meta = max(candidates, key=lambda c: (int(c[2].get("step", -1)), c[0] is checkpointer))
    if meta.get("config_fingerprint") != fingerprint:
        raise checkpoint_lib.CheckpointError(
            f"checkpoint {manager.path(key)} was written under a different config "
            f"(fingerprint {meta.get('config_fingerprint')} != {fingerprint}); use a new --workdir"
        )
    items = state.checkpoint_items()
    if "checksums" not in meta:  # written by vaegen 0.1.0, before the skip counters were stored
        items = {"step": items["step"], "opt_state": items["opt_state"]}
    params, rest = manager.restore(key, state.params, items, meta=meta)
    restored = state.replace(params=params, **rest)
    log = EpochLog.from_json(meta["epoch_log"]) if "epoch_log" in meta else EpochLog()
    return _Resume(state=restored, epoch=int(meta["epoch"]), offset=int(meta.get("offset", 0)), log=log,
                   last_finite=_last_finite_from_json(meta.get("last_finite")),
                   early_stopping=meta.get("early_stopping"))


def _last_finite_json(last_finite):
    if last_finite is None:
        return None
    step, metrics = last_finite
    return {"step": step, "metrics": {k: faults_lib.finite_or_none(v) for k, v in metrics.items()}}


def _last_finite_from_json(data):
    if not data:
        return None
    return int(data["step"]), {k: float("nan") if v is None else float(v) for k, v in data["metrics"].items()}


def _signal_name(signum: int | None) -> str:
    import signal

    return signal.Signals(signum).name if signum else "SIGTERM"


def _interrupted(signum: int | None, step: int, path: pathlib.Path, epoch: int, offset: int,
                 spe: int) -> faults_lib.TrainingInterrupted:
    import signal

    signum = signum or signal.SIGTERM
    where = f"epoch {epoch + 1}, step {offset} of {spe}" if offset else f"end of epoch {epoch}"
    return faults_lib.TrainingInterrupted(
        f"stopped by {_signal_name(signum)} at step {step} ({where}); checkpoint written to {path}; "
        "run the same command again to resume",
        signum=signum, step=step, checkpoint=str(path))


def _halted_line(epoch: int, state: TrainState, log: "EpochLog") -> dict[str, Any]:
    skipped = log.skipped_at()
    return {"epoch": epoch + 1, "step": int(state.step), "halted": "non-finite",
            **{f"train/{k}": faults_lib.finite_or_none(v) for k, v in log.means().items()},
            "train/skipped_steps": len(skipped), "skipped_steps_total": int(state.skipped_steps),
            "skipped_at": skipped[:_MAX_LOGGED_SKIPS]}


def _halt_message(epoch: int, state: TrainState, max_skips: int, last_finite, checkpoint_epoch) -> str:
    last_step = int(state.step) - 1
    first = last_step - max_skips + 1
    msg = (f"training stopped at step {last_step} (epoch {epoch + 1}): {max_skips} consecutive steps "
           f"({first}..{last_step}) had a non-finite loss or gradient and were skipped "
           f"(train.max_consecutive_skips={max_skips}); ")
    if last_finite is None:
        msg += "no step of this run had finite metrics; "
    else:
        step, metrics = last_finite
        keys = [k for k in metrics if k not in ("kl_weight",)]
        msg += f"last finite step {step}: {faults_lib.format_metrics(metrics, tuple(keys))}; "
    msg += ("latest checkpoint: " + (f"epoch {checkpoint_epoch}" if checkpoint_epoch is not None else "none")
            + "; lower optim.learning_rate, set optim.grad_clip_norm, or check the data")
    return msg


def _append_jsonl(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a torn last line, from a process killed while
    writing it, is left out)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _truncate_metrics(path: pathlib.Path, epoch: int) -> None:
    """Drops lines of epochs after ``epoch`` (left by a run that died before checkpointing
    them, or stopped on non-finite steps) and torn lines; they are recomputed, identically,
    by the resumed run."""
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    keep = []
    for l in lines:
        try:
            record = json.loads(l)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("epoch", 0) <= epoch and "halted" not in record:
            keep.append(l)
    if len(keep) != len(lines) or not path.read_text().endswith("\n") and lines:
        _write_atomic(path, "".join(l + "\n" for l in keep))


def _last_metrics(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    records = _read_jsonl(path)
    return records[-1] if records else {}
