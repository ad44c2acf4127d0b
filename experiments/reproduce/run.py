"""The reproduction table: train published models under their protocols, estimate their test
log p(x) by importance sampling (k = 5000), and tabulate them beside the published values.

Each row is a config in ``configs/<row>.py`` (settings in :mod:`vaegen.studies.reproduce`).  For every row
asked for, the model is trained in ``--out/<row>`` (resuming a run that is already there, so an
interrupted table picks up where it stopped), its best checkpoint (early stopping) is evaluated on
the test set, and a line is added to::

    <out>/results.json   every row: published and measured values, settings, times, machine
    <out>/table.md       the Markdown table of docs/reproduction.md
    <out>/paired.md      paired differences of log p(x) between rows evaluated on the same images
    <out>/<row>/reproduce_eval_*.npz   the row's per-image log p(x) and ELBO (nats)

    python experiments/reproduce/run.py --rows fmnist --out runs/reproduce           # the Fashion-MNIST rows
    python experiments/reproduce/run.py --rows mnist_iwae_k50 --out runs/reproduce   # one row (needs TFDS MNIST)
    python experiments/reproduce/run.py --rows fmnist_vae_standard --out runs/budget \\
        --set train.num_epochs=100 --test-examples 2000                             # a budgeted run

``--set KEY=VALUE`` overrides a config key of every row asked for (recorded with the row, and the
row is marked as deviating from the published protocol); ``--test-examples`` evaluates on the first
n test images only (also marked).

A row's ± is a standard error over test images: it does not say how much another training run of
the same recipe would differ.  ``--train-seeds 0,1,2`` trains every row once per seed (the root of
its initialisation, data order and noise; ``<row>.seed<s>`` beside ``<row>``, which keeps the
config's own seed); table.md then adds each row's mean over its runs with the standard error
across them, and paired.md the paired difference of two rows averaged over their common seeds
with its standard error across seeds -- the comparison that counts training noise:

    python experiments/reproduce/run.py --rows fmnist_vae_vampprior,fmnist_hvae_vampprior --train-seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def machine() -> str:
    """The accelerator (or CPU) the numbers were measured on."""
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores, {platform.machine()}), no GPU"
    return f"{getattr(d, 'device_kind', d.platform)} x{jax.device_count()}"


def select(spec: str, names) -> list[str]:
    """Row names from ``all``, ``fmnist``, ``mnist`` or a comma-separated list."""
    names = list(names)
    if spec == "all":
        return names
    if spec in ("fmnist", "mnist"):
        return [n for n in names if n.startswith(spec + "_")]
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise SystemExit(f"run.py: error: unknown rows {unknown}; rows: {', '.join(names)} (or all, fmnist, mnist)")
    return chosen


def train_seconds(workdir: pathlib.Path) -> float:
    path = workdir / "metrics.jsonl"
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    return float(sum(r.get("epoch_seconds", 0.0) + r.get("compile_seconds", 0.0) for r in lines))


def run_row(name: str, out: pathlib.Path, overrides: list[str], k: int, test_examples: int, seed: int,
            train_seed: int | None = None) -> dict:
    import vaegen
    from vaegen.config import loading as config_lib
    from vaegen.config import schema
    from vaegen.runs import evaluate as evaluation
    from vaegen.studies import reproduce as reproduce

    row = reproduce.ROWS[name]
    config = config_lib.normalize(row.config())
    config_lib.apply_overrides(config, overrides)
    own_seed = int(config.seed)
    if train_seed is not None:
        config.seed = int(train_seed)
    spec = schema.to_spec(config)  # validates
    key = config_lib.seeded_run_name(name, spec.seed, own_seed)
    workdir = out / key
    last = vaegen.train_and_evaluate(spec, workdir) or {}
    run = vaegen.load(workdir)
    metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    settings = {"k": k, "test_examples": test_examples, "seed": seed, "epoch": run.epoch}
    eval_path = workdir / f"reproduce_eval_k{k}_n{test_examples}_s{seed}.json"
    per_example_path = eval_path.with_suffix(".npz")
    result = json.loads(eval_path.read_text()) if eval_path.exists() else None
    if result is None or result.get("reproduce_settings") != settings or not per_example_path.exists():
        t = time.perf_counter()
        per_example = {}
        eval_settings = dataclasses.replace(run.spec.eval, num_samples=k, estimators="elbo,is")
        result = evaluation.evaluate(run, eval_settings, max_examples=test_examples, seed=seed, progress=True,
                                     per_example=per_example)
        result["reproduce_settings"] = settings
        result["eval_seconds"] = time.perf_counter() - t
        evaluation.write_per_example(per_example_path, per_example, result)
        evaluation.write_json(eval_path, result)
    m = result["metrics"]
    final = metrics[-1] if metrics else last
    return {
        "row": name,
        "run": key,
        "train_seed": int(spec.seed),
        "title": row.title,
        "source": row.source,
        "protocol": spec.data.protocol,
        "published": row.published,
        "published_stderr": row.published_stderr,
        "log_px": m["log_px"]["mean"],
        "log_px_stderr": m["log_px"]["stderr"],
        "bits_per_dim": m["log_px"].get("bits_per_dim"),
        "elbo": m.get("elbo", {}).get("mean"),
        "k": k,
        "test_examples": result.get("num_examples", test_examples),
        "epochs_trained": int(final.get("epoch", 0)),
        "best_epoch": int(run.epoch),
        "stopped_early": bool(final.get("early_stopping/stopped", False)),
        "train_seconds": train_seconds(workdir),
        "eval_seconds": result.get("eval_seconds"),
        "overrides": overrides,
        "deviations": deviations(overrides, test_examples),
        "machine": machine(),
        "command": command(name, overrides, k, test_examples, None if key == name else int(spec.seed)),
        "per_example": str(per_example_path),
    }


COSMETIC_KEYS = ("train.progress",)  # overrides that change nothing a run computes


def deviations(overrides, test_examples) -> list[str]:
    out = [f"--set {o}" for o in overrides if o.split("=", 1)[0].removeprefix("config.") not in COSMETIC_KEYS]
    if test_examples:
        out.append(f"first {test_examples} test images")
    return out


def command(name, overrides, k, test_examples, train_seed=None) -> str:
    parts = ["python experiments/reproduce/run.py", f"--rows {name}"]
    if train_seed is not None:
        parts.append(f"--train-seeds {train_seed}")
    parts += [f"--set {o}" for o in overrides]
    if k != 5000:
        parts.append(f"--k {k}")
    if test_examples:
        parts.append(f"--test-examples {test_examples}")
    return " ".join(parts)


def fmt_value(v, se) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def _runs_per_row(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["row"]] = counts.get(r["row"], 0) + 1
    return counts


def label(r: dict, counts: dict[str, int]) -> str:
    """A row's title, with its training seed where the row has several runs."""
    return r["title"] if counts.get(r["row"], 1) == 1 else f"{r['title']} (seed {r.get('train_seed', 0)})"


def table(rows: list[dict]) -> str:
    counts = _runs_per_row(rows)
    lines = ["| paper | model | protocol | published log p(x) | vaegen log p(x) (IS) | difference | trained | "
             "machine | command |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        diff = r["log_px"] - r["published"]
        trained = f"{r['epochs_trained']} epochs (best {r['best_epoch']}), {r['train_seconds'] / 60:.0f} min"
        if r["deviations"]:
            trained += "; " + ", ".join(r["deviations"])
        lines.append(
            f"| {r['source']} | {label(r, counts)} | {r['protocol']} | {fmt_value(r['published'], r['published_stderr'])} "
            f"| {fmt_value(r['log_px'], r['log_px_stderr'])} (k = {r['k']}, {r['test_examples']} images) "
            f"| {diff:+.2f} | {trained} | {r['machine']} | `{r['command']}` |")
    text = "\n".join(lines) + "\n"
    if any(n > 1 for n in counts.values()):
        import statistics

        lines = ["", "Over training runs (each row's runs: mean log p(x) ± standard error across them, and their "
                 "standard deviation; ± above is over test images within one run):", "",
                 "| model | runs (seeds) | mean log p(x) | sd across runs | published | difference |",
                 "|---|---|---:|---:|---:|---:|"]
        for name, n in counts.items():
            runs = [r for r in rows if r["row"] == name]
            if n < 2:
                continue
            v = [r["log_px"] for r in runs]
            sd = statistics.stdev(v)
            mean = statistics.fmean(v)
            seeds = ", ".join(str(r.get("train_seed", 0)) for r in runs)
            lines.append(f"| {runs[0]['title']} | {n} ({seeds}) | {mean:.2f} ± {sd / n ** 0.5:.2f} | {sd:.2f} "
                         f"| {fmt_value(runs[0]['published'], runs[0]['published_stderr'])} "
                         f"| {mean - runs[0]['published']:+.2f} |")
        text += "\n".join(lines) + "\n"
    return text


def paired(rows: list[dict]) -> str:
    """Paired differences of per-image log p(x) between every two runs evaluated on the same
    test images (same protocol, image count, k and evaluation seed), as a Markdown table; "" if
    there is no such pair.  Where two rows share two or more training seeds, a second table
    averages their per-seed paired differences over those seeds, with the standard error across
    seeds.

    Each run's own standard error is dominated by how much the images differ from one another;
    the difference between two models on the same images is known far more precisely -- for
    those two trained models.  Training noise only shows across seeds.
    """
    import statistics

    import numpy as np

    from vaegen.runs import evaluate as evaluation

    counts = _runs_per_row(rows)
    loaded = []
    for r in rows:
        path = pathlib.Path(r.get("per_example") or "")
        if path.suffix == ".npz" and path.exists():
            with np.load(path) as f:
                loaded.append((r, f["log_px"]))
    same_images = lambda a, va, b, vb: (a["protocol"] == b["protocol"] and va.shape == vb.shape
                                        and pathlib.Path(a["per_example"]).name == pathlib.Path(b["per_example"]).name)
    lines, per_seed = [], {}
    for i, (a, va) in enumerate(loaded):
        for b, vb in loaded[i + 1:]:
            if not same_images(a, va, b, vb):  # other data, other images, other k or seed
                continue
            d = evaluation.paired_difference(va, vb)
            lines.append(f"| {label(a, counts)} | {label(b, counts)} | {va.size} | {d['mean']:+.2f} ± {d['stderr']:.2f} "
                         f"| {a['log_px'] - b['log_px']:+.2f} ± {np.hypot(a['log_px_stderr'], b['log_px_stderr']):.2f} |")
            seed_a, seed_b = a.get("train_seed", 0), b.get("train_seed", 0)
            if a["row"] != b["row"] and seed_a == seed_b:
                per_seed.setdefault((a["row"], b["row"], a["title"], b["title"], va.size), []).append((seed_a, d["mean"]))
    if not lines:
        return ""
    text = "\n".join(["| model A | model B | test images | log p(x) A − B, paired | unpaired |",
                      "|---|---|---:|---:|---:|", *lines]) + "\n"
    across = [(key, v) for key, v in per_seed.items() if len(v) >= 2]
    if across:
        out = ["", "Over training runs (the paired difference of each common seed, averaged over the seeds ± "
               "standard error across them):", "",
               "| model A | model B | test images | seeds | log p(x) A − B | sd across seeds |",
               "|---|---|---:|---|---:|---:|"]
        for (_, _, title_a, title_b, n), v in across:
            diffs = [d for _, d in v]
            sd = statistics.stdev(diffs)
            out.append(f"| {title_a} | {title_b} | {n} | {', '.join(str(s) for s, _ in v)} "
                       f"| {statistics.fmean(diffs):+.2f} ± {sd / len(diffs) ** 0.5:.2f} | {sd:.2f} |")
        text += "\n".join(out) + "\n"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", default="fmnist", help="all, fmnist, mnist, or a comma-separated list of rows")
    parser.add_argument("--out", default="runs/reproduce", type=pathlib.Path)
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image (published: 5000)")
    parser.add_argument("--test-examples", type=int, default=0, help="evaluate on the first n test images (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--train-seeds", help="comma-separated training seeds: every row once per seed "
                        "(default: each config's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every row (marks the row as deviating)")
    parser.add_argument("--list", action="store_true", help="list the rows and their published values, then exit")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE.parents[1]))
    from vaegen.config.loading import parse_seeds
    from vaegen.errors import ConfigError
    from vaegen.studies import reproduce as reproduce

    if args.list:
        for name, row in reproduce.ROWS.items():
            print(f"{name:28s} {row.published:8.2f}  {row.title} — {row.source}")
        return 0
    if args.k < 1 or args.test_examples < 0:
        parser.error("--k must be >= 1 and --test-examples >= 0")
    names = select(args.rows, reproduce.ROWS)
    train_seeds: list[int | None] = [None]
    if args.train_seeds is not None:
        try:
            train_seeds = parse_seeds(args.train_seeds)
        except ValueError as e:
            parser.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, train_seed in [(n, x) for n in names for x in train_seeds]:
        print(f"== {name}: {reproduce.ROWS[name].title}" + ("" if train_seed is None else f", seed {train_seed}"),
              flush=True)
        try:
            r = run_row(name, args.out, list(args.set), args.k, args.test_examples, args.seed, train_seed)
        except ConfigError as e:
            parser.exit(2, f"run.py: error: {name}: {e}\n")
        results[r["run"]] = r
        print(f"   log p(x) = {r['log_px']:.2f} ± {r['log_px_stderr']:.2f} (published {r['published']:.2f}), "
              f"{r['epochs_trained']} epochs, {r['train_seconds'] / 60:.1f} min", flush=True)
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, results_path)
    # Each row's runs together, in the table's row order: the config's own seed first, then by seed.
    ordered = sorted(results.values(), key=lambda r: (list(reproduce.ROWS).index(r["row"]),
                                                      r.get("run", r["row"]) != r["row"], r.get("train_seed", 0)))
    (args.out / "table.md").write_text(table(ordered))
    print(table(ordered))
    pairs = paired(ordered)
    if pairs:
        (args.out / "paired.md").write_text(pairs)
        print(pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
