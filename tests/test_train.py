"""The fused trainer: learning, exact resumption, sharding, workdir safety."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaegen
from vaegen import errors
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.registry import registry, setting, to_mapping
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import legacy as legacy_lib
from vaegen.train import trainer as train_lib
from vaegen.train import workdir as workdir_lib
from vaegen.train.steps import TrainState
from conftest import xla_flags

LEGACY_TINY = pathlib.Path(__file__).parent / "data" / "legacy" / "config.tiny.json"  # `vaegen config tiny` of 0.1


def _metrics(workdir):
    return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): p.read_bytes() for p in pathlib.Path(workdir).rglob("*") if p.is_file()}


def _train(config, workdir, **kwargs):
    """The trainer, on the typed run spec of a config."""
    return train_lib.train_and_evaluate(schema.to_spec(config), workdir, **kwargs)


@pytest.mark.slow
def test_training_raises_the_validation_bound(tmp_path):
    cfg = config_lib.load_config("tiny", ["train.num_epochs=6", "optim.learning_rate=3e-3"])
    _train(cfg, tmp_path)
    m = _metrics(tmp_path)
    assert [r["epoch"] for r in m] == list(range(1, 7))
    assert m[-1]["validation/elbo"] > m[0]["validation/elbo"] + 0.5
    assert m[-1]["train/elbo"] > m[0]["train/elbo"]
    for r in m:
        assert r["train/elbo"] == pytest.approx(r["train/reconstruction"] - r["train/kl"], rel=1e-5)
        assert r["train/grad_norm"] > 0 and r["steps_per_second"] > 0
    for name in ("config.json", "run.json", "metrics.jsonl"):
        assert (tmp_path / name).exists()


def test_autoencoder_trains_with_the_same_trainer(tmp_path):
    cfg = config_lib.load_config("tiny:ae", ["train.num_epochs=4", "optim.learning_rate=3e-3"])
    _train(cfg, tmp_path)
    m = _metrics(tmp_path)
    assert m[-1]["validation/reconstruction"] > m[0]["validation/reconstruction"]
    assert "train/kl" not in m[0] and "validation/elbo" not in m[0]


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cfg4 = config_lib.load_config("tiny", ["train.num_epochs=4"])
    cfg2 = config_lib.load_config("tiny", ["train.num_epochs=2"])
    _train(cfg4, full)
    _train(cfg2, part)
    # Simulate a crash after epoch 3's metrics were written but before its checkpoint.
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "stale": True}) + "\n")
    _train(cfg4, part)
    a, b = vaegen.load(full), vaegen.load(part)
    assert a.epoch == b.epoch == 4
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)
    ma, mb = _metrics(full), _metrics(part)
    assert [r["epoch"] for r in mb] == [1, 2, 3, 4]
    for ra, rb in zip(ma, mb):
        for k in ("train/elbo", "train/grad_norm", "validation/elbo"):
            assert ra[k] == rb[k], k


def test_runs_from_before_new_config_keys_resume(tmp_path, monkeypatch):
    """A key added to the schema (with its default) must not orphan a run trained before it."""
    _train(config_lib.load_config("tiny", ["train.num_epochs=1"]), tmp_path)
    # A later version gives the ELBO a new setting: its run specs and configs carry it from now on.
    objectives = registry("objective")
    elbo = objectives.get("elbo")

    @dataclasses.dataclass(frozen=True)
    class WithANewKey(elbo.settings):
        some_future_option: float = setting(1.0, "a setting added after the run was trained")

    monkeypatch.setitem(objectives._components, "elbo", dataclasses.replace(elbo, settings=WithANewKey))
    cfg = config_lib.load_config("tiny", ["train.num_epochs=2"])
    assert cfg.objective.some_future_option == 1.0
    assert "some_future_option" not in json.loads((tmp_path / "config.json").read_text())["objective"]
    last = _train(cfg, tmp_path)
    assert last["epoch"] == 2 and vaegen.load(tmp_path).epoch == 2


@pytest.mark.slow
def test_workdir_of_version_0_1_resumes_to_the_parameters_of_a_new_run(tmp_path):
    """A workdir written by vaegen 0.1 (flat config.json, checkpoints fingerprinted by that config)
    resumes under the config in the current shape to bitwise the parameters of a run trained
    from scratch by this version, and loads."""
    legacy = json.loads(LEGACY_TINY.read_text())
    assert legacy_lib.is_legacy(legacy)
    cfg1, cfg2 = (config_lib.normalize(legacy_lib.translate(legacy)) for _ in range(2))
    config_lib.apply_overrides(cfg1, ["train.num_epochs=1"])
    config_lib.apply_overrides(cfg2, ["train.num_epochs=2"])
    a, b = tmp_path / "a", tmp_path / "b"
    _train(cfg2, a)
    _train(cfg1, b)

    # Make b the workdir 0.1 would have written: its config.json as 0.1 wrote it, and its
    # checkpoint under 0.1's fingerprint (that of the flat config).
    stored = json.loads(json.dumps(legacy))
    stored["train"]["num_epochs"] = 1
    (b / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    legacy_fingerprint = workdir_lib.config_fingerprint(stored)
    spec1 = schema.to_spec(cfg1)
    splits = train_lib.load_data(spec1)
    event_shape = splits.train.shape[1:]
    setup = train_lib.build_setup(spec1, event_shape, splits.train.shape[0])
    variables = train_lib.initial_variables(spec1, setup.model, event_shape, splits.train)
    template = TrainState(step=jnp.zeros((), jnp.int32), params=variables, opt_state=setup.optimizer.init(variables))
    ckpt = checkpoint_lib.Checkpointer(b / train_lib.CHECKPOINTS_DIR)
    try:
        assert ckpt.all_epochs() == [1]
        meta = ckpt.restore_meta(1)
        assert meta["config_fingerprint"] != legacy_fingerprint  # the translated config's own fingerprint
        params, items = ckpt.restore(1, template.params, template.checkpoint_items(), meta=meta)
        ckpt.delete(1)
        ckpt.save(1, params, items, dict(meta, config_fingerprint=legacy_fingerprint))
    finally:
        ckpt.close()
    assert (b / "config.json").read_text() == json.dumps(stored, indent=2, sort_keys=True) + "\n"

    _train(cfg2, b)
    assert json.loads((b / "config.json").read_text()) == stored  # never rewritten
    ra, rb = vaegen.load(a), vaegen.load(b)
    assert ra.epoch == rb.epoch == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, ra.variables, rb.variables)
    assert workdir_lib.differences(to_mapping(rb.spec), to_mapping(schema.to_spec(cfg2))) == []
    assert [r["epoch"] for r in _metrics(b)] == [1, 2]
    for r_a, r_b in zip(_metrics(a), _metrics(b)):
        for k in ("train/elbo", "train/grad_norm", "validation/elbo"):
            assert r_a[k] == r_b[k], k


def test_workdir_of_another_run_is_refused_and_untouched(tmp_path):
    cfg = config_lib.load_config("tiny", ["train.num_epochs=1"])
    _train(cfg, tmp_path)
    before = _snapshot(tmp_path)
    other = config_lib.load_config("tiny", ["train.num_epochs=1", "model.latent_dim=3"])
    with pytest.raises(errors.WorkdirError, match="model.latent_dim: 4 -> 3"):
        _train(other, tmp_path)
    assert _snapshot(tmp_path) == before


def test_non_empty_foreign_workdir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(errors.WorkdirError, match="not empty"):
        _train(config_lib.load_config("tiny"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_batch_larger_than_dataset_is_an_error(tmp_path):
    cfg = config_lib.load_config("tiny", ["train.batch_size=5000"])
    with pytest.raises(errors.ConfigError, match="larger than the training set"):
        _train(cfg, tmp_path)
    assert not (tmp_path / "config.json").exists()


_SHARDING_SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from vaegen.config import loading as config
    from vaegen.config import schema
    from vaegen.train import trainer as train
    import vaegen
    spec = schema.to_spec(config.load_config("tiny", ["train.num_epochs=3", "train.batch_size=64"]))
    train.train_and_evaluate(spec, sys.argv[1] + "/one", devices=jax.devices()[:1])
    train.train_and_evaluate(spec, sys.argv[1] + "/eight")
    out = {}
    for name in ("one", "eight"):
        lines = [json.loads(l) for l in open(sys.argv[1] + f"/{name}/metrics.jsonl")]
        out[name] = [[l["train/elbo"], l["validation/elbo"], l["train/grad_norm"]] for l in lines]
        out[name + "_devices"] = len(json.load(open(sys.argv[1] + f"/{name}/run.json"))["devices"])
    a, b = vaegen.load(sys.argv[1] + "/one"), vaegen.load(sys.argv[1] + "/eight")
    out["max_param_diff"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(
        jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)))
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_eight_devices_follow_the_one_device_trajectory(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(xla_force_host_platform_device_count=8), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["eight_devices"] == 8
    np.testing.assert_allclose(np.array(out["eight"]), np.array(out["one"]), rtol=2e-4, atol=2e-4)
    assert out["max_param_diff"] < 1e-3
