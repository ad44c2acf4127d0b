"""Priors p(z): the learned mixture of Gaussians and the VampPrior, against independent numpy/scipy
computations, in the ELBO and in training."""

import json
import pathlib

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import flax.linen as nn

import vaegen
from vaegen.model import latent as model_lib
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.blocks import priors as priors
from vaegen.registry import PRIORS
from vaegen.config.loading import ConfigError, load_config

EVENT = (8, 8, 1)


def _model(prior, *overrides, components=3):
    cfg = load_config("tiny", [f"model.prior={prior}", f"model.prior.components={components}", *overrides])
    spec = vaegen.to_spec(cfg)
    m = model_lib.build_model(spec.model, spec.inference, EVENT)
    return m, model_lib.init_params(m, jax.random.key(0), EVENT)


def _mixture_variables(logits, means, log_scales):
    return {"params": {"logits": jnp.asarray(logits, jnp.float32), "means": jnp.asarray(means, jnp.float32),
                       "log_scales": jnp.asarray(log_scales, jnp.float32)}}


def _binary(key, shape):
    return (jax.random.uniform(key, shape) > 0.5).astype(jnp.float32)


def test_mixture_log_prob_is_the_logsumexp_of_its_weighted_components():
    prior = priors.MixtureOfGaussians(latent_dim=3, settings=priors.MixtureSettings(components=4))
    v = prior.init(jax.random.key(0))
    p = v["params"]
    np.testing.assert_array_equal(p["logits"], np.zeros(4))
    np.testing.assert_array_equal(p["log_scales"], np.zeros((4, 3)))
    assert p["means"].shape == (4, 3) and np.std(np.asarray(p["means"])) > 0.3
    np.testing.assert_array_equal(prior.init(jax.random.key(0))["params"]["means"], p["means"])  # seeded

    rng = np.random.RandomState(0)
    logits, means, log_scales = rng.normal(size=4), rng.normal(size=(4, 3)) * 2, rng.normal(size=(4, 3)) * 0.5
    z = rng.normal(size=(2, 5, 3)) * 2
    got = prior.apply(_mixture_variables(logits, means, log_scales)).log_prob(jnp.asarray(z, jnp.float32))
    # log p(z) = logsumexp_k [log pi_k + sum_d log N(z_d; mu_kd, sigma_kd^2)]
    log_pi = logits - special.logsumexp(logits)
    comp = stats.norm.logpdf(z[..., None, :], means, np.exp(log_scales)).sum(-1)  # [2, 5, K]
    want = special.logsumexp(log_pi + comp, axis=-1)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mixture_samples_land_in_the_components_in_proportion():
    prior = priors.MixtureOfGaussians(latent_dim=2, settings=priors.MixtureSettings(components=3))
    weights = np.array([0.2, 0.3, 0.5])
    means = np.array([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    v = _mixture_variables(np.log(weights), means, np.full((3, 2), np.log(0.5)))
    n = 4000
    z = jax.jit(lambda v, key: prior.apply(v).sample(seed=key, sample_shape=(n,)))(v, jax.random.key(1))
    assert z.shape == (n, 2)
    nearest = np.argmin(((np.asarray(z)[:, None, :] - means) ** 2).sum(-1), axis=1)
    freq = np.bincount(nearest, minlength=3) / n
    assert np.all(np.abs(freq - weights) < 4 * np.sqrt(weights * (1 - weights) / n)), freq
    for k in range(3):  # each draw is from its component: N(mu_k, 0.5^2 I)
        np.testing.assert_allclose(np.asarray(z)[nearest == k].mean(0), means[k], atol=0.1)
        np.testing.assert_allclose(np.asarray(z)[nearest == k].std(0), [0.5, 0.5], atol=0.05)


@pytest.mark.parametrize("posterior", ["diagonal_gaussian", "full_covariance_gaussian"])
@pytest.mark.slow
def test_vampprior_is_the_posterior_averaged_over_the_pseudo_inputs(posterior):
    m, v = _model("vampprior", f"inference.posterior={posterior}")
    w = np.asarray(v["params"]["prior"][priors.PSEUDO_INPUTS_PARAM], np.float64)
    assert w.shape == (3,) + EVENT
    assert abs(w.mean() + 0.05) < 0.01 and abs(w.std() - 0.01) < 0.003  # N(-0.05, 0.01^2)
    u = 1.0 / (1.0 + np.exp(-w))
    np.testing.assert_allclose(priors.pseudo_inputs(v), u, rtol=1e-6)
    z = np.random.RandomState(0).normal(size=(6, 4))
    got = m.apply(v, method=lambda mm: mm.p_z().log_prob(jnp.asarray(z, jnp.float32)))
    # The posterior called directly on the pseudo-inputs: q(z | u_k), k = 1..K.
    q = m.apply(v, jnp.asarray(u, jnp.float32), method="q_z_given_x")
    loc, cov = np.asarray(q.mean(), np.float64), np.asarray(q.covariance(), np.float64)
    log_q = np.stack([stats.multivariate_normal(loc[k], cov[k]).logpdf(z) for k in range(3)], -1)  # [6, K]
    want = special.logsumexp(log_q, axis=-1) - np.log(3)  # log 1/K sum_k q(z | u_k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_vampprior_takes_any_callable_posterior():
    """E.g. q(z2 | u) of a model with two stochastic layers: a function of arrays, not the model's module."""
    def q(u):  # u [K, 4] -> batch [K], event [2]
        return distrax.MultivariateNormalDiag(u[:, :2] * 3.0, jnp.exp(u[:, 2:] - 1.0))

    prior = priors.VampPrior(latent_dim=2, event_shape=(4,), settings=priors.VampPriorSettings(components=5))
    v = prior.init(jax.random.key(0), posterior=q)
    w = np.random.RandomState(1).normal(size=(5, 4))
    v = {"params": {priors.PSEUDO_INPUTS_PARAM: jnp.asarray(w, jnp.float32)}}
    z = np.random.RandomState(2).normal(size=(3, 7, 2))
    got = prior.apply(v, posterior=q).log_prob(jnp.asarray(z, jnp.float32))
    u = special.expit(w)
    comp = stats.norm.logpdf(z[..., None, :], u[:, :2] * 3.0, np.exp(u[:, 2:] - 1.0)).sum(-1)  # [3, 7, K]
    np.testing.assert_allclose(got, special.logsumexp(comp, -1) - np.log(5), rtol=1e-5, atol=1e-5)
    samples = prior.apply(v, jax.random.key(3), method=lambda p, key: p(posterior=q).sample(seed=key, sample_shape=(9,)))
    assert samples.shape == (9, 2)
    with pytest.raises(ValueError, match="batch shape"):
        prior.apply(v, posterior=lambda u: q(u[:1]))


@pytest.mark.slow
def test_vampprior_gradients_reach_the_pseudo_inputs_and_the_encoder():
    m, v = _model("vampprior")
    z = jax.random.normal(jax.random.key(1), (5, 4))
    g = jax.grad(lambda v: m.apply(v, method=lambda mm: mm.p_z().log_prob(z)).sum())(v)["params"]
    assert np.abs(np.asarray(g["prior"][priors.PSEUDO_INPUTS_PARAM])).sum() > 0
    assert np.abs(np.asarray(g["posterior"]["encoder"]["dense_0"]["kernel"])).sum() > 0
    for head in ("loc", "log_scale"):
        assert np.abs(np.asarray(g["posterior"][head]["kernel"])).sum() > 0
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree_util.tree_leaves(g["likelihood"]))
    zs = m.apply(v, jax.random.key(2), method=lambda mm, key: mm.p_z().sample(seed=key, sample_shape=(11,)))
    assert zs.shape == (11, 4)


def test_pseudo_inputs_initialised_from_data():
    m, v = _model("vampprior")
    x = np.array(jax.random.uniform(jax.random.key(3), (3,) + EVENT), np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    before = jax.tree_util.tree_map(np.array, v)
    v2 = priors.init_pseudo_inputs_from_data(v, x)
    np.testing.assert_allclose(priors.pseudo_inputs(v2), np.clip(x, 1e-3, 1 - 1e-3), rtol=1e-5, atol=1e-6)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, before)  # the input is untouched
    for part in ("likelihood", "posterior"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, v2["params"][part], v["params"][part])
    # Wherever the prior sits (e.g. nested in a two-layer model's tree), it is found by name.
    nested = {"params": {"top": {"prior": v["params"]["prior"]}, "other": {"w": jnp.ones(2)}}}
    np.testing.assert_allclose(priors.pseudo_inputs(priors.init_pseudo_inputs_from_data(nested, x)),
                               np.clip(x, 1e-3, 1 - 1e-3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"pseudo-inputs of shape \(3, 8, 8, 1\)"):
        priors.init_pseudo_inputs_from_data(v, x[:2])
    with pytest.raises(ValueError, match="divide grey levels by 255"):
        priors.init_pseudo_inputs_from_data(v, (x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="outside"):
        priors.init_pseudo_inputs_from_data(v, x * 2)
    with pytest.raises(ValueError, match="found none"):
        priors.init_pseudo_inputs_from_data(_model("mixture")[1], x)


@pytest.mark.parametrize("prior", ["mixture", "vampprior"])
def test_elbo_with_a_learned_prior_runs_batched_and_its_kl_is_monte_carlo(prior):
    m, v = _model(prior)
    x = _binary(jax.random.key(1), (4,) + EVENT)
    keys = jax.random.split(jax.random.key(2), 4)
    obj = objectives.ELBO(objectives.ELBOSettings(num_samples=3))
    terms = jax.jit(lambda v, x, k: batched(obj, m, v, x, k))(v, x, keys)

    def mc_kl(mm, xi, key):  # the same z_s ~ q(z | x) as the ELBO draws
        q, p = mm.q_z_given_x(xi), mm.p_z()
        z = q.sample(seed=key, sample_shape=(3,))
        return jnp.mean(q.log_prob(z) - p.log_prob(z)), objectives.kl_divergence(q, p, z)[1]

    for i in range(4):
        kl, analytic = m.apply(v, x[i], keys[i], method=mc_kl)
        assert analytic is False
        np.testing.assert_allclose(terms["kl"][i], kl, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(terms["elbo"]))
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=1e-6)


@pytest.mark.parametrize("prior", ["mixture", "vampprior"])
@pytest.mark.slow
def test_training_with_a_learned_prior_raises_the_validation_bound(prior, tmp_path):
    cfg = load_config("tiny", [f"model.prior={prior}", "model.prior.components=10", "train.num_epochs=4",
                               "optim.learning_rate=3e-3"])
    vaegen.train_and_evaluate(cfg, tmp_path)
    m = [json.loads(l) for l in (pathlib.Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert m[-1]["validation/elbo"] > m[0]["validation/elbo"] + 0.4


@pytest.mark.parametrize("override, message", [
    (["model.prior=gmm"], "config.model.prior.name='gmm' is not a registered prior "
                          f"(registered: {', '.join(PRIORS.names())})"),
    (["model.prior=mixture", "model.prior.components=0"], "config.model.prior.components=0 must be > 0"),
    (["model.prior=vampprior", "model.prior.components=0"], "config.model.prior.components=0 must be > 0"),
    (["model.prior=vampprior", "model.prior.init=zeros"], "config.model.prior.init='zeros' is not one of random, data"),
    (["model.prior=vampprior", "model.prior.init_std=0.0"], "config.model.prior.init_std=0.0 must be > 0"),
    (["model.prior.components=3"], "config.model.prior.components: the prior 'standard_normal' has no setting "
                                   "'components' (its settings: none); the priors with that setting: mixture, "
                                   "vampprior (choose one first: --config.model.prior=NAME)"),
])
def test_prior_settings_are_validated(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", override)


@pytest.mark.parametrize("posterior", ["point_mass", "flow"])
def test_vampprior_needs_a_posterior_with_a_density(posterior):
    with pytest.raises(ConfigError, match=f"not config.inference.posterior='{posterior}'"):
        load_config("tiny", ["model.prior=vampprior", f"inference.posterior={posterior}", "objective.name=iwae"])
    load_config("tiny", ["model.prior=vampprior", "inference.posterior=full_covariance_gaussian"])


@pytest.mark.parametrize("name", PRIORS.names())
def test_every_registered_prior_builds_with_its_defaults(name):
    """Each prior of the registry, at its default settings, for a 2-d z and 4x4x1 observations: a
    module whose p(z) has event [2] (the VampPrior through a stand-in q(z | u)), or None for 'none'.
    A prior over discrete z takes two categories (one one-hot variable) and is evaluated at one of
    its values."""
    component = PRIORS.get(name)
    assert component.summary.strip()
    changed = {"categories": 2} if "categories" in {f.name for f in vaegen.registry.fields(component.settings)} else {}
    prior = PRIORS.select(name, **changed).build(latent_dim=2, event_shape=(4, 4, 1))
    if not component.trait("exists"):
        assert prior is None
        return
    assert isinstance(prior, nn.Module)

    def q(u):  # u [K, 4, 4, 1] -> batch [K], event [2]
        flat = u.reshape(u.shape[0], -1)
        return distrax.MultivariateNormalDiag(flat[:, :2], jnp.exp(flat[:, 2:4]))

    v = prior.init(jax.random.key(0), posterior=q)
    z = jnp.tile(jnp.array([1.0, 0.0]), (3, 1)) if component.trait("discrete") else jnp.zeros((3, 2))
    lp = prior.apply(v, posterior=q).log_prob(z)
    assert lp.shape == (3,) and np.all(np.isfinite(np.asarray(lp)))
