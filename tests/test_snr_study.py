"""The gradient-estimator study runner (experiments/snr/run.py) end to end on a two-cell preset of
the tiny digits model: training, the SNR rows, the trained models' log p(x) and gaps, the tables
with their provenance, the figure, and the reuse of everything on a rerun."""

import importlib.util
import json
import math
import pathlib
import textwrap

import pytest

pytestmark = pytest.mark.slow  # the study runner end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "snr" / "run.py"

PRESET = textwrap.dedent('''
    SNR_MODEL = "iwae_reparam"
    SNR_KS = (1, 4)
    SNR_ESTIMATORS = ("reparam", "dreg")
    SNR_EXAMPLES = 2
    SNR_DRAWS = 20
    SNR_BLOCKS = 2
    GAPS = ["gaps.families=diag", "gaps.num_steps=10", "gaps.elbo_samples=10", "gaps.log_px_samples=20",
            "gaps.test_examples=20", "gaps.train_examples=0", "gaps.chunk_size=20", "train.num_epochs=1",
            "objective=iwae", "objective.num_samples=2"]
    VARIANTS = {
        "iwae_reparam": ("reparam", "IWAE_2", []),
        "iwae_dreg": ("dreg", "IWAE_2, DReG", ["objective.estimator=dreg"]),
    }


    def get_config(arg=None):
        from vaegen.config import loading as config_lib

        return config_lib.load_config("tiny", GAPS + VARIANTS[arg or SNR_MODEL][2])
''')


def _load_script():
    spec = importlib.util.spec_from_file_location("_snr_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_runner_measures_snr_trains_tabulates_and_reuses(tmp_path, capsys):
    preset = tmp_path / "preset.py"
    preset.write_text(PRESET)
    out = tmp_path / "out"
    run = _load_script()
    argv = ["--preset", str(preset), "--out", str(out), "--figure", str(tmp_path / "copy.png")]
    assert run.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert {(r["estimator"], r["k"], r["group"]) for r in result["snr"]} == {
        (e, k, g) for e in ("reparam", "dreg") for k in (1, 4) for g in ("encoder", "decoder")}
    for r in result["snr"] + result["models"]:
        assert r["commit"] and r["machine"] and r["command"].startswith("python experiments/snr/run.py")
    for r in result["snr"]:
        assert r["mean"] > 0 and r["mean_stderr"] > 0 and r["num_draws"] == 20 and r["num_examples"] == 2
    # At k = 1 DReG is STL: a different encoder gradient from IWAE's, the same decoder gradient.
    snr = {(r["estimator"], r["k"], r["group"]): r["mean"] for r in result["snr"]}
    assert math.isclose(snr[("dreg", 1, "decoder")], snr[("reparam", 1, "decoder")], rel_tol=1e-6)
    assert snr[("dreg", 1, "encoder")] != snr[("reparam", 1, "encoder")]
    assert [m["cell"] for m in result["models"]] == ["iwae_reparam", "iwae_dreg"]
    for m in result["models"]:
        assert -100 < m["log_px"]["mean"] < 0 and m["num_examples"] == 20
        assert math.isclose(m["amortization_gap"]["mean"], m["elbo_star"]["mean"] - m["elbo_amortized"]["mean"],
                            abs_tol=1e-3)
    md = (out / "results.md").read_text()
    assert md.count("commit ") >= 2 and "| 4 |" in md and "| iwae_dreg |" in md
    for figure in (out / "figures" / "snr.png", tmp_path / "copy.png"):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    capsys.readouterr()
    before = (out / "snr.json").stat().st_mtime_ns, (out / "iwae_dreg" / "gaps" / "gaps.json").stat().st_mtime_ns
    assert run.main(argv) == 0
    assert "SNR: cached" in capsys.readouterr().out
    assert before == ((out / "snr.json").stat().st_mtime_ns, (out / "iwae_dreg" / "gaps" / "gaps.json").stat().st_mtime_ns)
