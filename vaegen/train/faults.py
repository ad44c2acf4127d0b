"""Faults a long run must survive: non-finite steps and stop signals.

Non-finite steps
    A step whose loss or gradient is not finite (:func:`finite_step`) is **skipped on the
    device**: parameters and optimizer state keep their values (the optimizer's step count,
    hence its learning-rate schedule, does not advance), the step counter does (the batch and
    its noise are consumed).  :func:`guard_update` runs the optimizer inside a ``lax.cond``, so a
    skipped step computes no update and an applied one pays for no selection.  The optimizers
    vaegen builds (Adam and AdamW with ``eps > 0``, SGD, clipping, normalised gradients with an
    epsilon) turn a finite gradient into a finite update: a finite global norm bounds every
    component below 1.8e19, so the update is bounded too (Adam's by ``|m| / eps``).
    Skips are counted in the train state and logged in ``metrics.jsonl``; after
    ``train.max_consecutive_skips`` consecutive skips the remaining steps of the device call
    do nothing and the trainer raises :class:`vaegen.errors.NonFiniteError`, naming the step and the last
    finite metrics.

Full disks
    Every writer in vaegen calls :func:`before_write` first; :func:`disk_full` (or the
    environment variable :data:`DISK_FULL_ENV`, for a process of its own) makes chosen writes
    fail with ``ENOSPC`` there, as a full disk would.  Writes go through temporary files and
    renames (orbax's checkpoints too), so a failed write leaves what was written before intact;
    :func:`disk_full_error` turns the failure into one line, :class:`vaegen.errors.DiskFullError`,
    naming the path, what was kept, and the next step (free space, run the same command again).

Stop signals
    An epoch (or ``train.steps_per_call`` steps) is one device call, which cannot be
    interrupted.  :class:`StopSignals` turns SIGINT and SIGTERM into a request that the
    trainer honours when the current call returns: it writes a checkpoint and raises
    :class:`vaegen.errors.TrainingInterrupted`; running the same command again resumes exactly.  A second
    SIGINT aborts at once without saving (the latest checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from vaegen.errors import DiskFullError


# --- on the device -----------------------------------------------------------------------------

def all_finite(*trees: Any) -> jax.Array:
    """bool ``[]``: every leaf of every tree is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def finite_step(loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
    """bool ``[]``: the step may be applied.  The loss and the gradient's global norm are finite
    (a NaN or infinity anywhere in the gradient makes its norm NaN or infinite; so does a norm
    that overflows float32, ||g||^2 > 3.4e38, which is skipped too).  A norm rather than an
    elementwise check: ``grad_norm`` is computed for the metrics anyway."""
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def guard_update(finite: jax.Array, update: Callable[[Any, Any], tuple[Any, Any]], params: Any,
                 opt_state: Any) -> tuple[Any, Any]:
    """``update(params, opt_state)`` if ``finite``, else ``(params, opt_state)`` untouched.

    A ``lax.cond``: the optimizer runs only for applied steps, and an applied step costs
    nothing over an unguarded one (an elementwise ``where`` between the old and the new values
    would read and write every parameter and moment once more per step)."""
    return jax.lax.cond(finite, update, lambda p, s: (p, s), params, opt_state)


# --- on the host -------------------------------------------------------------------------------

def finite_or_none(value: float) -> float | None:
    """A metric as JSON can hold it: ``None`` for NaN or infinity."""
    value = float(value)
    return value if math.isfinite(value) else None


def format_metrics(metrics: dict[str, float], keys: tuple[str, ...] | None = None) -> str:
    """``"elbo=-45.21, kl=3.1"``: short, for one-line messages."""
    items = [(k, v) for k, v in metrics.items() if keys is None or k in keys]
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


# --- full disks --------------------------------------------------------------------------------

WRITE_KINDS = ("checkpoint", "metrics", "config", "eval", "figure", "table")
"""What :func:`before_write` is told is being written: checkpoints, ``metrics.jsonl``,
``config.json``/``run.json``, ``eval.json`` and per-example values, PNG figures, result tables."""

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


# --- stop signals ------------------------------------------------------------------------------

_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)


class StopSignals:
    """While active, SIGINT and SIGTERM request a stop instead of killing the process.

    ``requested`` is the first signal received (``None`` if none).  A second SIGINT raises
    ``KeyboardInterrupt`` at once.  Handlers can only be installed from the main thread;
    elsewhere the context does nothing (signals keep their usual effect).
    """

    def __init__(self, *, announce: bool = True):
        self.requested: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signum
            if self.announce:
                name = signal.Signals(signum).name
                print(f"vaegen: {name} received: saving a checkpoint when the current device call returns"
                      + (" (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""),
                      file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in _STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals(enabled: bool = True, **kwargs) -> Iterator[StopSignals]:
    """:class:`StopSignals` if ``enabled``, else an inert one."""
    stop = StopSignals(**kwargs)
    if not enabled:
        yield stop
        return
    with stop:
        yield stop


# --- after an error has been reported ------------------------------------------------------------

def quiet_background_errors() -> None:
    """Drops what orbax's and tensorstore's background threads and finalizers would print while
    the process exits after an error was reported on one line (e.g. ``RuntimeError: Event loop is
    closed`` from callbacks of a failed read, or a save thread cut short by a second SIGINT).
    Exceptions raised elsewhere are printed as usual; absl's log (orbax logs its threads' failures
    there) is silenced for the rest of the process."""
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook

    def background(tb) -> bool:
        while tb is not None:
            name = tb.tb_frame.f_globals.get("__name__", "")
            if name.startswith(("orbax", "tensorstore", "asyncio", "concurrent.futures")):
                return True
            tb = tb.tb_next
        return False

    def on_unraisable(u):
        if isinstance(u.exc_value, (RuntimeError, KeyboardInterrupt, OSError, ValueError)) and (
                background(u.exc_traceback) or "Event loop is closed" in str(u.exc_value)):
            return
        unraisable(u)

    def on_thread(a):
        if a.exc_type is not SystemExit and background(a.exc_traceback):
            return
        thread_hook(a)

    sys.unraisablehook, threading.excepthook = on_unraisable, on_thread
    logging.getLogger("absl").setLevel(logging.CRITICAL + 1)  # orbax's threads log their failures through absl
