"""The reproduction table: train published models under their protocols, estimate their test
log p(x) by importance sampling (k = 5000), and tabulate them beside the published values.

Each row is a config in ``configs/<row>.py`` (settings in :mod:`vaegen.reproduce`).  For every row
asked for, the model is trained in ``--out/<row>`` (resuming a run that is already there, so an
interrupted table picks up where it stopped), its best checkpoint (early stopping) is evaluated on
the test set, and a line is added to::

    <out>/results.json   every row: published and measured values, settings, times, machine
    <out>/table.md       the Markdown table of README.md
    <out>/paired.md      paired differences of log p(x) between rows evaluated on the same images
    <out>/<row>/reproduce_eval_*.npz   the row's per-image log p(x) and ELBO (nats)

    python experiments/reproduce/run.py --rows fmnist --out runs/reproduce           # the Fashion-MNIST rows
    python experiments/reproduce/run.py --rows mnist_iwae_k50 --out runs/reproduce   # one row (needs TFDS MNIST)
    python experiments/reproduce/run.py --rows fmnist_vae_standard --out runs/budget \\
        --set train.num_epochs=100 --test-examples 2000                             # a budgeted run

``--set KEY=VALUE`` overrides a config key of every row asked for (recorded with the row, and the
row is marked as deviating from the published protocol); ``--test-examples`` evaluates on the first
n test images only (also marked).
"""

from __future__ import annotations

import argparse
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


def run_row(name: str, out: pathlib.Path, overrides: list[str], k: int, test_examples: int, seed: int) -> dict:
    import vaegen
    from vaegen import config as config_lib
    from vaegen import evaluation, reproduce

    row = reproduce.ROWS[name]
    config = row.config()
    config.lock()
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    workdir = out / name
    last = vaegen.train_and_evaluate(config, workdir) or {}
    run = vaegen.load(workdir)
    metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    settings = {"k": k, "test_examples": test_examples, "seed": seed, "epoch": run.epoch}
    eval_path = workdir / f"reproduce_eval_k{k}_n{test_examples}_s{seed}.json"
    per_example_path = eval_path.with_suffix(".npz")
    result = json.loads(eval_path.read_text()) if eval_path.exists() else None
    if result is None or result.get("reproduce_settings") != settings or not per_example_path.exists():
        t = time.perf_counter()
        per_example = {}
        result = vaegen.evaluate(run, num_samples=k, max_examples=test_examples, seed=seed,
                                 estimators="elbo,is", progress=True, per_example=per_example)
        result["reproduce_settings"] = settings
        result["eval_seconds"] = time.perf_counter() - t
        evaluation.write_per_example(per_example_path, per_example, result)
        evaluation.write_json(eval_path, result)
    m = result["metrics"]
    final = metrics[-1] if metrics else last
    return {
        "row": name,
        "title": row.title,
        "source": row.source,
        "protocol": config.data.protocol,
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
        "command": command(name, overrides, k, test_examples),
        "per_example": str(per_example_path),
    }


COSMETIC_KEYS = ("train.progress",)  # overrides that change nothing a run computes


def deviations(overrides, test_examples) -> list[str]:
    out = [f"--set {o}" for o in overrides if o.split("=", 1)[0].removeprefix("config.") not in COSMETIC_KEYS]
    if test_examples:
        out.append(f"first {test_examples} test images")
    return out


def command(name, overrides, k, test_examples) -> str:
    parts = ["python experiments/reproduce/run.py", f"--rows {name}"]
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


def table(rows: list[dict]) -> str:
    lines = ["| paper | model | protocol | published log p(x) | vaegen log p(x) (IS) | difference | trained | "
             "machine | command |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        diff = r["log_px"] - r["published"]
        trained = f"{r['epochs_trained']} epochs (best {r['best_epoch']}), {r['train_seconds'] / 60:.0f} min"
        if r["deviations"]:
            trained += "; " + ", ".join(r["deviations"])
        lines.append(
            f"| {r['source']} | {r['title']} | {r['protocol']} | {fmt_value(r['published'], r['published_stderr'])} "
            f"| {fmt_value(r['log_px'], r['log_px_stderr'])} (k = {r['k']}, {r['test_examples']} images) "
            f"| {diff:+.2f} | {trained} | {r['machine']} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def paired(rows: list[dict]) -> str:
    """Paired differences of per-image log p(x) between every two rows evaluated on the same
    test images (same protocol, image count, k and evaluation seed), as a Markdown table; "" if
    there is no such pair.

    Each row's own standard error is dominated by how much the images differ from one another;
    the difference between two models on the same images is known far more precisely.
    """
    import numpy as np

    from vaegen import evaluation

    loaded = []
    for r in rows:
        path = pathlib.Path(r.get("per_example") or "")
        if path.suffix == ".npz" and path.exists():
            with np.load(path) as f:
                loaded.append((r, f["log_px"]))
    lines = []
    for i, (a, va) in enumerate(loaded):
        for b, vb in loaded[i + 1:]:
            same = (a["protocol"] == b["protocol"] and va.shape == vb.shape
                    and pathlib.Path(a["per_example"]).name == pathlib.Path(b["per_example"]).name)
            if not same:  # other data, other images, other k or seed
                continue
            d = evaluation.paired_difference(va, vb)
            lines.append(f"| {a['title']} | {b['title']} | {va.size} | {d['mean']:+.2f} ± {d['stderr']:.2f} "
                         f"| {a['log_px'] - b['log_px']:+.2f} ± {np.hypot(a['log_px_stderr'], b['log_px_stderr']):.2f} |")
    if not lines:
        return ""
    return "\n".join(["| model A | model B | test images | log p(x) A − B, paired | unpaired |",
                       "|---|---|---:|---:|---:|", *lines]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", default="fmnist", help="all, fmnist, mnist, or a comma-separated list of rows")
    parser.add_argument("--out", default="runs/reproduce", type=pathlib.Path)
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image (published: 5000)")
    parser.add_argument("--test-examples", type=int, default=0, help="evaluate on the first n test images (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every row (marks the row as deviating)")
    parser.add_argument("--list", action="store_true", help="list the rows and their published values, then exit")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE.parents[1]))
    from vaegen import reproduce
    from vaegen.config import ConfigError

    if args.list:
        for name, row in reproduce.ROWS.items():
            print(f"{name:28s} {row.published:8.2f}  {row.title} — {row.source}")
        return 0
    if args.k < 1 or args.test_examples < 0:
        parser.error("--k must be >= 1 and --test-examples >= 0")
    names = select(args.rows, reproduce.ROWS)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in names:
        print(f"== {name}: {reproduce.ROWS[name].title}", flush=True)
        try:
            results[name] = run_row(name, args.out, list(args.set), args.k, args.test_examples, args.seed)
        except ConfigError as e:
            parser.exit(2, f"run.py: error: {name}: {e}\n")
        r = results[name]
        print(f"   log p(x) = {r['log_px']:.2f} ± {r['log_px_stderr']:.2f} (published {r['published']:.2f}), "
              f"{r['epochs_trained']} epochs, {r['train_seconds'] / 60:.1f} min", flush=True)
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, results_path)
    ordered = [results[n] for n in reproduce.ROWS if n in results]
    (args.out / "table.md").write_text(table(ordered))
    print(table(ordered))
    pairs = paired(ordered)
    if pairs:
        (args.out / "paired.md").write_text(pairs)
        print(pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
