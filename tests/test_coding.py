"""Lossless coding with every model that defines p(x): bitwise round trips of every kind of model
(random and trained weights, 1 and an odd number of images), the coded size against the model's bound
(bits back at the -ELBO, MADE at its exact -log p(x)), the grid's tables and the mixtures'
conditionals against exact answers, and a file refused when it is damaged or comes from another model.
An autoencoder without p(z) codes nothing."""

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen import cli, errors
from vaegen.coding import ans, coders, grid as grid_lib, latents
from vaegen.config import loading, schema
from vaegen.model import latent as latent_lib
from vaegen.runs import compression
from vaegen.runs import run as run_lib
from vaegen.runs.recipes import Fit, recipe
from vaegen.runs.recipes import code_prior as code_prior_lib
from vaegen.runs.recipes import learned as learned_lib
from vaegen.runs.recipes import mixture as mixture_lib

EVENT = (8, 8, 1)


def _random_run(preset, overrides=(), seed=0):
    """A run of ``preset``'s model with freshly initialised (random) parameters."""
    spec = schema.to_spec(loading.load_config(preset, list(overrides)))
    model = latent_lib.build_model(spec.model, spec.inference, EVENT)
    variables = jax.jit(lambda key: latent_lib.init_params(model, key, EVENT))(jax.random.key(seed))
    return run_lib.Run(workdir=pathlib.Path(f"random-{preset}-{seed}"), spec=spec, model=model, variables=variables,
                       event_shape=EVENT, epoch=0, info={})


def _density(name, dim, **settings):
    """A learned ex-post density over ``dim``-D codes with random parameters, as a recipe's fit."""
    cls = type(recipe(name).settings.density)
    spec = recipe(name, density=cls(**settings)).density_spec(dim, num_validation=0)
    model = latent_lib.build_model(spec.model, spec.inference, (dim,))
    fitted = learned_lib.DensityFit(name, spec, latent_lib.init_params(model, jax.random.key(3), (dim,)),
                                    pathlib.Path("nowhere"), {})
    return Fit(name, value=fitted)


def _with_code_prior(vq_run, seed=2):
    prior = recipe("code_prior", density=code_prior_lib.code_prior_model.CategoricalMADESettings(hidden=(8,)))
    m, k = code_prior_lib.shape_of_codes(vq_run)
    spec = prior.prior_spec(m, k, num_validation=0)
    model = latent_lib.build_model(spec.model, spec.inference, (m,))
    fitted = code_prior_lib.CodePriorFit(spec, latent_lib.init_params(model, jax.random.key(seed), (m,)),
                                         pathlib.Path("nowhere"), {})
    return prior.attach(vq_run, Fit("code_prior", value=fitted))


def _binary(n, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n,) + EVENT) < 0.35).astype(np.float32)


def _levels(n, seed=0):
    return (np.round(np.random.default_rng(seed).uniform(size=(n,) + EVENT) * 255) / 255).astype(np.float32)


def _ae_with(name, fit=None):
    """The random AE with the recipe ``name`` attached (its fit ``fit``)."""
    return recipe(name).attach(_random_run("tiny:ae"), fit or Fit(name), code_scale=np.ones(4))


# Every kind of model that codes, with random parameters: (its coder, the run).
KINDS = {
    "vae": ("bits_back", lambda: _random_run("tiny")),
    "vae-mixture-prior": ("bits_back", lambda: _random_run("tiny", ["model.prior=mixture",
                                                                   "model.prior.components=3"])),
    "vae-vampprior": ("bits_back", lambda: _random_run("tiny", ["model.prior=vampprior",
                                                               "model.prior.components=3"])),
    "vae-full-covariance-q": ("bits_back", lambda: _random_run("tiny", ["inference.posterior=full_covariance_gaussian"])),
    "two-layer-bottom-up": ("bits_back", lambda: _random_run("tiny", ["model.kind=two_layer",
                                                                     "model.kind.top_latent_dim=2"])),
    "two-layer-top-down": ("bits_back", lambda: _random_run("tiny", ["model.kind=two_layer",
                                                                    "model.kind.top_latent_dim=2",
                                                                    "model.kind.hierarchy=top_down",
                                                                    "model.kind.decoder_sees_top=true"])),
    "vae-8bit": ("bits_back", lambda: _random_run("tiny", ["model.likelihood=discretized_logistic",
                                                           "data.binarization=none"])),
    "wae": ("quantized_latent", lambda: _random_run("tiny:wae")),
    "ae+standard-normal": ("quantized_latent", lambda: _ae_with("standard_normal")),
    "ae+gmm": ("quantized_latent", lambda: _ae_with("gmm", Fit("gmm", value=mixture_lib.fit_mixture(
        np.random.default_rng(1).normal(size=(200, 4)), num_components=3, seed=0)))),
    "ae+flow": ("quantized_latent", lambda: _ae_with("flow", _density("flow", 4, layers=2, hidden=(8,)))),
    "ae+two-stage": ("quantized_latent", lambda: _ae_with("two_stage", _density("two_stage", 4, hidden=(8,),
                                                                                latent_dim=3))),
    "vq+code-prior": ("discrete_codes", lambda: _with_code_prior(_random_run("tiny:vq"))),
    "made": ("autoregressive", lambda: _random_run("tiny", ["model.kind=autoregressive", "objective=exact",
                                                           "model.kind.hidden=(16,)"])),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.slow
def test_every_kind_of_model_decodes_its_file_bit_for_bit(kind):
    """Random parameters; one image, and an odd number (7: blocks of 1, 2 and 4 under bits back)."""
    name, make = KINDS[kind]
    run = make()
    x = _levels(7) if kind == "vae-8bit" else _binary(7)
    assert coders.supported(run.model, run.variables, EVENT)[name] is None
    for n in (1, 7):
        data = compression.compress(run, x[:n])
        header = compression.read_header(data)
        assert header["coder"]["name"] == name and header["images"]["num"] == n
        y = compression.decompress(run, data)
        assert y.dtype == np.float32 and y.shape == (n,) + EVENT
        np.testing.assert_array_equal(y, x[:n])
        assert compression.compress(run, x[:n]) == data              # deterministic
    if name in ("bits_back",) or kind == "ae+two-stage":
        assert header["chain"]["seed_words"] > 0 and header["chain"]["blocks"][0] == 1


# --- trained runs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny VAE, AE and MADE trained on the 8x8 digits (a few epochs each)."""
    root = tmp_path_factory.mktemp("coding")
    for name, preset, overrides in (("vae", "tiny", ["train.num_epochs=8"]), ("ae", "tiny:ae", []),
                                    ("made", "tiny", ["model.kind=autoregressive", "objective=exact",
                                                      "model.kind.hidden=(32,)", "train.num_epochs=5"])):
        vaegen.train_and_evaluate(loading.load_config(preset, overrides), root / name)
    return root


@pytest.mark.slow
def test_bits_back_costs_the_negative_elbo_over_a_chain_of_test_images(trained):
    """The 297 test digits coded in one chain by a trained VAE: without the initial bits (paid once, by
    the first image, and reported separately) the file costs the model's -ELBO in bits/dim within 2%
    (BB-ANS's claim; the coded latents are draws from q, so the two differ by Monte Carlo noise, about
    0.5% here), and the initial bits are at most D x P + 64."""
    run = vaegen.load(trained / "vae")
    x = run.split("test")
    assert x.shape[0] >= 200
    data, stats = compression.compress_with_stats(run, x)
    np.testing.assert_array_equal(compression.decompress(run, data), x)
    result = compression.report(run, x, data, samples=64, stats=stats)
    bound = result["bound"]["bits_per_dim"]
    assert abs(result["net_bits_per_dim"] - bound) < 0.02 * bound, result
    assert result["file_bits_per_dim"] > result["net_bits_per_dim"]
    assert 0 < result["initial_bits"] <= 4 * 12 + 64 + 32
    first = result["first_image"]
    assert first["initial_bits"] == result["initial_bits"] and first["popped_bits"] > 0 and first["net_bits"] > 0
    # The file then stays well below 1 bit per binary pixel and below what the same bits cost raw.
    assert result["file_bits_per_dim"] < 1.0


@pytest.mark.slow
def test_a_trained_autoencoder_with_a_fitted_mixture_codes_its_codes(trained):
    run = vaegen.load(trained / "ae")
    x = run.split("test", max_examples=41)
    gmm = recipe("gmm", components=3, max_codes=500)
    gen = gmm.attach(run, gmm.fit(run, directory=trained / "ae-gmm"))
    data = compression.compress(gen, x)
    np.testing.assert_array_equal(compression.decompress(gen, data), x)
    assert compression.read_header(data)["coder"]["name"] == "quantized_latent"
    result = compression.report(gen, x, data, samples=50)
    # No bits back: the code costs more than -log p(x) (by what the quantization costs), but it codes.
    assert result["net_bits_per_dim"] > 0 and "importance sampling" in result["bound"]["meaning"]
    with pytest.raises(errors.NoPriorError, match="nothing to code z with"):
        compression.compress(run, x)


@pytest.mark.slow
def test_made_codes_at_its_exact_log_likelihood(trained):
    """MADE's file (without the header) is its exact -log2 p(x) summed over the images, within the
    coder's state (at most 64 bits) and its 24-bit probabilities."""
    run = vaegen.load(trained / "made")
    x = run.split("test", max_examples=101)
    data, stats = compression.compress_with_stats(run, x)
    np.testing.assert_array_equal(compression.decompress(run, data), x)
    exact_bits = float(-np.sum(np.asarray(run.model.apply(run.variables, x, method="log_prob"), np.float64))
                       / math.log(2))
    coded_bits = stats["bits_after"][-1]
    assert abs(coded_bits - exact_bits) < 64 + 1e-4 * exact_bits, (coded_bits, exact_bits)


# --- files: another model, damage ----------------------------------------------------------------------

def test_a_file_is_refused_by_another_model_and_when_damaged():
    run, other = _random_run("tiny", seed=0), _random_run("tiny", seed=1)
    x = _binary(5)
    data = compression.compress(run, x)
    with pytest.raises(errors.CompressedFileError, match="written by another model"):
        compression.decompress(other, data)
    ae_normal, ae_gmm = KINDS["ae+standard-normal"][1](), KINDS["ae+gmm"][1]()
    with pytest.raises(errors.CompressedFileError, match="written by another model"):
        compression.decompress(ae_gmm, compression.compress(ae_normal, x))   # the same AE, another p(z)
    for at in (0, 3, 12, 40, len(data) // 2, len(data) - 40, len(data) - 1):  # magic, header, words, checksum
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        with pytest.raises(errors.CompressedFileError) as info:
            compression.decompress(run, bytes(damaged))
        assert "\n" not in str(info.value)
    with pytest.raises(errors.CompressedFileError, match="truncated"):
        compression.decompress(run, data[:-5])
    with pytest.raises(errors.CompressedFileError, match="longer than it says"):
        compression.decompress(run, data + b"\0")
    with pytest.raises(errors.CompressedFileError, match="not a vaegen compressed file"):
        compression.decompress(run, b"P5\n8 8\n255\n" + bytes(64))
    with pytest.raises(errors.CompressedFileError, match="damaged"):
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 1
        compression.decompress(run, bytes(damaged))


@pytest.mark.slow
def test_what_cannot_code_is_refused_with_one_line():
    x = _binary(3)
    cases = [
        (_random_run("tiny:ae"), errors.NoPriorError, "so there is nothing to code z with"),
        (_random_run("tiny:vq"), errors.NoPriorError, "no prior over its codes"),
        (_random_run("tiny", ["model.likelihood=gaussian", "data.binarization=none"]), errors.CodingError,
         "p(x|z) is a Gaussian density over real-valued x"),
        (dataclasses.replace(_ae_with("diffusion", _density("diffusion", 4, hidden=(8,))), recipe=None), errors.CodingError,
         "p(z) is a variational diffusion model"),
    ]
    for run, error, message in cases:
        with pytest.raises(error) as info:
            compression.compress(run, x)
        assert message in str(info.value) and "\n" not in str(info.value)
    vae = _random_run("tiny")
    with pytest.raises(errors.SupportError, match=r"outside \{0, 1\}.*binarize them first"):
        compression.compress(vae, np.full((2,) + EVENT, 0.5, np.float32))
    with pytest.raises(errors.ImagesError, match="this run's model takes"):
        compression.compress(vae, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(errors.CodingError, match="q\\(z\\|x\\) is a normalizing flow"):
        compression.compress(_random_run("tiny", ["inference.posterior=flow"]), x, coder="bits_back")
    with pytest.raises(errors.CodingError, match="this model is no MADE"):
        compression.compress(vae, x, coder="autoregressive")
    with pytest.raises(errors.ConfigError, match=r"coder bits_back setting precision=30 must be in \[2, 20\]"):
        compression.compress(vae, x, settings={"precision": 30})
    with pytest.raises(errors.ConfigError, match="coder bits_back has no setting 'precison'"):
        compression.compress(vae, x, settings={"precison": 12})


def test_which_coders_a_model_supports_and_why_not():
    ae = coders.supported(_random_run("tiny:ae").model, _random_run("tiny:ae").variables, EVENT)
    assert "nothing to code z with" in ae["quantized_latent"] and "point mass" in ae["bits_back"]
    vae = _random_run("tiny")
    verdict = coders.supported(vae.model, vae.variables, EVENT)
    assert verdict["bits_back"] is None and verdict["quantized_latent"] is None
    assert "no MADE" in verdict["autoregressive"] and "no VQ-VAE" in verdict["discrete_codes"]
    assert coders.default_coder(vae.model, vae.variables, EVENT) == "bits_back"
    assert set(coders.CODERS.names()) == {"autoregressive", "bits_back", "discrete_bits_back", "discrete_codes",
                                          "quantized_latent"}
    assert "continuous" in verdict["discrete_bits_back"]      # a discrete z: tests/test_coding_discrete.py
    # The same images, coded by the quantized code instead: lossless too, and dearer (no bits back).
    x = _binary(9)
    back, quantized = compression.compress(vae, x), compression.compress(vae, x, coder="quantized_latent")
    np.testing.assert_array_equal(compression.decompress(vae, quantized), x)
    assert compression.read_header(quantized)["coder"] == {"name": "quantized_latent",
                                                           "settings": {"max_block": 1024, "precision": 8}}
    assert len(back) > 0


# --- the grid and the conditionals, against exact answers ------------------------------------------------

def test_two_tables_give_exactly_the_mass_of_each_bin():
    g = grid_lib.Grid(6)
    mu, sigma = jnp.asarray([0.3, -2.0]), jnp.asarray([0.2, 1.5])
    coarse = np.asarray(grid_lib.gaussian_masses(g, mu, sigma), np.float64)              # [2, H]
    from scipy import stats
    for i in range(2):
        direct = np.diff(stats.norm.cdf(g.edges.astype(np.float64), float(mu[i]), float(sigma[i])))   # [2^P]
        for h in range(g.coarse):
            fine = np.asarray(grid_lib.gaussian_masses(g, mu[i:i + 1], sigma[i:i + 1], jnp.asarray([h])), np.float64)[0]
            np.testing.assert_allclose(fine, direct[h * g.fine:(h + 1) * g.fine], rtol=2e-4, atol=1e-9)
        np.testing.assert_allclose(coarse[i], direct.reshape(g.coarse, g.fine).sum(1), rtol=2e-4, atol=1e-9)
    # Equal mass under the reference: every bin of N(0, 1) has 2^-P; the representatives are in their bins.
    np.testing.assert_allclose(np.diff(stats.norm.cdf(g.edges.astype(np.float64))), 2.0**-6, rtol=1e-5)
    j = np.arange(2**6)
    np.testing.assert_array_equal(np.asarray(g.quantize(jnp.asarray(g.centres))), j)
    h, l = g.split(j)
    np.testing.assert_array_equal(g.join(h, l), j)


def test_the_mixtures_conditionals_are_its_density_dimension_by_dimension():
    """prod_t p(z_t | z_<t), the conditionals the mixture's dimensions are coded with, is the mixture's
    density: exact for full-covariance and diagonal components."""
    from scipy import stats
    rng = np.random.default_rng(0)
    k, d = 3, 4
    for diagonal in (False, True):
        loc = rng.normal(size=(1, k, d)).astype(np.float32)
        if diagonal:
            scale = rng.uniform(0.5, 1.5, size=(1, k, d)).astype(np.float32)
        else:
            a = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
            scale = np.linalg.cholesky(a @ a.transpose(0, 2, 1))[None].astype(np.float32)
        log_w = np.log(np.asarray([[0.2, 0.5, 0.3]], np.float32))
        node = latents.Mixture(grid_lib.Grid(8), np.arange(d), np.zeros((0,), np.int64),
                               lambda v, c, p: None, diagonal=diagonal, num_components=k, is_prior=True)
        z = rng.normal(size=(1, d)).astype(np.float32)
        total = 0.0
        for t in range(d):
            prefix = np.where(np.arange(d) < t, z, 0.0).astype(np.float32)
            w, mu, sigma, _ = node._step((jnp.asarray(log_w), jnp.asarray(loc), jnp.asarray(scale)),
                                         jnp.asarray(prefix), jnp.int32(t), jnp.zeros(d), jnp.ones(d))
            total += math.log(float(np.sum(np.asarray(w)[0] * stats.norm.pdf(z[0, t], np.asarray(mu)[0],
                                                                             np.asarray(sigma)[0]))))
        cov = [np.diag(s**2) for s in scale[0]] if diagonal else [s @ s.T for s in scale[0]]
        exact = math.log(sum(float(np.exp(log_w[0, i])) * stats.multivariate_normal.pdf(z[0], loc[0, i], cov[i])
                             for i in range(k)))
        assert abs(total - exact) < 1e-4, (diagonal, total, exact)


def test_the_stack_pops_what_it_pushed_and_returns_to_its_initial_words():
    seed = ans.seed_words(4)
    stack = ans.Stack(seed)
    p = np.random.default_rng(0).uniform(0.05, 0.95, 50).astype(np.float32)
    popped = stack.pop_bernoulli(p)                 # bits back: a draw from the stack's bits
    bits = np.asarray(np.random.default_rng(1).uniform(size=50) < p, np.int32)
    stack.push_bernoulli(bits, p)
    assert np.array_equal(stack.pop_bernoulli(p), bits)
    stack.push_bernoulli(popped, p)
    np.testing.assert_array_equal(stack.words(), seed)


# --- the command line ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compress_and_decompress_on_the_command_line(trained, tmp_path, capsys):
    workdir = trained / "vae"
    out = tmp_path / "digits.vgz"
    assert cli.main(["compress", "--workdir", str(workdir), "--split", "test", "--max-examples", "9",
                     "--out", str(out), "--samples", "4"]) == 0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "binarization" in printed
    result = json.loads((tmp_path / "digits.vgz.json").read_text())
    assert result["num_images"] == 9 and result["coder"]["name"] == "bits_back"
    for key in ("file_bits_per_dim", "net_bits_per_dim", "gap_bits_per_dim", "initial_bits", "first_image"):
        assert key in result
    assert result["bound"]["bits_per_dim"] > 0 and "ELBO" in result["bound"]["meaning"]
    npy = tmp_path / "back.npy"
    assert cli.main(["decompress", "--workdir", str(workdir), str(out), "--out", str(npy)]) == 0
    assert "binarization" in capsys.readouterr().out
    x = np.load(npy)
    np.testing.assert_array_equal(x, vaegen.load(workdir).split("test", max_examples=9))
    assert json.loads((tmp_path / "back.npy.json").read_text())["num_images"] == 9
    # The decoded images are images `vaegen compress --images` takes, and code to the same words.
    again = tmp_path / "again.vgz"
    assert cli.main(["compress", "--workdir", str(workdir), "--images", str(npy), "--binarize", "none",
                     "--out", str(again)]) == 0
    first, second = compression.read(out.read_bytes()), compression.read(again.read_bytes())
    np.testing.assert_array_equal(first[1], second[1])
    assert second[0]["images"]["binarization"] == "none"
    # An autoencoder without p(z): one line, exit 2, nothing written.
    capsys.readouterr()
    ae_out = tmp_path / "ae.vgz"
    assert cli.main(["compress", "--workdir", str(trained / "ae"), "--split", "test", "--out", str(ae_out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaegen: error: ") and "nothing to code z with" in err and err.count("\n") == 1
    assert not ae_out.exists()
    # A file decoded with another run: refused, the .npy not written.
    assert cli.main(["decompress", "--workdir", str(trained / "made"), str(out), "--out",
                     str(tmp_path / "no.npy")]) == 2
    assert "written by another model" in capsys.readouterr().err and not (tmp_path / "no.npy").exists()
