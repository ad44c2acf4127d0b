"""The signal-to-noise ratio of a stochastic gradient, per parameter and per group (Rainforth et
al. 2018, "Tighter variational bounds are not necessarily better").

At fixed parameters and a fixed minibatch x_1..B, a training objective's gradient is a random
vector g = d/dvariables mean_b objective(x_b; eps_b) over the estimator's noise eps.  For each
parameter j::

    SNR_j = |E g_j| / sd(g_j)

estimated from N independent draws of g (the noise of each draw from ``fold_in(key, draw)``,
example b's from that key split B ways), with the sample mean and the sample standard deviation
(ddof 1).  Parameters are summarised per group: ``encoder`` = ``params/posterior`` (phi, q's),
``decoder`` = ``params/likelihood`` and ``params/prior`` (theta, p's); a parameter whose gradient
is exactly 0 in every draw (unused) is left out.  Each summary (the mean and the median of SNR_j
over the group's parameters) comes with a standard error by the delete-one-block jackknife over
``num_blocks`` blocks of draws, which needs no assumption about the gradient's distribution;
per-parameter standard errors the same way.

The draws are vmapped (``draws_per_call`` at a time, within the memory of
:func:`vaegen.sharding.default_rows` rows) and jitted once per objective (estimator and k) and
batch shape; the moments are accumulated on the host in float64 (per block: count, mean and the
sum of squared deviations, combined exactly).

The estimate is consistent, not unbiased: |mean| / sd over N draws overestimates a small SNR by
about 1/sqrt(N) (|E g| = 0 gives ~ sqrt(2 / (pi N))), so compare SNRs measured with the same N.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vaegen import compilation
from vaegen import sharding as sharding_lib
from vaegen.objectives.batch import batched
from vaegen.objectives.bounds import IWAE, IWAESettings

GROUPS: Mapping[str, tuple[str, ...]] = {"encoder": ("posterior",), "decoder": ("likelihood", "prior")}
"""Parameter groups: name -> the subtrees of ``params`` it holds (phi: q's; theta: p's)."""


def group_vectors(params: Mapping[str, Any], groups: Mapping[str, Sequence[str]] = GROUPS) -> dict[str, jax.Array]:
    """Each group's parameters (or gradients) of a ``params`` tree as one flat vector ``[P_group]``."""
    return {name: ravel_pytree({k: params[k] for k in keys if k in params})[0] for name, keys in groups.items()}


def samples_per_example(objective: Any) -> int:
    """The importance samples an objective draws per example (M k for the grouped bounds)."""
    return int(getattr(objective, "num_samples", 1)) * int(getattr(objective, "num_groups", 1))


@dataclasses.dataclass(frozen=True)
class _Draws:
    """``(variables, xs [B, *event], keys [C]) -> {group: (mean [P], M2 [P])}``: C draws of the
    minibatch gradient, their mean and sum of squared deviations per parameter."""

    model: Any
    objective: Any
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    def gradient(self, variables, xs, key):
        keys = jax.random.split(key, xs.shape[0])

        def mean_objective(params):
            v = {**variables, "params": params}
            return jnp.mean(batched(self.objective, self.model, v, xs, keys)["objective"])

        return group_vectors(jax.grad(mean_objective)(variables["params"]), dict(self.groups))

    def __call__(self, variables, xs, keys):
        gs = jax.vmap(self.gradient, in_axes=(None, None, 0))(variables, xs, keys)   # {group: [C, P]}
        out = {}
        for name, g in gs.items():
            mean = jnp.mean(g, 0)
            out[name] = (mean, jnp.sum(jnp.square(g - mean), 0))
        return out


@dataclasses.dataclass
class _Moments:
    """Count, mean and sum of squared deviations of a stream of vectors (float64), combined exactly
    (Chan et al.'s pairwise update)."""

    n: float = 0.0
    mean: np.ndarray | float = 0.0
    m2: np.ndarray | float = 0.0

    def add(self, n: float, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    def without(self, other: "_Moments") -> "_Moments":
        """The moments of this stream with ``other`` (a part of it) removed."""
        n = self.n - other.n
        mean = (self.n * self.mean - other.n * other.mean) / n
        m2 = self.m2 - other.m2 - (other.mean - mean) ** 2 * (other.n * n / self.n)
        return _Moments(n, mean, np.maximum(m2, 0.0))


def _snr(m: _Moments) -> np.ndarray:
    sd = np.sqrt(m.m2 / (m.n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(m.mean) / sd


def _summaries(snr: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(snr)), "median": float(np.median(snr))}


def _jackknife(full: float, leave_one_out: Sequence[float]) -> float:
    loo = np.asarray(leave_one_out, np.float64)
    j = loo.size
    return float(math.sqrt((j - 1) / j * np.sum((loo - loo.mean()) ** 2)))


@dataclasses.dataclass
class GradientSNR:
    """The SNR of one objective's gradient at fixed parameters (see the module docstring).

    Attributes:
      groups: per group, ``{"mean", "mean_stderr", "median", "median_stderr", "num_parameters",
        "num_unused"}``: the mean and median over the group's parameters of SNR_j, with their
        jackknife standard errors (dimensionless).
      snr: per group, SNR_j ``[P]`` of every parameter (NaN for an unused one, inf for a gradient
        that does not vary); ``snr_stderr`` their jackknife standard errors.
      gradient_mean, gradient_sd: per group, E g_j and sd(g_j) ``[P]``.
      num_draws: N; num_examples: B; seconds: the wall-clock time (compilation included).
    """

    groups: dict[str, dict[str, float]]
    snr: dict[str, np.ndarray]
    snr_stderr: dict[str, np.ndarray]
    gradient_mean: dict[str, np.ndarray]
    gradient_sd: dict[str, np.ndarray]
    num_draws: int
    num_examples: int
    seconds: float


def gradient_snr(model: Any, variables: Any, objective: Any, xs: jax.Array, key: jax.Array, *,
                 num_draws: int = 1000, num_blocks: int = 10, draws_per_call: int = 0,
                 groups: Mapping[str, Sequence[str]] = GROUPS) -> GradientSNR:
    """The SNR of ``objective``'s minibatch gradient at ``variables``, per parameter and group.

    Args:
      model: the model.
      variables: the parameters at which the gradient is measured.
      objective: a per-example training objective (e.g. ``IWAE(IWAESettings(num_samples=k, estimator="dreg"))``); its
        gradient is that of ``mean_b objective(...)["objective"]``, as in training.
      xs: the fixed minibatch ``[B, *event]`` (float, as the model sees it).
      key: draw i uses ``fold_in(key, i)``.
      num_draws: N, rounded up to a whole number of calls in each of ``num_blocks`` blocks
        (``num_draws`` of the result is the number used).
      num_blocks: J >= 2, blocks of draws for the jackknife standard errors.
      draws_per_call: draws vmapped in one call (0: as many as keep B x (samples per example) x
        draws within :func:`vaegen.sharding.default_rows` rows).
      groups: the parameter groups (default :data:`GROUPS`).
    """
    if num_blocks < 2:
        raise ValueError(f"num_blocks must be >= 2 for the jackknife, got {num_blocks}")
    xs = jnp.asarray(xs)
    b = int(xs.shape[0])
    rows = b * samples_per_example(objective)
    c = int(draws_per_call) or max(1, min(sharding_lib.default_rows() // max(rows, 1), num_draws // num_blocks or 1))
    calls_per_block = max(1, math.ceil(num_draws / (num_blocks * c)))
    groups = tuple((name, tuple(keys)) for name, keys in groups.items())
    fn = compilation.SharedJit(_Draws(model, objective, groups))
    t = time.perf_counter()
    blocks = [{name: _Moments() for name, _ in groups} for _ in range(num_blocks)]
    draw = 0
    for block in blocks:
        for _ in range(calls_per_block):
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(draw, draw + c))
            out = jax.device_get(fn(variables, xs, keys))
            for name, (mean, m2) in out.items():
                block[name].add(float(c), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
            draw += c
    seconds = time.perf_counter() - t

    summary, snr, snr_se, g_mean, g_sd = {}, {}, {}, {}, {}
    for name, _ in groups:
        total = _Moments()
        for block in blocks:
            total.add(block[name].n, block[name].mean, block[name].m2)
        used = ~((total.mean == 0) & (total.m2 == 0))
        full = _snr(total)
        loo = [_snr(total.without(block[name])) for block in blocks]
        per_param = np.where(used, full, np.nan)
        stacked = np.stack(loo)                                                     # [J, P]
        j = stacked.shape[0]
        with np.errstate(invalid="ignore"):
            per_param_se = np.sqrt((j - 1) / j * np.sum((stacked - stacked.mean(0)) ** 2, 0))
        s_full = _summaries(full[used]) if used.any() else {"mean": math.nan, "median": math.nan}
        s_loo = [_summaries(l[used]) for l in loo] if used.any() else []
        summary[name] = {
            "mean": s_full["mean"], "mean_stderr": _jackknife(s_full["mean"], [s["mean"] for s in s_loo]) if s_loo
            else math.nan,
            "median": s_full["median"], "median_stderr": _jackknife(s_full["median"], [s["median"] for s in s_loo])
            if s_loo else math.nan,
            "num_parameters": int(used.sum()), "num_unused": int((~used).sum()),
        }
        snr[name], snr_se[name] = per_param, np.where(used, per_param_se, np.nan)
        g_mean[name], g_sd[name] = np.asarray(total.mean), np.sqrt(total.m2 / (total.n - 1))
    return GradientSNR(groups=summary, snr=snr, snr_stderr=snr_se, gradient_mean=g_mean, gradient_sd=g_sd,
                       num_draws=draw, num_examples=b, seconds=seconds)


def snr_over_k(model: Any, variables: Any, xs: jax.Array, key: jax.Array, *,
               estimators: Sequence[str] = ("reparam", "stl", "dreg"), ks: Sequence[int] = (1, 4, 16, 64),
               num_draws: int = 1000, num_blocks: int = 10, progress=None) -> list[dict[str, Any]]:
    """:func:`gradient_snr` of IWAE_k's gradient for every ``estimator`` and k (the same draws'
    keys for all), as rows ``{"estimator", "k", "group", "mean", "mean_stderr", "median",
    "median_stderr", "num_parameters", "num_draws", "num_examples", "seconds"}``.
    ``progress(message)`` is called after each (estimator, k)."""
    rows = []
    for k in ks:
        for estimator in estimators:
            r = gradient_snr(model, variables, IWAE(IWAESettings(num_samples=int(k), estimator=estimator)), xs, key,
                             num_draws=num_draws, num_blocks=num_blocks)
            for group, s in r.groups.items():
                rows.append({"estimator": estimator, "k": int(k), "group": group, **s, "num_draws": r.num_draws,
                             "num_examples": r.num_examples, "seconds": r.seconds})
            if progress is not None:
                progress(f"SNR {estimator} k={k}: " + ", ".join(
                    f"{g} {s['mean']:.3g} ± {s['mean_stderr']:.2g}" for g, s in r.groups.items())
                         + f" ({r.seconds:.0f} s)")
    return rows
