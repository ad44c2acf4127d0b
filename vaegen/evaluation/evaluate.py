"""Evaluation of a trained run on a held-out split, in nats (and bits/dim).

``evaluate(run, estimators=...)`` runs any of these estimators (``ESTIMATORS``) over the whole
split, vectorized and sharded over the local devices (:mod:`vaegen.estimators`):

=================  ==========================================================================
``elbo``           ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (analytic KL), with its
                   ``reconstruction`` and ``kl`` terms
``iwae``           IWAE-k bounds for each k in ``ks`` and for k = K, from the importance-sampling
                   pass (disjoint groups of k of the K samples)
``is``             log p(x) by importance sampling with K samples from q(z|x) (or the prior):
                   ``log_px``, biased low, converging to log p(x) as K grows; ``is_ess``
``ais``            log p(x) by annealed importance sampling with HMC (``log_px_ais``): a
                   stochastic lower bound, tighter than IS for the same budget
``bdmc``           forward and reverse AIS on data simulated from the model: a lower and an
                   upper bound on their log p(x) and the gap that says how far AIS can be trusted
``diagnostics``    KL per unit, active units, rate and distortion, I_q(x; z), posterior collapse
                   (:mod:`vaegen.diagnostics`)
=================  ==========================================================================

For any q: ELBO <= IWAE_k <= IWAE_{k+1} <= log p(x).  For an autoencoder (point-mass q, no p(z))
what exists is computed -- the reconstruction log p(x | z = f(x)) and the diagnostics of the
codes -- and everything else is listed under ``undefined`` with the reason.

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
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vaegen.config import loading as config_lib
from vaegen.data import datasets as data_lib
from vaegen.estimators import diagnostics as diagnostics_lib
from vaegen.estimators import importance as estimators_lib
from vaegen.objectives import bounds as objectives_lib
from vaegen.train import trainer as train_lib

UNDEFINED_FOR_AE = {
    "elbo": "undefined: q(z|x) is a point mass, whose KL to any density p(z) is +inf",
    "kl": "undefined: the KL from a point mass to a density is +inf",
    "log_px": "undefined: the autoencoder has no p(z), hence no p(x) = E_p(z)[p(x|z)]",
}
NO_PRIOR = "undefined: the model has no prior p(z), hence no p(x) = E_p(z)[p(x|z)] to bound or estimate"
POINT_MASS_PROPOSAL = ("undefined: q(z|x) is a point mass, not a proposal with a density "
                       "(use --is-proposal prior, or AIS from the prior)")

ESTIMATORS = ("elbo", "iwae", "is", "ais", "bdmc", "diagnostics")
# Each estimator draws from its own stream: fold_in(purpose_key(seed, "evaluation"), id).
_STREAMS = {"elbo": 0, "is": 1, "ais": 2, "bdmc": 3, "diagnostics": 4}


def parse_estimators(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"elbo,is"`` or ``["elbo", "is"]`` (or ``"all"``) -> the estimators in canonical order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return ESTIMATORS
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise config_lib.ConfigError(
            f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ESTIMATORS)} or 'all'")
    return tuple(e for e in ESTIMATORS if e in names)


def ais_from_config(cfg: Any, **overrides: Any) -> estimators_lib.AIS:
    """The :class:`vaegen.estimators.AIS` settings of ``config.eval.ais``, with overrides (None = keep)."""
    fields = {f.name for f in dataclasses.fields(estimators_lib.AIS)}
    kwargs = {k: cfg[k] for k in fields if k in cfg}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return estimators_lib.AIS(**kwargs)


def summarize(values: np.ndarray, num_dims: int | None) -> dict[str, float]:
    """Mean and standard error of the mean of per-example values; for log-likelihoods and
    bounds (``num_dims`` given) also bits/dim = -mean / (num_dims ln 2); ``n`` the number of examples."""
    values = np.asarray(values, np.float64)
    n = values.size
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    out = {"mean": mean, "stderr": stderr}
    if num_dims:
        out["bits_per_dim"] = -mean / (num_dims * math.log(2))
    out["n"] = int(n)
    return out


def bits_per_dim_definition(likelihood: str, event_shape) -> str:
    """What the ``bits_per_dim`` of a model with this likelihood measures: -log2 p(x) / D with
    D = H*W*C the dimensions of one observation."""
    shape = tuple(int(s) for s in event_shape)
    dims = f"D = {math.prod(shape)} = {' x '.join(map(str, shape))}"
    if likelihood == "discretized_logistic":
        return f"-log2 p(x) / D over the {dims} sub-pixels of the 8-bit image (p(x) a probability over 256 levels each)"
    if likelihood == "bernoulli":
        return f"-log2 p(x) / D over the {dims} binary pixels"
    return (f"-log2 p(x) / D, {dims}, with p(x) a density over [0, 1]^D: not a code length, and not "
            "comparable with the bits/dim of discrete 8-bit data")


@dataclasses.dataclass(frozen=True)
class _ObjectiveTerms:
    """One example's terms of a per-example objective (for :func:`vaegen.estimators.map_examples`)."""

    model: Any
    objective: Any

    def __call__(self, variables, x, key):
        return self.objective(self.model, variables, x, key)


def objective_terms(model, variables, objective, xs, key, *, batch_size=None, devices=None, progress=False):
    """Per-example terms ``[N]`` of ``objective`` (e.g. :class:`vaegen.ELBO`) over ``xs``, example i
    keyed by ``fold_in(key, i)``."""
    fn = jax.tree_util.Partial(_ObjectiveTerms(model, objective), variables)
    samples = int(getattr(objective, "num_samples", 1))
    b = int(batch_size or max(1, estimators_lib.default_rows() // (8 * samples)))
    return estimators_lib.map_examples(fn, jnp.asarray(xs), key, batch_size=b, devices=devices, progress=progress,
                                       desc=getattr(objective, "bound_name", "objective"))


def evaluate(run, *, split: str = "test", num_samples: int | None = None, batch_size: int | None = None,
             seed: int = 0, max_examples: int = 0, estimators: str | Iterable[str] | None = None,
             ks: Iterable[int] | None = None, chunk_size: int | None = None, is_proposal: str | None = None,
             elbo_samples: int | None = None, ais: estimators_lib.AIS | dict | None = None,
             ais_start: str | None = None, ais_examples: int | None = None, bdmc_examples: int | None = None,
             mi_samples: int | None = None, devices=None, progress: bool = False,
             per_example: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Evaluates ``run`` (from :func:`vaegen.load`) on ``split``.

    Every setting left ``None`` comes from ``run.config.eval`` (see ``configs/default.py``).

    Args:
      num_samples: K, importance samples for ``is`` / ``iwae`` (default ``eval.num_samples``).
      batch_size: examples vmapped together per device (memory only; default: per estimator,
        from :func:`vaegen.estimators.default_rows`).
      seed: evaluation seed.
      max_examples: evaluate on the first n examples only (0 = all).
      estimators: names from ``ESTIMATORS`` (a list or a comma-separated string, or "all").
      ks: the k of the IWAE-k bounds (each <= K; default ``eval.ks``, those above K skipped).
      chunk_size: importance samples drawn at once per example (memory only).
      is_proposal: ``posterior`` (q(z|x)) or ``prior``.
      elbo_samples: samples of z ~ q(z|x) for the ELBO's reconstruction term.
      ais: :class:`vaegen.estimators.AIS` settings, or a dict of overrides of ``eval.ais``.
      ais_start: ``prior`` or ``posterior`` (q(z|x)): pi_0 of AIS and BDMC.
      ais_examples: run AIS on the first n examples only (0 = all of them).
      bdmc_examples: examples (x, z) simulated from the model for BDMC.
      mi_samples: z ~ q(z|x) per example for I_q(x; z).
      devices: devices to shard examples over (default: all local devices).
      progress: show progress bars.
      per_example: a dict to receive the per-example values behind each metric (float64 arrays
        ``[N]`` in nats, ``N`` the examples the metric was computed on: the first
        ``ais_examples`` for ``log_px_ais``), keyed like the metrics; for paired comparisons
        of two models on the same examples (:func:`paired_difference`, :func:`write_per_example`).
        BDMC's bounds are over simulated data, not the split's examples, and are not included.
    Returns:
      A JSON-able dict: settings, and per metric ``{mean, stderr, bits_per_dim}`` in nats.
    """
    if not getattr(run.model, "has_latents", True):  # autoregressive: exact log p(x)
        from vaegen.model import autoregressive as autoregressive

        return autoregressive.evaluate(run, split=split, batch_size=batch_size, seed=seed, max_examples=max_examples,
                                       per_example=per_example)
    config = run.config
    k = int(num_samples or config.eval.num_samples)
    x_u8 = getattr(train_lib.load_data(config), split)
    if max_examples:
        x_u8 = x_u8[:max_examples]
    ev = config.eval
    names = parse_estimators(estimators if estimators is not None else ev.estimators)
    if k < 1:
        raise config_lib.ConfigError(f"the number of importance samples must be >= 1, got {k}")
    ks = estimators_lib.check_ks(ks, k) if ks is not None else tuple(sorted({int(i) for i in ev.ks if 1 <= int(i) <= k}))
    is_proposal = is_proposal or ev.is_proposal
    ais_start = ais_start or ev.ais.start
    if is_proposal not in estimators_lib.STARTS:
        raise config_lib.ConfigError(f"unknown IS proposal {is_proposal!r}; choose from {', '.join(estimators_lib.STARTS)}")
    if ais_start not in estimators_lib.STARTS:
        raise config_lib.ConfigError(f"unknown AIS start {ais_start!r}; choose from {', '.join(estimators_lib.STARTS)}")
    if not isinstance(ais, estimators_lib.AIS):
        ais = ais_from_config(ev.ais, **(ais or {}))
    ais_examples = int(ev.ais.max_examples if ais_examples is None else ais_examples)
    bdmc_examples = int(ev.ais.bdmc_examples if bdmc_examples is None else bdmc_examples)
    elbo_samples = int(elbo_samples or ev.elbo_samples)
    mi_samples = int(mi_samples or ev.mi_samples)
    for name, value in (("ais_examples", ais_examples), ("bdmc_examples", bdmc_examples)):
        if value < 0:
            raise config_lib.ConfigError(f"{name} must be >= 0, got {value}")
    for name, value in (("elbo_samples", elbo_samples), ("mi_samples", mi_samples)):
        if value < 1:
            raise config_lib.ConfigError(f"{name} must be >= 1, got {value}")

    protocol = train_lib.split_protocol(config, split)
    stored = train_lib.stored_split(config, x_u8, split)
    xs = data_lib.to_float(None, stored, protocol)                     # [N, *event] as the model sees it
    num_dims = int(np.prod(run.event_shape))
    root = train_lib.purpose_key(seed, "evaluation")
    stream = lambda name: jax.random.fold_in(root, _STREAMS[name])
    model, variables = run.model, run.variables
    kw = dict(batch_size=batch_size, devices=devices, progress=progress)
    point_mass, has_prior = run.is_autoencoder, run.has_prior

    metrics: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    timings: dict[str, float] = {}
    values = per_example if per_example is not None else {}

    def record(name, v, dims, **extra):
        v = np.asarray(v, np.float64)
        values[name] = v
        metrics[name] = dict(summarize(v, dims), **extra)

    result: dict[str, Any] = {
        "workdir": str(run.workdir), "epoch": run.epoch, "split": split, "num_examples": int(x_u8.shape[0]),
        "seed": seed, "protocol": protocol, "num_samples": k, "estimators": list(names),
        "bits_per_dim_definition": bits_per_dim_definition(config.model.likelihood, run.event_shape),
        "settings": {
            "num_samples": k, "ks": list(ks), "chunk_size": chunk_size, "batch_size": batch_size,
            "is_proposal": is_proposal, "elbo_samples": elbo_samples, "mi_samples": mi_samples,
            "ais": {**dataclasses.asdict(ais), "start": ais_start, "max_examples": ais_examples,
                    "bdmc_examples": bdmc_examples},
            "active_unit_threshold": float(ev.active_unit_threshold),
            "collapse_threshold": float(ev.collapse_threshold),
        },
        "devices": [str(d) for d in (devices or jax.local_devices())],
        "metrics": metrics,
    }

    def timed(name, f):
        t = time.perf_counter()
        out = jax.block_until_ready(f())
        timings[name] = time.perf_counter() - t
        return out

    if "elbo" in names:
        if point_mass or not has_prior:
            terms = timed("elbo", lambda: objective_terms(model, variables, objectives_lib.Autoencoder(), xs,
                                                          stream("elbo"), **kw))
            record("reconstruction", jax.device_get(terms["reconstruction"]), num_dims)
            record("code_norm_sq", jax.device_get(terms["code_norm_sq"]), None)
            undefined["elbo"] = UNDEFINED_FOR_AE["elbo"] if point_mass else NO_PRIOR
            undefined["kl"] = UNDEFINED_FOR_AE["kl"] if point_mass else NO_PRIOR
        else:
            terms = timed("elbo", lambda: objective_terms(
                model, variables, objectives_lib.ELBO(num_samples=elbo_samples,
                                                      analytic_kl=bool(config.objective.analytic_kl)),
                xs, stream("elbo"), **kw))
            for name in ("elbo", "reconstruction", "kl"):
                record(name, jax.device_get(terms[name]), None if name == "kl" else num_dims)

    if "iwae" in names or "is" in names:
        reason = (NO_PRIOR if not has_prior else
                  POINT_MASS_PROPOSAL if point_mass and is_proposal == "posterior" else None)
        if reason:
            if "iwae" in names:
                undefined["iwae"] = reason
            if "is" in names:
                undefined["log_px"] = UNDEFINED_FOR_AE["log_px"] if not has_prior else reason
        else:
            log_joint, proposal = estimators_lib.model_functions(model, variables, proposal=is_proposal)
            iw_ks = tuple(sorted(set(ks) | {k})) if "iwae" in names else ()
            est = timed("is", lambda: estimators_lib.importance_sampling(
                log_joint, proposal, xs, stream("is"), num_samples=k, ks=iw_ks, chunk_size=chunk_size, **kw))
            est = jax.device_get(est)
            for i in iw_ks:
                record(f"iwae_{i}", est[f"iwae_{i}"], num_dims)
            if "is" in names:
                record("log_px", est["log_px"], num_dims,
                       estimator=f"importance sampling from {'q(z|x)' if is_proposal == 'posterior' else 'p(z)'}, k={k}")
                record("is_ess", est["ess"], None)

    if "ais" in names or "bdmc" in names:
        reason = (NO_PRIOR if not has_prior else
                  "undefined: AIS cannot start from a point-mass q(z|x) (use --ais-start prior)"
                  if point_mass and ais_start == "posterior" else None)
        if reason:
            for name in ("ais", "bdmc"):
                if name in names:
                    undefined["log_px_ais" if name == "ais" else "bdmc"] = reason
        else:
            log_joint, initial = estimators_lib.model_functions(model, variables, proposal=ais_start)
            if "ais" in names:
                xa = xs[:ais_examples] if ais_examples else xs
                est = jax.device_get(timed("ais", lambda: ais.forward(log_joint, initial, xa, stream("ais"), **kw)))
                record("log_px_ais", est["log_px"], num_dims,
                       estimator=f"AIS from {'p(z)' if ais_start == 'prior' else 'q(z|x)'}, "
                                 f"{ais.num_steps} steps, {ais.num_chains} chains, {ais.num_leapfrog} leapfrog steps")
                record("ais_acceptance", est["acceptance"], None)
                record("ais_step_size", est["step_size"], None)
            if "bdmc" in names and not bdmc_examples:
                undefined["bdmc"] = "not run: no simulated examples (bdmc_examples = 0)"
            if "bdmc" in names and bdmc_examples:
                sampler = estimators_lib.model_sampler(model, variables)
                est = jax.device_get(timed("bdmc", lambda: estimators_lib.bdmc(
                    ais, log_joint, initial, sampler, stream("bdmc"), num_examples=bdmc_examples, **kw)))
                for name in ("lower", "upper"):
                    metrics[f"bdmc_{name}"] = dict(summarize(est[name], num_dims),
                                                   estimator=f"{'forward' if name == 'lower' else 'reverse'} AIS "
                                                             "on data simulated from the model")
                metrics["bdmc_gap"] = summarize(est["gap"], None)

    if "diagnostics" in names:
        result["diagnostics"] = timed("diagnostics", lambda: diagnostics_lib.diagnose(
            model, variables, xs, stream("diagnostics"), num_samples=elbo_samples, mi_samples=mi_samples,
            active_unit_threshold=float(ev.active_unit_threshold), collapse_threshold=float(ev.collapse_threshold),
            **kw))
    if undefined:
        result["undefined"] = undefined
    result["timings"] = timings
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result."""
    rows = [f"{result['split']} split, {result['num_examples']} examples, epoch {result['epoch']} (nats per example)"]
    if "bits_per_dim_definition" in result:
        rows.append(f"bits/dim: {result['bits_per_dim_definition']}")
    rows.append(f"{'metric':<18}{'mean':>12}{'stderr':>10}{'bits/dim':>10}{'n':>8}")
    for name, m in result["metrics"].items():
        bpd = f"{m['bits_per_dim']:>10.4f}" if "bits_per_dim" in m else f"{'':>10}"
        n = f"{m['n']:>8d}" if "n" in m else f"{'':>8}"
        rows.append(f"{name:<18}{m['mean']:>12.3f}{m['stderr']:>10.3f}{bpd}{n}")
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


def write_per_example(path: str | os.PathLike, per_example: dict[str, np.ndarray], result: dict[str, Any]) -> pathlib.Path:
    """Writes :func:`evaluate`'s per-example values as ``.npz`` (one float64 array per metric,
    ``example_index`` [N], and ``evaluation``: the evaluation's JSON without its metrics), atomically."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"per-example values are written as .npz; got {str(path)!r}")
    meta = {k: v for k, v in result.items() if k not in ("metrics", "diagnostics")}
    arrays = {k: np.asarray(v, np.float64) for k, v in per_example.items()}
    n = max((v.size for v in arrays.values()), default=0)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, example_index=np.arange(n), evaluation=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, result: dict[str, Any]) -> pathlib.Path:
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path
