"""What published numbers depend on: named data protocols, validation splits, staged learning
rates, normalised gradients and early stopping on a validation bound."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vaegen
from vaegen import sharding as sharding_lib
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.data import datasets as data_lib
from vaegen.data import protocols as protocols
from vaegen.data import splits as splits_lib
from vaegen.train import optim as optim_lib
from vaegen.train import steps as steps_lib
from vaegen.train import trainer as train_lib
from vaegen.train.rng import purpose_key


def _metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_validation_modes_split_the_train_split_as_documented():
    base = {"name": "digits", "validation_size": 200, "validation_seed": 0}
    train_all, _ = data_lib.load_split("digits", "train")
    tail = data_lib.load_splits(type("C", (), {**base, "validation_mode": "tail"})())
    np.testing.assert_array_equal(tail.validation, train_all[-200:])
    np.testing.assert_array_equal(tail.train, train_all[:-200])
    rand = data_lib.load_splits(type("C", (), {**base, "validation_mode": "random"})())
    perm = np.random.default_rng(0).permutation(len(train_all))
    np.testing.assert_array_equal(rand.validation, train_all[perm[:200]])
    assert rand.info["validation_mode"] == "random" and tail.info["validation_mode"] == "tail"
    with pytest.raises(ValueError, match="validation_mode"):
        data_lib.load_splits(type("C", (), {**base, "validation_mode": "middle"})())
    with pytest.raises(config_lib.ConfigError, match="only binarized_mnist"):
        config_lib.load_config("tiny", ["data.validation_mode=split"])


@pytest.mark.parametrize("name", sorted(protocols.PROTOCOLS))
def test_a_named_protocol_fixes_its_data_keys(name):
    cfg = config_lib.load_config("default")
    protocols.apply(cfg, name)
    assert cfg.data.protocol == name
    protocols.check(schema.to_spec(cfg).data)  # consistent
    key = "validation_size" if "validation_size" in protocols.PROTOCOLS[name] else "max_train_examples"
    with pytest.raises(config_lib.ConfigError, match=f"data.protocol='{name}' fixes the data keys.*data.{key}"):
        cfg.data[key] = 123
        schema.to_spec(cfg)  # the data settings check their protocol (protocols.check)


def test_protocol_names_are_checked_and_recorded(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="unknown data protocol 'vampprior'"):
        config_lib.load_config("vae_mlp_fmnist", ["data.protocol=vampprior"])
    with pytest.raises(config_lib.ConfigError, match="fixes the data keys"):
        config_lib.load_config("vae_mlp_fmnist", ["data.protocol=vampprior_fmnist", "data.binarization=static"])
    cfg = config_lib.load_config("vae_mlp_fmnist", ["data.protocol=vampprior_fmnist"])
    assert json.loads(config_lib.to_json(cfg))["data"]["protocol"] == "vampprior_fmnist"


def test_stage_schedule_is_the_iwae_schedule():
    cfg = config_lib.load_config("tiny", ["optim.schedule=stages"])
    spe = 3
    schedule = optim_lib.stage_schedule(1e-3, cfg.optim.stage_epochs, cfg.optim.stage_factors, spe)
    # Stage i (i = 0..7) lasts 3^i epochs at 1e-3 * round(10^(1 - i/7), 1) / 10 (the IWAE code).
    step = 0
    for i in range(8):
        lr = 1e-4 * round(10 ** (1 - i / 7), 1)
        for t in (step, step + 3**i * spe - 1):
            assert float(schedule(t)) == pytest.approx(lr, rel=1e-6)
        step += 3**i * spe
    assert step == 3280 * spe
    assert float(schedule(10**9)) == pytest.approx(1e-4)
    with pytest.raises(config_lib.ConfigError, match="equal length"):
        config_lib.load_config("tiny", ["optim.schedule=stages", "optim.stage_factors=(1.0,)"])


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_gradient_normalisation(mode):
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[1.0, 0.0], [0.0, 0.0]])}
    out, _ = optim_lib.normalize_gradients(mode).update(grads, optax.EmptyState(), None)
    if mode == "per_tensor":
        np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-6)
        np.testing.assert_allclose(out["b"], [[1.0, 0.0], [0.0, 0.0]], rtol=1e-6)
    else:
        np.testing.assert_allclose(optax.global_norm(out), 1.0, rtol=1e-6)
        np.testing.assert_allclose(out["a"] / out["b"][0, 0], [3.0, 4.0], rtol=1e-6)
    cfg = config_lib.load_config("tiny", [f"optim.normalize_gradients={mode}"])
    opt = optim_lib.make_optimizer(schema.to_spec(cfg).optim, steps_per_epoch=10)
    params = {"w": jnp.ones((2,))}
    updates, _ = opt.update({"w": jnp.array([100.0, 0.0])}, opt.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


@pytest.mark.slow
def test_early_stopping_keeps_the_best_parameters_and_stays_stopped(tmp_path):
    # A learning rate high enough that the validation bound stops improving within 40 epochs.
    overrides = ["train.num_epochs=40", "train.early_stopping_patience=2", "optim.learning_rate=0.05"]
    cfg = config_lib.load_config("tiny", overrides)
    vaegen.train_and_evaluate(cfg, tmp_path / "run")
    m = _metrics(tmp_path / "run")
    assert m[-1]["early_stopping/stopped"] and len(m) < 40
    values = [r["validation/elbo"] for r in m]
    best_epoch = int(np.argmax(values)) + 1
    assert m[-1]["early_stopping/best_epoch"] == best_epoch
    assert m[-1]["early_stopping/best"] == pytest.approx(max(values))
    assert m[-1]["epoch"] - best_epoch == 2
    run = vaegen.load(tmp_path / "run")  # the best parameters, not the last
    assert run.epoch == best_epoch
    assert vaegen.load(tmp_path / "run", best=False).epoch == m[-1]["epoch"]
    # Evaluating the loaded parameters on the validation split gives the recorded best bound.
    spec = run.spec
    splits = train_lib.load_data(spec)
    setup = train_lib.build_setup(spec, run.event_shape, len(splits.train))
    mesh = sharding_lib.data_mesh()
    evaluate = steps_lib.make_validation(run.model, setup.objective.for_validation(spec.eval.validation_num_samples),
                                         protocol="static", batch_size=50, mesh=mesh)
    val = sharding_lib.shard_rows(np.asarray(splits_lib.stored_split(spec.data, splits.validation, "validation")), mesh)
    terms = jax.device_get(evaluate(run.variables, val, purpose_key(0, "validation")))
    assert float(np.mean(terms["elbo"][:len(splits.validation)])) == pytest.approx(max(values), rel=1e-5)
    # A stopped run does not train on when resumed.
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    vaegen.train_and_evaluate(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_early_stopping_resumes_exactly(tmp_path):
    overrides = ["train.early_stopping_patience=2", "optim.learning_rate=0.05"]
    full = config_lib.load_config("tiny", overrides + ["train.num_epochs=40"])
    vaegen.train_and_evaluate(full, tmp_path / "full")
    first = config_lib.load_config("tiny", overrides + ["train.num_epochs=3"])
    vaegen.train_and_evaluate(first, tmp_path / "part")
    vaegen.train_and_evaluate(full, tmp_path / "part")
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "part")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["validation/elbo"] == rb["validation/elbo"]
        assert ra["early_stopping/bad_evaluations"] == rb["early_stopping/bad_evaluations"]
    pa, pb = vaegen.load(tmp_path / "full").variables, vaegen.load(tmp_path / "part").variables
    jax.tree_util.tree_map(np.testing.assert_array_equal, pa, pb)


def test_early_stopping_needs_validation():
    with pytest.raises(config_lib.ConfigError, match="needs a validation split"):
        config_lib.load_config("tiny", ["train.early_stopping_patience=3", "data.validation_size=0"])
