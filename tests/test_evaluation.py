"""`vaegen evaluate`: estimators chosen on the command line, eval.json with settings, one-line errors."""

import dataclasses
import json

import numpy as np
import pytest

import vaegen
from vaegen import cli
from vaegen.config import loading as config_lib
from vaegen.spec.eval import parse_estimators
from vaegen.runs import evaluate as evaluation
from vaegen.runs import training as train_lib


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
    w = tmp_path_factory.mktemp("vae")
    train_lib.train_and_evaluate(config_lib.load_config("tiny", ["train.num_epochs=2"]), w)
    return w


def _run(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_evaluate_every_estimator_from_the_command_line(vae_workdir, capsys):
    out_path = vae_workdir / "all.json"
    code, out, _ = _run(capsys, "evaluate", "--workdir", vae_workdir, "--estimators", "all", "--k", 64, "--ks", "1,8",
                        "--ais-steps", 30, "--ais-chains", 2, "--leapfrog", 2, "--ais-examples", 6,
                        "--bdmc-examples", 6, "--max-examples", 60, "--seed", 3, "--out", out_path)
    assert code == 0
    for row in ("elbo", "iwae_1", "iwae_8", "iwae_64", "log_px", "log_px_ais", "bdmc_lower", "bdmc_upper",
                "bdmc_gap", "active units", "I_q(x; z)", "posterior collapse"):
        assert row in out, row
    result = json.loads(out_path.read_text())
    assert result["seed"] == 3 and result["num_examples"] == 60 and result["estimators"] == list(parse_estimators("all"))
    s = result["settings"]
    assert s["num_samples"] == 64 and s["ks"] == [1, 8]
    assert s["ais"]["num_steps"] == 30 and s["ais"]["num_chains"] == 2 and s["ais"]["num_leapfrog"] == 2
    assert s["ais"]["schedule"] == "sigmoid" and s["ais"]["start"] == "prior" and s["bdmc_examples"] == 6
    m = result["metrics"]
    assert m["log_px_ais"]["n"] == 6 and m["bdmc_gap"]["n"] == 6 and m["log_px"]["n"] == 60
    # ELBO <= IWAE_8 <= IWAE_64 = IS estimate, up to Monte Carlo error.
    tol = 3 * m["iwae_1"]["stderr"] / np.sqrt(60)
    assert m["iwae_1"]["mean"] <= m["iwae_8"]["mean"] + tol <= m["iwae_64"]["mean"] + 2 * tol
    assert m["iwae_64"]["mean"] == pytest.approx(m["log_px"]["mean"])
    assert m["elbo"]["mean"] == pytest.approx(m["reconstruction"]["mean"] - m["kl"]["mean"], abs=1e-3)
    d = result["diagnostics"]
    assert d["rate"]["mean"] == pytest.approx(m["kl"]["mean"], rel=1e-4)
    assert d["latent_dim"] == 4 and len(d["kl_per_dim"]) == 4
    assert set(result["timings"]) == {"elbo", "is", "ais", "bdmc", "diagnostics"}


@pytest.mark.slow
def test_per_example_values_back_every_reported_mean(vae_workdir, capsys):
    npz, out_path = vae_workdir / "per_example.npz", vae_workdir / "pe.json"
    code, out, _ = _run(capsys, "evaluate", "--workdir", vae_workdir, "--estimators", "elbo,iwae,is,ais", "--k", 16,
                        "--ks", "1,4", "--ais-steps", 10, "--ais-chains", 2, "--leapfrog", 2, "--ais-examples", 5,
                        "--max-examples", 30, "--out", out_path, "--per-example", npz)
    assert code == 0 and f"wrote {npz}" in out
    m = json.loads(out_path.read_text())["metrics"]
    with np.load(npz) as f:
        assert f["example_index"].tolist() == list(range(30))
        assert json.loads(str(f["evaluation"]))["num_examples"] == 30
        for name in ("elbo", "reconstruction", "kl", "iwae_1", "iwae_4", "iwae_16", "log_px", "is_ess", "log_px_ais"):
            values = f[name]
            assert values.dtype == np.float64 and values.shape == ((5,) if name == "log_px_ais" else (30,)), name
            assert values.mean() == pytest.approx(m[name]["mean"], rel=1e-12), name
            assert evaluation.summarize(values, None)["stderr"] == pytest.approx(m[name]["stderr"], rel=1e-12)
        # Each image's ELBO is at most its IWAE_16 up to Monte Carlo error: a paired comparison.
        d = evaluation.paired_difference(f["log_px"], f["elbo"])
    assert d["n"] == 30 and d["mean"] > 0 and d["stderr"] < m["log_px"]["stderr"]
    code, _, err = _run(capsys, "evaluate", "--workdir", vae_workdir, "--per-example", vae_workdir / "pe.csv")
    assert code == 2 and "--per-example writes an .npz file" in err and err.count("\n") == 1


def test_paired_difference_is_the_mean_and_standard_error_of_the_differences():
    rng = np.random.RandomState(0)
    per_image = rng.normal(-230.0, 50.0, size=400)              # images differ far more than the models
    a, b = per_image + 1.0 + rng.normal(0, 0.1, 400), per_image
    d = evaluation.paired_difference(a, b, num_dims=784)
    diff = a - b
    assert d["mean"] == pytest.approx(diff.mean()) and d["stderr"] == pytest.approx(diff.std(ddof=1) / 20)
    assert d["bits_per_dim"] == pytest.approx(diff.mean() / (784 * np.log(2)))
    assert d["stderr"] < 0.01 < evaluation.summarize(a, None)["stderr"]
    with pytest.raises(ValueError, match="same examples"):
        evaluation.paired_difference(a, b[:-1])


@pytest.mark.slow
def test_results_do_not_depend_on_batch_size(vae_workdir):
    run = vaegen.load(vae_workdir)
    settings = dataclasses.replace(run.spec.eval, estimators="is", num_samples=32)
    kw = dict(max_examples=40, seed=1)
    a = evaluation.evaluate(run, settings, **kw)
    b = evaluation.evaluate(run, dataclasses.replace(settings, chunk_size=5), batch_size=7, **kw)
    assert a["metrics"]["log_px"]["mean"] == pytest.approx(b["metrics"]["log_px"]["mean"], rel=1e-6)
    assert a["metrics"]["log_px"]["stderr"] == pytest.approx(b["metrics"]["log_px"]["stderr"], rel=1e-4)
    c = evaluation.evaluate(run, settings, **dict(kw, seed=2))
    assert c["metrics"]["log_px"]["mean"] != a["metrics"]["log_px"]["mean"]


@pytest.mark.parametrize("args, message", [
    (["--estimators", "elbo,foo"], "unknown estimator(s) foo"),
    (["--ks", "1,100", "--k", "10"], "between 1 and the number of importance samples"),
    (["--ais-steps", "0", "--estimators", "ais"], "argument --ais-num-steps/--ais-steps: must be > 0, got 0"),
    (["--estimators", "ais", "--step-size", "-0.1"], "argument --ais-step-size/--step-size: must be > 0, got -0.1"),
    (["--estimators", "ais", "--schedule", "linear", "--target-accept", "1.5"], "target-accept: must be in (0, 1)"),
])
def test_bad_estimator_settings_are_one_clear_line(vae_workdir, capsys, args, message):
    out_path = vae_workdir / "bad.json"
    code, _, err = _run(capsys, "evaluate", "--workdir", vae_workdir, "--out", out_path, *args)
    assert code == 2 and err.startswith("vaegen: error: ") and message in err and err.count("\n") == 1
    assert not out_path.exists()


def test_bad_eval_config_keys_are_refused():
    with pytest.raises(config_lib.ConfigError, match="unknown estimator"):
        config_lib.load_config("tiny", ["eval.estimators=elbo,aiss"])
    with pytest.raises(config_lib.ConfigError, match="eval.ais"):
        config_lib.load_config("tiny", ["eval.ais.num_chains=0"])
