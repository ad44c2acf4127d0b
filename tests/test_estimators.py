"""Importance sampling, AIS and BDMC against the exact log p(x) of a linear-Gaussian model."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.config import loading as config_lib
from vaegen.config.schema import to_spec
from vaegen.estimators import ais as A
from vaegen.estimators import importance as E
from vaegen.spec.eval import AISSettings
from vaegen.model import linear_gaussian as exact
from vaegen.model.latent import build_model, init_params
from conftest import xla_flags


@pytest.fixture(scope="module")
def lg():
    return exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)


@pytest.fixture(scope="module")
def xs(lg):
    return lg.sample(jax.random.key(1), 16).astype(np.float32)


@pytest.fixture(scope="module")
def is_5000(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables())
    out = E.importance_sampling(log_joint, q, xs, jax.random.key(0), num_samples=5000, ks=(1, 10, 100, 1000),
                                chunk_size=512)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def test_is_converges_to_exact_log_px_and_iwae_bounds_increase_with_k(lg, xs, is_5000):
    log_px = lg.log_marginal(xs)
    gaps = [np.mean(log_px - is_5000[f"iwae_{k}"]) for k in (1, 10, 100, 1000)] + [np.mean(log_px - is_5000["log_px"])]
    assert gaps == sorted(gaps, reverse=True), gaps          # IWAE_1 <= IWAE_10 <= ... <= IS_5000
    assert gaps[0] > 0.05                                     # the diagonal q has a real gap ...
    assert -0.01 < gaps[-1] < 0.01                            # ... that 5000 samples close
    np.testing.assert_allclose(is_5000["log_px"], log_px, atol=0.05)
    assert np.all((is_5000["ess"] >= 1) & (is_5000["ess"] <= 5000)) and np.mean(is_5000["ess"]) > 2500


def test_elbo_gap_is_the_kl_to_the_exact_posterior(lg, xs, is_5000):
    # iwae_1 averages log p(x, z) - log q(z | x) over all 5000 samples: a 5000-sample ELBO estimate.
    mean, var = lg.posterior_mean(xs), lg.optimal_diagonal_variance()
    kl = lg.kl_to_posterior(xs, mean, var)
    np.testing.assert_allclose(lg.log_marginal(xs) - is_5000["iwae_1"], kl, atol=0.03)
    assert abs(np.mean(lg.log_marginal(xs) - is_5000["iwae_1"] - kl)) < 0.01


def _reference_log_weights(lg, xs, key, num_samples):
    """log w [N, K] with the documented keys: sample j of example i from fold_in(fold_in(key, i), j)."""
    model, variables = lg.model(), lg.variables()

    def one(i, x):
        ki = jax.random.fold_in(key, i)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(ki, jnp.arange(num_samples))
        q = model.apply(variables, x, method="q_z_given_x")
        z, log_q = jax.vmap(lambda k: q.sample_and_log_prob(seed=k))(keys)
        return model.apply(variables, x, z, method="log_joint") - log_q

    return np.asarray(jax.vmap(one)(jnp.arange(xs.shape[0]), xs), np.float64)


@pytest.mark.slow
def test_is_matches_its_definition_whatever_the_chunks_and_batches(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables())
    key = jax.random.key(7)
    a = E.importance_sampling(log_joint, q, xs, key, num_samples=300, ks=(1, 7, 300), chunk_size=300)
    b = E.importance_sampling(log_joint, q, xs, key, num_samples=300, ks=(7, 1, 300), chunk_size=13, batch_size=3)
    for name in ("log_px", "ess", "iwae_1", "iwae_7", "iwae_300"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(a["iwae_300"], a["log_px"], rtol=1e-6)
    # The definition, from all log-weights at once: disjoint groups of k consecutive samples.
    lw = _reference_log_weights(lg, xs, key, 300)
    lme = lambda a, axis: jax.nn.logsumexp(a, axis=axis) - np.log(a.shape[axis])
    np.testing.assert_allclose(a["log_px"], lme(lw, 1), rtol=1e-5)
    np.testing.assert_allclose(a["iwae_1"], lw.mean(1), rtol=1e-5)
    groups = lw[:, : 42 * 7].reshape(-1, 42, 7)          # 300 // 7 = 42 groups, 6 samples unused
    np.testing.assert_allclose(a["iwae_7"], lme(groups, 2).mean(1), rtol=1e-5)
    w = np.exp(lw - lw.max(1, keepdims=True))
    np.testing.assert_allclose(a["ess"], w.sum(1) ** 2 / (w**2).sum(1), rtol=1e-4)
    # One example on its own, with its own key, is the same computation.
    one = E.importance_sampling_one(log_joint, q, xs[3], jax.random.fold_in(key, 3), num_samples=300, ks=(7,),
                                    chunk_size=64)
    np.testing.assert_allclose([one["log_px"], one["iwae_7"]], [a["log_px"][3], a["iwae_7"][3]], rtol=1e-5)
    # Deterministic given the key; another key gives other samples.
    again = E.importance_sampling(log_joint, q, xs, key, num_samples=300, ks=(1, 7, 300), chunk_size=300)
    np.testing.assert_array_equal(a["log_px"], again["log_px"])
    other = E.importance_sampling(log_joint, q, xs, jax.random.key(8), num_samples=300, ks=(1, 7, 300), chunk_size=300)
    assert not np.allclose(a["log_px"], other["log_px"])


def test_is_from_the_prior_is_a_valid_proposal(lg, xs):
    log_joint, prior = E.model_functions(lg.model(), lg.variables(), proposal="prior")
    out = E.importance_sampling(log_joint, prior, xs, jax.random.key(1), num_samples=20000, chunk_size=2048)
    log_px = lg.log_marginal(xs)
    np.testing.assert_allclose(out["log_px"], log_px, atol=0.15)
    assert np.mean(out["ess"]) < 0.2 * 20000        # the prior is a far worse proposal than q(z|x)


def test_memory_does_not_grow_with_the_number_of_samples(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables())

    def temp_bytes(k):
        fn = jax.tree_util.Partial(E._ImportanceSampling(k, (1, 10), 64), (log_joint, q))
        f = jax.jit(lambda fn, x, key: jax.vmap(fn)(x, jax.random.split(key, x.shape[0])))
        return f.lower(fn, xs, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(640), temp_bytes(640_000)
    assert large <= 1.25 * small + 4096, (small, large)


def test_bad_settings_are_clear_errors(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables())
    with pytest.raises(config_lib.ConfigError, match="between 1 and the number of importance samples"):
        E.importance_sampling(log_joint, q, xs, jax.random.key(0), num_samples=10, ks=(20,))
    with pytest.raises(config_lib.ConfigError, match="AISSettings.num_steps=0 must be > 0"):
        AISSettings(num_steps=0)
    with pytest.raises(config_lib.ConfigError, match="schedule"):
        AISSettings(schedule="cosine")
    with pytest.raises(config_lib.ConfigError, match="target_accept"):
        AISSettings(target_accept=1.5)


def test_autoencoder_has_no_log_px_and_a_point_mass_is_no_proposal():
    cfg = to_spec(config_lib.load_config("tiny:ae"))
    ae = build_model(cfg.model, cfg.inference, (8, 8, 1))
    v = init_params(ae, jax.random.key(0), (8, 8, 1))
    with pytest.raises(E.UndefinedEstimateError, match="no prior p\\(z\\)"):
        E.model_functions(ae, v)
    with pytest.raises(E.UndefinedEstimateError, match="no prior"):
        E.model_sampler(ae, v)
    # A point-mass encoder with a prior: log p(x) exists, but q(z|x) cannot be the proposal.
    cfg = to_spec(config_lib.load_config("tiny:ae", ["model.prior=standard_normal"]))
    m = build_model(cfg.model, cfg.inference, (8, 8, 1))
    v = init_params(m, jax.random.key(0), (8, 8, 1))
    with pytest.raises(E.UndefinedEstimateError, match="point mass"):
        E.model_functions(m, v, proposal="posterior")
    log_joint, prior = E.model_functions(m, v, proposal="prior")
    x = (jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) > 0.5).astype(jnp.float32)
    out = E.importance_sampling(log_joint, prior, x, jax.random.key(2), num_samples=50)
    assert np.all(np.isfinite(out["log_px"]))


def test_annealing_schedules():
    for kind in A.SCHEDULES:
        b = A.annealing_schedule(100, kind)
        assert b.shape == (101,) and b[0] == 0.0 and b[-1] == pytest.approx(1.0) and np.all(np.diff(b) > 0)
    lin, sig = A.annealing_schedule(100, "linear"), A.annealing_schedule(100, "sigmoid")
    assert np.diff(sig)[0] < np.diff(lin)[0] and np.diff(sig)[50] > np.diff(lin)[50]


AIS_SETTINGS = dict(num_steps=500, num_chains=16, num_leapfrog=5, max_step_size=0.25)


def test_ais_from_q_lands_on_the_exact_log_px(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables(), proposal="posterior")
    out = A.AIS(AISSettings(num_steps=200, num_chains=16, num_leapfrog=5, max_step_size=0.25)).forward(
        log_joint, q, xs, jax.random.key(3))
    err = np.asarray(out["log_px"], np.float64) - lg.log_marginal(xs)
    assert abs(err.mean()) < 0.02 and np.abs(err).max() < 0.1, err
    assert out["log_w"].shape == (16, 16) and np.all(out["acceptance"] > 0.5)


@pytest.mark.slow
def test_bdmc_bounds_sandwich_the_exact_log_px(lg):
    model, variables = lg.model(), lg.variables()
    log_joint, prior = E.model_functions(model, variables, proposal="prior")
    out = A.bdmc(A.AIS(AISSettings(**AIS_SETTINGS)), log_joint, prior, E.model_sampler(model, variables), jax.random.key(4),
                 num_examples=16)
    log_px = lg.log_marginal(np.asarray(out["xs"], np.float64))
    lower, upper = np.asarray(out["lower"], np.float64), np.asarray(out["upper"], np.float64)
    assert lower.mean() <= log_px.mean() + 0.05 and upper.mean() >= log_px.mean() - 0.05
    assert 0.0 <= np.mean(out["gap"]) < 0.3
    # Forward AIS from the prior with the same settings, on these simulated data, is as accurate as the gap says.
    fwd = A.AIS(AISSettings(**AIS_SETTINGS)).forward(log_joint, prior, out["xs"], jax.random.fold_in(jax.random.key(4), 1))
    np.testing.assert_allclose(fwd["log_px"], lower, rtol=1e-5)


def test_step_size_adapts_toward_the_target_acceptance():
    lg = exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.1)   # posterior sd ~0.07
    x = lg.sample(jax.random.key(1), 4).astype(np.float32)
    log_joint, prior = E.model_functions(lg.model(), lg.variables(), proposal="prior")
    # Started at 0.5, far above the stable leapfrog step for this posterior (acceptance ~0 there).
    out = A.AIS(AISSettings(num_steps=300, num_chains=8, num_leapfrog=5, step_size=0.5)).forward(log_joint, prior, x, jax.random.key(2))
    assert np.all(np.abs(out["acceptance"] - 0.65) < 0.1), out["acceptance"]
    assert np.all((out["step_size"] > 0.02) & (out["step_size"] < 0.2)), out["step_size"]


@pytest.mark.slow
def test_ais_does_not_depend_on_the_batch_size_and_is_deterministic(lg, xs):
    log_joint, q = E.model_functions(lg.model(), lg.variables())
    ais = A.AIS(AISSettings(num_steps=20, num_chains=4, num_leapfrog=3, max_step_size=0.25))
    x, key = xs[:5], jax.random.key(5)
    names = ("log_px", "acceptance", "step_size", "ess", "log_w")
    whole = ais.forward(log_joint, q, x, key, batch_size=5)
    pairs = ais.forward(log_joint, q, x, key, batch_size=2)          # 3 batches of 2, one padding row
    for name in names:
        np.testing.assert_allclose(pairs[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)
    again = ais.forward(log_joint, q, x, key, batch_size=5)
    for name in names:
        np.testing.assert_array_equal(again[name], whole[name], err_msg=name)
    other = ais.forward(log_joint, q, x, jax.random.key(6), batch_size=5)
    assert not np.allclose(other["log_px"], whole["log_px"])
    assert np.ptp(np.asarray(whole["log_px"])) > 0.1                  # examples get their own chains


_SHARDING_SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from vaegen.estimators import ais as A
    from vaegen.estimators import importance as E
    from vaegen.model import linear_gaussian as exact
    from vaegen.inference import svi as inference
    from vaegen.spec.eval import AISSettings
    lg = exact.LinearGaussian.random(jax.random.key(0), data_dim=6, latent_dim=3, s=0.6)
    xs = lg.sample(jax.random.key(1), 13).astype(np.float32)      # 13: not a multiple of 8
    model, v = lg.model(), lg.variables()
    lj, q = E.model_functions(model, v)
    lj_prior, prior = E.model_functions(model, v, proposal="prior")
    ais = A.AIS(AISSettings(num_steps=20, num_chains=4, num_leapfrog=3, max_step_size=0.25))
    svi = inference.SVISettings(num_steps=10, learning_rate=0.1, num_samples=2)
    arrays = lambda r, names: {k: np.asarray(r[k]).tolist() for k in names}
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", None)):
        r = E.importance_sampling(lj, q, xs, jax.random.key(0), num_samples=200, ks=(1, 10), chunk_size=64,
                                  batch_size=2, devices=devices, progress=True)
        res = {"is": arrays(r, ("log_px", "iwae_1", "iwae_10"))}
        out[name + "_devices"] = len(r["log_px"].sharding.device_set)
        fit = inference.fit_local(model, v, xs, jax.random.key(2), family="diag", settings=svi, init="prior",
                                  chunk_size=3, eval_samples=8, trace_points=5, progress=False, devices=devices)
        res["fit_local"] = {"elbo": fit.elbo.tolist(), "elbo_init": fit.elbo_init.tolist(),
                            "trace": fit.trace.tolist(), "loc": fit.phi["loc"].tolist(),
                            "log_scale": fit.phi["log_scale"].tolist()}
        out[name + "_dispatches"] = len(fit.chunk_seconds)
        # The same shapes in AIS.forward and in BDMC's forward pass: one compilation for both.
        res["ais"] = arrays(ais.forward(lj_prior, prior, xs, jax.random.key(3), batch_size=2, devices=devices),
                            ("log_px", "acceptance", "step_size", "log_w"))
        res["bdmc"] = arrays(A.bdmc(ais, lj_prior, prior, E.model_sampler(model, v), jax.random.key(4),
                                    num_examples=13, batch_size=2, devices=devices), ("lower", "upper", "xs"))
        out[name] = res
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_eight_devices_give_the_one_device_numbers():
    """IS, AIS, BDMC and per-example q* (fit_local), sharded over 8 CPU devices, give the
    1-device numbers example by example."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(xla_force_host_platform_device_count=8), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["one_devices"] == 1 and out["eight_devices"] == 8
    # fit_local: 13 examples in chunks of 3 on one device; one dispatch of 8 x 2 on eight.
    assert out["one_dispatches"] == 5 and out["eight_dispatches"] == 1
    for part, values in out["one"].items():
        for name, expected in values.items():
            np.testing.assert_allclose(out["eight"][part][name], expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{part}/{name}")
    assert np.ptp(out["one"]["fit_local"]["elbo"]) > 0 and np.all(np.isfinite(out["one"]["bdmc"]["upper"]))
