"""``vaegen compare``: trains every model of the study, measures every row, writes the report.

The study itself -- its settings, the models and rows, how each row is measured -- is
:mod:`vaegen.studies.compare`; the figures and the report are :mod:`vaegen.studies.compare_report`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from vaegen import compilation as compilation_lib
from vaegen import files as files_lib
from vaegen.config.schema import RunSpec
from vaegen.data import splits as splits_lib
from vaegen.errors import ConfigError, DamagedFileError, WorkdirError
from vaegen.registry import to_mapping
from vaegen.runs.recipes import LogPx
from vaegen.runs.run import restore
from vaegen.studies import compare
from vaegen.studies import compare_report
from vaegen.studies import metrics as metrics_lib
from vaegen.studies import paired as paired_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib


def run_study(workdir: str | os.PathLike = "runs/compare", *, preset: str = "quick", settings: Iterable[str] = (),
              overrides: Iterable[str] = (), only: Sequence[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print, budget_seconds: float | None = None) -> dict[str, Any]:
    """Trains (or resumes) every variant with every training seed, evaluates every row for each seed,
    takes every row's paired differences to the reference row, writes the report.

    Args:
      workdir: the study's directory: one run per variant and seed (``<variant>``, ``<variant>.seed<s>``),
        ``classifier/``, ``rows/`` (metrics and per-image values per row and seed, cached), ``report/``
        (``report.md`` and figures), ``results.json``.
      preset: ``tiny`` | ``quick`` | ``standard`` | ``full`` (:func:`vaegen.studies.compare.study_settings`).
      settings: ``key=value`` changes to the study (e.g. ``epochs=3``, ``eval.k=500``, ``seeds=3``).
      overrides: ``key=value`` config overrides applied to *every* model (e.g. ``data.name=mnist``).
      only: train and report only these variants (rows that need others are skipped).
      budget_seconds: stop starting models and rows after this long (a GPU's lent time): the report covers
        the first seed as far as it got and every later seed measured in full, and says what was skipped.
        Trained runs and measured rows in the workdir are reused past it, so ``budget_seconds=0`` writes
        the report of what an interrupted study has finished.

    Interrupted (a kill, a full disk), it resumes: trained runs and measured rows are reused, a run
    cut short resumes from its checkpoint, and the result is the uninterrupted one.

    Returns the results (also written to ``results.json``).
    """
    t_start = time.perf_counter()
    compilation_lib.enable()  # the persistent compilation cache (vaegen.compilation)
    workdir = pathlib.Path(workdir)
    study = compare.load_study(preset, settings)
    overrides = [o.removeprefix("--").removeprefix("config.") for o in overrides]
    all_variants = compare.variants(study)
    if only:
        unknown = sorted(set(only) - {v.name for v in all_variants})
        if unknown:
            raise ConfigError(f"unknown variants {unknown}; this study has {[v.name for v in all_variants]}")
        all_variants = [v for v in all_variants if v.name in only]
    seeds = compare.seeds(study)
    specs = {(v.name, s): compare.model_spec(study, v, overrides, seed=s)       # validates every spec first
             for v in all_variants for s in seeds}
    base_spec = compare.base_spec(study, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rows").mkdir(exist_ok=True)
    study_record = {"preset": preset, "settings": list(settings), "overrides": overrides, "study": to_mapping(study)}
    files_lib.write_json(workdir / "study.json", study_record, kind="table", default=list)

    splits = trainer_lib.load_data(base_spec)
    log(f"[compare] {preset} study of {len(all_variants)} models x {len(seeds)} seed(s) in {workdir} "
        f"({base_spec.data.name}, {splits.train.shape[0]} training images)")

    timings: dict[str, float] = {}
    skipped: list[str] = []
    deadline = None if budget_seconds is None else t_start + float(budget_seconds)
    out_of_time = lambda: deadline is not None and time.perf_counter() > deadline   # noqa: E731

    # 1. The feature classifier (the sample metrics' feature space).
    t = time.perf_counter()
    space = metrics_lib.train_classifier(
        splits, splits_lib.split_protocol(base_spec.data, "train"), workdir / "classifier",
        recipe=dataclasses.replace(metrics_lib.CLASSIFIER_RECIPE, epochs=int(study.classifier_epochs)))
    timings["classifier"] = time.perf_counter() - t
    log(f"[compare] feature classifier: test accuracy {space.info['test_accuracy']:.3f}")
    ev = study.eval
    x_test = compare.eval_split(base_spec, "test", int(ev.max_test_examples))
    x_bounds = (compare.eval_split(base_spec, "test", int(ev.max_bound_examples))
                if int(ev.max_bound_examples) != int(ev.max_test_examples) else None)
    reference = np.asarray(compare.eval_split(base_spec, "test", int(ev.num_samples)))
    reference_features, _ = space(reference)

    # 2. Seed by seed: train every model with the one trainer, then measure every row (the same test images
    # and draws for every seed).  A budget stops at the first model or row that would start work after it
    # (finished runs and measured rows are reused, budget or not), and only seeds measured in full (and the
    # first) are reported.
    runs: dict[int, dict[str, Any]] = {}
    contexts: dict[int, compare.StudyContext] = {}
    by_seed: dict[int, dict[str, Any]] = {}
    table_rows: list[compare.Row | None] = []
    seeds_used: list[int] = []
    for s in seeds:
        complete = True
        for v in tqdm(all_variants, desc=f"train (seed {s})", unit="model", disable=not progress):
            run_dir = workdir / compare.run_name(study, v.name, s)
            if _trained(run_dir, specs[(v.name, s)]):   # a finished run costs nothing, budget or not
                log(f"[compare] {run_dir.name}: trained already")
                continue
            if out_of_time():
                skipped.append(f"training {run_dir.name}")
                complete = False
                continue
            t = time.perf_counter()
            last = trainer_lib.train_and_evaluate(specs[(v.name, s)], run_dir, splits=splits)
            timings[run_dir.name] = time.perf_counter() - t
            bound = ({k: round(val, 2) for k, val in last.items() if k.startswith("validation/")} if last
                     else "already trained")
            log(f"[compare] {run_dir.name}: {timings[run_dir.name]:.0f} s {bound}")
        runs[s] = {v.name: restore(workdir / compare.run_name(study, v.name, s)) for v in all_variants
                   if _trained(workdir / compare.run_name(study, v.name, s), specs[(v.name, s)])}
        contexts[s] = compare.StudyContext(study=study, workdir=workdir, splits=splits, base_spec=base_spec, runs=runs[s],
                                           space=space, x_test=x_test, reference=reference,
                                           reference_features=reference_features, key=jax.random.key(int(study.seed)),
                                           x_bounds=x_bounds, seed=s)
        by_seed[s] = {}
        if s == seeds[0]:
            table_rows = [r for r in compare.rows(study) if (r.variant is None or r.variant in runs[s])
                          and (r.variant is not None or splits.validation.shape[0] > int(ev.nn_k))]   # the data row's floor
        for i, r in enumerate(tqdm(list(table_rows), desc=f"evaluate (seed {s})", unit="row", disable=not progress)):
            if r is None or (r.variant is None and s != seeds[0]):   # the data row does not depend on the seed
                continue
            if r.best:  # the RAE + the density that did best on the AE's codes (first seed), measured above
                r = compare.resolve_best(r, table_rows[:i], by_seed[seeds[0]])
                table_rows[i] = r
                if r is None:
                    continue
            res = (None if r.variant is not None and r.variant not in runs[s]
                   else _measured(contexts[s], r, overrides, log, compute=not out_of_time()))
            if res is None:
                skipped.append(f"measuring {compare.run_name(study, r.name, s)}")
                complete = False
                continue
            by_seed[s][r.name] = res
        if complete or s == seeds[0]:
            seeds_used.append(s)
    table_rows = [r for r in table_rows if r is not None and r.name in by_seed[seeds[0]]]
    results = by_seed[seeds[0]]
    by_seed = {s: by_seed[s] for s in seeds_used}
    timings["evaluation"] = sum(res.get("seconds", 0.0) for rs in by_seed.values() for res in rs.values())
    if skipped:
        log(f"[compare] skipped to keep the budget of {budget_seconds:.0f} s: {', '.join(skipped)}")

    # 4. Paired differences to the reference row, and how far each model was from converging.
    paired = paired_differences(workdir, study, table_rows, seeds_used)
    convergence = convergence_of(workdir, study, all_variants, seeds_used)

    # 5. Figures and the report.
    t = time.perf_counter()
    report_path = compare_report.write_report(contexts[seeds[0]], table_rows, results, timings=timings, preset=preset,
                                              settings=list(settings), overrides=overrides, by_seed=by_seed,
                                              paired=paired, convergence=convergence, skipped=skipped,
                                              budget_seconds=budget_seconds)
    timings["report"] = time.perf_counter() - t
    timings["total_wall"] = time.perf_counter() - t_start
    summary = {"preset": preset, "settings": list(settings), "overrides": overrides, "study": to_mapping(study),
               "machine": compare.machine(), "timings_seconds": timings, "classifier": space.info, "rows": results,
               "seeds": seeds_used, "rows_by_seed": {str(s): rs for s, rs in by_seed.items()},
               "skipped": skipped, "budget_seconds": budget_seconds,
               "paired": {row: {m: p.to_json() for m, p in ms.items()} for row, ms in paired.items()},
               "reference": study.reference, "convergence": convergence, "report": str(report_path)}
    files_lib.write_json(workdir / "results.json", summary, kind="table", default=float)
    log(f"[compare] report: {report_path} ({timings['total_wall']:.0f} s in all)")
    return summary


def _measured(ctx: compare.StudyContext, r: compare.Row, overrides: Sequence[str], log: Callable[[str], None],
              compute: bool = True) -> dict[str, Any] | None:
    """The row's measurement for the context's seed: reused from ``rows/`` when it was made from the same
    settings, runs and classifier (and its files are there), else made and saved -- or, with ``compute``
    false (past the study's budget), None."""
    study, workdir = ctx.study, ctx.workdir
    fingerprint = compare.fingerprint({
        "eval": to_mapping(study.eval), "fit": to_mapping(study.expost.fit), "row": compare.row_record(r),
        "epoch": ctx.runs[r.variant].epoch if r.variant else None, "draws": compare.COMMON_DRAWS,
        # the variant's whole config: a model retrained with other settings is measured anew
        "config": workdir_lib.config_fingerprint(to_mapping(ctx.runs[r.variant].spec)) if r.variant else None,
        "classifier": ctx.space.info.get("recipe"), "overrides": list(overrides)})
    stem = ctx.stem(r)
    path = workdir / "rows" / f"{stem}.json"
    try:
        cached = files_lib.read_json(path, what="measured row", fix="") if path.exists() else None
    except DamagedFileError:   # a row cut short by a kill or a full disk: measured again
        cached = None
    has_samples = r.recipe is None or r.recipe_object.log_px_kind is not LogPx.UNDEFINED
    has_values = r.recipe is not None and r.variant is not None
    files_there = ((workdir / "rows" / f"{stem}.samples.npz").exists() == has_samples
                   and (not has_values or (workdir / "rows" / f"{stem}.values.npz").exists()))
    if cached and cached.get("fingerprint") == fingerprint and files_there:
        return cached
    if not compute:
        return None
    res = compare.evaluate_row(ctx, r)
    res["fingerprint"] = fingerprint
    files_lib.write_json(path, res, kind="table", default=float)
    log(f"[compare] {stem}: {compare.row_summary(res)}")
    return res


PAIRED_METRICS = ("log_px", "elbo", "reconstruction")
"""The per-image metrics whose paired differences the study reports."""


def paired_differences(workdir: pathlib.Path, study: compare.CompareSettings, rows: Sequence[compare.Row],
                       seeds: Sequence[int] | None = None) -> dict[str, dict[str, paired_lib.Paired]]:
    """Every row's paired difference to the reference row (``study.reference``), per metric, over the
    seeds: ``{row: {metric: Paired}}`` (a metric either row lacks is left out)."""
    names = {r.name for r in rows}
    if study.reference not in names:
        return {}
    seeds = list(seeds or compare.seeds(study))
    values = {(r.name, s): _values(workdir, study, r.name, s) for r in rows for s in seeds}
    out: dict[str, dict[str, paired_lib.Paired]] = {}
    for r in rows:
        if r.name == study.reference:
            continue
        for metric in PAIRED_METRICS:
            pairs = [(values[(r.name, s)].get(metric), values[(study.reference, s)].get(metric)) for s in seeds]
            if all(a is not None and b is not None and a.shape == b.shape for a, b in pairs):
                out.setdefault(r.name, {})[metric] = paired_lib.paired([a for a, _ in pairs], [b for _, b in pairs])
    return out


def _values(workdir: pathlib.Path, study: compare.CompareSettings, row: str, seed: int) -> dict[str, np.ndarray]:
    path = workdir / "rows" / f"{compare.run_name(study, row, seed)}.values.npz"
    if not path.exists():
        return {}
    return files_lib.load_npz(path, what="row's per-image values", fix="measure the row again (delete it)")


def convergence_of(workdir: pathlib.Path, study: compare.CompareSettings, variants: Sequence[compare.Variant],
                   seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """How far each model (and seed) was from converging, from its ``metrics.jsonl``: the validation objective
    it tracked, its epochs, best epoch, whether early stopping stopped it, and the last validation
    improvement per epoch (nats; small means close to converged under this optimiser)."""
    out: dict[str, Any] = {}
    for v in variants:
        for s in seeds or compare.seeds(study):
            name = compare.run_name(study, v.name, s)
            path = workdir / name / "metrics.jsonl"
            if not path.exists():
                continue
            lines = workdir_lib.read_jsonl(path)
            bound = restore_bound(workdir / name)
            val = [(int(r["epoch"]), float(r[f"validation/{bound}"])) for r in lines if f"validation/{bound}" in r]
            if not val:
                continue
            best = max(val, key=lambda e: e[1])
            last_gain = (val[-1][1] - val[-2][1]) / max(val[-1][0] - val[-2][0], 1) if len(val) > 1 else None
            recent = val[-3:]
            slope = ((recent[-1][1] - recent[0][1]) / max(recent[-1][0] - recent[0][0], 1)) if len(recent) > 1 else None
            out[name] = {"variant": v.name, "seed": s, "objective": bound, "epochs": val[-1][0],
                         "max_epochs": int(v.epochs), "best_epoch": best[0], "best": best[1], "last": val[-1][1],
                         "stopped_early": any(bool(r.get("early_stopping/stopped")) for r in lines),
                         "last_gain_per_epoch": last_gain, "gain_per_epoch_last_3": slope}
    return out


def restore_bound(run_dir: pathlib.Path) -> str:
    """The name of the bound the run tracked on validation data (its objective's ``bound_name``)."""
    spec = workdir_lib.parse_stored(RunSpec, run_dir / workdir_lib.CONFIG_FILE)
    return spec.objective.build().bound_name


def _trained(workdir: pathlib.Path, spec: RunSpec) -> bool:
    """Whether ``workdir`` holds this spec's run with its last epoch's checkpoint written (then
    there is nothing to train; :func:`vaegen.load` still verifies the checkpoint)."""
    stored = workdir / workdir_lib.CONFIG_FILE
    if not stored.exists():
        return False
    try:
        previous = workdir_lib.parse_stored(RunSpec, stored)
    except (ConfigError, WorkdirError):
        return False
    same = not workdir_lib.differences(to_mapping(previous), to_mapping(spec))
    if not same:
        return False
    if (workdir / trainer_lib.CHECKPOINTS_DIR / str(spec.train.num_epochs)).is_dir():
        return True
    lines = workdir_lib.read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").exists() else []
    return any(bool(r.get("early_stopping/stopped")) for r in lines)   # early stopping ended it


