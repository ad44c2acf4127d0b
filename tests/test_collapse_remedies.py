"""Free bits and the cyclical KL weight: the two standard remedies for posterior collapse, checked
against hand-computed values."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.config import loading
from vaegen.config.loading import component
from vaegen.config.schema import to_spec
from vaegen.errors import ConfigError
from vaegen.model import latent as latent_lib
from vaegen.objectives import bounds


def test_kl_per_dimension_is_the_closed_form_and_sums_to_the_kl():
    q = distrax.MultivariateNormalDiag(jnp.array([0.5, -1.0, 0.0]), jnp.array([0.5, 2.0, 1.0]))
    p = distrax.MultivariateNormalDiag(jnp.zeros(3), jnp.ones(3))
    kl = np.asarray(bounds.kl_per_dimension(q, p))
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1) / 2 - log s
    expected = [(0.25 + 0.25 - 1) / 2 - np.log(0.5), (4 + 1 - 1) / 2 - np.log(2.0), 0.0]
    np.testing.assert_allclose(kl, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(kl.sum(), q.kl_divergence(p), rtol=1e-6)
    with pytest.raises(TypeError, match="diagonal Gaussians"):
        bounds.kl_per_dimension(q, distrax.MultivariateNormalFullCovariance(jnp.zeros(3), jnp.eye(3)))


def test_free_bits_by_hand():
    kl = jnp.array([0.1, 0.5, 2.0, 0.0])
    assert float(bounds.free_bits_kl(kl, 0.25)) == pytest.approx(0.25 + 0.5 + 2.0 + 0.25)
    assert float(bounds.free_bits_kl(kl, 0.25, group_size=2)) == pytest.approx(0.6 + 2.0)
    assert float(bounds.free_bits_kl(kl, 1.0, group_size=4)) == pytest.approx(2.6)
    # below lambda a group's KL gets no gradient; above it, the KL's own
    grad = jax.grad(lambda k: bounds.free_bits_kl(k, 0.25))(kl)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 0.0])


def test_cyclical_kl_weight_by_hand():
    w = [float(bounds.kl_weight(2.0, 0, jnp.int32(t), cycle_steps=10, cycle_ratio=0.5)) for t in range(22)]
    one_cycle = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0]
    np.testing.assert_allclose(w, one_cycle * 2 + one_cycle[:2], atol=1e-6)
    # no cycle: the warm-up as before
    assert float(bounds.kl_weight(1.0, 4, jnp.int32(1))) == pytest.approx(0.25)


def _tiny(**objective):
    c = loading.load_config("tiny")
    c.objective = component("objective", "elbo", **objective)
    return c


def test_elbo_with_free_bits_reports_the_true_bound():
    spec = to_spec(_tiny(free_bits=0.5, free_bits_group_size=2))
    model = latent_lib.build_model(spec.model, spec.inference, (8, 8))
    variables = latent_lib.init_params(model, jax.random.key(0), (8, 8))
    x = (jax.random.uniform(jax.random.key(1), (8, 8)) < 0.3).astype(jnp.float32)
    with_fb = spec.objective.build(steps_per_epoch=10)(model, variables, x, jax.random.key(2), 0)
    plain = bounds.ELBO()(model, variables, x, jax.random.key(2), 0)
    for k in ("elbo", "kl", "reconstruction"):          # the bound itself is unchanged
        assert float(with_fb[k]) == pytest.approx(float(plain[k]), rel=1e-6)
    q = model.apply(variables, x, method="q_z_given_x")
    kl_dims = bounds.kl_per_dimension(q, distrax.MultivariateNormalDiag(jnp.zeros(4), jnp.ones(4)))
    expected = sum(max(0.5, float(kl_dims[i] + kl_dims[i + 1])) for i in (0, 2))
    assert float(with_fb["kl_free_bits"]) == pytest.approx(expected, rel=1e-5)
    assert float(with_fb["objective"]) == pytest.approx(float(with_fb["reconstruction"]) - expected, rel=1e-5)
    assert float(with_fb["kl_free_bits"]) >= float(with_fb["kl"]) - 1e-6
    # validation tracks the true ELBO
    assert spec.objective.build(steps_per_epoch=10).for_validation(1).settings.free_bits == 0


def test_cyclical_weight_in_epochs():
    obj = to_spec(_tiny(kl_cycle_epochs=2, kl_cycle_ratio=0.25)).objective.build(steps_per_epoch=5)
    assert (obj.kl_cycle_steps, obj.settings.kl_cycle_ratio) == (10, 0.25)


@pytest.mark.parametrize("overrides, message", [
    (["objective.free_bits=0.5", "model.prior=mixture"], "free_bits needs a KL that splits over latent dimensions"),
    (["objective.free_bits=0.5", "inference.posterior=full_covariance_gaussian"],
     "free_bits needs a KL that splits over latent dimensions"),
    (["objective.free_bits=0.5", "objective.free_bits_group_size=3"],
     "free_bits_group_size=3 must divide config.model.latent_dim=4"),
    (["objective.kl_cycle_epochs=1", "objective.kl_warmup_epochs=1"], "kl_cycle_epochs and kl_warmup_epochs are two"),
    (["objective.kl_cycle_ratio=1.5"], "kl_cycle_ratio"),
])
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        to_spec(loading.load_config("tiny", [f"--config.{o}" for o in overrides]))
    assert "\n" not in str(info.value)
