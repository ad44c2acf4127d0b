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
    Every writer in vaegen calls :func:`before_write` first (:func:`vaegen.files.write_atomic`,
    the one writer of files, does; so do the checkpointer and the append to ``metrics.jsonl``);
    :func:`disk_full` (or the environment variable :data:`DISK_FULL_ENV`, for a process of its
    own) makes chosen writes fail with ``ENOSPC`` there, as a full disk would.  Writes go through
    temporary files and renames (orbax's checkpoints too), so a failed write leaves what was
    written before intact;
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
import logging
import math
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from vaegen import files as files_lib


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
#
# The hook lives with the one writer (vaegen.files), below every layer that writes; these are its names.

WRITE_KINDS = files_lib.WRITE_KINDS
DISK_FULL_ENV = files_lib.DISK_FULL_ENV
before_write = files_lib.before_write
disk_full = files_lib.disk_full
is_disk_full = files_lib.is_disk_full
disk_full_error = files_lib.disk_full_error


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

def _closed_event_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


_closed_loops_quiet = False


def quiet_closed_event_loops() -> None:
    """Drops ``RuntimeError: Event loop is closed``, which tensorstore's callbacks raise when they
    arrive after orbax has closed the asyncio loop of a read that failed (a damaged checkpoint):
    a race at the end of a failed operation, harmless (nothing waits for those callbacks), that
    Python prints as "unraisable" tracebacks -- sometimes *before* the one-line error is
    reported, so :func:`quiet_background_errors`, installed after it, is too late.  The command
    line installs this at its start, for the whole process, together with
    :func:`_unretrieved_storage_reads` on asyncio's log (the same failed read, logged by asyncio
    when its unawaited tasks are collected) and a filter of the warnings about its coroutines that
    never ran; every other exception is printed as usual.
    Idempotent."""
    global _closed_loops_quiet
    if _closed_loops_quiet:
        return
    _closed_loops_quiet = True
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook

    def on_unraisable(u):
        if not _closed_event_loop(u.exc_value):
            unraisable(u)

    def on_thread(a):
        if not _closed_event_loop(a.exc_value):
            thread_hook(a)

    sys.unraisablehook, threading.excepthook = on_unraisable, on_thread
    logging.getLogger("asyncio").addFilter(_unretrieved_storage_reads)
    # The coroutines of such a read that never started are reported when collected, often at exit
    # ("sys:1: RuntimeWarning: coroutine 'Store._get_array_metadatas' was never awaited"); vaegen
    # has no coroutines of its own, so in its command line every such coroutine is a library's.
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


def _from_storage(tb, modules: tuple[str, ...] = ("orbax", "tensorstore")) -> bool:
    """Whether a traceback passes through a module whose name starts with one of ``modules``."""
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(modules):
            return True
        tb = tb.tb_next
    return False


def _unretrieved_storage_reads(record: logging.LogRecord) -> bool:
    """A filter of asyncio's log: drops "Task/Future exception was never retrieved" for a failure of
    orbax's or tensorstore's own reads.  orbax reads a checkpoint's arrays in parallel tasks; when one
    fails (a damaged file) its error is raised to vaegen, which reports it on one line, and the other
    tasks' failures -- the same damage -- are never awaited, so asyncio logs each with a traceback
    when it is collected, sometimes while a later command of the same process runs.  Anything else
    asyncio logs passes."""
    message = str(record.msg)
    if not message.startswith(("Task exception was never retrieved", "Future exception was never retrieved")):
        return True
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return True
    return not (_from_storage(exc.__traceback__) or "tensorstore_spec" in str(exc))


def quiet_background_errors() -> None:
    """Drops what orbax's and tensorstore's background threads and finalizers would print while
    the process exits after an error was reported on one line (e.g. ``RuntimeError: Event loop is
    closed`` from callbacks of a failed read, or a save thread cut short by a second SIGINT).
    Exceptions raised elsewhere are printed as usual; absl's log (orbax logs its threads' failures
    there) is silenced for the rest of the process."""
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook

    def background(tb) -> bool:
        return _from_storage(tb, ("orbax", "tensorstore", "asyncio", "concurrent.futures"))

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
