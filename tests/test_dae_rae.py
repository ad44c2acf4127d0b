"""The denoising AE (corruption, walkback, Markov-chain sampler) and the regularised AE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen.config import loading as config
from vaegen.objectives import autoencoder as autoencoder
from vaegen.objectives import denoising as dae
from vaegen.model import latent as model_lib

EVENT = (8, 8, 1)


@pytest.fixture(scope="module")
def ae():
    spec = vaegen.to_spec(config.load_config("tiny:ae"))
    m = model_lib.build_model(spec.model, spec.inference, EVENT)
    return m, model_lib.init_params(m, jax.random.key(0), EVENT)


def _binary(key, shape=EVENT):
    return jax.random.bernoulli(key, 0.3, shape).astype(jnp.float32)


def test_corruptions_change_the_expected_fraction_of_pixels():
    x = _binary(jax.random.key(1), (200, 28, 28, 1))
    key = jax.random.key(2)
    sp = dae.corrupt(key, x, "salt_and_pepper", 0.4)
    flip = dae.corrupt(key, x, "bit_flip", 0.4)
    gauss = dae.corrupt(key, x, "gaussian", 0.5)
    assert sp.shape == flip.shape == gauss.shape == x.shape
    assert set(np.unique(np.asarray(sp))) <= {0.0, 1.0}
    # Salt and pepper replaces 40% of pixels by a fair coin: half of those change.
    assert float(jnp.mean(sp != x)) == pytest.approx(0.2, abs=0.01)
    assert float(jnp.mean(flip != x)) == pytest.approx(0.4, abs=0.01)
    assert float(jnp.std(gauss - x)) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="unknown corruption"):
        dae.corrupt(key, x, "blur", 0.1)


@pytest.mark.slow
def test_walkback_terms(ae):
    m, v = ae
    x = _binary(jax.random.key(3))
    plain = dae.DenoisingAutoencoder(dae.DAESettings(walkback_steps=1))(m, v, x, jax.random.key(4))
    assert plain["walkback"] == plain["denoising"] == plain["objective"] and plain["walk_length"] == 1
    always = dae.DenoisingAutoencoder(dae.DAESettings(walkback_steps=4, walkback_continue=1.0))(m, v, x, jax.random.key(4))
    never = dae.DenoisingAutoencoder(dae.DAESettings(walkback_steps=4, walkback_continue=0.0))(m, v, x, jax.random.key(4))
    assert always["walk_length"] == 4 and never["walk_length"] == 1
    assert never["walkback"] == pytest.approx(float(never["denoising"]), rel=1e-6)
    # The first step is the same draw whatever the walk does afterwards.
    assert always["denoising"] == pytest.approx(float(never["denoising"]), rel=1e-6)
    # Each term is log P(x | x~) <= 0 for a Bernoulli reconstruction distribution.
    assert always["walkback"] < 0 and always["denoising"] < 0


@pytest.mark.slow
def test_markov_chain_samples(ae):
    m, v = ae
    out = dae.sample_chain(m, v, jax.random.key(5), 5, num_steps=6, corruption="salt_and_pepper", noise_level=0.3,
                           event_shape=EVENT, keep_every=2)
    assert out["x"].shape == out["mean"].shape == (5,) + EVENT
    assert out["trajectory"].shape == (3, 5) + EVENT
    assert set(np.unique(np.asarray(out["x"]))) <= {0.0, 1.0}
    assert float(out["mean"].min()) >= 0.0 and float(out["mean"].max()) <= 1.0
    np.testing.assert_allclose(out["trajectory"][-1], out["mean"])
    # Chain i's path depends on fold_in(key, i) only, not on the number of chains.
    fewer = dae.sample_chain(m, v, jax.random.key(5), 2, num_steps=6, corruption="salt_and_pepper", noise_level=0.3,
                             event_shape=EVENT)
    np.testing.assert_array_equal(fewer["x"], out["x"][:2])
    with pytest.raises(ValueError, match="divide"):
        dae.sample_chain(m, v, jax.random.key(5), 2, num_steps=5, corruption="bit_flip", noise_level=0.1,
                         event_shape=EVENT, keep_every=2)


@pytest.mark.slow
def test_rae_objective_terms_and_decoder_penalty_gradient(ae):
    m, v = ae
    x = _binary(jax.random.key(6))
    obj = autoencoder.Autoencoder(autoencoder.AutoencoderSettings(code_penalty=2.0, decoder_l2=0.1))
    terms = obj(m, v, x, jax.random.key(0))
    kernels = [a for path, a in jax.tree_util.tree_flatten_with_path(v["params"]["likelihood"])[0]
               if path[-1].key == "kernel"]
    norm_sq = sum(float(jnp.sum(k**2)) for k in kernels)
    assert terms["decoder_norm_sq"] == pytest.approx(norm_sq, rel=1e-5)
    z = m.apply(v, x, method="q_z_given_x").mean()
    assert terms["code_norm_sq"] == pytest.approx(float(jnp.sum(z**2)), rel=1e-5)
    assert terms["objective"] == pytest.approx(
        float(terms["reconstruction"]) - 1.0 * float(terms["code_norm_sq"]) - 0.05 * norm_sq, rel=1e-5)
    # The decoder penalty pulls every decoder weight toward 0 by gamma * theta; encoder weights are not penalised.
    g_pen = jax.grad(lambda v: obj(m, v, x, jax.random.key(0))["objective"])(v)
    g_ae = jax.grad(lambda v: autoencoder.Autoencoder(autoencoder.AutoencoderSettings(code_penalty=2.0))(m, v, x, jax.random.key(0))["objective"])(v)
    k = v["params"]["likelihood"]["logits"]["kernel"]
    np.testing.assert_allclose(g_pen["params"]["likelihood"]["logits"]["kernel"] - g_ae["params"]["likelihood"]["logits"]["kernel"],
                               -0.1 * k, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_pen["params"]["posterior"]["loc"]["kernel"], g_ae["params"]["posterior"]["loc"]["kernel"])


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=rae"], "needs a deterministic encoder"),
    (["objective.name=dae"], "needs a deterministic encoder"),
    (["objective.name=dae", "inference.posterior=point_mass", "model.prior=none", "objective.noise_level=1.5"],
     "must lie in \\(0, 1\\)"),
    (["objective.name=dae", "inference.posterior=point_mass", "model.prior=none", "objective.walkback_continue=2.0"],
     "walkback_continue"),
    (["objective.name=dae", "inference.posterior=point_mass", "model.prior=none", "objective.corruption=blur"],
     "objective.corruption"),
    (["objective.name=rae", "inference.posterior=point_mass", "model.prior=none", "objective.decoder_l2=-1.0"],
     "objective.decoder_l2"),
])
def test_config_errors(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load_config("tiny", overrides)
