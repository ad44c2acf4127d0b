"""Files of a fitted recipe, through vaegen's one writer and its one-line readers
(:mod:`vaegen.files`): a fit interrupted or a disk full leaves the previous files as they were, and
a damaged file is one line naming it and what to do."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable

import numpy as np

from vaegen import files as files_lib


def write_json(path: pathlib.Path, record: dict) -> None:
    """``record`` as JSON at ``path``, atomically."""
    files_lib.write_json(path, record, kind="eval", default=float)


def write_npz(path: pathlib.Path, **arrays: np.ndarray) -> None:
    """``arrays`` as an ``.npz`` at ``path``, atomically."""
    files_lib.write_npz(path, arrays, kind="eval")


def read_json(path: pathlib.Path, *, remedy: str, what: str = "record of a fitted recipe") -> Any:
    """The JSON in ``path``; missing or damaged: one line naming it and ``remedy``."""
    return files_lib.read_json(path, what=what, fix=remedy)


def read_npz(path: pathlib.Path, keys: Iterable[str], *, remedy: str, what: str = "fitted recipe") -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``: FileNotFoundError when there is none (nothing was
    fitted), one line naming it and ``remedy`` when it is damaged or lacks one."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: nothing was fitted there; {remedy}")
    return files_lib.load_npz(path, what=what, fix=remedy, names=tuple(keys))


def keep_aside(directory: pathlib.Path, names: Iterable[str]) -> list[pathlib.Path]:
    """Renames the files or directories ``names`` in ``directory`` to ``<stem>.<n><suffix>`` with the
    first free ``n`` (nothing is deleted or written); returns the new paths."""
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
