"""The generative model and, beside it, inference: VAE and AE are one code path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen.errors import NoPriorError
from vaegen.model import latent as model_lib
from vaegen.config.loading import load_config
from vaegen.registry import MODEL_KINDS, PRIORS

EVENT = (8, 8, 1)


def _build(spec):
    run_spec = vaegen.to_spec(load_config(spec))
    m = model_lib.build_model(run_spec.model, run_spec.inference, EVENT)
    return m, model_lib.init_params(m, jax.random.key(0), EVENT)


def _shapes(tree):
    return jax.tree_util.tree_map(jnp.shape, tree)


def test_ae_shares_encoder_decoder_and_likelihood_with_vae():
    vae, v_vae = _build("tiny")
    ae, v_ae = _build("tiny:ae")
    # Same likelihood class and the same decoder parameters, leaf for leaf.
    assert type(vae.likelihood) is type(ae.likelihood) and vae.likelihood == ae.likelihood
    assert _shapes(v_vae["params"]["likelihood"]) == _shapes(v_ae["params"]["likelihood"])
    # Same encoder trunk and mean head; the VAE adds only the log-scale head.
    assert vae.posterior.encoder == ae.posterior.encoder
    p_vae, p_ae = v_vae["params"]["posterior"], v_ae["params"]["posterior"]
    assert set(p_vae) - set(p_ae) == {"log_scale"}
    assert _shapes({k: p_vae[k] for k in p_ae}) == _shapes(p_ae)
    # Hence the VAE's trained nets drop into the AE: its code is the VAE's posterior mean.
    transplanted = {"params": {"likelihood": v_vae["params"]["likelihood"],
                               "posterior": {k: p_vae[k] for k in p_ae}}}
    x = (jax.random.uniform(jax.random.key(1), (2,) + EVENT) > 0.5).astype(jnp.float32)
    np.testing.assert_allclose(ae.apply(transplanted, x, method="q_z_given_x").mean(),
                               vae.apply(v_vae, x, method="q_z_given_x").mean(), rtol=1e-6)
    assert vae.has_prior and not ae.has_prior and ae.is_autoencoder and not vae.is_autoencoder


def test_log_joint_is_prior_plus_likelihood():
    m, v = _build("tiny")
    x = (jax.random.uniform(jax.random.key(1), EVENT) > 0.5).astype(jnp.float32)
    z = jax.random.normal(jax.random.key(2), (5, 4))
    lj = m.apply(v, x, z, method="log_joint")
    lp = m.apply(v, method=lambda mm: mm.p_z().log_prob(z))
    ll = m.apply(v, x, z, method="log_likelihood")
    assert lj.shape == (5,)
    np.testing.assert_allclose(lj, lp + ll, rtol=1e-6)
    np.testing.assert_allclose(lp, -0.5 * np.sum(np.asarray(z) ** 2, -1) - 2 * np.log(2 * np.pi), rtol=1e-5)


def test_ancestral_sampling_shapes_and_support():
    m, v = _build("tiny")
    z, x = m.apply(v, jax.random.key(3), 6, method="sample_with_latents")
    assert z.shape == (6, 4) and x.shape == (6,) + EVENT
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}


def test_autoencoder_has_no_prior_to_sample():
    m, v = _build("tiny:ae")
    with pytest.raises(NoPriorError, match="no prior p\\(z\\)"):
        m.apply(v, jax.random.key(0), 2, method="sample")
    with pytest.raises(NoPriorError):
        m.apply(v, jnp.zeros(EVENT), jnp.zeros(4), method="log_joint")


def test_output_bias_initialised_at_logit_of_data_mean():
    m, v = _build("tiny")
    mean = np.linspace(0.05, 0.95, 64).reshape(EVENT)
    v2 = model_lib.set_output_bias(v, m, mean)
    z = jnp.zeros((4,))
    # At z = 0 the trunk outputs tanh(0) = 0 (biases start at 0): p(x | z) is exactly the data mean.
    probs = m.apply(v2, z, method=lambda mm, z: mm.p_x_given_z(z).distribution.probs)
    np.testing.assert_allclose(probs, mean, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_KINDS.names())
def test_every_registered_model_kind_builds_with_its_defaults(name):
    """Each model kind of the registry, at its default settings, from the tiny config's parts:
    a module whose parameters initialise for 8x8x1 observations, or for vectors of latent_dim
    numbers for a density over them (shapes only, never compiled)."""
    component = MODEL_KINDS.get(name)
    assert component.summary.strip()
    spec = vaegen.to_spec(load_config("tiny"))
    model_spec = dataclasses.replace(spec.model, kind=MODEL_KINDS.select(name))
    event = EVENT
    if component.trait("training") == "density":  # a learned density (a flow) over vectors of latent_dim numbers
        event = (spec.model.latent_dim,)
        model_spec = dataclasses.replace(model_spec, prior=PRIORS.select("flow"))
    if component.trait("over_codes"):  # a prior over vectors of latent_dim code indices
        event = (spec.model.latent_dim,)
    m = model_lib.build_model(model_spec, spec.inference, event)
    v = jax.eval_shape(lambda: model_lib.init_params(m, jax.random.key(0), event))
    assert jax.tree_util.tree_leaves(v["params"])
    if component.trait("latents") != "none":  # p(x | z) and q(z | x); p(z) may have no parameters (N(0, I))
        assert {"likelihood", "posterior"} <= set(v["params"])
