"""Bad input: each row of the table in docs/errors.md gets its one-line message and exit code,
and the workdir it was pointed at is left exactly as it was."""

import dataclasses
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image

import vaegen
from vaegen import cli, errors, registry
from vaegen import files as files_lib
from vaegen.blocks import likelihoods as likelihoods_lib
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.data import datasets as data_lib
from vaegen.data import images as images_lib
from vaegen.estimators import importance as estimators_lib
from vaegen.spec import eval as estimator_settings
from vaegen.model import latent as model_lib
from vaegen.runs import compression as compression_lib
from vaegen.runs import run as run_lib
from vaegen.runs.recipes import Fit, recipe
from vaegen.runs.recipes import learned as learned_lib
from vaegen.train import workdir as workdir_lib
from conftest import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"

# (id, vaegen arguments, message fragment). Every one exits with status 2.
CLI_CASES = [
    ("free-bits-prior", ["train", "--config", "tiny", "--config.objective.free_bits=0.5", "--config.model.prior=mixture"],
     "config.objective.free_bits needs a KL that splits over latent dimensions"),
    ("kl-schedules", ["train", "--config", "tiny", "--config.objective.kl_cycle_epochs=2",
                      "--config.objective.kl_warmup_epochs=1"],
     "config.objective.kl_cycle_epochs and kl_warmup_epochs are two schedules of the KL weight"),
    ("unknown-key", ["train", "--config", "tiny", "--config.model.latent_dimm=3"],
     "unknown config key 'model.latent_dimm'; did you mean model.latent_dim"),
    ("unknown-preset", ["train", "--config", "nope"], "unknown config preset 'nope'"),
    ("missing-config-file", ["train", "--config", "no/such.py"], "config file 'no/such.py' does not exist"),
    ("wrong-type", ["train", "--config", "tiny", "--config.model.latent_dim=2.5"],
     "config.model.latent_dim expects an integer (currently 4), got '2.5'"),
    ("not-a-literal", ["train", "--config", "tiny", "--config.model.latent_dim=__import__('os').getpid()"],
     "cannot parse \"__import__('os').getpid()\" as an integer literal"),
    ("latent-dim", ["train", "--config", "tiny", "--config.model.latent_dim=0"], "config.model.latent_dim=0 must be > 0"),
    ("k", ["train", "--config", "tiny", "--config.objective.name=iwae", "--config.objective.num_samples=0"],
     "config.objective.num_samples=0 must be > 0"),
    ("learning-rate", ["train", "--config", "tiny", "--config.optim.learning_rate=-0.001"],
     "config.optim.learning_rate=-0.001 must be > 0"),
    ("adam-eps", ["train", "--config", "tiny", "--config.optim.eps=0.0"], "config.optim.eps=0.0 must be > 0"),
    ("adam-beta", ["train", "--config", "tiny", "--config.optim.b2=1.0"], "optim.b2=1.0 must be in [0, 1)"),
    ("batch-size", ["train", "--config", "tiny", "--config.train.batch_size=5000"],
     "config.train.batch_size=5000 is larger than the training set (1300 examples)"),
    ("max-skips", ["train", "--config", "tiny", "--config.train.max_consecutive_skips=0"],
     "config.train.max_consecutive_skips=0 must be > 0"),
    ("point-mass-elbo", ["train", "--config", "tiny", "--config.inference.posterior=point_mass"],
     "objective 'elbo' is undefined for a point-mass posterior"),
    ("elbo-dreg", ["train", "--config", "tiny", "--config.objective.estimator=dreg"],
     "for the ELBO (one importance sample per term), DReG is STL"),
    ("stl-analytic-kl", ["train", "--config", "tiny", "--config.objective.estimator=stl"],
     "STL differentiates the Monte Carlo KL log q(z|x) - log p(z) along z's path; set config.objective.analytic_kl=false"),
    ("refined-bound", ["train", "--config", "tiny", "--config.objective=semi_amortized", "--config.objective.bound=ae"],
     "config.objective.bound.name='ae' cannot serve the refined q's bound"),
    ("matching-no-prior", ["train", "--config", "tiny:wae", "--config.model.prior=none"],
     "objective 'wae' matches the codes to a prior p(z), and config.model.prior is none"),
    ("discriminator-without-one", ["train", "--config", "tiny:ae", "--config.objective.discriminator_hidden=(8,)"],
     "config.objective.discriminator_hidden: the objective 'ae' has no setting 'discriminator_hidden'"),
    ("mmd-kernel-scales", ["train", "--config", "tiny:wae", "--config.objective.kernel_scales=()"],
     "config.objective.kernel_scales needs at least one entry, got ()"),
    ("vq-codebook-size", ["train", "--config", "tiny:vq", "--config.model.kind.codebook_size=1"],
     "config.model.kind.codebook_size=1 must be >= 2"),
    ("vq-commitment", ["train", "--config", "tiny:vq", "--config.objective.commitment=-0.1"],
     "config.objective.commitment=-0.1 must be >= 0"),
    ("vq-code-dim", ["train", "--config", "tiny:vq", "--config.model.kind.code_dim=3"],
     "config.model.kind.code_dim=3 must divide config.model.latent_dim=4"),
    ("vq-objective", ["train", "--config", "tiny:ae", "--config.objective.name=vq"],
     "objective 'vq' trains config.model.kind=vq_vae, not 'latent_variable'"),
    ("unknown-dataset", ["train", "--config", "tiny", "--config.data.name=cifar"],
     "config.data.name='cifar' is not one of fashion_mnist, mnist, binarized_mnist, cifar10, digits"),
    ("missing-dataset", ["train", "--config", "tiny", "--config.data.name=mnist", "--config.data.data_dir={tmp}/empty",
                         "--config.data.auto_prepare=False"],
     "dataset 'mnist' is not prepared in the TFDS data_dir"),
    ("validation-size", ["train", "--config", "tiny", "--config.data.validation_size=1500"],
     "data.validation_size=1500 must be smaller than the 1500 examples"),
    ("support", ["train", "--config", "tiny", "--config.data.binarization=none"],
     "has values outside {0, 1}"),
    ("other-run", ["train", "--config", "tiny", "--config.model.latent_dim=3"],
     "belongs to a run with a different config (model.latent_dim: 4 -> 3)"),
    ("eval-k", ["evaluate", "--workdir", "{workdir}", "--k", "0"], "evaluate: argument --num-samples/--k: must be > 0, got 0"),
    ("sample-n", ["sample", "--workdir", "{workdir}", "--n", "-3"], "sample: argument --n: must be >= 1, got -3"),
    ("no-run", ["evaluate", "--workdir", "{tmp}/nothing"], "holds no vaegen run"),
    ("no-checkpoint", ["evaluate", "--workdir", "{workdir}"], "has no checkpoint yet"),
    ("dae-encoder", ["train", "--config", "tiny", "--config.objective.name=dae"],
     "objective 'dae' trains an autoencoder and needs a deterministic encoder"),
    ("made-objective", ["train", "--config", "tiny", "--config.model.kind=autoregressive"],
     "objective 'elbo' trains config.model.kind=latent_variable or two_layer, not 'autoregressive' (which is trained "
     "by objective exact): set the two together"),
    ("prior-components", ["train", "--config", "tiny", "--config.model.prior=mixture",
                          "--config.model.prior.components=0"],
     "config.model.prior.components=0 must be > 0"),
    ("vampprior-posterior", ["train", "--config", "tiny", "--config.model.prior=vampprior",
                             "--config.inference.posterior=flow"],
     "config.model.prior=vampprior (p(z) = 1/K sum_k q(z | u_k)) needs a posterior with a density on a batch of "
     "pseudo-inputs"),
    ("vampprior-init-std", ["train", "--config", "tiny", "--config.model.prior=vampprior",
                            "--config.model.prior.init_std=0.0"],
     "config.model.prior.init_std=0.0 must be > 0"),
    ("trunk-network", ["train", "--config", "tiny", "--config.model.decoder=conv_encoder"],
     "config.model.decoder.name='conv_encoder' cannot serve p(x | z)'s trunk; choose one of conv_decoder, mlp"),
    ("conv-lengths", ["train", "--config", "tiny", "--config.inference.encoder=conv_encoder",
                      "--config.inference.encoder.conv_kernels=(3,3)"],
     "config.inference.encoder: conv_channels, conv_kernels and conv_strides need one entry per convolution, "
     "got lengths 4, 2 and 4"),
    ("conv-decoder-shape", ["train", "--config", "tiny", "--config.model.decoder=conv_decoder",
                            "--config.model.decoder.conv_strides=(1,3,1,1)"],
     "conv_decoder: conv_strides (1, 3, 1, 1) upsample by 3 in all, which must divide the observation's height "
     "and width (8, 8)"),
    ("logistic-binarization", ["train", "--config", "tiny", "--config.model.likelihood=discretized_logistic"],
     "config.model.likelihood=discretized_logistic models the 256 grey levels of 8-bit data, but "
     "config.data.binarization='dynamic' makes the data binary"),
    ("logistic-mixtures", ["train", "--config", "tiny", "--config.model.likelihood=discretized_logistic",
                           "--config.data.binarization=none", "--config.model.likelihood.mixtures=0"],
     "config.model.likelihood.mixtures=0 must be > 0"),
    ("cifar-source", ["data", "prepare", "cifar10", "--from-dir", "{tmp}", "--data-dir", "{tmp}/tfds"],
     "holds neither cifar-10-binary.tar.gz nor its extracted cifar-10-batches-bin/ folder"),
    ("study-setting", ["compare", "--preset", "tiny", "--workdir", "{workdir}", "--set", "eval.kk=5"],
     "unknown config key 'eval.kk'; did you mean eval.k"),
    ("expost-no-run", ["expost", "--workdir", "{tmp}/nothing"], "holds no vaegen run"),
    ("expost-not-trained", ["expost", "--workdir", "{workdir}", "--density", "flow"], "has no checkpoint yet"),
    ("expost-density-setting", ["expost", "--workdir", "{workdir}", "--density", "flow", "--set", "layerz=3"],
     "--set layerz: the recipe 'flow' has no setting 'layerz'"),
    ("expost-unknown-density", ["expost", "--workdir", "{workdir}", "--density", "glow"],
     "argument --density: invalid choice: 'glow'"),
    ("unknown-protocol", ["train", "--config", "tiny", "--config.data.protocol=vampprior"],
     "unknown data protocol 'vampprior'"),
    ("protocol-keys", ["train", "--config", "vae_mlp_fmnist", "--config.data.protocol=vampprior_fmnist",
                       "--config.data.validation_size=500"],
     "config.data.protocol='vampprior_fmnist' fixes the data keys, but data.validation_size=500"),
    ("validation-mode", ["train", "--config", "tiny", "--config.data.validation_mode=split"],
     "uses the dataset's own validation split, which only binarized_mnist has"),
    ("early-stopping-validation", ["train", "--config", "tiny", "--config.train.early_stopping_patience=5",
                                   "--config.data.validation_size=0"],
     "config.train.early_stopping_patience needs a validation split"),
    ("stages", ["train", "--config", "tiny", "--config.optim.schedule=stages", "--config.optim.stage_factors=(1.0,)"],
     "config.optim.stage_epochs and stage_factors must be non-empty and of equal length"),
    ("two-layer-posterior", ["train", "--config", "tiny", "--config.model.kind=two_layer",
                             "--config.model.kind.top_latent_dim=2", "--config.inference.posterior=full_covariance_gaussian"],
     "with two stochastic layers (config.model.kind=two_layer) each factor of q is a diagonal Gaussian"),
    ("two-layer-vampprior", ["train", "--config", "tiny", "--config.model.kind=two_layer",
                             "--config.model.kind.top_latent_dim=2", "--config.model.prior=vampprior"],
     "a VampPrior on z2 is 1/K sum_k q(z2 | u_k) and needs q(z2 | x): set config.model.kind.hierarchy=top_down"),
    # Discrete latents (vaegen.blocks.discrete, vaegen.objectives.discrete).
    ("discrete-objective", ["train", "--config", "tiny:dvae", "--config.objective.name=elbo"],
     "config.inference.posterior=categorical has a discrete z, so objective 'elbo' has no gradient for q(z|x)"),
    ("discrete-prior", ["train", "--config", "tiny", "--config.model.prior=categorical"],
     "config.model.prior=categorical is a distribution over discrete z; config.inference.posterior=diagonal_gaussian "
     "is not"),
    ("discrete-categories", ["train", "--config", "tiny:dvae", "--config.model.prior.categories=2"],
     "config.model.prior.categories=2 and config.inference.posterior.categories=3 must be equal"),
    ("discrete-latent-dim", ["train", "--config", "tiny:dvae", "--config.model.latent_dim=5"],
     "config.inference.posterior.categories=3 must divide config.model.latent_dim=5"),
    ("enumerate-too-large", ["train", "--config", "tiny:dvae", "--config.objective.estimator=enumerate",
                             "--config.objective.max_configurations=8"],
     "config.objective.estimator=enumerate sums over all 9 configurations of z, more than "
     "config.objective.max_configurations=8"),
    ("reinforce-loo-samples", ["train", "--config", "tiny:dvae", "--config.objective.estimator=reinforce"],
     "config.objective.baseline=loo takes each sample's baseline from the others"),
    ("vimco-continuous", ["train", "--config", "tiny", "--config.objective.name=vimco"],
     "objective 'vimco' trains a discrete q(z|x)"),
    ("workdir-not-empty", ["train", "--config", "tiny", "--workdir", "{tmp}"],
     "is not empty and holds no vaegen run (no config.json)"),
    ("workdir-file", ["train", "--config", "tiny", "--workdir", "{workdir}/notes.txt"],
     "notes.txt is a file, not a directory; choose another --workdir"),
    ("workdir-under-file", ["train", "--config", "tiny", "--workdir", "{workdir}/notes.txt/run"],
     "cannot create workdir"),
    ("workdir-not-writable", ["train", "--config", "tiny", "--workdir", "{locked}"],
     "is not writable; choose another --workdir"),
    ("ais-steps", ["evaluate", "--workdir", "{workdir}", "--ais-steps", "0"],
     "evaluate: argument --ais-num-steps/--ais-steps: must be > 0, got 0"),
    ("per-example-path", ["evaluate", "--workdir", "{workdir}", "--per-example", "{tmp}/values.csv"],
     "--per-example writes an .npz file"),
    # The registry of components: names, the settings each component has, and their values.
    ("unknown-component", ["train", "--config", "tiny", "--config.model.prior=vamprior"],
     "config.model.prior.name='vamprior' is not a registered prior (registered: bernoulli, categorical, diffusion, flow, "
     "mixture, none, standard_normal, two_stage, vampprior); did you mean vampprior?"),
    ("component-setting", ["train", "--config", "tiny", "--config.model.prior.components=5"],
     "config.model.prior.components: the prior 'standard_normal' has no setting 'components' (its settings: none); "
     "the priors with that setting: mixture, vampprior (choose one first: --config.model.prior=NAME)"),
    ("component-setting-type", ["train", "--config", "tiny", "--config.model.prior=mixture",
                                "--config.model.prior.components=2.5"],
     "config.model.prior.components expects an integer (currently 500), got '2.5'"),
    ("config-import", ["train", "--config", "{bad_config}"],
     "config file '{bad_config}' failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("non-finite", ["train", "--config", "tiny", "--config.optim.learning_rate=1e999"],
     "config.optim.learning_rate=inf must be a finite number"),
    ("num-epochs", ["train", "--config", "tiny", "--config.train.num_epochs=0"], "config.train.num_epochs=0 must be > 0"),
    ("duplicate-override", ["train", "--config", "tiny", "--config.train.num_epochs=1", "--config.train.num_epochs=2"],
     "config key 'train.num_epochs' is overridden twice ('--config.train.num_epochs=1' and "
     "'--config.train.num_epochs=2'); give each key once"),
    ("data-dir-file", ["train", "--config", "tiny", "--config.data.name=mnist", "--config.data.data_dir={workdir}/notes.txt"],
     "data_dir {workdir}/notes.txt is a file, not a directory: point config.data.data_dir (or --data-dir) at a TFDS "
     "data directory"),
    ("compress-no-run", ["compress", "--workdir", "{tmp}/nothing", "--out", "{tmp}/images.vgz"],
     "holds no vaegen run"),
    ("decompress-not-a-file", ["decompress", "--workdir", "{workdir}", "{workdir}/notes.txt", "--out", "{tmp}/x.npy"],
     "the data are not a vaegen compressed file"),
    ("decompress-out", ["decompress", "--workdir", "{workdir}", "{workdir}/notes.txt", "--out", "{tmp}/x.png"],
     "--out writes the images as a .npy file"),
    ("eval-read-only", ["evaluate", "--workdir", "{locked}"],
     "cannot write {locked}/eval.json: {locked} is not writable (a read-only workdir?); pass --out PATH to write the "
     "result elsewhere"),
    # A config file's get_config: called as ml_collections calls it; whatever it raises is one line.
    ("config-get-config-raises", ["train", "--config", "{raising_config}"],
     "config file '{raising_config}': get_config() raised KeyError: 'latent_dimension' Did you mean \"latent_dim\" "
     "instead of \"latent_dimension\"?"),
    ("config-argument-unused", ["train", "--config", "{plain_config}:vae"],
     "config file '{plain_config}' was given the argument 'vae' (after the colon), but its get_config() takes none"),
    # Every output path is checked before the work starts.
    ("out-directory", ["evaluate", "--workdir", "{workdir}", "--out", "{tmp}"],
     "cannot write {tmp}: it is a directory; pass --out a file path, e.g. --out {tmp}/eval.json"),
    ("per-example-directory", ["evaluate", "--workdir", "{workdir}", "--per-example", "{tmp}/values.npz"],
     "cannot write {tmp}/values.npz: it is a directory; pass --per-example a file path"),
    ("sample-out-directory", ["sample", "--workdir", "{workdir}", "--out", "{tmp}"],
     "cannot write {tmp}: it is a directory; pass --out a file path, e.g. --out {tmp}/samples.png"),
    ("reconstruct-out-directory", ["reconstruct", "--workdir", "{workdir}", "--out", "{tmp}"],
     "cannot write {tmp}: it is a directory; pass --out a file path, e.g. --out {tmp}/reconstructions.png"),
    ("gaps-out-file", ["gaps", "--workdir", "{workdir}", "--out", "{workdir}/notes.txt"],
     "cannot write the tables into {workdir}/notes.txt: it is a file, not a directory; pass --out a directory"),
    ("sample-out-under-file", ["sample", "--workdir", "{workdir}", "--out", "{workdir}/notes.txt/samples.png"],
     "cannot write {workdir}/notes.txt/samples.png: {workdir}/notes.txt is not a directory"),
    # The workdir's lock.
    ("lock-directory", ["train", "--config", "tiny"],
     "cannot lock workdir {workdir}: {workdir}/.vaegen.lock is a directory, not a vaegen lock file; remove it if no "
     "vaegen process uses this workdir"),
]

# What some cases need in place before they run (after the workdir fixture).
CASE_SETUP = {
    "per-example-directory": lambda workdir, tmp: (tmp / "values.npz").mkdir(),
    "lock-directory": lambda workdir, tmp: (workdir / ".vaegen.lock").mkdir(),
}

# A config file of the user's own whose module of components cannot be imported (`config-import`).
BAD_CONFIG = (
    '"""A config that chooses components registered in a module of the user\'s own, which is missing."""\n'
    "import no_such_module_xyz  # noqa: F401 (registers the user's components)\n"
    "from vaegen.config.presets import tiny\n\n\n"
    "def get_config(arg=None):\n"
    "    return tiny.get_config(arg)\n"
)

# A config file in the usual ml_collections form (no argument), and one whose get_config fails.
PLAIN_CONFIG = ("from vaegen.config.presets import tiny\n\n\n"
                "def get_config():\n"
                "    return tiny.get_config()\n")
RAISING_CONFIG = ("from vaegen.config.presets import tiny\n\n\n"
                  "def get_config():\n"
                  "    c = tiny.get_config()\n"
                  "    c.model.latent_dim = c.model['latent_dimension'] + 1\n"
                  "    return c\n")

# (id, vaegen arguments, environment, message fragment): cases that need a process of their own,
# because JAX fixes its devices when it starts.  Every one exits with status 2.
PROCESS_CASES = [
    ("batch-devices", ["train", "--config", "tiny", "--workdir", "{workdir}"],
     {"XLA_FLAGS": xla_flags(xla_force_host_platform_device_count=8)},
     "config.train.batch_size=50 must be divisible by the number of devices (8)"),
]


def _snapshot(path):
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path):
    """A workdir that holds (the beginning of) a tiny run: its config, and nothing else yet."""
    w = tmp_path / "run"
    w.mkdir()
    (w / "config.json").write_text(config_lib.to_json(config_lib.load_config("tiny")) + "\n")
    (w / "run.json").write_text(json.dumps({"event_shape": [8, 8, 1],
                                            "data_fingerprint": workdir_lib.data_fingerprint(_splits())}) + "\n")
    (w / "notes.txt").write_text("mine")
    return w


def _substitute(text, workdir, tmp_path):
    return (text.replace("{tmp}", str(tmp_path)).replace("{workdir}", str(workdir))
            .replace("{locked}", str(tmp_path / "locked")).replace("{bad_config}", str(tmp_path / "bad_config.py"))
            .replace("{plain_config}", str(tmp_path / "plain_config.py"))
            .replace("{raising_config}", str(tmp_path / "raising_config.py")))


def _arguments(argv, workdir, tmp_path):
    argv = [_substitute(a, workdir, tmp_path) for a in argv]
    if argv[0] == "train" and "--workdir" not in argv:
        argv += ["--workdir", str(workdir)]
    return argv


@pytest.mark.parametrize("case, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input_on_the_command_line(case, argv, message, workdir, tmp_path, capsys, monkeypatch):
    if any("{locked}" in a for a in argv):
        # A directory without write permission, as access(2) reports it (root may write anywhere).
        locked = tmp_path / "locked"
        locked.mkdir()
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if pathlib.Path(p) == locked else access(p, mode, **kw))
    for name, text in (("bad_config", BAD_CONFIG), ("plain_config", PLAIN_CONFIG), ("raising_config", RAISING_CONFIG)):
        if any(f"{{{name}}}" in a for a in argv):
            (tmp_path / f"{name}.py").write_text(text)
    if case in CASE_SETUP:
        CASE_SETUP[case](workdir, tmp_path)
    argv = _arguments(argv, workdir, tmp_path)
    message = _substitute(message, workdir, tmp_path)
    before = _snapshot(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vaegen: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case, argv, env, message", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
@pytest.mark.slow
def test_bad_input_on_the_command_line_of_a_new_process(case, argv, env, message, workdir, tmp_path):
    env = dict(os.environ, **{k: f"{os.environ.get(k, '')} {v}".strip() for k, v in env.items()})
    before = _snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vaegen.cli", *_arguments(argv, workdir, tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("vaegen: error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr
    assert _snapshot(tmp_path) == before


def _splits():
    return data_lib.load_splits(schema.to_spec(config_lib.load_config("tiny")).data)


def _grey_float(s):
    return dataclasses.replace(s, train=s.train.astype(np.float32) / 255.0)


def _nan(s):
    x = s.train.astype(np.float32)
    x[7, 3, 3, 0] = np.nan
    return dataclasses.replace(s, train=x)


# (id, data transformation, config overrides, error class, message fragment)
API_CASES = [
    ("flat", lambda s: dataclasses.replace(s, train=s.train.reshape(len(s.train), -1)), [], errors.DataError,
     "the train split has shape (1300, 64), but a split is [N, H, W, C]; reshape flat vectors to images"),
    ("no-channel", lambda s: dataclasses.replace(s, validation=s.validation[..., 0]), [], errors.DataError,
     "the validation split has shape (200, 8, 8), but a split is [N, H, W, C]; add the channel axis"),
    ("dtype", _grey_float, [], errors.DataError,
     "the train split has dtype float32, but vaegen stores data as uint8 grey levels 0..255"),
    ("nan", _nan, [], errors.DataError, "the train split contains 1 NaN or infinite values (first in example 7)"),
    ("empty", lambda s: dataclasses.replace(s, train=s.train[:0]), [], errors.DataError, "the train split is empty"),
    ("event-shape", lambda s: dataclasses.replace(s, test=s.test[:, :4]), [], errors.DataError,
     "the test split has examples of shape (4, 8, 1), the train split (8, 8, 1)"),
    ("support", lambda s: s, ["data.binarization=none"], errors.SupportError,
     "the train split of digits (binarization 'none') has values outside {0, 1}"),
    ("not-an-array", lambda s: dataclasses.replace(s, train=s.train.tolist()), [], errors.DataError,
     "the train split must be an array of uint8 grey levels [N, H, W, C], got list"),
    ("other-data", lambda s: dataclasses.replace(s, train=255 - s.train), [], errors.WorkdirError,
     "belongs to a run trained on other data"),
]


def _model_run(preset, overrides=()):
    """A run of the model of ``preset`` without trained parameters (for errors raised before any)."""
    spec = schema.to_spec(config_lib.load_config(preset, list(overrides)))
    model = model_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    return run_lib.Run(workdir=pathlib.Path("untrained"), spec=spec, model=model, variables={},
                       event_shape=(8, 8, 1), epoch=0, info={})


_MADE = ["model.kind=autoregressive", "objective=exact"]


def _random_run(preset, overrides=(), seed=0):
    """A run of the model of ``preset`` with random (initial) parameters."""
    run = _model_run(preset, overrides)
    init = jax.jit(lambda key: model_lib.init_params(run.model, key, (8, 8, 1)))
    return dataclasses.replace(run, variables=init(jax.random.key(seed)))


_BITS = (np.arange(3 * 64).reshape(3, 8, 8, 1) % 3 == 0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _compressed():
    """A random tiny VAE and three images it compressed."""
    run = _random_run("tiny")
    return run, compression_lib.compress(run, _BITS)


def _flipped(data, at):
    data = bytearray(data)
    data[at] ^= 1
    return bytes(data)


def _diffusion_ae():
    """A random AE with a random diffusion density over its codes attached (by the recipe, without its check of
    what it cannot code, to reach the coder's own)."""
    ae = _random_run("tiny:ae")
    diffusion = recipe("diffusion", density=type(recipe("diffusion").settings.density)(hidden=(8,)))
    spec = diffusion.density_spec(4, num_validation=0)
    model = model_lib.build_model(spec.model, spec.inference, (4,))
    fitted = learned_lib.DensityFit("diffusion", spec, model_lib.init_params(model, jax.random.key(0), (4,)),
                                    pathlib.Path("nowhere"), {})
    return dataclasses.replace(diffusion.attach(ae, Fit("diffusion", value=fitted), code_scale=np.ones(4)), recipe=None)


# (id, call, error class, message fragment): errors raised by library functions called directly.
PYTHON_CASES = [
    ("code-prior-not-vq", lambda: recipe("code_prior").check(_model_run("tiny:ae")), errors.RecipeError,
     "--density code_prior needs discrete codes (a VQ-VAE's codebook indices), and the run in untrained has no "
     "discrete codes"),
    ("real-density-on-vq", lambda: recipe("flow").fit(_model_run("tiny:vq")), errors.RecipeError,
     "--density flow needs continuous codes z in R^D, and the run in untrained has discrete codes (points of its "
     "codebook): use --density code_prior"),
    ("recipe-needs-latents", lambda: recipe("gmm").attach(_model_run("tiny", _MADE), None), errors.RecipeError,
     "--density gmm needs continuous codes z in R^D, and the run in untrained has no codes"),
    ("recipe-needs-a-prior", lambda: recipe("own").attach(_model_run("tiny:ae"), None), errors.RecipeError,
     "--density own needs a p(z) of its own, and the run in untrained has no p(z) of its own"),
    ("unknown-recipe", lambda: recipe("glow"), errors.ConfigError,
     "'glow' is not a registered recipe (registered: chain, code_prior, diffusion"),
    ("logistic-support", lambda: likelihoods_lib.check_support("discretized_logistic", np.array([0.0, 0.5 / 255]),
                                                               what="the batch"),
     errors.SupportError, "the batch has values that are not 8-bit grey levels k/255, k in 0..255"),
    ("no-latent", lambda: _model_run("tiny", _MADE).encode(np.zeros((1, 8, 8, 1), np.float32)),
     errors.NoLatentError, "this model is autoregressive (MADE): it has no latent variable z"),
    ("no-prior", lambda: _model_run("tiny:ae").sample(jax.random.key(0), 2), errors.NoPriorError,
     "this model has no prior p(z)"),
    ("unknown-estimator", lambda: estimator_settings.parse_estimators("elbo,foo"), errors.ConfigError,
     "unknown estimator(s) foo; choose from elbo, iwae, is, exact, ais, bdmc, diagnostics or 'all'"),
    ("iwae-k", lambda: estimators_lib.check_ks([1, 100], 10), errors.ConfigError,
     "IWAE k must be between 1 and the number of importance samples (10); got [100]"),
    ("ais-step-size", lambda: estimator_settings.AISSettings(step_size=-0.1), errors.ConfigError,
     "AISSettings.step_size=-0.1 must be > 0"),
    ("ais-target-accept", lambda: estimator_settings.AISSettings(target_accept=1.5), errors.ConfigError,
     "AISSettings.target_accept=1.5 must be in (0, 1)"),
    ("undeclared-trait", lambda: registry.LIKELIHOODS.register("thing", traits={"suport": "binary"})(lambda s: None),
     errors.ConfigError, "the likelihood 'thing' is registered with trait 'suport', which is not a declared likelihood "
                         "trait (declared: support)"),
    ("undefined-log-px", lambda: estimators_lib.model_functions(_model_run("tiny:ae").model, {}),
     errors.UndefinedEstimateError, "log p(x) does not exist for this model: it has no prior p(z)"),
    ("x-support", lambda: _model_run("tiny").log_joint(np.full((1, 8, 8, 1), 3.0), np.zeros((1, 4))),
     errors.SupportError, "run.log_joint: argument x has values outside {0, 1}"),
    ("images-missing", lambda: images_lib.load_images("no/such/images.npy", event_shape=(8, 8, 1), support="binary"),
     errors.ImagesError, "--images no/such/images.npy: no such file or folder"),
    ("expost-too-few-codes", lambda: recipe("flow").fit_codes(np.zeros((5, 2), np.float32), np.zeros((0, 2)),
                                                              "/nonexistent/fit"),
     errors.DataError, "only 5 training codes to fit the flow density to; it needs at least 256"),
    ("expost-nan-codes", lambda: recipe("flow").fit_codes(np.full((300, 2), np.nan, np.float32), np.zeros((0, 2)),
                                                          "/nonexistent/fit"),
     errors.DataError, "the training codes contains 600 NaN or infinite values"),
    # Lossless coding (vaegen.compress / vaegen.decompress, `vaegen compress` / `vaegen decompress`).
    ("coding-no-prior", lambda: compression_lib.compress(_model_run("tiny:ae"), _BITS), errors.NoPriorError,
     "so there is nothing to code z with: it defines no p(x), and what defines no p(x) compresses nothing"),
    ("coding-code-prior", lambda: compression_lib.compress(_model_run("tiny:vq"), _BITS), errors.NoPriorError,
     "this VQ-VAE has no prior over its codes, so there is nothing to code the codes with"),
    ("coding-gaussian", lambda: compression_lib.compress(
        _model_run("tiny", ["model.likelihood=gaussian", "data.binarization=none"]), _BITS), errors.CodingError,
     "is a Gaussian density over real-valued x: it gives a discrete image no probability mass"),
    ("coding-diffusion", lambda: compression_lib.compress(_diffusion_ae(), _BITS), errors.CodingError,
     "p(z) is a variational diffusion model: its log p(z) is only a Monte Carlo estimate of a variational bound"),
    ("coding-grey", lambda: compression_lib.compress(_model_run("tiny"), _BITS * 0.5), errors.SupportError,
     "the images have values outside {0, 1}"),
    ("coding-coder", lambda: compression_lib.compress(_model_run("tiny"), _BITS, coder="autoregressive"),
     errors.CodingError, "coder autoregressive: autoregressive codes a MADE's pixels, and this model is no MADE"),
    ("coding-discrete-z", lambda: compression_lib.compress(_model_run("tiny:dvae"), _BITS, coder="bits_back"),
     errors.CodingError, "coder bits_back: q(z|x) is over a discrete z (categorical or Bernoulli variables), which "
                         "bits_back does not code: code it exactly, without a grid, with the discrete_bits_back coder"),
    ("coding-setting", lambda: compression_lib.compress(_random_run("tiny"), _BITS, settings={"precision": 30}),
     errors.ConfigError, "coder bits_back setting precision=30 must be in [2, 20]"),
    ("compressed-other-model", lambda: compression_lib.decompress(_random_run("tiny", seed=1), _compressed()[1]),
     errors.CompressedFileError, "the file was written by another model"),
    ("compressed-damaged", lambda: compression_lib.decompress(_compressed()[0], _flipped(_compressed()[1], 100)),
     errors.CompressedFileError, "the compressed file is damaged: its SHA-256 checksum does not match its content"),
    ("compressed-truncated", lambda: compression_lib.decompress(_compressed()[0], _compressed()[1][:-9]),
     errors.CompressedFileError, "the compressed file is truncated"),
    # Every argument of the public Python API is checked, as run.sample's n is.
    ("z-shape", lambda: _model_run("tiny").log_joint(np.zeros((1, 8, 8, 1)), np.zeros((1, 3))), errors.ArgumentError,
     "run.log_joint: argument z has shape (1, 3), but latent vectors of this model are [..., 4]"),
    ("z-batch", lambda: _model_run("tiny").log_joint(np.zeros((3, 8, 8, 1)), np.zeros((2, 4))), errors.ArgumentError,
     "run.log_joint: argument z has shape (2, 4) and x (3, 8, 8, 1): their batch shapes (2,) and (3,) do not "
     "broadcast"),
    ("k-not-an-integer", lambda: _model_run("tiny").log_px(np.zeros((1, 8, 8, 1)), k=2.5), errors.ArgumentError,
     "run.log_px: argument k must be an integer >= 1 (importance samples per example), got 2.5"),
    ("key-not-a-key", lambda: _model_run("tiny").sample(0, 4), errors.ArgumentError,
     "run.sample: argument key must be a JAX random key, e.g. jax.random.key(0), got int 0"),
    # Files vaegen (or a user) wrote, damaged: one line naming the file and what to do.
    ("damaged-json", lambda: files_lib.read_json(_damaged("mixture.json"), what="ex-post mixture record",
                                                 fix="fit it again"), errors.DamagedFileError,
     "mixture.json is not a readable ex-post mixture record (invalid JSON, truncated or damaged"),
    ("damaged-npz", lambda: files_lib.load_npz(_damaged("mixture.npz"), what="ex-post mixture", fix="fit it again"),
     errors.DamagedFileError, "mixture.npz is not a readable ex-post mixture (truncated or damaged: File is not a zip "
     "file); fit it again"),
    ("images-damaged", lambda: images_lib.load_images(_damaged("images.npz"), event_shape=(8, 8, 1), support="binary"),
     errors.ImagesError, "images.npz is not a readable .npz archive of images (truncated or damaged"),
    # Colour images for a model of grey ones: converted when R = G = B (tests/test_images.py), else refused.
    ("images-colour", lambda: images_lib.load_images(_colour_png(alpha=255), event_shape=(8, 8, 1), support="real"),
     errors.ImagesError, "holds colour (RGBA) images whose channels differ, and this run's model takes grey images "
     "(8, 8, 1): convert them to grey first, e.g. with PIL: Image.open(path).convert('L').save(path)"),
    ("images-transparent", lambda: images_lib.load_images(_colour_png(alpha=0), event_shape=(8, 8, 1), support="real"),
     errors.ImagesError, "holds RGBA images with transparent pixels (alpha < 255 in 1 of 1 images), and this run's "
     "model takes opaque grey images: flatten them onto a background first"),
]


def _colour_png(alpha):
    """An RGBA PNG whose channels differ (what matplotlib's imsave writes with its default colour map)."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 68, 1, 84, 255
    rgba[0, 0, 3] = alpha
    path = pathlib.Path(tempfile.mkdtemp(prefix="vaegen-colour-")) / "viridis.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def _damaged(name):
    """A file as a full disk or an interrupted copy leaves it: the first half of a good one."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="vaegen-damaged-"))
    path = directory / name
    if name.endswith(".json"):
        good = json.dumps({"weights": [0.5, 0.5], "means": [[0.0, 1.0], [2.0, 3.0]]}).encode()
    else:
        np.savez(directory / "good.npz", images=np.zeros((4, 8, 8), np.uint8), weights=np.ones(2))
        good = (directory / "good.npz").read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return path


@pytest.mark.parametrize("case, call, error, message", PYTHON_CASES, ids=[c[0] for c in PYTHON_CASES])
def test_bad_input_to_the_library(case, call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert any(issubclass(error, c) for c in errors.USER_ERRORS)


@pytest.mark.parametrize("case, transform, overrides, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_data_through_the_python_api(case, transform, overrides, error, message, workdir):
    cfg = config_lib.load_config("tiny", overrides)
    before = _snapshot(workdir)
    with pytest.raises(error) as info:
        vaegen.train_and_evaluate(cfg, workdir, splits=transform(_splits()))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert error in errors.USER_ERRORS or any(issubclass(error, c) for c in errors.USER_ERRORS)
    assert _snapshot(workdir) == before


def test_the_table_in_the_docs_lists_every_case():
    text = DOC.read_text()
    rows = [l for l in text.splitlines() if l.startswith("|")]
    ids = ([c[0] for c in CLI_CASES + PROCESS_CASES] + [f"api:{c[0]}" for c in API_CASES]
           + [f"py:{c[0]}" for c in PYTHON_CASES])
    assert len(ids) == len(set(ids))
    for case in ids:
        assert any(f"`{case}`" in r for r in rows), case
    # Every row of a table with an id column names a case.
    first_column = None
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        if set(r) <= set("|-: "):
            continue
        if cells[0] in ("id", "fault"):
            first_column = cells[0]
        elif first_column == "id":
            documented = re.fullmatch(r"`([^`]+)`", cells[0])
            assert documented and documented[1] in ids, r
    # Every documented message fragment is one the code produces.
    produced = [c[-1] for c in CLI_CASES + PROCESS_CASES + API_CASES + PYTHON_CASES]
    for fragment in re.findall(r"«(.+?)»", text):
        assert any(fragment in m for m in produced), fragment
