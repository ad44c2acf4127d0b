"""The `vaegen` command: smoke runs and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from vaegen import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_evaluate_sample_reconstruct(tmp_path, capsys):
    w = str(tmp_path / "vae")
    code, out, _ = _run(capsys, "train", "--config", "tiny", "--workdir", w, "--config.train.num_epochs=2")
    assert code == 0 and "validation elbo" in out
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
