"""The gradient-estimator study: the encoder's gradient signal-to-noise ratio against k (the shape of
Rainforth et al. 2018's figure), and models trained with each estimator.

For a preset (``configs/quick.py``, ``configs/full.py``, or any file with the same names):

(a) the model of cell ``SNR_MODEL`` is trained, and at its final parameters the SNR of IWAE_k's
    minibatch gradient is measured for every k in ``SNR_KS`` and estimator in ``SNR_ESTIMATORS``
    (reparam = IWAE's own, stl, dreg), per parameter and summarised per group (encoder =
    ``params/posterior``, decoder = ``params/likelihood``), with jackknife standard errors
    (:func:`vaegen.estimators.snr.snr_over_k`), on a fixed minibatch of ``SNR_EXAMPLES`` test images;
(b) every cell is trained, and its test log p(x) (importance sampling, best of the amortized q
    and q*), L[q], L[q*] and amortization gap L[q*] - L[q] are measured on the preset's test
    images (:func:`vaegen.studies.gaps.compute_gaps`).

Outputs in ``--out``::

    <cell>/                  the cell's run (a vaegen workdir) and <cell>/gaps/ its measurement
    snr.json                 the SNR rows (cached: a rerun with the same settings reuses them)
    results.md, results.json both tables; every number with the command, commit and machine
    figures/snr.png          encoder and decoder SNR against k, one line per estimator, ± s.e.

Everything is cached: a rerun skips finished training, measurements and SNR rows.

    python experiments/snr/run.py --preset quick --out runs/snr/quick
    python experiments/snr/run.py --preset full --out runs/snr/full        # a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABELS = {"reparam": "IWAE (reparam)", "stl": "STL", "dreg": "DReG"}
GAP_QUANTITIES = ("log_px", "elbo_amortized", "elbo_star", "amortization_gap", "approximation_gap")


def load_preset(spec: str):
    path = pathlib.Path(spec)
    if not path.suffix:
        path = HERE / "configs" / f"{spec}.py"
    if not path.is_file():
        raise SystemExit(f"run.py: error: no preset {spec!r} (looked for {path})")
    module_spec = importlib.util.spec_from_file_location(f"_snr_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.PATH = str(path)
    return module


def provenance(argv: list[str]) -> dict:
    """The command (this script with ``argv``), the commit (with ``+dirty`` if the checkout has
    uncommitted changes to tracked files) and the machine of this invocation."""
    import jax

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    machine = (f"{cpu}, {os.cpu_count()} cores" if jax.default_backend() == "cpu"
               else f"{kind} x{jax.device_count()} ({cpu} host)")
    return {"command": " ".join(["python", os.path.relpath(__file__, ROOT), *argv]), "commit": commit,
            "machine": machine, "backend": jax.default_backend(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def train_cell(preset, name: str, out: pathlib.Path, splits_cache: dict, log) -> tuple[object, float]:
    """Trains cell ``name`` (resuming where a previous invocation stopped): ``(spec, train seconds)``."""
    from vaegen.config import schema
    from vaegen.registry import to_mapping
    from vaegen.train import trainer as train_lib

    spec = schema.to_spec(preset.get_config(name))
    key = json.dumps(to_mapping(spec.data), sort_keys=True)
    if key not in splits_cache:
        splits_cache[key] = train_lib.load_data(spec)
    t = time.perf_counter()
    train_lib.train_and_evaluate(spec, out / name, splits=splits_cache[key])
    metrics = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    seconds = sum(m.get("epoch_seconds", 0.0) + m.get("compile_seconds", 0.0) for m in metrics)
    log(f"[{name}] trained ({time.perf_counter() - t:.0f} s now, {seconds:.0f} s of training in all)")
    return spec, seconds


def measure_snr(preset, out: pathlib.Path, log) -> list[dict]:
    """The SNR rows at the parameters of ``preset.SNR_MODEL`` (cached in ``snr.json``)."""
    import jax

    import vaegen
    from vaegen.estimators import snr
    from vaegen.studies import gaps

    settings = {"model": preset.SNR_MODEL, "ks": list(preset.SNR_KS), "estimators": list(preset.SNR_ESTIMATORS),
                "examples": preset.SNR_EXAMPLES, "draws": preset.SNR_DRAWS, "blocks": preset.SNR_BLOCKS}
    path = out / "snr.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("settings") == settings:
            log("SNR: cached")
            return cached["rows"]
    run = vaegen.load(out / preset.SNR_MODEL)
    xs = gaps.split_data(run, "test", preset.SNR_EXAMPLES)
    t = time.perf_counter()
    rows = snr.snr_over_k(run.model, run.variables, xs, jax.random.key(0), estimators=preset.SNR_ESTIMATORS,
                          ks=preset.SNR_KS, num_draws=preset.SNR_DRAWS, num_blocks=preset.SNR_BLOCKS, progress=log)
    info = {"settings": settings, "epoch": run.epoch, "seconds": time.perf_counter() - t, "rows": rows}
    path.write_text(json.dumps(info, indent=2) + "\n")
    return rows


def measure_cell(preset, name: str, out: pathlib.Path, spec, log) -> dict:
    """Test log p(x), L[q], L[q*] and the gaps of a trained cell (cached in ``<cell>/gaps``)."""
    import vaegen
    from vaegen.studies import gaps as gaps_lib

    gap_dir = out / name / "gaps"
    if not (gap_dir / "gaps.json").exists():
        t = time.perf_counter()
        report = gaps_lib.compute_gaps(vaegen.load(out / name), progress=False, **gaps_lib.settings_from_spec(spec))
        gaps_lib.write_tables(report, gap_dir, per_example=False)
        log(f"[{name}] log p(x) and gaps ({time.perf_counter() - t:.0f} s)")
    result = json.loads((gap_dir / "gaps.json").read_text())
    row = next(r for r in result["rows"] if r["split"] == "test")
    return {q: row[q] for q in GAP_QUANTITIES} | {"num_examples": row["num_examples"],
                                                  "log_px_samples": result["settings"]["log_px_samples"],
                                                  "svi_steps": result["settings"]["svi"]["num_steps"]}


def _pm(m: dict, digits: int = 2) -> str:
    return f"{m['mean']:.{digits}f} ± {m['stderr']:.{digits}f}"


def write_results(preset, out: pathlib.Path, snr_rows: list[dict], cells: list[dict], prov: dict) -> None:
    where = f"command `{prov['command']}`, commit {prov['commit']}, {prov['machine']}"
    ks = list(preset.SNR_KS)
    ests = list(preset.SNR_ESTIMATORS)
    snr_cell = {(r["estimator"], r["k"], r["group"]): r for r in snr_rows}
    first = snr_rows[0] if snr_rows else {"num_examples": "?", "num_draws": "?"}
    lines = [f"# Gradient-estimator study ({pathlib.Path(preset.PATH).name})", "",
             f"Gradient SNR of IWAE_k at the parameters of `{preset.SNR_MODEL}` after training: mean over the "
             f"group's parameters of |E g| / sd(g), {first['num_draws']} draws of the gradient on a fixed minibatch "
             f"of {first['num_examples']} test images, ± jackknife standard error ({where}).", "",
             "| k | " + " | ".join(f"encoder {LABELS.get(e, e)}" for e in ests) + " | "
             + " | ".join(f"decoder {LABELS.get(e, e)}" for e in ests) + " |",
             "|---:|" + "---:|" * (2 * len(ests))]
    for k in ks:
        cells_ = [snr_cell.get((e, k, g)) for g in ("encoder", "decoder") for e in ests]
        lines.append(f"| {k} | " + " | ".join(f"{c['mean']:.3f} ± {c['mean_stderr']:.3f}" if c else "" for c in cells_)
                     + " |")
    lines += ["", f"Trained models: test split, {cells[0]['num_examples'] if cells else '?'} images, nats per image, "
              "mean ± standard error over the images; log p(x) by importance sampling "
              f"(k = {cells[0]['log_px_samples'] if cells else '?'}, best of the amortized q and q*), q* by "
              f"{cells[0]['svi_steps'] if cells else '?'} Adam steps per image ({where}).", "",
              "| cell | objective | estimator | log p(x) | L[q] | L[q*] | amortization gap | approximation gap "
              "| train s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c['cell']} | {c['what']} | {c['estimator']} | {_pm(c['log_px'])} | {_pm(c['elbo_amortized'])} "
                     f"| {_pm(c['elbo_star'])} | {_pm(c['amortization_gap'])} | {_pm(c['approximation_gap'])} "
                     f"| {c['train_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    stamp = {k: prov[k] for k in ("command", "commit", "machine")}
    (out / "results.json").write_text(json.dumps({
        "provenance": prov, "preset": preset.PATH,
        "snr": [{**r, **stamp} for r in snr_rows],
        "models": [{**c, **stamp} for c in cells]}, indent=2) + "\n")


def plot(preset, out: pathlib.Path, snr_rows: list[dict], prov: dict, path: pathlib.Path | None = None) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = path or out / "figures" / "snr.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8.4, 3.4))
    for i, group in enumerate(("encoder", "decoder")):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, est in enumerate(preset.SNR_ESTIMATORS):
            pts = sorted((r["k"], r["mean"], r["mean_stderr"]) for r in snr_rows
                         if r["estimator"] == est and r["group"] == group)
            if pts:
                k, m, s = zip(*pts)
                ax.errorbar(k, m, yerr=s, marker="o", ms=3, capsize=2, color=f"C{j}", label=LABELS.get(est, est))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("k (importance samples)")
        ax.set_ylabel("mean SNR over parameters")
        ax.set_title(f"{group} ({'q, phi' if group == 'encoder' else 'p, theta'})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"IWAE_k gradient SNR, Fashion-MNIST ({pathlib.Path(preset.PATH).stem} preset, commit "
                 f"{prov['commit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="The gradient SNR against k, and models trained with each estimator.")
    p.add_argument("--preset", default="quick", help="quick, full, or a path to a preset file")
    p.add_argument("--out", help="output directory (default runs/snr/<preset>)")
    p.add_argument("--figure", help="also write the figure here (e.g. docs/figures/snr_quick.png)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    preset = load_preset(args.preset)
    out = pathlib.Path(args.out or f"runs/snr/{pathlib.Path(preset.PATH).stem}")
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    log = lambda msg: print(f"{time.perf_counter() - t0:7.0f}s {msg}", flush=True)
    prov = provenance(argv)
    splits_cache: dict = {}
    order = [preset.SNR_MODEL] + [n for n in preset.VARIANTS if n != preset.SNR_MODEL]
    trained = {}
    for name in order:
        trained[name] = train_cell(preset, name, out, splits_cache, log)
        if name == preset.SNR_MODEL:
            snr_rows = measure_snr(preset, out, log)
    cells = []
    for name in preset.VARIANTS:
        spec, seconds = trained[name]
        estimator, what, _ = preset.VARIANTS[name]
        cells.append({"cell": name, "what": what, "estimator": estimator, "train_seconds": seconds,
                      **measure_cell(preset, name, out, spec, log)})
    prov["seconds"] = time.perf_counter() - t0
    write_results(preset, out, snr_rows, cells, prov)
    figure = plot(preset, out, snr_rows, prov)
    if args.figure:
        plot(preset, out, snr_rows, prov, pathlib.Path(args.figure))
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {figure}; {prov['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    sys.exit(main())
