"""Files of a fitted recipe: written through a temporary file and a rename, read with one line
naming the file when it is damaged."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import zipfile
from typing import Any, Iterable

import numpy as np

from vaegen.errors import RecipeError
from vaegen.train import faults as faults_lib
from vaegen.train import workdir as workdir_lib


def write_json(path: pathlib.Path, record: dict) -> None:
    """``record`` as JSON at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(path, json.dumps(record, indent=2, default=float) + "\n", kind="expost")


def write_npz(path: pathlib.Path, **arrays: np.ndarray) -> None:
    """``arrays`` as an ``.npz`` at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    try:
        faults_lib.before_write("expost", path)
        np.savez(tmp, **arrays)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: pathlib.Path, *, remedy: str) -> Any:
    """The JSON in ``path``; a damaged file is one line (:class:`vaegen.errors.RecipeError`) naming it
    and ``remedy``."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path} is damaged (not JSON: {e}); {remedy}") from None


def read_npz(path: pathlib.Path, keys: Iterable[str], *, remedy: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``; a damaged or incomplete file is one line."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in keys}
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RecipeError(f"{path} is damaged ({type(e).__name__}: {e}); {remedy}") from None


def keep_aside(directory: pathlib.Path, names: Iterable[str]) -> list[pathlib.Path]:
    """Renames the files or directories ``names`` in ``directory`` to ``<stem>.<n><suffix>`` with the
    first free ``n`` (nothing is deleted); returns the new paths."""
    moved = []
    for name in names:
        path = directory / name
        if not path.exists():
            continue
        stem, suffix = (path.stem, path.suffix) if path.is_file() else (path.name, "")
        n = 1
        while (directory / f"{stem}.{n}{suffix}").exists():
            n += 1
        target = directory / f"{stem}.{n}{suffix}"
        os.replace(path, target)
        moved.append(target)
    return moved
