"""The learned ex-post densities (flow, second-stage VAE, latent diffusion): exactness against known
answers, fitted by the trainer on 2-D codes.

Measured (seed 0, 4,000 codes, 40 epochs of 40 steps, the 2-core CPU): the flow's average log p(z) is
within 0.01 nats/code of the exact Gaussian's (0.07 nats pointwise); the second-stage IS estimate and the
diffusion bound lie below the exact value by about 0.01 and 0.08 nats/code on average; the tests allow
0.05 (flow, as the issue asks), 0.1 and 0.3 nats/code."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from vaegen.blocks import densities
from vaegen.estimators import importance
from vaegen.model import latent as model_lib
from vaegen.model import linear_gaussian as exact
from vaegen.config.schema import RunSpec
from vaegen.errors import NonFiniteError, RecipeError
from vaegen.runs.recipes import learned, recipe
from vaegen.train import workdir as workdir_lib

MU = np.array([2.0, -1.0])
L = np.array([[1.0, 0.0], [0.8, 0.5]])
COV = L @ L.T
SMALL = {"flow": {"hidden": (32, 32), "layers": 4},
         "two_stage": {"hidden": (32, 32), "is_samples": 256},
         "diffusion": {"hidden": (64, 64), "bound_samples": 512}}
FIT = dict(epochs=40, batch_size=100, learning_rate=3e-3, checkpoint_every=40, validate_every=0)
LEARNED = ("flow", "two_stage", "diffusion")


def _learned(name, density, **fit):
    """The recipe ``name`` with ``fit`` settings and its density's settings ``density``."""
    cls = type(recipe(name).settings.density)
    return recipe(name, **fit, density=cls(**density))


def _codes(n, seed):
    return (np.random.default_rng(seed).standard_normal((n, 2)) @ L.T + MU).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Each learned density fitted to 4,000 codes of N(MU, COV) by the trainer (40 epochs of 40 steps)."""
    root = tmp_path_factory.mktemp("densities")
    train, val = _codes(4000, 0), _codes(200, 1)
    return {name: _learned(name, SMALL[name], **FIT).fit_codes(train, val, root / name) for name in LEARNED}


def _grid(lo, hi, n):
    a, b = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    xx, yy = np.meshgrid(a, b, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32), (a[1] - a[0]) * (b[1] - b[0])


@pytest.mark.parametrize("kind", ["coupling", "autoregressive"])
def test_a_random_flow_integrates_to_one_on_a_grid(kind):
    module = densities.FlowDensity(latent_dim=2, settings=densities.FlowDensitySettings(kind=kind, layers=3, hidden=(16,)))
    params = module.init(jax.random.key(0))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [a + 0.2 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    params = {**params, "data_loc": jnp.zeros(2), "data_log_scale": jnp.zeros(2)}
    log_prob = jax.jit(lambda z: module.apply({"params": params}).log_prob(z))
    z, cell = _grid((-12, -12), (12, 12), 481)
    mass = float(jnp.sum(jnp.exp(log_prob(jnp.asarray(z)))) * cell)
    assert abs(mass - 1.0) < 1e-3, mass
    # not the base Gaussian: the layers do something
    base = multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z[:50])
    assert np.max(np.abs(np.asarray(log_prob(jnp.asarray(z[:50]))) - base)) > 0.1


@pytest.mark.slow
def test_the_fitted_flow_recovers_a_known_gaussian(fitted):
    z = _codes(1000, 2)
    got = np.asarray(fitted["flow"].log_prob(z))
    want = multivariate_normal(MU, COV).logpdf(z)
    assert abs(np.mean(got - want)) < 0.05, np.mean(got - want)        # nats per code, on average
    assert np.mean(np.abs(got - want)) < 0.15, np.mean(np.abs(got - want))
    samples = np.asarray(fitted["flow"].sample(jax.random.key(0), 4000))
    np.testing.assert_allclose(samples.mean(0), MU, atol=0.1)
    np.testing.assert_allclose(np.cov(samples.T), COV, atol=0.15)


@pytest.mark.parametrize("name,tolerance", [("two_stage", 0.1), ("diffusion", 0.3)])
@pytest.mark.slow
def test_the_two_stage_estimate_and_the_diffusion_bound_lie_below_the_exact_log_density(fitted, name, tolerance):
    z = _codes(1000, 2)
    got = np.asarray(fitted[name].log_prob(z))
    want = multivariate_normal(MU, COV).logpdf(z)
    gap = float(np.mean(want - got))
    stderr = float(np.std(want - got) / math.sqrt(z.shape[0]))
    assert -3 * stderr <= gap < tolerance, (gap, stderr)
    assert fitted[name].info["log_pz_meaning"] == densities.LOG_PROB_MEANING[name]


@pytest.mark.parametrize("name", ["two_stage", "diffusion"])
@pytest.mark.slow
def test_the_bounds_integrate_to_at_most_one(fitted, name):
    z, cell = _grid(MU - 6.5, MU + 6.5, 66)
    mass = float(np.sum(np.exp(np.asarray(fitted[name].log_prob(z)))) * cell)
    if name == "two_stage":  # an unbiased estimate of a normalised p(z): 1 up to its Monte Carlo error
        assert abs(mass - 1.0) < 0.02, mass
    else:                    # exp(bound) <= p(z): the gap to 1 is the bound's slack (0.9-0.95 measured)
        assert 0.7 < mass <= 1.0 + 0.02, mass


def _with_prior(lg, prior_module, prior_params):
    m = lg.model()
    model = model_lib.LatentVariableModel(prior=prior_module, likelihood=m.likelihood, posterior=m.posterior)
    v = lg.variables()
    params = dict(v["params"])
    if prior_params is not None:
        params["prior"] = prior_params
    return model, {"params": params}


def _log_px(model, variables, x, k=50):
    log_joint, proposal = importance.model_functions(model, variables)
    return np.asarray(importance.importance_sampling(log_joint, proposal, jnp.asarray(x, jnp.float32),
                                                     jax.random.key(3), num_samples=k)["log_px"])


@pytest.mark.slow
def test_linear_gaussian_log_px_with_each_density_is_never_above_the_closed_form(fitted):
    """p(z) = N(0, I) exactly: the identity flow (an exact prior) gives the closed form; each fitted density
    (fitted to other codes: N(MU, COV)) gives a p(x) whose average log is below the closed form (Gibbs), and
    so does the nested estimate of the second-stage VAE (an unbiased p(z) estimate inside the IS average:
    by Jensen, a lower bound in expectation)."""
    lg = exact.LinearGaussian.random(jax.random.key(0), data_dim=4, latent_dim=2, s=0.5)
    x = lg.sample(jax.random.key(1), 40)
    closed = lg.log_marginal(x)
    standard = _log_px(*_with_prior(lg, lg.model().prior, None), x)
    diff = standard - closed   # the exact prior: the closed form up to the importance-sampling error
    assert abs(np.mean(diff)) <= 3 * np.std(diff) / math.sqrt(diff.size) + 1e-3, np.mean(diff)
    identity = densities.FlowDensity(latent_dim=2, settings=densities.FlowDensitySettings(kind="coupling", layers=2, hidden=(8,)))  # N(0, I) exactly
    np.testing.assert_allclose(_log_px(*_with_prior(lg, identity, identity.init(jax.random.key(0))["params"]), x),
                               standard, atol=1e-4)
    inner = {"flow": {}, "two_stage": {"is_samples": 32}, "diffusion": {"bound_samples": 64}}
    for name, fit in fitted.items():
        fit = fit.with_settings(**inner[name])
        model, variables = _with_prior(lg, fit.prior_module(), fit.variables["params"]["prior"])
        diff = _log_px(model, variables, x) - closed
        assert np.mean(diff) <= 3 * np.std(diff) / math.sqrt(diff.size), (name, np.mean(diff))


def test_a_diverging_fit_stops_with_one_line_and_keeps_what_it_wrote(tmp_path):
    flow = _learned("flow", {"hidden": (8,), "layers": 1}, epochs=3, batch_size=100, learning_rate=1e30,
                    grad_clip_norm=0.0, checkpoint_every=1, validate_every=0)
    with pytest.raises(NonFiniteError, match="consecutive steps .* had a non-finite loss or gradient"):
        flow.fit_codes(_codes(2000, 0), _codes(10, 1), tmp_path / "fit")
    assert (tmp_path / "fit" / "config.json").exists() and "halted" in (tmp_path / "fit" / "metrics.jsonl").read_text()


def test_a_fit_stopped_before_its_last_epoch_is_refused_as_unfinished(tmp_path):
    """A fit killed after epoch 1 of 3 is never used as if finished: its checkpoints are those of a fit
    whose stored settings ask for 3 epochs."""
    flow = _learned("flow", {"hidden": (8,), "layers": 1}, epochs=1, batch_size=100, checkpoint_every=1,
                    validate_every=0)
    flow.fit_codes(_codes(400, 0), _codes(10, 1), tmp_path / "fit")
    spec = workdir_lib.parse_stored(RunSpec, tmp_path / "fit" / "config.json")
    learned.check_finished("flow", tmp_path / "fit", spec, "W")                   # finished: no error
    three = dataclasses.replace(spec, train=dataclasses.replace(spec.train, num_epochs=3))
    with pytest.raises(RecipeError, match=r"holds an unfinished flow fit \(epoch 1 of 3\): run `vaegen expost "
                                          r"--workdir W --density flow` again to finish it"):
        learned.check_finished("flow", tmp_path / "fit", three, "W")
