"""Bounds against the exact answers of a linear-Gaussian model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen.errors import UndefinedObjectiveError
from vaegen.model import linear_gaussian as exact
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.objectives.autoencoder import Autoencoder, AutoencoderSettings
from vaegen.config.loading import load_config
from vaegen.model.latent import build_model, init_params
from vaegen.registry import OBJECTIVES


@pytest.fixture(scope="module")
def lg():
    return exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)


@pytest.fixture(scope="module")
def xs(lg):
    return lg.sample(jax.random.key(1), 8).astype(np.float32)


def _batched(obj, model, variables, x, seed=0):
    keys = jax.random.split(jax.random.key(seed), x.shape[0])
    return jax.jit(lambda v, x, k: batched(obj, model, v, x, k))(variables, x, keys)


def _replicated_mean(obj, model, variables, x, name, reps):
    """E over the estimator's randomness of a bound, and its Monte Carlo standard error."""
    keys = jax.random.split(jax.random.key(42), reps * x.shape[0]).reshape(reps, x.shape[0])
    f = jax.jit(jax.vmap(lambda k: batched(obj, model, variables, x, k)[name]))
    vals = np.asarray(f(keys), np.float64)  # [reps, N]
    return vals.mean(0), vals.std(0) / np.sqrt(reps)


def test_analytic_elbo_of_any_gaussian_q_is_log_px_minus_kl_to_posterior(lg, xs):
    model = lg.model()
    rng = np.random.RandomState(0)
    A = rng.normal(size=(3, 6)) * 0.3
    c = rng.normal(size=3) * 0.1
    log_scale = np.array([-0.5, -1.0, 0.2])
    variables = lg.variables(A=A, c=c, log_scale=log_scale)
    mean, var = xs.astype(np.float64) @ A.T + c, np.exp(2 * log_scale)
    exact_elbo = lg.elbo(xs, mean, var)
    est, se = _replicated_mean(objectives.ELBO(objectives.ELBOSettings(num_samples=64)), model, variables, xs, "elbo", 64)
    assert np.all(np.abs(est - exact_elbo) < 5 * se + 1e-3)
    # The KL term is analytic, so it is exact; the gap to log p(x) is the KL to the posterior.
    terms = _batched(objectives.ELBO(), model, variables, xs)
    kl_prior = 0.5 * np.sum(mean**2 + var - 1 - np.log(var), -1)
    np.testing.assert_allclose(terms["kl"], kl_prior, rtol=1e-4)
    np.testing.assert_allclose(lg.log_marginal(xs) - exact_elbo, lg.kl_to_posterior(xs, mean, var), rtol=1e-10)


def test_optimal_diagonal_q_maximises_the_elbo(lg, xs):
    m, v = lg.posterior_mean(xs), lg.optimal_diagonal_variance()
    best = lg.elbo(xs, m, v)
    for factor in (0.8, 1.25):
        assert np.all(lg.elbo(xs, m, v * factor) < best)
    assert np.all(lg.elbo(xs, m + 0.05, v) < best)
    assert np.all(best < lg.log_marginal(xs))  # the posterior is correlated: the diagonal family has a gap


def test_ordering_elbo_le_iwae_k_le_log_px(lg, xs):
    model, variables = lg.model(), lg.variables()
    log_px = lg.log_marginal(xs)
    elbo = lg.elbo(xs, lg.posterior_mean(xs), lg.optimal_diagonal_variance())
    previous = elbo
    for k in (1, 4, 16, 64):
        est, se = _replicated_mean(objectives.IWAE(objectives.IWAESettings(num_samples=k)), model, variables, xs, "iwae", 200)
        tol = 4 * se + 1e-4
        assert np.all(est >= previous - tol), k
        assert np.all(est <= log_px + tol), k
        if k == 1:
            np.testing.assert_allclose(est, elbo, atol=float(np.max(tol)))
        previous = est


def test_iwae_converges_to_log_px(lg, xs):
    model, variables = lg.model(), lg.variables()
    log_px = lg.log_marginal(xs)
    gaps = []
    for k in (1, 10, 100, 2000):
        est, _ = _replicated_mean(objectives.IWAE(objectives.IWAESettings(num_samples=k)), model, variables, xs, "iwae", 20)
        gaps.append(np.mean(log_px - est))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.01 and gaps[0] > 0.05


def test_elbo_mc_kl_matches_analytic_in_expectation(lg, xs):
    model, variables = lg.model(), lg.variables()
    analytic, _ = _replicated_mean(objectives.ELBO(objectives.ELBOSettings(num_samples=8)), model, variables, xs, "elbo", 100)
    mc, se = _replicated_mean(objectives.ELBO(objectives.ELBOSettings(num_samples=8, analytic_kl=False)), model, variables, xs, "elbo", 100)
    assert np.all(np.abs(mc - analytic) < 5 * se + 1e-3)


@pytest.mark.slow
def test_results_do_not_depend_on_batching(lg, xs):
    model, variables = lg.model(), lg.variables()
    keys = jax.random.split(jax.random.key(3), xs.shape[0])
    whole = batched(objectives.IWAE(objectives.IWAESettings(num_samples=8)), model, variables, xs, keys)["iwae"]
    one_by_one = [objectives.IWAE(objectives.IWAESettings(num_samples=8))(model, variables, xs[i], keys[i])["iwae"] for i in range(xs.shape[0])]
    np.testing.assert_allclose(whole, np.array(one_by_one), rtol=1e-6)


def test_kl_warmup_and_beta():
    obj = objectives.ELBO(objectives.ELBOSettings(beta=0.5, kl_warmup_epochs=2.0), steps_per_epoch=5)
    assert obj.kl_warmup_steps == 10 and obj.kl_cycle_steps == 0
    beta = obj.settings.beta
    assert float(objectives.kl_weight(beta, obj.kl_warmup_steps, jnp.asarray(0))) == 0.0
    assert float(objectives.kl_weight(beta, obj.kl_warmup_steps, jnp.asarray(5))) == pytest.approx(0.25)
    assert float(objectives.kl_weight(beta, obj.kl_warmup_steps, jnp.asarray(50))) == pytest.approx(0.5)
    assert float(objectives.kl_weight(2.0, 0, jnp.asarray(0))) == 2.0


def test_beta_changes_objective_not_reported_elbo():
    spec = vaegen.to_spec(load_config("tiny"))
    model = build_model(spec.model, spec.inference, (8, 8, 1))
    v = init_params(model, jax.random.key(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)) > 0.5).astype(jnp.float32)
    a = _batched(objectives.ELBO(), model, v, x)
    b = _batched(objectives.ELBO(objectives.ELBOSettings(beta=3.0)), model, v, x)
    np.testing.assert_allclose(a["elbo"], b["elbo"], rtol=1e-6)
    np.testing.assert_allclose(b["objective"], b["reconstruction"] - 3.0 * b["kl"], rtol=1e-5)


def test_autoencoder_objective_is_reconstruction_at_the_code():
    spec = vaegen.to_spec(load_config("tiny:ae", ["objective.code_penalty=0.5"]))
    model = build_model(spec.model, spec.inference, (8, 8, 1))
    v = init_params(model, jax.random.key(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) > 0.5).astype(jnp.float32)
    assert spec.objective.build() == Autoencoder(AutoencoderSettings(code_penalty=0.5))
    terms = _batched(Autoencoder(AutoencoderSettings(code_penalty=0.5)), model, v, x)
    z = model.apply(v, x, method="q_z_given_x").mean()
    rec = model.apply(v, x, z, method=lambda m, x, z: jax.vmap(m.log_likelihood)(x, z))
    np.testing.assert_allclose(terms["reconstruction"], rec, rtol=1e-6)
    np.testing.assert_allclose(terms["objective"], rec - 0.25 * np.sum(np.asarray(z) ** 2, -1), rtol=1e-5)
    with pytest.raises(UndefinedObjectiveError, match="point-mass"):
        _batched(objectives.ELBO(), model, v, x)
    with pytest.raises(UndefinedObjectiveError):
        _batched(objectives.IWAE(objectives.IWAESettings(num_samples=4)), model, v, x)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_registered_objective_builds_with_its_defaults(name):
    """Each objective of the registry, at its default settings: a per-example objective naming its
    bound, whose validation form (what the trainer tracks on held-out data) reports the same bound."""
    component = OBJECTIVES.get(name)
    assert component.summary.strip()
    obj = OBJECTIVES.select(name).build(steps_per_epoch=10)
    assert callable(obj) and obj.bound_name
    validation = obj.for_validation(5)
    assert callable(validation) and validation.bound_name == obj.bound_name
