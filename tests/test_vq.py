"""The VQ-VAE: quantization and its gradient, the codebook's moving averages and restarts, the prior
over codes (fitted by the trainer), and log p(x) against the exact sum over a tiny codebook."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen.blocks import quantizers
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.model import code_prior as code_prior_lib
from vaegen.model import latent as latent_lib
from vaegen.objectives import vq as vq_objective
from vaegen.runs.recipes import code_prior as vq_study
from vaegen.runs.recipes import recipe



def _model(*overrides, seed=0):
    spec = schema.to_spec(config_lib.load_config("tiny:vq", list(overrides)))
    model = latent_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    variables = latent_lib.init_params(model, jax.random.key(seed), (8, 8, 1))
    return spec, model, variables


def _images(n=6, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.4, (n, 8, 8, 1)).astype(jnp.float32)


def test_quantization_terms_and_the_straight_through_gradient_match_a_direct_computation():
    _, model, v = _model("model.kind.ema=false", "objective.commitment=0.3")
    x = _images()
    terms, codes = jax.jit(lambda v: vq_objective.vq_terms(model, v, x, 0.3))(v)
    z_e = np.asarray(model.apply(v, method=lambda m: m.posterior.encode(x)), np.float64)     # [B, 4]
    e = np.asarray(v["params"]["posterior"]["embedding"], np.float64)                          # [K, 2]
    groups = z_e.reshape(6, 2, 2)
    dist = ((groups[:, :, None, :] - e[None, None]) ** 2).sum(-1)                            # [B, M, K]
    np.testing.assert_array_equal(codes, dist.argmin(-1))
    z_q = e[dist.argmin(-1)].reshape(6, 4)
    sq = ((z_e - z_q) ** 2).sum(-1)
    np.testing.assert_allclose(terms["codebook_loss"], sq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["commitment_loss"], sq, rtol=1e-5, atol=1e-6)
    log_lik = jax.jit(lambda z: model.apply(v, method=lambda m: m.log_likelihood(x, z)))
    rec = log_lik(jnp.asarray(z_q, jnp.float32))
    np.testing.assert_allclose(terms["reconstruction"], rec, rtol=1e-5)
    np.testing.assert_allclose(terms["elbo_uniform"], rec - 2 * np.log(4), rtol=1e-5)
    np.testing.assert_allclose(terms["objective"], rec - sq - 0.3 * sq, rtol=1e-5)

    # Straight through: the encoder receives the decoder's gradient at z_q unchanged, and the
    # codebook receives the codebook loss's gradient only.
    def loss(params, term):
        return jnp.sum(vq_objective.vq_terms(model, {**v, "params": params}, x, 0.3)[0][term])

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_rec = grad(v["params"], "reconstruction")
    dz = jax.jit(jax.grad(lambda z: jnp.sum(log_lik(z))))(jnp.asarray(z_q, jnp.float32))
    encode = lambda p: model.apply({**v, "params": p}, method=lambda m: m.posterior.encode(x))
    expected = jax.jit(lambda p, dz: jax.vjp(encode, p)[1](dz)[0])(v["params"], dz)["posterior"]
    for name in ("loc", "encoder"):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                               g_rec["posterior"][name], expected[name])
    np.testing.assert_array_equal(g_rec["posterior"]["embedding"], 0.0)
    g_book = grad(v["params"], "codebook_loss")["posterior"]["embedding"]
    hand = np.zeros_like(e)
    for b in range(6):
        for m in range(2):
            k = dist[b, m].argmin()
            hand[k] += 2 * (e[k] - groups[b, m])
    np.testing.assert_allclose(g_book, hand, rtol=1e-4, atol=1e-5)


def test_the_moving_average_codebook_matches_a_hand_computed_step():
    stats = {"cluster_size": jnp.array([1.0, 2.0, 0.5]), "embedding_sum": jnp.array([[1.0, 0.0], [2.0, 2.0], [0.0, 1.0]]),
             "embedding": jnp.zeros((3, 2))}
    z = jnp.array([[1.0, 1.0], [3.0, -1.0], [0.0, 2.0]])
    idx = jnp.array([0, 0, 2])
    out = quantizers.ema_update(stats, z, idx, decay=0.9, epsilon=1e-3)
    n = np.array([0.9 * 1 + 0.1 * 2, 0.9 * 2, 0.9 * 0.5 + 0.1 * 1])
    s = np.array([[0.9 + 0.1 * 4, 0.1 * 0], [1.8, 1.8], [0.0, 0.9 + 0.1 * 2]])
    smoothed = (n + 1e-3) / (n.sum() + 3e-3) * n.sum()
    np.testing.assert_allclose(out["cluster_size"], n, rtol=1e-6)
    np.testing.assert_allclose(out["embedding_sum"], s, rtol=1e-6)
    np.testing.assert_allclose(out["embedding"], s / smoothed[:, None], rtol=1e-6)

    # after_step applies it to the model's codebook, from the step's encoder outputs and codes.
    _, model, v = _model("model.kind.ema_decay=0.9")
    x = _images()
    after = vq_objective.VQ().after_step(model, v, v, x, jax.random.split(jax.random.key(0), 6))
    q = model.apply(v, method=lambda m: m.quantize(x))
    want = quantizers.ema_update(v["codebook"]["posterior"], q["z_e"].reshape(-1, 2), q["indices"].reshape(-1),
                                 decay=0.9, epsilon=1e-5)
    for name in ("cluster_size", "embedding_sum", "embedding"):
        np.testing.assert_allclose(after["codebook"]["posterior"][name], want[name], rtol=1e-6)
    assert not np.allclose(after["codebook"]["posterior"]["embedding"], v["codebook"]["posterior"]["embedding"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, after["params"], v["params"])


@pytest.mark.parametrize("ema", [True, False])
def test_a_dead_code_restarts_at_an_encoder_output(ema):
    _, model, v = _model(f"model.kind.ema={str(ema).lower()}", "model.kind.dead_code_threshold=0.5")
    stats = v["codebook"]["posterior"]
    v = {**v, "codebook": {"posterior": {**stats, "cluster_size": stats["cluster_size"].at[1].set(0.0)}}}
    x = _images()
    after = vq_objective.VQ().after_step(model, v, v, x, jax.random.split(jax.random.key(0), 6))
    z_e = np.asarray(model.apply(v, method=lambda m: m.posterior.encode(x))).reshape(-1, 2)
    book = after["codebook"]["posterior"]["embedding"] if ema else after["params"]["posterior"]["embedding"]
    old = stats["embedding"] if ema else v["params"]["posterior"]["embedding"]
    usage = np.asarray(after["codebook"]["posterior"]["cluster_size"])
    dead = np.asarray(after["codebook"]["posterior"]["cluster_size"]) == 0.5      # restarted codes
    assert dead[1] and usage[1] == 0.5
    assert np.min(np.abs(z_e - np.asarray(book[1])).sum(-1)) == 0.0           # code 1 is now an encoder output
    assert not np.allclose(book[1], old[1])


def test_the_prior_over_codes_sums_to_one_over_every_code():
    for m, k, ordering in [(3, 3, "random")]:
        prior = code_prior_lib.CategoricalMADE(num_positions=m, settings=code_prior_lib.CategoricalMADESettings(
            num_categories=k, hidden=(8, 8), ordering=ordering, ordering_seed=3))
        v = prior.init(jax.random.key(0), jnp.zeros((m,), jnp.int32))
        v = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(a.size), a.shape), v)
        codes = vq_study.all_codes(m, k)                                           # [K^M, M]
        logp = jax.jit(lambda v, c: prior.apply(v, c, method="log_prob"))(v, codes)
        assert np.exp(np.asarray(logp, np.float64)).sum() == pytest.approx(1.0, abs=1e-5)
        assert np.std(np.asarray(logp)) > 0.05                                     # not uniform
        draws = jax.jit(lambda v, key: prior.apply(v, key, 4000, method="sample"))(v, jax.random.key(1))
        freq = np.bincount(np.ravel_multi_index(np.asarray(draws).T, (k,) * m), minlength=k**m) / 4000
        np.testing.assert_allclose(freq, np.exp(np.asarray(logp)), atol=0.03)      # samples follow p(c)


@pytest.fixture(scope="module")
def tiny_vq_run(tmp_path_factory):
    """A tiny VQ-VAE trained 3 epochs straight, and one trained 1 then resumed to 3."""
    root = tmp_path_factory.mktemp("vq")
    cfg = lambda epochs: config_lib.load_config("tiny:vq", [f"train.num_epochs={epochs}",
                                                            "model.kind.dead_code_threshold=0.2"])
    vaegen.train_and_evaluate(cfg(3), root / "full")
    vaegen.train_and_evaluate(cfg(1), root / "part")
    vaegen.train_and_evaluate(cfg(3), root / "part")
    return root


@pytest.mark.slow
def test_a_vq_run_trains_and_resumes_bitwise(tiny_vq_run):
    a, b = vaegen.load(tiny_vq_run / "full"), vaegen.load(tiny_vq_run / "part")
    assert a.epoch == b.epoch == 3 and set(a.variables) == {"params", "codebook"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)
    lines = [json.loads(l) for l in (tiny_vq_run / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["validation/reconstruction"] > lines[0]["validation/reconstruction"]
    assert 1.0 <= lines[-1]["train/perplexity"] <= 4.0 and lines[-1]["train/used_codes"] <= 4


@pytest.fixture(scope="module")
def tiny_vq_gen(tiny_vq_run):
    """The 3-epoch tiny VQ-VAE (2 positions of 4 codes: 16 code vectors) with its prior over codes."""
    run = vaegen.load(tiny_vq_run / "full")
    prior = recipe("code_prior", epochs=2, batch_size=100, max_codes=600, patience=0,
                   density=code_prior_lib.CategoricalMADESettings(hidden=(16,)))
    fitted = prior.fit(run)                                          # in <workdir>/expost/code_prior/fit
    assert fitted.info["num_positions"] == 2 and fitted.info["codebook_size"] == 4
    gen = prior.attach(run, fitted)
    # The fitted prior is the run's p(c) wherever the run is loaded with it.
    loaded = vaegen.load(tiny_vq_run / "full", density="code_prior")
    assert loaded.recipe.name == "code_prior" and loaded.recipe.settings == prior.settings
    return run, gen, loaded


@pytest.mark.slow
def test_log_px_bound_and_importance_sampling_against_the_exact_sum(tiny_vq_gen):
    run, gen, loaded = tiny_vq_gen
    x = run.split("test", max_examples=40)
    r = vq_study.log_px(gen, x, jax.random.key(0), k=50)
    exact = vq_study.log_px_exact(gen, x)                                         # all 16 codes
    np.testing.assert_array_equal(vq_study.log_px_exact(loaded, x), exact)
    assert np.all(r["bound"] <= r["is"] + 1e-4)                                   # for every draw
    assert np.all(r["bound"] <= exact + 1e-4)
    over = np.asarray(r["is"] - exact, np.float64)                                # a lower bound on average:
    assert over.mean() <= 3 * over.std(ddof=1) / np.sqrt(over.size) + 1e-3       # above only by noise
    assert np.mean(exact - r["is"]) < 0.5 * np.mean(exact - r["bound"])            # and closer than the bound
    np.testing.assert_allclose(r["bound"], r["log_p_code"] + r["reconstruction"], rtol=1e-6)
    # run.log_px of the loaded run is the same estimate: the recipe's, importance sampling over codes.
    np.testing.assert_allclose(loaded.log_px(x, k=50, key=jax.random.key(0)), r["is"], rtol=1e-5)
    # The generative model samples like any other row of a study.
    z, xs = gen.model.apply(gen.variables, method=lambda m: m.sample_with_latents(jax.random.key(2), 5))
    mean = gen.model.apply(gen.variables, method=lambda m: m.p_x_given_z(z).mean())
    assert z.shape == (5, 4) and xs.shape == mean.shape == (5, 8, 8, 1)
    usage = vq_study.codebook_usage(run, x)
    assert usage["used_codes"] + usage["dead_codes"] == 4 and 1.0 <= usage["perplexity"] <= 4.0


def _rescaled(gen, a):
    """The same model with its codebook and encoder output scaled by ``a`` and the decoder's input
    layer by 1/a: every p(x | e_c), every nearest code and p(c) are unchanged, the squared
    distances between z_e and the codes scale by a^2."""
    v = jax.tree_util.tree_map(lambda t: t, gen.variables)
    post, dec = v["params"]["posterior"], v["params"]["likelihood"]["decoder"]["dense_0"]
    post["loc"] = {"kernel": post["loc"]["kernel"] * a, "bias": post["loc"]["bias"] * a}
    v["params"]["likelihood"]["decoder"]["dense_0"] = {**dec, "kernel": dec["kernel"] / a}
    book = v["codebook"]["posterior"]
    v["codebook"]["posterior"] = {**book, "embedding": book["embedding"] * a, "embedding_sum": book["embedding_sum"] * a}
    return dataclasses.replace(gen, variables=v)


@pytest.mark.slow
def test_the_proposal_over_codes_is_scale_free_and_close_to_the_exact_sum_at_every_scale(tiny_vq_gen):
    """Codebooks of spread 0.01x, 1x and 30x the trained one (the same model): the exact log p(x)
    is the same, and so is every draw of the scale-free proposal, within a few hundredths of a nat
    of it; an absolute temperature (tau = 3, as before) misses most of the sum once the codebook is
    large (its draws all land on the encoder's own code)."""
    run, gen, _ = tiny_vq_gen
    x = run.split("test", max_examples=60)
    exact = vq_study.log_px_exact(gen, x)
    scale = float(gen.model.apply(gen.variables, method=lambda m: vq_study.codebook_scale(m.posterior.codebook())))
    reference = None
    for a in (0.01, 1.0, 30.0):
        g = _rescaled(gen, a)
        np.testing.assert_allclose(vq_study.log_px_exact(g, x), exact, atol=2e-3)
        r = vq_study.log_px(g, x, jax.random.key(0), k=100)                        # the default: scale-free
        gap = exact - r["is"]
        assert np.all(r["bound"] <= r["is"] + 1e-4)
        assert abs(np.mean(gap)) < 0.05 and np.max(gap) < 1.0, (a, np.mean(gap), np.max(gap))
        if reference is None:
            reference = r
        np.testing.assert_allclose(r["is"], reference["is"], atol=2e-3)              # the same draws at every scale
        np.testing.assert_array_equal(r["is_fraction_at_code"], reference["is_fraction_at_code"])
        # tau = 3 in absolute units, as the proposal had: fine at the trained scale, blind at 30x.
        fixed = vq_study.log_px(g, x, jax.random.key(0), k=100, temperature=3.0 / (scale * a * a), factors=(1.0,))
        if a == 30.0:
            assert np.mean(exact - fixed["is"]) > 0.5 and np.mean(fixed["is_fraction_at_code"]) > 0.8
    assert np.mean(exact - r["bound"]) > 0.5   # the sum over other codes matters here: the test can fail
