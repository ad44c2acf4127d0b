"""A run's workdir and the files that describe it.

``config.json`` (the run's config, in the shape of the typed run spec), ``run.json`` (dataset,
shapes, versions, devices, and the modules of any user-registered component), ``metrics.jsonl``
(one line per epoch), ``checkpoints/``, ``interrupted/``, ``best/``.

Every check runs before anything is written: :func:`check` decides whether a workdir can hold a
run (a new one, or the same run resumed) without writing; nothing here deletes what a workdir
holds.  A ``config.json`` written by vaegen 0.1 (a flat config) is read through
:func:`vaegen.train.legacy.translate` and never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
from typing import Any, Iterable, Mapping

import distrax
import flax
import jax
import numpy as np
import optax
import orbax.checkpoint

from vaegen.errors import ConfigError, WorkdirError
from vaegen.registry import parse, selected_components, to_mapping
from vaegen.train import legacy

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"

# Keys that may differ between a run and its resumption (they do not change the result of the
# steps already taken).
RESUMABLE_KEYS = ("train.num_epochs", "train.progress", "train.eval_every_epochs",
                  "train.checkpoint_every_epochs", "train.keep_checkpoints", "eval.", "gaps.",
                  "train.steps_per_call", "train.max_consecutive_skips", "train.handle_signals")


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


def to_json(spec: Any) -> str:
    """The ``config.json`` of a run spec."""
    return json.dumps(to_mapping(spec), indent=2, sort_keys=True, default=list)


def read_stored(path: pathlib.Path) -> dict[str, Any]:
    """A stored ``config.json`` as written (a JSON mapping); a file that is not one is a
    :class:`vaegen.errors.WorkdirError` naming it."""
    try:
        stored = json.loads(path.read_text())
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


def parse_stored(spec_type: type, path: pathlib.Path) -> Any:
    """The typed run spec of a stored ``config.json`` (keys added since it was written take their
    defaults); ConfigError or WorkdirError naming the file if it cannot be one."""
    stored = read_stored(path)
    try:
        return parse(spec_type, current_shape(stored))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# --- the checks, before anything is written -----------------------------------------------------------

def check(workdir: pathlib.Path, spec: Any) -> bool:
    """Returns True if the workdir holds this run already (resume); raises
    :class:`vaegen.errors.WorkdirError` if it cannot be used.  Writes nothing."""
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
    if any(workdir.iterdir()):
        raise WorkdirError(
            f"workdir {workdir} is not empty and holds no vaegen run (no config.json); "
            "choose an empty or new --workdir so nothing in it is overwritten"
        )
    return False


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


def check_run_json(workdir: pathlib.Path, fingerprint: str) -> None:
    path = workdir / RUN_FILE
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text()).get("data_fingerprint")
    except (ValueError, AttributeError):
        raise WorkdirError(f"{path} is not a vaegen run description; use a new --workdir") from None
    if previous is not None and previous != fingerprint:
        raise WorkdirError(
            f"workdir {workdir} belongs to a run trained on other data (data fingerprint {previous} != "
            f"{fingerprint}); use a new --workdir"
        )


# --- writing -------------------------------------------------------------------------------------------

def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def user_components(spec: Any) -> list[dict[str, str]]:
    """The components of ``spec`` that vaegen did not register itself (a user's module), as
    recorded in ``run.json``: ``{"config_key", "kind", "name", "module", "file"}``."""
    return [{"config_key": key, "kind": sel.kind, "name": sel.name, "module": sel.component.module,
             "file": sel.component.file}
            for key, sel in selected_components(spec) if not sel.component.builtin]


def append_jsonl(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a torn last line, from a process killed while
    writing it, is left out)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(path: pathlib.Path, epoch: int) -> None:
    """Drops lines of epochs after ``epoch`` (left by a run that died before checkpointing
    them, or stopped on non-finite steps) and torn lines; they are recomputed, identically,
    by the resumed run."""
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    keep = []
    for l in lines:
        try:
            record = json.loads(l)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("epoch", 0) <= epoch and "halted" not in record:
            keep.append(l)
    if len(keep) != len(lines) or not path.read_text().endswith("\n") and lines:
        write_atomic(path, "".join(l + "\n" for l in keep))


def last_metrics(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    records = read_jsonl(path)
    return records[-1] if records else {}
