"""A run's workdir and the files that describe it.

``config.json`` (the run's config, in the shape of the typed run spec), ``run.json`` (dataset,
shapes, versions, devices, and the modules of any user-registered component), ``metrics.jsonl``
(one line per epoch), ``checkpoints/``, ``interrupted/``, ``best/``, and ``.vaegen.lock`` while a
process writes into the run (:func:`lock`).

Every check runs before anything is written: :func:`check` decides whether a workdir can hold a
run (a new one, or the same run resumed) without writing; nothing here deletes what a workdir
holds.  A ``config.json`` written by vaegen 0.1 (a flat config) is read through
:func:`vaegen.train.legacy.translate` and never rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import platform
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Mapping

import distrax
import flax
import jax
import numpy as np
import optax
import orbax.checkpoint

from vaegen import files as files_lib
from vaegen.errors import ConfigError, WorkdirError
from vaegen.registry import parse, selected_components, to_mapping
from vaegen.spec.run import RunSpec
from vaegen.train import faults as faults_lib
from vaegen.train import legacy

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"

# Keys that may differ between a run and its resumption (they do not change the result of the
# steps already taken).
RESUMABLE_KEYS = ("train.num_epochs", "train.progress", "train.eval_every_epochs",
                  "train.checkpoint_every_epochs", "train.keep_checkpoints", "eval.", "gaps.",
                  "train.steps_per_call", "train.max_consecutive_skips", "train.handle_signals",
                  "train.tensorboard", "train.tensorboard_images", "train.latent_health_examples")


# --- configs as mappings ---------------------------------------------------------------------------

def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested mapping (tuples as lists)."""
    out: dict[str, Any] = {}

    def rec(node, prefix):
        for k, v in node.items():
            if isinstance(v, Mapping):
                rec(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v

    rec(config, "")
    return out


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in ignore)


def differences(a: Mapping[str, Any], b: Mapping[str, Any], *, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable differences ``key: a -> b`` between two configs (nested mappings), skipping
    ``ignore`` (exact keys, or prefixes ending in '.')."""
    fa, fb = flatten(a), flatten(b)
    ignore = tuple(ignore)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if not _ignored(k, ignore) and fa.get(k) != fb.get(k)]


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A hash of everything in a config (a nested mapping: a spec's :func:`vaegen.registry.to_mapping`
    or a ``config.json`` as stored) that determines the trajectory of a run, i.e. all keys but
    :data:`RESUMABLE_KEYS`."""
    flat = {k: v for k, v in flatten(config).items() if not _ignored(k, RESUMABLE_KEYS)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_json(spec: RunSpec) -> str:
    """The ``config.json`` of a run spec."""
    return json.dumps(to_mapping(spec), indent=2, sort_keys=True, default=list)


def read_stored(path: pathlib.Path) -> dict[str, Any]:
    """A stored ``config.json`` as written (a JSON mapping); a file that is not one is a
    :class:`vaegen.errors.WorkdirError` naming it."""
    try:
        stored = json.loads(path.read_text())
    except IsADirectoryError:
        raise WorkdirError(f"{path} is not a vaegen config (a directory); restore it, or use a new workdir") from None
    except UnicodeDecodeError as e:
        raise WorkdirError(f"{path} is not a vaegen config (not text: {e.reason}); restore it, or use a new "
                           "workdir") from None
    except ValueError as e:
        raise WorkdirError(f"{path} is not a vaegen config (invalid JSON: {e}); restore it, or use a new workdir") from None
    if not isinstance(stored, dict):
        raise WorkdirError(f"{path} is not a vaegen config (a JSON {type(stored).__name__}, not a mapping); restore "
                           "it, or use a new workdir")
    return stored


def current_shape(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config in the current shape (a 0.1 config translated, see :mod:`vaegen.train.legacy`)."""
    return legacy.translate(stored) if legacy.is_legacy(stored) else dict(stored)


def parse_stored(spec_type: type[RunSpec], path: pathlib.Path) -> RunSpec:
    """The typed run spec of a stored ``config.json`` (keys added since it was written take their
    defaults); ConfigError or WorkdirError naming the file if it cannot be one."""
    stored = read_stored(path)
    try:
        return parse(spec_type, current_shape(stored))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# --- the checks, before anything is written -----------------------------------------------------------

def check_location(workdir: pathlib.Path) -> None:
    """:class:`vaegen.errors.WorkdirError` if ``workdir`` is a file, lies under a file, or cannot be
    written (or created).  Writes nothing."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkdirError(f"cannot create workdir {workdir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == workdir else f" ({existing} is not writable)"
        raise WorkdirError(f"workdir {workdir} is not writable{where}; choose another --workdir")


def check_writable(path: pathlib.Path, *, option: str = "--out", default_name: str | None = None) -> None:
    """:class:`vaegen.errors.WorkdirError` if the file ``path`` cannot be written (it is a
    directory -- ``default_name`` then gives the example of a file in it --, its directory lies
    under a file, is read-only, or refuses a probe file), before any work is done.  A probe file
    is created with ``O_EXCL`` and removed at once, so nothing is left behind."""
    path = pathlib.Path(path)
    if path.is_dir():
        if default_name:
            raise WorkdirError(f"cannot write {path}: it is a directory; pass {option} a file path, e.g. {option} "
                               f"{path / default_name}")
        raise WorkdirError(f"cannot write {path}: it is a directory; move it away, or pass {option} PATH to write "
                           "elsewhere")
    directory = path.parent
    while not directory.exists() and directory != directory.parent:  # created by the writer
        directory = directory.parent
    if not directory.is_dir():
        raise WorkdirError(f"cannot write {path}: {directory} is not a directory; pass {option} PATH to write elsewhere")
    problem = None
    if not os.access(directory, os.W_OK | os.X_OK):
        problem = "not writable"
    else:
        probe = directory / f".vaegen-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            probe.unlink()
        except OSError as e:
            problem = e.strerror.lower() if e.strerror else type(e).__name__
    if problem is not None:
        raise WorkdirError(f"cannot write {path}: {directory} is {problem} (a read-only workdir?); "
                           f"pass {option} PATH to write the result elsewhere")


def check(workdir: pathlib.Path, spec: RunSpec) -> bool:
    """Returns True if the workdir holds this run already (resume); raises
    :class:`vaegen.errors.WorkdirError` if it cannot be used.  Writes nothing."""
    check_location(workdir)
    if not workdir.exists():
        return False
    stored = workdir / CONFIG_FILE
    if stored.exists():
        try:
            previous = parse_stored(type(spec), stored)
        except ConfigError as e:
            raise WorkdirError(f"{stored} is not a vaegen config this version can read ({e}); use a new --workdir") from None
        diff = differences(to_mapping(previous), to_mapping(spec))
        if diff:
            raise WorkdirError(
                f"workdir {workdir} belongs to a run with a different config ({'; '.join(diff)}); "
                "use a new --workdir, or resume with the same config"
            )
        return True
    if any(p.name not in (LOCK_FILE, _TAKEOVER_FILE) for p in workdir.iterdir()):
        raise WorkdirError(
            f"workdir {workdir} is not empty and holds no vaegen run (no config.json); "
            "choose an empty or new --workdir so nothing in it is overwritten"
        )
    return False


# --- the lock: one process writes into a run at a time -----------------------------------------------

LOCK_FILE = ".vaegen.lock"
_TAKEOVER_FILE = ".vaegen.lock.takeover"
_TAKEOVER_STALE_SECONDS = 60.0  # a takeover guard older than this was left by a killed process
_EMPTY_LOCK_STALE_SECONDS = 10.0  # a lock file with no record yet older than this, likewise
_held: dict[str, int] = {}  # workdirs this process holds, with their nesting depth (re-entrant)
_held_guard = threading.Lock()
_ACTIVITIES = {"train": "training", "gaps": "writing inference gaps", "expost": "writing an ex-post prior"}


def _read_id(path: str) -> str | None:
    try:
        return pathlib.Path(path).read_text().strip() or None
    except OSError:
        return None


def _this_host() -> dict[str, Any]:
    """``host`` (the name), ``machine_id`` (stable across reboots, where systemd keeps one) and
    ``boot_id`` (new at every boot): two machines of the same name are told apart by the first,
    a holder from before a reboot by the second."""
    return {"host": socket.gethostname(), "machine_id": _read_id("/etc/machine-id"),
            "boot_id": _read_id("/proc/sys/kernel/random/boot_id")}


def _same_host(record: dict[str, Any], here: dict[str, Any]) -> bool:
    if record.get("host") != here["host"]:
        return False
    theirs, ours = record.get("machine_id"), here["machine_id"]
    return theirs == ours or theirs is None or ours is None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), which tells a
    live process from a later one that reuses its pid; ``None`` where unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


_UNREADABLE = "unreadable"  # the key of a lock record that could not be read (what was found instead)


def read_lock(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The record of the process holding ``workdir`` (``{"pid", "host", "machine_id", "boot_id",
    "started", "command", "proc_start"}``), ``{}`` for an empty lock file (a process between
    creating it and writing its record), ``{"unreadable": WHAT}`` for a lock file whose content
    is not a record (damaged, or written by something else), ``None`` if unlocked."""
    path = pathlib.Path(workdir) / LOCK_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return {_UNREADABLE: "a directory"}
    except OSError as e:
        return {_UNREADABLE: f"cannot be read: {e.strerror or type(e).__name__}"}
    if not raw.strip():
        return {}
    try:
        record = json.loads(raw.decode())
    except ValueError:  # not UTF-8, or not JSON
        return {_UNREADABLE: f"not a lock record: {raw[:40]!r}{'...' if len(raw) > 40 else ''}"}
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return {_UNREADABLE: f"not a lock record: a JSON {type(record).__name__} without a pid"}
    return record


def _holder_is_gone(path: pathlib.Path, record: dict[str, Any]) -> bool:
    """True if the process that wrote the lock ``record`` is known to be dead: it ran on this
    host and its pid is gone (or belongs to a later process).  A holder on another host is never
    judged gone (there is no way to tell)."""
    if not record or _UNREADABLE in record:  # killed between creating the file and writing its record, being
        try:                                  # written now, or damaged: gone once it is old enough
            return time.time() - path.stat().st_mtime > _EMPTY_LOCK_STALE_SECONDS
        except OSError:
            return False
    here = _this_host()
    if not _same_host(record, here) or not isinstance(record.get("pid"), int):
        return False
    if record.get("boot_id") and here["boot_id"] and record["boot_id"] != here["boot_id"]:
        return True  # written before this host last booted
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return True
    start, now = record.get("proc_start"), _process_start(pid)
    return start is not None and now is not None and now != start


def _busy(workdir: pathlib.Path, record: dict[str, Any]) -> WorkdirError:
    if _UNREADABLE in record:
        return WorkdirError(f"the lock of {workdir}, {workdir / LOCK_FILE}, holds no readable record "
                            f"({record[_UNREADABLE]}) and is younger than {_EMPTY_LOCK_STALE_SECONDS:.0f} s; wait "
                            "and run the command again (it is then taken over), or remove it if no vaegen process "
                            "uses this workdir")
    if not record:
        return WorkdirError(f"another vaegen process is starting in {workdir} (its lock {workdir / LOCK_FILE} has no "
                            "record yet); wait for it or use another workdir")
    activity = _ACTIVITIES.get(record.get("command"), f"running `vaegen {record.get('command')}`")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    remote = "" if _same_host(record, _this_host()) else (
        f" (it runs on another host, so vaegen cannot tell whether it is still alive: if it is not, remove "
        f"{workdir / LOCK_FILE})")
    return WorkdirError(f"another vaegen process (pid {record.get('pid')}, host {record.get('host')}) is {activity} "
                        f"in {workdir} since {since}; wait for it or use another workdir{remote}")


def _take_over(path: pathlib.Path, stale: dict[str, Any]) -> bool:
    """Removes the stale lock ``stale`` at ``path`` if it is still the one there; one process at
    a time (a guard file created with ``O_EXCL``).  True if this call removed it."""
    guard = path.with_name(_TAKEOVER_FILE)
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_SECONDS:
                guard.unlink()
        time.sleep(0.05)
        return False
    try:
        if read_lock(path.parent) == stale:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as e:
                raise WorkdirError(f"cannot remove the stale lock {path} ({e.strerror}); remove it by hand if no "
                                   f"vaegen process uses {path.parent}, or use another workdir") from None
            return True
        return False
    finally:
        with contextlib.suppress(OSError):
            guard.unlink()


def _acquire(workdir: pathlib.Path, command: str) -> dict[str, Any]:
    path = workdir / LOCK_FILE
    record = {"pid": os.getpid(), **_this_host(), "started": time.time(), "command": command,
              "proc_start": _process_start(os.getpid())}
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_lock_is_a_file(path)
            holder = read_lock(workdir)
            if holder is None:  # released in the meantime
                continue
            if not _holder_is_gone(path, holder):
                raise _busy(workdir, holder) from None
            if _take_over(path, holder):
                if _UNREADABLE in holder or not holder:
                    what = holder.get(_UNREADABLE, "empty")
                    print(f"vaegen: took over the lock of {workdir}: {path} held no record of a process ({what}) "
                          f"for more than {_EMPTY_LOCK_STALE_SECONDS:.0f} s", file=sys.stderr, flush=True)
                else:
                    print(f"vaegen: took over the lock of {workdir} from pid {holder.get('pid')} (host "
                          f"{holder.get('host')}, `vaegen {holder.get('command')}`), which is no longer running",
                          file=sys.stderr, flush=True)
            continue  # try to create it again
        except OSError as e:
            raise WorkdirError(f"cannot lock workdir {workdir} (creating {path}: {e.strerror}); "
                               "choose another --workdir") from None
        else:
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            os.close(fd)
            return record
    raise _busy(workdir, read_lock(workdir) or {})


def _check_lock_is_a_file(path: pathlib.Path) -> None:
    """A lock path that is not a regular file (a directory, a link, a socket) is never taken over."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "not a file"
        raise WorkdirError(f"cannot lock workdir {path.parent}: {path} is {what}, not a vaegen lock file; remove it "
                           "if no vaegen process uses this workdir, or use another workdir")


def _release(workdir: pathlib.Path, record: dict[str, Any]) -> None:
    """Removes the lock if it is still this process's (never another's)."""
    if read_lock(workdir) == record:
        with contextlib.suppress(FileNotFoundError):
            (workdir / LOCK_FILE).unlink()


@contextlib.contextmanager
def lock(workdir: str | os.PathLike, command: str = "train") -> Iterator[None]:
    """Holds ``workdir`` for this process while the block runs: the ``vaegen`` commands that write
    into a run (``train``, ``gaps``, ``expost``) refuse to start in a workdir another process
    holds, with one line naming it.

    The lock is a file, ``<workdir>/.vaegen.lock``, created with ``O_CREAT | O_EXCL`` and holding
    ``{"pid", "host", "machine_id", "boot_id", "started", "command", "proc_start"}``; it is
    removed when the block exits, whichever way (an exception, SIGINT, SIGTERM -- through the
    trainer in its epochs, as ``SystemExit(143)`` elsewhere --, ``sys.exit``).  A process killed with SIGKILL leaves it behind: the next process on
    the **same host** (name and machine id) sees that the pid is gone, a zombie, or reused by a
    later process, or that the host has rebooted since, and takes it over, saying so on stderr.  A lock written
    on another host is never taken over (remove the file once that process is gone).  Exclusive
    creation is atomic on local filesystems and on NFSv3+ (``O_EXCL`` is part of the protocol);
    filesystems without it (some FUSE or object-store mounts) give no guarantee.

    Re-entrant within a process.  The location is checked first (a file, or not writable:
    :class:`vaegen.errors.WorkdirError`, nothing written); a workdir this call creates and that is
    still empty when it exits is removed again.
    """
    workdir = pathlib.Path(workdir)
    key = os.path.realpath(os.path.abspath(workdir))
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    check_location(workdir)
    missing = []
    parent = workdir
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    create(workdir)
    try:
        record = _acquire(workdir, command)
    except BaseException:
        _remove_empty(missing)
        raise
    with _held_guard:
        _held[key] = 1
    try:
        with _sigterm_exits():
            yield
    finally:
        with _held_guard:
            del _held[key]
        _release(workdir, record)
        _remove_empty(missing)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While a lock is held, SIGTERM (whose default is to die at once, skipping every ``finally``)
    raises ``SystemExit(143)``, so the lock is released; the trainer's own handling of SIGTERM
    (save, then stop) takes precedence during its epochs.  Main thread and default handler only."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def exit_now(signum, frame):
        print(f"vaegen: stopped by {signal.Signals(signum).name}; what was written before is kept", file=sys.stderr,
              flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_empty(directories: list[pathlib.Path]) -> None:
    """Removes the directories this process created, deepest first, while they are empty."""
    for d in directories:
        try:
            d.rmdir()
        except OSError:
            return


def create(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror}") from None


def data_fingerprint(splits: Any) -> str:
    """A hash of the training and validation data (shapes and bytes): a workdir trained on
    other data is not resumed."""
    h = hashlib.sha256()
    for name in ("train", "validation"):
        x = np.ascontiguousarray(getattr(splits, name))
        h.update(f"{name}{x.dtype.str}{x.shape};".encode())
        h.update(memoryview(x).cast("B"))
    return h.hexdigest()[:16]


def read_run_json(path: pathlib.Path) -> dict[str, Any]:
    """A stored ``run.json`` (a JSON mapping); a file that is not one is a
    :class:`vaegen.errors.WorkdirError` naming it, as for ``config.json`` (:func:`read_stored`)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = f"invalid JSON: {e}" if isinstance(e, ValueError) and not isinstance(e, UnicodeDecodeError) else (
            getattr(e, "strerror", None) or getattr(e, "reason", None) or type(e).__name__)
        raise WorkdirError(f"{path} is not a vaegen run description ({reason}); restore it, or use a new workdir") from None
    if not isinstance(info, dict):
        raise WorkdirError(f"{path} is not a vaegen run description (a JSON {type(info).__name__}, not a mapping); "
                           "restore it, or use a new workdir")
    return info


def check_run_json(workdir: pathlib.Path, fingerprint: str) -> None:
    path = workdir / RUN_FILE
    if not path.exists():
        return
    previous = read_run_json(path).get("data_fingerprint")
    if previous is not None and previous != fingerprint:
        raise WorkdirError(
            f"workdir {workdir} belongs to a run trained on other data (data fingerprint {previous} != "
            f"{fingerprint}); use a new --workdir"
        )


# --- writing -------------------------------------------------------------------------------------------

def write_atomic(path: pathlib.Path, text: str, *, kind: str = "config") -> None:
    """Writes ``path`` through :func:`vaegen.files.write_atomic` (temporary file, fsync, rename,
    the fault hook): a failed write (a full disk) leaves the previous file as it was and no
    temporary file behind; the ``OSError`` is raised as it is, for the trainer's own message."""
    files_lib.write_atomic(path, text, kind=kind, report_disk_full=False)


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "distrax": distrax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "numpy": np.__version__,
    }


def user_components(spec: RunSpec) -> list[dict[str, str]]:
    """The components of ``spec`` that vaegen did not register itself (a user's module), as
    recorded in ``run.json``: ``{"config_key", "kind", "name", "module", "file"}``."""
    return [{"config_key": key, "kind": sel.kind, "name": sel.name, "module": sel.component.module,
             "file": sel.component.file}
            for key, sel in selected_components(spec) if not sel.component.builtin]


def append_jsonl(path: pathlib.Path, record: dict) -> None:
    """Appends one line (a line torn by a full disk or a kill is dropped by :func:`read_jsonl`
    and by :func:`truncate_metrics` on resume)."""
    faults_lib.before_write("metrics", path)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a torn last line, from a process killed while
    writing it, is left out)."""
    records = []
    for line in _text(path).splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _text(path: pathlib.Path) -> str:
    """A JSON-lines file as text; bytes that are not UTF-8 (a line damaged on disk) become U+FFFD,
    so that line is dropped as a torn one, not the whole file refused."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except IsADirectoryError:
        raise WorkdirError(f"{path} is a directory, not the run's JSON-lines log; move it away, or use a new "
                           "workdir") from None


def truncate_metrics(path: pathlib.Path, epoch: int) -> None:
    """Drops lines of epochs after ``epoch`` (left by a run that died before checkpointing
    them, or stopped on non-finite steps) and torn lines; they are recomputed, identically,
    by the resumed run."""
    if not path.exists():
        return
    text = _text(path)
    lines = [l for l in text.splitlines() if l.strip()]
    keep = []
    for l in lines:
        try:
            record = json.loads(l)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("epoch", 0) <= epoch and "halted" not in record:
            keep.append(l)
    if len(keep) != len(lines) or not text.endswith("\n") and lines:
        write_atomic(path, "".join(l + "\n" for l in keep))


def last_metrics(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    records = read_jsonl(path)
    return records[-1] if records else {}
