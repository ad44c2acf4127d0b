"""The headline study: every variant through the one trainer, every row measured, the report built."""

import dataclasses
import json

import numpy as np
import pytest

import jax

import vaegen
from vaegen import cli
from vaegen.studies import compare as compare
from vaegen.studies import compare_study
from vaegen.config import loading as config
from vaegen.config import schema
from vaegen.objectives.bounds import ELBOSettings


def test_variants_share_networks_and_likelihood():
    study = compare.load_study("quick")
    base = config.load_config(study.base)
    shared = ("model.decoder", "inference.encoder", "model.likelihood", "data.", "optim.", "train.batch_size")
    names = set()
    for v in compare.variants(study):
        cfg = schema.to_config(compare.model_spec(study, v))
        names.add(v.name)
        diff = {d.split(":")[0] for d in config.differences(
            base, cfg, ignore=("train.num_epochs", "train.progress", "train.checkpoint_every_epochs"))}
        # A component chosen anew replaces its whole section: the settings of the one it replaces
        # (the ELBO's analytic_kl, beta, ...; the diagonal q's log-scale bounds) differ too.
        elbo_settings = {f"objective.{f.name}" for f in dataclasses.fields(ELBOSettings)}
        if v.group == "made":  # no encoder or decoder: only the MADE keys and the objective differ
            assert {"model.kind.name", "objective.name"} <= diff <= {
                "model.kind.name", "objective.name", "model.kind.hidden", "model.kind.activation",
                "model.kind.ordering", "model.kind.ordering_seed", *elbo_settings}, diff
            continue
        assert not [d for d in diff if d.startswith(shared)], (v.name, diff)
        if v.group == "discrete":   # a categorical q and p, its objective with a gradient estimator, M K dimensions
            assert {"model.latent_dim", "model.prior.name", "inference.posterior.name", "objective.name"} <= diff
            assert all(d.startswith(("model.latent_dim", "model.prior.", "inference.posterior.", "objective."))
                       for d in diff), diff
            continue
        assert diff <= {"model.prior.name", "inference.posterior.name", "inference.posterior.scale",
                        "inference.posterior.min_log_scale", "inference.posterior.max_log_scale", "objective.name",
                        "objective.beta", "objective.code_penalty", "objective.decoder_l2", "objective.corruption",
                        "objective.noise_level", "objective.walkback_steps", "objective.walkback_continue",
                        "model.latent_dim", "objective.mmd_weight", "objective.kernel", "objective.kernel_scales",
                        "objective.prior_variance", "objective.adversarial_weight", "objective.discriminator_hidden",
                        "objective.discriminator_learning_rate", "objective.discriminator_b1", "objective.commitment",
                        *{f"model.kind.{k}" for k in ("name", "codebook_size", "code_dim", "ema", "ema_decay", "ema_epsilon",
                                                      "dead_code_threshold", "init_scale")}, *elbo_settings}, (v.name, diff)
        assert ("model.latent_dim" in diff) == (v.group == "map")
    assert {"vae", "beta_0.1", "beta_4", "fixed_scale_0.1_beta_1", "fixed_scale_0.01_beta_1", "ae", "rae", "wae", "aae",
            "vq", "dvae", "dae", "made", "vae_2d", "ae_2d"} <= names
    row_names = [r.name for r in compare.rows(study)]
    assert {"data", "vae", "vae+gmm", "ae", "ae+n01", "ae+gmm", "rae+n01", "rae+gmm", "wae", "aae", "vq+prior",
            "dvae", "dae", "made"} <= set(row_names)


@pytest.mark.parametrize("settings, message", [
    (["nope=1"], "unknown config key 'nope'"),
    (["betas=(-1.0,)"], "config.betas=(-1.0,): every entry must be > 0"),
    (["path=((0.1,),)"], "config.path: entries are (posterior_scale > 0, beta > 0), got (0.1,)"),
    (["eval.k=0"], "config.eval.k=0 must be >= 1"),
    (["expost.recipes=('gmm','glow')"], "'glow' is not a registered recipe"),
    (["expost.recipes=('gmm','code_prior')"], "'code_prior' is not a density fitted to continuous codes"),
    (["expost.flow.density.layerz=3"], "unknown config key 'expost.flow.density.layerz'; did you mean expost.flow.density.layers"),
])
def test_bad_study_settings(settings, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare.load_study("tiny", settings)


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv, message in ((["--set", "eval.nn_k=abc"], "cannot parse"), (["--only", "vae,nope"], "unknown variants")):
        code = cli.main(["compare", "--preset", "tiny", "--workdir", str(tmp_path / "w"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    summary = compare_study.run_study(workdir, preset="tiny", progress=False, log=lambda s: None)
    return workdir, summary


@pytest.mark.slow
def test_every_variant_trains_through_the_same_trainer(tiny_study):
    workdir, summary = tiny_study
    bounds = {"vae": "elbo", "fixed_scale_0.1_beta_1": "elbo", "ae": "reconstruction",
              "rae": "reconstruction", "wae": "reconstruction", "aae": "reconstruction", "vq": "reconstruction",
              "dae": "denoising", "made": "log_px", "vae_2d": "elbo", "ae_2d": "reconstruction"}
    for name, bound in bounds.items():
        lines = [json.loads(l) for l in (workdir / name / "metrics.jsonl").read_text().splitlines()]
        assert [l["epoch"] for l in lines] == [1, 2], name
        assert np.isfinite(lines[-1][f"train/{bound}"]) and f"validation/{bound}" in lines[-1], name
        assert (workdir / name / "checkpoints").is_dir()
    dae_cfg = json.loads((workdir / "dae" / "config.json").read_text())
    assert dae_cfg["objective"]["walkback_steps"] == 2 and dae_cfg["inference"]["posterior"]["name"] == "point_mass"


@pytest.mark.slow
def test_rows_are_measured_honestly(tiny_study):
    _, summary = tiny_study
    rows = summary["rows"]
    vae = rows["vae"]
    assert vae["elbo"]["mean"] <= vae["log_px"]["mean"] + 3 * vae["log_px"]["stderr"]
    assert "q(z|x)" in vae["log_px"]["estimator"]
    assert "log_px" not in rows["ae"] and "no p(z)" in rows["ae"]["log_px_undefined"] and "samples" not in rows["ae"]
    assert "scale mixture" in rows["ae+gmm"]["log_px"]["estimator"] and rows["ae+gmm"]["fit"]["num_components"] == 3
    assert "stationary distribution" in rows["dae"]["log_px_undefined"] and rows["dae"]["samples"]["num_samples"] == 64
    assert rows["made"]["log_px"]["estimator"] == "exact" and "reconstruction" not in rows["made"]
    assert rows["made"]["log_px_kind"] == "exact" and rows["vae"]["log_px_kind"] == "stochastic lower bound"
    # The AEs matched to N(0, I) in training: p(z) is the model's own, log p(x) by importance sampling around the code.
    for name in ("wae", "aae"):
        assert "scale mixture" in rows[name]["log_px"]["estimator"] and np.isfinite(rows[name]["log_px"]["mean"]), name
        assert rows[name]["row"]["sampled_from"] == "N(0, I), matched in training" and rows[name]["point_mass"], name
    # The VQ-VAE with the prior over its codes fitted afterwards: IS over codes never below its ELBO log p(x, c*).
    vq = rows["vq+prior"]
    assert vq["elbo"]["mean"] <= vq["log_px"]["mean"] and "IS over codes" in vq["log_px"]["estimator"]
    assert vq["fit"]["log_pc_meaning"].startswith("exact") and vq["fit_seconds"] > 0
    assert 1 <= vq["codebook_usage"]["used_codes"] <= 4 and vq["samples"]["num_samples"] == 64
    for name in ("vae", "ae+n01", "ae+gmm", "rae+gmm", "wae", "aae"):
        assert 0.0 <= rows[name]["prior_mass_off_codes"] <= 1.0
        assert 0.0 <= rows[name]["held_out_codes_off_codes"] <= 1.0
    for name, res in rows.items():
        if "samples" in res:
            s = res["samples"]
            assert s["fd"] >= 0 and 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1, name
    # The AE's reconstruction is the same quantity in each of its rows.
    assert rows["ae"]["reconstruction"] == rows["ae+gmm"]["reconstruction"]
    # A learned ex-post density (the tiny study fits the flow): fitted by the trainer, labelled, timed.
    for name in ("ae+flow", "vae+flow"):
        res = rows[name]
        assert res["fit"]["log_pz_meaning"] == "exact" and res["fit_seconds"] > 0, name
        assert "exact p(z)" in res["log_px"]["meaning"] and np.isfinite(res["log_px"]["mean"]), name
        assert 0.0 <= res["prior_mass_off_codes"] <= 1.0, name


@pytest.mark.slow
def test_report_builds_with_figures_and_answer(tiny_study):
    workdir, summary = tiny_study
    report = (workdir / "report" / "report.md").read_text()
    for png in ("headline", "samples", "latent_map", "reconstructions", "interpolations", "dae_chain"):
        path = workdir / "report" / f"{png}.png"
        assert path.stat().st_size > 1000, png
        assert f"({png}.png)" in report, png
    assert "## The answer" in report and "Why the AE is not" in report and "not FID" in report
    assert "† (ex-post second-stage VAE) stochastic lower bound on log p(x) in expectation" not in report  # not in tiny
    assert "VQ-VAE + code prior: stochastic lower bound on log p(x)" in report and "MADE (no z): exact" in report
    assert "**Matching the codes to p(z) during training.**" in report and "**Discrete codes with a learned prior.**" in report
    for label in ("VAE", "AE + ex-post GMM", "AE + ex-post flow", "WAE-MMD", "AAE", "VQ-VAE + code prior", "DAE (walkback)", "MADE (no z)",
                  "data (held-out images)"):
        assert f"| {label} |" in report, label
    assert summary["machine"]["cpu_count"] >= 1 and summary["timings_seconds"]["total_wall"] > 0


@pytest.mark.slow
def test_expost_command_makes_the_trained_ae_generative(tiny_study, capsys):
    workdir, _ = tiny_study
    ae = workdir / "ae"
    gmm = ["expost", "--workdir", str(ae), "--components", "3", "--max-codes", "300", "--k", "4", "--max-examples",
           "20", "--n", "16"]
    # The study fitted a mixture to its own codes there: a fit with other settings is refused, not replaced.
    before = (ae / "expost" / "mixture.npz").read_bytes()
    assert cli.main(gmm) == 2 and "add --refit to fit anew" in capsys.readouterr().err
    assert (ae / "expost" / "mixture.npz").read_bytes() == before
    assert cli.main(gmm + ["--refit"]) == 0
    out = capsys.readouterr().out
    assert "iwae_4" in out and "log_px" in out and "stochastic lower bound" in out
    assert (ae / "expost" / "mixture.1.npz").read_bytes() == before          # the study's fit, kept aside
    result = json.loads((ae / "expost" / "eval.json").read_text())
    assert result["num_examples"] == 20 and result["recipe"] == "gmm" and result["fit"]["num_components"] == 3
    assert np.isfinite(result["metrics"]["log_px"]["mean"]) and "around the code" in result["metrics"]["log_px"]["estimator"]
    assert (ae / "expost" / "samples.png").stat().st_size > 0
    code = cli.main(["expost", "--workdir", str(ae), "--density", "two_stage", "--max-codes", "300",
                     "--epochs", "1", "--batch-size", "50", "--k", "2", "--max-examples", "8", "--n", "4",
                     "--set", "hidden=(8,)", "--set", "is_samples=4"])
    out = capsys.readouterr().out
    assert code == 0 and "held-out log p(z)" in out
    result = json.loads((ae / "expost" / "two_stage" / "eval.json").read_text())
    assert np.isfinite(result["metrics"]["log_px"]["mean"]) and "in expectation" in result["log_px_meaning"]
    assert result["fit"]["num_validation_codes"] > 0 and np.isfinite(result["fit"]["validation_log_pz"])
    assert (ae / "expost" / "two_stage" / "fit" / "checkpoints").is_dir()
    # A fitted recipe is the run's p(z) wherever a run is loaded: vaegen.load, sample, evaluate (reloaded, not refitted).
    for density in ("gmm", "two_stage", "standard_normal"):
        run = vaegen.load(ae, density=density)
        assert run.has_prior and run.recipe.name == density and run.sample(jax.random.key(0), 2).shape == (2, 8, 8, 1)
    assert vaegen.load(ae, density="two_stage").recipe.settings.density.hidden == (8,)   # the settings it was fitted with
    assert cli.main(["sample", "--workdir", str(ae), "--density", "gmm", "--n", "4"]) == 0
    assert (ae / "samples_gmm.png").stat().st_size > 0
    assert cli.main(["evaluate", "--workdir", str(ae), "--density", "gmm", "--max-examples", "8",
                     "--k", "4", "--no-progress"]) == 0
    ev = json.loads((ae / "eval_gmm.json").read_text())
    assert np.isfinite(ev["metrics"]["log_px"]["mean"]) and "around the code" in ev["metrics"]["log_px"]["estimator"]
    assert ev["recipe"] == "gmm" and "stochastic lower bound" in ev["log_px_meaning"]
    # Its ELBO is the bound with the proposal around the code as q, and says so: the AE's own is -inf.
    assert "proposal around the code" in ev["metrics"]["elbo"]["meaning"], ev["metrics"]["elbo"]
    assert "-inf" in ev["metrics"]["elbo"]["meaning"]
    with pytest.raises(FileNotFoundError, match="no fitted diffusion density"):
        vaegen.load(ae, density="diffusion")
    capsys.readouterr()
    code = cli.main(["expost", "--workdir", str(workdir / "made")])
    assert code == 2 and "no latent variable" in capsys.readouterr().err
    # The VQ-VAE's prior over its codes, fitted by the study, loads like any recipe.
    vq = vaegen.load(workdir / "vq", density="code_prior")
    assert vq.recipe.name == "code_prior" and vq.sample(jax.random.key(0), 2).shape == (2, 8, 8, 1)


def test_rae_gets_the_density_that_did_best_on_the_ae():
    rows = compare.rows(compare.load_study("quick"))
    best_row = next(r for r in rows if r.best)
    assert best_row.variant == "rae"
    ae_rows = [r for r in rows if r.variant == "ae" and r.recipe is not None and r.recipe_object.fitted]
    lp = {"gmm": -252.0, "flow": -250.0, "two_stage": -260.0, "diffusion": -240.0}  # diffusion: ‡, not ranked
    results = {r.name: {"log_px": {"mean": lp[r.recipe.name]}} for r in ae_rows}
    chosen = compare.resolve_best(best_row, rows, results)
    assert (chosen.name, chosen.recipe.name, chosen.variant) == ("rae+flow", "flow", "rae")
    assert chosen.label == "RAE + ex-post flow" and chosen.recipe == next(r.recipe for r in ae_rows if r.name == "ae+flow")
    results["ae+gmm"]["log_px"]["mean"] = -249.0  # the GMM: the RAE's GMM row already stands for it
    assert compare.resolve_best(best_row, rows, results) is None
    assert compare.resolve_best(best_row, rows, {}) is None


def test_the_rows_are_the_recipes_declarations():
    """Every row's label, what it samples from and what its log p(x) is come from its recipe's registration."""
    study = compare.load_study("quick")
    for row in compare.rows(study):
        if row.recipe is None:
            continue
        recipe = row.recipe_object
        assert row.label.endswith(recipe.trait("label")) and row.name.endswith(recipe.trait("tag"))
    labels = {r.name: (r.label, r.sampled_from) for r in compare.rows(study)}
    assert labels["ae+n01"] == ("AE + N(0, I)", "N(0, I), ad hoc")
    assert labels["wae"] == ("WAE-MMD", "N(0, I), matched in training") and labels["vae"] == ("VAE", "N(0, I)")
    assert labels["vq+prior"] == ("VQ-VAE + code prior", "categorical MADE on codes")
    # A recipe of the study's expost.recipes that has no section of its own there takes its defaults and the study's
    # fit settings.
    flow = compare.expost_recipe(dataclasses.replace(study, seed=3), "flow")
    assert flow.settings.epochs == study.expost.fit.epochs and flow.settings.seed == 3
