"""Estimators of log p(x): importance sampling, annealed importance sampling, bidirectional Monte Carlo.

Every estimator works on any model given by two functions of one observation::

    log_joint(x, z) -> [K]     log p(x, z) in nats, for x [*event] and z [K, D]
    proposal(x)     -> a distrax distribution over z with event shape [D]
                       (q(z | x), or the prior p(z) ignoring x)

:func:`model_functions` gives both for a :class:`vaegen.LatentVariableModel`.  They are passed
as ``jax.tree_util.Partial`` objects so that parameters enter the compiled code as arguments,
not as constants (a plain closure works too, but its captured arrays are baked into the program).

=========================  ==================================================================
:func:`importance_sampling`  log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x),
                             and the IWAE-k bounds of a list of k from the same K samples
:class:`AIS`                 annealed importance sampling with HMC transitions (Neal 2001),
                             forward (a stochastic lower bound on log p(x)) and reverse (a
                             stochastic upper bound, for data simulated from the model)
:func:`bdmc`                 bidirectional Monte Carlo (Grosse et al. 2015): both bounds on
                             simulated data; their gap bounds the error of forward AIS there
=========================  ==================================================================

Execution.  Example ``i`` draws all its randomness from ``fold_in(key, i)`` and sample ``j`` of
an example from ``fold_in(fold_in(key, i), j)``, so results do not depend on ``batch_size``,
``chunk_size``, the number of devices or how the set is split into dispatches (up to float
rounding).  Examples are sharded over the local devices (``shard_map`` over the ``"data"`` mesh
axis of :mod:`vaegen.sharding`; one device is the 1-device mesh); on each device ``lax.map``
runs batches of ``batch_size`` vmapped examples; importance samples are drawn in chunks of
``chunk_size`` with a running logsumexp, so memory does not grow with K.  The set is dispatched
in a few equal blocks (one compilation) so that a progress bar can advance; nothing returns to
the host until the end.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vaegen.config import loading as config_lib
from vaegen.model import latent as model_lib
from vaegen.objectives import bounds as objectives_lib
from vaegen import sharding as sharding_lib
from vaegen.errors import POINT_MASS_PROPOSAL, UndefinedEstimateError

LogJoint = Callable[[jax.Array, jax.Array], jax.Array]
Proposal = Callable[[jax.Array], distrax.Distribution]
Estimates = dict[str, jax.Array]


# --- the model as two functions ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _LogJoint:
    model: model_lib.LatentVariableModel

    def __call__(self, variables, x, z):
        return self.model.apply(variables, x, z, method="log_joint")


@dataclasses.dataclass(frozen=True)
class _Posterior:
    model: model_lib.LatentVariableModel

    def __call__(self, variables, x):
        return self.model.apply(variables, x, method="q_z_given_x")


@dataclasses.dataclass(frozen=True)
class _Prior:
    model: model_lib.LatentVariableModel

    def __call__(self, variables, x):
        del x
        return self.model.apply(variables, method="p_z")


@dataclasses.dataclass(frozen=True)
class _SampleJoint:
    model: model_lib.LatentVariableModel

    def __call__(self, variables, key, n):
        return self.model.apply(variables, key, n, method="sample_with_latents")


def _require_prior(model: model_lib.LatentVariableModel, what: str) -> None:
    if not model.has_prior:
        raise UndefinedEstimateError(
            f"{what} does not exist for this model: it has no prior p(z) (an autoencoder), hence no "
            "p(x) = E_p(z)[p(x|z)]. Fit a density to its codes to make it generative, or train a VAE"
        )


def model_functions(model: model_lib.LatentVariableModel, variables: Any, *,
                    proposal: str = "posterior") -> tuple[LogJoint, Proposal]:
    """``(log_joint, proposal)`` of a model with its parameters bound.

    Args:
      proposal: ``"posterior"`` (q(z | x), the amortized inference network) or ``"prior"``
        (p(z), for any x: the proposal of a plain Monte Carlo estimate, and the start of AIS).
    Returns:
      ``log_joint(x, z) -> [K]`` (nats) and ``proposal(x) -> distribution`` (event [D]), as
      ``jax.tree_util.Partial`` pytrees whose leaves are the parameters.
    Raises:
      UndefinedEstimateError: the model has no prior (log p(x) does not exist), or
        ``proposal="posterior"`` and q(z | x) is a point mass.
    """
    _require_prior(model, "log p(x)")
    if proposal == "posterior":
        if model.is_autoencoder:
            raise UndefinedEstimateError(POINT_MASS_PROPOSAL)
        prop = jax.tree_util.Partial(_Posterior(model), variables)
    elif proposal == "prior":
        prop = jax.tree_util.Partial(_Prior(model), variables)
    else:
        raise config_lib.ConfigError(f"unknown proposal {proposal!r}; choose 'posterior' or 'prior'")
    return jax.tree_util.Partial(_LogJoint(model), variables), prop


def model_sampler(model: model_lib.LatentVariableModel, variables: Any) -> Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]:
    """``sample_joint(key, n) -> (z [n, D], x [n, *event])``: ancestral samples of p(x, z)."""
    _require_prior(model, "sampling p(x, z)")
    return jax.tree_util.Partial(_SampleJoint(model), variables)


def _is_point_mass(q: distrax.Distribution) -> bool:
    if isinstance(q, distrax.Independent):
        q = q.distribution
    return isinstance(q, distrax.Deterministic)


# --- the example engine ------------------------------------------------------------------------

def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def default_rows(backend: str | None = None) -> int:
    """Rows (examples x samples or chains) evaluated together per device and step by default:
    2^13 on CPU, 2^18 on accelerators.  Memory per step is about rows x (width of the widest
    layer, e.g. 784) x 4 bytes."""
    backend = backend or jax.default_backend()
    return 2**13 if backend == "cpu" else 2**18


@functools.lru_cache(maxsize=64)
def _runner(treedef, static, dyn_pos, n_leaves, data_def, batch_size, mesh):
    axis = sharding_lib.DATA_AXIS

    def per_device(dyn, data_leaves, idx, key):
        leaves = [None] * n_leaves
        for i, leaf in static:
            leaves[i] = leaf
        for i, leaf in zip(dyn_pos, dyn):
            leaves[i] = leaf
        fn = jax.tree_util.tree_unflatten(treedef, leaves)

        def one(args):
            i, d = args
            return fn(jax.tree_util.tree_unflatten(data_def, d), jax.random.fold_in(key, i))

        return jax.lax.map(one, (idx, data_leaves), batch_size=batch_size)

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis), P(axis), P()),
                           out_specs=P(axis), check_vma=False)
    return jax.jit(mapped)


def map_examples(fn: Callable[[Any, jax.Array], Any], data: Any, key: jax.Array, *, batch_size: int,
                 devices=None, progress: bool = False, desc: str | None = None, max_blocks: int = 20) -> Any:
    """``out[i] = fn(data[i], fold_in(key, i))`` for every example ``i``, on all local devices.

    Args:
      fn: per-example function ``fn(d, key) -> pytree of arrays``; a pytree itself (e.g. a
        ``jax.tree_util.Partial``) whose array leaves are passed to the compiled program as
        arguments (replicated), its other leaves as static values.
      data: pytree of arrays with a leading example axis ``[N, ...]``.
      key: PRNG key of the whole computation.
      batch_size: examples vmapped together on each device (memory only; results do not depend
        on it).
      devices: devices to shard examples over (default: all local devices).
      progress: show a tqdm bar (the set is then dispatched in up to ``max_blocks`` blocks).
    Returns:
      The outputs stacked along a leading axis ``[N, ...]`` (device arrays).

    Traceable: inside ``jax.jit`` it becomes a ``lax.map`` in the enclosing program (same keys,
    same numbers), placed and sharded by that program.
    """
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    dyn_pos = tuple(i for i, leaf in enumerate(leaves) if _is_array(leaf))
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
    dyn = [leaves[i] for i in dyn_pos]
    data_leaves, data_def = jax.tree_util.tree_flatten(data)
    n = int(data_leaves[0].shape[0])
    if any(int(d.shape[0]) != n for d in data_leaves):
        raise ValueError("all data arrays must have the same number of examples (leading axis)")
    if n == 0:
        raise ValueError("no examples to evaluate")
    if any(isinstance(a, jax.core.Tracer) for a in [*data_leaves, *dyn, key]):
        # Called inside jax.jit (or another transformation): the same per-example computation,
        # traced into the caller's program, which decides placement; no blocks, no progress bar.
        b = max(1, min(int(batch_size), n))
        return jax.lax.map(lambda a: fn(jax.tree_util.tree_unflatten(data_def, a[1]), jax.random.fold_in(key, a[0])),
                           (jnp.arange(n), data_leaves), batch_size=b)
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = sharding_lib.data_mesh(devices)
    n_dev = mesh.devices.size
    n_local = -(-n // n_dev)                                   # examples per device
    b = max(1, min(int(batch_size), n_local))
    steps = -(-n_local // b)                                   # lax.map steps per device
    blocks = min(steps, max_blocks) if progress else 1
    steps_per_block = -(-steps // blocks)
    blocks = -(-steps // steps_per_block)
    b = -(-n_local // (blocks * steps_per_block))              # the same steps, least padding
    block = n_dev * b * steps_per_block
    n_pad = blocks * block

    def pad(a):
        a = jnp.asarray(a)
        if n_pad == n:
            return a
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (n_pad - n,) + a.shape[1:])])

    data_leaves = [pad(a) for a in data_leaves]
    try:
        run = _runner(treedef, static, dyn_pos, len(leaves), data_def, b, mesh)
    except TypeError:  # an unhashable static leaf: compile without the cache
        run = _runner.__wrapped__(treedef, static, dyn_pos, len(leaves), data_def, b, mesh)
    sharded = NamedSharding(mesh, P(sharding_lib.DATA_AXIS))
    replicated = NamedSharding(mesh, P())
    dyn = jax.device_put(dyn, replicated)
    key = jax.device_put(key, replicated)
    outs = []
    for s in range(0, n_pad, block):  # dispatched asynchronously; waited on below
        idx = jax.device_put(jnp.arange(s, s + block, dtype=jnp.int32), sharded)
        chunk = jax.device_put([a[s: s + block] for a in data_leaves], sharded)
        outs.append(run(dyn, chunk, idx, key))
    if progress:
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=desc, unit="ex", dynamic_ncols=True, leave=False) as bar:
            for i, out in enumerate(outs):
                jax.block_until_ready(out)
                bar.update(min(block, n - i * block))
    if len(outs) == 1:
        return jax.tree_util.tree_map(lambda a: a[:n], outs[0])
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[:n], *outs)


# --- importance sampling -----------------------------------------------------------------------

def _group_means(carry, log_w, c, k, chunk, num_samples):
    """One chunk of the IWAE-k estimate from disjoint groups of k consecutive samples.

    ``carry = (partial, total)``: logsumexp of the group still open at the chunk start, and the
    sum of log (1/k) sum_{i in g} w_i over the groups completed so far.  Only the first
    G = num_samples // k groups count.
    """
    partial, total = carry
    groups = num_samples // k
    j = c * chunk + jnp.arange(chunk)                          # global sample indices [C]
    g0 = (c * chunk) // k
    num_seg = (chunk - 1) // k + 2
    seg = j // k - g0                                          # [C] in [0, num_seg)
    lw = jnp.where(j < groups * k, log_w, -jnp.inf)
    seg_max = jax.ops.segment_max(lw, seg, num_seg, indices_are_sorted=True)   # [S]
    shift = jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)
    seg_sum = jax.ops.segment_sum(jnp.exp(lw - shift[seg]), seg, num_seg, indices_are_sorted=True)
    seg_lse = jnp.log(seg_sum) + shift                         # [S], -inf where empty
    seg_lse = seg_lse.at[0].set(jnp.logaddexp(partial, seg_lse[0]))
    gid = g0 + jnp.arange(num_seg)
    complete = ((gid + 1) * k <= (c + 1) * chunk) & (gid < groups)
    total = total + jnp.sum(jnp.where(complete, seg_lse - math.log(k), 0.0))
    pos = ((c + 1) * chunk) // k - g0
    partial = jnp.where(pos < num_seg, seg_lse[jnp.minimum(pos, num_seg - 1)], -jnp.inf)
    return partial, total


@dataclasses.dataclass(frozen=True)
class _ImportanceSampling:
    """Per-example importance sampling (see :func:`importance_sampling`)."""

    num_samples: int
    ks: tuple[int, ...]
    chunk_size: int

    def __call__(self, fns, x, key):
        log_joint, proposal = fns
        q = proposal(x)
        if _is_point_mass(q):
            raise UndefinedEstimateError(POINT_MASS_PROPOSAL)
        K, C = self.num_samples, self.chunk_size
        neg_inf = jnp.asarray(-jnp.inf, jnp.float32)

        def chunk(carry, _):
            c, lse, lse2, groups = carry
            j = c * C + jnp.arange(C)                              # [C]
            keys = jax.vmap(jax.random.fold_in, (None, 0))(key, j)
            z, log_q = jax.vmap(lambda k: q.sample_and_log_prob(seed=k))(keys)   # [C, D], [C]
            log_w = log_joint(x, z) - log_q                        # [C]  log p(x, z) - log q(z | x)
            log_w = jnp.where(j < K, log_w, -jnp.inf)
            lse = jnp.logaddexp(lse, jax.nn.logsumexp(log_w))
            lse2 = jnp.logaddexp(lse2, jax.nn.logsumexp(2.0 * log_w))
            groups = tuple(_group_means(g, log_w, c, k, C, K) for g, k in zip(groups, self.ks))
            return (c + 1, lse, lse2, groups), None

        init = (jnp.zeros((), jnp.int32), neg_inf, neg_inf,
                tuple((neg_inf, jnp.zeros((), jnp.float32)) for _ in self.ks))
        (_, lse, lse2, groups), _ = jax.lax.scan(chunk, init, None, length=-(-K // C))
        out = {"log_px": lse - math.log(K), "ess": jnp.exp(2.0 * lse - lse2)}
        for k, (_, total) in zip(self.ks, groups):
            out[f"iwae_{k}"] = total / (K // k)
        return out


def check_ks(ks, num_samples: int) -> tuple[int, ...]:
    """Validated, sorted, de-duplicated list of k (each 1 <= k <= num_samples)."""
    ks = tuple(sorted({int(k) for k in ks}))
    bad = [k for k in ks if k < 1 or k > num_samples]
    if bad:
        raise config_lib.ConfigError(f"IWAE k must be between 1 and the number of importance samples "
                                     f"({num_samples}); got {bad}")
    return ks


def importance_sampling_one(log_joint: LogJoint, proposal: Proposal, x: jax.Array, key: jax.Array, *,
                            num_samples: int, ks=(), chunk_size: int | None = None) -> Estimates:
    """:func:`importance_sampling` for one example ``x [*event]`` with its own ``key`` (sample j
    from ``fold_in(key, j)``): scalars ``log_px``, ``ess`` and ``iwae_{k}``.  Traceable and
    vmappable, for use inside other per-example computations (e.g. with a fitted per-example
    proposal: ``proposal = lambda x: q_star``)."""
    K = int(num_samples)
    if K < 1:
        raise config_lib.ConfigError(f"the number of importance samples must be >= 1, got {K}")
    C = max(1, min(K, int(chunk_size or 1024)))
    return _ImportanceSampling(K, check_ks(ks, K), C)((log_joint, proposal), x, key)


def importance_sampling(log_joint: LogJoint, proposal: Proposal, xs: jax.Array, key: jax.Array, *,
                        num_samples: int, ks=(), chunk_size: int | None = None, batch_size: int | None = None,
                        devices=None, progress: bool = False) -> Estimates:
    """Importance-sampled log p(x) for every example, and IWAE-k bounds from the same samples.

    log p(x) ~= log (1/K) sum_{j<K} w_j,  w_j = p(x, z_j) / q(z_j | x),  z_j ~ q(z | x) = proposal(x)

    is a stochastic lower bound (its expectation is the IWAE-K bound <= log p(x)) that tends to
    log p(x) as K grows.  For each k in ``ks`` the K samples are split into G = K // k disjoint
    groups of k consecutive samples and

        iwae_k = (1/G) sum_g log (1/k) sum_{j in g} w_j,

    an unbiased estimate of the IWAE-k bound L_k (with G times less variance than one group):
    ``iwae_1`` is a K-sample ELBO estimate and ``iwae_K`` equals ``log_px``.

    Args:
      log_joint: ``log_joint(x, z) -> [C]`` nats, x ``[*event]``, z ``[C, D]``.
      proposal: ``proposal(x) -> distribution`` over z, event ``[D]``, with a density.
      xs: ``[N, *event]`` observations as the model sees them (floats).
      key: example i uses ``fold_in(key, i)``, its sample j ``fold_in(fold_in(key, i), j)``.
      num_samples: K.
      ks: IWAE k's to report (each <= K).
      chunk_size: samples drawn at once per example (memory only; default min(K, 1024)).
      batch_size: examples vmapped together per device (memory only; default keeps
        batch_size x chunk_size near :func:`default_rows`).
      devices: devices to shard the examples over (default: all local devices).
      progress: show a progress bar.
    Traceable: may be called inside ``jax.jit`` (see :func:`map_examples`).
    Returns:
      ``[N]`` arrays (nats): ``log_px``, ``ess`` (effective sample size of the normalised
      weights, (sum w)^2 / sum w^2, between 1 and K) and ``iwae_{k}`` for each k in ``ks``.
    """
    K = int(num_samples)
    if K < 1:
        raise config_lib.ConfigError(f"the number of importance samples must be >= 1, got {K}")
    ks = check_ks(ks, K)
    C = max(1, min(K, int(chunk_size or 1024)))
    B = int(batch_size or max(1, default_rows() // C))
    fn = jax.tree_util.Partial(_ImportanceSampling(K, ks, C), (log_joint, proposal))
    return map_examples(fn, jnp.asarray(xs), key, batch_size=B, devices=devices, progress=progress,
                        desc=f"IS k={K}")


# --- annealed importance sampling with HMC -----------------------------------------------------

SCHEDULES = ("linear", "sigmoid")
STARTS = ("prior", "posterior")


def annealing_schedule(num_steps: int, kind: str = "sigmoid", radius: float = 4.0) -> np.ndarray:
    """Inverse temperatures 0 = beta_0 < beta_1 < ... < beta_T = 1, ``[T + 1]`` float64.

    ``linear``: beta_t = t / T.  ``sigmoid`` (Grosse et al. 2015; Wu et al. 2017): beta_t =
    (s(t) - s(0)) / (s(T) - s(0)), s(t) = sigmoid(radius (2 t / T - 1)): more distributions at
    both ends, where the intermediate distributions change fastest.
    """
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-radius * (2.0 * t - 1.0)))
        return (s - s[0]) / (s[-1] - s[0])
    raise config_lib.ConfigError(f"unknown annealing schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


@dataclasses.dataclass(frozen=True)
class AIS:
    """Annealed importance sampling (Neal 2001) with HMC transitions.

    The intermediate distributions interpolate geometrically from pi_0 (the prior p(z), or
    q(z | x)) to the unnormalised posterior p(x, z):

        f_t(z) = pi_0(z)^(1 - beta_t) p(x, z)^beta_t,   beta_0 = 0 < ... < beta_T = 1.

    Each of ``num_chains`` chains starts at z_0 ~ pi_0 and accumulates
    log w = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log pi_0(z_{t-1})], moving z by one HMC
    transition (``num_leapfrog`` leapfrog steps, fresh momentum, Metropolis correction) that
    leaves f_t invariant after each step.  log (1/M) sum_m w_m is a stochastic lower bound on
    log p(x) (E[w] = p(x)).  The reverse direction (:meth:`reverse`) runs the same chain from an
    exact posterior sample down to pi_0 and estimates 1 / p(x): a stochastic upper bound.

    Step sizes are per chain; with ``adapt_step_size`` each is multiplied by (1 + adapt_rate)
    when the chain's running mean acceptance probability exceeds ``target_accept`` and by
    (1 - adapt_rate) otherwise, within [min_step_size, max_step_size] (the scheme of Wu et al.
    2017).  The HMC kernels are written here rather than taken from a sampling library so that
    log pi_0, log p(x, z) and their gradients are computed once per leapfrog step and reused
    across temperatures.

    Attributes:
      num_steps: T, the number of intermediate distributions (transitions).
      num_chains: M, chains per example.
      num_leapfrog: leapfrog steps per HMC transition.
      step_size: initial leapfrog step size.
      adapt_step_size, target_accept, adapt_rate, min_step_size, max_step_size: see above.
      schedule: ``"linear"`` or ``"sigmoid"`` (:func:`annealing_schedule`); ``sigmoid_radius``.
    """

    num_steps: int = 1000
    num_chains: int = 16
    num_leapfrog: int = 10
    step_size: float = 0.01
    adapt_step_size: bool = True
    target_accept: float = 0.65
    adapt_rate: float = 0.02
    min_step_size: float = 1e-4
    max_step_size: float = 0.5
    schedule: str = "sigmoid"
    sigmoid_radius: float = 4.0

    def __post_init__(self):
        def positive(name):
            if not getattr(self, name) > 0:
                raise config_lib.ConfigError(f"AIS {name} must be > 0, got {getattr(self, name)!r}")

        for name in ("num_steps", "num_chains", "num_leapfrog", "step_size", "min_step_size", "sigmoid_radius"):
            positive(name)
        if not 0.0 < self.target_accept < 1.0:
            raise config_lib.ConfigError(f"AIS target_accept must be in (0, 1), got {self.target_accept}")
        if not 0.0 <= self.adapt_rate < 1.0:
            raise config_lib.ConfigError(f"AIS adapt_rate must be in [0, 1), got {self.adapt_rate}")
        if self.max_step_size < self.min_step_size:
            raise config_lib.ConfigError("AIS max_step_size must be >= min_step_size")
        if self.schedule not in SCHEDULES:
            raise config_lib.ConfigError(f"unknown annealing schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def betas(self) -> np.ndarray:
        """The schedule beta_0..beta_T, ``[T + 1]``."""
        return annealing_schedule(self.num_steps, self.schedule, self.sigmoid_radius)

    def _batch_size(self, batch_size):
        return int(batch_size or max(1, default_rows() // self.num_chains))

    def forward(self, log_joint: LogJoint, initial: Proposal, xs: jax.Array, key: jax.Array, *,
                batch_size: int | None = None, devices=None, progress: bool = False) -> Estimates:
        """Forward AIS from pi_0 = ``initial(x)`` to p(z | x) for every example.

        Returns ``[N]`` arrays: ``log_px`` (log mean of the chains' weights, nats; a stochastic
        lower bound on log p(x)), ``acceptance`` (mean HMC acceptance probability),
        ``step_size`` (mean final step size), ``ess`` (effective sample size of the chains'
        weights), and ``log_w [N, M]``.
        """
        fn = jax.tree_util.Partial(_AISChain(self, reverse=False), (log_joint, initial))
        return map_examples(fn, jnp.asarray(xs), key, batch_size=self._batch_size(batch_size),
                            devices=devices, progress=progress, desc=f"AIS T={self.num_steps}")

    def reverse(self, log_joint: LogJoint, initial: Proposal, xs: jax.Array, zs: jax.Array, key: jax.Array, *,
                batch_size: int | None = None, devices=None, progress: bool = False) -> Estimates:
        """Reverse AIS from exact posterior samples ``zs [N, D]`` (z_n ~ p(z | x_n), e.g. the latents
        that simulated ``xs``) down to pi_0.

        Returns the same fields as :meth:`forward`; ``log_px`` = -log mean of the reverse
        weights (which estimate 1 / p(x)) is a stochastic *upper* bound on log p(x).
        """
        fn = jax.tree_util.Partial(_AISChain(self, reverse=True), (log_joint, initial))
        return map_examples(fn, (jnp.asarray(xs), jnp.asarray(zs)), key, batch_size=self._batch_size(batch_size),
                            devices=devices, progress=progress, desc=f"reverse AIS T={self.num_steps}")


@dataclasses.dataclass(frozen=True)
class _AISChain:
    """Per-example AIS (see :class:`AIS`); ``reverse`` runs from an exact posterior sample."""

    settings: AIS
    reverse: bool

    def __call__(self, fns, data, key):
        s = self.settings
        log_joint, initial = fns
        x, z_exact = data if self.reverse else (data, None)
        pi0 = initial(x)
        if _is_point_mass(pi0):
            raise UndefinedEstimateError(
                "AIS cannot start from a point mass q(z|x) = delta(z - f(x)) (an autoencoder's "
                "encoder has no density); start from the prior (--ais-start prior)")
        M = s.num_chains

        def potential(z):
            """log pi_0, log p(x, z) and their gradients at z [M, D]: ([M], [M], [M, D], [M, D])."""
            l0, vjp0 = jax.vjp(pi0.log_prob, z)
            lj, vjpj = jax.vjp(lambda z: log_joint(x, z), z)
            return (z, l0, lj, vjp0(jnp.ones_like(l0))[0], vjpj(jnp.ones_like(lj))[0])

        def log_f(state, beta):                                   # log f_beta(z)  [M]
            return (1.0 - beta) * state[1] + beta * state[2]

        def grad_log_f(state, beta):                              # [M, D]
            return (1.0 - beta) * state[3] + beta * state[4]

        def hmc(state, beta, eps, key):
            """One HMC transition leaving f_beta invariant; returns (state, acceptance prob [M])."""
            k_mom, k_acc = jax.random.split(key)
            p0 = jax.random.normal(k_mom, state[0].shape)          # [M, D]
            e = eps[:, None]

            def leapfrog(carry, _):
                st, p = carry
                p = p + 0.5 * e * grad_log_f(st, beta)
                st = potential(st[0] + e * p)
                p = p + 0.5 * e * grad_log_f(st, beta)
                return (st, p), None

            (new, p1), _ = jax.lax.scan(leapfrog, (state, p0), None, length=s.num_leapfrog)
            log_ratio = (log_f(new, beta) - 0.5 * jnp.sum(p1**2, -1)) - (log_f(state, beta) - 0.5 * jnp.sum(p0**2, -1))
            log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
            accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))     # [M]
            accept = jax.random.uniform(k_acc, (M,)) < accept_prob
            state = jax.tree_util.tree_map(
                lambda a, b: jnp.where(accept.reshape((M,) + (1,) * (a.ndim - 1)), a, b), new, state)
            return state, accept_prob

        betas = jnp.asarray(s.betas(), jnp.float32)                # [T + 1]
        if self.reverse:
            betas = betas[::-1]
        key_init, key_run = jax.random.split(key)
        if self.reverse:
            z0 = jnp.broadcast_to(z_exact, (M,) + z_exact.shape)   # every chain starts at the exact sample
        else:
            z0 = pi0.sample(seed=key_init, sample_shape=(M,))      # [M, D]

        def step(carry, t):
            state, eps, log_w, acc_sum = carry
            log_w = log_w + (betas[t] - betas[t - 1]) * (state[2] - state[1])   # at z_{t-1}
            state, acc = hmc(state, betas[t], eps, jax.random.fold_in(key_run, t))
            acc_sum = acc_sum + acc
            if s.adapt_step_size:
                up = acc_sum / t.astype(jnp.float32) > s.target_accept
                eps = jnp.clip(eps * jnp.where(up, 1.0 + s.adapt_rate, 1.0 - s.adapt_rate),
                               s.min_step_size, s.max_step_size)
            return (state, eps, log_w, acc_sum), None

        init = (potential(z0), jnp.full((M,), s.step_size, jnp.float32), jnp.zeros((M,), jnp.float32),
                jnp.zeros((M,), jnp.float32))
        (state, eps, log_w, acc_sum), _ = jax.lax.scan(step, init, jnp.arange(1, s.num_steps + 1))
        log_mean_w = jax.nn.logsumexp(log_w) - math.log(M)
        return {
            "log_px": -log_mean_w if self.reverse else log_mean_w,
            "acceptance": jnp.mean(acc_sum) / s.num_steps,
            "step_size": jnp.mean(eps),
            "ess": jnp.exp(2.0 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2.0 * log_w)),
            "log_w": log_w,
        }


def bdmc(settings: AIS, log_joint: LogJoint, initial: Proposal, sample_joint: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]],
         key: jax.Array, *, num_examples: int, batch_size: int | None = None, devices=None,
         progress: bool = False) -> Estimates:
    """Bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017).

    Simulates ``(z_n, x_n) ~ p(z) p(x | z)``; z_n is then an exact sample of p(z | x_n), so
    reverse AIS can start from it.  Forward AIS gives a stochastic lower bound and reverse AIS a
    stochastic upper bound on each log p(x_n): their gap bounds the error of forward AIS with
    these settings, on data like the simulated data.

    Args:
      settings: the :class:`AIS` settings used in both directions.
      sample_joint: ``sample_joint(key, n) -> (z [n, D], x [n, *event])`` (:func:`model_sampler`).
      key: ``fold_in(key, 0)`` simulates, ``fold_in(key, 1)`` runs forward, ``fold_in(key, 2)`` reverse.
      num_examples: how many (x, z) to simulate.
    Returns:
      ``[N]`` arrays (nats): ``lower``, ``upper``, ``gap`` = upper - lower, the forward and
      reverse ``acceptance``; and the simulated ``xs [N, *event]`` and ``zs [N, D]``.
    """
    if int(num_examples) < 1:
        raise config_lib.ConfigError(f"BDMC needs at least one simulated example, got {num_examples}")
    zs, xs = sample_joint(jax.random.fold_in(key, 0), int(num_examples))
    kw = dict(batch_size=batch_size, devices=devices, progress=progress)
    fwd = settings.forward(log_joint, initial, xs, jax.random.fold_in(key, 1), **kw)
    rev = settings.reverse(log_joint, initial, xs, zs, jax.random.fold_in(key, 2), **kw)
    return {
        "lower": fwd["log_px"],
        "upper": rev["log_px"],
        "gap": rev["log_px"] - fwd["log_px"],
        "forward_acceptance": fwd["acceptance"],
        "reverse_acceptance": rev["acceptance"],
        "xs": xs,
        "zs": zs,
    }
