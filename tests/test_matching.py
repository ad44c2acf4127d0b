"""AEs matched to p(z) in training: the MMD estimator of the WAE against direct computations and a
closed form, the WAE's batch objective, and the adversarial AE's discriminator (its own parameters
and optimizer inside the one trainer: it learns, the codes move toward the prior, resume is bitwise)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.model import latent as latent_lib
from vaegen.objectives import matching
from vaegen.train import trainer as train_lib


def _direct_mmd(x, y, k):
    """The U-statistic by loops over pairs."""
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_matches_a_direct_computation(kernel):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(0.5, 1.5, size=(5, 3))
    scales = (0.5, 2.0)

    def k(a, b):
        sq = float(np.sum((a - b) ** 2))
        cs = [s * 2 * 3 * 1.0 for s in scales]
        return sum(c / (c + sq) if kernel == "imq" else np.exp(-sq / c) for c in cs)

    got = float(matching.mmd_unbiased(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), kernel=kernel,
                                      scales=scales))
    assert got == pytest.approx(_direct_mmd(x, y, k), rel=1e-4, abs=1e-6)


def test_mmd_is_unbiased_near_zero_for_one_gaussian_and_grows_with_a_mean_shift():
    """With one Gaussian kernel exp(-||a - b||^2 / C) between N(0, I) and N(mu, I) in D dimensions,
    MMD^2 = 2 (1 + 4/C)^(-D/2) (1 - exp(-||mu||^2 / (C + 4))) exactly.  The average of the estimate
    over many small samples matches it (the V-statistic, which keeps i = j, does not)."""
    d, n, reps = 2, 8, 4000
    c = 2.0 * d  # scale s = 1
    key = jax.random.key(0)
    shifts = (0.0, 0.5, 1.0, 2.0)
    means = []
    for i, shift in enumerate(shifts):
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        x = jax.random.normal(kx, (reps, n, d))
        y = jax.random.normal(ky, (reps, n, d)) + jnp.asarray([shift, 0.0])
        est = np.asarray(jax.vmap(lambda a, b: matching.mmd_unbiased(a, b, kernel="rbf", scales=(1.0,)))(x, y))
        exact = 2 * (1 + 4 / c) ** (-d / 2) * (1 - np.exp(-shift**2 / (c + 4)))
        stderr = est.std() / np.sqrt(reps)
        assert abs(est.mean() - exact) < 4 * stderr, (shift, est.mean(), exact, stderr)
        means.append(est.mean())
        if shift == 0.0:
            # The biased V-statistic adds (k(0) = 1) / n to each within-sample term: visibly above 0.
            kxx = jax.vmap(lambda a: matching.kernel_matrix(a, a, kernel="rbf", scales=(1.0,)))(x)
            kyy = jax.vmap(lambda a: matching.kernel_matrix(a, a, kernel="rbf", scales=(1.0,)))(y)
            kxy = jax.vmap(lambda a, b: matching.kernel_matrix(a, b, kernel="rbf", scales=(1.0,)))(x, y)
            v_stat = np.asarray(kxx.mean((1, 2)) + kyy.mean((1, 2)) - 2 * kxy.mean((1, 2)))
            assert v_stat.mean() > 10 * v_stat.std() / np.sqrt(reps)
    assert means == sorted(means) and means[-1] > 0.1


@pytest.mark.slow
def test_wae_batch_objective_is_reconstruction_minus_weighted_mmd():
    cfg = config_lib.load_config("tiny:wae", ["objective.mmd_weight=7.0"])
    spec = schema.to_spec(cfg)
    model = latent_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    variables = latent_lib.init_params(model, jax.random.key(0), (8, 8, 1))
    objective = spec.objective.build()
    x = (jax.random.uniform(jax.random.key(1), (10, 8, 8, 1)) > 0.5).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(2), 10)
    terms = objective.batch_terms(model, variables, x, keys)
    codes = model.apply(variables, method=lambda m: m.q_z_given_x(x).mean())
    z = matching.prior_draws(model, variables, matching._batch_key(keys), 10)
    mmd = matching.mmd_unbiased(codes, z)
    recon = model.apply(variables, method=lambda m: m.log_likelihood(x, codes))
    np.testing.assert_allclose(terms["mmd"], np.full(10, mmd), rtol=1e-5)
    np.testing.assert_allclose(terms["objective"], recon - 7.0 * mmd, rtol=1e-5)


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _train(overrides, workdir):
    return train_lib.train_and_evaluate(schema.to_spec(config_lib.load_config("tiny:aae", overrides)), workdir)


def _moment_gap(run):
    """||mean||^2 + ||cov - I||_F of the run's codes of the training digits: 0 for codes distributed as N(0, I)."""
    x = vaegen.runs.codes.training_images(run, max_examples=1000)
    z = np.asarray(run.codes(x), np.float64)
    return float(np.sum(z.mean(0) ** 2) + np.linalg.norm(np.cov(z.T) - np.eye(z.shape[1])))


@pytest.mark.slow
def test_adversarial_ae_trains_its_discriminator_and_moves_the_codes_toward_the_prior(tmp_path):
    """A 2-D code on the digits: the discriminator starts out telling codes from N(0, I) apart and ends
    near chance, and the codes' first two moments approach N(0, I)'s."""
    _train(["model.latent_dim=2", "train.num_epochs=8", "objective.adversarial_weight=2.0",
            "objective.discriminator_learning_rate=1e-3", "train.checkpoint_every_epochs=1",
            "train.keep_checkpoints=8"], tmp_path)
    m = _metrics(tmp_path)
    acc = [r["train/discriminator/accuracy"] for r in m]
    assert acc[0] > 0.6, acc
    assert abs(acc[-1] - 0.5) < abs(acc[0] - 0.5) - 0.05, acc
    assert all(np.isfinite(r["train/discriminator/loss"]) for r in m)
    first, last = vaegen.load(tmp_path, epoch=1), vaegen.load(tmp_path)
    assert _moment_gap(last) < 0.5 * _moment_gap(first), (_moment_gap(first), _moment_gap(last))


@pytest.mark.slow
def test_adversarial_ae_resumes_bitwise_with_both_optimizers(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _train(["train.num_epochs=3"], full)
    _train(["train.num_epochs=1"], part)
    _train(["train.num_epochs=3"], part)
    a, b = vaegen.load(full), vaegen.load(part)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)
    # p(z) is part of the model: log p(x) by importance sampling around the code (its q is a point mass).
    ev = vaegen.evaluate(a, max_examples=20)
    assert "around the code" in ev["metrics"]["log_px"]["estimator"]
    assert ev["metrics"]["iwae_1"]["mean"] <= ev["metrics"]["log_px"]["mean"] < 0
    for ra, rb in zip(_metrics(full), _metrics(part)):
        # The discriminator's loss of epochs 2 and 3 depends on its parameters and Adam state restored at epoch 1.
        for k in ("train/discriminator/loss", "train/discriminator/grad_norm", "train/adversarial", "validation/reconstruction"):
            assert ra[k] == rb[k], k
