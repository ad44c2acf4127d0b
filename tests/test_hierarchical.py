"""Two stochastic layers (vaegen.hierarchical), checked against a linear-Gaussian model whose
marginal log p(x) is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vaegen
from vaegen.config import loading as config_lib
from vaegen.estimators import importance as estimators
from vaegen.model import two_layer as hierarchical
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.model import latent as model_lib
from vaegen.blocks.posteriors import soft_clip

EVENT = (6,)
D1, D2 = 3, 2


def _linear_two_layer(hierarchy="bottom_up", sees_top=False):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, diag s1^2), x | z1 ~ N(W z1 + b, I): linear trunks,
    and the log-scale of p(z1 | z2) made constant, so the model is linear-Gaussian."""
    overrides = [f"model.latent_dim={D1}", "model.kind=two_layer", f"model.kind.top_latent_dim={D2}",
                 "model.likelihood=gaussian", "model.likelihood.fixed_scale=1.0", "model.decoder.hidden=()",
                 "model.kind.top_decoder.hidden=()", "inference.encoder.hidden=(16,)",
                 "model.kind.top_encoder.hidden=(16,)", f"model.kind.hierarchy={hierarchy}", "data.binarization=none"]
    if sees_top:
        overrides += ["model.kind.decoder_sees_top=True"]
    spec = vaegen.to_spec(config_lib.load_config("tiny", overrides))
    model = model_lib.build_model(spec.model, spec.inference, EVENT)
    variables = model_lib.init_params(model, jax.random.key(0), EVENT)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    cond = params["prior"]["conditional"]
    cond["log_scale"] = {"kernel": jnp.zeros_like(cond["log_scale"]["kernel"]),
                         "bias": jnp.asarray([-0.5, 0.0, 0.3], jnp.float32)}
    # Overdispersed factors of q (sigma = e^0.5 whatever x, means mildly dependent on their inputs):
    # a proposal importance sampling converges with.
    def widen(tree):
        for k, v in tree.items():
            if k == "log_scale":
                tree[k] = {"kernel": jnp.zeros_like(v["kernel"]), "bias": jnp.full_like(v["bias"], 0.5)}
            elif k == "loc":  # means that still depend on x (and z), mildly
                tree[k] = {"kernel": 0.1 * v["kernel"], "bias": v["bias"]}
            elif isinstance(v, dict):
                widen(v)

    widen(params["posterior"])
    return model, {"params": params}


def _exact(variables):
    p = variables["params"]
    cond = p["prior"]["conditional"]
    A = np.asarray(cond["loc"]["kernel"], np.float64).T                   # [D1, D2]
    a = np.asarray(cond["loc"]["bias"], np.float64)
    s1 = np.exp(np.asarray(soft_clip(cond["log_scale"]["bias"], -10.0, 3.0), np.float64))
    W = np.asarray(p["likelihood"]["loc"]["kernel"], np.float64).T        # [6, D1]
    b = np.asarray(p["likelihood"]["loc"]["bias"], np.float64)
    cov_z1 = A @ A.T + np.diag(s1**2)
    return A, a, s1, W, b, cov_z1


@pytest.mark.slow
def test_prior_log_prob_and_samples_match_the_closed_form():
    model, variables = _linear_two_layer()
    A, a, s1, _, _, cov_z1 = _exact(variables)
    p = model.apply(variables, method="p_z")
    assert p.event_shape == (D1 + D2,)
    z = np.asarray(jax.random.normal(jax.random.key(1), (7, D1 + D2)))
    z1, z2 = z[:, :D1], z[:, D1:]
    expected = (stats.multivariate_normal(np.zeros(D2), np.eye(D2)).logpdf(z2)
                + stats.norm(z2 @ A.T + a, s1).logpdf(z1).sum(-1))
    np.testing.assert_allclose(model.apply(variables, z, method=lambda m, z: m.p_z().log_prob(z)), expected,
                               rtol=1e-5, atol=1e-4)
    samples = np.asarray(model.apply(variables, jax.random.key(2), 40000,
                                     method=lambda m, k, n: m.p_z().sample(seed=k, sample_shape=(n,))))
    np.testing.assert_allclose(samples[:, :D1].mean(0), a, atol=0.05)
    np.testing.assert_allclose(np.cov(samples[:, :D1].T), cov_z1, atol=0.08)
    np.testing.assert_allclose(np.cov(samples[:, D1:].T), np.eye(D2), atol=0.05)


@pytest.mark.parametrize("hierarchy", ["bottom_up", "top_down"])
@pytest.mark.slow
def test_bounds_are_ordered_and_importance_sampling_converges_to_log_px(hierarchy):
    model, variables = _linear_two_layer(hierarchy)
    _, a, _, W, b, cov_z1 = _exact(variables)
    xs = np.asarray(model.apply(variables, jax.random.key(3), 4, method="sample"))
    exact = stats.multivariate_normal(W @ a + b, W @ cov_z1 @ W.T + np.eye(6)).logpdf(xs)

    log_joint, q = estimators.model_functions(model, variables)
    est = estimators.importance_sampling(log_joint, q, jnp.asarray(xs), jax.random.key(4), num_samples=20000,
                                         ks=(1, 10, 100))
    np.testing.assert_allclose(est["log_px"], exact, atol=0.1)
    iw = {k: np.asarray(est[f"iwae_{k}"]) for k in (1, 10, 100)}
    keys = jax.random.split(jax.random.key(5), 4)
    elbo = batched(objectives.ELBO(objectives.ELBOSettings(num_samples=2000)), model, variables, jnp.asarray(xs), keys)["elbo"]
    assert np.all(np.asarray(elbo) <= iw[10] + 0.05)
    assert np.all(iw[1] <= iw[10] + 1e-3) and np.all(iw[10] <= iw[100] + 1e-3)
    assert np.all(iw[100] <= exact + 0.05)
    assert np.all(exact - np.asarray(elbo) > 0.0)


@pytest.mark.slow
def test_posterior_factorises_in_its_order():
    """log q(z | x) = log q(z1 | x) + log q(z2 | z1) (bottom-up), = log q(z2 | x) + log q(z1 | x, z2)
    (top-down), and ancestral samples have the joint's shape."""
    x = jnp.linspace(-1.0, 1.0, 6)
    z = jax.random.normal(jax.random.key(6), (5, D1 + D2))
    model, v = _linear_two_layer("bottom_up")
    got = model.apply(v, x, z, method=lambda m, x, z: m.q_z_given_x(x).log_prob(z))
    want = model.apply(v, x, z, method=lambda m, x, z: m.posterior.q_z1_given_x(x).log_prob(z[:, :D1])
                       + m.posterior.q_z2_given_z1(z[:, :D1]).log_prob(z[:, D1:]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    model, v = _linear_two_layer("top_down", sees_top=True)
    got = model.apply(v, x, z, method=lambda m, x, z: m.q_z_given_x(x).log_prob(z))
    want = model.apply(v, x, z, method=lambda m, x, z: m.posterior.q_z2(x).log_prob(z[:, D1:])
                       + m.posterior.q_z1(x, z[:, D1:]).log_prob(z[:, :D1]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    s, lp = model.apply(v, x, jax.random.key(7), method=lambda m, x, k: m.q_z_given_x(x).sample_and_log_prob(
        seed=k, sample_shape=(9,)))
    assert s.shape == (9, D1 + D2) and lp.shape == (9,)
    np.testing.assert_allclose(lp, model.apply(v, x, s, method=lambda m, x, z: m.q_z_given_x(x).log_prob(z)),
                               rtol=1e-5)
    assert hierarchical.is_hierarchical(model)


def test_two_layer_configs_are_validated():
    two_layer = ["model.kind=two_layer", "model.kind.top_latent_dim=2"]
    with pytest.raises(config_lib.ConfigError, match="diagonal Gaussian"):
        config_lib.load_config("tiny", [*two_layer, "inference.posterior=flow"])
    with pytest.raises(config_lib.ConfigError, match="needs a prior"):
        config_lib.load_config("tiny:ae", [*two_layer, "inference.posterior=diagonal_gaussian",
                                           "objective.name=elbo"])
    with pytest.raises(config_lib.ConfigError, match="top_down"):
        config_lib.load_config("tiny", [*two_layer, "model.prior=vampprior"])
    with pytest.raises(config_lib.ConfigError, match="model.kind.hierarchy"):
        config_lib.load_config("tiny", [*two_layer, "model.kind.hierarchy=sideways"])


@pytest.mark.parametrize("overrides", [
    ["model.kind=two_layer", "model.kind.top_latent_dim=2", "objective.name=iwae", "objective.num_samples=3"],
    ["model.kind=two_layer", "model.kind.top_latent_dim=2", "model.kind.hierarchy=top_down",
     "model.kind.decoder_sees_top=True", "model.kind.decoder_branch_hidden=(16,)",
     "model.kind.encoder_branch_hidden=(16,)", "model.decoder.gated=True", "model.kind.top_encoder.gated=True"],
])
@pytest.mark.slow
def test_two_layer_models_train_through_the_trainer(tmp_path, overrides):
    import vaegen

    cfg = config_lib.load_config("tiny", overrides + ["train.num_epochs=4"])
    vaegen.train_and_evaluate(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    import json

    bound = "iwae" if "objective.name=iwae" in overrides else "elbo"
    first, last = json.loads(lines[0])[f"validation/{bound}"], json.loads(lines[-1])[f"validation/{bound}"]
    assert last > first
    run = vaegen.load(tmp_path / "run")
    assert run.sample(jax.random.key(0), 3).shape == (3, 8, 8, 1)
