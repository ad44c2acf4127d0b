"""Per-example inference (q*), the new posterior families and semi-amortized training, checked
against the closed forms of a linear-Gaussian model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.errors import InferenceError
from vaegen.model import linear_gaussian as exact
from vaegen.inference import families
from vaegen.inference import semi_amortized
from vaegen.inference import svi as inference
from vaegen.blocks import networks as networks
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.blocks import posteriors as posteriors
from vaegen.blocks import priors as priors

SETTINGS = inference.SVISettings(num_steps=200, learning_rate=0.1, num_samples=16)


@pytest.fixture(scope="module")
def lg():
    return exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)


@pytest.fixture(scope="module")
def xs(lg):
    return lg.sample(jax.random.key(1), 6).astype(np.float32)


@pytest.fixture(scope="module")
def poor_encoder(lg):
    """The model with a deliberately poor linear encoder (a large amortization gap)."""
    rng = np.random.RandomState(0)
    return lg.variables(A=rng.normal(size=(3, 6)) * 0.3, c=rng.normal(size=3) * 0.1,
                        log_scale=np.array([-0.5, -1.0, 0.2]))


def _kl_gaussians(m_q, C_q, m_p, C_p):
    """KL(N(m_q, C_q) || N(m_p, C_p)), float64, for one pair."""
    P = np.linalg.inv(C_p)
    d = m_q - m_p
    return 0.5 * (np.trace(P @ C_q) + d @ P @ d - len(m_q) + np.linalg.slogdet(C_p)[1] - np.linalg.slogdet(C_q)[1])


@pytest.fixture(scope="module")
def fits(lg, xs, poor_encoder):
    """q* of the diagonal and full-covariance families for every example, from the poor encoder."""
    model = lg.model()
    return {f: inference.fit_local(model, poor_encoder, xs, jax.random.key(2), family=f, settings=SETTINGS,
                                   eval_samples=500, chunk_size=4, progress=False)
            for f in ("diag", "fullcov")}


@pytest.mark.slow
def test_fullcov_q_star_is_the_exact_posterior(lg, xs, fits):
    phi = fits["fullcov"].phi
    S, m = lg.posterior_covariance(), lg.posterior_mean(xs)
    L = np.asarray(posteriors.scale_tril(jnp.asarray(phi["log_scale"]), jnp.asarray(phi["tril"])), np.float64)
    kls = [_kl_gaussians(np.asarray(phi["loc"][i], np.float64), L[i] @ L[i].T, m[i], S) for i in range(len(xs))]
    # The approximation gap of the full-covariance family, log p(x) - L[q*] = KL(q* || p(z|x)), is zero.
    assert max(kls) < 0.01, kls
    # ... while the diagonal family's is not (the posterior is correlated).
    diag_gap = lg.log_marginal(xs) - lg.elbo(xs, m, lg.optimal_diagonal_variance())
    assert np.all(diag_gap > 0.05)


@pytest.mark.slow
def test_diag_q_star_attains_the_closed_form_optimum(lg, xs, fits):
    phi = fits["diag"].phi
    q_mean, q_var = np.asarray(phi["loc"], np.float64), np.exp(2 * np.asarray(phi["log_scale"], np.float64))
    np.testing.assert_allclose(q_mean, lg.posterior_mean(xs), atol=0.03)
    np.testing.assert_allclose(q_var, np.broadcast_to(lg.optimal_diagonal_variance(), q_var.shape), rtol=0.15)
    best = lg.elbo(xs, lg.posterior_mean(xs), lg.optimal_diagonal_variance())
    attained = lg.elbo(xs, q_mean, q_var)  # exact ELBO of the q* found
    assert np.all(best - attained < 0.01) and np.all(best - attained >= -1e-9)
    # The reported Monte Carlo estimate of L[q*] agrees with the exact value within its Monte Carlo error.
    assert np.all(np.abs(fits["diag"].elbo - attained) < 4 * fits["diag"].elbo_mc_stderr + 1e-3)
    # Refinement from the poor encoder closes a large amortization gap.
    assert np.all(fits["diag"].elbo - fits["diag"].elbo_init > 1.0) and fits["diag"].improved.all()


@pytest.mark.slow
def test_vmapped_q_star_equals_optimising_one_example_alone(lg, xs, poor_encoder, fits):
    model = lg.model()
    for i in (0, 5):
        alone = inference.fit_local(model, poor_encoder, xs[i:i + 1], jax.random.key(2), family="diag",
                                    settings=SETTINGS, eval_samples=500, progress=False, example_ids=[i])
        for name in ("loc", "log_scale"):
            np.testing.assert_allclose(alone.phi[name][0], fits["diag"].phi[name][i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone.elbo[0], fits["diag"].elbo[i], rtol=1e-5)


def test_full_covariance_posterior_density_and_kl():
    q_net = posteriors.FullCovarianceGaussian(encoder=networks.MLP(networks.MLPSettings(hidden=(8,))), latent_dim=3)
    x = jax.random.normal(jax.random.key(0), (5, 4))
    variables = q_net.init(jax.random.key(1), x)
    # Give the off-diagonal head non-zero weights (it starts at zero: a diagonal Gaussian).
    variables = jax.tree_util.tree_map(lambda a: a, variables)
    variables["params"]["tril"]["kernel"] = 0.5 * jax.random.normal(jax.random.key(2), (8, 3))
    z = np.asarray(jax.random.normal(jax.random.key(3), (5, 3)), np.float64)
    p = priors.StandardNormal(latent_dim=3).apply({})

    @jax.jit
    def run(variables):
        phi = q_net.apply(variables, x, method="parameters")
        q = q_net.apply(variables, x)
        return phi, posteriors.scale_tril(phi["log_scale"], phi["tril"]), q.log_prob(jnp.asarray(z, jnp.float32)), q.kl_divergence(p)

    phi, L, log_prob, kl = run(variables)
    L = np.asarray(L, np.float64)
    assert np.all(np.triu(L, 1) == 0) and np.abs(L[:, 1, 0]).min() > 0
    C = L @ np.swapaxes(L, -1, -2)
    m = np.asarray(phi["loc"], np.float64)
    expected = [-0.5 * (z[i] - m[i]) @ np.linalg.solve(C[i], z[i] - m[i]) - 0.5 * np.linalg.slogdet(2 * np.pi * C[i])[1]
                for i in range(5)]
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4)
    kl_expected = [0.5 * (np.trace(C[i]) + m[i] @ m[i] - 3 - np.linalg.slogdet(C[i])[1]) for i in range(5)]
    np.testing.assert_allclose(kl, kl_expected, rtol=1e-4)


def test_flow_density_is_the_change_of_variables_and_starts_at_the_base():
    d, c = 4, 2
    flow = posteriors.init_coupling_flow(jax.random.key(0), d, c, 4, (16,))
    phi = {"loc": jnp.array([0.1, -0.2, 0.3, 0.0]), "log_scale": jnp.array([-0.5, 0.1, 0.2, -1.0]),
           "context": jnp.array([1.0, -1.0]), "flow": flow}
    z0 = jnp.array([0.3, -0.1, 0.5, 1.2])

    @jax.jit
    def run(phi):
        q, base = posteriors.flow_distribution(phi), posteriors.diagonal_gaussian(phi)
        T = q.bijector.forward
        z, log_q = q.sample_and_log_prob(seed=jax.random.key(2), sample_shape=(7,))
        return {"Tz0": T(z0), "log_q_Tz0": q.log_prob(T(z0)), "log_base_z0": base.log_prob(z0),
                "logdet": jnp.linalg.slogdet(jax.jacfwd(T)(z0))[1], "log_q": log_q, "log_prob": q.log_prob(z)}

    fresh = run(phi)
    # A fresh flow is the identity: q is its diagonal Gaussian base.
    np.testing.assert_allclose(fresh["Tz0"], z0, rtol=1e-6)
    np.testing.assert_allclose(fresh["log_q_Tz0"], fresh["log_base_z0"], rtol=1e-6)
    # A trained-looking flow: log q(T(z0)) = log N(z0) - log |det dT/dz0|, every coordinate moved.
    phi["flow"] = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), flow)
    out = run(phi)
    assert np.all(np.abs(np.asarray(out["Tz0"] - z0)) > 1e-3)
    np.testing.assert_allclose(out["log_q_Tz0"], out["log_base_z0"] - out["logdet"], rtol=1e-4)
    np.testing.assert_allclose(out["log_q"], out["log_prob"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_flow_q_star_beats_the_best_diagonal_gaussian(lg, xs):
    """The flow family can represent the correlated posterior, which no diagonal Gaussian can."""
    model, variables = lg.model(), lg.variables()  # the optimal diagonal q as the amortized q
    family = families.make_family("flow", model, num_layers=4, hidden=(16,), context_dim=0)
    fit = inference.fit_local(model, variables, xs[:2], jax.random.key(4), family=family, eval_samples=1000,
                              settings=inference.SVISettings(num_steps=200, learning_rate=3e-2, num_samples=4),
                              progress=False)
    best_diag = lg.elbo(xs[:2], lg.posterior_mean(xs[:2]), lg.optimal_diagonal_variance())
    log_px = lg.log_marginal(xs[:2])
    # It starts exactly at the best diagonal q (identity flow) and closes most of its gap.
    np.testing.assert_allclose(fit.elbo_init, best_diag, atol=0.05)
    assert fit.phi["context"].shape == (2, 0) and fit.phi["loc"].shape == (2, 3)   # an empty context comes back
    assert np.all(fit.elbo > best_diag + 0.5 * (log_px - best_diag)), (fit.elbo, best_diag, log_px)
    assert np.all(fit.elbo <= log_px + 0.05)


def test_families_embed_a_diagonal_q_exactly(lg, xs):
    model, variables = lg.model(), lg.variables()
    x = jnp.asarray(xs[0])
    z = jnp.array([[0.1, 0.2, -0.3], [1.0, -1.0, 0.5]])
    expected = jax.jit(lambda v: model.apply(v, x, method="q_z_given_x").log_prob(z))(variables)
    for name in ("diag", "fullcov", "flow"):
        family = families.make_family(name, model)
        log_q = jax.jit(lambda v: family.distribution(
            families.initial_parameters(family, "amortized", model, v, x)).log_prob(z))(variables)
        np.testing.assert_allclose(log_q, expected, rtol=1e-5)
    with pytest.raises(InferenceError, match="unknown variational family"):
        families.make_family("gaussian_mixture", model)


@pytest.mark.slow
def test_semi_amortized_with_no_steps_is_the_elbo(lg, xs, poor_encoder):
    model, x = lg.model(), jnp.asarray(xs[0])
    key = jax.random.key(5)
    sa = semi_amortized.SemiAmortizedELBO(semi_amortized.SemiAmortizedSettings(steps=0))
    elbo = objectives.ELBO()

    @jax.jit
    def run(v):
        g_sa, terms = jax.grad(lambda v: (lambda t: (t["objective"], t))(sa(model, v, x, key)), has_aux=True)(v)
        g_elbo, ref = jax.grad(lambda v: (lambda t: (t["objective"], t))(elbo(model, v, x, jax.random.split(key)[1])),
                               has_aux=True)(v)
        return terms, ref, g_sa, g_elbo

    terms, ref, g_sa, g_elbo = run(poor_encoder)
    for name in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(terms[name], ref[name], rtol=1e-5)
    np.testing.assert_allclose(terms["refinement_gain"], 0.0, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_sa, g_elbo)


@pytest.mark.slow
def test_semi_amortized_refinement_and_its_gradients(lg, xs, poor_encoder):
    model, x = lg.model(), jnp.asarray(xs[1])
    key = jax.random.key(6)
    objs = {g: semi_amortized.SemiAmortizedELBO(semi_amortized.SemiAmortizedSettings(
                steps=30, learning_rate=0.05, step_samples=4, gradient=g, num_samples=64))
            for g in semi_amortized.GRADIENTS}
    terms = jax.jit(lambda v: objs["unrolled"](model, v, x, key))(poor_encoder)
    best = lg.elbo(xs[1:2], lg.posterior_mean(xs[1:2]), lg.optimal_diagonal_variance())[0]
    assert terms["refinement_gain"] > 1.0 and terms["elbo"] > terms["elbo_amortized"]
    assert best - terms["elbo"] < 0.5 * (best - terms["elbo_amortized"])
    grads = jax.jit(lambda v: {g: jax.grad(lambda v: o(model, v, x, key)["objective"])(v) for g, o in objs.items()})(poor_encoder)
    flat = {g: jax.tree_util.tree_leaves_with_path(gr) for g, gr in grads.items()}

    def part(g, name):
        return np.concatenate([np.ravel(v) for p, v in flat[g] if jax.tree_util.keystr(p).startswith(f"['params']['{name}']")])

    # theta: the partial derivative at phi_K in both "unrolled" (Kim et al.) and "stop"; "total" adds the path
    # through the inner loop.
    np.testing.assert_allclose(part("unrolled", "likelihood"), part("stop", "likelihood"), rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(part("total", "likelihood") - part("unrolled", "likelihood"))) > 1e-3
    # The encoder: through the K steps ("unrolled") versus its own amortized bound ("stop").
    enc_u, enc_s = part("unrolled", "posterior"), part("stop", "posterior")
    assert np.all(np.isfinite(enc_u)) and np.max(np.abs(enc_u - enc_s)) > 1e-3
    amortized_grad = jax.jit(jax.grad(
        lambda v: objectives.ELBO(objectives.ELBOSettings(num_samples=64))(model, v, x, jax.random.split(key)[1])["elbo"]))(poor_encoder)
    np.testing.assert_allclose(enc_s, np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(amortized_grad["params"]["posterior"])]),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("posterior", ["full_covariance_gaussian", "flow"])
@pytest.mark.slow
def test_richer_posteriors_build_from_the_config_and_train_on_the_elbo(posterior):
    from vaegen.config import loading as config_lib
    from vaegen.config.schema import to_spec
    from vaegen.model import latent as model_lib

    flow = ["inference.posterior.hidden=(8,)"] if posterior == "flow" else []
    cfg = to_spec(config_lib.load_config("tiny", [f"inference.posterior={posterior}", *flow]))
    model = model_lib.build_model(cfg.model, cfg.inference, (8, 8, 1))
    variables = model_lib.init_params(model, jax.random.key(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) > 0.5).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(2), 3)

    @jax.jit
    def run(v):
        loss = lambda v: -jnp.mean(batched(objectives.ELBO(objectives.ELBOSettings(num_samples=4)), model, v, x, keys)["objective"])
        return jax.value_and_grad(loss)(v)

    loss, grads = run(variables)
    assert np.isfinite(loss) and 0 < loss < 100
    norms = {k: float(optax_global_norm(g)) for k, g in grads["params"]["posterior"].items()}
    # The heads get gradients; a fresh flow is the identity, so its coupling networks get one (through
    # their zero-initialised last layers) while the context does not yet act.
    assert all(np.isfinite(n) for n in norms.values()) and norms["loc"] > 0 and norms["log_scale"] > 0
    if posterior == "flow":
        assert norms["flow"] > 0
    assert model.apply(variables, x, method="q_z_given_x").mean().shape == (3, 4)


def optax_global_norm(tree):
    import optax

    return optax.global_norm(tree)
