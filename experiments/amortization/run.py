"""The amortization study: train a grid of models and decompose their inference gaps over training.

For every cell of a grid (``configs/quick.py``, ``configs/full.py``, or any file with the same
``EPOCHS``, ``VARIANTS`` and ``get_config``), the model is trained in stages up to each epoch in
``EPOCHS`` (the trainer resumes exactly where it stopped), and after each stage the gap
decomposition of :mod:`vaegen.studies.gaps` is measured on a test subset and a training subset:
log p(x), L[q*_F], L[q], the approximation gap log p(x) - L[q*_F] and the amortization gap
L[q*_F] - L[q], each per example and summarised with its standard error.

Outputs in ``--out``::

    <cell>/                       the cell's run (vaegen workdir) and gaps/epoch_<e>/ tables
    <cell>.seed<s>/               the same cell trained with config.seed = s (``--train-seeds``)
    results.csv                   every (cell, seed, epoch, split, family) row
    results.md                    the final-epoch table, the gaps over epochs and, with several
                                  seeds, each cell's mean and spread over its training runs
    figures/gaps_over_epochs.png  approximation and amortization gaps over training, train vs test
    figures/gaps_by_axis.png      final gaps per ablation axis (encoder, decoder, K, training)

The ± of a run are standard errors over the measured images: they say how well the images pin
down that run's gaps, not how much another training run would differ.  ``--train-seeds 0,1,2``
trains every cell once per seed (the root of its initialisation, data order and noise; the data,
the measured images and the measurement's own randomness stay fixed), and the tables and figures
then give each cell's mean over its runs with the standard error across runs.

Everything is cached: rerunning skips finished stages and measurements, so an interrupted study
resumes and ``--only`` or ``--train-seeds`` can add cells or runs.

    python experiments/amortization/run.py --grid quick --out runs/amortization/quick
    python experiments/amortization/run.py --grid quick --out runs/amortization/quick --train-seeds 0,1,2
    python experiments/amortization/run.py --grid full --out runs/amortization/full      # a GPU
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import pathlib
import re
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
QUANTITIES = ("log_px", "elbo_star", "elbo_amortized", "approximation_gap", "amortization_gap")


def load_grid(spec: str):
    path = pathlib.Path(spec)
    if not path.suffix:
        path = HERE / "configs" / f"{spec}.py"
    if not path.is_file():
        raise SystemExit(f"run.py: error: no grid {spec!r} (looked for {path})")
    module_spec = importlib.util.spec_from_file_location(f"_amortization_grid_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.PATH = str(path)
    return module


def train_seconds(workdir: pathlib.Path, epoch: int) -> float:
    """Seconds spent training the run in ``workdir`` up to ``epoch`` (the same on a rerun)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").exists() else []
    metrics = [json.loads(l) for l in lines if l.strip()]
    return float(sum(m.get("epoch_seconds", 0.0) + m.get("compile_seconds", 0.0)
                     for m in metrics if m.get("epoch", 0) <= epoch))


def cell_config(grid, name: str, seed: int | None = None):
    """The run spec of cell ``name`` (with ``seed`` as its seed when given) and its workdir name:
    ``<cell>`` for the grid's own seed, ``<cell>.seed<s>`` for another."""
    import dataclasses

    from vaegen.config import schema
    from vaegen.config.loading import seeded_run_name

    spec = schema.to_spec(grid.get_config(name))  # checks the config
    own = spec.seed
    if seed is not None:
        spec = dataclasses.replace(spec, seed=int(seed))
    return spec, seeded_run_name(name, spec.seed, own)


def run_cell(grid, name: str, out: pathlib.Path, splits_cache: dict, log, seed: int | None = None) -> list[dict]:
    import dataclasses

    import vaegen
    from vaegen.registry import to_mapping
    from vaegen.studies import gaps as gaps_lib
    from vaegen.train import trainer as train_lib

    axis, value, _ = grid.VARIANTS[name]
    spec, run_name = cell_config(grid, name, seed)
    data_key = json.dumps(to_mapping(spec.data), sort_keys=True)
    if data_key not in splits_cache:
        splits_cache[data_key] = train_lib.load_data(spec)
    splits = splits_cache[data_key]
    workdir = out / run_name
    rows = []
    for epoch in grid.EPOCHS:
        stage = dataclasses.replace(spec, train=dataclasses.replace(spec.train, num_epochs=int(epoch)))
        t = time.perf_counter()
        train_lib.train_and_evaluate(stage, workdir, splits=splits)
        log(f"[{run_name}] trained to epoch {epoch} ({time.perf_counter() - t:.0f} s)")
        gap_dir = workdir / "gaps" / f"epoch_{epoch}"
        if not (gap_dir / "gaps.json").exists():
            t = time.perf_counter()
            run = vaegen.load(workdir, epoch=epoch)
            kw = gaps_lib.settings_from_spec(stage)
            report = gaps_lib.compute_gaps(run, progress=False, **kw)
            gaps_lib.write_tables(report, gap_dir)
            log(f"[{run_name}] gaps at epoch {epoch} ({time.perf_counter() - t:.0f} s)")
        result = json.loads((gap_dir / "gaps.json").read_text())
        metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        last = next(m for m in metrics if m["epoch"] == epoch)
        for r in result["rows"]:
            rows.append({"cell": name, "seed": int(spec.seed), "axis": axis, "value": value, "epoch": epoch,
                         "split": r["split"],
                         "family": r["family"], "num_examples": r["num_examples"],
                         "validation_elbo": last.get("validation/elbo"),
                         "train_seconds": train_seconds(workdir, epoch),
                         **{q: r[q]["mean"] for q in QUANTITIES}, **{f"{q}_stderr": r[q]["stderr"] for q in QUANTITIES}})
    return rows


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per (cell, epoch, split, family), in first-seen order: each quantity's mean over the
    cell's training runs, and as its ``_stderr`` the standard error across runs (with one run,
    that run's own standard error over images); ``seeds`` lists the runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["epoch"], r["split"], r["family"]), []).append(r)
    merged = []
    for group in groups.values():
        m = {k: v for k, v in group[0].items() if k != "seed"}
        m["seeds"] = sorted(r["seed"] for r in group)
        if len(group) > 1:
            for q in QUANTITIES:
                values = [r[q] for r in group]
                m[q] = statistics.fmean(values)
                m[q + "_stderr"] = statistics.stdev(values) / math.sqrt(len(values))
                m[q + "_sd"] = statistics.stdev(values)
            vals = [r["validation_elbo"] for r in group if r.get("validation_elbo") is not None]
            m["validation_elbo"] = statistics.fmean(vals) if vals else None
            m["train_seconds"] = statistics.fmean(r["train_seconds"] for r in group)
        merged.append(m)
    return merged


def write_results(rows: list[dict], out: pathlib.Path, grid) -> None:
    fields = ["cell", "seed", "axis", "value", "epoch", "split", "family", "num_examples", "validation_elbo",
              "train_seconds"]
    fields += [f for q in QUANTITIES for f in (q, f"{q}_stderr")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in fields})
    (out / "results.csv").write_text(buf.getvalue())

    final = max(grid.EPOCHS)
    seeds = {c: sorted({r["seed"] for r in rows if r["cell"] == c}) for c in dict.fromkeys(r["cell"] for r in rows)}
    label = lambda r: r["cell"] if len(seeds[r["cell"]]) == 1 else f"{r['cell']} (seed {r['seed']})"
    pm = lambda r, q: f"{r[q]:.2f} ± {r[q + '_stderr']:.2f}"
    lines = [f"Amortization study ({pathlib.Path(grid.PATH).name}), nats per example, mean ± standard error.",
             "", f"Final epoch ({final}):", "",
             "| cell | axis | value | split | F | log p(x) | L[q*_F] | L[q] | approximation gap | amortization gap "
             "| validation bound | train s |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["epoch"] == final:
            val = f"{r['validation_elbo']:.2f}" if r.get("validation_elbo") is not None else ""
            lines.append(f"| {label(r)} | {r['axis']} | {r['value']} | {r['split']} | {r['family']} | {pm(r, 'log_px')} | "
                         f"{pm(r, 'elbo_star')} | {pm(r, 'elbo_amortized')} | {pm(r, 'approximation_gap')} | "
                         f"{pm(r, 'amortization_gap')} | {val} | {r['train_seconds']:.0f} |")
    lines += ["", "validation bound: the training objective's bound on the validation set (for semi-amortized and "
              "SVI training the refined L[q_K], for ELBO training L[q]); train s: training seconds.  ± : standard "
              "error over the measured images (one training run)."]
    merged = over_seeds(rows)
    several = any(len(v) > 1 for v in seeds.values())
    if several:
        lines += ["", f"Over training runs (final epoch {final}; mean over the runs ± standard error across them, "
                  "sd: their standard deviation -- the spread training randomness alone gives, same images; "
                  "a cell with one run: its standard error over images):", "",
                  "| cell | split | F | runs | log p(x) | L[q*_F] | L[q] | approximation gap | amortization gap "
                  "| sd of approx. gap | sd of amort. gap |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in merged:
            if m["epoch"] == final:
                sd = lambda q: f"{m[q + '_sd']:.2f}" if q + "_sd" in m else "—"
                lines.append(f"| {m['cell']} | {m['split']} | {m['family']} | {len(m['seeds'])} | {pm(m, 'log_px')} | "
                             f"{pm(m, 'elbo_star')} | {pm(m, 'elbo_amortized')} | {pm(m, 'approximation_gap')} | "
                             f"{pm(m, 'amortization_gap')} | {sd('approximation_gap')} | {sd('amortization_gap')} |")
    lines += ["", "Gaps over training (family diag; test / train" + ("; the mean over a cell's runs" if several else "")
              + "):", "",
              "| cell | " + " | ".join(f"epoch {e}: approx." for e in grid.EPOCHS) + " | "
              + " | ".join(f"epoch {e}: amort." for e in grid.EPOCHS) + " |",
              "|---|" + "---:|" * (2 * len(grid.EPOCHS))]
    for cell in seeds:
        def cells(q):
            out_ = []
            for e in grid.EPOCHS:
                vals = {m["split"]: m[q] for m in merged if m["cell"] == cell and m["epoch"] == e and m["family"] == "diag"}
                out_.append(" / ".join(f"{vals[s]:.2f}" for s in ("test", "train") if s in vals))
            return out_
        lines.append(f"| {cell} | " + " | ".join(cells("approximation_gap") + cells("amortization_gap")) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: pathlib.Path, grid) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    diag = [r for r in over_seeds(rows) if r["family"] == "diag"]  # error bars: across runs where several
    cells = list(dict.fromkeys(r["cell"] for r in diag))
    fig = Figure(figsize=(11, 4.2))
    for i, q in enumerate(("approximation_gap", "amortization_gap")):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, cell in enumerate(cells):
            color = f"C{j % 10}"
            for split, style in (("test", "-"), ("train", "--")):
                pts = sorted((r["epoch"], r[q], r[q + "_stderr"]) for r in diag if r["cell"] == cell and r["split"] == split)
                if pts:
                    e, v, s = zip(*pts)
                    ax.errorbar(e, v, yerr=s, fmt=style, marker="o", ms=3, color=color,
                                label=cell if split == "test" else None)
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{q.replace('_', ' ')} (nats)")
        ax.set_title(f"{q.replace('_', ' ')}: test (solid), train (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(figdir / "gaps_over_epochs.png", dpi=110)

    final = max(grid.EPOCHS)
    test = [r for r in diag if r["epoch"] == final and r["split"] == "test"]
    axes = [a for a in dict.fromkeys(r["axis"] for r in test) if a != "baseline"]
    base = [r for r in test if r["axis"] == "baseline"]
    fig = Figure(figsize=(3.2 * max(1, len(axes)), 3.8))
    for i, a in enumerate(axes):
        ax = fig.add_subplot(1, len(axes), i + 1)
        group = base + [r for r in test if r["axis"] == a]
        labels = [r["value"] if r["axis"] != "baseline" else "base" for r in group]
        x = range(len(group))
        for k, (q, off) in enumerate((("approximation_gap", -0.2), ("amortization_gap", 0.2))):
            ax.bar([v + off for v in x], [r[q] for r in group], width=0.4, yerr=[r[q + "_stderr"] for r in group],
                   color=f"C{k}", label=q.replace("_", " ") if i == 0 else None)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(a, fontsize=9)
        ax.set_ylabel("nats (test, final epoch)")
    if axes:
        fig.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(figdir / "gaps_by_axis.png", dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a grid of models and decompose their inference gaps over training.")
    p.add_argument("--grid", default="quick", help="quick, full, or a path to a grid file")
    p.add_argument("--out", help="output directory (default runs/amortization/<grid>)")
    p.add_argument("--only", help="comma-separated cells to run (default all)")
    p.add_argument("--train-seeds",
                   help="comma-separated training seeds: every cell once per seed (default: the grid's own)")
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    out = pathlib.Path(args.out or f"runs/amortization/{pathlib.Path(grid.PATH).stem}")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(grid.VARIANTS)
    unknown = [n for n in names if n not in grid.VARIANTS]
    if unknown:
        raise SystemExit(f"run.py: error: unknown cells {unknown}; cells: {', '.join(grid.VARIANTS)}")
    seeds: list[int | None] = [None]
    if args.train_seeds is not None:
        from vaegen.config.loading import parse_seeds

        try:
            seeds = parse_seeds(args.train_seeds)
        except ValueError as e:
            raise SystemExit(f"run.py: error: {e}")
    out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    log = lambda msg: tqdm.write(f"{time.perf_counter() - t0:7.0f}s {msg}")
    rows, splits_cache = [], {}
    for name, seed in tqdm([(n, x) for n in names for x in seeds], desc="runs", unit="run"):
        rows += run_cell(grid, name, out, splits_cache, log, seed)
    # Also report runs finished by earlier invocations (any cell, any seed).
    done = {(r["cell"], r["seed"]) for r in rows}
    finished = lambda d: all((d / "gaps" / f"epoch_{e}" / "gaps.json").exists() for e in grid.EPOCHS)
    for name in grid.VARIANTS:
        earlier = [(None, out / name)] + [(int(m.group(1)), d) for d in sorted(out.glob(f"{name}.seed*"))
                                          if (m := re.fullmatch(re.escape(name) + r"\.seed(\d+)", d.name))]
        for seed, d in earlier:
            actual = int(cell_config(grid, name, seed)[0].seed)
            if (name, actual) not in done and d.is_dir() and finished(d):
                rows += run_cell(grid, name, out, splits_cache, log, seed)
                done.add((name, actual))
    order = list(grid.VARIANTS)
    rows.sort(key=lambda r: (order.index(r["cell"]), r["seed"], r["epoch"], r["split"] != "test", r["family"]))
    write_results(rows, out, grid)
    plot(rows, out, grid)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'figures'}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    sys.exit(main())
