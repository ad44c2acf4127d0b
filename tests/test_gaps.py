"""The gap decomposition against a linear-Gaussian model's closed forms; the `gaps` command and
semi-amortized training through the unchanged trainer."""

import csv
import dataclasses
import io
import json
import pathlib

import jax
import numpy as np
import pytest

from vaegen import cli
import vaegen
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.model import linear_gaussian as exact
from vaegen.registry import registry, setting
from vaegen.studies import gaps as gaps
from vaegen.inference import svi as inference
from vaegen.spec.gaps import GapsSettings
from vaegen.runs import run as run_lib
from vaegen.runs import training as train_lib

SETTINGS = inference.SVISettings(num_steps=200, learning_rate=0.1, num_samples=16)


@pytest.fixture(scope="module")
def lg():
    return exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)


@pytest.fixture(scope="module")
def xs(lg):
    return lg.sample(jax.random.key(7), 24).astype(np.float32)


def _run(lg, variables):
    return run_lib.Run(workdir=pathlib.Path("linear-gaussian"), spec=schema.to_spec(config_lib.load_config("default")),
                       model=lg.model(), variables=variables, event_shape=(lg.data_dim,), epoch=0, info={})


@pytest.mark.parametrize("encoder", ["poor", "optimal"])
@pytest.mark.slow
def test_gaps_match_the_closed_forms(lg, xs, encoder):
    rng = np.random.RandomState(0)
    if encoder == "poor":
        A, c, log_scale = rng.normal(size=(3, 6)) * 0.3, rng.normal(size=3) * 0.1, np.array([-0.5, -1.0, 0.2])
    else:  # the best diagonal q for every x: its amortization gap is exactly zero
        S = lg.posterior_covariance()
        A = S @ lg.W.T / lg.s**2
        c, log_scale = -A @ lg.b, 0.5 * np.log(lg.optimal_diagonal_variance())
    report = gaps.compute_gaps(_run(lg, lg.variables(A=A, c=c, log_scale=log_scale)), families=["diag", "fullcov"],
                               splits=["test"], data={"test": xs}, settings=SETTINGS, elbo_samples=400,
                               log_px_samples=2000, chunk_size=8, progress=False)
    rows = {r["family"]: r for r in report.rows}
    log_px = lg.log_marginal(xs)
    l_q = lg.elbo(xs, xs.astype(np.float64) @ A.T + c, np.exp(2 * log_scale))
    l_diag = lg.elbo(xs, lg.posterior_mean(xs), lg.optimal_diagonal_variance())
    exact_gaps = {"diag": {"approximation_gap": log_px - l_diag, "amortization_gap": l_diag - l_q},
                  "fullcov": {"approximation_gap": np.zeros_like(log_px), "amortization_gap": log_px - l_q}}
    a = report.per_example["test"]
    mean_mc_error = lambda *se: np.sqrt(sum(np.sum(e**2) for e in se)) / len(xs)  # MC error of a mean over x
    se_q = a["elbo_amortized_mc_stderr"]
    assert abs(rows["diag"]["elbo_amortized"]["mean"] - l_q.mean()) < 4 * mean_mc_error(se_q) + 1e-3
    for family, expected in exact_gaps.items():
        r, se_star = rows[family], a[f"elbo_star_mc_stderr/{family}"]
        assert abs(r["log_px"]["mean"] - log_px.mean()) < 0.01
        tolerance = {"approximation_gap": 4 * mean_mc_error(se_star) + 0.01,
                     "amortization_gap": 4 * mean_mc_error(se_star, se_q) + 0.01}
        for name, values in expected.items():
            assert abs(r[name]["mean"] - values.mean()) < tolerance[name], (family, name, r[name], values.mean())
        # The amortization gap is never negative beyond Monte Carlo error, example by example.
        per_example = a[f"elbo_star/{family}"] - a["elbo_amortized"]
        assert np.all(per_example > -4 * np.sqrt(se_star**2 + se_q**2) - 1e-3)
        assert r["inference_gap"]["mean"] == pytest.approx(r["approximation_gap"]["mean"] + r["amortization_gap"]["mean"])
    if encoder == "poor":
        assert rows["diag"]["amortization_gap"]["mean"] > 1.0
    assert rows["diag"]["approximation_gap"]["mean"] > 0.1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    w = tmp_path_factory.mktemp("tiny")
    train_lib.train_and_evaluate(config_lib.load_config("tiny", ["train.num_epochs=2"]), w)
    return w


@pytest.mark.slow
def test_gaps_command_writes_markdown_csv_and_json(tiny_run, capsys):
    code = cli.main(["gaps", "--workdir", str(tiny_run), "--family", "diag,fullcov", "--steps", "20", "--k", "50",
                     "--elbo-samples", "20", "--test-examples", "40", "--train-examples", "40", "--chunk-size", "20"])
    out = capsys.readouterr().out
    assert code == 0 and "amortization gap" in out
    d = tiny_run / "gaps"
    md = (d / "gaps.md").read_text()
    assert md.count("\n| test | 40 |") == 2 and md.count("\n| train | 40 |") == 2
    rows = list(csv.DictReader(io.StringIO((d / "gaps.csv").read_text())))
    assert [(r["split"], r["family"]) for r in rows] == [("test", "diag"), ("test", "fullcov"), ("train", "diag"),
                                                         ("train", "fullcov")]
    for r in rows:
        assert float(r["inference_gap"]) == pytest.approx(float(r["approximation_gap"]) + float(r["amortization_gap"]),
                                                          abs=1e-4)
        assert float(r["amortization_gap"]) > -3 * float(r["amortization_gap_stderr"])
    result = json.loads((d / "gaps.json").read_text())
    assert result["settings"]["svi"]["num_steps"] == 20 and result["settings"]["log_px_samples"] == 50
    per_example = np.load(d / "gaps_per_example.npz")
    assert per_example["test/elbo_star/diag"].shape == (40,)


@pytest.mark.parametrize("argv, message", [
    (["--family", "gaussian_mixture"], "unknown variational family 'gaussian_mixture'"),
    (["--split", "holdout"], "unknown split 'holdout'"),
    (["--steps", "-1"], "--steps: must be >= 0"),
    (["--lr", "0"], "learning_rate must be > 0"),
])
def test_gaps_bad_input_is_one_line(tiny_run, capsys, argv, message):
    try:
        code = cli.main(["gaps", "--workdir", str(tiny_run), "--test-examples", "4", *argv])
    except SystemExit as e:  # argument errors exit from the parser, with the same one line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_gaps_of_an_autoencoder_is_refused(tmp_path, capsys):
    train_lib.train_and_evaluate(config_lib.load_config("tiny:ae", ["train.num_epochs=1"]), tmp_path)
    code = cli.main(["gaps", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "autoencoder" in err and err.count("\n") == 1


@pytest.mark.slow
def test_semi_amortized_training_runs_through_the_trainer(tmp_path):
    cfg = config_lib.load_config("tiny", ["train.num_epochs=2", "objective=semi_amortized",
                                          "objective.steps=2", "inference.posterior=full_covariance_gaussian"])
    train_lib.train_and_evaluate(cfg, tmp_path)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        # The refined bound beats the encoder's, and is what the model is trained on.
        assert r["train/refinement_gain"] > 0 and r["validation/refinement_gain"] > 0
        assert r["train/objective"] == pytest.approx(r["train/elbo"], rel=1e-6)
    assert lines[-1]["validation/elbo"] > lines[0]["validation/elbo"]


@pytest.mark.parametrize("overrides, message", [
    (["objective=semi_amortized", "objective.gradient=backprop"], "objective.gradient"),
    (["gaps.families=diag,mixture"], "gaps.families"),
])
def test_new_config_keys_are_validated(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config("tiny", overrides)
    with pytest.raises(config_lib.ConfigError, match="semi_amortized"):
        config_lib.load_config("tiny:ae", ["objective=semi_amortized"])


def test_runs_trained_before_new_config_keys_still_load(tiny_run, monkeypatch):
    """Adding keys to the schema (as this library's amortization keys were) must not orphan older runs."""
    # A later version gives the gaps section and the ELBO a new setting each.
    @dataclasses.dataclass(frozen=True)
    class GapsWithANewKey(GapsSettings):
        some_future_option: int = setting(1, "a setting added after the run was trained")

    @dataclasses.dataclass(frozen=True)
    class RunSpecWithANewKey(schema.RunSpec):
        gaps: GapsWithANewKey = dataclasses.field(default_factory=GapsWithANewKey)

    objectives = registry("objective")
    elbo = objectives.get("elbo")

    @dataclasses.dataclass(frozen=True)
    class ELBOWithANewKey(elbo.settings):
        some_future_option: float = setting(1.0, "a setting added after the run was trained")

    monkeypatch.setattr(schema, "RunSpec", RunSpecWithANewKey)
    monkeypatch.setitem(objectives._components, "elbo", dataclasses.replace(elbo, settings=ELBOWithANewKey))
    run = vaegen.load(tiny_run)
    assert run.config.objective.some_future_option == 1.0 and run.epoch == 2
    assert run.config.gaps.some_future_option == 1
