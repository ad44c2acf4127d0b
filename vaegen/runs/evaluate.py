"""Evaluation of a trained run on a held-out split, in nats (and bits/dim).

``evaluate(run, settings)`` runs the estimators ``settings.estimators`` names (registered in
:data:`vaegen.registry.ESTIMATORS`; ``vaegen config --components estimator`` lists them) over the
whole split, vectorized and sharded over the local devices (:mod:`vaegen.estimators`):

=================  ==========================================================================
``elbo``           ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (analytic KL), with its
                   ``reconstruction`` and ``kl`` terms: a lower bound (unbiased estimate of it)
``iwae``           IWAE-k bounds for each k in ``ks`` and for k = K, from the importance-sampling
                   pass (disjoint groups of k of the K samples): unbiased estimates of lower bounds
``is``             log p(x) by importance sampling with K samples from q(z|x) (or the prior):
                   ``log_px``, a stochastic lower bound converging to log p(x) as K grows; ``is_ess``
``ais``            log p(x) by annealed importance sampling with HMC (``log_px_ais``): a
                   stochastic lower bound, tighter than IS for the same budget
``bdmc``           forward and reverse AIS on data simulated from the model: a stochastic lower
                   and upper bound on their log p(x); the gap says how far AIS can be trusted
``diagnostics``    KL per unit, active units, rate and distortion, I_q(x; z), posterior collapse
                   (:mod:`vaegen.estimators.diagnostics`)
=================  ==========================================================================

For any q: ELBO <= IWAE_k <= IWAE_{k+1} <= log p(x).  For an autoencoder (point-mass q, no p(z))
what exists is computed -- the reconstruction log p(x | z = f(x)) and the diagnostics of the
codes -- and everything else is listed under ``undefined`` with the reason.  A model with an
exact log p(x) (autoregressive) reports it exactly.

Example ``i`` draws its noise from ``fold_in(key, i)``, with ``key`` derived from the seed and
the estimator: results do not depend on batch or chunk sizes or on the number of devices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import compilation as compilation_lib
from vaegen import files as files_lib
from vaegen import sharding as sharding_lib
from vaegen.blocks import discrete as discrete_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.data import binarization
from vaegen.data import images as images_lib
from vaegen.data import splits as splits_lib
from vaegen.estimators import ais as ais_lib
from vaegen.estimators import diagnostics as diagnostics_lib
from vaegen.estimators import importance as importance_lib
from vaegen.spec.eval import EvalSettings, parse_estimators
from vaegen.errors import ArgumentError
from vaegen.runs.questions import check_int
from vaegen.runs.run import Run
from vaegen.objectives.autoencoder import Autoencoder
from vaegen.objectives.bounds import ELBO, ELBOSettings, bits_per_dim, objective_terms
from vaegen.objectives.exact import ExactLogLikelihood
from vaegen.registry import ESTIMATORS, NoSettings
from vaegen.train.rng import purpose_key

UNDEFINED_FOR_AE = {
    "elbo": "undefined: q(z|x) is a point mass, whose KL to any density p(z) is +inf",
    "kl": "undefined: the KL from a point mass to a density is +inf",
    "log_px": "undefined: the autoencoder has no p(z), hence no p(x) = E_p(z)[p(x|z)]",
}
NO_PRIOR = "undefined: the model has no prior p(z), hence no p(x) = E_p(z)[p(x|z)] to bound or estimate"
AROUND_CODE = {
    "elbo": ("the ELBO with the proposal around the code r(z|x) as q (a lower bound on log p(x)); the autoencoder's "
             "own q(z|x) is a point mass, whose ELBO is -inf"),
    "reconstruction": "E_r[log p(x|z)] under the proposal around the code r(z|x), not at z = f(x)",
    "kl": "KL(r(z|x) || p(z)) of the proposal around the code (Monte Carlo where not analytic)",
}
"""What the ELBO's terms are for an autoencoder made generative (its q replaced by the proposal around the code)."""

def summarize(values: np.ndarray, num_dims: int | None) -> dict[str, float]:
    """Mean and standard error of the mean of per-example values; for log-likelihoods and
    bounds (``num_dims`` given) also bits/dim = -mean / (num_dims ln 2); ``n`` the number of examples."""
    values = np.asarray(values, np.float64)
    n = values.size
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    out = {"mean": mean, "stderr": stderr}
    if num_dims:
        out["bits_per_dim"] = bits_per_dim(mean, num_dims)
    out["n"] = int(n)
    return out


def bits_per_dim_definition(support: str, event_shape) -> str:
    """What the ``bits_per_dim`` of a model whose likelihood has this support (``binary``,
    ``8bit``, ``real``) measures: -log2 p(x) / D with D = H*W*C the dimensions of one observation."""
    shape = tuple(int(s) for s in event_shape)
    dims = f"D = {math.prod(shape)} = {' x '.join(map(str, shape))}"
    if support == "8bit":
        return f"-log2 p(x) / D over the {dims} sub-pixels of the 8-bit image (p(x) a probability over 256 levels each)"
    if support == "binary":
        return f"-log2 p(x) / D over the {dims} binary pixels"
    return (f"-log2 p(x) / D, {dims}, with p(x) a density over [0, 1]^D: not a code length, and not "
            "comparable with the bits/dim of discrete 8-bit data")


# --- the estimators, registered --------------------------------------------------------------------

@dataclasses.dataclass
class EstimatorContext:
    """What an estimator gets: the run, the data as the model sees it and the settings, and
    where to put its results (``record`` a per-example metric, ``undefined`` what does not
    exist and why)."""

    run: Run
    xs: jax.Array
    settings: EvalSettings
    ks: tuple[int, ...]
    names: tuple[str, ...]
    root: jax.Array
    kw: dict[str, Any]
    result: dict[str, Any]
    metrics: dict[str, Any]
    undefined: dict[str, str]
    timings: dict[str, float]
    values: dict[str, np.ndarray]
    num_dims: int
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def stream(self, estimator: str) -> jax.Array:
        """The estimator's own random stream: fold_in(purpose_key(seed, "evaluation"), stream id)."""
        return jax.random.fold_in(self.root, ESTIMATORS.get(estimator).trait("stream"))

    def record(self, name: str, values: Any, dims: int | None, **extra: Any) -> None:
        v = np.asarray(values, np.float64)
        self.values[name] = v
        self.metrics[name] = dict(summarize(v, dims), **extra)

    def timed(self, name: str, f: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = jax.block_until_ready(f())
        self.timings[name] = time.perf_counter() - t
        return out


@ESTIMATORS.register("elbo", traits={"order": 0, "stream": 0, "reports": "lower bound"})
def _elbo(settings: NoSettings, ctx: EstimatorContext) -> None:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) and its terms (an AE: log p(x | z = f(x)) only)."""
    run, s = ctx.run, ctx.settings
    if run.is_autoencoder or not run.has_prior:
        terms = ctx.timed("elbo", lambda: objective_terms(run.model, run.variables, Autoencoder(), ctx.xs,
                                                          ctx.stream("elbo"), **ctx.kw))
        ctx.record("reconstruction", jax.device_get(terms["reconstruction"]), ctx.num_dims)
        ctx.record("code_norm_sq", jax.device_get(terms["code_norm_sq"]), None)
        ctx.undefined["elbo"] = UNDEFINED_FOR_AE["elbo"] if run.is_autoencoder else NO_PRIOR
        ctx.undefined["kl"] = UNDEFINED_FOR_AE["kl"] if run.is_autoencoder else NO_PRIOR
        return
    analytic_kl = bool(getattr(run.spec.objective.settings, "analytic_kl", True))
    terms = ctx.timed("elbo", lambda: objective_terms(
        run.model, run.variables, ELBO(ELBOSettings(num_samples=s.elbo_samples, analytic_kl=analytic_kl)), ctx.xs,
        ctx.stream("elbo"), **ctx.kw))
    around_code = isinstance(run.model.posterior, posteriors_lib.CodeProposal)
    for name in ("elbo", "reconstruction", "kl"):
        extra = {"meaning": AROUND_CODE[name]} if around_code else {}
        ctx.record(name, jax.device_get(terms[name]), None if name == "kl" else ctx.num_dims, **extra)


def _importance_pass(ctx: EstimatorContext) -> tuple[dict[str, Any] | None, str | None]:
    """The one importance-sampling pass behind ``iwae`` and ``is`` (run once), or the reason it
    does not exist."""
    if "is" not in ctx.cache:
        run, s = ctx.run, ctx.settings
        reason = NO_PRIOR if not run.has_prior else None
        est = None
        if reason is None:
            model, variables = run.model, run.variables
            if run.is_autoencoder and s.is_proposal == "posterior":  # a WAE, an AAE: p(z) and a point-mass q
                model, variables = run.with_code_proposal(batch_size=ctx.kw.get("batch_size"))
            log_joint, proposal = importance_lib.model_functions(model, variables, proposal=s.is_proposal)
            k = s.num_samples
            iw_ks = tuple(sorted(set(ctx.ks) | {k})) if "iwae" in ctx.names else ()
            est = jax.device_get(ctx.timed("is", lambda: importance_lib.importance_sampling(
                log_joint, proposal, ctx.xs, ctx.stream("is"), num_samples=k, ks=iw_ks,
                chunk_size=s.chunk_size or None, **ctx.kw)))
            est["iw_ks"] = iw_ks
        ctx.cache["is"] = (est, reason)
    return ctx.cache["is"]


@ESTIMATORS.register("iwae", traits={"order": 1, "stream": 1, "reports": "lower bounds"})
def _iwae(settings: NoSettings, ctx: EstimatorContext) -> None:
    """IWAE_k for every k of eval.ks and k = K, from the importance-sampling pass."""
    est, reason = _importance_pass(ctx)
    if reason:
        ctx.undefined["iwae"] = reason
        return
    for i in est["iw_ks"]:
        ctx.record(f"iwae_{i}", est[f"iwae_{i}"], ctx.num_dims)


@ESTIMATORS.register("is", traits={"order": 2, "stream": 1, "reports": "stochastic lower bound"})
def _is(settings: NoSettings, ctx: EstimatorContext) -> None:
    """log p(x) by importance sampling with K samples from q(z|x) (or p(z))."""
    est, reason = _importance_pass(ctx)
    if reason:
        ctx.undefined["log_px"] = UNDEFINED_FOR_AE["log_px"] if not ctx.run.has_prior else reason
        return
    s = ctx.settings
    around_code = ctx.run.is_autoencoder or isinstance(getattr(ctx.run.model, "posterior", None),
                                                       posteriors_lib.CodeProposal)
    source = ("p(z)" if s.is_proposal == "prior" else
              "the scale mixture of Gaussians around the code f(x) (its q(z|x) is a point mass)" if around_code
              else "q(z|x)")
    ctx.record("log_px", est["log_px"], ctx.num_dims, estimator=f"importance sampling from {source}, k={s.num_samples}",
               kind="stochastic lower bound")
    ctx.record("is_ess", est["ess"], None)


def _ais_functions(ctx: EstimatorContext, what: str):
    run, start = ctx.run, ctx.settings.ais.start
    reason = (NO_PRIOR if not run.has_prior else
              "undefined: AIS cannot start from a point-mass q(z|x) (use --ais-start prior)"
              if run.is_autoencoder and start == "posterior" else
              f"undefined: {discrete_lib.NO_HMC}" if run.spec.model.prior.trait("discrete") else None)
    if reason:
        ctx.undefined[what] = reason
        return None
    return importance_lib.model_functions(run.model, run.variables, proposal=start)


@ESTIMATORS.register("ais", traits={"order": 3, "stream": 2, "reports": "stochastic lower bound"})
def _ais(settings: NoSettings, ctx: EstimatorContext) -> None:
    """log p(x) by annealed importance sampling with HMC from p(z) (or q(z|x))."""
    fns = _ais_functions(ctx, "log_px_ais")
    if fns is None:
        return
    s = ctx.settings
    xa = ctx.xs[:s.ais_examples] if s.ais_examples else ctx.xs
    est = jax.device_get(ctx.timed("ais", lambda: ais_lib.AIS(s.ais).forward(*fns, xa, ctx.stream("ais"), **ctx.kw)))
    ctx.record("log_px_ais", est["log_px"], ctx.num_dims,
               estimator=f"AIS from {'p(z)' if s.ais.start == 'prior' else 'q(z|x)'}, {s.ais.num_steps} steps, "
                         f"{s.ais.num_chains} chains, {s.ais.num_leapfrog} leapfrog steps")
    ctx.record("ais_acceptance", est["acceptance"], None)
    ctx.record("ais_step_size", est["step_size"], None)


@ESTIMATORS.register("bdmc", traits={"order": 4, "stream": 3, "reports": "stochastic lower and upper bounds"})
def _bdmc(settings: NoSettings, ctx: EstimatorContext) -> None:
    """Forward and reverse AIS on data simulated from the model: bounds on their log p(x) and the gap."""
    fns = _ais_functions(ctx, "bdmc")
    if fns is None:
        return
    s = ctx.settings
    if not s.bdmc_examples:
        ctx.undefined["bdmc"] = "not run: no simulated examples (bdmc_examples = 0)"
        return
    sampler = importance_lib.model_sampler(ctx.run.model, ctx.run.variables)
    est = jax.device_get(ctx.timed("bdmc", lambda: ais_lib.bdmc(ais_lib.AIS(s.ais), *fns, sampler, ctx.stream("bdmc"),
                                                                num_examples=s.bdmc_examples, **ctx.kw)))
    for name in ("lower", "upper"):
        ctx.metrics[f"bdmc_{name}"] = dict(summarize(est[name], ctx.num_dims),
                                           estimator=f"{'forward' if name == 'lower' else 'reverse'} AIS "
                                                     "on data simulated from the model")
    ctx.metrics["bdmc_gap"] = summarize(est["gap"], None)


@ESTIMATORS.register("diagnostics", traits={"order": 5, "stream": 4, "reports": "diagnostics"})
def _diagnostics(settings: NoSettings, ctx: EstimatorContext) -> None:
    """KL per unit, active units, rate and distortion, I_q(x; z), posterior collapse."""
    run, s = ctx.run, ctx.settings
    ctx.result["diagnostics"] = ctx.timed("diagnostics", lambda: diagnostics_lib.diagnose(
        run.model, run.variables, ctx.xs, ctx.stream("diagnostics"), num_samples=s.elbo_samples,
        mi_samples=s.mi_samples, active_unit_threshold=s.active_unit_threshold,
        collapse_threshold=s.collapse_threshold, **ctx.kw))


# --- evaluate ----------------------------------------------------------------------------------------

def evaluate(run: Run, settings: EvalSettings | None = None, *, split: str = "test", seed: int = 0,
             max_examples: int = 0, batch_size: int | None = None, devices=None, progress: bool = False,
             per_example: dict[str, np.ndarray] | None = None,
             images: images_lib.UserImages | None = None) -> dict[str, Any]:
    """Evaluates ``run`` (from :func:`vaegen.load`) on ``split``, or on ``images``.

    Args:
      settings: the estimators and their settings (:class:`vaegen.spec.eval.EvalSettings`);
        default the run's own ``eval`` section.  Change some with ``dataclasses.replace``, e.g.
        ``replace(run.spec.eval, num_samples=5000, estimators="is,ais")``.
      split: ``test`` or ``validation``.
      seed: evaluation seed.
      max_examples: evaluate on the first n examples only (0 = all).
      batch_size: examples vmapped together per device (memory only; default: per estimator,
        from :func:`vaegen.sharding.default_rows`).
      devices: devices to shard examples over (default: all local devices).
      progress: show progress bars.
      per_example: a dict to receive the per-example values behind each metric (float64 arrays
        ``[N]`` in nats, ``N`` the examples the metric was computed on: the first
        ``ais_examples`` for ``log_px_ais``), keyed like the metrics; for paired comparisons
        of two models on the same examples (:func:`paired_difference`, :func:`write_per_example`).
        BDMC's bounds are over simulated data, not the split's examples, and are not included.
      images: images of the user's own (:func:`vaegen.data.images.load_images`) instead of a split;
        the result records their source and binarization under ``images``.
    Returns:
      A JSON-able dict: settings, and per metric ``{mean, stderr, bits_per_dim}`` in nats.
    """
    compilation_lib.enable()  # the persistent compilation cache (vaegen.compilation)
    settings = run.spec.eval if settings is None else settings
    if not isinstance(settings, EvalSettings):
        raise TypeError(f"settings must be an EvalSettings (e.g. dataclasses.replace(run.spec.eval, ...)), "
                        f"got {type(settings).__name__}")
    if images is None and split not in ("test", "validation"):
        raise ArgumentError(f"vaegen.evaluate: argument split must be 'test' or 'validation', got {split!r}")
    check_int(seed, "vaegen.evaluate", "seed", "the evaluation's seed", minimum=0)
    check_int(max_examples, "vaegen.evaluate", "max_examples", "the first n examples; 0 = all", minimum=0)
    check_int(batch_size, "vaegen.evaluate", "batch_size", "examples per device call", optional=True)
    spec = run.spec
    if images is not None:
        split, protocol = "images", images.protocol
        x_u8 = stored = images.stored[:max_examples] if max_examples else images.stored
    else:
        x_u8 = getattr(run.data(), split)
        if max_examples:
            x_u8 = x_u8[:max_examples]
        protocol = splits_lib.split_protocol(spec.data, split)
        stored = splits_lib.stored_split(spec.data, x_u8, split)
    xs = binarization.to_float(None, jnp.asarray(stored), protocol)    # [N, *event] as the model sees it
    own = (run.recipe.build().evaluate(run, xs, purpose_key(seed, "evaluation"), k=settings.num_samples)
           if run.recipe is not None else None)
    if own is not None:    # a recipe that measures log p(x) its own way (over discrete codes, say)
        result = _evaluate_by_recipe(run, own, split=split, seed=seed, protocol=protocol, per_example=per_example,
                                     num_samples=settings.num_samples)
        if images is not None:
            result["images"] = images.info
        return result
    if spec.model.kind.trait("exact_log_likelihood"):
        result = _evaluate_exact(run, xs, split=split, seed=seed, protocol=protocol, batch_size=batch_size,
                                 per_example=per_example)
        if images is not None:
            result["images"] = images.info
        return result
    names = parse_estimators(settings.estimators)
    k = settings.num_samples
    ks = tuple(sorted({int(i) for i in settings.ks if 1 <= int(i) <= k}))
    metrics: dict[str, Any] = {}
    result: dict[str, Any] = {
        "workdir": str(run.workdir), "epoch": run.epoch, "split": split, "num_examples": int(x_u8.shape[0]),
        "seed": seed, "protocol": protocol, "num_samples": k, "estimators": list(names),
        "bits_per_dim_definition": bits_per_dim_definition(spec.model.likelihood.trait("support"),
                                                           run.event_shape),
        "settings": {**dataclasses.asdict(settings), "ks": list(ks), "batch_size": batch_size},
        "devices": [str(d) for d in (devices or jax.local_devices())],
        "metrics": metrics,
    }
    if images is not None:
        result["images"] = images.info
    ctx = EstimatorContext(run=run, xs=xs, settings=settings, ks=ks, names=names, root=purpose_key(seed, "evaluation"),
                  kw=dict(batch_size=batch_size, devices=devices, progress=progress), result=result, metrics=metrics,
                  undefined={}, timings={}, values=per_example if per_example is not None else {},
                  num_dims=int(np.prod(run.event_shape)))
    for name in names:
        estimator = ESTIMATORS.get(name)
        estimator.build(estimator.settings(), ctx)
    if ctx.undefined:
        result["undefined"] = ctx.undefined
    if run.recipe is not None:      # what the recipe makes of the run, as it declares
        recipe = run.recipe.build()
        result["recipe"] = run.recipe.name
        result["log_px_meaning"] = recipe.trait("log_px_meaning")
    result["timings"] = ctx.timings
    return result


@dataclasses.dataclass(frozen=True)
class _ExactTerms:
    model: Any

    def __call__(self, variables, x, key):
        return ExactLogLikelihood()(self.model, variables, x, key)


def _evaluate_exact(run: Run, xs: jax.Array, *, split: str, seed: int, protocol: str, batch_size: int | None,
                    per_example: dict | None) -> dict[str, Any]:
    """Exact log p(x) of a model that has it (autoregressive), in the format of :func:`evaluate`."""
    fn = jax.tree_util.Partial(_ExactTerms(run.model), run.variables)
    terms = sharding_lib.map_examples(fn, xs, purpose_key(seed, "evaluation"), batch_size=batch_size or 500)
    values = np.asarray(jax.device_get(terms["log_px"]), np.float64)
    if per_example is not None:
        per_example["log_px"] = values
    return {
        "workdir": str(run.workdir), "epoch": run.epoch, "split": split, "num_examples": int(xs.shape[0]),
        "seed": seed, "protocol": protocol, "num_samples": 0,
        "metrics": {"log_px": dict(summarize(values, int(np.prod(run.event_shape))),
                                   estimator="exact (autoregressive)")},
        "undefined": {"elbo": "no latent variable: log p(x) is exact, there is no bound",
                      "reconstruction": "no latent variable: nothing to reconstruct from"},
    }


BITS_PER_DIM_METRICS = ("log_px", "elbo", "reconstruction")
"""Per-example metrics that are log-likelihoods or bounds of one image (reported in bits/dim too)."""


def _evaluate_by_recipe(run: Run, est: Any, *, split: str, seed: int, protocol: str, per_example: dict | None,
                        num_samples: int) -> dict[str, Any]:
    """A recipe's own measurement (:meth:`vaegen.runs.recipes.Recipe.evaluate`) in the format of :func:`evaluate`."""
    dims = int(np.prod(run.event_shape))
    meanings = est.extra.get("meanings", {})
    metrics = {}
    for name, values in est.values.items():
        v = np.asarray(jax.device_get(values), np.float64)
        if per_example is not None:
            per_example[name] = v
        metrics[name] = dict(summarize(v, dims if name in BITS_PER_DIM_METRICS else None),
                             **({"estimator": est.estimator} if name == "log_px" else {}),
                             **({"meaning": meanings[name]} if name in meanings else {}))
    n = next(iter(est.values.values())).shape[0] if est.values else 0
    return {"workdir": str(run.workdir), "epoch": run.epoch, "split": split, "num_examples": int(n), "seed": seed,
            "protocol": protocol, "num_samples": int(num_samples), "recipe": run.recipe.name, "metrics": metrics,
            **{k: v for k, v in est.extra.items() if k != "meanings"}}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result."""
    source = (f"{result['images']['path']} (binarize: {result['images']['binarize']})" if "images" in result
              else f"{result['split']} split")
    rows = [f"{source}, {result['num_examples']} examples, epoch {result['epoch']} (nats per example)"]
    converted = [result.get("images", {}).get(k) for k in ("png_conversion", "colour")]
    if any(converted):
        rows.append("images converted: " + "; ".join(c for c in converted if c))
    if "bits_per_dim_definition" in result:
        rows.append(f"bits/dim: {result['bits_per_dim_definition']}")
    rows.append(f"{'metric':<18}{'mean':>12}{'stderr':>10}{'bits/dim':>10}{'n':>8}")
    for name, m in result["metrics"].items():
        bpd = f"{m['bits_per_dim']:>10.4f}" if "bits_per_dim" in m else f"{'':>10}"
        n = f"{m['n']:>8d}" if "n" in m else f"{'':>8}"
        kind = f"  {m['kind']}" if "kind" in m else ""  # what the number is, where an estimator says
        rows.append(f"{name:<18}{m['mean']:>12.3f}{m['stderr']:>10.3f}{bpd}{n}{kind}")
    meanings = {name: m["meaning"] for name, m in result["metrics"].items() if m.get("meaning")}
    if result.get("log_px_meaning") and "log_px" in result["metrics"]:
        meanings["log_px"] = f"{result['log_px_meaning']} ({result['metrics']['log_px'].get('estimator', '')})"
    for name, meaning in meanings.items():
        rows.append(f"  {name}: {meaning}")
    for name, why in result.get("undefined", {}).items():
        rows.append(f"{name:<18}{'--':>12}   {why}")
    diag = result.get("diagnostics")
    if diag:
        rows.append(f"diagnostics ({diag['num_examples']} examples, latent dim {diag['latent_dim']})")
        rows.append(f"  active units      {diag['active_units']} of {diag['latent_dim']} "
                    f"(Var_x E_q[z_d] > {diag['active_unit_threshold']})")
        if "rate" in diag:
            rows.append(f"  rate              {diag['rate']['mean']:.3f} nats (E_x KL(q(z|x) || p(z)))")
        rows.append(f"  distortion        {diag['distortion']['mean']:.3f} nats (-E_q log p(x|z))")
        if "mutual_information" in diag:
            rows.append(f"  I_q(x; z)         {diag['mutual_information']:.3f} nats "
                        f"(at most log N = {diag['mutual_information_upper_limit']:.2f})")
        if "marginal_kl" in diag:
            rows.append(f"  KL(q(z) || p(z))  {diag['marginal_kl']:.3f} nats")
        if "kl_per_dim" in diag:
            kls = sorted(diag["kl_per_dim"], reverse=True)
            shown = " ".join(f"{v:.2f}" for v in kls[:10]) + (" ..." if len(kls) > 10 else "")
            rows.append(f"  KL per unit       {shown} (sorted; {diag['collapsed_units']} below "
                        f"{diag['collapse_threshold']} nats)")
        if "posterior_collapse" in diag:
            rows.append(f"  posterior collapse {'YES' if diag['posterior_collapse'] else 'no'}: {diag['collapse_reason']}")
        for name, why in diag.get("undefined", {}).items():
            rows.append(f"  {name:<17} -- {why}")
    return "\n".join(rows)


def paired_difference(a: np.ndarray, b: np.ndarray, num_dims: int | None = None) -> dict[str, float]:
    """Mean and standard error of ``a - b`` for two models' per-example values on the same
    examples (e.g. the ``log_px`` of :func:`evaluate`'s ``per_example``), in nats.

    Pairing removes the variation between examples, which dominates each model's own standard
    error: two models 1 nat apart with standard errors of 1.7 nats each are told apart by a
    paired standard error of a few hundredths.  ``num_dims`` adds the difference in bits/dim.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two vectors over the same examples, got shapes {a.shape} and {b.shape}")
    out = summarize(a - b, None)
    if num_dims:
        out["bits_per_dim"] = out["mean"] / (num_dims * math.log(2))
    return out


@dataclasses.dataclass(frozen=True)
class Saved:
    """A result written to ``path``; ``kept``: where the result it replaced is kept (None if there
    was none, or it was the same)."""

    path: pathlib.Path
    kept: pathlib.Path | None = None

    def message(self) -> str:
        """``wrote PATH`` (``; the result it replaced is kept as PATH.1.EXT``): what the CLI prints."""
        return f"wrote {self.path}" + (f"; the result it replaced is kept as {self.kept}" if self.kept else "")


def _per_example_arrays(per_example: dict[str, np.ndarray], result: dict[str, Any]) -> dict[str, np.ndarray]:
    meta = {k: v for k, v in result.items() if k not in ("metrics", "diagnostics")}
    arrays = {k: np.asarray(v, np.float64) for k, v in per_example.items()}
    n = max((v.size for v in arrays.values()), default=0)
    return {"example_index": np.arange(n), "evaluation": np.array(json.dumps(meta)), **arrays}


def _check_npz(path: pathlib.Path) -> None:
    if path.suffix != ".npz":
        raise ValueError(f"per-example values are written as .npz; got {str(path)!r}")


_NOT_SAVED = "(the results were computed but not saved)"


def write_per_example(path: str | os.PathLike, per_example: dict[str, np.ndarray], result: dict[str, Any], *,
                      keep_previous: bool = False) -> pathlib.Path:
    """Writes :func:`evaluate`'s per-example values as ``.npz`` (one float64 array per metric,
    ``example_index`` [N], and ``evaluation``: the evaluation's JSON without its metrics), atomically
    (:func:`vaegen.files.write_atomic`; ``keep_previous``: as there)."""
    return save_per_example(path, per_example, result, keep_previous=keep_previous).path


def save_per_example(path: str | os.PathLike, per_example: dict[str, np.ndarray], result: dict[str, Any], *,
                     keep_previous: bool = True) -> Saved:
    """:func:`write_per_example`, keeping the file it replaces (``NAME.1.npz``, ...) by default."""
    path = pathlib.Path(path)
    _check_npz(path)
    kept = files_lib.write_npz(path, _per_example_arrays(per_example, result), kind="eval",
                               keep_previous=keep_previous, kept_note=_NOT_SAVED)
    return Saved(path, kept)


def write_json(path: str | os.PathLike, result: dict[str, Any], *, keep_previous: bool = False) -> pathlib.Path:
    """Writes an evaluation's result as JSON, atomically (:func:`vaegen.files.write_atomic`: a failed
    write, e.g. on a full disk, leaves the previous file as it was: :class:`vaegen.errors.DiskFullError`;
    ``keep_previous``: an existing file of other content is kept as ``NAME.1.json``, ...)."""
    return save_json(path, result, keep_previous=keep_previous).path


def save_json(path: str | os.PathLike, result: dict[str, Any], *, keep_previous: bool = True) -> Saved:
    """:func:`write_json`, keeping the result it replaces (``eval.1.json``, ``eval.2.json``, ...: every
    evaluation is kept, the latest under ``path``) by default."""
    path = pathlib.Path(path)
    kept = files_lib.write_json(path, result, kind="eval", keep_previous=keep_previous, kept_note=_NOT_SAVED)
    return Saved(path, kept)
