"""The `vaegen` command: smoke runs and one-line errors for bad input."""

import json
import subprocess
import sys

import distrax
import jax
import numpy as np
import pytest

import vaegen
from vaegen import cli


def _snapshot(path):
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
            if p.is_file()}


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_train_evaluate_sample_reconstruct(tmp_path, capsys):
    w = str(tmp_path / "vae")
    code, out, _ = _run(capsys, "train", "--config", "tiny", "--workdir", w, "--config.train.num_epochs=2")
    assert code == 0 and "validation elbo" in out and "trained already" not in out
    # The same command on the finished run: says so, and writes nothing.
    before = _snapshot(tmp_path / "vae")
    code, out, err = _run(capsys, "train", "--config", "tiny", "--workdir", w, "--config.train.num_epochs=2")
    assert code == 0 and not err
    assert out.startswith(f"{w} is trained already: its checkpoint of epoch 2 is the last of "
                          "config.train.num_epochs=2; nothing was done (to train longer, raise "
                          "--config.train.num_epochs;"), out
    assert "\nepoch 2 (trained before): train elbo " in out
    assert _snapshot(tmp_path / "vae") == before
    code, out, _ = _run(capsys, "evaluate", "--workdir", w, "--k", "8")
    assert code == 0 and "iwae_8" in out
    result = json.loads((tmp_path / "vae" / "eval.json").read_text())
    m = result["metrics"]
    assert result["num_samples"] == 8 and result["num_examples"] == 297
    assert m["elbo"]["mean"] <= m["iwae_8"]["mean"] + 3 * m["iwae_8"]["stderr"]
    assert m["elbo"]["mean"] == pytest.approx(m["reconstruction"]["mean"] - m["kl"]["mean"], abs=1e-3)
    code, out, _ = _run(capsys, "sample", "--workdir", w, "--n", "16")
    assert code == 0 and (tmp_path / "vae" / "samples.png").stat().st_size > 0
    code, out, _ = _run(capsys, "reconstruct", "--workdir", w, "--n", "8")
    assert code == 0 and (tmp_path / "vae" / "reconstructions.png").exists()
    _check_the_python_api(w)


def _check_the_python_api(workdir):
    """`vaegen.load` on the run just trained: the shapes of vaegen/run.py's table, finite values,
    and log p(x, z) = log p(z) + log p(x | z) from its own distributions.  (One jitted function:
    op by op, the many small programs would take longer to compile than the run took to train.)"""
    run = vaegen.load(workdir)
    assert run.epoch == 2 and run.event_shape == (8, 8, 1)
    x = run.split("test", max_examples=8)  # as `vaegen reconstruct --n 8` used it
    assert x.shape == (8, 8, 8, 1) and x.dtype == np.float32 and set(np.unique(x)) <= {0.0, 1.0}
    shapes = {}

    def terms(x, key):
        q = run.encode(x)
        z = q.sample(seed=jax.random.fold_in(key, 0), sample_shape=(3,))
        p_x = run.decode(z)
        prior = run.prior()
        for name, d in (("q", q), ("p_x", p_x), ("prior", prior)):
            assert isinstance(d, distrax.Distribution), name
            shapes[name] = (tuple(d.batch_shape), tuple(d.event_shape))
        return {"z": z, "log_joint": run.log_joint(x, z), "log_joint_one_z": run.log_joint(x, z[0]),
                "log_prior": prior.log_prob(z), "log_likelihood": p_x.log_prob(x), "log_q": q.log_prob(z),
                "samples": run.sample(jax.random.fold_in(key, 1), 7)}

    out = jax.device_get(jax.jit(terms)(x, jax.random.key(0)))
    assert shapes == {"q": ((8,), (4,)), "p_x": ((3, 8), (8, 8, 1)), "prior": ((), (4,))}
    assert out["z"].shape == (3, 8, 4) and out["samples"].shape == (7, 8, 8, 1)
    for name in ("log_joint", "log_prior", "log_likelihood", "log_q"):
        assert out[name].shape == (3, 8) and np.isfinite(out[name]).all(), name
    assert np.isfinite(out["z"]).all() and (out["log_joint"] < 0).all() and (out["log_likelihood"] < 0).all()
    np.testing.assert_allclose(out["log_joint"], out["log_prior"] + out["log_likelihood"], rtol=1e-6, atol=1e-5)
    # One z per example (z [8, D] against x [8, *event]) gives the first row of the same table.
    np.testing.assert_allclose(out["log_joint_one_z"], out["log_joint"][0], rtol=1e-6, atol=1e-5)
    assert set(np.unique(out["samples"])) <= {0.0, 1.0}  # x ~ p(x | z), Bernoulli
    assert out["samples"].std() > 0


def test_autoencoder_cli_says_there_is_no_prior(tmp_path, capsys):
    w = str(tmp_path / "ae")
    assert _run(capsys, "train", "--config", "tiny:ae", "--workdir", w, "--config.train.num_epochs=1")[0] == 0
    code, out, _ = _run(capsys, "evaluate", "--workdir", w)
    assert code == 0 and "undefined" in out
    result = json.loads((tmp_path / "ae" / "eval.json").read_text())
    assert set(result["metrics"]) == {"reconstruction", "code_norm_sq"}
    assert set(result["undefined"]) == {"elbo", "kl", "iwae", "log_px"}
    diag = result["diagnostics"]  # what exists for an autoencoder: statistics of its codes
    assert 0 <= diag["active_units"] <= 4 and diag["distortion"]["mean"] == pytest.approx(
        -result["metrics"]["reconstruction"]["mean"], rel=1e-5)
    assert {"rate", "mutual_information", "kl_per_dim"} <= set(diag["undefined"])
    code, out, _ = _run(capsys, "evaluate", "--workdir", w, "--estimators", "is,ais,bdmc")
    assert code == 0 and "no p(z)" in out
    assert set(json.loads((tmp_path / "ae" / "eval.json").read_text())["undefined"]) == {"log_px", "log_px_ais", "bdmc"}
    code, _, err = _run(capsys, "sample", "--workdir", w)
    assert code == 2 and "no prior p(z)" in err and err.count("\n") == 1
    assert not (tmp_path / "ae" / "samples.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--config.model.latent_dimm=3"], "unknown config key 'model.latent_dimm'"),
    (["--config.data.data_dir={tmp}/empty", "--config.data.name=fashion_mnist", "--config.data.auto_prepare=False"],
     "vaegen data prepare fashion_mnist"),
    (["--config.data.binarization=none"], "outside {0, 1}"),
    (["--config.optim.learning_rate=-1.0"], "must be > 0"),
])
def test_bad_input_is_one_clear_line_and_nothing_written(tmp_path, capsys, args, message):
    w = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = _run(capsys, "train", "--config", "tiny", "--workdir", str(w), *args)
    assert code == 2
    assert err.startswith("vaegen: error: ") and message in err and err.count("\n") == 1
    assert not (w / "config.json").exists()


@pytest.mark.slow
def test_help_of_every_command(capsys):
    proc = subprocess.run([sys.executable, "-m", "vaegen.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: vaegen" in proc.stdout
    for command in ("train", "evaluate", "gaps", "sample", "reconstruct", "data", "config", "demo", "compare"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: vaegen {command}" in capsys.readouterr().out, command


def test_config_command_lists_presets(capsys):
    code, out, _ = _run(capsys, "config")
    assert code == 0 and "vae_mlp_fmnist" in out and "ae_mlp_fmnist" in out
