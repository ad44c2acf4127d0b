"""Importance sampling: log p(x) and the IWAE-k bounds in one pass; the model as the two functions
every estimator of log p(x) takes.

Every estimator works on any model given by two functions of one observation::

    log_joint(x, z) -> [K]     log p(x, z) in nats, for x [*event] and z [K, D]
    proposal(x)     -> a distrax distribution over z with event shape [D]
                       (q(z | x), or the prior p(z) ignoring x)

:func:`model_functions` gives both for a :class:`vaegen.model.latent.LatentVariableModel`.  They are passed
as ``jax.tree_util.Partial`` objects so that parameters enter the compiled code as arguments,
not as constants (a plain closure works too, but its captured arrays are baked into the program).

=========================  ==================================================================
:func:`importance_sampling`  log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x),
                             and the IWAE-k bounds of a list of k from the same K samples
``AIS``, ``bdmc``             annealed importance sampling and bidirectional Monte Carlo
                             (:mod:`vaegen.estimators.ais`)
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
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp

from vaegen import sharding as sharding_lib
from vaegen.errors import POINT_MASS_PROPOSAL, ConfigError, UndefinedEstimateError

LogJoint = Callable[[jax.Array, jax.Array], jax.Array]
Proposal = Callable[[jax.Array], distrax.Distribution]
Estimates = dict[str, jax.Array]


# --- the model as two functions ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _LogJoint:
    model: Any

    def __call__(self, variables, x, z):
        return self.model.apply(variables, x, z, method="log_joint")


@dataclasses.dataclass(frozen=True)
class _Posterior:
    model: Any

    def __call__(self, variables, x):
        return self.model.apply(variables, x, method="q_z_given_x")


@dataclasses.dataclass(frozen=True)
class _Prior:
    model: Any

    def __call__(self, variables, x):
        del x
        return self.model.apply(variables, method="p_z")


@dataclasses.dataclass(frozen=True)
class _SampleJoint:
    model: Any

    def __call__(self, variables, key, n):
        return self.model.apply(variables, key, n, method="sample_with_latents")


def _require_prior(model: Any, what: str) -> None:
    if not model.has_prior:
        raise UndefinedEstimateError(
            f"{what} does not exist for this model: it has no prior p(z) (an autoencoder), hence no "
            "p(x) = E_p(z)[p(x|z)]. Fit a density to its codes to make it generative, or train a VAE"
        )


def model_and_variables(model: Any, variables: Any = None) -> tuple[Any, Any]:
    """``(model, variables)`` from a model and its variables, or from a trained run alone
    (:func:`vaegen.load`: anything with ``.model`` and ``.variables``)."""
    if variables is not None:
        return model, variables
    if hasattr(model, "model") and hasattr(model, "variables"):
        return model.model, model.variables
    raise TypeError(f"pass a model and its variables, or a trained run (vaegen.load); got {type(model).__name__} alone")


def model_functions(model: Any, variables: Any = None, *,
                    proposal: str = "posterior") -> tuple[LogJoint, Proposal]:
    """``(log_joint, proposal)`` of a model with its parameters bound (``model_functions(run)``
    takes a trained run's).

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
    model, variables = model_and_variables(model, variables)
    _require_prior(model, "log p(x)")
    if proposal == "posterior":
        if model.is_autoencoder:
            raise UndefinedEstimateError(POINT_MASS_PROPOSAL)
        prop = jax.tree_util.Partial(_Posterior(model), variables)
    elif proposal == "prior":
        prop = jax.tree_util.Partial(_Prior(model), variables)
    else:
        raise ConfigError(f"unknown proposal {proposal!r}; choose 'posterior' or 'prior'")
    return jax.tree_util.Partial(_LogJoint(model), variables), prop


def model_sampler(model: Any, variables: Any = None) -> Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]:
    """``sample_joint(key, n) -> (z [n, D], x [n, *event])``: ancestral samples of p(x, z) (of a
    model and its variables, or of a trained run)."""
    model, variables = model_and_variables(model, variables)
    _require_prior(model, "sampling p(x, z)")
    return jax.tree_util.Partial(_SampleJoint(model), variables)


def is_point_mass(q: distrax.Distribution) -> bool:
    """Whether a distribution is a point mass (an autoencoder's q(z|x)): it has no density."""
    if isinstance(q, distrax.Independent):
        q = q.distribution
    return isinstance(q, distrax.Deterministic)


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
        if is_point_mass(q):
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
        raise ConfigError(f"IWAE k must be between 1 and the number of importance samples "
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
        raise ConfigError(f"the number of importance samples must be >= 1, got {K}")
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
        batch_size x chunk_size near :func:`vaegen.sharding.default_rows`).
      devices: devices to shard the examples over (default: all local devices).
      progress: show a progress bar.
    Traceable: may be called inside ``jax.jit`` (see :func:`vaegen.sharding.map_examples`).
    Returns:
      ``[N]`` arrays (nats): ``log_px``, ``ess`` (effective sample size of the normalised
      weights, (sum w)^2 / sum w^2, between 1 and K) and ``iwae_{k}`` for each k in ``ks``.
    """
    K = int(num_samples)
    if K < 1:
        raise ConfigError(f"the number of importance samples must be >= 1, got {K}")
    ks = check_ks(ks, K)
    C = max(1, min(K, int(chunk_size or 1024)))
    B = int(batch_size or max(1, sharding_lib.default_rows() // C))
    fn = jax.tree_util.Partial(_ImportanceSampling(K, ks, C), (log_joint, proposal))
    return sharding_lib.map_examples(fn, jnp.asarray(xs), key, batch_size=B, devices=devices, progress=progress,
                        desc=f"IS k={K}")
