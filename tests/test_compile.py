"""Compiling once: a second training seed or stage of the same model runs the executable of the
first (no compilation, no load from the persistent cache), and the persistent compilation cache
goes where the environment variable, the setting or the user's cache directory say."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as threefry

from vaegen import compilation
from vaegen.config import loading, schema
from vaegen.train import trainer


@pytest.mark.slow
def test_another_seed_or_stage_of_a_study_compiles_nothing(tmp_path):
    spec = schema.to_spec(loading.load_config("tiny", ["train.num_epochs=1", "train.tensorboard_images=4",
                                                       "train.latent_health_examples=50"]))
    splits = trainer.load_data(spec)
    compilation.forget_shared()  # what earlier tests of this process compiled
    with compilation.count_compilations() as first:
        trainer.train_and_evaluate(spec, tmp_path / "seed0", splits=splits)
    assert any("train_steps" in name for name in first["names"])  # the counter sees the trainer compile
    seed1 = dataclasses.replace(spec, seed=1)
    stage2 = dataclasses.replace(spec, train=dataclasses.replace(spec.train, num_epochs=2))
    with compilation.count_compilations() as again:
        out1 = trainer.train_and_evaluate(seed1, tmp_path / "seed1", splits=splits)   # another seed
        out2 = trainer.train_and_evaluate(stage2, tmp_path / "seed0", splits=splits)  # the next stage (resumes)
    assert again["compiled"] == 0 and again["loaded"] == 0, again["names"]
    assert out1["epoch"] == 1 and out2["epoch"] == 2
    seed0_epoch1 = json.loads((tmp_path / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert out1["train/elbo"] != seed0_epoch1["train/elbo"]  # the seed reached the compiled program


@pytest.mark.parametrize("overrides", [
    ["objective.estimator=stl", "objective.analytic_kl=false"],
    ["objective=iwae", "objective.num_samples=3", "objective.estimator=stl"],
    ["objective=iwae", "objective.num_samples=3", "objective.estimator=dreg"],
    ["objective=miwae", "objective.num_groups=2", "objective.num_samples=2", "objective.estimator=dreg"],
    ["objective=ciwae", "objective.num_samples=3", "objective.estimator=dreg"],
    ["objective=piwae", "objective.num_groups=2", "objective.num_samples=2", "objective.estimator=dreg"],
], ids=["elbo-stl", "iwae-stl", "iwae-dreg", "miwae-dreg", "ciwae-dreg", "piwae-dreg"])
@pytest.mark.slow
def test_every_gradient_estimator_compiles_once_and_resumes_bitwise(tmp_path, overrides):
    """The STL and DReG gradients (a custom VJP) and the multi-sample objectives: another seed,
    the next stage and a fresh run of the same model compile nothing, and the resumed run ends at
    bitwise the parameters of the uninterrupted one."""
    import vaegen

    spec = schema.to_spec(loading.load_config("tiny", ["train.num_epochs=1", "eval.estimators=elbo"] + overrides))
    splits = trainer.load_data(spec)
    two = dataclasses.replace(spec, train=dataclasses.replace(spec.train, num_epochs=2))
    trainer.train_and_evaluate(spec, tmp_path / "resumed", splits=splits)
    with compilation.count_compilations() as again:
        trainer.train_and_evaluate(dataclasses.replace(spec, seed=1), tmp_path / "seed1", splits=splits)
        trainer.train_and_evaluate(two, tmp_path / "resumed", splits=splits)
        trainer.train_and_evaluate(two, tmp_path / "straight", splits=splits)
    assert again["compiled"] == 0 and again["loaded"] == 0, again["names"]
    a, b = vaegen.load(tmp_path / "straight"), vaegen.load(tmp_path / "resumed")
    assert a.epoch == b.epoch == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.variables, b.variables)


@pytest.mark.slow
def test_the_seed_is_an_argument_and_gives_the_trajectory_of_a_constant_seed():
    """The seed's streams as an argument give bitwise the steps of the seed as a constant."""
    from vaegen import sharding
    from vaegen.model import latent
    from vaegen.train import steps as steps_lib

    spec = schema.to_spec(loading.load_config("tiny"))
    setup = trainer.build_setup(spec, (8, 8, 1), 100)
    mesh = sharding.data_mesh()
    rows = sharding.shard_rows(np.random.RandomState(0).randint(0, 256, (100, 8, 8, 1)).astype(np.uint8), mesh)

    def state():  # a fresh one each time: the steps donate it
        v = latent.init_params(setup.model, jax.random.key(0), (8, 8, 1))
        return steps_lib.TrainState(step=jnp.zeros((), jnp.int32), params=v, opt_state=setup.optimizer.init(v))

    kw = dict(batch_size=10, steps_per_epoch=4, protocol="dynamic", mesh=mesh)
    for seed in (3,):
        as_argument = steps_lib.make_train_steps(setup.model, setup.objective, setup.optimizer, num_steps=4, seed=seed, **kw)
        as_constant = steps_lib.make_train_epoch(setup.model, setup.objective, setup.optimizer, seed=seed, **kw)
        a, _ = as_argument(state(), rows, jnp.int32(1), jnp.int32(0))
        b, _ = as_constant(state(), rows, jnp.int32(1))
        for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def own_cache():
    """Restores JAX's cache directory and vaegen's choice after a test that changes them."""
    before, choice = jax.config.jax_compilation_cache_dir, compilation._choice
    yield
    compilation._choice = choice
    compilation._set_dir(before)


def test_cache_directory_from_setting_environment_or_user_cache(tmp_path, monkeypatch, own_cache):
    monkeypatch.delenv(compilation.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.requested_dir() == tmp_path / "xdg" / "vaegen" / "jax"
    monkeypatch.setenv(compilation.ENV_VAR, str(tmp_path / "env"))
    assert compilation.requested_dir() == tmp_path / "env"
    for off in ("0", "off", "OFF"):
        monkeypatch.setenv(compilation.ENV_VAR, off)
        assert compilation.requested_dir() is None
    assert compilation.requested_dir(tmp_path / "setting") == tmp_path / "setting"  # the setting wins

    # An explicit setting moves the cache, and the entry points' own enable() keeps it.
    assert compilation.enable(tmp_path / "setting") == str(tmp_path / "setting")
    assert compilation.enable() == str(tmp_path / "setting") == jax.config.jax_compilation_cache_dir
    assert compilation.enable("off") is None and jax.config.jax_compilation_cache_dir is None
    assert compilation.enable() is None
    # A directory that cannot be made turns the cache off instead of failing.
    (tmp_path / "file").write_text("")
    assert compilation.enable(tmp_path / "file" / "jax") is None


def test_cache_is_written_and_read_back(tmp_path, own_cache):
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        compilation.enable(tmp_path / "cache")
        f = lambda x: jnp.sin(x) * 3.25 + 0.5  # noqa: E731 - a program no other test compiles
        with compilation.count_compilations() as cold:
            jax.jit(f)(np.ones(7, np.float32))
        assert cold["compiled"] == 1 and any(pathlib.Path(tmp_path / "cache").iterdir())
        with compilation.count_compilations() as warm:
            jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(np.ones(7, np.float32))  # a new function, the same program
        assert warm["compiled"] == 0 and warm["loaded"] == 1
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)


def test_cli_option_moves_the_cache(tmp_path, own_cache, capsys):
    from vaegen import cli

    assert cli.main(["--compilation-cache", str(tmp_path / "c"), "config"]) == 0
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert cli.main(["--compilation-cache", "off", "config"]) == 0
    assert jax.config.jax_compilation_cache_dir is None


def test_random_bits_on_cpu_are_unrolled_and_bitwise_those_of_the_rolled_loop():
    """vaegen registers JAX's unrolled threefry lowering for CPU: no while loop in the program,
    and the same bits, normals and split keys as JAX's own (rolled) CPU lowering."""
    assert compilation.UNROLLED_THREEFRY  # this JAX keeps the lowering where vaegen looks for it

    def draws(key):
        return (jax.random.bits(key, (37, 11)), jax.random.normal(key, (3, 50)),
                jax.random.key_data(jax.random.split(jax.random.fold_in(key, 7), 5)))

    key = jax.random.key(11)
    assert "while" not in jax.jit(draws).lower(key).as_text()
    unrolled = jax.jit(draws)(key)
    mlir.register_lowering(threefry.threefry2x32_p, threefry._threefry2x32_cpu_lowering_rule, platform="cpu")
    try:
        rolled_draws = jax.jit(lambda k: draws(k))  # a new function: lowered with the rolled loop
        assert "while" in rolled_draws.lower(key).as_text()
        rolled = rolled_draws(key)
    finally:
        assert compilation.unrolled_threefry_on_cpu()
    for a, b in zip(unrolled, rolled):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
