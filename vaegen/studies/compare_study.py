"""``vaegen compare``: trains every model of the study, measures every row, writes the report.

The study itself -- its settings, the models and rows, how each row is measured -- is
:mod:`vaegen.studies.compare`; the figures and the report are :mod:`vaegen.studies.compare_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from vaegen import compilation as compilation_lib
from vaegen.config.schema import RunSpec
from vaegen.data import splits as splits_lib
from vaegen.errors import ConfigError, WorkdirError
from vaegen.registry import to_mapping
from vaegen.runs.recipes import LogPx
from vaegen.runs.run import restore
from vaegen.studies import compare
from vaegen.studies import compare_report
from vaegen.studies import metrics as metrics_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib


def run_study(workdir: str | os.PathLike = "runs/compare", *, preset: str = "quick", settings: Iterable[str] = (),
              overrides: Iterable[str] = (), only: Sequence[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains (or resumes) every variant, evaluates every row, writes the report.

    Args:
      workdir: the study's directory: one run per variant, ``classifier/``, ``rows/`` (metrics per
        row, cached), ``report/`` (``report.md`` and figures), ``results.json``.
      preset: ``tiny`` | ``quick`` | ``full`` (:func:`vaegen.studies.compare.study_settings`).
      settings: ``key=value`` changes to the study (e.g. ``epochs=3``, ``eval.k=500``).
      overrides: ``key=value`` config overrides applied to *every* model (e.g. ``data.name=mnist``).
      only: train and report only these variants (rows that need others are skipped).

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
    specs = {v.name: compare.model_spec(study, v, overrides) for v in all_variants}   # validates every spec first
    base_spec = compare.base_spec(study, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rows").mkdir(exist_ok=True)
    study_record = {"preset": preset, "settings": list(settings), "overrides": overrides, "study": to_mapping(study)}
    (workdir / "study.json").write_text(json.dumps(study_record, indent=2, default=list) + "\n")

    splits = trainer_lib.load_data(base_spec)
    log(f"[compare] {preset} study of {len(all_variants)} models in {workdir} "
        f"({base_spec.data.name}, {splits.train.shape[0]} training images)")

    # 1. Train every model with the one trainer.
    timings: dict[str, float] = {}
    for v in tqdm(all_variants, desc="train", unit="model", disable=not progress):
        t = time.perf_counter()
        if _trained(workdir / v.name, specs[v.name]):
            log(f"[compare] {v.name}: trained already")
            continue
        last = trainer_lib.train_and_evaluate(specs[v.name], workdir / v.name, splits=splits)
        timings[v.name] = time.perf_counter() - t
        bound = {k: round(val, 2) for k, val in last.items() if k.startswith("validation/")} if last else "already trained"
        log(f"[compare] {v.name}: {timings[v.name]:.0f} s {bound}")
    runs = {v.name: restore(workdir / v.name) for v in all_variants}

    # 2. The feature classifier.
    t = time.perf_counter()
    space = metrics_lib.train_classifier(
        splits, splits_lib.split_protocol(base_spec.data, "train"), workdir / "classifier",
        recipe=dataclasses.replace(metrics_lib.CLASSIFIER_RECIPE, epochs=int(study.classifier_epochs)))
    timings["classifier"] = time.perf_counter() - t
    log(f"[compare] feature classifier: test accuracy {space.info['test_accuracy']:.3f}")

    # 3. Every row.
    ev = study.eval
    x_test = compare.eval_split(base_spec, "test", int(ev.max_test_examples))
    reference = np.asarray(compare.eval_split(base_spec, "test", int(ev.num_samples)))
    reference_features, _ = space(reference)
    ctx = compare.StudyContext(study=study, workdir=workdir, splits=splits, base_spec=base_spec, runs=runs, space=space,
                   x_test=x_test, reference=reference, reference_features=reference_features,
                   key=jax.random.key(int(study.seed)))
    table_rows = [r for r in compare.rows(study) if (r.variant is None or r.variant in runs)
                  and (r.variant is not None or splits.validation.shape[0] > int(ev.nn_k))]  # the floor needs held-out images
    results: dict[str, Any] = {}
    for i, r in enumerate(tqdm(list(table_rows), desc="evaluate", unit="row", disable=not progress)):
        if r.best:  # the RAE + the density that did best on the AE's codes, measured above
            r = compare.resolve_best(r, table_rows[:i], results)
            table_rows[i] = r
            if r is None:
                continue
        fingerprint = compare.fingerprint({
            "eval": to_mapping(study.eval), "fit": to_mapping(study.expost.fit), "row": compare.row_record(r),
            "epoch": runs[r.variant].epoch if r.variant else None,
            # the variant's whole config: a model retrained with other settings is measured anew
            "config": workdir_lib.config_fingerprint(to_mapping(runs[r.variant].spec)) if r.variant else None,
            "classifier": space.info.get("recipe"), "overrides": overrides})
        path = workdir / "rows" / f"{r.name}.json"
        cached = json.loads(path.read_text()) if path.exists() else None
        has_samples = r.recipe is None or r.recipe_object.log_px_kind is not LogPx.UNDEFINED
        if cached and cached.get("fingerprint") == fingerprint and (workdir / "rows" / f"{r.name}.samples.npz").exists() == has_samples:
            results[r.name] = cached
            continue
        res = compare.evaluate_row(ctx, r)
        res["fingerprint"] = fingerprint
        path.write_text(json.dumps(res, indent=2, default=float) + "\n")
        results[r.name] = res
        log(f"[compare] {r.name}: {compare.row_summary(res)}")
    table_rows = [r for r in table_rows if r is not None]
    timings["evaluation"] = sum(results[n].get("seconds", 0.0) for n in results)

    # 4. Figures and the report.
    t = time.perf_counter()
    report_path = compare_report.write_report(ctx, table_rows, results, timings=timings, preset=preset,
                                              settings=list(settings), overrides=overrides)
    timings["report"] = time.perf_counter() - t
    timings["total_wall"] = time.perf_counter() - t_start
    summary = {"preset": preset, "settings": list(settings), "overrides": overrides, "study": to_mapping(study),
               "machine": compare.machine(), "timings_seconds": timings, "classifier": space.info, "rows": results,
               "report": str(report_path)}
    tmp = workdir / ".results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    os.replace(tmp, workdir / "results.json")
    log(f"[compare] report: {report_path} ({timings['total_wall']:.0f} s in all)")
    return summary


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
    return same and (workdir / trainer_lib.CHECKPOINTS_DIR / str(spec.train.num_epochs)).is_dir()


