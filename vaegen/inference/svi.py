"""Inference beside the model: per-example variational inference and semi-amortized training.

An amortized posterior q(z | x) = q(z; phi(x)) spends one encoder pass per x; its parameters
phi(x) are a *member* of a variational family F.  The best member for one x,

    q*_F(z | x) = argmax_{phi}  L(x; phi),   L(x; phi) = E_{q(z; phi)}[log p(x, z) - log q(z; phi)],

is found here by optimising a free phi per example with optax (stochastic variational
inference, SVI): K steps of reparameterised gradient ascent on L, from an initial phi_0 that is
either the amortized phi(x) or the standard-normal point.  This gives the two halves of the
inference gap (Cremer et al. 2018)::

    log p(x) - L[q]  =  (log p(x) - L[q*_F])  +  (L[q*_F] - L[q])
                        approximation gap        amortization gap

(see :mod:`vaegen.gaps`), and, run inside the training step, semi-amortized training
(Kim et al. 2018, :class:`SemiAmortizedELBO`).

Families (:func:`make_family`; each is a pytree phi per example and a pure function
``phi -> distrax distribution`` from :mod:`vaegen.posteriors`)::

    diag      N(loc, diag exp(2 log_scale))               phi = {loc [D], log_scale [D]}
    fullcov   N(loc, L L^T), L Cholesky                   phi = {loc, log_scale, tril [D(D-1)/2]}
    flow      coupling flow on a diagonal Gaussian base   phi = {loc, log_scale, context [C], flow}

For the flow, q*_F optimises *every* parameter of the flow per example, its coupling networks
included: F is the set of all flows of that architecture.

Every per-example computation takes its noise from ``fold_in(key, example_index)``, so results
do not depend on how the examples are chunked or on the number of devices.  :func:`fit_local`
shards the examples over the local devices with :func:`vaegen.estimators.map_examples` (the
engine of importance sampling and AIS); on each device the optimiser is ``vmap``-ped over a
chunk of examples and ``lax.scan``-ned over the steps, one compiled call per group of chunks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from vaegen.estimators import importance as estimators_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen import sharding as sharding_lib
from vaegen.model.latent import LatentVariableModel
from vaegen.errors import InferenceError

Phi = dict  # local variational parameters of one example (or, with a leading [N], of many)
Terms = dict[str, jax.Array]


# --- families ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DiagonalFamily:
    """q(z) = N(z; loc, diag exp(2 log_scale)): the mean-field ("fully factorised") Gaussian."""

    latent_dim: int
    name = "diag"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.diagonal_gaussian(phi)

    def standard(self) -> Phi:
        """phi of N(0, I) (= p(z) under the standard-normal prior)."""
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,))}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "diag":
            return phi
        raise InferenceError(f"a diagonal Gaussian cannot start from a {kind} posterior (it cannot represent it); "
                             "use init 'prior' or a richer family")


@dataclasses.dataclass(frozen=True)
class FullCovarianceFamily:
    """q(z) = N(z; loc, L L^T), L = diag(exp(log_scale)) + strictly-lower(tril)."""

    latent_dim: int
    name = "fullcov"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.full_covariance_gaussian(phi)

    def standard(self) -> Phi:
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,)), "tril": jnp.zeros((posteriors_lib.num_tril(d),))}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "fullcov":
            return phi
        if kind == "diag":
            return {**phi, "tril": jnp.zeros(phi["loc"].shape[:-1] + (posteriors_lib.num_tril(self.latent_dim),))}
        raise InferenceError(f"a full-covariance Gaussian cannot start from a {kind} posterior; use init 'prior'")


@dataclasses.dataclass(frozen=True)
class FlowFamily:
    """q(z) = T_# N(loc, diag exp(2 log_scale)), T a stack of affine coupling layers conditioned on
    a context vector (:func:`vaegen.posteriors.flow_distribution`).

    ``init_seed`` fixes the hidden-layer initialisation of a fresh (identity) flow, used when
    starting from the standard point or from a diagonal Gaussian.
    """

    latent_dim: int
    num_layers: int = 4
    hidden: tuple[int, ...] = (64,)
    context_dim: int = 16
    activation: str = "tanh"
    init_seed: int = 0
    flow_step_scale: float = 0.1
    name = "flow"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.flow_distribution(phi, activation=self.activation)

    def step_scales(self, phi: Phi) -> Phi:
        """Multipliers of the optimiser's steps: the coupling networks' weights move
        ``flow_step_scale`` times slower than the base and the context (Adam moves every weight by
        about the learning rate, and a flow has thousands of them)."""
        return {k: jax.tree_util.tree_map(lambda a: jnp.full_like(a, self.flow_step_scale if k == "flow" else 1.0), v)
                for k, v in phi.items()}

    def _identity_flow(self) -> dict:
        return posteriors_lib.init_coupling_flow(jax.random.key(self.init_seed), self.latent_dim, self.context_dim,
                                                 self.num_layers, tuple(self.hidden))

    def standard(self) -> Phi:
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,)), "context": jnp.zeros((self.context_dim,)),
                "flow": self._identity_flow()}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "flow":
            ours = jax.tree_util.tree_map(jnp.shape, self._identity_flow())
            theirs = jax.tree_util.tree_map(jnp.shape, phi["flow"])
            if ours != theirs or phi["context"].shape[-1] != self.context_dim:
                raise InferenceError("the flow family's architecture (layers, hidden, context_dim) differs from the "
                                     "amortized flow's; build it with make_family('flow', model)")
            return phi
        if kind == "diag":
            batch = phi["loc"].shape[:-1]
            return {**phi, "context": jnp.zeros(batch + (self.context_dim,)), "flow": self._identity_flow()}
        raise InferenceError(f"a flow cannot start from a {kind} posterior; use init 'prior'")


Family = DiagonalFamily | FullCovarianceFamily | FlowFamily

FAMILY_ALIASES = {
    "diag": "diag", "diagonal": "diag", "diagonal_gaussian": "diag",
    "fullcov": "fullcov", "full_covariance": "fullcov", "full_covariance_gaussian": "fullcov",
    "flow": "flow",
}


def posterior_kind(model: LatentVariableModel) -> str:
    """The family of the model's amortized q(z | x): ``diag``, ``fullcov`` or ``flow``."""
    post = model.posterior
    if isinstance(post, (posteriors_lib.DiagonalGaussian, posteriors_lib.FixedScaleGaussian)):
        return "diag"
    if isinstance(post, posteriors_lib.FullCovarianceGaussian):
        return "fullcov"
    if isinstance(post, posteriors_lib.FlowPosterior):
        return "flow"
    if posteriors_lib.is_point_mass(post):
        raise InferenceError("the model's q(z|x) is a point mass (an autoencoder): it has no ELBO and no "
                             "variational family to refine; train a VAE")
    raise InferenceError(f"no variational family is known for the posterior {type(post).__name__}")


def make_family(name: str, model: LatentVariableModel | None = None, *, latent_dim: int | None = None,
                **flow_options) -> Family:
    """A family by name (``diag``, ``fullcov``, ``flow`` or the posterior names), sized for ``model``.

    For ``flow`` with a model whose q(z | x) is itself a flow, the architecture is the model's (so
    that q* starts from the amortized q); otherwise ``flow_options`` (num_layers, hidden,
    context_dim, activation) or the defaults of :class:`FlowFamily`.
    """
    key = FAMILY_ALIASES.get(name)
    if key is None:
        raise InferenceError(f"unknown variational family {name!r}; choose diag, fullcov or flow")
    if latent_dim is None:
        if model is None:
            raise InferenceError("make_family needs a model or latent_dim")
        latent_dim = int(model.posterior.latent_dim)
    if key == "diag":
        return DiagonalFamily(latent_dim)
    if key == "fullcov":
        return FullCovarianceFamily(latent_dim)
    if latent_dim < 2:
        raise InferenceError("the flow family needs latent_dim >= 2")
    post = model.posterior if model is not None else None
    if isinstance(post, posteriors_lib.FlowPosterior):
        flow_options = dict(num_layers=post.num_layers, hidden=tuple(post.hidden), context_dim=post.context_dim,
                            activation=post.activation)
    if "hidden" in flow_options:
        flow_options["hidden"] = tuple(int(h) for h in flow_options["hidden"])
    return FlowFamily(latent_dim, **flow_options)


def family_of(model: LatentVariableModel, **flow_options) -> Family:
    """The family of the model's own amortized posterior."""
    return make_family(posterior_kind(model), model, **flow_options)


def amortized_parameters(model: LatentVariableModel, variables: Any, x: jax.Array) -> tuple[str, Phi]:
    """phi(x) of the amortized q(z | x) and its family's name: ``(kind, phi)``, phi per example."""
    kind = posterior_kind(model)
    if kind == "diag":
        q = model.apply(variables, x, method="q_z_given_x")
        return kind, {"loc": q.mean(), "log_scale": jnp.log(q.stddev())}
    return kind, model.apply(variables, x, method=lambda m, x: m.posterior.parameters(x))


def initial_parameters(family: Family, init: str, model: LatentVariableModel, variables: Any, x: jax.Array) -> Phi:
    """phi_0 for one example: ``"amortized"`` (the encoder's phi(x), embedded in ``family``) or
    ``"prior"`` (the standard-normal point)."""
    if init == "prior":
        return family.standard()
    if init == "amortized":
        return family.embed(*amortized_parameters(model, variables, x))
    raise InferenceError(f"unknown initialisation {init!r}; choose 'amortized' or 'prior'")


# --- the per-example ELBO of a free phi -----------------------------------------------------------

def _kl_or_none(q: distrax.Distribution, p: distrax.Distribution) -> jax.Array | None:
    try:
        return q.kl_divergence(p)
    except (NotImplementedError, TypeError, ValueError):
        return None


def elbo_of(model: LatentVariableModel, variables: Any, q: distrax.Distribution | Callable[[Any], distrax.Distribution],
            x: jax.Array, key: jax.Array, num_samples: int = 1, *, analytic_kl: bool = True,
            q_density: distrax.Distribution | None = None) -> Terms:
    """L(x; q) = E_q[log p(x | z)] - KL(q || p(z)) for one example, with ``num_samples`` z ~ q.

    Args:
      q: a distribution over z (event [D]), or a function of the bound model returning one
        (e.g. ``lambda m: m.q_z_given_x(x)``).
      analytic_kl: use the closed-form KL where distrax has one (Gaussian families with a
        Gaussian prior), else the Monte Carlo estimate mean_s[log q(z_s) - log p(z_s)].
      q_density: where given, log q(z_s) of the Monte Carlo KL is evaluated under this
        distribution -- the same q built from stop-gradient parameters gives the path-derivative
        ("sticking the landing", Roeder et al. 2017) gradient: the same value, lower variance.
    Returns:
      ``{"elbo", "reconstruction", "kl", "mc_stderr"}`` in nats (scalars); ``mc_stderr`` is the
      Monte Carlo standard error of the ``elbo`` estimate (NaN for one sample).
    """

    def terms(m: LatentVariableModel) -> Terms:
        dist = q(m) if callable(q) and not isinstance(q, distrax.Distribution) else q
        z, log_q = dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))  # [S, D], [S]
        log_px_z = m.log_likelihood(x, z)                                           # [S]
        p = m.p_z()
        kl = _kl_or_none(dist, p) if analytic_kl else None
        if kl is None:
            if q_density is not None:
                log_q = q_density.log_prob(z)
            per_sample = log_px_z + p.log_prob(z) - log_q                         # [S]
            kl = jnp.mean(log_q - p.log_prob(z))
        else:
            per_sample = log_px_z - kl
        reconstruction = jnp.mean(log_px_z)
        mc_stderr = jnp.std(per_sample) / math.sqrt(num_samples) if num_samples > 1 else jnp.asarray(jnp.nan)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl, "mc_stderr": mc_stderr}

    return model.apply(variables, method=terms)


def log_px_importance_sampled(model: LatentVariableModel, variables: Any, q: distrax.Distribution | Callable,
                              x: jax.Array, key: jax.Array, num_samples: int, *, sample_batch: int | None = None) -> jax.Array:
    """log p(x) ~= log 1/k sum_i p(x, z_i) / q(z_i),  z_i ~ q: the importance-sampling estimate with
    proposal q (a stochastic lower bound, IWAE_k), in nats
    (:func:`vaegen.estimators.importance_sampling_one`); samples drawn ``sample_batch`` at a time
    with a running log-sum-exp (memory only: sample i comes from ``fold_in(key, i)``, so the
    estimate does not depend on it)."""

    def run(m: LatentVariableModel) -> jax.Array:
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


def refine(model: LatentVariableModel, variables: Any, family: Family, phi0: Phi, x: jax.Array, key: jax.Array,
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
    ``fold_in(key, i)``, ``i`` the example's id (the key :func:`vaegen.estimators.map_examples`
    derives from the example's position in a dispatch is not used)."""

    model: LatentVariableModel
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


def fit_local(model: LatentVariableModel, variables: Any, xs: jax.Array | np.ndarray, key: jax.Array, *,
              family: Family | str | None = None, settings: SVISettings = SVISettings(), init: str = "amortized",
              chunk_size: int = 500, eval_samples: int = 100, log_px_samples: int = 0,
              keep_parameters: bool = True, trace_points: int = 50, progress: bool = True,
              description: str = "q*", example_ids: np.ndarray | None = None, devices=None) -> LocalInference:
    """Non-amortized inference: q*_F(z | x) for every example of ``xs``, by per-example SVI.

    The examples are sharded over ``devices`` (``shard_map`` over the ``"data"`` mesh, through
    :func:`vaegen.estimators.map_examples`, as importance sampling and AIS are): each dispatch
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
    import time

    from tqdm.auto import tqdm

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
        out = estimators_lib.map_examples(fn, (xs_padded[s], ids_padded[s]), key, batch_size=chunk,
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


# --- semi-amortized training ------------------------------------------------------------------

GRADIENTS = ("unrolled", "total", "stop")


@dataclasses.dataclass(frozen=True)
class SemiAmortizedELBO:
    """Semi-amortized variational inference (Kim et al. 2018) as a training objective.

    Per example: phi_0 = phi(x) from the encoder (or the standard point), then K SVI steps
    phi_{k+1} = phi_k + opt(grad_phi L(x; phi_k, theta)) (:func:`refine`), and the model is
    trained on the refined bound L(x; phi_K, theta).  How gradients reach the parameters:

    ``unrolled`` (SA-VAE, Kim et al.'s Algorithm 1): theta gets the partial derivative
        dL(phi_K, theta)/dtheta at phi_K; the encoder gets dL/dphi_K dphi_K/dphi_0 dphi_0/dphi,
        back-propagated through the K unrolled steps (the inner loop sees theta as a constant).
    ``total``: as ``unrolled``, but theta's gradient also flows through the inner loop (the total
        derivative of L(phi_K(theta), theta)).
    ``stop``: phi_K is a constant for the gradient; the encoder is trained on its own bound
        L(x; phi_0(x), theta) with theta held fixed in that term (Kim et al.'s VAE+SVI).

    With ``init="prior"`` the decoder never sees the encoder (non-amortized training, SVI); the
    encoder is then trained alongside on its own bound with theta fixed, so that the amortized q
    of such a model can still be measured, without it influencing the model.

    Terms (nats, one example): ``elbo`` L(x; phi_K) (the refined bound, what the model is trained
    on), ``elbo_amortized`` L(x; phi_0) (same noise), ``refinement_gain`` = their difference,
    ``reconstruction`` and ``kl`` of q(z; phi_K), and ``objective``: ``elbo``, plus
    ``elbo_amortized`` where the encoder is trained on its own bound.

    Attributes:
      settings: the inner optimiser (``num_steps`` = K, ``learning_rate`` = the inner rate, ...).
      init: ``amortized`` | ``prior``.
      gradient: ``unrolled`` | ``total`` | ``stop``.
      num_samples: S, samples of z for the final bound.
      family: the family refined; None = the family of the model's q(z | x).
    """

    settings: SVISettings = SVISettings(num_steps=10, learning_rate=0.05, schedule="constant", path_gradient=False)
    init: str = "amortized"
    gradient: str = "unrolled"
    num_samples: int = 1
    family: Family | None = None
    bound_name = "elbo"

    def __post_init__(self):
        self.settings.validate()
        if self.init not in ("amortized", "prior"):
            raise InferenceError(f"unknown initialisation {self.init!r}; choose 'amortized' or 'prior'")
        if self.gradient not in GRADIENTS:
            raise InferenceError(f"unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")

    @property
    def encoder_trained_separately(self) -> bool:
        return self.gradient == "stop" or self.init == "prior"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> Terms:
        del step
        from vaegen.objectives.bounds import _require_density

        _require_density(model, "semi-amortized ELBO")
        family = self.family or family_of(model)
        sg = jax.lax.stop_gradient
        k_inner, k_final = jax.random.split(key)

        amortized_phi = family.embed(*amortized_parameters(model, variables, x))
        phi0 = family.standard() if self.init == "prior" else amortized_phi
        inner_variables = variables if self.gradient == "total" else sg(variables)
        if self.gradient == "stop":
            phi0 = sg(phi0)
        phi_k, _ = refine(model, inner_variables, family, phi0, x, k_inner, self.settings)
        if self.gradient == "stop":
            phi_k = sg(phi_k)
        refined = elbo_of(model, variables, family.distribution(phi_k), x, k_final, self.num_samples,
                          analytic_kl=self.settings.analytic_kl)
        if self.encoder_trained_separately:
            # The encoder's own bound, with the generative model held fixed in this term.
            params = dict(sg(variables["params"]))
            params["posterior"] = variables["params"]["posterior"]
            encoder_vars = {**variables, "params": params}
            amortized = elbo_of(model, encoder_vars, family.distribution(amortized_phi), x, k_final,
                                self.num_samples, analytic_kl=self.settings.analytic_kl)
            objective = refined["elbo"] + amortized["elbo"]
        else:
            amortized = elbo_of(model, variables, family.distribution(sg(amortized_phi)), x, k_final,
                                self.num_samples, analytic_kl=self.settings.analytic_kl)
            objective = refined["elbo"]
        return {
            "elbo": refined["elbo"],
            "reconstruction": refined["reconstruction"],
            "kl": refined["kl"],
            "elbo_amortized": amortized["elbo"],
            "refinement_gain": sg(refined["elbo"] - amortized["elbo"]),
            "objective": objective,
        }


def semi_amortized_from_config(cfg: Any) -> SemiAmortizedELBO:
    """:class:`SemiAmortizedELBO` from ``config.objective`` (the ``svi_*`` keys)."""
    settings = SVISettings(
        num_steps=int(cfg.svi_steps), learning_rate=float(cfg.svi_learning_rate), optimizer=cfg.svi_optimizer,
        momentum=float(cfg.svi_momentum), schedule="constant", num_samples=int(cfg.svi_num_samples),
        grad_clip_norm=float(cfg.svi_grad_clip_norm), analytic_kl=bool(cfg.analytic_kl), path_gradient=False,
    )
    return SemiAmortizedELBO(settings=settings, init=cfg.svi_init, gradient=cfg.svi_gradient,
                             num_samples=int(cfg.num_samples))
