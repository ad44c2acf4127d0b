"""Discrete-latent VAEs: categorical and Bernoulli q(z|x) and p(z), their objectives' gradient
estimators checked against the exact gradient of the enumerated bound, exact log p(x) by
enumeration against importance sampling, and training (resume bitwise, one compilation)."""

import dataclasses
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import vaegen
from vaegen import cli, compilation, errors
from vaegen.blocks import discrete as discrete_lib
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.estimators import enumeration as enumeration_lib
from vaegen.estimators import importance as importance_lib
from vaegen.model import latent as latent_lib
from vaegen.objectives import discrete as objectives_lib
from vaegen.train import trainer as trainer_lib



def _elbo(**settings) -> objectives_lib.DiscreteELBO:
    return objectives_lib.DiscreteELBO(objectives_lib.DiscreteELBOSettings(**settings))


def _vimco(**settings) -> objectives_lib.VIMCO:
    return objectives_lib.VIMCO(objectives_lib.VIMCOSettings(**settings))

def _spec(preset="tiny:dvae", overrides=()):
    return schema.to_spec(config_lib.load_config(preset, list(overrides)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny discrete VAE (2 categorical variables of 3: 9 configurations), trained 2 epochs with a
    learned prior, and 4 of its test images."""
    workdir = tmp_path_factory.mktemp("dvae")
    spec = _spec(overrides=["train.num_epochs=2", "model.prior.learned=True", "optim.learning_rate=3e-3"])
    trainer_lib.train_and_evaluate(spec, workdir)
    run = vaegen.load(workdir)
    xs = jnp.asarray(run.split("test", max_examples=4), jnp.float32)
    return run, xs


# --- the distributions ------------------------------------------------------------------------------

@pytest.mark.parametrize("dist", [
    discrete_lib.OneHotCategoricals(jnp.asarray([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]])),
    discrete_lib.Bernoullis(jnp.asarray([0.3, -1.2, 2.0])),
], ids=["categorical", "bernoulli"])
def test_discrete_distributions_sum_to_one_and_their_closed_forms_are_the_sums(dist):
    other = type(dist)(jnp.zeros_like(dist.logits) + 0.7 * jnp.sign(dist.logits))
    n = dist.support_size
    z = dist.configurations(jnp.arange(n))                                     # [N, D]
    assert np.unique(np.asarray(z), axis=0).shape[0] == n                      # every configuration once
    log_q = dist.log_prob(z)
    assert float(jax.nn.logsumexp(log_q)) == pytest.approx(0.0, abs=1e-6)
    q = jnp.exp(log_q)
    assert float(dist.kl_divergence(other)) == pytest.approx(float(jnp.sum(q * (log_q - other.log_prob(z)))), abs=1e-5)
    assert float(dist.entropy()) == pytest.approx(float(-jnp.sum(q * log_q)), abs=1e-5)
    np.testing.assert_allclose(dist.mean(), jnp.sum(q[:, None] * z, 0), atol=1e-6)
    # Samples: the frequencies of the configurations are q, within 4 standard errors.
    draws = dist.sample(seed=jax.random.key(0), sample_shape=(20000,))
    index = np.argmax((np.asarray(draws)[:, None, :] == np.asarray(z)[None]).all(-1), axis=1)   # [20000]
    freq = np.bincount(index, minlength=n) / index.size
    se = np.sqrt(np.asarray(q) * (1 - np.asarray(q)) / index.size)
    assert np.all(np.abs(freq - np.asarray(q)) <= 4 * se + 1e-9)
    # The relaxation: its hard part is the sample of the same key; its soft part tends to it as tau -> 0.
    hard, soft = dist.relaxed_sample(jax.random.key(3), 0.01, (50,))
    np.testing.assert_array_equal(hard, dist.sample(seed=jax.random.key(3), sample_shape=(50,)))
    assert float(jnp.mean(jnp.abs(soft - hard))) < 0.01
    _, warm = dist.relaxed_sample(jax.random.key(3), 5.0, (50,))
    assert float(jnp.mean(jnp.abs(warm - hard))) > 0.1


# --- exactness ----------------------------------------------------------------------------------------

def _brute_force(run, x):
    """log p(x) and the ELBO by a Python loop over every configuration of z."""
    model, variables = run.model, run.variables
    q = model.apply(variables, x, method="q_z_given_x")
    m, k = q.num_variables, q.num_categories
    log_joint, elbo = [], 0.0
    for digits in itertools.product(range(k), repeat=m):
        z = np.zeros((m, k), np.float32)
        z[np.arange(m), digits] = 1.0
        z = jnp.asarray(z.reshape(-1))
        lj = float(model.apply(variables, x, z, method="log_joint"))
        lq = float(np.sum(np.log(np.asarray(q.probs))[np.arange(m), digits]))
        log_joint.append(lj)
        elbo += math.exp(lq) * (lj - lq)
    return float(np.logaddexp.reduce(log_joint)), elbo


@pytest.mark.slow
def test_the_enumerated_elbo_and_log_px_are_the_brute_force_sums(trained):
    run, xs = trained
    fns = enumeration_lib.enumeration_functions(run)
    exact = enumeration_lib.exact_log_px(*fns, xs, chunk_size=4)              # 9 configurations in 3 chunks
    objective = _elbo(estimator="enumerate")
    for i, x in enumerate(xs[:2]):
        log_px, elbo = _brute_force(run, x)
        assert float(exact["log_px"][i]) == pytest.approx(log_px, abs=1e-4)
        assert float(exact["elbo"][i]) == pytest.approx(elbo, abs=1e-4)
        terms = objective(run.model, run.variables, x, jax.random.key(0))
        assert float(terms["elbo"]) == pytest.approx(elbo, abs=1e-4)
        assert float(terms["reconstruction"] - exact["reconstruction"][i]) == pytest.approx(0.0, abs=1e-4)
        assert elbo < log_px
    np.testing.assert_allclose(run.log_px(xs, method="exact"), exact["log_px"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_importance_sampling_is_below_the_exact_log_px_in_expectation_and_converges_to_it(trained):
    run, xs = trained
    log_joint, q = importance_lib.model_functions(run)
    exact = np.asarray(run.log_px(xs, method="exact"))
    reps = 400
    rows = jnp.repeat(xs, reps, axis=0)                                        # each example, reps times
    key = jax.random.key(7)
    # k = 2: the estimate's expectation is IWAE_2 (summed exactly over the 81 pairs), below log p(x).
    small = np.asarray(importance_lib.importance_sampling(log_joint, q, rows, key, num_samples=2)["log_px"])
    small = small.reshape(len(xs), reps)
    for i, x in enumerate(xs):
        iwae_2 = float(run.model.apply(run.variables, method=lambda m: objectives_lib.enumerated_iwae(
            m, m.q_z_given_x(x), x, 2)))
        mean, se = small[i].mean(), small[i].std(ddof=1) / math.sqrt(reps)
        assert abs(mean - iwae_2) <= 4 * se, (i, mean, iwae_2, se)
        assert iwae_2 < exact[i]                                                # so IS <= exact, in expectation
    # k = 1000: equal to the exact log p(x) within its standard error.
    large = np.asarray(importance_lib.importance_sampling(log_joint, q, rows[::20], key, num_samples=1000)["log_px"])
    large = large.reshape(len(xs), reps // 20)
    se = large.std(1, ddof=1) / math.sqrt(large.shape[1])
    assert np.all(np.abs(large.mean(1) - exact) <= 4 * se + 1e-5), (large.mean(1), exact, se)


# --- gradients ----------------------------------------------------------------------------------------

def _gradients(run, xs, objective, draws, seed=1, step=0):
    """Per-draw gradients ``[draws, P]`` of sum_i objective(x_i) with respect to every parameter."""
    flat, unravel = ravel_pytree(run.variables["params"])

    def f(p, key):
        v = {**run.variables, "params": unravel(p)}
        keys = jax.random.split(key, xs.shape[0])
        return jnp.sum(jax.vmap(lambda x, k: objective(run.model, v, x, k, step)["objective"])(xs, keys))

    return np.asarray(jax.jit(jax.vmap(jax.grad(f), (None, 0)))(flat, jax.random.split(jax.random.key(seed), draws)),
                      np.float64)


def _directions(exact, seed=0):
    """Unit directions to test a gradient along: the exact gradient's, its encoder and decoder parts, random ones."""
    rng = np.random.RandomState(seed)
    out = [exact] + [rng.normal(size=exact.shape) for _ in range(3)]
    return [u / np.linalg.norm(u) for u in out]


def _z_scores(g, exact, directions):
    """(mean - exact) / standard error of the per-draw gradients ``g [draws, P]`` along each direction."""
    out = []
    for u in directions:
        proj = g @ u
        out.append((proj.mean() - exact @ u) / (proj.std(ddof=1) / math.sqrt(proj.size)))
    return np.asarray(out)


@pytest.fixture(scope="module")
def exact_elbo_gradient(trained):
    run, xs = trained
    return _gradients(run, xs, _elbo(estimator="enumerate"), 1)[0]


@pytest.mark.slow
def test_gumbel_softmax_tends_to_the_exact_gradient_as_the_temperature_falls(trained, exact_elbo_gradient):
    run, xs = trained
    exact = exact_elbo_gradient
    errors_at = {}
    for tau in (2.0, 0.5, 0.1):
        obj = _elbo(estimator="gumbel_softmax", temperature=tau, temperature_min=tau)
        mean = _gradients(run, xs, obj, 4000).mean(0)
        errors_at[tau] = (np.linalg.norm(mean - exact) / np.linalg.norm(exact),
                          mean @ exact / np.linalg.norm(mean) / np.linalg.norm(exact))
    rel = [errors_at[t][0] for t in (2.0, 0.5, 0.1)]
    assert rel[0] > rel[1] > rel[2] and rel[0] > 0.25 and rel[2] < 0.08, errors_at   # biased, less so as tau -> 0
    assert errors_at[0.1][1] > 0.998, errors_at                                     # the direction, nearly exactly


@pytest.mark.parametrize("objective", [
    _elbo(estimator="reinforce", num_samples=4, baseline="loo"),
    _elbo(estimator="reinforce", num_samples=1, baseline="none"),
], ids=["reinforce-loo", "reinforce-none"])
@pytest.mark.slow
def test_reinforce_is_unbiased_for_the_exact_gradient(trained, exact_elbo_gradient, objective):
    run, xs = trained
    g = _gradients(run, xs, objective, 4000)
    z = _z_scores(g, exact_elbo_gradient, _directions(exact_elbo_gradient))
    assert np.all(np.abs(z) <= 4), z


@pytest.mark.slow
def test_straight_through_is_biased_and_the_test_sees_it(trained, exact_elbo_gradient):
    """The check the unbiased estimators pass can fail: the straight-through mean misses the exact gradient."""
    run, xs = trained
    g = _gradients(run, xs, _elbo(estimator="straight_through"), 4000)
    z = _z_scores(g, exact_elbo_gradient, _directions(exact_elbo_gradient))
    assert np.max(np.abs(z)) > 10, z


@pytest.mark.slow
def test_vimco_is_unbiased_for_the_exact_gradient_of_iwae_k(trained):
    run, xs = trained
    k = 3

    def exact_bound(model, variables, x, key, step=0):
        del key, step
        return {"objective": model.apply(variables, method=lambda m: objectives_lib.enumerated_iwae(
            m, m.q_z_given_x(x), x, k))}

    exact = _gradients(run, xs, exact_bound, 1)[0]                              # summed over all 729 triples
    g = _gradients(run, xs, _vimco(num_samples=k), 2000)
    z = _z_scores(g, exact, _directions(exact))
    assert np.all(np.abs(z) <= 4), z
    # Its reported value is the bound's estimate, whose mean is the exact bound.
    values = jax.vmap(lambda key: _vimco(num_samples=k)(run.model, run.variables, xs[0], key)["iwae"])(
        jax.random.split(jax.random.key(5), 4000))
    bound = float(run.model.apply(run.variables, method=lambda m: objectives_lib.enumerated_iwae(
        m, m.q_z_given_x(xs[0]), xs[0], k)))
    assert abs(float(values.mean()) - bound) <= 4 * float(values.std()) / math.sqrt(values.size)


@pytest.mark.slow
def test_every_estimator_reports_the_true_elbo_whatever_its_surrogate(trained):
    """The value of ``objective`` is the bound's (the surrogate only shapes the gradient), and every
    estimator's reported ELBO is an unbiased estimate of the exact one."""
    run, xs = trained
    x = xs[1]
    exact = float(_elbo(estimator="enumerate")(run.model, run.variables, x, jax.random.key(0))["elbo"])
    keys = jax.random.split(jax.random.key(9), 4000)
    for obj in (_elbo(estimator="gumbel_softmax", temperature=2.0, temperature_min=2.0),
                _elbo(estimator="straight_through"),
                _elbo(estimator="reinforce", num_samples=2)):
        t = jax.vmap(lambda key: obj(run.model, run.variables, x, key))(keys)
        np.testing.assert_allclose(t["objective"], t["elbo"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(t["elbo"], t["reconstruction"] - t["kl"], rtol=0, atol=1e-4)
        assert abs(float(t["elbo"].mean()) - exact) <= 4 * float(t["elbo"].std()) / math.sqrt(keys.size), obj


def test_the_temperature_follows_its_schedule():
    tau = objectives_lib.temperature_at(jnp.asarray([0, 1000, 10**6]), 1.0, 0.5, 1e-4)
    np.testing.assert_allclose(tau, [1.0, math.exp(-0.1), 0.5], rtol=1e-6)


# --- training: every estimator resumes bitwise and another seed compiles nothing -------------------------

ESTIMATORS = {
    "gumbel_softmax": ["objective.anneal_rate=1e-2"],
    "straight_through": ["objective.estimator=straight_through"],
    "reinforce_loo": ["objective.estimator=reinforce", "objective.num_samples=2"],
    "reinforce_learned": ["objective.estimator=reinforce", "objective.baseline=learned"],
    "enumerate": ["objective.estimator=enumerate"],
    "vimco": ["objective.name=vimco", "objective.num_samples=3"],
    "bernoulli": ["model.latent_dim=3", "model.prior=bernoulli", "inference.posterior=bernoulli",
                  "objective.name=vimco"],
}


def _metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.slow
def test_training_resumes_bitwise_and_another_seed_compiles_nothing(tmp_path, name):
    spec2 = _spec(overrides=["train.num_epochs=2", "model.prior.learned=True", *ESTIMATORS[name]])
    spec1 = dataclasses.replace(spec2, train=dataclasses.replace(spec2.train, num_epochs=1))
    splits = trainer_lib.load_data(spec2)
    compilation.forget_shared()
    trainer_lib.train_and_evaluate(spec1, tmp_path / "part", splits=splits)
    with compilation.count_compilations() as again:
        trainer_lib.train_and_evaluate(spec2, tmp_path / "part", splits=splits)            # resumes
        trainer_lib.train_and_evaluate(spec2, tmp_path / "full", splits=splits)            # uninterrupted
        trainer_lib.train_and_evaluate(dataclasses.replace(spec1, seed=1), tmp_path / "seed1", splits=splits)
    assert again["compiled"] == 0 and again["loaded"] == 0, again["names"]
    a, b = vaegen.load(tmp_path / "full"), vaegen.load(tmp_path / "part")
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)
    full, part = _metrics(tmp_path / "full"), _metrics(tmp_path / "part")
    assert full[-1]["epoch"] == part[-1]["epoch"] == 2
    for key, value in full[-1].items():
        if key.startswith(("train/", "validation/")) and "per_second" not in key:
            assert part[-1][key] == value, key                    # the learned baseline's terms included
    assert np.isfinite(full[-1]["validation/" + ("iwae" if "vimco" in ESTIMATORS[name][-1] else "elbo")])
    if name == "reinforce_learned":
        assert "train/baseline/loss" in full[-1]
    seed1 = _metrics(tmp_path / "seed1")[0]
    assert seed1["train/objective"] != full[0]["train/objective"]


@pytest.mark.slow
def test_a_trained_discrete_vae_learns(tmp_path):
    spec = _spec(overrides=["train.num_epochs=6", "optim.learning_rate=3e-3"])
    trainer_lib.train_and_evaluate(spec, tmp_path)
    m = _metrics(tmp_path)
    assert m[-1]["validation/elbo"] > m[0]["validation/elbo"] + 0.5
    assert m[-1]["train/temperature"] == 1.0


# --- evaluation, sampling and the command line --------------------------------------------------------

@pytest.mark.slow
def test_evaluate_labels_exact_and_stochastic_numbers_and_sample_works(trained, tmp_path, capsys):
    run, _ = trained
    workdir = str(run.workdir)
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--workdir", workdir, "--estimators", "elbo,is,exact,ais", "--k", "200",
                     "--max-examples", "50", "--no-progress", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "log_px_exact" in table and "exact" in table.split("log_px_exact")[1].splitlines()[0]
    assert "stochastic lower bound" in table.split("log_px ")[1].splitlines()[0]
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert metrics["log_px_exact"]["kind"] == "exact" and "9 configurations" in metrics["log_px_exact"]["estimator"]
    assert metrics["log_px"]["kind"] == "stochastic lower bound"
    assert abs(metrics["log_px"]["mean"] - metrics["log_px_exact"]["mean"]) < 0.05
    assert metrics["elbo_exact"]["mean"] <= metrics["log_px_exact"]["mean"]
    assert "continuous z" in result["undefined"]["log_px_ais"]
    assert cli.main(["sample", "--workdir", workdir, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    with pytest.raises(errors.UndefinedEstimateError, match="needs a continuous z"):
        run.log_px(run.split("test", max_examples=2), method="ais")


def test_exact_log_px_is_undefined_for_a_continuous_or_too_large_z():
    spec = _spec("tiny")
    model = latent_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    variables = latent_lib.init_params(model, jax.random.key(0), (8, 8, 1))
    fns = enumeration_lib.enumeration_functions(model, variables)
    with pytest.raises(errors.UndefinedEstimateError, match="z is continuous"):
        enumeration_lib.exact_log_px(*fns, jnp.zeros((2, 8, 8, 1)))
    spec = _spec(overrides=["model.latent_dim=60", "model.prior.categories=3", "inference.posterior.categories=3"])
    model = latent_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    variables = latent_lib.init_params(model, jax.random.key(0), (8, 8, 1))
    with pytest.raises(errors.UndefinedEstimateError, match="configurations, more than"):
        enumeration_lib.exact_log_px(*enumeration_lib.enumeration_functions(model, variables), jnp.zeros((2, 8, 8, 1)))


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=elbo"], "config.inference.posterior=categorical has a discrete z, so objective 'elbo' has no "
                              "gradient for q(z|x)"),
    (["model.prior=standard_normal"], "config.inference.posterior=categorical has a discrete z, which "
                                      "config.model.prior=standard_normal is not a distribution over"),
    (["model.prior.categories=2"], "config.model.prior.categories=2 and config.inference.posterior.categories=3 "
                                   "must be equal"),
    (["model.latent_dim=5"], "config.inference.posterior.categories=3 must divide config.model.latent_dim=5"),
    (["objective.estimator=enumerate", "objective.max_configurations=8"],
     "config.objective.estimator=enumerate sums over all 9 configurations of z, more than "
     "config.objective.max_configurations=8"),
    (["objective.estimator=reinforce"], "config.objective.baseline=loo takes each sample's baseline from the others"),
    (["objective.temperature_min=2.0"], "config.objective.temperature_min=2.0 must be at most "
                                        "config.objective.temperature=1.0"),
    (["objective.name=vimco", "objective.num_samples=1"], "config.objective.num_samples=1 must be >= 2"),
])
def test_a_discrete_latent_that_does_not_fit_is_one_line(overrides, message):
    with pytest.raises(errors.ConfigError) as info:
        _spec(overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_discrete_objective_or_prior_on_a_continuous_z_is_one_line():
    with pytest.raises(errors.ConfigError, match="objective 'vimco' trains a discrete q"):
        _spec("tiny", ["objective.name=vimco"])
    with pytest.raises(errors.ConfigError, match="config.model.prior=categorical is a distribution over discrete z"):
        _spec("tiny", ["model.prior=categorical"])


def test_the_preset_matches_the_vae_but_for_its_latent():
    vae, dvae = _spec("vae_mlp_fmnist"), _spec("dvae_mlp_fmnist")
    assert dvae.model.decoder == vae.model.decoder and dvae.inference.encoder == vae.inference.encoder
    assert dvae.model.likelihood == vae.model.likelihood and dvae.data == vae.data and dvae.optim == vae.optim
    assert dvae.model.latent_dim == 300 and dvae.inference.posterior.settings.categories == 10
    assert discrete_lib.support_size(dvae) == 10**30
