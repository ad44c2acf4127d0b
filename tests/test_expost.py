"""The ex-post mixture prior: fitting, the distrax density, and the AE made generative."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.config import loading as config
from vaegen.config.schema import to_spec
from vaegen.model import linear_gaussian as exact
from vaegen.runs.recipes import Fit, recipe
from vaegen.runs.recipes import mixture as mixture_lib
from vaegen.model import latent as model_lib
from vaegen.blocks import networks as networks
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.blocks import posteriors as posteriors
from vaegen.runs import run as run_lib


def test_fit_recovers_separated_clusters_and_matches_sklearn_density():
    rng = np.random.RandomState(0)
    a = rng.normal(size=(600, 2)) * [0.3, 0.1] + [3.0, 0.0]
    b = rng.normal(size=(300, 2)) * 0.2 + [-3.0, 2.0]
    codes = np.concatenate([a, b])
    mix = mixture_lib.fit_mixture(codes, num_components=2, bayesian=False, seed=0)
    order = np.argsort(mix.means[:, 0])
    np.testing.assert_allclose(mix.means[order], [[-3.0, 2.0], [3.0, 0.0]], atol=0.05)
    np.testing.assert_allclose(mix.weights[order], [1 / 3, 2 / 3], atol=0.01)
    # The distrax mixture built from the fit has sklearn's density.
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, covariance_type="full", random_state=0, init_params="kmeans").fit(codes)
    z = rng.normal(size=(50, 2)) * 2
    np.testing.assert_allclose(mix.distribution().log_prob(jnp.asarray(z, jnp.float32)), gm.score_samples(z),
                               rtol=1e-4, atol=1e-4)
    # Bayesian fit with more components than needed: the extra ones get little weight.
    bayes = mixture_lib.fit_mixture(codes, num_components=10, seed=0)
    assert bayes.num_components == 10 and bayes.info["effective_components"] < 4


def test_mixture_save_load_roundtrip(tmp_path):
    mix = mixture_lib.fit_mixture(np.random.RandomState(1).normal(size=(200, 3)), num_components=2, seed=0)
    mix.save(tmp_path)
    back = mixture_lib.FittedMixture.read(tmp_path)
    np.testing.assert_array_equal(back.scale_tril, mix.scale_tril)
    assert back.info == mix.info


def _linear_gaussian_ae(lg):
    """The linear-Gaussian model's decoder with a point-mass encoder at the exact posterior mean: an
    autoencoder whose log p(x) under N(0, I) is known in closed form."""
    spec = to_spec(config.load_config("tiny:ae", [f"model.latent_dim={lg.latent_dim}", "model.likelihood=gaussian",
                                                  "data.binarization=none"]))
    model = model_lib.LatentVariableModel(
        prior=None,
        likelihood=lg.model().likelihood,
        posterior=posteriors.PointMass(encoder=networks.MLP(networks.MLPSettings(hidden=())), latent_dim=lg.latent_dim))
    v = lg.variables()
    variables = {"params": {"likelihood": v["params"]["likelihood"],
                            "posterior": {"loc": v["params"]["posterior"]["loc"]}}}
    return run_lib.Run(workdir=pathlib.Path("."), spec=spec, model=model, variables=variables,
                       event_shape=(lg.data_dim,), epoch=0, info={})


@pytest.mark.slow
def test_importance_sampling_with_the_code_proposal_matches_the_exact_log_px():
    lg = exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=2, s=0.5)
    ae = _linear_gaussian_ae(lg)
    xs = jnp.asarray(lg.sample(jax.random.key(1), 16), jnp.float32)
    codes = np.asarray(ae.encode(xs).mean())
    with pytest.raises(model_lib.NoPriorError):
        ae.sample(jax.random.key(0), 2)
    gen = recipe("standard_normal").attach(ae, Fit("standard_normal"), code_scale=codes.std(0))
    assert gen.has_prior and not gen.is_autoencoder
    # The proposal is centred on the code f(x).
    np.testing.assert_allclose(gen.encode(xs).mean(), codes, rtol=1e-5, atol=1e-6)
    keys = jax.random.split(jax.random.key(2), xs.shape[0])
    est = jax.jit(lambda v, x, k: batched(objectives.IWAE(objectives.IWAESettings(num_samples=2000)), gen.model, v, x, k))(
        gen.variables, xs, keys)["iwae"]
    error = np.asarray(est, np.float64) - lg.log_marginal(np.asarray(xs, np.float64))
    # A stochastic lower bound: below log p(x) on average, and close with k = 2000.
    assert -0.05 < error.mean() < 0.01
    assert np.max(np.abs(error)) < 0.15


@pytest.mark.slow
def test_ae_with_a_fitted_mixture_is_sampled_ancestrally():
    lg = exact.LinearGaussian.random(jax.random.key(3), data_dim=5, latent_dim=2, s=0.3)
    ae = _linear_gaussian_ae(lg)
    codes = np.asarray(ae.encode(jnp.asarray(lg.sample(jax.random.key(4), 500), jnp.float32)).mean())
    mix = mixture_lib.fit_mixture(codes, num_components=3, seed=0)
    gen = recipe("gmm").attach(ae, Fit("gmm", value=mix, code_scale=codes.std(0)))
    z, x = gen.sample_with_latents(jax.random.key(5), 64)
    assert z.shape == (64, 2) and x.shape == (64, 5)
    assert np.all(np.isfinite(np.asarray(x)))
    # The prior is the fitted mixture, parameter for parameter; the decoder is the AE's.
    np.testing.assert_allclose(gen.prior().log_prob(z), mix.distribution().log_prob(z), rtol=1e-5)
    np.testing.assert_array_equal(gen.variables["params"]["likelihood"]["loc"]["kernel"],
                                  ae.variables["params"]["likelihood"]["loc"]["kernel"])
    assert np.all(np.isfinite(np.asarray(gen.log_joint(x[0], z))))
    with pytest.raises(ValueError, match="over 3 dimensions"):
        recipe("gmm").attach(ae, Fit("gmm", value=dataclasses.replace(
            mix, means=np.zeros((3, 3)), scale_tril=np.broadcast_to(np.eye(3), (3, 3, 3))), code_scale=np.ones(2)))
