"""Latent diagnostics against closed forms: KL per unit, active units, rate/distortion, I_q(x; z)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.blocks.priors import IndexedMixture
from vaegen.config import loading as config_lib
from vaegen.config.schema import to_spec
from vaegen.estimators import diagnostics as D
from vaegen.model import linear_gaussian as exact
from vaegen.model.latent import build_model, init_params


def _exact_mutual_information(lg):
    """I_q(x; z) of the optimal diagonal q(z|x) = N(A x + c, diag v) for x ~ p(x) = N(b, C): the
    aggregate posterior is N(0, A C A^T + diag v), so I = 1/2 (log det(A C A^T + diag v) - sum log v)."""
    S = lg.posterior_covariance()
    A = S @ lg.W.T / lg.s**2
    v = lg.optimal_diagonal_variance()
    aggregate = A @ lg.marginal_covariance() @ A.T + np.diag(v)
    return 0.5 * (np.linalg.slogdet(aggregate)[1] - np.sum(np.log(v)))


def test_diagnostics_of_a_linear_gaussian_model_with_an_unused_unit():
    W = np.asarray(exact.LinearGaussian.random(jax.random.key(0), 6, 3, s=0.6).W)
    W[:, 2] = 0.0                                   # z_3 does not enter p(x|z): its posterior is the prior
    lg = exact.LinearGaussian(W, np.linspace(-1, 1, 6), 0.6)
    xs = lg.sample(jax.random.key(1), 2000).astype(np.float32)
    model, variables = lg.model(), lg.variables()
    out = D.diagnose(model, variables, xs, jax.random.key(2), num_samples=4, mi_samples=4)

    # KL per unit, in closed form for q = N(m(x), diag v) and p = N(0, I); it sums to the rate.
    m, v = lg.posterior_mean(xs), lg.optimal_diagonal_variance()
    kl_dims = (0.5 * (m**2 + v - 1 - np.log(v))).mean(0)
    np.testing.assert_allclose(out["kl_per_dim"], kl_dims, rtol=1e-3, atol=1e-5)
    assert out["rate"]["mean"] == pytest.approx(kl_dims.sum(), rel=1e-3)
    # Active units: Var_x E_q[z_d] > 0.01 (Burda et al.); the unused unit is inactive and collapsed.
    np.testing.assert_allclose(out["active_unit_variance"], m.var(0), rtol=1e-3, atol=1e-6)
    assert out["active"] == [True, True, False] and out["active_units"] == 2
    assert out["collapsed_units"] == 1 and out["posterior_collapse"] is False
    assert "2 of 3 units have mean KL" in out["collapse_reason"] and "1 collapsed" in out["collapse_reason"]
    # Rate + distortion = -ELBO; the exact ELBO of this q is log p(x) - KL(q || p(z|x)).
    exact_elbo = lg.elbo(xs, m, v).mean()
    assert out["elbo"] == pytest.approx(-(out["rate"]["mean"] + out["distortion"]["mean"]))
    assert abs(out["elbo"] - exact_elbo) < 0.05
    # I_q(x; z) against its closed form (the unused unit carries none), and KL(q(z) || p(z)) = R - I.
    assert out["mutual_information"] == pytest.approx(_exact_mutual_information(lg), abs=0.05)
    assert out["marginal_kl"] == pytest.approx(out["rate"]["mean"] - out["mutual_information"])
    assert 0 <= out["mutual_information"] <= out["mutual_information_upper_limit"] == pytest.approx(np.log(2000))


def test_a_model_that_ignores_z_has_collapsed():
    lg = exact.LinearGaussian(np.zeros((6, 3)), np.zeros(6), 1.0)     # p(x|z) = p(x): q = p(z) is optimal
    xs = lg.sample(jax.random.key(1), 200).astype(np.float32)
    out = D.diagnose(lg.model(), lg.variables(), xs, jax.random.key(2))
    assert out["posterior_collapse"] is True and out["active_units"] == 0 and out["collapsed_units"] == 3
    assert out["rate"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert abs(out["mutual_information"]) < 1e-4


def test_autoencoder_codes_are_diagnosed_and_the_rest_is_undefined():
    cfg = to_spec(config_lib.load_config("tiny:ae"))
    ae = build_model(cfg.model, cfg.inference, (8, 8, 1))
    v = init_params(ae, jax.random.key(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (50, 8, 8, 1)) > 0.5).astype(np.float32)
    out = D.diagnose(ae, v, x, jax.random.key(2))
    codes = np.asarray(ae.apply(v, x, method="q_z_given_x").mean())
    np.testing.assert_allclose(out["active_unit_variance"], codes.var(0), rtol=1e-4, atol=1e-7)
    rec = np.asarray(ae.apply(v, x, codes, method=lambda m, x, z: jax.vmap(m.log_likelihood)(x, z)))
    assert out["distortion"]["mean"] == pytest.approx(-rec.mean(), rel=1e-5)
    assert set(out["undefined"]) == {"kl_per_dim", "rate", "marginal_kl", "posterior_collapse", "mutual_information"}
    assert "point mass" in out["undefined"]["rate"] and "deterministic" in out["undefined"]["mutual_information"]
    assert "rate" not in out and "mutual_information" not in out


def test_kl_per_unit_against_a_mixture_prior_uses_its_marginals():
    """A mixture of identical diagonal Gaussians is that Gaussian: the Monte Carlo KL per unit
    against its marginals equals the closed form; against a real mixture it is the KL to the
    one-dimensional mixture marginal, computed here on a grid."""
    loc, scale = jnp.array([0.3, -1.0]), jnp.array([0.5, 2.0])
    q = distrax.MultivariateNormalDiag(jnp.array([1.0, 0.0]), jnp.array([0.7, 0.4]))
    same = IndexedMixture(distrax.Categorical(logits=jnp.zeros(3)),
                          distrax.MultivariateNormalDiag(jnp.broadcast_to(loc, (3, 2)), jnp.broadcast_to(scale, (3, 2))))
    z = q.sample(seed=jax.random.key(0), sample_shape=(200_000,))
    q_d = distrax.Normal(q.loc, q.scale_diag)
    mc = np.asarray(jnp.mean(q_d.log_prob(z) - D.marginals(same).log_prob(z), 0))
    exact_kl = np.asarray(distrax.Normal(q.loc, q.scale_diag).kl_divergence(distrax.Normal(loc, scale)))
    np.testing.assert_allclose(mc, exact_kl, atol=0.01)
    # a two-component mixture: unit 0's marginal is 0.5 N(-1, 1) + 0.5 N(2, 0.5^2), on a grid
    mix = IndexedMixture(distrax.Categorical(logits=jnp.zeros(2)),
                         distrax.MultivariateNormalDiag(jnp.array([[-1.0, 0.0], [2.0, 0.0]]), jnp.array([[1.0, 1.0], [0.5, 1.0]])))
    mc = float(jnp.mean(q_d.log_prob(z) - D.marginals(mix).log_prob(z), 0)[0])
    grid = np.linspace(-6, 8, 20001)
    qg = np.exp(distrax.Normal(1.0, 0.7).log_prob(grid))
    pg = 0.5 * np.exp(distrax.Normal(-1.0, 1.0).log_prob(grid)) + 0.5 * np.exp(distrax.Normal(2.0, 0.5).log_prob(grid))
    assert mc == pytest.approx(float(np.sum(qg * (np.log(qg) - np.log(pg))) * (grid[1] - grid[0])), abs=0.01)
