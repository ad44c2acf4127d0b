"""Fault injection: non-finite steps, stop signals, SIGKILL, damaged checkpoints and workdirs.

One reference run (tiny, uninterrupted) is trained once; the runs that are interrupted,
killed or damaged must end with exactly its parameters, or fail with one clear error and
leave the workdir as it was.
"""

import dataclasses
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vaegen
from vaegen.train import checkpoint as checkpoint_lib
from vaegen import cli
from vaegen import errors
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.data import datasets as data_lib
from vaegen.data import splits as splits_lib
from vaegen.train import faults as faults
from vaegen.model import latent as model_lib
from vaegen.objectives.base import Objective
from vaegen import sharding as sharding_lib
from vaegen.train import trainer as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 12
CHUNK = 13  # tiny: 26 steps per epoch, two device calls each


def _snapshot(path):
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _metrics(workdir):
    return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _epochs(directory):
    ckpt = checkpoint_lib.Checkpointer(directory, read_only=True)
    try:
        return ckpt.all_epochs()
    finally:
        ckpt.close()


def _assert_same_params(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run of EPOCHS epochs, one device call per epoch."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _train(config_lib.load_config("tiny", [f"train.num_epochs={EPOCHS}"]), workdir)
    return workdir


def _train(config, workdir, **kwargs):
    """The trainer, on the typed run spec of a config."""
    return train_lib.train_and_evaluate(schema.to_spec(config), workdir, **kwargs)


def _copy(reference, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(reference, dst)
    return dst


# --- non-finite steps --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InjectNonFinite(Objective):
    """Wraps an objective: a NaN objective at ``nan_loss_steps`` and from ``nan_from`` on, and
    a finite objective with a NaN gradient at ``nan_grad_steps`` (the other hooks of the
    contract: the defaults)."""

    inner: object
    nan_loss_steps: tuple = ()
    nan_grad_steps: tuple = ()
    nan_from: int = 2**30

    @property
    def bound_name(self):
        return self.inner.bound_name

    def for_validation(self, validation_num_samples):
        return self.inner.for_validation(validation_num_samples)  # validation is not injected

    def __call__(self, model, variables, x, key, step=0):
        terms = self.inner(model, variables, x, key, step)
        step = jnp.asarray(step)
        bad_loss = jnp.isin(step, jnp.asarray(self.nan_loss_steps + (-1,))) | (step >= self.nan_from)
        bad_grad = jnp.isin(step, jnp.asarray(self.nan_grad_steps + (-1,)))
        leaf = jax.tree_util.tree_leaves(variables)[0]
        # Value 0, gradient NaN: d sqrt(u^2)/du at u = 0 is 0/0.
        nan_grad = jax.lax.cond(bad_grad, lambda v: jnp.sqrt(jnp.sum(v * 0.0) ** 2), lambda v: jnp.float32(0.0), leaf)
        objective = jnp.where(bad_loss, jnp.nan, terms["objective"]) + nan_grad
        return dict(terms, objective=objective)


# Shared by the next two tests, which so compile the same program (the compilation cache).
INJECT = dict(nan_loss_steps=(2,), nan_grad_steps=(5,), nan_from=30)
MAX_SKIPS = 4


def test_nonfinite_steps_are_skipped_on_the_device_and_counted():
    spec = schema.to_spec(config_lib.load_config("tiny"))
    splits = train_lib.load_data(spec)
    event_shape = splits.train.shape[1:]
    setup = train_lib.build_setup(spec, event_shape, splits.train.shape[0])
    mesh = sharding_lib.data_mesh(jax.devices()[:1])
    steps = train_lib.make_train_steps(
        setup.model, InjectNonFinite(setup.objective, **INJECT), setup.optimizer, batch_size=50,
        steps_per_epoch=setup.steps_per_epoch, num_steps=CHUNK, protocol="dynamic", seed=0, mesh=mesh,
        max_consecutive_skips=MAX_SKIPS, num_examples=splits.train.shape[0])
    rows = sharding_lib.shard_rows(np.asarray(splits_lib.stored_split(spec.data, splits.train, "train")), mesh)
    params = model_lib.init_params(setup.model, jax.random.key(0), event_shape)
    state = train_lib.TrainState(step=jnp.int32(0), params=params, opt_state=setup.optimizer.init(params))
    state = jax.device_put(state, sharding_lib.replicated(mesh))

    # Steps 0..12: a NaN objective at step 2, a NaN gradient of a finite objective at step 5.
    state, m = steps(state, rows, jnp.int32(0), jnp.int32(0))
    assert np.flatnonzero(~m["finite"]).tolist() == [2, 5] and m["ran"].all()
    assert np.isnan(m["objective"][2]) and np.isfinite(m["objective"][5]) and not np.isfinite(m["grad_norm"][5])
    assert int(state.step) == CHUNK and int(state.skipped_steps) == 2 and int(state.consecutive_skips) == 0
    adam = state.opt_state[0]
    assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == CHUNK - 2  # applied updates only
    assert train_lib.faults_lib.all_finite(state.params)

    # Steps 30..: every one non-finite.  Parameters and optimizer state are not touched, and the
    # 4th consecutive skip (step 33) stops the call: the later steps do nothing.
    state = state.replace(step=jnp.int32(30))
    before = jax.device_get((state.params, state.opt_state))
    state, m = steps(state, rows, jnp.int32(1), jnp.int32(4))
    assert m["ran"].tolist() == [True] * MAX_SKIPS + [False] * (CHUNK - MAX_SKIPS) and not m["finite"].any()
    _assert_same_params(before, (state.params, state.opt_state))
    assert int(state.step) == 34 and int(state.consecutive_skips) == MAX_SKIPS and int(state.skipped_steps) == 6

    log = train_lib.EpochLog(m)
    assert log.skipped_at() == [30, 31, 32, 33] and log.last_finite() is None


def test_consecutive_nonfinite_steps_stop_the_run_with_one_clear_line(tmp_path, capsys, monkeypatch):
    build = train_lib.build_setup

    def build_injected(*args, **kwargs):
        setup = build(*args, **kwargs)
        return dataclasses.replace(setup, objective=InjectNonFinite(setup.objective, **INJECT))

    monkeypatch.setattr(train_lib, "build_setup", build_injected)
    w = tmp_path / "run"
    code = cli.main(["train", "--config", "tiny", "--workdir", str(w), "--config.train.num_epochs=3",
                     f"--config.train.max_consecutive_skips={MAX_SKIPS}", f"--config.train.steps_per_call={CHUNK}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("vaegen: error: training stopped at step 33 (epoch 2): 4 consecutive steps (30..33)")
    assert "last finite step 29: elbo=" in err[-1] and "latest checkpoint: epoch 1" in err[-1]
    m = _metrics(w)
    assert m[0]["skipped_at"] == [2, 5] and m[0]["train/skipped_steps"] == 2 and np.isfinite(m[0]["train/elbo"])
    assert m[1]["halted"] == "non-finite" and m[1]["skipped_at"] == [30, 31, 32, 33]
    assert m[1]["skipped_steps_total"] == 6
    assert _epochs(w / "checkpoints") == [1]


# --- stop signals and SIGKILL: exact resumption ------------------------------------------------

@pytest.mark.slow
def test_sigterm_then_sigkill_resume_to_the_uninterrupted_parameters(reference, tmp_path, capsys, monkeypatch):
    w = tmp_path / "run"
    args = ["--config", "tiny", "--workdir", str(w), f"--config.train.num_epochs={EPOCHS}",
            f"--config.train.steps_per_call={CHUNK}"]

    # 1. SIGTERM in the middle of epoch 2 (during the third device call): honoured when the call
    #    returns, with a checkpoint of step 39 and the exit status of a SIGTERM.
    add, calls = train_lib.EpochLog.add, []

    def add_then_signal(self, metrics):
        add(self, metrics)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_lib.EpochLog, "add", add_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train", *args]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vaegen: stopped by SIGTERM at step 39 (epoch 2, step 13 of 26)"), err
    assert sorted(os.listdir(w / train_lib.INTERRUPTED_DIR)) == ["39"]
    assert signal.getsignal(signal.SIGTERM) == handler  # handlers restored
    monkeypatch.setattr(train_lib.EpochLog, "add", add)

    # 2. The same command in a new process resumes at step 39 and is SIGKILLed at a random
    #    moment after a later checkpoint (possibly while writing one).
    proc = subprocess.Popen([sys.executable, "-m", "vaegen.cli", "train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (w / "checkpoints" / "4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    proc.kill()
    stderr = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed: {stderr[-2000:]}"
    assert max(_epochs(w / "checkpoints")) < EPOCHS

    # 3. Resuming once more completes the run: bitwise the parameters of the uninterrupted run,
    #    and the same metrics, although it ran in three processes and two calls per epoch.
    _resume_to_the_reference(reference, w)


def _resume_to_the_reference(reference, w):
    """Resumes the tiny run in ``w`` (two device calls per epoch) to the end and checks that it
    ends with the reference run's parameters, bit for bit, and its metrics."""
    _train(config_lib.load_config("tiny", [f"train.num_epochs={EPOCHS}", f"train.steps_per_call={CHUNK}"]), w)
    a, b = vaegen.load(reference), vaegen.load(w)
    assert a.epoch == b.epoch == EPOCHS
    _assert_same_params(a.variables, b.variables)
    ma, mb = _metrics(reference), _metrics(w)
    assert [r["epoch"] for r in mb] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(ma, mb):
        for k in ra:
            if k.startswith(("train/", "validation/")):
                assert ra[k] == rb[k], (ra["epoch"], k)
    assert not (w / train_lib.INTERRUPTED_DIR).exists()


@pytest.mark.slow
def test_sigint_from_outside_stops_with_status_130_and_resumes_to_the_uninterrupted_parameters(reference, tmp_path):
    """Ctrl-C on the `vaegen train` process: a checkpoint, exit status 128 + SIGINT (not the 143
    of SIGTERM), and the same command resumes to the uninterrupted run."""
    w = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vaegen.cli", "train", "--config", "tiny", "--workdir", str(w),
                             f"--config.train.num_epochs={EPOCHS}", f"--config.train.steps_per_call={CHUNK}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (w / "checkpoints" / "1").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)  # training has started: the first epoch is saved
        proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=240)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT == 130, f"exit {proc.returncode}: {stderr[-2000:]}"
    lines = stderr.strip().splitlines()
    assert "vaegen: SIGINT received: saving a checkpoint when the current device call returns" in stderr, stderr
    stopped = re.fullmatch(r"vaegen: stopped by SIGINT at step (\d+) \((.+)\); checkpoint written to (\S+); "
                           r"run the same command again to resume", lines[-1])
    assert stopped, lines[-1]
    # In the middle of an epoch, an interrupt checkpoint named by its step; at the end of one,
    # that epoch's checkpoint.
    step, checkpoint = int(stopped[1]), pathlib.Path(stopped[3])
    assert 0 < step < EPOCHS * 2 * CHUNK
    assert checkpoint.parent in (w / train_lib.INTERRUPTED_DIR, w / "checkpoints")
    assert int(checkpoint.name) in _epochs(checkpoint.parent)
    if checkpoint.parent.name == train_lib.INTERRUPTED_DIR:
        assert int(checkpoint.name) == step and stopped[2].endswith(f"step {CHUNK} of {2 * CHUNK}")
    else:
        assert int(checkpoint.name) < EPOCHS and stopped[2] == f"end of epoch {checkpoint.name}"
    _resume_to_the_reference(reference, w)


def test_torn_metrics_line_from_a_killed_writer_is_dropped_on_resume(reference, tmp_path):
    w = _copy(reference, tmp_path)
    # Killed while writing the last epoch's line, before that epoch's checkpoint.
    shutil.rmtree(w / "checkpoints" / str(EPOCHS))
    lines = (w / "metrics.jsonl").read_text().splitlines(keepends=True)
    (w / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][:30])
    cfg = config_lib.load_config("tiny", [f"train.num_epochs={EPOCHS}"])
    assert _train(cfg, w)["epoch"] == EPOCHS
    assert [r["epoch"] for r in _metrics(w)] == list(range(1, EPOCHS + 1))


# --- checkpoints ------------------------------------------------------------------------------

def test_half_written_checkpoint_is_never_loaded(reference, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    w = _copy(reference, tmp_path)
    ckpt = checkpoint_lib.Checkpointer(w / "checkpoints")
    run = vaegen.load(w)
    # A save that dies part-way (here: the metadata write fails) leaves only a temporary directory.
    def die(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", die)
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "save", die)
    with pytest.raises(Exception):
        ckpt.save(EPOCHS + 1, run.variables, {"step": jnp.int32(1)}, {"epoch": EPOCHS + 1})
    monkeypatch.undo()
    ckpt.close()
    # And the leftovers of a process killed while writing: a complete copy, not yet renamed.
    shutil.copytree(w / "checkpoints" / str(EPOCHS), w / "checkpoints" / f"{EPOCHS + 2}.orbax-checkpoint-tmp")
    assert any(".orbax-checkpoint-tmp" in p.name for p in (w / "checkpoints").iterdir())
    assert _epochs(w / "checkpoints")[-1] == EPOCHS
    assert vaegen.load(w).epoch == EPOCHS


def _damage(path: pathlib.Path) -> None:
    # The array data (OCDBT data files), not orbax's metadata (which orbax checks itself).
    files = sorted(p for p in path.glob("ocdbt.process_*/d/*") if p.is_file())
    assert files
    for f in files:
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))


# A failed tensorstore read leaves orbax callbacks for a closed event loop: harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["flipped_bits", "truncated", "foreign_config"])
def test_damaged_or_foreign_checkpoint_is_one_clear_error_and_nothing_is_touched(reference, tmp_path, damage):
    w = _copy(reference, tmp_path)
    latest = w / "checkpoints" / str(EPOCHS)
    if damage == "flipped_bits":  # silently read back by orbax: caught by the checksum
        _damage(latest / "params")
        message = "is corrupt: its params do not match the checksum"
    elif damage == "truncated":
        for f in (latest / "train_state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
        message = "is corrupt: its files cannot be read back .*; move that checkpoint directory away"
    else:
        meta = latest / "meta" / "metadata"
        meta.write_text(json.dumps(dict(json.loads(meta.read_text()), config_fingerprint="0123456789abcdef")))
        message = "was written under a different config"
    before = _snapshot(w)
    cfg = config_lib.load_config("tiny", [f"train.num_epochs={EPOCHS + 1}"])
    with pytest.raises(errors.CheckpointError, match=message):
        _train(cfg, w)
    if damage != "truncated":  # vaegen.load restores no train state
        with pytest.raises(errors.CheckpointError):
            vaegen.load(w)
    assert _snapshot(w) == before


def test_checkpoints_are_never_unpickled(reference, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    run = vaegen.load(reference)
    assert run.epoch == EPOCHS and all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(run.variables))


# --- workdirs ----------------------------------------------------------------------------------

def test_unwritable_or_file_workdir_is_one_clear_error(tmp_path, monkeypatch):
    cfg = config_lib.load_config("tiny", ["train.num_epochs=1"])
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(errors.WorkdirError, match="is a file, not a directory"):
        _train(cfg, blocker)
    with pytest.raises(errors.WorkdirError, match="cannot create workdir"):
        _train(cfg, blocker / "run")
    assert blocker.read_text() == "mine"
    # A directory without write permission (checked with access(2); root may write anywhere,
    # so the permission check itself is exercised through it).
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if pathlib.Path(p) == locked else real_access(p, mode))
    with pytest.raises(errors.WorkdirError, match="not writable"):
        _train(cfg, locked / "run")
    assert list(locked.iterdir()) == []


def test_workdir_trained_on_other_data_is_refused(reference, tmp_path):
    w = _copy(reference, tmp_path)
    before = _snapshot(w)
    cfg = config_lib.load_config("tiny", [f"train.num_epochs={EPOCHS}"])
    splits = data_lib.load_splits(schema.to_spec(cfg).data)
    other = dataclasses.replace(splits, train=255 - splits.train)
    with pytest.raises(errors.WorkdirError, match="trained on other data"):
        _train(cfg, w, splits=other)
    assert _snapshot(w) == before


def test_gradient_clipping_bounds_the_global_norm():
    spec = schema.to_spec(config_lib.load_config("tiny", ["optim.optimizer=sgd", "optim.learning_rate=1.0",
                                                          "optim.grad_clip_norm=2.0"]))
    opt = train_lib.make_optimizer(spec.optim, steps_per_epoch=10)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full(3, 100.0), "b": jnp.full((2, 2), -50.0)}
    updates, _ = opt.update(grads, opt.init(params), params)
    assert float(optax.global_norm(updates)) == pytest.approx(2.0, rel=1e-6)
    small = jax.tree_util.tree_map(lambda g: g * 1e-3, grads)  # below the threshold: untouched
    updates, _ = opt.update(small, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["a"]), -np.asarray(small["a"]), rtol=1e-6)
