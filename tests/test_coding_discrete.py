"""Lossless coding with a discrete latent z (the ``discrete_bits_back`` coder): bits back with a
categorical or Bernoulli q(z|x) and p(z), no grid.  Round trips bit for bit (random parameters, 1 and
odd numbers of images), the file against what was coded (the information content of the popped z's, to
the coder's 24-bit precision) and against the exact -ELBO summed over every z (within the chain's own
Monte Carlo error, computed exactly), another run's file refused, what it cannot code refused with one
line."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen import cli, errors
from vaegen.blocks import discrete as discrete_lib
from vaegen.blocks import priors as priors_lib
from vaegen.coding import ans, coders
from vaegen.config import loading, schema
from vaegen.model import latent as latent_lib
from vaegen.runs import compression
from vaegen.runs import run as run_lib
from vaegen.runs.recipes import Fit, recipe

EVENT = (8, 8, 1)
BERNOULLI = ["inference.posterior=bernoulli", "model.prior=bernoulli"]
LATENTS = {    # tiny:dvae with a learned p(z): 2 categorical variables of 3 (9 configurations), 6 bits (64), 4 of 4
    "categorical": ["model.prior.learned=True"],
    "bernoulli": BERNOULLI + ["model.prior.learned=True"],
    "categorical-4x4": ["model.latent_dim=16", "inference.posterior.categories=4", "model.prior.categories=4",
                        "model.prior.learned=True"],
}


def _random_run(overrides=(), seed=0, preset="tiny:dvae"):
    """A run with random parameters; a learned p(z) gets random logits too (not the uniform start)."""
    spec = schema.to_spec(loading.load_config(preset, list(overrides)))
    model = latent_lib.build_model(spec.model, spec.inference, EVENT)
    variables = jax.jit(lambda key: latent_lib.init_params(model, key, EVENT))(jax.random.key(seed))
    if "prior" in variables["params"]:
        logits = variables["params"]["prior"]["logits"]
        noise = jax.random.normal(jax.random.key(seed + 100), logits.shape)
        variables = {**variables, "params": {**variables["params"], "prior": {"logits": 1.5 * noise}}}
    return run_lib.Run(workdir=pathlib.Path(f"random-dvae-{seed}"), spec=spec, model=model, variables=variables,
                       event_shape=EVENT, epoch=0, info={})


def _binary(n, seed=0):
    return (np.random.default_rng(seed).uniform(size=(n,) + EVENT) < 0.35).astype(np.float32)


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_a_discrete_z_decodes_its_file_bit_for_bit(latent):
    """Random parameters; 1 image, and odd numbers (several blocks); the files are deterministic and the
    chain starts with one image on the initial bits."""
    run = _random_run(LATENTS[latent])
    assert coders.default_coder(run.model, run.variables, EVENT) == "discrete_bits_back"
    x = _binary(37)
    for n in (1, 5, 37):
        data = compression.compress(run, x[:n])
        header = compression.read_header(data)
        assert header["coder"] == {"name": "discrete_bits_back", "settings": {"max_block": 1024}}
        assert header["images"]["num"] == n and header["chain"]["blocks"][0] == 1 and sum(header["chain"]["blocks"]) == n
        y = compression.decompress(run, data)
        assert y.dtype == np.float32 and y.shape == (n,) + EVENT
        np.testing.assert_array_equal(y, x[:n])
        assert compression.compress(run, x[:n]) == data
    # The initial bits: the most one image can pop (24 bits per variable), and the coder's 64-bit state.
    q = run.model.apply(run.variables, jnp.zeros(EVENT), method="q_z_given_x")
    variables = q.num_variables
    assert header["chain"]["seed_words"] == math.ceil((24 * variables + 64) / 32)
    # Small blocks: the same images, at most 4 a block, decode too.
    data = compression.compress(run, x, settings={"max_block": 4})
    assert max(compression.read_header(data)["chain"]["blocks"]) <= 4
    np.testing.assert_array_equal(compression.decompress(run, data), x)


# --- trained: the file against what was coded, and against the exact -ELBO ------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny discrete VAEs trained a few epochs on the 8x8 digits: 2 categorical variables of 3, and 6 bits
    (each with a learned p(z))."""
    root = tmp_path_factory.mktemp("coding-discrete")
    for name in ("categorical", "bernoulli"):
        overrides = LATENTS[name] + ["train.num_epochs=4", "optim.learning_rate=3e-3"]
        vaegen.train_and_evaluate(loading.load_config("tiny:dvae", overrides), root / name)
    return root


def _coded_latents(monkeypatch, run, x):
    """Codes ``x`` and returns ``(data, stats, z [N, V])``: the symbols popped off the stack as each image's
    z (encoding pops nothing else), in coding order."""
    popped = []
    for method in ("pop_categorical", "pop_bernoulli"):
        original = getattr(ans.Stack, method)

        def record(self, probs, original=original):
            out = original(self, probs)
            popped.append(out)
            return out

        monkeypatch.setattr(ans.Stack, method, record)
    data, stats = compression.compress_with_stats(run, x)
    monkeypatch.undo()
    return data, stats, np.concatenate(popped).reshape(x.shape[0], -1)


def _enumerated(run, x):
    """For every image and every configuration c of z: log p(x, z_c) - log q(z_c | x) and q(z_c | x),
    ``[C, N]`` float64 (exact: all K^M configurations)."""
    q = run.model.apply(run.variables, jnp.asarray(x), method="q_z_given_x")
    z = q.configurations(jnp.arange(q.support_size))[:, None, :]                     # [C, 1, D]
    log_q = np.asarray(q.log_prob(z), np.float64)                                    # [C, N]
    log_joint = np.asarray(run.model.apply(run.variables, jnp.asarray(x), z, method="log_joint"), np.float64)
    return log_joint - log_q, np.exp(log_q), q


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
@pytest.mark.slow
def test_the_chain_costs_the_exact_negative_elbo_of_a_trained_discrete_vae(trained, monkeypatch, latent):
    """The 297 test digits in one chain.  (1) The coded bits are the information content of what was coded,
    -log2 p(x|z) - log2 p(z) + log2 q(z|x) at the popped z's, within 0.1% (the probabilities' quantization to
    24 bits; a block that popped more than the stack held would get fewer bits back and fail this).  (2) That
    is a draw of the chain's cost, whose mean is the exact -ELBO (summed over every z) and whose variance
    sum_i Var_q[log w] is computed exactly too: within 4 of its standard deviations.  So the net bits/dim are
    the exact -ELBO within 4 sigma (about 0.8% here) + 0.1%."""
    run = vaegen.load(trained / latent)
    x = run.split("test")
    assert x.shape[0] == 297
    data, stats, z = _coded_latents(monkeypatch, run, x)
    np.testing.assert_array_equal(compression.decompress(run, data), x)
    log_w, q_probs, q = _enumerated(run, x)
    n, dims = x.shape[0], math.prod(EVENT)
    k = q.num_categories
    index = (z * k ** np.arange(z.shape[1] - 1, -1, -1)).sum(1)                    # the first variable most significant
    realised = -log_w[index, np.arange(n)] / math.log(2)                              # bits per image
    initial = ans.Stack(ans.seed_words(stats["layout"].seed_words)).bits()
    coded = stats["bits_after"][-1] - initial
    assert abs(coded - realised.sum()) <= 1e-3 * realised.sum(), (coded, realised.sum())
    neg_elbo = -np.sum(q_probs * log_w, 0) / math.log(2)                              # [N] bits, exact
    variance = np.sum(q_probs * (log_w / math.log(2) + neg_elbo) ** 2, 0)             # Var_q of the cost, bits^2
    sigma = math.sqrt(variance.sum())
    assert abs(realised.sum() - neg_elbo.sum()) <= 4 * sigma, (realised.sum(), neg_elbo.sum(), sigma)
    # The report: the coder's reference is that exact -ELBO, and the net bits/dim are within the tolerance.
    result = compression.report(run, x, data, stats=stats)
    assert "exact" in result["bound"]["meaning"]
    np.testing.assert_allclose(result["bound"]["bits_per_dim"], neg_elbo.mean() / dims, rtol=1e-5)
    tolerance = (4 * sigma + 1e-3 * realised.sum() + 32) / (n * dims)                 # 32: the last word's rounding
    assert abs(result["net_bits_per_dim"] - result["bound"]["bits_per_dim"]) <= tolerance, (result, tolerance)
    assert result["first_image"]["popped_bits"] is not None and result["file_bits_per_dim"] < 1.0
    # What the comparison study measures of its discrete VAE (the run with its own p(z) attached): a coded size.
    gen = recipe("own").attach(run, Fit("own"))
    sizes = compression.sizes(compression.compress(gen, x[:20]))
    assert sizes["coder"] == "discrete_bits_back" and 0 < sizes["net_bits_per_dim"] < 1


@pytest.mark.slow
def test_a_file_of_another_run_is_refused(trained):
    categorical, bernoulli = vaegen.load(trained / "categorical"), vaegen.load(trained / "bernoulli")
    x = categorical.split("test", max_examples=5)
    data = compression.compress(categorical, x)
    for other in (bernoulli, _random_run(LATENTS["categorical"])):       # another model; the same one, untrained
        with pytest.raises(errors.CompressedFileError, match="written by another model") as info:
            compression.decompress(other, data)
        assert "\n" not in str(info.value)


# --- what it cannot code --------------------------------------------------------------------------------

def test_what_discrete_bits_back_cannot_code_is_refused_with_one_line():
    dvae, vae = _random_run(LATENTS["categorical"]), _random_run(preset="tiny")
    x = _binary(3)
    # Each coder says why the other kind of z is not its own.
    for run, coder, error, message in (
            (dvae, "bits_back", errors.CodingError, "coder bits_back: q(z|x) is over a discrete z (categorical or "
                                                    "Bernoulli variables), which bits_back does not code"),
            (dvae, "quantized_latent", errors.CodingError, "with the discrete_bits_back coder"),
            (vae, "discrete_bits_back", errors.CodingError, "and this model's z is continuous: code it with the "
                                                            "bits_back coder"),
            (_random_run(preset="tiny:ae"), "discrete_bits_back", errors.CodingError, "q(z|x) is a point mass")):
        with pytest.raises(error) as info:
            compression.compress(run, x, coder=coder)
        assert message in str(info.value) and "\n" not in str(info.value)
    # A likelihood with no mass on images; a p(z) over another z (a model built by hand: the config refuses it).
    gaussian = _random_run(["model.likelihood=gaussian", "data.binarization=none"])
    with pytest.raises(errors.CodingError, match=r"coder discrete_bits_back: p\(x\|z\) is a Gaussian density") as info:
        compression.compress(gaussian, x)
    for prior, what in ((discrete_lib.BernoulliPrior(latent_dim=6, settings=discrete_lib.BernoulliPriorSettings()),
                         "p(z) is over 6 Bernoulli bits"),
                        (priors_lib.StandardNormal(latent_dim=6), "p(z) is a MultivariateNormalDiag, over a continuous z")):
        model = dvae.model.clone(prior=prior)
        params = {k: v for k, v in dvae.variables["params"].items() if k != "prior"}
        run = run_lib.Run(workdir=dvae.workdir, spec=dvae.spec, model=model, variables={"params": params},
                          event_shape=EVENT, epoch=0, info={})
        verdict = coders.supported(run.model, run.variables, EVENT)["discrete_bits_back"]
        assert verdict.startswith("q(z|x) is over 2 categorical variables of 3 categories and " + what), verdict
        with pytest.raises(errors.CodingError) as info:
            compression.compress(run, x)
        assert str(info.value).startswith("coder discrete_bits_back: q(z|x) is over") and "\n" not in str(info.value)


def test_each_model_gets_its_own_coder():
    """A discrete z codes with discrete_bits_back, a continuous one with bits_back as before."""
    dvae, vae = _random_run(LATENTS["bernoulli"]), _random_run(preset="tiny")
    verdict = coders.supported(dvae.model, dvae.variables, EVENT)
    assert verdict["discrete_bits_back"] is None and "discrete_bits_back" in verdict["bits_back"]
    assert [name for name, why in verdict.items() if why is None] == ["discrete_bits_back"]
    assert coders.default_coder(vae.model, vae.variables, EVENT) == "bits_back"
    assert coders.supported(vae.model, vae.variables, EVENT)["discrete_bits_back"].endswith("code it with the "
                                                                                             "bits_back coder")


@pytest.mark.slow
def test_compress_and_decompress_a_discrete_vae_on_the_command_line(trained, tmp_path, capsys):
    workdir = trained / "categorical"
    out = tmp_path / "digits.vgz"
    assert cli.main(["compress", "--workdir", str(workdir), "--split", "test", "--max-examples", "9",
                     "--out", str(out)]) == 0
    assert "discrete_bits_back" in capsys.readouterr().out
    result = json.loads((tmp_path / "digits.vgz.json").read_text())
    assert result["coder"]["name"] == "discrete_bits_back" and "exact" in result["bound"]["meaning"]
    npy = tmp_path / "back.npy"
    assert cli.main(["decompress", "--workdir", str(workdir), str(out), "--out", str(npy)]) == 0
    np.testing.assert_array_equal(np.load(npy), vaegen.load(workdir).split("test", max_examples=9))
