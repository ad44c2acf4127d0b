"""The discretized logistic (mixture) likelihood of 8-bit images, checked against scipy; heads on
vector and spatial decoder trunks; a tiny model trained on 8-bit colour data."""

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.special import logsumexp

import vaegen
from vaegen.config import loading as config_lib
from vaegen.data import datasets as data_lib
from vaegen.runs import evaluate as evaluation_lib
from vaegen.blocks import likelihoods as likelihoods
from vaegen.model import latent as model_lib
from vaegen.blocks import networks as networks
from vaegen.blocks import posteriors as posteriors
from vaegen.blocks import priors as priors
from vaegen.registry import LIKELIHOODS, NETWORKS
from vaegen.train import trainer as train_lib

LEVELS = np.arange(256) / 255.0
CASES = [(1, False), (1, True), (3, False), (3, True)]
CASE_IDS = [f"K{k}-{'coupled' if c else 'independent'}" for k, c in CASES]


# --- an independent float64 reference (scipy) -------------------------------------------------

def _ref_log_mass(v, m, s):
    """log P(level v) for a logistic(m, s) discretized to the 256 bins of width 1/255 centred on
    the levels, edge bins open (scipy's logcdf / logsf in float64; arrays broadcast)."""
    v, m, s = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (v, m, s)))
    lo, hi = (v - 0.5 / 255 - m) / s, (v + 0.5 / 255 - m) / s
    dist = scipy.stats.logistic
    with np.errstate(divide="ignore", invalid="ignore"):
        # upper tail: survival functions keep their precision; lower tail: CDFs
        upper = dist.logsf(lo) + np.log1p(-np.exp(dist.logsf(hi) - dist.logsf(lo)))
        lower = dist.logcdf(hi) + np.log1p(-np.exp(dist.logcdf(lo) - dist.logcdf(hi)))
    out = np.where(v > m, upper, lower)
    out = np.where(v < 0.5 / 255, dist.logcdf(hi), out)
    return np.where(v > 1 - 0.5 / 255, dist.logsf(lo), out)


def _ref_log_prob_pixel(x, logits, loc, log_scale, coupling, channels=None):
    """log p(x_0, ..., x_{channels-1}) of one pixel's values ``x [..., C]``: a marginal over the
    first channels, which is the product of their factors (the later ones sum to 1)."""
    x = np.asarray(x, np.float64)[..., None, :]  # [..., 1, C]
    k_count, c_count = loc.shape
    channels = c_count if channels is None else channels
    log_pi = np.zeros(k_count) if logits is None else logits - logsumexp(logits)
    pairs = [(c, j) for c in range(1, c_count) for j in range(c)]
    total = log_pi
    for c in range(channels):
        m = loc[:, c]
        if coupling is not None:
            m = m + sum(coupling[:, pairs.index((c, j))] * x[..., j] for j in range(c))
        total = total + _ref_log_mass(x[..., c], m, np.exp(log_scale[:, c]))
    return logsumexp(total, axis=-1)


def _params(seed, k, coupled, pixel=(1, 1), c=3, loc=(0.2, 0.8), log_scale=(-3.5, -1.5), batch=()):
    rng = np.random.default_rng(seed)
    shape = batch + pixel
    return dict(
        logits=rng.normal(0, 1, shape + (k,)) if k > 1 else None,
        loc=rng.uniform(*loc, shape + (k, c)),
        log_scale=rng.uniform(*log_scale, shape + (k, c)),
        coupling=rng.uniform(-0.9, 0.9, shape + (k, c * (c - 1) // 2)) if coupled else None,
    )


def _dist(p, pixel_ndims=2):
    f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
    return likelihoods.DiscretizedLogisticMixture(f32(p["logits"]), f32(p["loc"]), f32(p["log_scale"]),
                                                  f32(p["coupling"]), pixel_ndims=pixel_ndims)


def _at(p, index):
    return {name: None if a is None else a[index] for name, a in p.items()}


# --- probabilities --------------------------------------------------------------------------

@pytest.mark.parametrize("k, coupled", CASES, ids=CASE_IDS)
def test_one_subpixel_sums_to_one_and_matches_scipy(k, coupled):
    p = _params(0, k, coupled)
    d = _dist(p)
    rg = np.array([37, 200]) / 255.0
    # All 256 values of blue given red and green: each equals scipy's CDF difference, and together
    # they hold p(red, green), so that p(blue | red, green) sums to 1.
    xs = np.stack([np.broadcast_to(rg, (256, 2))[:, 0], np.broadcast_to(rg, (256, 2))[:, 1], LEVELS], -1)
    lp = np.asarray(d.log_prob(jnp.asarray(xs[:, None, None, :], jnp.float32)), np.float64)
    ref = _ref_log_prob_pixel(xs, *(_at(p, (0, 0)).values()))
    np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=2e-4)
    ref_rg = _ref_log_prob_pixel(np.r_[rg, 0.0], *(_at(p, (0, 0)).values()), channels=2)
    assert np.exp(logsumexp(lp) - ref_rg) == pytest.approx(1.0, abs=2e-5)
    # All 256 x 256 values of green and blue given red hold p(red).
    g, b = np.meshgrid(LEVELS, LEVELS, indexing="ij")
    xs = np.stack([np.full(g.size, rg[0]), g.ravel(), b.ravel()], -1)
    lp = np.asarray(d.log_prob(jnp.asarray(xs[:, None, None, :], jnp.float32)), np.float64)
    ref_r = _ref_log_prob_pixel(np.r_[rg[0], 0.0, 0.0], *(_at(p, (0, 0)).values()), channels=1)
    assert np.exp(logsumexp(lp) - ref_r) == pytest.approx(1.0, abs=2e-5)
    # And red's 256 values (scipy) sum to 1: the pixel's distribution is normalised.
    reds = np.stack([LEVELS, 0 * LEVELS, 0 * LEVELS], -1)
    total = logsumexp(_ref_log_prob_pixel(reds, *(_at(p, (0, 0)).values()), channels=1))
    assert total == pytest.approx(0.0, abs=1e-9)


def test_single_channel_levels_sum_to_one_and_edge_bins_are_open():
    p = dict(logits=None, loc=np.array([[[[[0.03]]]]]), log_scale=np.array([[[[[np.log(0.05)]]]]]), coupling=None)
    lp = np.asarray(_dist(p).log_prob(jnp.asarray(LEVELS[:, None, None, None], jnp.float32)), np.float64)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)
    # The edge bin k = 0 holds everything below 0.5/255: the logistic CDF there.
    assert np.exp(lp[0]) == pytest.approx(scipy.stats.logistic.cdf((0.5 / 255 - 0.03) / 0.05), rel=1e-5)
    assert np.exp(lp[255]) == pytest.approx(scipy.stats.logistic.sf((254.5 / 255 - 0.03) / 0.05), rel=1e-4)


@pytest.mark.parametrize("k, coupled", CASES, ids=CASE_IDS)
def test_log_prob_of_an_image_is_the_sum_over_its_pixels(k, coupled):
    p = _params(1, k, coupled, pixel=(4, 5), batch=(2,), loc=(-0.2, 1.2), log_scale=(-7.0, 0.0))
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 5, 3)) / 255.0
    x[0, 0], x[1, 1] = 0.0, 1.0  # both edge bins
    lp = np.asarray(_dist(p).log_prob(jnp.asarray(x, jnp.float32)), np.float64)
    assert lp.shape == (2,)
    ref = [sum(float(_ref_log_prob_pixel(x[h, w], *(_at(p, (b, h, w)).values()))) for h in range(4) for w in range(5))
           for b in range(2)]
    np.testing.assert_allclose(lp, ref, rtol=1e-5)


def test_far_tails_are_exact_where_the_cdf_difference_underflows():
    """s = e^-7 and the level 0.5 or 1.0 hundreds of scales from the mean: sigmoid differences are
    0 in float32, the log-mass is not."""
    p = dict(logits=None, loc=np.zeros((1, 1, 1, 1)), log_scale=np.full((1, 1, 1, 1), -7.0), coupling=None)
    for v in (0.5, 1.0, 10 / 255):
        lp = float(_dist(p).log_prob(jnp.full((1, 1, 1), v, jnp.float32)))
        ref = float(_ref_log_mass(v, 0.0, np.exp(-7.0)))
        assert np.isfinite(lp) and lp == pytest.approx(ref, rel=1e-5)


def test_independent_single_component_is_the_vampprior_log_logistic_256():
    """K = 1 without coupling: sum_i log(sigmoid((x_i + 1/512 - m_i) / s_i) - sigmoid((x_i - 1/512 ...)))
    in the VampPrior code's form (bin 1/256 there; here 1/255), edge bins open."""
    rng = np.random.default_rng(3)
    loc, log_s = rng.uniform(0, 1, (3, 3, 1, 2)), rng.uniform(-2.5, -1, (3, 3, 1, 2))
    x = rng.integers(0, 256, (3, 3, 2)) / 255.0
    lp = float(_dist(dict(logits=None, loc=loc, log_scale=log_s, coupling=None)).log_prob(jnp.asarray(x, jnp.float32)))
    sig = lambda t: 1 / (1 + np.exp(-t))
    s = np.exp(log_s[:, :, 0])
    upper = np.where(x > 254.5 / 255, 1.0, sig((x + 0.5 / 255 - loc[:, :, 0]) / s))
    lower = np.where(x < 0.5 / 255, 0.0, sig((x - 0.5 / 255 - loc[:, :, 0]) / s))
    assert lp == pytest.approx(np.log(upper - lower).sum(), rel=1e-5)


# --- sampling -------------------------------------------------------------------------------

def _chi2_pvalue(counts, probs, min_expected=5.0):
    """Pearson's chi-square p-value, cells with fewer than ``min_expected`` expected draws lumped."""
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = np.r_[counts[big], counts[~big].sum()]
    exp = np.r_[expected[big], expected[~big].sum()]
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    return scipy.stats.chi2.sf(stat, keep.sum() - 1)


@pytest.mark.parametrize("k, coupled", CASES, ids=CASE_IDS)
@pytest.mark.slow
def test_sample_frequencies_match_the_probabilities(k, coupled):
    """Joint (red, green, blue) frequencies of one pixel against the scipy probabilities, with
    small scales so that the whole joint fits a grid of levels (channel-sequential sampling and the
    coupling are both exercised: green and blue are drawn given the sampled red and green)."""
    p = _params(4, k, coupled, loc=(0.25, 0.75), log_scale=(-6.5, -5.5))
    n = 20000
    x = np.asarray(_dist(p).sample(seed=jax.random.key(0), sample_shape=(n,)))[:, 0, 0]
    assert x.shape == (n, 3)
    levels = np.round(x * 255).astype(int)
    np.testing.assert_allclose(levels / 255.0, x, atol=1e-6)
    cells, counts = np.unique(levels, axis=0, return_counts=True)
    # Every joint level within 6 levels of a sample: the grid holds (numerically) all the mass.
    grid = np.unique(np.concatenate([cells + d for d in np.stack(np.meshgrid(*[np.arange(-6, 7)] * 3), -1).reshape(-1, 3)]),
                     axis=0)
    grid = grid[np.all((grid >= 0) & (grid <= 255), axis=1)]
    probs = np.exp(_ref_log_prob_pixel(grid / 255.0, *(_at(p, (0, 0)).values())))
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    lookup = {tuple(c): m for c, m in zip(cells, counts)}
    observed = np.array([lookup.get(tuple(g), 0) for g in grid])
    assert observed.sum() == n
    assert _chi2_pvalue(observed, probs) > 1e-3


def test_broad_sample_frequencies_and_edges():
    """One broad component per channel: the 256 levels, both edge bins included, grouped by 16."""
    p = dict(logits=None, loc=np.array([[[[0.1, 0.5, 0.95]]]]), log_scale=np.log([[[[0.2, 0.3, 0.1]]]]),
             coupling=None)
    x = np.asarray(_dist(p).sample(seed=jax.random.key(1), sample_shape=(20000,)))[:, 0, 0]
    for c in range(3):
        lv = np.round(x[:, c] * 255).astype(int)
        probs = np.exp(_ref_log_mass(LEVELS, p["loc"][0, 0, 0, c], np.exp(p["log_scale"][0, 0, 0, c])))
        counts = np.bincount(lv, minlength=256)
        assert _chi2_pvalue(counts.reshape(16, 16).sum(1), probs.reshape(16, 16).sum(1)) > 1e-3
        for edge in (0, 255):  # each edge bin's frequency, within 4 binomial standard deviations
            n, q = len(lv), probs[edge]
            assert abs(counts[edge] - n * q) < 4 * np.sqrt(n * q * (1 - q)) + 1, (c, edge)


def test_mean_is_the_coupled_mixture_mean_clipped():
    p = _params(5, 3, True, loc=(-0.3, 1.2))
    m = np.asarray(_dist(p).mean())[0, 0]
    pi = scipy.special.softmax(p["logits"][0, 0])
    loc, a = p["loc"][0, 0], p["coupling"][0, 0]
    r = loc[:, 0]
    g = loc[:, 1] + a[:, 0] * r
    b = loc[:, 2] + a[:, 1] * r + a[:, 2] * g
    np.testing.assert_allclose(m, np.clip([pi @ r, pi @ g, pi @ b], 0, 1), rtol=1e-5, atol=1e-6)


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("log_scale", [-7.0, -4.0, 3.0, 10.0])
def test_gradients_are_finite_at_the_edges_and_for_extreme_scales(log_scale):
    p = _params(6, 3, True, pixel=(2, 2), loc=(-3.0, 4.0))
    p["log_scale"] = np.full_like(p["log_scale"], log_scale)
    x = jnp.asarray(np.array([[[0, 0, 0], [255, 255, 255]], [[0, 128, 255], [255, 1, 254]]]) / 255.0, jnp.float32)

    def f(logits, loc, ls, coupling):
        return likelihoods.DiscretizedLogisticMixture(logits, loc, ls, coupling).log_prob(x)

    args = [jnp.asarray(p[n], jnp.float32) for n in ("logits", "loc", "log_scale", "coupling")]
    value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(*args)
    assert np.isfinite(float(value))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def test_gradients_through_the_head_at_bounded_scales():
    m = likelihoods.DiscretizedLogistic(decoder=networks.MLP(networks.MLPSettings(hidden=(8,))), event_shape=(2, 2, 3),
                                     settings=likelihoods.DiscretizedLogisticSettings(mixtures=2))
    v = m.init(jax.random.key(0), jnp.zeros((3,)))
    x = jnp.asarray(np.array([[[0, 0, 0], [255, 255, 255]], [[0, 128, 255], [255, 1, 254]]]) / 255.0, jnp.float32)
    grad = jax.jit(jax.grad(lambda vv: m.apply(vv, jnp.ones((3,))).log_prob(x)))
    for shift in (-60.0, 0.0, 30.0):  # every raw log-scale far below the bound, or large
        v2 = jax.tree_util.tree_map(lambda a: a, v)
        v2["params"]["head"]["bias"] = v["params"]["head"]["bias"] + shift
        grads = grad(v2)
        for g in jax.tree_util.tree_leaves(grads):
            assert np.all(np.isfinite(np.asarray(g)))


# --- support --------------------------------------------------------------------------------

def test_support_check_accepts_levels_and_rejects_half_levels():
    likelihoods.check_support("discretized_logistic", (np.arange(256, dtype=np.uint8) / np.float32(255)).astype(np.float32))
    for bad in (np.array([0.0, 0.5 / 255, 1.0]), np.array([256 / 255]), np.array([-1 / 255]), np.array([0.3])):
        with pytest.raises(likelihoods.SupportError, match="not 8-bit grey levels k/255, k in 0..255"):
            likelihoods.check_support("discretized_logistic", bad, what="the batch")


def test_config_requires_grey_levels():
    with pytest.raises(config_lib.ConfigError, match="discretized_logistic models the 256 grey levels.*"
                                                     "binarization='dynamic'"):
        config_lib.load_config("tiny", ["model.likelihood=discretized_logistic"])
    with pytest.raises(config_lib.ConfigError, match="config.model.likelihood.mixtures=0 must be > 0"):
        config_lib.load_config("tiny", ["model.likelihood=discretized_logistic", "data.binarization=none",
                                        "model.likelihood.mixtures=0"])


# --- heads on vector and spatial trunks ------------------------------------------------------

class _PixelTrunk(nn.Module):
    """A stand-in spatial decoder trunk: z [..., D] -> per-pixel features [..., H, W, F]."""

    pixel_shape: tuple[int, int]
    features: int = 5
    spatial_output = True

    @nn.compact
    def __call__(self, z):
        h = jnp.tanh(nn.Dense(self.pixel_shape[0] * self.pixel_shape[1] * self.features)(z))
        return h.reshape(z.shape[:-1] + tuple(self.pixel_shape) + (self.features,))


EVENT = (4, 6, 3)


def _likelihood(name, trunk):
    if name == "bernoulli":
        return likelihoods.Bernoulli(decoder=trunk, event_shape=EVENT)
    if name == "gaussian":
        return likelihoods.Gaussian(decoder=trunk, event_shape=EVENT,
                                    settings=likelihoods.GaussianLikelihoodSettings(scale="per_pixel"))
    return likelihoods.DiscretizedLogistic(decoder=trunk, event_shape=EVENT,
                                           settings=likelihoods.DiscretizedLogisticSettings(mixtures=2))


def _model(name, spatial):
    trunk = _PixelTrunk(pixel_shape=EVENT[:2]) if spatial else networks.MLP(networks.MLPSettings(hidden=(7,)))
    return model_lib.LatentVariableModel(
        prior=priors.StandardNormal(latent_dim=3), likelihood=_likelihood(name, trunk),
        posterior=posteriors.DiagonalGaussian(encoder=networks.MLP(networks.MLPSettings(hidden=(7,)), event_ndims=3), latent_dim=3))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "discretized_logistic"])
def test_spatial_heads_give_the_shapes_of_vector_heads(name):
    z = jax.random.normal(jax.random.key(1), (2, 5, 3))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, EVENT) * 1.0, jnp.float32)
    out = {}
    for spatial in (False, True):  # shapes only: traced (jax.eval_shape), never compiled
        m = _model(name, spatial)
        v = jax.eval_shape(lambda: model_lib.init_params(m, jax.random.key(0), EVENT))
        dist_shapes = []

        def outputs(v):
            d = m.apply(v, z, method="p_x_given_z")
            dist_shapes.extend([d.batch_shape, d.event_shape])
            return m.apply(v, x, z, method="log_likelihood"), d.sample(seed=jax.random.key(2)), d.mean()

        array_shapes = tuple(a.shape for a in jax.eval_shape(outputs, v))
        out[spatial] = tuple(dist_shapes) + array_shapes
        head = v["params"]["likelihood"][type(m.likelihood).head_name]
        per_pixel = m.likelihood.num_params() if name == "discretized_logistic" else EVENT[-1]
        assert head["bias"].shape == ((per_pixel,) if spatial else (EVENT[0] * EVENT[1] * per_pixel,))
    assert out[False] == out[True] == ((2, 5), EVENT, (2, 5), (2, 5) + EVENT, (2, 5) + EVENT)


def test_spatial_trunk_of_the_wrong_size_is_a_clear_error():
    m = likelihoods.Bernoulli(decoder=_PixelTrunk(pixel_shape=(3, 6)), event_shape=EVENT)
    with pytest.raises(ValueError, match=r"per-pixel features \[..., 4, 6, F\], got shape \(3, 6, 5\)"):
        m.init(jax.random.key(0), jnp.zeros((3,)))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "discretized_logistic"])
@pytest.mark.parametrize("spatial", [False, True], ids=["vector", "spatial"])
def test_output_bias_starts_at_the_data_mean(name, spatial):
    """At z = 0 both stand-in trunks output 0 (tanh of a zero-bias layer): E[x | z] is the data
    mean per pixel (vector head) or each channel's mean over the pixels (spatial head)."""
    m = _model(name, spatial)
    v = model_lib.init_params(m, jax.random.key(0), EVENT)
    mean = np.random.default_rng(1).uniform(0.05, 0.95, EVENT)
    v = model_lib.set_output_bias(v, m, mean)
    got = np.asarray(m.apply(v, jnp.zeros((3,)), method=lambda mm, z: mm.p_x_given_z(z).mean()))
    want = np.broadcast_to(mean.reshape(-1, 3).mean(0), EVENT) if spatial else mean
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_every_registered_likelihood_builds_on_an_mlp_decoder(name):
    """Each likelihood of the registry, at its default settings, on an mlp decoder trunk: p(x | z)
    with batch [2] and event [4, 6, 3] whose log-density of one observation is finite."""
    component = LIKELIHOODS.get(name)
    assert component.summary.strip()
    decoder = NETWORKS.select("mlp", hidden=(8,)).build(event_ndims=1, output_shape=EVENT)
    lik = LIKELIHOODS.select(name).build(decoder=decoder, event_shape=EVENT)
    assert isinstance(lik, nn.Module)
    z = jax.random.normal(jax.random.key(0), (2, 3))
    v = lik.init(jax.random.key(1), z)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, EVENT) * 1.0, jnp.float32)  # in every support
    likelihoods.check_support(name, np.asarray(x))
    d = lik.apply(v, z)
    assert d.batch_shape == (2,) and d.event_shape == EVENT
    lp = d.log_prob(x)
    assert lp.shape == (2,) and np.all(np.isfinite(np.asarray(lp)))


# --- a model trained on 8-bit colour images --------------------------------------------------

def _colour_splits(n_train=400, n_val=100, n_test=100, seed=0):
    """Blocks of 4 colours with pixel noise: uint8 [N, 8, 8, 3]."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (6, 3))

    def make(n):
        kinds = rng.integers(0, 6, (n, 2))
        img = np.where(np.arange(8)[None, :, None, None] < 4, palette[kinds[:, 0]][:, None, None, :],
                       palette[kinds[:, 1]][:, None, None, :])
        img = np.broadcast_to(img, (n, 8, 8, 3)) + rng.integers(-8, 9, (n, 8, 8, 3))
        return np.clip(img, 0, 255).astype(np.uint8)

    train, val, test = make(n_train), make(n_val), make(n_test)
    info = {"name": "colour_blocks", "version": "test", "event_shape": [8, 8, 3],
            "sizes": {"train": n_train, "validation": n_val, "test": n_test}}
    return data_lib.Splits(train=train, validation=val, test=test, train_labels=None, validation_labels=None,
                           test_labels=None, info=info)


@pytest.mark.slow
def test_tiny_model_trains_on_8bit_colour_images_and_reports_bits_per_dim(tmp_path, monkeypatch):
    cfg = config_lib.load_config("tiny", [
        "data.binarization=none", "model.likelihood=discretized_logistic", "model.likelihood.mixtures=2",
        "train.num_epochs=4", "optim.learning_rate=3e-3", "train.batch_size=50"])
    splits = _colour_splits()
    last = train_lib.train_and_evaluate(vaegen.to_spec(cfg), tmp_path, splits=splits)
    m = [json.loads(l) for l in (pathlib.Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert len(m) == 4 and last["epoch"] == 4
    assert all(np.isfinite(r["validation/elbo"]) for r in m)
    assert m[-1]["validation/elbo"] > m[0]["validation/elbo"] + 10.0
    assert m[-1]["train/elbo"] > m[0]["train/elbo"]
    # Better than the uniform distribution over the 256 levels of each of the 192 sub-pixels.
    assert m[-1]["validation/elbo"] > -192 * np.log(256)

    # Evaluated (on the same data): bits/dim = -log p(x) / (D ln 2) over D = 8 * 8 * 3 sub-pixels.
    monkeypatch.setattr(train_lib, "load_data", lambda spec: splits)
    run = vaegen.load(tmp_path)
    settings = dataclasses.replace(run.spec.eval, estimators="elbo,is", num_samples=5)
    result = evaluation_lib.evaluate(run, settings, max_examples=20)
    assert "D = 192 = 8 x 8 x 3 sub-pixels of the 8-bit image" in result["bits_per_dim_definition"]
    assert "bits/dim: -log2 p(x) / D over the D = 192" in evaluation_lib.format_table(result)
    for name in ("log_px", "elbo"):
        metric = result["metrics"][name]
        assert metric["bits_per_dim"] == pytest.approx(-metric["mean"] / (192 * np.log(2)), rel=1e-12)
        assert 0 < metric["bits_per_dim"] < 8
