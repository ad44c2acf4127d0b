"""Evaluation of a trained run on a held-out split, in nats (and bits/dim).

For a model with a density over z (a VAE):

* ``elbo``, ``reconstruction`` (E_q[log p(x|z)], one sample) and ``kl`` (analytic);
* ``iwae_k``: the importance-weighted bound with k samples from q(z|x).  Its value is also
  the importance-sampling estimate of log p(x) (``log_px``): biased low, converging to log p(x)
  as k grows (ELBO <= IWAE_k <= log p(x)).

For an autoencoder (point-mass q, no p(z)) only ``reconstruction`` = log p(x | z = f(x)) exists;
the ELBO, the KL and log p(x) are reported as undefined, with the reason.

Example ``i`` draws its noise from ``fold_in(key(seed), i)``: results do not depend on batch
sizes, which only bound memory.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

from vaegen import objectives as objectives_lib
from vaegen import train as train_lib

UNDEFINED_FOR_AE = {
    "elbo": "undefined: q(z|x) is a point mass, whose KL to any density p(z) is +inf",
    "kl": "undefined: the KL from a point mass to a density is +inf",
    "log_px": "undefined: the autoencoder has no p(z), hence no p(x) = E_p(z)[p(x|z)]",
}


def summarize(values: np.ndarray, num_dims: int | None) -> dict[str, float]:
    """Mean and standard error of the mean of per-example values; for log-likelihoods and
    bounds (``num_dims`` given) also bits/dim = -mean / (num_dims ln 2)."""
    values = np.asarray(values, np.float64)
    n = values.size
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    out = {"mean": mean, "stderr": stderr}
    if num_dims:
        out["bits_per_dim"] = -mean / (num_dims * math.log(2))
    return out


def evaluate(run, *, split: str = "test", num_samples: int | None = None, batch_size: int | None = None,
             seed: int = 0, max_examples: int = 0) -> dict[str, Any]:
    """Evaluates ``run`` (from :func:`vaegen.load`) on ``split``.

    Args:
      num_samples: k of IWAE_k / the importance-sampled log p(x) (default ``config.eval.num_samples``).
      batch_size: examples per vmapped chunk (memory only); default keeps k * chunk <= 50,000.
      seed: evaluation seed.
      max_examples: evaluate on the first n examples only (0 = all).
    Returns:
      A JSON-able dict: settings, and per metric ``{mean, stderr, bits_per_dim}`` in nats.
    """
    if not getattr(run.model, "has_latents", True):  # autoregressive: exact log p(x)
        from vaegen import autoregressive

        return autoregressive.evaluate(run, split=split, batch_size=batch_size, seed=seed, max_examples=max_examples)
    config = run.config
    k = int(num_samples or config.eval.num_samples)
    x_u8 = getattr(train_lib.load_data(config), split)
    if max_examples:
        x_u8 = x_u8[:max_examples]
    stored = train_lib.stored_split(config, x_u8, split)
    protocol = train_lib.split_protocol(config, split)
    num_dims = int(np.prod(run.event_shape))
    key = train_lib.purpose_key(seed, "evaluation")
    metrics: dict[str, Any] = {}
    result: dict[str, Any] = {
        "workdir": str(run.workdir), "epoch": run.epoch, "split": split, "num_examples": int(x_u8.shape[0]),
        "seed": seed, "protocol": protocol, "num_samples": k, "metrics": metrics,
    }
    if run.is_autoencoder or not run.has_prior:
        objective = objectives_lib.Autoencoder()
        terms = train_lib.make_evaluate(run.model, objective, protocol=protocol,
                                        batch_size=batch_size or 500)(run.variables, stored, key)
        metrics["reconstruction"] = summarize(jax.device_get(terms["reconstruction"]), num_dims)
        metrics["code_norm_sq"] = summarize(jax.device_get(terms["code_norm_sq"]), None)
        result["undefined"] = dict(UNDEFINED_FOR_AE)
        return result
    elbo = train_lib.make_evaluate(run.model, objectives_lib.ELBO(), protocol=protocol,
                                   batch_size=batch_size or 500)(run.variables, stored, jax.random.fold_in(key, 0))
    for name in ("elbo", "reconstruction", "kl"):
        metrics[name] = summarize(jax.device_get(elbo[name]), None if name == "kl" else num_dims)
    chunk = batch_size or max(1, min(500, 50_000 // k))
    iw = train_lib.make_evaluate(run.model, objectives_lib.IWAE(num_samples=k), protocol=protocol,
                                 batch_size=chunk)(run.variables, stored, jax.random.fold_in(key, 1))
    metrics[f"iwae_{k}"] = summarize(jax.device_get(iw["iwae"]), num_dims)
    metrics["log_px"] = dict(metrics[f"iwae_{k}"], estimator=f"importance sampling from q(z|x), k={k}")
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result."""
    rows = [f"{result['split']} split, {result['num_examples']} examples, epoch {result['epoch']} (nats per example)",
            f"{'metric':<18}{'mean':>12}{'stderr':>10}{'bits/dim':>10}"]
    for name, m in result["metrics"].items():
        bpd = f"{m['bits_per_dim']:>10.4f}" if "bits_per_dim" in m else f"{'':>10}"
        rows.append(f"{name:<18}{m['mean']:>12.3f}{m['stderr']:>10.3f}{bpd}")
    for name, why in result.get("undefined", {}).items():
        rows.append(f"{name:<18}{'--':>12}   {why}")
    return "\n".join(rows)


def write_json(path: str | os.PathLike, result: dict[str, Any]) -> pathlib.Path:
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path
