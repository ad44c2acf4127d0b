"""Gradient estimators of the bounds (reparam, STL, DReG), the multi-sample objectives (MIWAE, CIWAE,
PIWAE) and the gradient signal-to-noise diagnostic, against exact answers: the linear-Gaussian
model's closed forms, the estimators' defining formulas, and their expectations over many draws."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import vaegen
from vaegen import errors
from vaegen.config import loading, schema
from vaegen.estimators import snr
from vaegen.model import linear_gaussian as exact
from vaegen.model.latent import init_params
from vaegen.objectives import bounds, multisample, surrogates
from vaegen.objectives.batch import batched
from vaegen.registry import registry
from vaegen.studies import gaps
from vaegen.train import trainer


def _elbo(**settings) -> bounds.ELBO:
    return bounds.ELBO(bounds.ELBOSettings(**settings))


def _iwae(k: int, estimator: str = "reparam") -> bounds.IWAE:
    return bounds.IWAE(bounds.IWAESettings(num_samples=k, estimator=estimator))


def _miwae(m: int, k: int, estimator: str = "reparam") -> multisample.MIWAE:
    return multisample.MIWAE(multisample.MIWAESettings(num_groups=m, num_samples=k, estimator=estimator))


def _ciwae(beta: float, k: int, estimator: str = "reparam") -> multisample.CIWAE:
    return multisample.CIWAE(multisample.CIWAESettings(beta=beta, num_samples=k, estimator=estimator))


def _piwae(m: int, k: int, estimator: str = "reparam") -> multisample.PIWAE:
    return multisample.PIWAE(multisample.PIWAESettings(num_groups=m, num_samples=k, estimator=estimator))


@pytest.fixture(scope="module")
def lg():
    return exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)


@pytest.fixture(scope="module")
def xs(lg):
    return jnp.asarray(lg.sample(jax.random.key(1), 4), jnp.float32)


@pytest.fixture(scope="module")
def poor_q(lg):
    """The model's exact generative part with a q(z | x) whose mean map is 0.7 of the optimal one."""
    a = np.asarray(lg.variables()["params"]["posterior"]["loc"]["kernel"]).T * 0.7
    return lg.variables(A=a)


def _draws(model, variables, objective, xs, n, seed=7, part="posterior"):
    """n draws of the minibatch gradient of ``objective`` w.r.t. ``params/<part>``, flat ``[n, P]``
    (float64); draw i keyed by fold_in(key, i), example b by its split: the same noise for every
    objective of the same number of samples."""
    def one(key):
        keys = jax.random.split(key, xs.shape[0])
        g = jax.grad(lambda v: jnp.mean(batched(objective, model, v, xs, keys)["objective"]))(variables)
        return ravel_pytree(g["params"][part])[0]

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


# --- values: the estimator shapes gradients only ------------------------------------------------

@pytest.mark.slow
def test_every_estimator_reports_the_same_bound(lg, xs, poor_q):
    model = lg.model()
    keys = jax.random.split(jax.random.key(3), xs.shape[0])
    run = lambda obj: jax.jit(lambda v: batched(obj, model, v, xs, keys))(poor_q)
    iwae = run(_iwae(8))
    for est in ("stl", "dreg"):
        other = run(_iwae(8, estimator=est))
        for name in iwae:
            np.testing.assert_allclose(other[name], iwae[name], rtol=1e-5, atol=1e-5, err_msg=f"{est} {name}")
    # MIWAE(1, k) is IWAE_k, bitwise; its groups' bounds sit below IWAE_{Mk} of the same samples.
    np.testing.assert_array_equal(run(_miwae(1, 8))["miwae"], iwae["iwae"])
    m = run(_miwae(2, 4, "dreg"))
    assert np.all(m["miwae"] <= m["iwae"] + 1e-6) and np.all(m["elbo"] <= m["miwae"] + 1e-6)
    # CIWAE interpolates between the ELBO and IWAE of the same samples; PIWAE reports both of its bounds.
    c = run(_ciwae(0.25, 8, "dreg"))
    np.testing.assert_allclose(c["ciwae"], 0.25 * c["elbo"] + 0.75 * c["iwae"], rtol=1e-6)
    np.testing.assert_allclose(c["iwae"], iwae["iwae"], rtol=1e-5)
    np.testing.assert_array_equal(run(_ciwae(0.0, 8))["ciwae"], iwae["iwae"])
    p = run(_piwae(2, 4, "dreg"))
    np.testing.assert_allclose(p["iwae"], m["iwae"], rtol=1e-5)
    np.testing.assert_allclose(p["miwae"], m["miwae"], rtol=1e-5)
    np.testing.assert_allclose(p["objective"], p["iwae"], rtol=1e-6)  # iwae + miwae - sg(miwae)
    # The ELBO with STL: the Monte Carlo ELBO of the same draw as the reparameterized one.
    e_mc = run(_elbo(analytic_kl=False))
    e_stl = run(_elbo(analytic_kl=False, estimator="stl"))
    np.testing.assert_allclose(e_stl["elbo"], e_mc["elbo"], rtol=1e-6)


# --- DReG is its formula --------------------------------------------------------------------------

@pytest.mark.parametrize("objective,groups,beta", [
    (_iwae(8, estimator="dreg"), 1, 0.0),
    (_miwae(2, 4, "dreg"), 2, 0.0),
    (_ciwae(0.3, 8, "dreg"), 1, 0.3),
])
def test_dreg_gradient_is_the_doubly_reparameterized_formula(lg, xs, poor_q, objective, groups, beta):
    """The one-pass custom VJP gives, draw by draw, the two-pass surrogate written from the
    definition: phi's gradient sum_i a_i d log w_i/dz_i dz_i/dphi (log q with phi stopped), theta's
    sum_i g_i d log w_i / d theta at fixed z, with g = dF/dlog w and a = g - d g/d log w
    (IWAE: g = w~, a = w~^2)."""
    model = lg.model()
    n = objective.samples_per_example
    sg = jax.lax.stop_gradient

    def reference(v, x, key):
        def log_w(v_p, v_q):  # log p under v_p, z drawn with v_q's q (path), log q with stopped q
            z = model.apply(v_q, x, key, n, False, method=surrogates._draw)[0]
            log_pz, log_px_z = model.apply(v_p, x, z, method=surrogates._log_p_parts)
            return log_pz + log_px_z - model.apply(surrogates.stop_posterior(v_q), x, z, method=surrogates._log_q)

        encoder = log_w(sg(v), v)                           # phi's path only
        decoder = log_w(v, sg(v))                           # theta only
        w = jax.nn.softmax(sg(decoder).reshape(groups, n // groups), -1).reshape(n)
        g = beta / n + (1 - beta) * w / groups
        a = beta / n + (1 - beta) * w**2 / groups
        return jnp.sum(sg(a) * encoder) + jnp.sum(sg(g) * decoder)

    keys = jax.random.split(jax.random.key(11), xs.shape[0])
    ours = jax.jit(jax.grad(lambda v: jnp.mean(batched(objective, model, v, xs, keys)["objective"])))(poor_q)
    ref = jax.jit(jax.grad(lambda v: jnp.mean(jax.vmap(lambda x, k: reference(v, x, k))(xs, keys))))(poor_q)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # ... and it is not the plain IWAE gradient (the test can fail).
    plain = dataclasses.replace(objective, settings=dataclasses.replace(objective.settings, estimator="reparam"))
    other = jax.jit(jax.grad(lambda v: jnp.mean(batched(plain, model, v, xs, keys)["objective"])))(poor_q)
    assert not np.allclose(ravel_pytree(other["params"]["posterior"])[0], ravel_pytree(ours["params"]["posterior"])[0],
                           rtol=1e-3)
    np.testing.assert_allclose(ravel_pytree(other["params"]["likelihood"])[0],
                               ravel_pytree(ours["params"]["likelihood"])[0], rtol=2e-4, atol=2e-5)


def test_piwae_trains_the_decoder_on_iwae_and_the_encoder_on_miwae(lg, xs, poor_q):
    model = lg.model()
    keys = jax.random.split(jax.random.key(5), xs.shape[0])
    grad = lambda obj: jax.jit(jax.grad(lambda v: jnp.mean(batched(obj, model, v, xs, keys)["objective"])))(poor_q)
    flat = lambda g, part: ravel_pytree(g["params"][part])[0]
    p = grad(_piwae(2, 4, "dreg"))
    np.testing.assert_allclose(flat(p, "likelihood"), flat(grad(_iwae(8)), "likelihood"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flat(p, "posterior"), flat(grad(_miwae(2, 4, "dreg")), "posterior"),
                               rtol=1e-4, atol=1e-5)


# --- STL at the exact posterior; unbiasedness; variance -------------------------------------------

@pytest.mark.slow
def test_stl_gradient_has_zero_variance_when_q_is_the_exact_posterior():
    """W with orthogonal columns: p(z | x) is diagonal, so the optimal diagonal q is exact and
    log p(x, z) - log q(z | x) = log p(x) for every z: the path derivative is 0 in every draw,
    while the reparameterized gradient still carries the score's (and the reconstruction's) noise."""
    q_, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(6, 3)))
    lg = exact.LinearGaussian(W=q_ * np.array([1.5, 1.0, 0.6]), b=np.random.RandomState(1).normal(size=6), s=0.6)
    S = lg.posterior_covariance()
    assert np.allclose(S, np.diag(np.diag(S)))                      # the exact posterior is diagonal
    model, v = lg.model(), lg.variables()
    xs = jnp.asarray(lg.sample(jax.random.key(2), 4), jnp.float32)
    sd = lambda obj: _draws(model, v, obj, xs, 64).std(0)
    for obj in (_elbo(analytic_kl=False, estimator="stl"), _iwae(8, "stl"), _iwae(8, "dreg")):
        assert sd(obj).max() < 1e-5, obj                            # float precision; gradients are O(1)
    for obj in (_elbo(analytic_kl=False), _elbo(), _iwae(8)):
        assert sd(obj).max() > 0.1, obj


def test_dreg_and_iwae_encoder_gradients_have_the_same_expectation(lg, xs, poor_q):
    """Paired draws (the same noise): the mean difference of every encoder parameter's gradient is
    within 4 standard errors of 0 for DReG, and STL's (biased for k > 1) is not."""
    model, n = lg.model(), 3000
    iwae = _draws(model, poor_q, _iwae(8), xs, n)
    for est, unbiased in (("dreg", True), ("stl", False)):
        diff = _draws(model, poor_q, _iwae(8, est), xs, n) - iwae
        z = np.abs(diff.mean(0)) / (diff.std(0, ddof=1) / np.sqrt(n))
        assert (z.max() < 4) == unbiased, (est, np.sort(z)[-5:])


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """The tiny VAE (8x8 digits) after 5 epochs of IWAE-8 training, with a few training images."""
    spec = schema.to_spec(loading.load_config("tiny", ["train.num_epochs=5", "objective=iwae",
                                                       "objective.num_samples=8", "optim.learning_rate=3e-3"]))
    workdir = tmp_path_factory.mktemp("tiny_iwae")
    trainer.train_and_evaluate(spec, workdir)
    run = vaegen.load(workdir)
    return run, jnp.asarray(gaps.split_data(run, "test", 4))


@pytest.mark.slow
def test_dreg_encoder_gradient_has_lower_variance_at_k64_on_a_trained_model(trained_tiny):
    run, x = trained_tiny
    var = {est: _draws(run.model, run.variables, _iwae(64, est), x, 200).var(0, ddof=1).sum()
           for est in ("reparam", "dreg")}
    assert var["dreg"] < 0.5 * var["reparam"], var


# --- the SNR diagnostic ----------------------------------------------------------------------------

def test_snr_is_the_closed_form_on_the_linear_gaussian_model(lg, xs, poor_q):
    """The analytic-KL ELBO's gradient is Gaussian here: w.r.t. q's loc bias c it is
    linear in the noise, with mean mean_b[W^T(x_b - b - W mu_b)/s^2 - mu_b] and covariance H diag(sigma^2) H / B,
    H = W^T W / s^2; w.r.t. p's bias b, mean mean_b[(x_b - b - W mu_b)/s^2], covariance
    W diag(sigma^2) W^T / (s^4 B).  The estimated SNR is within 4 jackknife standard errors of it."""
    model = lg.model()
    r = snr.gradient_snr(model, poor_q, _elbo(), xs, jax.random.key(5), num_draws=4000)
    x = np.asarray(xs, np.float64)
    W, b, s = lg.W, lg.b, lg.s
    post = poor_q["params"]["posterior"]
    mu = x @ np.asarray(post["loc"]["kernel"], np.float64) + np.asarray(post["loc"]["bias"], np.float64)
    sigma2 = np.asarray(model.apply(poor_q, xs[0], method="q_z_given_x").stddev(), np.float64) ** 2  # the same for all x
    H = W.T @ W / s**2
    exact_c = np.abs(np.mean((x - b - mu @ W.T) @ W / s**2 - mu, 0)) / np.sqrt(np.diag(H @ np.diag(sigma2) @ H) / 4)
    exact_b = np.abs(np.mean((x - b - mu @ W.T) / s**2, 0)) / np.sqrt(np.diag(W @ np.diag(sigma2) @ W.T) / s**4 / 4)
    unravel_q = ravel_pytree({"posterior": post})[1]
    unravel_p = ravel_pytree({"likelihood": poor_q["params"]["likelihood"]})[1]
    for unravel, group, path, expected in ((unravel_q, "encoder", ("posterior", "loc", "bias"), exact_c),
                                           (unravel_p, "decoder", ("likelihood", "loc", "bias"), exact_b)):
        est, se = unravel(jnp.asarray(r.snr[group])), unravel(jnp.asarray(r.snr_stderr[group]))
        for key in path:
            est, se = est[key], se[key]
        est, se = np.asarray(est), np.asarray(se)
        assert np.all(np.abs(est - expected) < 4 * se), (group, est, expected, se)
        assert np.all(se < 0.05 * expected + 0.02)                   # and the errors are small
    assert r.num_draws == 4000 and r.groups["encoder"]["num_parameters"] == 42
    for s_ in r.groups.values():
        assert s_["mean_stderr"] > 0 and s_["median_stderr"] > 0


@pytest.mark.slow
def test_snr_draws_compile_once_per_objective_and_do_not_depend_on_the_chunking(lg, xs, poor_q):
    from vaegen import compilation

    model, obj = lg.model(), _iwae(4, "dreg")
    a = snr.gradient_snr(model, poor_q, obj, xs, jax.random.key(1), num_draws=40, num_blocks=4, draws_per_call=5)
    with compilation.count_compilations() as again:
        b = snr.gradient_snr(model, poor_q, obj, xs, jax.random.key(1), num_draws=40, num_blocks=4, draws_per_call=5)
    assert again["compiled"] == 0, again["names"]
    c = snr.gradient_snr(model, poor_q, obj, xs, jax.random.key(1), num_draws=40, num_blocks=2, draws_per_call=10)
    for g in ("encoder", "decoder"):
        np.testing.assert_array_equal(a.snr[g], b.snr[g])
        np.testing.assert_allclose(a.snr[g], c.snr[g], rtol=1e-5)   # same draws, other blocks and calls
    rows = snr.snr_over_k(model, poor_q, xs, jax.random.key(1), ks=(4,), num_draws=40, num_blocks=4)
    assert {(r["estimator"], r["k"], r["group"]) for r in rows} == {
        (e, 4, g) for e in ("reparam", "stl", "dreg") for g in ("encoder", "decoder")}
    dreg = next(r for r in rows if r["estimator"] == "dreg" and r["group"] == "encoder")
    assert dreg["mean"] == snr.gradient_snr(model, poor_q, obj, xs, jax.random.key(1), num_draws=40,
                                            num_blocks=4).groups["encoder"]["mean"]


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["objective.estimator=dreg"], "DReG is STL"),
    (["objective.estimator=stl"], "analytic_kl=false"),
    (["objective.estimator=stl", "objective.analytic_kl=false", "objective.free_bits=0.5"], "free bits"),
    (["objective.estimator=score"], "is not one of reparam, stl, dreg"),
    (["objective=semi_amortized", "objective.bound=ae"], "cannot serve the refined q's bound"),
    (["objective=semi_amortized", "objective.bound=iwae", "objective.num_samples=4"], "bound.num_samples"),
    (["objective=semi_amortized", "objective.bound.beta=0.5"], "true bound"),
])
def test_combinations_that_do_not_apply_are_one_line_config_errors(overrides, message):
    with pytest.raises(errors.ConfigError, match=message):
        schema.to_spec(loading.load_config("tiny", overrides))


def test_a_posterior_without_a_reparameterized_sampler_refuses_stl_and_dreg(monkeypatch):
    posteriors = registry("posterior")
    diag = posteriors.get("diagonal_gaussian")
    monkeypatch.setitem(posteriors._components, "diagonal_gaussian",
                        dataclasses.replace(diag, traits={**diag.traits, "reparameterized": False}))
    for overrides in (["objective=iwae", "objective.estimator=dreg"], ["objective=miwae", "objective.estimator=stl"]):
        with pytest.raises(errors.ConfigError, match="no reparameterized sampler"):
            schema.to_spec(loading.load_config("tiny", overrides))
    schema.to_spec(loading.load_config("tiny", ["objective=iwae"]))   # reparam: as before


def test_stl_and_dreg_gradients_cost_what_the_reparameterized_one_costs():
    """XLA's own cost model of the compiled minibatch gradient (the tiny model, IWAE-8, 50
    examples): the same matrix products and within 5% of the memory traffic.  (DReG written as a
    custom VJP of log w with respect to (z, theta) computes every example's theta-gradient before
    summing them: 19% more traffic here, 2.5 times more on the benchmark's 784-200-200-50 model.)"""
    import re

    spec = schema.to_spec(loading.load_config("tiny"))
    model = trainer.build_setup(spec, (8, 8, 1), 100).model
    v = init_params(model, jax.random.key(0), (8, 8, 1))
    x, keys = jnp.zeros((50, 8, 8, 1)), jax.random.split(jax.random.key(1), 50)

    def cost(estimator):
        grad = jax.jit(jax.grad(lambda v: jnp.mean(batched(_iwae(8, estimator=estimator), model, v, x,
                                                           keys)["objective"])))
        compiled = grad.lower(v).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return len(re.findall(r" dot\(", compiled.as_text())), analysis["bytes accessed"]

    dots, traffic = cost("reparam")
    for estimator in ("stl", "dreg"):
        d, t = cost(estimator)
        assert d == dots and t < 1.05 * traffic, (estimator, d, dots, t / traffic)
