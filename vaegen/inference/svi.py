"""Per-example variational inference (SVI): q*(z | x) for every example of a data set.

An amortized posterior q(z | x) = q(z; phi(x)) spends one encoder pass per x; its parameters
phi(x) are a *member* of a variational family F.  The best member for one x,

    q*_F(z | x) = argmax_{phi}  L(x; phi),   L(x; phi) = E_{q(z; phi)}[log p(x, z) - log q(z; phi)],

is found here by optimising a free phi per example with optax (stochastic variational
inference, SVI): K steps of reparameterised gradient ascent on L, from an initial phi_0 that is
either the amortized phi(x) or the standard-normal point.  This gives the two halves of the
inference gap (Cremer et al. 2018)::

    log p(x) - L[q]  =  (log p(x) - L[q*_F])  +  (L[q*_F] - L[q])
                        approximation gap        amortization gap

(see :mod:`vaegen.studies.gaps`), and, run inside the training step, semi-amortized training
(Kim et al. 2018, :mod:`vaegen.inference.semi_amortized`).

Families: :mod:`vaegen.inference.families`.

Every per-example computation takes its noise from ``fold_in(key, example_index)``, so results
do not depend on how the examples are chunked or on the number of devices.  :func:`fit_local`
shards the examples over the local devices with :func:`vaegen.sharding.map_examples` (the
engine of importance sampling and AIS); on each device the optimiser is ``vmap``-ped over a
chunk of examples and ``lax.scan``-ned over the steps, one compiled call per group of chunks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from vaegen import sharding as sharding_lib
from vaegen.errors import InferenceError
from vaegen.estimators import importance as estimators_lib
from vaegen.inference.families import Family, Phi, family_of, initial_parameters, make_family
from vaegen.objectives.bounds import elbo_of

Terms = dict[str, jax.Array]


def log_px_importance_sampled(model: Any, variables: Any, q: distrax.Distribution | Callable,
                              x: jax.Array, key: jax.Array, num_samples: int, *, sample_batch: int | None = None) -> jax.Array:
    """log p(x) ~= log 1/k sum_i p(x, z_i) / q(z_i),  z_i ~ q: the importance-sampling estimate with
    proposal q (a stochastic lower bound, IWAE_k), in nats
    (:func:`vaegen.estimators.importance.importance_sampling_one`); samples drawn ``sample_batch`` at a time
    with a running log-sum-exp (memory only: sample i comes from ``fold_in(key, i)``, so the
    estimate does not depend on it)."""

    def run(m: Any) -> jax.Array:
        dist = q(m) if callable(q) and not isinstance(q, distrax.Distribution) else q
        return estimators_lib.importance_sampling_one(m.log_joint, lambda _: dist, x, key, num_samples=int(num_samples),
                                                      chunk_size=sample_batch)["log_px"]

    return model.apply(variables, method=run)


# --- the optimiser of phi -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SVISettings:
    """Per-example stochastic variational inference: how phi is optimised.

    Attributes:
      num_steps: K gradient steps on L(x; phi).
      learning_rate: step size.
      optimizer: ``adam`` or ``sgd`` (with ``momentum``).
      schedule: ``constant`` or ``cosine`` (a linear warm-up over the first ``warmup_fraction``
        of the steps, then a cosine decay to 0: the last iterates average out the gradient noise).
      warmup_fraction: fraction of the steps of the cosine schedule's warm-up.
      num_samples: S, reparameterised samples of z per step.
      grad_clip_norm: clip each example's gradient to this global norm (0 = off).
      analytic_kl: closed-form KL where available (lower-variance gradients).
      path_gradient: where the KL is estimated by Monte Carlo (flows), differentiate log q(z)
        through z only (Roeder et al. 2017): lower-variance gradients near the optimum.  Not for
        gradients taken *through* the optimiser (semi-amortized training), where it would drop
        second-order terms.
    """

    num_steps: int = 500
    learning_rate: float = 1e-2
    optimizer: str = "adam"
    momentum: float = 0.0
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    num_samples: int = 1
    grad_clip_norm: float = 0.0
    analytic_kl: bool = True
    path_gradient: bool = True

    def validate(self) -> None:
        if self.num_steps < 0:
            raise InferenceError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.num_samples < 1:
            raise InferenceError(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.learning_rate > 0:
            raise InferenceError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adam", "sgd"):
            raise InferenceError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.schedule not in ("constant", "cosine"):
            raise InferenceError(f"unknown schedule {self.schedule!r}; choose constant or cosine")

    def transformation(self) -> optax.GradientTransformation:
        self.validate()
        if self.schedule == "cosine":
            warmup = int(round(self.warmup_fraction * self.num_steps))
            lr = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate, warmup, max(warmup + 1, self.num_steps))
        else:
            lr = self.learning_rate
        if self.optimizer == "adam":
            opt = optax.adam(lr)
        else:
            opt = optax.sgd(lr, momentum=self.momentum or None)
        if self.grad_clip_norm > 0:
            opt = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), opt)
        return opt


def refine(model: Any, variables: Any, family: Family, phi0: Phi, x: jax.Array, key: jax.Array,
           settings: SVISettings) -> tuple[Phi, jax.Array]:
    """K steps of gradient ascent on L(x; phi) from ``phi0``, for one example.

    Step t draws its z ~ q(z; phi_t) from ``fold_in(key, t)``.  Differentiable with respect to
    ``phi0`` and ``variables`` (the unrolled inner loop of semi-amortized training).

    Returns:
      ``(phi_K, elbos [K])``: the final parameters and the single-step ELBO estimates L(x; phi_t)
      seen by the optimiser (nats).
    """
    opt = settings.transformation()

    def negative_elbo(phi, k):
        q_density = family.distribution(jax.lax.stop_gradient(phi)) if settings.path_gradient else None
        return -elbo_of(model, variables, family.distribution(phi), x, k, settings.num_samples,
                        analytic_kl=settings.analytic_kl, q_density=q_density)["elbo"]

    scales = family.step_scales(phi0) if hasattr(family, "step_scales") else None

    def step(carry, t):
        phi, state = carry
        loss, grads = jax.value_and_grad(negative_elbo)(phi, jax.random.fold_in(key, t))
        updates, state = opt.update(grads, state, phi)
        if scales is not None:
            updates = jax.tree_util.tree_map(jnp.multiply, updates, scales)
        return (optax.apply_updates(phi, updates), state), -loss

    (phi, _), elbos = jax.lax.scan(step, (phi0, opt.init(phi0)), jnp.arange(settings.num_steps))
    return phi, elbos


# --- q* over a whole data set -----------------------------------------------------------------

@dataclasses.dataclass
class LocalInference:
    """The result of :func:`fit_local` for N examples (host numpy arrays, nats).

    Attributes:
      elbo: ``[N]`` L(x; q*), estimated with ``eval_samples`` fresh samples.
      elbo_mc_stderr: ``[N]`` the Monte Carlo standard error of each ``elbo`` estimate.
      elbo_init: ``[N]`` L(x; phi_0) with the same estimator and the same noise.
      trace: ``[N, T]`` the optimiser's single-sample ELBO estimates, averaged over windows of
        ``num_steps / T`` steps (the learning curve per example).
      improved: ``[N]`` bool, whether phi_K beat phi_0 on an independent selection estimate
        (q* is the better of the two; False only where the optimiser made no progress).
      log_px: ``[N]`` importance-sampled log p(x) with q* as the proposal (if asked for).
      phi: the per-example parameters of q*, leaves ``[N, ...]`` (if kept).
      settings, family, init: what produced it.
      seconds, chunk_seconds: wall-clock time in all and per dispatch of ``chunk_size`` examples
        per device (the first includes compilation, unless an earlier call with the same model,
        family, settings, chunk size and devices compiled it).
    """

    elbo: np.ndarray
    elbo_mc_stderr: np.ndarray
    elbo_init: np.ndarray
    trace: np.ndarray
    improved: np.ndarray
    log_px: np.ndarray | None
    phi: Any
    settings: SVISettings
    family: Family
    init: str
    seconds: float = 0.0
    chunk_seconds: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _LocalFit:
    """q* of one example (see :func:`fit_local`), as a hashable callable whose arrays come in as
    arguments: ``_LocalFit(...)((variables, key), (x, i), _)`` takes all its noise from
    ``fold_in(key, i)``, ``i`` the example's id (the key :func:`vaegen.sharding.map_examples`
    derives from the example's position in a dispatch is not used)."""

    model: Any
    family: Family
    settings: SVISettings
    init: str
    eval_samples: int
    log_px_samples: int
    is_batch: int
    keep_parameters: bool
    t_points: int

    def __call__(self, arrays, data, _position_key):
        variables, key = arrays
        x, i = data                                                        # [*event], [] example id
        model, family, settings = self.model, self.family, self.settings
        k = jax.random.fold_in(key, i)
        k_opt, k_select, k_eval, k_is = (jax.random.fold_in(k, j) for j in range(4))
        phi0 = initial_parameters(family, self.init, model, variables, x)
        phi_k, elbos = refine(model, variables, family, phi0, x, k_opt, settings)

        def estimate(phi, k_):
            return elbo_of(model, variables, family.distribution(phi), x, k_, self.eval_samples,
                           analytic_kl=settings.analytic_kl)

        improved = estimate(phi_k, k_select)["elbo"] >= estimate(phi0, k_select)["elbo"]
        phi_star = jax.tree_util.tree_map(lambda a, b: jnp.where(improved, a, b), phi_k, phi0)
        final = estimate(phi_star, k_eval)
        out = {"elbo": final["elbo"], "elbo_mc_stderr": final["mc_stderr"],
               "elbo_init": estimate(phi0, k_eval)["elbo"], "improved": improved,
               "trace": elbos.reshape(self.t_points, -1).mean(-1) if settings.num_steps else jnp.zeros((0,))}
        if self.log_px_samples:
            out["log_px"] = log_px_importance_sampled(model, variables, family.distribution(phi_star), x, k_is,
                                                      self.log_px_samples, sample_batch=self.is_batch)
        if self.keep_parameters:
            # lax.map cannot return zero-size leaves (a flow's empty context): a scalar stands in
            # for each, and fit_local puts the empty array back.
            out["phi"] = jax.tree_util.tree_map(lambda a: a if a.size else jnp.zeros((), a.dtype), phi_star)
        return out


def fit_local(model: Any, variables: Any, xs: jax.Array | np.ndarray, key: jax.Array, *,
              family: Family | str | None = None, settings: SVISettings = SVISettings(), init: str = "amortized",
              chunk_size: int = 500, eval_samples: int = 100, log_px_samples: int = 0,
              keep_parameters: bool = True, trace_points: int = 50, progress: bool = True,
              description: str = "q*", example_ids: np.ndarray | None = None, devices=None) -> LocalInference:
    """Non-amortized inference: q*_F(z | x) for every example of ``xs``, by per-example SVI.

    The examples are sharded over ``devices`` (``shard_map`` over the ``"data"`` mesh, through
    :func:`vaegen.sharding.map_examples`, as importance sampling and AIS are): each dispatch
    gives every device a chunk of up to ``chunk_size`` examples, ``vmap``-s the optimiser over
    them and ``lax.scan``-s it over the K steps.  Only one group of ``chunk_size x devices``
    examples and its outputs are on the devices at a time, every group has the same shape (the
    last is padded), so all share one compilation.  Example ``i`` takes all its noise from
    ``fold_in(key, i)`` -- results do not depend on ``chunk_size`` or on the number of devices
    (up to float rounding).

    Per example: phi_0 from ``init``; K optimiser steps (``settings``); q* = the better of phi_K
    and phi_0 on a selection estimate of L with ``eval_samples`` samples; then L(x; q*) and
    L(x; phi_0) on a further, independent estimate (common noise, so their difference is sharp);
    with ``log_px_samples > 0`` also the importance-sampled log p(x) with q* as the proposal.

    Args:
      xs: ``[N, *event]`` observations as the model sees them (floats).
      family: a :data:`Family`, a family name, or None for the family of the model's q(z | x).
      chunk_size: examples per vmapped chunk on each device (memory and speed, never results).
      keep_parameters: return phi of q* per example (large for flows: all their weights).
      trace_points: length T of the returned learning curves.
      progress: show a progress bar (examples done), labelled ``description``.
      example_ids: ``[N]`` the indices i of ``fold_in(key, i)`` (default 0..N-1): an example
        given its id gets the same noise, hence the same q*, alone or among others.
      devices: devices to shard the examples over (default: all local devices).
    Returns:
      :class:`LocalInference`.
    """
    if family is None:
        family = family_of(model)
    elif isinstance(family, str):
        family = make_family(family, model)
    settings.validate()
    if init not in ("amortized", "prior"):
        raise InferenceError(f"unknown initialisation {init!r}; choose 'amortized' or 'prior'")
    if eval_samples < 1:
        raise InferenceError("eval_samples must be >= 1")
    xs = np.asarray(xs, np.float32)
    n = int(xs.shape[0])
    if n == 0:
        raise InferenceError("no examples to infer")
    ids = np.arange(n) if example_ids is None else np.asarray(example_ids, np.int64).reshape(-1)
    if ids.shape[0] != n:
        raise InferenceError(f"example_ids has {ids.shape[0]} entries for {n} examples")
    devices = jax.local_devices() if devices is None else list(devices)
    n_dev = len(devices)
    chunk = max(1, min(int(chunk_size), -(-n // n_dev)))              # examples per device and dispatch
    group = chunk * n_dev                                             # examples per dispatch
    num_groups = -(-n // group)
    pad = num_groups * group - n
    xs_padded = np.concatenate([xs, np.repeat(xs[-1:], pad, 0)]) if pad else xs
    ids_padded = np.concatenate([ids, np.repeat(ids[-1:], pad)]).astype(np.int32)
    steps = settings.num_steps
    t_points = max(1, min(int(trace_points), steps)) if steps else 0
    is_batch = max(1, 50_000 // chunk) if log_px_samples else 1

    if steps and steps % t_points:
        t_points = math.gcd(steps, t_points)

    one = _LocalFit(model, family, settings, init, int(eval_samples), int(log_px_samples), is_batch,
                    bool(keep_parameters), t_points)
    replicated = NamedSharding(sharding_lib.data_mesh(devices), PartitionSpec())
    fn = jax.tree_util.Partial(one, jax.device_put((variables, key), replicated))
    t0 = time.perf_counter()
    outputs, chunk_seconds = [], []
    bar = tqdm(total=n, unit="ex", desc=description, disable=not progress, dynamic_ncols=True)
    for g in range(num_groups):
        t = time.perf_counter()
        s = slice(g * group, (g + 1) * group)
        out = sharding_lib.map_examples(fn, (xs_padded[s], ids_padded[s]), key, batch_size=chunk,
                                          devices=devices)
        outputs.append(jax.tree_util.tree_map(np.asarray, out))       # waits; frees the devices' copy
        chunk_seconds.append(time.perf_counter() - t)
        bar.update(min(group, n - g * group))
    bar.close()
    seconds = time.perf_counter() - t0
    cat = jax.tree_util.tree_map(lambda *a: np.concatenate(a)[:n], *outputs)
    if keep_parameters:
        shapes = jax.eval_shape(lambda v, x: initial_parameters(family, init, model, v, x), variables, xs[0])
        cat["phi"] = jax.tree_util.tree_map(lambda a, s: a if math.prod(s.shape) else np.zeros((n, *s.shape), s.dtype),
                                            cat["phi"], shapes)
    return LocalInference(elbo=cat["elbo"], elbo_mc_stderr=cat["elbo_mc_stderr"], elbo_init=cat["elbo_init"],
                          trace=cat["trace"], improved=cat["improved"],
                          log_px=cat.get("log_px"), phi=cat.get("phi"), settings=settings, family=family,
                          init=init, seconds=seconds, chunk_seconds=chunk_seconds)
