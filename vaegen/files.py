"""Every file vaegen writes goes through one writer, and every file it reads back through a reader
that fails on one line: near the bottom of the package, so any layer can use them.

Writing
    :func:`write_atomic` is the one writer: the bytes go to a temporary file in the same
    directory (created with ``O_EXCL``, a name of its own, ``.NAME.tmp-PID-N``), which is
    flushed, ``fsync``-ed and renamed over ``path`` (``os.replace``, atomic on POSIX), and the
    directory is ``fsync``-ed.  A failure at any point (a full disk, a kill) leaves ``path`` as it
    was -- the previous file, or none -- and no temporary file.  :func:`before_write`, the fault
    hook, is called first: tests make chosen writes fail there as on a full disk
    (:func:`disk_full`, or :data:`DISK_FULL_ENV` for a process of its own; the same functions are
    ``vaegen.train.faults.disk_full`` etc.).  A full disk is one line,
    :class:`vaegen.errors.DiskFullError`, naming the path and what was kept.

    ``keep_previous=True`` never replaces a result silently: an existing ``path`` with other
    content is kept as ``NAME.1.EXT`` (the next free number; a hard link, so it costs no space)
    before the new one takes its name, and the kept path is returned for the caller to report.

Reading
    :func:`read_json`, :func:`load_npz` and :func:`load_npy` read a file vaegen (or a user)
    wrote; a missing, truncated or damaged file, or one that holds something else, raises one
    line (:class:`vaegen.errors.DamagedFileError`, or the caller's class) naming the file, what is
    wrong with it, and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import pathlib
import threading
import zipfile
import zlib
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from vaegen.errors import DamagedFileError, DiskFullError

Data = str | bytes | Callable[[IO[bytes]], Any]
"""What :func:`write_atomic` writes: text (UTF-8), bytes, or a function that writes into a binary
file object (``lambda f: np.savez(f, ...)``, ``lambda f: fig.savefig(f, format="png")``)."""


# --- the fault hook: full disks, injected ---------------------------------------------------------

WRITE_KINDS = ("checkpoint", "metrics", "config", "eval", "figure", "table", "data")
"""What :func:`before_write` is told is being written: checkpoints, ``metrics.jsonl``,
``config.json``/``run.json``, evaluations (``eval.json``, per-example values, ex-post densities),
PNG figures, result tables and reports, data caches."""

DISK_FULL_ENV = "VAEGEN_FAULT_DISK_FULL"
"""Fault injection for a process of its own: ``KIND[@N],...`` (kinds of :data:`WRITE_KINDS`)
makes the N-th write of each KIND in the process (every one without ``@N``) fail with ENOSPC."""

_injected: dict[str, int] = {}
_writes: dict[str, int] = {}


def _injected_at(kind: str) -> int | None:
    if kind in _injected:
        return _injected[kind]
    for item in os.environ.get(DISK_FULL_ENV, "").split(","):
        name, _, at = item.strip().partition("@")
        if name == kind:
            return int(at) if at else 0
    return None


def before_write(kind: str, path: Any) -> None:
    """Called by vaegen before it writes ``path`` (a write of ``kind``): raises
    ``OSError(ENOSPC)`` where a full disk is injected (:func:`disk_full`, :data:`DISK_FULL_ENV`);
    does nothing otherwise."""
    at = _injected_at(kind)
    if at is None:
        return
    _writes[kind] = _writes.get(kind, 0) + 1
    if at == 0 or _writes[kind] == at:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def disk_full(kind: str, at: int = 0) -> Iterator[None]:
    """Within the block, the ``at``-th write of ``kind`` from now (1-based; 0: every one) fails
    with ENOSPC, as on a full disk."""
    if kind not in WRITE_KINDS:
        raise ValueError(f"disk_full: kind must be one of {', '.join(WRITE_KINDS)}, got {kind!r}")
    _injected[kind], _writes[kind] = at, 0
    try:
        yield
    finally:
        _injected.pop(kind, None)
        _writes.pop(kind, None)


def is_disk_full(error: BaseException | None) -> bool:
    """True if ``error`` (or an exception it was raised from) is ENOSPC or EDQUOT, including
    tensorstore's errors, which carry only the message."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(error) for m in ("No space left on device", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(writing: str, kept: str) -> DiskFullError:
    """``no space left on device writing <writing>; <kept>; free space ... and run the same
    command again``: one line for a failed write."""
    return DiskFullError(f"no space left on device writing {writing}; {kept}; free space on that device and run "
                         "the same command again")


# --- the one writer ---------------------------------------------------------------------------------

_counter = itertools.count()
_counter_lock = threading.Lock()


def _temporary(path: pathlib.Path) -> tuple[pathlib.Path, int]:
    """A new temporary file beside ``path``, opened for writing (``O_EXCL``: never another's)."""
    while True:
        with _counter_lock:
            n = next(_counter)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{n}")
        try:
            return tmp, os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue


def _fsync_directory(directory: pathlib.Path) -> None:
    """Makes a rename in ``directory`` durable (where the platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _numbered(path: pathlib.Path, n: int) -> pathlib.Path:
    """``eval.json`` -> ``eval.1.json``; ``gaps_per_example.npz`` -> ``gaps_per_example.1.npz``."""
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def _keep(path: pathlib.Path) -> pathlib.Path:
    """Keeps the file ``path`` also under the next free numbered name (:func:`_numbered`): a hard
    link where the filesystem has them, else a copy (created exclusively, fsync-ed; removed again
    if it cannot be completed)."""
    for n in itertools.count(1):
        kept = _numbered(path, n)
        if os.path.lexists(kept):
            continue
        try:
            os.link(path, kept)
            return kept
        except FileExistsError:
            continue
        except OSError:  # no hard links here: a copy, created exclusively
            data = path.read_bytes()
            try:
                fd = os.open(kept, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    kept.unlink()
                raise
            return kept
    raise AssertionError("unreachable")


def _same_content(path: pathlib.Path, tmp: pathlib.Path) -> bool:
    try:
        if path.stat().st_size != tmp.stat().st_size:
            return False
        return path.read_bytes() == tmp.read_bytes()
    except OSError:
        return False


def write_atomic(path: str | os.PathLike, data: Data, *, kind: str, keep_previous: bool = False,
                 kept_note: str = "", report_disk_full: bool = True) -> pathlib.Path | None:
    """Writes ``data`` to ``path`` atomically (see the module): the fault hook, a temporary file,
    fsync, rename, fsync of the directory.  Creates the missing directories above ``path``.

    Args:
      kind: what is written, for :func:`before_write` (one of :data:`WRITE_KINDS`).
      keep_previous: keep an existing ``path`` whose content differs as ``NAME.N.EXT`` first.
      kept_note: added to the full-disk message after what was kept (e.g. "(the results were
        computed but not saved)").
      report_disk_full: turn a full disk into :class:`vaegen.errors.DiskFullError` (``False``:
        the ``OSError`` is raised as it is, for a caller with a message of its own).
    Returns the path the previous file was kept under (``keep_previous``), else None.
    """
    path = pathlib.Path(path)
    tmp = None
    try:
        before_write(kind, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _temporary(path)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode())
            elif isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        kept = None
        if keep_previous and path.is_file() and not _same_content(path, tmp):
            kept = _keep(path)
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
        return kept
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if report_disk_full and isinstance(e, Exception) and is_disk_full(e):
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise disk_full_error(str(path), f"{kept}{' ' + kept_note if kept_note else ''}") from None
        raise


def write_json(path: str | os.PathLike, obj: Any, *, kind: str, indent: int | None = 2, default: Any = None,
               sort_keys: bool = False, **kw: Any) -> pathlib.Path | None:
    """``obj`` as JSON (one trailing newline) through :func:`write_atomic` (``kw`` its options)."""
    return write_atomic(path, json.dumps(obj, indent=indent, default=default, sort_keys=sort_keys) + "\n",
                        kind=kind, **kw)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, kind: str, compressed: bool = False,
              **kw: Any) -> pathlib.Path | None:
    """``arrays`` as an ``.npz`` through :func:`write_atomic` (``kw`` its options)."""
    save = np.savez_compressed if compressed else np.savez
    return write_atomic(path, lambda f: save(f, **arrays), kind=kind, **kw)


# --- readers that fail on one line -----------------------------------------------------------------------

def _damaged(error: type[Exception], name: str, what: str, reason: str, fix: str) -> Exception:
    return error(f"{name} is not a readable {what} ({reason}); {fix}")


def _reason(e: BaseException) -> str:
    if isinstance(e, IsADirectoryError):
        return "a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, UnicodeDecodeError):
        return f"not text: {e.reason}"
    if isinstance(e, json.JSONDecodeError):
        return "empty" if not e.doc.strip() else f"invalid JSON, truncated or damaged: {e.msg} at line {e.lineno}"
    if isinstance(e, (zipfile.BadZipFile, EOFError, zlib.error)):
        return f"truncated or damaged: {e}"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)
"""What numpy raises for a file that is truncated, damaged or not what it should be (a pickle,
refused: ``allow_pickle=False`` raises ValueError)."""


def _exists(path: pathlib.Path, name: str, fix: str, error: type[Exception]) -> None:
    if not path.exists():
        raise error(f"{name} does not exist; {fix}")


def read_json(path: str | os.PathLike, *, what: str, fix: str, error: type[Exception] = DamagedFileError,
              kind: type | None = dict, name: str | None = None) -> Any:
    """The JSON in ``path``; one line (``error``) naming the file, ``what`` it should be and
    ``fix`` (what to do) if it is missing, unreadable, not JSON, or not of type ``kind``."""
    path = pathlib.Path(path)
    name = name or str(path)
    _exists(path, name, fix, error)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _damaged(error, name, what, _reason(e), fix) from None
    if kind is not None and not isinstance(value, kind):
        raise _damaged(error, name, what, f"a JSON {type(value).__name__}, not a {kind.__name__}", fix)
    return value


def load_npz(path: str | os.PathLike, *, what: str, fix: str, names: Sequence[str] | None = None,
             error: type[Exception] = DamagedFileError, name: str | None = None) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` in ``path`` (never unpickled), read into memory; with ``names``
    those arrays, which must all be there.  One line (``error``) naming the file, ``what`` it
    should be and ``fix`` if it is missing, truncated, damaged or lacks an array."""
    path = pathlib.Path(path)
    name = name or str(path)
    _exists(path, name, fix, error)
    try:
        f = np.load(path, allow_pickle=False)
    except READ_ERRORS as e:
        raise _damaged(error, name, what, _reason(e), fix) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise _damaged(error, name, what, "an .npy array, not an .npz archive", fix)
    with f:
        missing = [n for n in names or () if n not in f.files]
        if missing:
            raise _damaged(error, name, what, f"it holds arrays {', '.join(sorted(f.files)) or 'none'}, not "
                           f"{', '.join(missing)}", fix)
        try:
            return {n: np.asarray(f[n]) for n in (names or f.files)}
        except READ_ERRORS as e:
            raise _damaged(error, name, what, _reason(e), fix) from None


def load_npy(path: str | os.PathLike, *, what: str, fix: str, error: type[Exception] = DamagedFileError,
             name: str | None = None) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (never unpickled); one line (``error``) naming the
    file, ``what`` it should be and ``fix`` if it is missing, truncated or damaged."""
    path = pathlib.Path(path)
    name = name or str(path)
    _exists(path, name, fix, error)
    try:
        value = np.load(path, allow_pickle=False)
    except READ_ERRORS as e:
        raise _damaged(error, name, what, _reason(e), fix) from None
    if not isinstance(value, np.ndarray):
        value.close()
        raise _damaged(error, name, what, "an .npz archive, not an .npy array", fix)
    return value
