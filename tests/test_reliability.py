"""Reliability: one process writes into a run at a time (the workdir lock), full disks, read-only
workdirs, and damaged or foreign files.  Every failure is one line, and what the workdir held
before is still there, byte for byte (append-only logs may only have grown)."""

import contextlib
import errno
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import vaegen
from vaegen import cli, errors
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen.model import latent as model_lib
from vaegen.registry import to_mapping
from vaegen.runs import run as run_lib
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import faults
from vaegen.train import trainer as train_lib
from vaegen.train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3
APPEND_ONLY = ("metrics.jsonl", "tensorboard/")


def _snapshot(path):
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _assert_kept(before, after):
    """Every file of ``before`` is in ``after`` with the same bytes (an append-only log may have grown)."""
    for name, data in before.items():
        assert name in after, f"{name} was lost"
        if name.startswith(APPEND_ONLY):
            assert after[name].startswith(data), f"{name} was overwritten"
        else:
            assert after[name] == data, f"{name} was overwritten"


def _no_leftovers(w):
    w = pathlib.Path(w)
    left = [p for p in w.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert not left, left
    assert not (w / workdir_lib.LOCK_FILE).exists()


def _config(epochs=EPOCHS, *extra):
    """tiny, keeping every checkpoint (so one can be moved away to fall back to the one before)."""
    return config_lib.load_config("tiny", [f"train.num_epochs={epochs}", f"train.keep_checkpoints={EPOCHS}", *extra])


def _train(cfg, w, **kw):
    return train_lib.train_and_evaluate(schema.to_spec(cfg), w, **kw)


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_line(err):
    assert err.startswith("vaegen: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run of EPOCHS epochs (checkpoints of its last two epochs)."""
    w = tmp_path_factory.mktemp("reference") / "run"
    _train(_config(), w)
    return w


@pytest.fixture
def at_epoch_2(reference, tmp_path):
    """A copy of the reference as it was after two epochs."""
    w = tmp_path / "run"
    shutil.copytree(reference, w)
    shutil.rmtree(w / "checkpoints" / str(EPOCHS))
    lines = (w / "metrics.jsonl").read_text().splitlines(keepends=True)
    (w / "metrics.jsonl").write_text("".join(lines[:EPOCHS - 1]))
    return w


def _sleeper():
    return subprocess.Popen(["sleep", "120"])


def _hold(w, pid, host=None, command="train"):
    """A lock record as a process ``pid`` of ``host`` writes it."""
    record = {"pid": pid, **workdir_lib._this_host(), "started": time.time(), "command": command,
              "proc_start": workdir_lib._process_start(pid)}
    if host:
        record.update(host=host, machine_id="0" * 32)
    (pathlib.Path(w) / workdir_lib.LOCK_FILE).write_text(json.dumps(record) + "\n")


# --- the workdir lock ------------------------------------------------------------------------------

def test_the_lock_is_released_on_every_exit_path_and_is_reentrant(tmp_path):
    w = tmp_path / "new" / "run"
    lock = w / workdir_lib.LOCK_FILE
    for exc in (RuntimeError, KeyboardInterrupt, SystemExit):
        with pytest.raises(exc):
            with workdir_lib.lock(w):
                assert json.loads(lock.read_text())["pid"] == os.getpid()
                with workdir_lib.lock(w, "gaps"):  # the same process: re-entrant
                    pass
                assert lock.exists()
                raise exc
        assert not lock.exists()
        assert not (tmp_path / "new").exists()  # created for the lock, left empty: removed again
    with pytest.raises(SystemExit) as info:  # SIGTERM, whose default would skip every `finally`
        with workdir_lib.lock(w):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.code == 128 + signal.SIGTERM and not lock.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    w.mkdir(parents=True)
    with workdir_lib.lock(w):
        (w / "config.json").write_text("{}")
    assert sorted(p.name for p in w.iterdir()) == ["config.json"]


def test_a_live_holder_is_named_and_a_dead_one_taken_over(at_epoch_2, capsys):
    w, host = at_epoch_2, socket.gethostname()
    sleeper = _sleeper()
    try:
        _hold(w, sleeper.pid)
        before = _snapshot(w)
        message = f"another vaegen process (pid {sleeper.pid}, host {host}) is training in {w}"
        for argv in (["train", "--config", "tiny", "--workdir", w, f"--config.train.num_epochs={EPOCHS - 1}"],
                     ["gaps", "--workdir", w], ["expost", "--workdir", w]):
            code, err = _cli(argv, capsys)
            assert code == 2 and message in _one_line(err) and "wait for it or use another workdir" in err, err
        assert _snapshot(w) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # A holder on another host cannot be judged dead: refused, with how to clear it.
    _hold(w, 1, host="elsewhere.example")
    with pytest.raises(errors.WorkdirError, match=f"host elsewhere.example.*remove {w}/.vaegen.lock"):
        _train(_config(EPOCHS - 1), w)
    # The sleeper is gone (as after SIGKILL): its lock is taken over, the run resumes, the lock goes.
    _hold(w, sleeper.pid)
    _train(_config(EPOCHS - 1), w)
    assert f"took over the lock of {w} from pid {sleeper.pid}" in capsys.readouterr().err
    _no_leftovers(w)
    # A pid reused by a later process (its start time differs), or a lock from before the host
    # last booted, does not hold the workdir either.
    for stale in ({"proc_start": "1"}, {"boot_id": "before-the-last-boot"}):
        _hold(w, os.getpid())
        record = json.loads((w / workdir_lib.LOCK_FILE).read_text())
        (w / workdir_lib.LOCK_FILE).write_text(json.dumps(dict(record, **stale)))
        with workdir_lib.lock(w):
            assert json.loads((w / workdir_lib.LOCK_FILE).read_text())["started"] > record["started"]
        _no_leftovers(w)
    # The holder itself, alive on this host: refused (another thread or a stray process of the same pid).
    _hold(w, os.getppid())
    with pytest.raises(errors.WorkdirError, match=f"pid {os.getppid()}"):
        _train(_config(EPOCHS - 1), w)


@pytest.mark.parametrize("content", [b"garbage", b"", b"[1, 2]", b"\xff\xfe"], ids=["text", "empty", "json", "binary"])
def test_a_lock_without_a_record_is_refused_while_young_and_taken_over_with_a_line_when_old(content, at_epoch_2,
                                                                                             capsys):
    w = at_epoch_2
    lock = w / workdir_lib.LOCK_FILE
    lock.write_bytes(content)
    before = _snapshot(w)
    code, err = _cli(["train", "--config", "tiny", "--workdir", w, f"--config.train.num_epochs={EPOCHS - 1}"], capsys)
    assert code == 2 and (f"{lock}, holds no readable record" in _one_line(err) if content else
                          f"another vaegen process is starting in {w}" in _one_line(err)), err
    assert "wait" in err and _snapshot(w) == before
    old = time.time() - 60
    os.utime(lock, (old, old))  # as a process killed while writing it long ago leaves it
    with workdir_lib.lock(w):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vaegen: took over the lock of {w}: {lock} held no record of a "
                                                   "process (" + ("empty" if not content else "not a lock record")), err
    _no_leftovers(w)
    assert _snapshot(w) == {k: v for k, v in before.items() if k != workdir_lib.LOCK_FILE}


# JAX warns about fork in a multithreaded process; the children run none of its code.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_processes_racing_for_a_stale_lock_never_hold_it_together(tmp_path):
    """Four forked processes (only the lock's own code runs in them) take a workdir 25 times each,
    starting from the stale lock of a dead process: inside, each creates a marker with O_EXCL,
    which fails if another process is inside too."""
    w = tmp_path / "run"
    w.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    _hold(w, dead.pid)
    marker, rounds = w / "inside", 25
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # the child: the lock's code only, then _exit (no JAX, no pytest teardown)
            status = 0
            try:
                done = 0
                while done < rounds:
                    try:
                        with workdir_lib.lock(w):
                            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                            time.sleep(0.001)
                            marker.unlink()
                            done += 1
                    except errors.WorkdirError:
                        time.sleep(0.001)
            except BaseException:
                status = 1
            os._exit(status)
        children.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0] * 4
    _no_leftovers(w)


@pytest.mark.slow
def test_two_trainers_in_one_workdir_real_processes(tmp_path):
    """A second `vaegen train` in a workdir a running one holds stops at once with one line, and
    the first is undisturbed (metrics.jsonl: each epoch once).  The first then meets a full disk
    when SIGTERM makes it write its checkpoint: one line, no thread tracebacks, lock released."""
    w = tmp_path / "run"
    argv = [sys.executable, "-m", "vaegen.cli", "train", "--config", "tiny", "--workdir", str(w),
            "--config.train.num_epochs=100000", "--config.train.checkpoint_every_epochs=100000"]
    env = dict(os.environ, **{faults.DISK_FULL_ENV: "checkpoint"})
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while workdir_lib.read_lock(w) is None:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        record = workdir_lib.read_lock(w)
        assert record["pid"] == first.pid
        assert second.returncode == 2, second.stderr[-2000:]
        assert _one_line(second.stderr) == (
            f"vaegen: error: another vaegen process (pid {first.pid}, host {socket.gethostname()}) is training in "
            f"{w} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['started']))}; "
            "wait for it or use another workdir\n")
        while not (w / "metrics.jsonl").exists():  # in its epochs, where SIGTERM means: save and stop
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 2
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    err = first.stderr.read()
    assert err.startswith("vaegen: SIGTERM received") and err.count("\n") == 2, err[-3000:]
    assert err.splitlines()[1].startswith(f"vaegen: error: no space left on device writing checkpoint {w}/checkpoints/")
    assert "no earlier checkpoint is in that directory (nothing was lost)" in err
    _no_leftovers(w)
    epochs = [json.loads(l)["epoch"] for l in (w / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))


# --- full disks ------------------------------------------------------------------------------------

def _fail_inside_orbax(monkeypatch):
    """ENOSPC from inside orbax's save, once the arrays are written into its temporary directory."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metadata")

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", full)
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "save", full)


@pytest.mark.parametrize("where", ["hook", "inside_orbax"])
def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes_exactly(
        where, reference, at_epoch_2, monkeypatch):
    w = at_epoch_2
    before = _snapshot(w)
    with pytest.MonkeyPatch.context() as mp:
        if where == "inside_orbax":
            _fail_inside_orbax(mp)
            context = contextlib.nullcontext()  # nothing injected by vaegen itself
        else:
            context = faults.disk_full("checkpoint", at=1)
        with context, pytest.raises(errors.DiskFullError) as info:
            _train(_config(), w)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"no space left on device writing checkpoint {(w / 'checkpoints' / str(EPOCHS)).absolute()}")
    assert f"the previous checkpoint {(w / 'checkpoints' / str(EPOCHS - 1)).absolute()} is kept" in msg
    assert "run the same command again" in msg
    _assert_kept(before, _snapshot(w))
    _no_leftovers(w)
    _train(_config(), w)  # space freed: the same command resumes, to the uninterrupted parameters
    a, b = vaegen.load(w), vaegen.load(reference)
    for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_full_disk_while_writing_metrics_is_one_line_and_keeps_the_checkpoints(at_epoch_2):
    w = at_epoch_2
    before = _snapshot(w)
    with faults.disk_full("metrics", at=1), pytest.raises(errors.DiskFullError) as info:
        _train(_config(), w)
    assert str(info.value) == (
        f"no space left on device writing {w / 'metrics.jsonl'}; the checkpoint of epoch {EPOCHS - 1} "
        f"({w / 'checkpoints' / str(EPOCHS - 1)}) and everything written before are kept, and the run resumes from "
        "it; free space on that device and run the same command again")
    _assert_kept(before, _snapshot(w))
    _no_leftovers(w)


def test_full_disk_while_writing_an_evaluation_or_a_figure_is_one_line(at_epoch_2, capsys):
    w = at_epoch_2
    (w / "eval.json").write_text('{"earlier": "evaluation"}\n')
    before = _snapshot(w)
    with faults.disk_full("eval"):
        code, err = _cli(["evaluate", "--workdir", w, "--estimators", "elbo", "--max-examples", "10", "--no-progress"],
                         capsys)
    assert code == 2 and _one_line(err).startswith(f"vaegen: error: no space left on device writing {w / 'eval.json'}; "
                                                   "the previous file is kept")
    with faults.disk_full("figure"):
        code, err = _cli(["sample", "--workdir", w, "--n", "4"], capsys)
    assert code == 2 and _one_line(err).startswith(f"vaegen: error: no space left on device writing {w / 'samples.png'}")
    assert _snapshot(w) == before
    _no_leftovers(w)


# --- read-only workdirs ----------------------------------------------------------------------------

def test_evaluate_in_a_read_only_workdir_stops_before_the_work_or_writes_to_out(at_epoch_2, tmp_path, capsys,
                                                                               monkeypatch):
    w = at_epoch_2
    before = _snapshot(w)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if pathlib.Path(p) == w else access(p, mode, **kw))
    loads = []
    real_load = run_lib.restore
    monkeypatch.setattr(run_lib, "restore", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    code, err = _cli(["evaluate", "--workdir", w, "--estimators", "elbo"], capsys)
    assert code == 2 and _one_line(err) == (f"vaegen: error: cannot write {w / 'eval.json'}: {w} is not writable (a "
                                            "read-only workdir?); pass --out PATH to write the result elsewhere\n")
    code, err = _cli(["gaps", "--workdir", w], capsys)
    assert code == 2 and "pass --out PATH" in _one_line(err)
    assert loads == []  # refused before the run was loaded, let alone evaluated
    out = tmp_path / "elsewhere" / "eval.json"
    code, err = _cli(["evaluate", "--workdir", w, "--estimators", "elbo", "--max-examples", "10", "--no-progress",
                      "--out", out], capsys)
    assert code == 0, err
    assert "elbo" in json.loads(out.read_text())["metrics"]
    assert _snapshot(w) == before


# --- damaged and foreign files ---------------------------------------------------------------------

@pytest.mark.parametrize("name, damage", [("config.json", "truncated"), ("config.json", "empty"),
                                          ("run.json", "truncated"), ("run.json", "a list")])
def test_a_damaged_config_or_run_json_is_the_same_line_everywhere(name, damage, at_epoch_2, capsys):
    w = at_epoch_2
    f = w / name
    f.write_text({"truncated": f.read_text()[:40], "empty": "", "a list": "[1, 2]"}[damage])
    before = _snapshot(w)
    with pytest.raises(errors.WorkdirError) as info:
        vaegen.load(w)
    line = f"vaegen: error: {info.value}\n"
    assert str(info.value).startswith(f"{f} is not a vaegen ") and "restore it, or use a new workdir" in line
    for argv in (["train", "--config", "tiny", "--workdir", w, f"--config.train.num_epochs={EPOCHS}"],
                 ["evaluate", "--workdir", w, "--out", w.parent / "out.json"]):
        code, err = _cli(argv, capsys)
        assert code == 2 and err == line, (argv[0], err)
    assert _snapshot(w) == before


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A checkpoint as a run of another config (latent_dim 3) writes it (its initial parameters:
    nothing to train)."""
    spec = schema.to_spec(_config(1, "model.latent_dim=3"))
    model = model_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    directory = tmp_path_factory.mktemp("foreign") / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(directory)
    ckpt.save(1, model_lib.init_params(model, jax.random.key(0), (8, 8, 1)), {"step": jnp.int32(0)},
              {"epoch": 1, "step": 0, "config_fingerprint": workdir_lib.config_fingerprint(to_mapping(spec))})
    ckpt.close()
    return directory / "1"


@pytest.mark.parametrize("damage", ["truncated_params", "foreign"])
def test_a_corrupt_or_foreign_checkpoint_names_itself_and_moving_it_away_falls_back(damage, at_epoch_2, foreign,
                                                                                   capsys):
    w = at_epoch_2
    latest = w / "checkpoints" / str(EPOCHS - 1)
    if damage == "truncated_params":
        for f in (latest / "params").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
        message = f"checkpoint {latest.absolute()} is corrupt"
    else:
        shutil.rmtree(latest)
        shutil.copytree(foreign, latest)
        message = f"checkpoint {latest.absolute()} was written under a different config"
    before = _snapshot(w)
    for call in (lambda: _train(_config(), w), lambda: vaegen.load(w)):
        with pytest.raises(errors.CheckpointError) as info:
            call()
        msg = str(info.value)
        assert message in msg and "\n" not in msg, msg
        assert "move that checkpoint directory away to fall back to an earlier one" in msg
        if damage == "foreign":
            assert "it comes from another run (copied from another workdir?)" in msg
    code, err = _cli(["evaluate", "--workdir", w, "--estimators", "elbo"], capsys)
    assert code == 2 and message in _one_line(err)
    assert _snapshot(w) == before
    # The advice works: with that checkpoint moved away, the run loads its earlier one.
    shutil.move(latest, w.parent / "moved_away")
    assert vaegen.load(w).epoch == EPOCHS - 2


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_even_when_orbax_races_at_exit(at_epoch_2, tmp_path):
    """orbax's reads of a damaged checkpoint leave tensorstore callbacks that fail ("Event loop is
    closed") on their own threads, sometimes before the error line is printed: five tries in a row
    (one process, where the race shows in most tries), each exactly one line on stderr."""
    latest = at_epoch_2 / "checkpoints" / str(EPOCHS - 1)
    for f in (latest / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    workdirs = [tmp_path / f"try{i}" for i in range(5)]
    for w in workdirs:
        shutil.copytree(at_epoch_2, w)
    before = {w: _snapshot(w) for w in workdirs}
    script = ("import sys\nfrom vaegen import cli\n"
              "print([cli.main(['train', '--config', 'tiny', '--workdir', w, '--config.train.num_epochs=%d', "
              "'--config.train.keep_checkpoints=%d']) for w in sys.argv[1:]])" % (EPOCHS, EPOCHS))
    proc = subprocess.run([sys.executable, "-c", script, *map(str, workdirs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.stdout.strip() == str([2] * 5), proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 5, proc.stderr[-3000:]
    for w, line in zip(workdirs, lines):
        assert line.startswith(f"vaegen: error: checkpoint {w / 'checkpoints' / str(EPOCHS - 1)} is corrupt"), line
        assert _snapshot(w) == before[w]


# --- results are kept ------------------------------------------------------------------------------

def test_an_evaluation_never_replaces_an_earlier_result_silently(at_epoch_2, capsys):
    w = at_epoch_2
    common = ["evaluate", "--workdir", w, "--estimators", "elbo", "--no-progress", "--per-example", w / "values.npz"]
    assert cli.main([str(a) for a in common + ["--max-examples", "10"]]) == 0
    out = capsys.readouterr().out
    assert f"wrote {w / 'eval.json'}\n" in out and f"wrote {w / 'values.npz'}\n" in out
    first = {name: (w / name).read_bytes() for name in ("eval.json", "values.npz")}
    before = _snapshot(w)
    assert cli.main([str(a) for a in common + ["--max-examples", "20"]]) == 0   # other settings
    out = capsys.readouterr().out
    assert f"wrote {w / 'eval.json'}; the result it replaced is kept as {w / 'eval.1.json'}" in out
    assert f"wrote {w / 'values.npz'}; the result it replaced is kept as {w / 'values.1.npz'}" in out
    assert (w / "eval.1.json").read_bytes() == first["eval.json"]
    assert (w / "values.1.npz").read_bytes() == first["values.npz"]
    assert json.loads((w / "eval.json").read_text())["num_examples"] == 20
    _assert_kept({k: v for k, v in before.items() if k not in first}, _snapshot(w))
    _no_leftovers(w)


# --- the Python API checks its inputs --------------------------------------------------------------

@pytest.mark.slow
def test_the_api_checks_x_and_n_unless_told_not_to(reference):
    run = vaegen.load(reference)
    x = run.split("test", max_examples=2)
    z = np.zeros((2, run.spec.model.latent_dim), np.float32)
    for bad, fragment in ((np.full_like(x, 3.0), "has values outside {0, 1}"),
                          (np.full_like(x, np.nan), "contains NaN or infinite values"),
                          (x[:, :4], "argument x has shape (2, 4, 8, 1), but observations of this model are [..., 8, 8, 1]")):
        for call, name in ((lambda v: run.log_joint(v, z), "log_joint"), (lambda v: run.encode(v), "encode")):
            with pytest.raises(ValueError, match="run.%s: argument x" % name) as info:
                call(bad)
            assert fragment in str(info.value)
    assert np.isfinite(np.asarray(run.log_joint(x, z))).all()
    assert not np.isfinite(np.asarray(run.log_joint(np.full_like(x, np.nan), z, check=False))).all()  # opted out
    assert np.isfinite(np.asarray(jax.jit(lambda v: run.log_joint(v, z))(x))).all()  # traced: not checked
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match="run.sample: argument n must be"):
            run.sample(jax.random.key(0), n)
    assert run.sample(jax.random.key(0), 3).shape == (3, 8, 8, 1)
    # Every other argument too, the same way: a one-line ArgumentError (a ValueError) naming it.
    d = run.latent_dim
    for call, fragment in (
            (lambda: run.log_joint(x, np.zeros((2, d + 1))), f"run.log_joint: argument z has shape (2, {d + 1})"),
            (lambda: run.log_likelihood(x, np.zeros((3, d))), "run.log_likelihood: argument z has shape (3, 4) and x"),
            (lambda: run.decode(np.zeros((1, d), complex)), "run.decode: argument z must be real numbers"),
            (lambda: run.log_px(x, k=2.5), "run.log_px: argument k must be an integer >= 1"),
            (lambda: run.log_px(x, k=0), "run.log_px: argument k must be >= 1"),
            (lambda: run.log_px(x, key=0), "run.log_px: argument key must be a JAX random key"),
            (lambda: run.log_px(x, proposal="q"), "run.log_px: proposal='q' is not one of posterior, prior"),
            (lambda: run.elbo(x, num_samples=1.5), "run.elbo: argument num_samples must be an integer"),
            (lambda: run.reconstruct(x, batch_size=0), "run.reconstruct: argument batch_size must be >= 1"),
            (lambda: run.split("test", max_examples=-1), "run.split: argument max_examples must be >= 0"),
            (lambda: run.split("tset"), "run.split: argument name must be 'validation' or 'test'"),
            (lambda: vaegen.evaluate(run, split="tset"), "vaegen.evaluate: argument split must be"),
            (lambda: vaegen.evaluate(run, max_examples=2.5), "vaegen.evaluate: argument max_examples must be an integer")):
        with pytest.raises(ValueError) as info:
            call()
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
        assert isinstance(info.value, errors.USER_ERRORS)
    # Shapes that broadcast are taken: S samples of z for each of N examples.
    assert run.log_joint(x, np.zeros((5, 2, d), np.float32)).shape == (5, 2)
    assert np.isfinite(np.asarray(run.log_px(x, k=np.int64(4)))).all()   # numpy integers are integers
    # A short description, not every parameter.
    assert len(repr(run)) < 300 and repr(run).startswith(f"Run(workdir='{reference}', epoch={EPOCHS}")


# --- the lock's cost ---------------------------------------------------------------------------------

def test_the_lock_costs_little(tmp_path):
    """Acquire + release (docs/reliability.md's table has the measured numbers)."""
    w = tmp_path / "run"
    w.mkdir()
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        with workdir_lib.lock(w):
            pass
    per_lock = (time.perf_counter() - t) / n
    assert per_lock < 0.05, per_lock  # a training step of the tiny model takes ~1 ms; one lock per command
