"""The one-line questions of a run (run.log_px, run.elbo, run.reconstruct, run.codes) give the
numbers `vaegen.evaluate` gives for the same examples and random streams."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen import cli
from vaegen.errors import ConfigError, UndefinedEstimateError, UndefinedObjectiveError
from vaegen.estimators import diagnostics, importance
from vaegen.spec.eval import AISSettings
from vaegen.registry import ESTIMATORS
from vaegen.train.rng import purpose_key

pytestmark = pytest.mark.slow  # every test reads the runs its module fixture trains


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name in ("tiny", "tiny:ae"):
        c = vaegen.load_config(name)
        c.train.num_epochs = 1
        c.train.tensorboard = False
        c.train.latent_health_examples = 0
        workdir = tmp_path_factory.mktemp(name.replace(":", "_"))
        vaegen.train_and_evaluate(c, workdir)
        out[name] = vaegen.load(workdir)
    return out


def _stream(estimator, seed=0):
    return jax.random.fold_in(purpose_key(seed, "evaluation"), ESTIMATORS.get(estimator).trait("stream"))


def test_questions_equal_evaluate(runs):
    run = runs["tiny"]
    x = run.split("test", max_examples=16)
    settings = dataclasses.replace(run.spec.eval, estimators="elbo,is,ais", num_samples=50, ks=(50,), elbo_samples=1,
                                   ais=AISSettings(num_steps=20, num_chains=3), ais_examples=4)
    values = {}
    vaegen.evaluate(run, settings, max_examples=16, per_example=values)
    np.testing.assert_allclose(run.log_px(x, k=50, key=_stream("is")), values["log_px"], rtol=1e-5)
    np.testing.assert_allclose(run.elbo(x, key=_stream("elbo")), values["elbo"], rtol=1e-5)
    np.testing.assert_allclose(run.log_px(x[:4], method="ais", ais=settings.ais, key=_stream("ais")),
                               values["log_px_ais"], rtol=1e-5)
    terms = run.elbo(x, key=_stream("elbo"), terms=True)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=1e-5)
    # one observation in, one number out; the same key gives the same number
    assert run.log_px(x[3], k=50).shape == () and float(run.log_px(x[3], k=50)) == float(run.log_px(x[3], k=50))


def test_reconstructions_and_codes(runs):
    for run in runs.values():
        x = run.split("test", max_examples=5)
        z = run.encode(x).mean()
        np.testing.assert_allclose(run.codes(x), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.reconstruct(x), run.decode(z).mean(), rtol=1e-5, atol=1e-6)
        assert run.reconstruct(x[0]).shape == tuple(run.event_shape)


def test_a_run_prints_as_one_short_line(runs, tmp_path):
    """repr(run) names the workdir, the model and its parameter count on one line, never the
    parameters; a run made generative by a recipe says whose p(z) it samples from."""
    ae = runs["tiny:ae"]
    for run in runs.values():
        text = repr(run)
        assert "\n" not in text and len(text) < 400 and text.startswith("Run(workdir=")
        assert f"parameters={sum(np.size(v) for v in jax.tree_util.tree_leaves(run.variables['params'])):,}" in text
    assert "prior=none," in repr(ae) and "recipe=" not in repr(ae)
    assert cli.main(["expost", "--workdir", str(ae.workdir), "--max-codes", "200", "--k", "0", "--n", "4"]) == 0
    with_gmm = vaegen.load(ae.workdir, density="gmm")
    assert "recipe=gmm" in repr(with_gmm) and "prior=gmm (the recipe's; trained with none)" in repr(with_gmm)


def test_questions_a_model_cannot_answer(runs):
    ae, vae = runs["tiny:ae"], runs["tiny"]
    x = vae.split("test", max_examples=2)
    with pytest.raises(UndefinedEstimateError, match="no prior p"):
        ae.log_px(x)
    with pytest.raises(UndefinedObjectiveError, match="point-mass posterior"):
        ae.elbo(x)
    with pytest.raises(ConfigError, match="method='bogus' is not one of is, ais, exact"):
        vae.log_px(x, method="bogus")
    with pytest.raises(UndefinedEstimateError, match="z is continuous"):
        vae.log_px(x, method="exact")
    with pytest.raises(ValueError, match=r"run.log_px: argument x has values outside \{0, 1\}"):
        vae.log_px(jnp.full_like(x, 3.0))
    with pytest.raises(ValueError, match=r"run.codes: argument x has shape \(2, 5\)"):
        vae.codes(np.zeros((2, 5)))


def test_estimator_functions_take_a_run(runs):
    run = runs["tiny"]
    x = run.split("test", max_examples=6)
    key = jax.random.key(3)
    a = importance.importance_sampling(*importance.model_functions(run), x, key, num_samples=10)["log_px"]
    b = importance.importance_sampling(*importance.model_functions(run.model, run.variables), x, key,
                                       num_samples=10)["log_px"]
    np.testing.assert_array_equal(a, b)
    assert diagnostics.diagnose(run, x, key)["rate"] == diagnostics.diagnose(run.model, run.variables, x, key)["rate"]
    with pytest.raises(TypeError, match="pass a model and its variables, or a trained run"):
        importance.model_functions(run.model)
