"""MADE: a normalised p(x) with no latent variable, exact conditionals, and its sampler."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegen.model import autoregressive as autoregressive
from vaegen.config import loading as config


def _made(event=(6,), hidden=(16, 16), ordering="natural", seed=0):
    m = autoregressive.MADE(event_shape=event, settings=autoregressive.MADESettings(
        hidden=hidden, ordering=ordering, ordering_seed=seed, activation="tanh"))
    v = m.init(jax.random.key(seed), jnp.zeros(event))
    # Random biases too, so that no conditional is trivially 1/2.
    v = jax.tree_util.tree_map(lambda a: a + 0.5 * jax.random.normal(jax.random.key(7), a.shape), v)
    return m, v


@pytest.mark.parametrize("ordering", ["natural", "random"])
@pytest.mark.slow
def test_probabilities_of_all_binary_images_sum_to_one(ordering):
    m, v = _made(ordering=ordering, seed=3)
    xs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=6)))          # [64, 6]
    log_p = m.apply(v, xs, method="log_prob")
    assert log_p.shape == (64,)
    assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=1e-5)


def test_each_conditional_sees_only_earlier_pixels():
    m, v = _made(ordering="random", seed=5)
    order, _ = autoregressive.made_masks(6, (16, 16), "random", 5)
    x = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    jac = np.asarray(jax.jacobian(lambda x: m.apply(v, x, method="logits"))(x))   # [6 outputs, 6 inputs]
    allowed = order[None, :] < order[:, None]                                  # input j before output d
    assert np.all(jac[~allowed] == 0.0)
    assert np.count_nonzero(jac[allowed]) > 0


@pytest.mark.slow
def test_sampler_follows_the_conditionals():
    m, v = _made(event=(2, 2, 1), hidden=(8,), seed=1)
    x, probs = m.apply(v, jax.random.key(0), 4000, method="sample_with_probs")
    assert x.shape == probs.shape == (4000, 2, 2, 1)
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
    # The displayed probabilities are the model's conditionals at the sampled image.
    np.testing.assert_allclose(probs, jax.nn.sigmoid(m.apply(v, x, method="logits")), rtol=1e-5, atol=1e-6)
    # Empirical frequencies of the 16 images match p(x).
    xs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 2, 2, 1)
    p = np.exp(np.asarray(m.apply(v, xs, method="log_prob")))
    codes = np.asarray(x).reshape(4000, 4) @ (2 ** np.arange(3, -1, -1))
    freq = np.bincount(codes.astype(int), minlength=16) / 4000
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 4000) + 1e-3)
    # Sample i depends on fold_in(key, i) only, not on how many are drawn.
    x3, _ = m.apply(v, jax.random.key(0), 3, method="sample_with_probs")
    np.testing.assert_array_equal(x3, x[:3])


def test_no_latent_variable_to_encode():
    m, v = _made()
    with pytest.raises(autoregressive.NoLatentError, match="no latent variable"):
        m.apply(v, jnp.zeros((6,)), method="q_z_given_x")


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=autoregressive"], r"not 'autoregressive' \(which is trained by objective exact\): set the two together"),
    (["objective.name=exact"], "objective 'exact' trains config.model.kind=autoregressive or categorical_made, not "
                               "'latent_variable'"),
    (["model.kind=autoregressive", "objective.name=exact", "model.likelihood=gaussian"], "binary data"),
    (["model.kind=autoregressive", "objective.name=exact", "model.kind.hidden=()"], "at least one"),
    (["model.kind=autoregressive", "objective.name=exact", "model.kind.ordering=zigzag"], "model.kind.ordering"),
])
def test_config_errors(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load_config("tiny", overrides)


@pytest.mark.slow
def test_exact_evaluation_reports_its_per_example_values(tmp_path):
    import vaegen
    from vaegen.runs import evaluate as evaluation
    from vaegen.train import trainer as train_lib

    cfg = config.load_config("tiny", ["model.kind=autoregressive", "objective.name=exact", "train.num_epochs=1",
                                      "train.progress=False"])
    train_lib.train_and_evaluate(vaegen.to_spec(cfg), tmp_path)
    per_example = {}
    result = evaluation.evaluate(vaegen.load(tmp_path), max_examples=25, per_example=per_example)
    assert set(per_example) == {"log_px"} and per_example["log_px"].shape == (25,)
    assert per_example["log_px"].mean() == pytest.approx(result["metrics"]["log_px"]["mean"], rel=1e-12)
    assert np.all(per_example["log_px"] < 0)          # log-probabilities of binary images
