"""The fused training steps: an epoch (or ``train.steps_per_call`` steps) is one jitted device
call, a ``lax.scan`` over its steps that gathers each batch from the device-resident uint8
split, binarizes it on the device, computes the per-example objective (vmapped, one key per
example) and applies the optax update; and the held-out bound tracked at every validation."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaegen import compilation as compilation_lib
from vaegen import sharding as sharding_lib
from vaegen.data.binarization import to_float
from vaegen.objectives import batch as batch_lib
from vaegen.objectives.base import Objective
from vaegen.train import faults as faults_lib
from vaegen.train.rng import purpose_key


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
    params: Any  # the model's variables: {"params": {"prior", "likelihood", "posterior"}, ...}
    opt_state: Any  # of the trainable part, vaegen.objectives.batch.trainable(params)
    skipped_steps: jax.Array = flax.struct.field(default_factory=_zero)  # int32 [], in all
    consecutive_skips: jax.Array = flax.struct.field(default_factory=_zero)  # int32 [], current streak
    auxiliary: Any = None  # the objective's own {"params", "opt_state"} (vaegen.objectives.batch), or None

    def checkpoint_items(self) -> dict[str, Any]:
        """Everything but ``params``, as stored in a checkpoint's ``train_state``."""
        items = {"step": self.step, "opt_state": self.opt_state, "skipped_steps": self.skipped_steps,
                 "consecutive_skips": self.consecutive_skips}
        if self.auxiliary is not None:
            items["auxiliary"] = self.auxiliary
        return items


def initial_state(objective: Objective, optimizer: optax.GradientTransformation, model: Any, variables: Any,
                  key: jax.Array) -> TrainState:
    """The state at step 0: ``variables``, the optimizer's state of their trainable part, and the
    objective's auxiliary parameters (initialised from ``key``) with their optimizer's state."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables,
                      opt_state=optimizer.init(batch_lib.trainable(variables)),
                      auxiliary=batch_lib.init_auxiliary(objective, key, model, variables))


# --- the fused steps ---------------------------------------------------------------------------

def make_train_steps(
    model: Any,
    objective: Objective,
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
    were: the optimizer does not run (``vaegen.train.faults``) and is counted in ``skipped_steps`` and
    ``consecutive_skips``; once ``consecutive_skips`` reaches ``max_consecutive_skips`` the
    remaining steps of the call do nothing (the host then stops the run).

    ``metrics`` are per step, ``[num_steps]``: every objective term (mean over the batch, nats),
    ``grad_norm``, ``param_norm``, ``step`` (global index), ``finite`` (the update was applied)
    and ``ran`` (False for the steps after a stop).

    The seed's random streams, the epoch and the offset are arguments of the compiled program,
    not constants: another seed, epoch or stage of the same model and shapes runs the same
    executable (shared within the process by :func:`vaegen.compilation.compile_shared`, so a
    study compiles each model once).  :meth:`TrainSteps.compile` compiles ahead of a call.
    """
    fn = _train_steps_fn(model, objective, optimizer, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                         num_steps=num_steps, protocol=protocol, mesh=mesh,
                         max_consecutive_skips=max_consecutive_skips, num_examples=num_examples)
    return TrainSteps(fn, seed, mesh)


def _random_roots(seed: int) -> jax.Array:
    """The training streams of ``seed``: the data of keys ``[2]`` (uint32), data order
    (``shuffle``) and ``noise``."""
    return jax.random.key_data(jnp.stack([purpose_key(seed, "shuffle"), purpose_key(seed, "noise")]))


class TrainSteps:
    """``train_steps(state, train_rows, epoch, offset) -> (state, metrics)`` of
    :func:`make_train_steps`: its program takes the seed's random streams as an argument, and
    equal programs share one executable (:func:`vaegen.compilation.compile_shared`)."""

    def __init__(self, fn: Callable, seed: int, mesh: jax.sharding.Mesh):
        self._jit = compilation_lib.SharedJit(fn, mesh, donate_argnums=(0,))
        self._roots = jax.device_put(_random_roots(seed), sharding_lib.replicated(mesh))

    def lower(self, state, train_rows, epoch, offset) -> jax.stages.Lowered:
        """The program for these arguments (the seed's streams appended as its last argument)."""
        return self._jit.lower(state, train_rows, epoch, offset, self._roots)

    def compile(self, state, train_rows, epoch, offset) -> Callable:
        """The compiled call for arguments shaped like these: ``(state, train_rows, epoch, offset)
        -> (state, metrics)`` (``state`` donated)."""
        executable, roots = self._jit.compile(state, train_rows, epoch, offset, self._roots), self._roots

        def call(state, train_rows, epoch, offset):
            return executable(state, train_rows, epoch, offset, roots)

        return call

    def __call__(self, state, train_rows, epoch, offset):
        return self._jit(state, train_rows, epoch, offset, self._roots)


def _train_steps_fn(model, objective, optimizer, *, batch_size, steps_per_epoch, num_steps, protocol, mesh,
                    max_consecutive_skips, num_examples):
    """The function :class:`TrainSteps` jits: ``(state, train_rows, epoch, offset, roots)``,
    ``roots`` from :func:`_random_roots`."""
    n_examples = steps_per_epoch * batch_size

    def step_fn(state: TrainState, idx: jax.Array, train_rows: jax.Array, noise_root: jax.Array):
        # After max_consecutive_skips consecutive skips the call has halted: the remaining steps
        # apply nothing, count nothing and report NaN metrics with ran = False.  Halting is folded
        # into the update's predicate and a few scalar selections rather than a cond around the
        # whole step, which would cost every healthy step a copy of the carried state.
        halted = state.consecutive_skips >= max_consecutive_skips
        key = jax.random.fold_in(noise_root, state.step)
        key_data, key_obj = jax.random.split(key)
        x = sharding_lib.gather_rows(train_rows, idx, mesh)            # [B, *event] uint8, batch-sharded
        x = to_float(key_data, x, protocol)                  # [B, *event] float32
        example_keys = jax.random.split(key_obj, batch_size)          # [B]

        aux = state.auxiliary
        aux_name = objective.auxiliary_name
        stop = jax.lax.stop_gradient

        def loss_fn(trainable, aux_params):
            variables = batch_lib.with_trainable(state.params, trainable)
            terms = objective.batch_terms(model, variables, x, example_keys, state.step,
                                          None if aux_params is None else stop(aux_params))
            loss = -jnp.mean(terms["objective"])                       # nats per example
            if aux_params is None:
                return loss, terms
            aux_loss, aux_terms = objective.auxiliary_loss(aux_params, model, stop(variables), x, example_keys,
                                                           state.step)
            terms = {**terms, f"{aux_name}/loss": aux_loss, **{f"{aux_name}/{k}": v for k, v in aux_terms.items()}}
            return loss + aux_loss, terms

        aux_params = None if aux is None else aux["params"]
        (loss, terms), (grads, aux_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            batch_lib.trainable(state.params), aux_params)
        grad_norm = optax.global_norm(grads)
        finite = faults_lib.finite_step(loss, grad_norm)
        if aux is not None:
            aux_grad_norm = optax.global_norm(aux_grads)
            terms[f"{aux_name}/grad_norm"] = aux_grad_norm
            finite = finite & faults_lib.finite_step(loss, aux_grad_norm)
        def update(params, opt_states):
            opt_state, aux_state = opt_states
            updates, opt_state = optimizer.update(grads, opt_state, batch_lib.trainable(params))
            new = batch_lib.with_trainable(params, optax.apply_updates(batch_lib.trainable(params), updates))
            new = objective.after_step(model, params, new, x, example_keys, state.step)
            if aux_state is not None:
                aux_updates, aux_opt = objective.auxiliary_optimizer().update(aux_grads, aux_state["opt_state"],
                                                                              aux_state["params"])
                aux_state = {"params": optax.apply_updates(aux_state["params"], aux_updates), "opt_state": aux_opt}
            return new, (opt_state, aux_state)

        applied = finite & ~halted
        params, (opt_state, aux) = faults_lib.guard_update(applied, update, state.params, (state.opt_state, aux))
        skipped = (~finite & ~halted).astype(jnp.int32)
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics["grad_norm"] = grad_norm
        metrics["param_norm"] = optax.global_norm(batch_lib.trainable(params))
        metrics = {k: jnp.where(halted, jnp.nan if jnp.issubdtype(v.dtype, jnp.floating) else 0, v)
                   for k, v in metrics.items()}
        metrics["step"] = state.step
        metrics["finite"] = applied
        metrics["ran"] = ~halted
        new_state = TrainState(step=state.step + (~halted).astype(state.step.dtype), params=params,
                               opt_state=opt_state, auxiliary=aux, skipped_steps=state.skipped_steps + skipped,
                               consecutive_skips=jnp.where(halted, state.consecutive_skips,
                                                           (state.consecutive_skips + 1) * skipped))
        return new_state, metrics

    def train_steps(state: TrainState, train_rows: jax.Array, epoch: jax.Array, offset: jax.Array, roots: jax.Array):
        shuffle_root, noise_root = jax.random.wrap_key_data(roots[0]), jax.random.wrap_key_data(roots[1])
        n = num_examples or train_rows.shape[0]                        # the split's rows, not the padding
        perm = jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), n)
        batches = perm[:n_examples].reshape(steps_per_epoch, batch_size)           # [steps, B]
        batches = jax.lax.dynamic_slice_in_dim(batches, offset, num_steps, axis=0)  # [num_steps, B]

        def body(s, idx):
            return step_fn(s, idx, train_rows, noise_root)

        return jax.lax.scan(body, state, batches)

    return train_steps


def make_train_epoch(
    model: Any,
    objective: Objective,
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
                            num_steps=steps_per_epoch, protocol=protocol, mesh=mesh,
                            max_consecutive_skips=max_consecutive_skips, num_examples=num_examples)
    roots = _random_roots(seed)

    def train_epoch(state, train_rows, epoch):
        state, m = steps(state, train_rows, epoch, jnp.int32(0), roots)
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


def make_validation(model: Any, objective: Objective, *, protocol: str, batch_size: int, mesh: jax.sharding.Mesh
                    ) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Builds ``evaluate(params, rows, key) -> terms``: ``objective``'s per-example terms on the
    row-sharded held-out split ``rows`` (uint8, from :func:`vaegen.sharding.shard_rows`),
    through :func:`vaegen.sharding.map_rows`: example ``i`` (its global row) keyed by
    ``fold_in(key, i)``, binarized by ``protocol`` with the first half of that key.  Results do
    not depend on ``batch_size`` or the number of devices.  Returns terms ``[N_pad]``,
    replicated; drop the padding rows."""

    def one(params, x_u8, k):
        k_data, k_obj = jax.random.split(k)
        x = to_float(k_data, x_u8, protocol)
        return objective(model, params, x, k_obj)

    return compilation_lib.SharedJit(sharding_lib.map_rows(one, mesh, batch_size=batch_size), mesh)


