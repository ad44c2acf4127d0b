"""The amortization study runner (experiments/amortization/run.py) end to end on a two-cell grid of
the tiny digits preset: staged training, the gap decomposition after each stage, the tables and
figures, and the reuse of finished stages."""

import csv
import importlib.util
import io
import json
import itertools
import math
import pathlib
import re
import textwrap

import pytest

pytestmark = pytest.mark.slow  # the study runner end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "amortization" / "run.py"
QUANTITIES = ("log_px", "elbo_star", "elbo_amortized", "approximation_gap", "amortization_gap")

# Two cells of the tiny preset, whose training programs are those of the tiny runs of other tests
# (the plain preset, and test_faults.py's 13 steps per device call), so the suite compiles them once.
# 13 steps per call leave the parameters bitwise unchanged: both cells measure the same model.
GRID = textwrap.dedent('''
    EPOCHS = (1, 2)
    GAPS = ["gaps.families=diag", "gaps.num_steps=10", "gaps.elbo_samples=10", "gaps.log_px_samples=20",
            "gaps.test_examples=20", "gaps.train_examples=20", "gaps.chunk_size=20", "train.keep_checkpoints=1"]
    VARIANTS = {
        "base": ("baseline", "tiny", []),
        "calls_13": ("training", "13 steps per device call", ["train.steps_per_call=13"]),
    }


    def get_config(arg=None):
        from vaegen.config import loading as config_lib

        name = arg or "base"
        return config_lib.load_config("tiny", GAPS + VARIANTS[name][2] + [f"train.num_epochs={EPOCHS[-1]}"])
''')


def _load_script():
    spec = importlib.util.spec_from_file_location("_amortization_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out):
    return list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))


def _stage_files(out):
    """Every file of every cell, with the modification times of what a stage writes (metrics,
    checkpoints, gap tables): a stage run again would rewrite those, if with the same bytes."""
    files = {}
    for cell in ("base", "calls_13"):
        for p in sorted((out / cell).rglob("*")):
            if p.is_file():
                rel = p.relative_to(out / cell)
                stage = rel.parts[0] in ("checkpoints", "gaps") or rel.name == "metrics.jsonl"
                files[f"{cell}/{rel}"] = (p.read_bytes(), p.stat().st_mtime_ns if stage else None)
    return files


def test_study_runner_trains_measures_tabulates_and_resumes(tmp_path, capsys):
    grid = tmp_path / "grid.py"
    grid.write_text(GRID)
    out = tmp_path / "out"
    run = _load_script()
    argv = ["--grid", str(grid), "--out", str(out)]
    with pytest.raises(SystemExit, match="unknown cells"):
        run.main([*argv, "--only", "nope"])
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Final epoch (2):" in printed and str(out / "results.md") in printed

    # results.csv: every (cell, epoch, split) of the grid once, family diag, finite gaps that add up.
    rows = _rows(out)
    assert [(r["cell"], int(r["epoch"]), r["split"]) for r in rows] == list(
        itertools.product(("base", "calls_13"), (1, 2), ("test", "train")))
    for r in rows:
        assert r["family"] == "diag" and int(r["num_examples"]) == 20
        assert r["axis"] == {"base": "baseline", "calls_13": "training"}[r["cell"]]
        values = {q: float(r[q]) for q in QUANTITIES}
        assert all(math.isfinite(v) for v in values.values()), r
        assert all(math.isfinite(float(r[f"{q}_stderr"])) and float(r[f"{q}_stderr"]) >= 0 for q in QUANTITIES), r
        assert -100 < values["log_px"] < 0 and math.isfinite(float(r["validation_elbo"]))
        assert values["approximation_gap"] == pytest.approx(values["log_px"] - values["elbo_star"], abs=1e-3)
        assert values["amortization_gap"] == pytest.approx(values["elbo_star"] - values["elbo_amortized"], abs=1e-3)
        assert float(r["train_seconds"]) > 0
    # The cell trained in 13-step device calls is the same model, measured the same way.
    by_cell = {c: [{k: r[k] for k in r if k not in ("cell", "axis", "value", "train_seconds")} for r in rows
                   if r["cell"] == c] for c in ("base", "calls_13")}
    assert by_cell["base"] == by_cell["calls_13"]
    for cell, epoch in itertools.product(("base", "calls_13"), (1, 2)):
        assert (out / cell / "gaps" / f"epoch_{epoch}" / "gaps.json").is_file()

    # results.md: the final-epoch table (a line per cell and split) and the gaps over epochs (a line per cell).
    md = (out / "results.md").read_text()
    assert md.startswith("Amortization study (grid.py)") and "Final epoch (2):" in md
    assert "Gaps over training (family diag; test / train):" in md
    for cell in ("base", "calls_13"):
        assert sum(l.startswith(f"| {cell} |") for l in md.splitlines()) == 3, cell

    # The figures the script's documentation lists.
    figures = re.findall(r"figures/\S+\.png", run.__doc__)
    assert figures
    for f in figures:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f

    # A rerun trains and measures nothing again, and writes the same tables.
    before, csv_before = _stage_files(out), (out / "results.csv").read_text()
    assert run.main(argv) == 0
    assert _stage_files(out) == before
    assert (out / "results.csv").read_text() == csv_before

    # --train-seeds adds training runs of a cell: seed 0 is the run above (reused), seed 1 a new one on
    # the same images; the tables then give each cell's mean and spread over its runs.
    for bad in ("0,x", "-1"):
        with pytest.raises(SystemExit, match="--train-seeds"):
            run.main([*argv, "--train-seeds", bad])
    assert run.main([*argv, "--only", "base", "--train-seeds", "0,1"]) == 0
    assert _stage_files(out) == before
    assert (out / "base.seed1" / "gaps" / "epoch_2" / "gaps.json").is_file()
    assert json.loads((out / "base.seed1" / "config.json").read_text())["seed"] == 1
    rows2 = _rows(out)
    assert sorted({(r["cell"], r["seed"]) for r in rows2}) == [("base", "0"), ("base", "1"), ("calls_13", "0")]
    assert [r for r in rows2 if r["seed"] == "0"] == rows
    final = {(r["seed"], r["split"]): r for r in rows2 if r["cell"] == "base" and r["epoch"] == "2"}
    assert final[("0", "test")]["log_px"] != final[("1", "test")]["log_px"]
    md = (out / "results.md").read_text()
    assert "| base (seed 0) |" in md and "| base (seed 1) |" in md and "Over training runs" in md
    across = [l for l in md.splitlines() if l.startswith("| base | test | diag | 2 |")]
    assert len(across) == 1
    q = "amortization_gap"
    gaps = [float(final[(s, "test")][q]) for s in ("0", "1")]
    mean, se = (float(v) for v in re.search(r"\| 2 \|(?: [^|]+\|){4} (-?[\d.]+) ± ([\d.]+) \|", across[0]).groups())
    assert mean == pytest.approx(sum(gaps) / 2, abs=0.006)
    assert se == pytest.approx(abs(gaps[0] - gaps[1]) / 2, abs=0.006)   # sd / sqrt(2) of two values
