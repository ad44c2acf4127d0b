"""The reproduction configs: every row builds, validates and takes a training step on the CPU, and
the table runner trains, evaluates and tabulates a row end to end."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import VECTORISED, require_fashion_mnist
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.model import latent as model_lib
from vaegen import sharding
from vaegen.studies import reproduce as reproduce
from vaegen.train import trainer as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "reproduce" / "configs"


def _load_script():
    spec = importlib.util.spec_from_file_location("_reproduce_run", ROOT / "experiments" / "reproduce" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_has_a_config_file_with_its_command_and_published_value():
    files = {p.stem for p in CONFIGS.glob("*.py")}
    assert files == set(reproduce.ROWS)
    for name, row in reproduce.ROWS.items():
        cfg = config_lib.load_config(str(CONFIGS / f"{name}.py"))
        text = (CONFIGS / f"{name}.py").read_text()
        assert f"--rows {name}" in text and "Runtime:" in text
        assert f"{abs(row.published):.2f}" in text
        assert cfg.data.protocol in ("vampprior_fmnist", "iwae_mnist")


# The Gaussian-prior ConvHVAE is the VampPrior ConvHVAE's networks without the pseudo-inputs:
# traced and shape-checked only (compiling its convolutions again would double the CPU time).
TRACE_ONLY = {"fmnist_convhvae_standard"}
# The rows whose convolution gradients run: their program is compiled with vectorised loops (the
# tests compile the others without LLVM optimisation, see conftest.py).
CONVOLUTIONAL = {"fmnist_convhvae_vampprior"}


@pytest.mark.parametrize("name", sorted(reproduce.ROWS))
@pytest.mark.slow
def test_every_row_takes_a_training_step(name):
    """Each row's model, objective and optimiser, on 28x28 data, two fused steps (a few pseudo-inputs
    and a small batch so that the CPU check stays quick)."""
    path = str(CONFIGS / f"{name}.py")
    few = ["model.prior.components=3"] if "components" in config_lib.load_config(path).model.prior else []
    cfg = config_lib.load_config(path, ["train.batch_size=4", *few])
    event = (28, 28, 1)
    setup = train_lib.build_setup(schema.to_spec(cfg), event, 8)
    mesh = sharding.data_mesh()

    def initial_state():
        variables = model_lib.init_params(setup.model, jax.random.key(0), event)
        return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables,
                                    opt_state=setup.optimizer.init(variables))

    rows = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, *event)), jnp.uint8)
    steps = train_lib.make_train_steps(setup.model, setup.objective, setup.optimizer, batch_size=4,
                                       steps_per_epoch=2, num_steps=2, protocol="dynamic", seed=0, mesh=mesh)
    if name in TRACE_ONLY:
        state = jax.eval_shape(initial_state)
        new_state, metrics = jax.eval_shape(steps, state, rows, jnp.int32(0), jnp.int32(0))
        shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)
        assert shapes(new_state.params) == shapes(state.params)
        assert metrics[setup.objective.bound_name].shape == (2,)
        return
    state = jax.jit(initial_state)()
    if name in CONVOLUTIONAL:  # the same steps, their program compiled with vectorised loops
        call = jax.jit(lambda *args: steps(*args)).lower(state, rows, jnp.int32(0), jnp.int32(0))
        state, metrics = call.compile(compiler_options=VECTORISED)(state, rows, jnp.int32(0), jnp.int32(0))
    else:
        state, metrics = steps(state, rows, jnp.int32(0), jnp.int32(0))
    assert np.all(np.asarray(metrics["finite"]))
    bound = setup.objective.bound_name
    assert np.all(np.isfinite(np.asarray(metrics[bound])))
    # The published bound's terms are per image: hundreds of nats for 784 pixels at init.
    assert -2000 < float(np.mean(metrics[bound])) < 0


@pytest.mark.slow
def test_runner_trains_evaluates_and_tabulates_a_row(tmp_path, capsys):
    require_fashion_mnist()
    run = _load_script()
    sets = ["data.protocol=", "data.max_train_examples=300", "data.validation_size=100", "data.max_test_examples=40",
            "train.num_epochs=2", "train.early_stopping_patience=1", "train.early_stopping_min_epochs=0",
            "objective.kl_warmup_epochs=1", "train.progress=False"]
    argv = ["--rows", "fmnist_vae_standard", "--out", str(tmp_path), "--k", "20"]
    for s in sets:
        argv += ["--set", s]
    assert run.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    r = results["fmnist_vae_standard"]
    assert r["published"] == -228.70 and r["k"] == 20 and r["test_examples"] == 40
    assert -700 < r["log_px"] < -100 and r["elbo"] <= r["log_px"] + 3 * r["log_px_stderr"]
    assert r["epochs_trained"] <= 2 and "--set data.max_train_examples=300" in r["deviations"]
    table = (tmp_path / "table.md").read_text()
    assert "VAE, Gaussian prior" in table and "-228.70 ± 0.15" in table and "--set data.protocol=" in table
    with np.load(r["per_example"]) as f:                              # the per-image values behind the row
        assert f["log_px"].shape == (40,) and f["log_px"].mean() == pytest.approx(r["log_px"], rel=1e-12)
    assert not (tmp_path / "paired.md").exists()                       # one row: nothing to pair
    other = dict(r, title="the same run again", row="another_row")
    assert "| VAE, Gaussian prior | the same run again | 40 | +0.00 ± 0.00 |" in run.paired([r, other])
    assert run.paired([r, dict(other, protocol="iwae_mnist")]) == ""    # other data: never paired
    # A second call reuses the trained run and its evaluation.
    before = (tmp_path / "fmnist_vae_standard" / "metrics.jsonl").read_text()
    assert run.main(argv) == 0
    assert (tmp_path / "fmnist_vae_standard" / "metrics.jsonl").read_text() == before
    with pytest.raises(SystemExit):
        run.main(["--rows", "fmnist_vae_gaussian", "--out", str(tmp_path)])

    # --train-seeds: the config's own seed (14) is the run above, reused; seed 15 is a new run.
    own = json.loads((tmp_path / "fmnist_vae_standard" / "config.json").read_text())["seed"]
    with pytest.raises(SystemExit):
        run.main([*argv, "--train-seeds", f"{own},one"])
    assert run.main([*argv, "--train-seeds", f"{own},{own + 1}"]) == 0
    assert (tmp_path / "fmnist_vae_standard" / "metrics.jsonl").read_text() == before
    results = json.loads((tmp_path / "results.json").read_text())
    new = f"fmnist_vae_standard.seed{own + 1}"
    assert sorted(results) == ["fmnist_vae_standard", new]
    r0, r1 = results["fmnist_vae_standard"], results[new]
    assert (r0["train_seed"], r1["train_seed"], r1["run"]) == (own, own + 1, new)
    assert json.loads((tmp_path / new / "config.json").read_text())["seed"] == own + 1
    assert r1["log_px"] != r0["log_px"] and f"--train-seeds {own + 1}" in r1["command"]
    assert r1["deviations"] == r0["deviations"]
    table = (tmp_path / "table.md").read_text()
    assert f"VAE, Gaussian prior (seed {own})" in table and f"VAE, Gaussian prior (seed {own + 1})" in table
    mean, sd = (r0["log_px"] + r1["log_px"]) / 2, abs(r0["log_px"] - r1["log_px"]) / 2 ** 0.5
    assert f"| VAE, Gaussian prior | 2 ({own}, {own + 1}) | {mean:.2f} ± {sd / 2 ** 0.5:.2f} | {sd:.2f} |" in table
    assert (f"| VAE, Gaussian prior (seed {own}) | VAE, Gaussian prior (seed {own + 1}) | 40 |"
            in (tmp_path / "paired.md").read_text())


def test_paired_differences_over_training_seeds(tmp_path):
    """Two rows with two common seeds: the per-seed paired differences, averaged over the seeds, with
    the standard error across seeds; runs on other images are never paired."""
    run = _load_script()
    rng = np.random.default_rng(0)
    base = rng.normal(-230, 10, 50)                                   # image difficulty, shared by all
    rows = []
    for row, title, shift in (("a", "model A", 2.0), ("b", "model B", 0.0)):
        for seed, noise in ((0, 0.3), (1, -0.5)):
            path = tmp_path / f"{row}{seed}" / "reproduce_eval_k20_n50_s0.npz"
            path.parent.mkdir()
            values = base + shift + (noise if row == "a" else 0.0) + rng.normal(0, 0.01, 50)
            np.savez(path, log_px=values)
            rows.append({"row": row, "title": title, "train_seed": seed, "protocol": "vampprior_fmnist",
                         "per_example": str(path), "log_px": float(values.mean()), "log_px_stderr": 1.4})
    text = run.paired(rows)
    d0 = float(np.mean(np.load(rows[0]["per_example"])["log_px"] - np.load(rows[2]["per_example"])["log_px"]))
    d1 = float(np.mean(np.load(rows[1]["per_example"])["log_px"] - np.load(rows[3]["per_example"])["log_px"]))
    sd = abs(d0 - d1) / 2 ** 0.5
    assert f"| model A | model B | 50 | 0, 1 | {(d0 + d1) / 2:+.2f} ± {sd / 2 ** 0.5:.2f} | {sd:.2f} |" in text
    assert "| model A (seed 0) | model B (seed 0) | 50 |" in text
    other = dict(rows[3], per_example=str(tmp_path / "b1" / "reproduce_eval_k20_n40_s0.npz"))
    np.savez(other["per_example"], log_px=base[:40])
    assert "Over training runs" in text and "Over training runs" not in run.paired(rows[:3] + [other])
