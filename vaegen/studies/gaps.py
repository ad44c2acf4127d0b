"""The gap decomposition of a trained model's inference (Cremer, Li and Duvenaud, 2018).

For an example x, a trained model p(x, z), its amortized q(z | x) and a variational family F::

    log p(x) - L[q]  =  (log p(x) - L[q*_F])  +  (L[q*_F] - L[q])
      inference gap       approximation gap       amortization gap

* L[q]      the ELBO of the amortized encoder's q(z | x);
* L[q*_F]   the ELBO of the best member of F for this x, found by per-example SVI
            (:func:`vaegen.inference.svi.fit_local`, started from the encoder's q by default);
* log p(x)  the best available estimate: importance sampling with k samples from each proposal
            at hand (the amortized q and every q*_F), of which the one with the highest mean is
            kept (each is a stochastic lower bound, so the highest is the tightest).  Because it is
            a lower bound, approximation gaps are, if anything, underestimated.

Every quantity is computed per example, on the test set and on a subset of the training set,
and summarised as a mean with the standard error of the mean; gaps are differences per example
(paired), so their standard errors are those of the differences.  :func:`write_tables` writes a
Markdown and a CSV table like Cremer et al.'s Table 2, and the full result as JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import files as files_lib
from vaegen import sharding as sharding_lib
from vaegen.data import binarization
from vaegen.data import splits as splits_lib
from vaegen.errors import InferenceError
from vaegen.estimators import importance as estimators_lib
from vaegen.inference import families as families_lib
from vaegen.inference import svi
from vaegen.objectives.bounds import elbo_of
from vaegen.train.rng import purpose_key

SPLITS = ("test", "train", "validation")
QUANTITIES = ("log_px", "elbo_star", "elbo_amortized", "approximation_gap", "amortization_gap", "inference_gap")
LABELS = {
    "log_px": "log p(x)",
    "elbo_star": "L[q*_F]",
    "elbo_amortized": "L[q]",
    "approximation_gap": "approximation gap",
    "amortization_gap": "amortization gap",
    "inference_gap": "inference gap",
}


# --- L[q] and log p(x) by importance sampling with the amortized q ------------------------------

@dataclasses.dataclass(frozen=True)
class _AmortizedELBO:
    """L[q] of one example: ``_AmortizedELBO(model, S)(variables, x, key) -> (elbo, mc_stderr)``
    (nats, scalars), ``S`` samples of z ~ q(z | x)."""

    model: Any
    elbo_samples: int

    def __call__(self, variables, x, key):
        t = elbo_of(self.model, variables, lambda m: m.q_z_given_x(x), x, key, self.elbo_samples)
        return t["elbo"], t["mc_stderr"]


def amortized_bounds(model, variables, xs: jax.Array, key: jax.Array, *, elbo_samples: int, log_px_samples: int,
                     chunk_size: int = 500, devices=None, progress: bool = False) -> dict[str, np.ndarray]:
    """L[q] (``elbo_samples`` samples, analytic KL where available; ``elbo_mc_stderr`` its Monte
    Carlo standard error) and the importance-sampled log p(x) with the amortized q as the
    proposal, per example ``[N]`` (nats).

    Both run sharded over ``devices`` (default: all local devices) through
    :func:`vaegen.sharding.map_examples`, up to ``chunk_size`` examples vmapped together per
    device; example i's ELBO uses ``fold_in(key, i)`` and its importance samples
    ``fold_in(fold_in(key, 2**20), i)``, whatever the chunk size and the number of devices.
    """
    n = int(xs.shape[0])
    chunk = max(1, min(int(chunk_size), n, max(1, 50_000 // min(int(log_px_samples), 1000))))
    xs = jnp.asarray(xs, jnp.float32)
    elbo_fn = jax.tree_util.Partial(_AmortizedELBO(model, int(elbo_samples)), variables)
    elbo, mc_stderr = sharding_lib.map_examples(elbo_fn, xs, key, batch_size=chunk, devices=devices,
                                                  progress=progress, desc="L[q]")
    log_joint, proposal = estimators_lib.model_functions(model, variables)
    log_px = estimators_lib.importance_sampling(log_joint, proposal, xs, jax.random.fold_in(key, 1 << 20),
                                                num_samples=int(log_px_samples), batch_size=chunk,
                                                devices=devices, progress=progress)["log_px"]
    return {"elbo": np.asarray(elbo, np.float64), "elbo_mc_stderr": np.asarray(mc_stderr, np.float64),
            "log_px": np.asarray(log_px, np.float64)}


# --- data ----------------------------------------------------------------------------------------

def split_data(run, split: str, max_examples: int = 0) -> np.ndarray:
    """A split as the model sees it (float32 ``[N, *event]``), with one fixed binarization.

    Held-out splits are binarized as in evaluation.  The training split is the run's own (the
    first ``max_examples`` of its seeded order): under a fixed protocol exactly the images it
    was trained on; under ``dynamic`` binarization one draw (seed ``binarization_seed + 3``) of
    the Bernoulli images it was trained on.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data = run.spec.data
    x_u8 = getattr(run.data(), split)
    if max_examples:
        x_u8 = x_u8[:max_examples]
    if split == "train" and data.binarization == "dynamic":
        protocol = binarization.eval_protocol("dynamic")
        stored = binarization.binarize_once(x_u8, protocol, data.binarization_seed + 3)
    else:
        protocol = splits_lib.split_protocol(data, split)
        stored = splits_lib.stored_split(data, x_u8, split)
    return np.asarray(binarization.to_float(None, stored, protocol))


# --- the decomposition -------------------------------------------------------------------------

def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and standard error of the mean of per-example values (nats)."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")}


@dataclasses.dataclass
class GapReport:
    """The decomposition for one run: ``rows`` (one per split and family, each quantity as
    ``{mean, stderr}`` in nats), the per-example arrays, the settings and the timings."""

    rows: list[dict[str, Any]]
    per_example: dict[str, dict[str, np.ndarray]]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": self.rows}


def compute_gaps(run, *, families: Sequence[str] = ("diag",), splits: Sequence[str] = ("test", "train"),
                 settings: svi.SVISettings = svi.SVISettings(), init: str = "amortized",
                 elbo_samples: int = 100, log_px_samples: int = 1000, max_examples: dict[str, int] | None = None,
                 chunk_size: int = 500, seed: int = 0, progress: bool = True,
                 data: dict[str, np.ndarray] | None = None, devices=None,
                 flow_options: dict[str, Any] | None = None) -> GapReport:
    """The gap decomposition of ``run`` (from :func:`vaegen.load`) for each family and split.

    Args:
      families: names of variational families F (``diag``, ``fullcov``, ``flow``).
      splits: any of ``test``, ``train``, ``validation``.
      settings: the per-example optimiser of q*_F.
      init: where it starts (``amortized`` or ``prior``).
      elbo_samples: samples of z for each reported ELBO (L[q] and L[q*_F], analytic KL where
        available).
      log_px_samples: k of every importance-sampled log p(x).
      max_examples: per split, the number of examples (0 or missing = all).
      data: per split, the observations to use instead of :func:`split_data` (float ``[N, *event]``).
      chunk_size: examples vmapped together per device (memory and speed, never results).
      devices: devices to shard the examples over (default: all local devices); the numbers do
        not depend on them.
      flow_options: the flow family's architecture for a model whose q(z|x) is not a flow
        (:meth:`vaegen.spec.gaps.GapsSettings.flow_options`; default the run's ``gaps`` section).
    """
    flow_options = run.spec.gaps.flow_options() if flow_options is None else flow_options
    if run.is_autoencoder or not run.has_prior:
        raise InferenceError(
            "the gap decomposition needs a model with a prior p(z) and a posterior with a density; "
            f"{run.workdir} holds an autoencoder (no p(z), point-mass q(z|x))")
    settings.validate()
    if init not in ("amortized", "prior"):
        raise InferenceError(f"unknown initialisation {init!r}; choose 'amortized' or 'prior'")
    for k, v in (("elbo_samples", elbo_samples), ("log_px_samples", log_px_samples), ("chunk_size", chunk_size)):
        if int(v) < 1:
            raise InferenceError(f"{k} must be >= 1, got {v}")
    for split in splits:
        if split not in SPLITS:
            raise InferenceError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    family_objs = {}
    for f in families:
        family = families_lib.make_family(f.strip(), run.model,
                                          **(flow_options if families_lib.resolve(f.strip()) is families_lib.FlowFamily
                                             else {}))
        family_objs[family.name] = family
    families = list(family_objs)
    devices = None if devices is None else list(devices)
    max_examples = dict(max_examples or {})
    key = purpose_key(seed, "evaluation")
    rows, per_example, timings = [], {}, {}
    for s_idx, split in enumerate(splits):
        xs = data[split] if data and split in data else split_data(run, split, int(max_examples.get(split, 0)))
        xs = jnp.asarray(xs, jnp.float32)
        n = int(xs.shape[0])
        if n < 2:
            raise InferenceError(f"the {split} split has {n} example(s); the gaps need at least 2")
        k_split = jax.random.fold_in(key, 100 + s_idx)
        t = time.perf_counter()
        amortized = amortized_bounds(run.model, run.variables, xs, jax.random.fold_in(k_split, 0),
                                     elbo_samples=elbo_samples, log_px_samples=log_px_samples, chunk_size=chunk_size,
                                     devices=devices, progress=progress)
        timings[f"{split}/amortized_seconds"] = time.perf_counter() - t
        arrays = {"elbo_amortized": amortized["elbo"], "elbo_amortized_mc_stderr": amortized["elbo_mc_stderr"],
                  "log_px/amortized": amortized["log_px"]}
        for f_idx, name in enumerate(families):
            fit = svi.fit_local(run.model, run.variables, xs, jax.random.fold_in(k_split, 1 + f_idx),
                                          family=family_objs[name], settings=settings, init=init,
                                          chunk_size=chunk_size, eval_samples=elbo_samples,
                                          log_px_samples=log_px_samples, keep_parameters=False,
                                          progress=progress, description=f"q*_{name} ({split})",
                                          devices=devices)
            timings[f"{split}/{name}_seconds"] = fit.seconds
            arrays[f"elbo_star/{name}"] = np.asarray(fit.elbo, np.float64)
            arrays[f"elbo_star_mc_stderr/{name}"] = np.asarray(fit.elbo_mc_stderr, np.float64)
            arrays[f"elbo_init/{name}"] = np.asarray(fit.elbo_init, np.float64)
            arrays[f"improved/{name}"] = np.asarray(fit.improved)
            arrays[f"log_px/{name}"] = np.asarray(fit.log_px, np.float64)
            arrays[f"trace/{name}"] = np.asarray(fit.trace, np.float64)
        proposals = ["amortized"] + families
        best = max(proposals, key=lambda p: float(np.mean(arrays[f"log_px/{p}"])))
        log_px = arrays[f"log_px/{best}"]
        arrays["log_px"] = log_px
        per_example[split] = arrays
        l_q = arrays["elbo_amortized"]
        for name in families:
            l_star = arrays[f"elbo_star/{name}"]
            values = {
                "log_px": log_px,
                "elbo_star": l_star,
                "elbo_amortized": l_q,
                "approximation_gap": log_px - l_star,
                "amortization_gap": l_star - l_q,
                "inference_gap": log_px - l_q,
            }
            row = {"split": split, "num_examples": n, "family": name, "log_px_proposal": best,
                   **{k: summarize(v) for k, v in values.items()},
                   "log_px_by_proposal": {p: summarize(arrays[f"log_px/{p}"]) for p in proposals},
                   "fraction_improved": float(np.mean(arrays[f"improved/{name}"]))}
            rows.append(row)
    settings_out = {
        "workdir": str(run.workdir), "epoch": run.epoch, "families": list(families), "splits": list(splits),
        "svi": dataclasses.asdict(settings), "init": init, "elbo_samples": elbo_samples,
        "log_px_samples": log_px_samples, "chunk_size": chunk_size, "seed": seed,
        "max_examples": max_examples, "timings_seconds": timings,
        "devices": [str(d) for d in (jax.local_devices() if devices is None else devices)],
    }
    return GapReport(rows=rows, per_example=per_example, settings=settings_out)


# --- tables ------------------------------------------------------------------------------------

def _pm(m: dict[str, float], digits: int = 2) -> str:
    return f"{m['mean']:.{digits}f} ± {m['stderr']:.{digits}f}"


def markdown_table(rows: Iterable[dict[str, Any]], *, extra_columns: Sequence[str] = ()) -> str:
    """A Markdown table: one row per (split, family), each quantity as mean ± standard error (nats)."""
    head = ["split", "N", "F", *extra_columns, *(LABELS[q] for q in QUANTITIES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---"] * len(extra_columns)
                                                           + ["---:"] * len(QUANTITIES)) + "|"]
    for r in rows:
        cells = [r["split"], str(r["num_examples"]), r["family"], *(str(r.get(c, "")) for c in extra_columns),
                 *(_pm(r[q]) for q in QUANTITIES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: Iterable[dict[str, Any]], *, extra_columns: Sequence[str] = ()) -> str:
    """The same table as CSV: ``<quantity>`` and ``<quantity>_stderr`` columns, nats."""
    buf = io.StringIO()
    fields = ["split", "num_examples", "family", *extra_columns, "log_px_proposal"]
    for q in QUANTITIES:
        fields += [q, f"{q}_stderr"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        out = {k: r.get(k, "") for k in ["split", "num_examples", "family", *extra_columns, "log_px_proposal"]}
        for q in QUANTITIES:
            out[q] = f"{r[q]['mean']:.6f}"
            out[f"{q}_stderr"] = f"{r[q]['stderr']:.6f}"
        w.writerow(out)
    return buf.getvalue()


def write_tables(report: GapReport, out_dir: str | os.PathLike, *, per_example: bool = True,
                 kept: list[pathlib.Path] | None = None) -> dict[str, pathlib.Path]:
    """Writes ``gaps.md``, ``gaps.csv``, ``gaps.json`` (and ``gaps_per_example.npz``) in ``out_dir``,
    each atomically (:func:`vaegen.files.write_atomic`).  A table that replaces an earlier one of
    other content keeps it as ``gaps.1.md``, ... (results are never replaced silently); with
    ``kept`` (a list) the kept paths are appended to it."""
    out = pathlib.Path(out_dir)
    s = report.settings
    svi = s["svi"]
    header = (f"Gap decomposition of {s['workdir']} (epoch {s['epoch']}), nats per example, mean ± standard error.  \n"
              f"q*_F: {svi['num_steps']} {svi['optimizer']} steps per example (lr {svi['learning_rate']}, "
              f"{svi['schedule']}, {svi['num_samples']} sample(s)/step) from the {s['init']} q; "
              f"ELBOs with {s['elbo_samples']} samples; log p(x): importance sampling, k = {s['log_px_samples']}, "
              "best proposal kept.\n\n")
    paths = {"md": out / "gaps.md", "csv": out / "gaps.csv", "json": out / "gaps.json"}
    written = [files_lib.write_atomic(paths["md"], header + markdown_table(report.rows) + "\n", kind="table",
                                      keep_previous=True),
               files_lib.write_atomic(paths["csv"], csv_table(report.rows), kind="table", keep_previous=True),
               files_lib.write_json(paths["json"], report.to_json(), kind="table", keep_previous=True)]
    if per_example:
        flat = {f"{split}/{k}": v for split, arrays in report.per_example.items() for k, v in arrays.items()}
        paths["npz"] = out / "gaps_per_example.npz"
        written.append(files_lib.write_npz(paths["npz"], flat, kind="table", compressed=True, keep_previous=True))
    if kept is not None:
        kept.extend(p for p in written if p is not None)
    return paths


def settings_from_spec(spec) -> dict[str, Any]:
    """Keyword arguments of :func:`compute_gaps` from a run spec's ``gaps`` section."""
    g = spec.gaps
    return {
        "splits": ["test"] + (["train"] if g.train_examples else []),
        "families": g.family_list(),
        "settings": svi.SVISettings(num_steps=g.num_steps, learning_rate=g.learning_rate, num_samples=g.num_samples),
        "init": g.init,
        "elbo_samples": g.elbo_samples,
        "log_px_samples": g.log_px_samples,
        "max_examples": {"test": g.test_examples, "train": g.train_examples},
        "chunk_size": g.chunk_size,
        "flow_options": g.flow_options(),
    }
