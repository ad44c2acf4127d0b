"""Likelihoods, posteriors and priors against closed forms."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.blocks import likelihoods as likelihoods
from vaegen.blocks import networks as networks
from vaegen.blocks import posteriors as posteriors
from vaegen.blocks import priors as priors
from vaegen.registry import NETWORKS, POSTERIORS, fields


def _apply(module, x, key=0):
    variables = module.init(jax.random.key(key), x)
    return module.apply(variables, x), variables


def test_bernoulli_log_prob_matches_formula():
    lik = likelihoods.Bernoulli(decoder=networks.MLP(networks.MLPSettings(hidden=(7,))), event_shape=(3, 2, 1))
    z = jax.random.normal(jax.random.key(0), (4, 5))
    dist, variables = _apply(lik, z)
    x = (jax.random.uniform(jax.random.key(1), (4, 3, 2, 1)) > 0.5).astype(jnp.float32)
    logits = np.asarray(dist.distribution.logits, np.float64)
    xn = np.asarray(x, np.float64)
    expected = np.sum(xn * -np.logaddexp(0, -logits) + (1 - xn) * -np.logaddexp(0, logits), axis=(1, 2, 3))
    assert dist.event_shape == (3, 2, 1) and dist.batch_shape == (4,)
    np.testing.assert_allclose(dist.log_prob(x), expected, rtol=1e-5)


@pytest.mark.parametrize("scale", ["fixed", "learned", "per_pixel"])
def test_gaussian_log_prob_matches_formula(scale):
    lik = likelihoods.Gaussian(decoder=networks.MLP(networks.MLPSettings(hidden=(6,))), event_shape=(5,),
                               settings=likelihoods.GaussianLikelihoodSettings(scale=scale, fixed_scale=0.3))
    z = jax.random.normal(jax.random.key(0), (2, 3))
    dist, _ = _apply(lik, z)
    x = jax.random.normal(jax.random.key(1), (2, 5))
    mu = np.asarray(dist.distribution.loc, np.float64)
    sigma = np.asarray(dist.distribution.scale, np.float64)
    np.testing.assert_allclose(sigma, 0.3, rtol=1e-5)  # learned scales start at fixed_scale
    expected = np.sum(-0.5 * ((np.asarray(x) - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi), -1)
    np.testing.assert_allclose(dist.log_prob(x), expected, rtol=1e-5)


def test_diagonal_gaussian_kl_to_standard_normal_matches_formula():
    q_net = posteriors.DiagonalGaussian(encoder=networks.MLP(networks.MLPSettings(hidden=(8,))), latent_dim=3)
    x = jax.random.normal(jax.random.key(0), (6, 4))
    q, _ = _apply(q_net, x)
    p = priors.StandardNormal(latent_dim=3).apply({})
    mu, sd = np.asarray(q.mean(), np.float64), np.asarray(q.stddev(), np.float64)
    expected = 0.5 * np.sum(mu**2 + sd**2 - 1 - 2 * np.log(sd), -1)
    np.testing.assert_allclose(q.kl_divergence(p), expected, rtol=1e-4, atol=1e-6)
    assert q.event_shape == (3,) and q.batch_shape == (6,)


def test_soft_clip_bounds_and_inverse():
    x = jnp.linspace(-50, 50, 101)
    y = posteriors.soft_clip(x, -10.0, 3.0)
    assert float(y.min()) >= -10.0 - 1e-4 and float(y.max()) <= 3.0 + 1e-4
    assert bool(jnp.all(jnp.diff(y) >= 0))
    np.testing.assert_allclose(posteriors.soft_clip(jnp.array([-3.0, 0.0]), -10.0, 3.0), [-3.0, 0.0], atol=0.05)
    t = jnp.array([-9.0, -2.0, 0.0, 2.5])
    np.testing.assert_allclose(posteriors.soft_clip(posteriors.soft_clip_inverse(t, -10.0, 3.0), -10.0, 3.0), t, atol=1e-5)


def test_point_mass_is_its_location():
    q_net = posteriors.PointMass(encoder=networks.MLP(networks.MLPSettings(hidden=(8,))), latent_dim=3)
    x = jax.random.normal(jax.random.key(0), (2, 4))
    q, _ = _apply(q_net, x)
    z = q.sample(seed=jax.random.key(1))
    np.testing.assert_array_equal(z, q.mean())
    assert np.all(np.isfinite(np.asarray(q.log_prob(q.mean()))))
    assert np.all(np.asarray(q.log_prob(q.mean() + 0.1)) == -np.inf)


def test_check_support_rejects_grey_levels_and_nan():
    likelihoods.check_support("bernoulli", np.array([0.0, 1.0, 1.0]))
    with pytest.raises(likelihoods.SupportError, match="binarization"):
        likelihoods.check_support("bernoulli", np.array([0.0, 0.5, 1.0]))
    with pytest.raises(likelihoods.SupportError, match="NaN"):
        likelihoods.check_support("gaussian", np.array([0.0, np.nan]))


def test_output_bias_is_logit_of_mean():
    m = np.array([0.001, 0.25, 0.5, 0.9999])
    b = likelihoods.Bernoulli.output_bias(m)
    np.testing.assert_allclose(1 / (1 + np.exp(-b)), np.clip(m, 1e-3, 1 - 1e-3), rtol=1e-6)


@pytest.mark.parametrize("name", POSTERIORS.names())
def test_every_registered_posterior_builds_on_an_mlp_encoder(name):
    """Each posterior of the registry, at its default settings, on an mlp encoder trunk of 4x4x1
    observations: q(z | x) with batch [2] and event [2], whose samples have finite log-density
    (a point mass: at its location; a categorical q: two categories, one one-hot variable)."""
    component = POSTERIORS.get(name)
    assert component.summary.strip()
    encoder = NETWORKS.select("mlp", hidden=(8,)).build(event_ndims=3)
    changed = {"categories": 2} if "categories" in {f.name for f in fields(component.settings)} else {}
    q_net = POSTERIORS.select(name, **changed).build(encoder=encoder, latent_dim=2)
    assert isinstance(q_net, nn.Module)
    assert posteriors.is_point_mass(q_net) == bool(component.trait("deterministic"))
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
    q, _ = _apply(q_net, x)
    assert q.batch_shape == (2,) and q.event_shape == (2,)
    z, lp = q.sample_and_log_prob(seed=jax.random.key(1))
    assert z.shape == (2, 2) and lp.shape == (2,)
    assert np.all(np.isfinite(np.asarray(lp)))
