"""Compiling once: JAX's persistent compilation cache (on by default for vaegen's entry points),
executables shared by equal programs within a process, and a count of compilations.

A second ``vaegen train`` / ``evaluate`` / ``compare`` of the same shapes then loads its
compiled programs from disk instead of compiling them again.  The cache is a directory of
compiled executables keyed by the program, the compiler options, the backend and the JAX
version, so a hit gives the very executable a compilation would have produced: results do not
change.

Where it lives, first match wins:

1. The setting: the CLI's ``--compilation-cache DIR|off``, or :func:`enable` called with a
   directory or ``off`` (it then holds for the rest of the process).
2. JAX's own ``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config.jax_compilation_cache_dir`` set by
   the caller): left as it is.
3. ``VAEGEN_COMPILATION_CACHE``: a directory, or ``0`` / ``off`` / ``false`` / ``no`` / ``none`` to
   disable it.
4. The user's cache directory: ``$XDG_CACHE_HOME/vaegen/jax``, else ``~/.cache/vaegen/jax``.

A directory that cannot be created or written disables the cache (with a warning on the log)
rather than failing the run.  Like any compilation cache it is trusted: do not point it at a
directory others can write.

Random bits on CPU.  JAX lowers its threefry2x32 hash (every ``jax.random`` draw) on CPU as a
rolled loop, five iterations of four rounds, to keep compilation short; on GPU and TPU it uses
the unrolled rounds, which XLA fuses into one elementwise loop.  On CPU the rolled loop costs a
chain of small kernels, copies and loop bookkeeping per draw: in the benchmark trainer's step at
batch 128 (a 784-200-200-50 VAE with dynamic binarization) the rolled random bits took about 13%
of the step's summed kernel time, and unrolled the step ran 3-7% faster.  Importing this module registers JAX's own unrolled
lowering for CPU too (:func:`unrolled_threefry_on_cpu`): the same function, so the same bits,
bitwise (``tests/test_compile.py`` checks it), and no measurable change in compile time.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import pathlib
from typing import Any, Hashable, Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

try:  # JAX's lowering registry and its threefry primitive: internal, so looked up defensively
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry
except ImportError:  # another JAX layout: random bits keep JAX's own CPU lowering
    _mlir = _threefry = None

ENV_VAR = "VAEGEN_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no", "none")
# Programs that compile faster than this are not written (their load would not pay); JAX's
# default (1 s) would leave out most of vaegen's small programs, which compile in 0.1-1 s each.
MIN_COMPILE_SECONDS = 0.1

logger = logging.getLogger(__name__)
_choice: str | None = None  # the last explicit setting of this process, kept by later enable()


def default_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/vaegen/jax``, else ``~/.cache/vaegen/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "vaegen" / "jax"


def requested_dir(setting: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The cache directory asked for by ``setting`` (a path, or one of :data:`OFF`), else by
    :data:`ENV_VAR`, else :func:`default_dir`; None when disabled."""
    value = os.fspath(setting) if setting is not None else os.environ.get(ENV_VAR)
    if value is None or value.strip() == "":
        return default_dir()
    if value.strip().lower() in OFF:
        return None
    return pathlib.Path(value).expanduser()


def enable(setting: str | os.PathLike | None = None) -> str | None:
    """Turns the persistent compilation cache on (see the module's docstring for where) and
    returns its directory, or None when it is off.  Idempotent; a directory the caller gave JAX
    itself is kept.  ``setting`` (a directory, or ``off``) holds for the rest of the process: the
    entry points' own ``enable()`` then keeps it.  Call it before the first compilation of the
    programs to be cached."""
    global _choice
    if setting is None:
        setting = _choice
    else:
        _choice = os.fspath(setting)
    current = jax.config.jax_compilation_cache_dir
    if current and setting is None:
        return current  # already on: ours, or the caller's own (JAX_COMPILATION_CACHE_DIR)
    path = requested_dir(setting)
    if path is None:
        if current:
            _set_dir(None)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        logger.warning("compilation cache disabled: %s (set %s to a writable directory, or to off)", e, ENV_VAR)
        return None
    if current != str(path):
        _set_dir(str(path))
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default: not the caller's choice
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return str(path)


def _set_dir(path: str | None) -> None:
    """Points JAX at ``path`` (None: no cache); JAX opens its cache at the next compilation."""
    jax.config.update("jax_compilation_cache_dir", path)
    jax_cache.reset_cache()


# --- random bits on CPU --------------------------------------------------------------------------

def unrolled_threefry_on_cpu() -> bool:
    """Registers JAX's unrolled threefry2x32 lowering (the one GPU and TPU use) for CPU, in place
    of the rolled loop (see the module's docstring); programs lowered afterwards use it.  The
    values are the same bits.  Returns whether it is in place: False where this JAX keeps its
    lowering elsewhere, and then nothing changes but speed."""
    primitive = getattr(_threefry, "threefry2x32_p", None)
    rule = getattr(_threefry, "_threefry2x32_lowering_rule", None)
    if _mlir is None or primitive is None or rule is None:
        return False
    _mlir.register_lowering(primitive, rule, platform="cpu")
    return True


UNROLLED_THREEFRY = unrolled_threefry_on_cpu()
"""Whether importing this module put the unrolled threefry lowering in place on CPU."""


# --- one executable per program within a process ------------------------------------------------

SHARED_EXECUTABLES = 16
"""Executables :func:`compile_shared` keeps (least recently used dropped first)."""
_shared: "collections.OrderedDict[str, Any]" = collections.OrderedDict()


def forget_shared() -> None:
    """Drops the executables :func:`compile_shared` keeps (the next equal program compiles)."""
    _shared.clear()


def compile_shared(lowered: jax.stages.Lowered, context: Hashable = ()) -> jax.stages.Compiled:
    """``lowered.compile()``, shared by every equal program of this process: a program that
    lowers to the same StableHLO text (the computation, its constants, shardings and donations)
    with the same ``context`` (the devices it runs on) is compiled once, so a function rebuilt for
    another training run, seed or stage of a study does not compile again.  The text is the
    program, so a hit is the executable its own compilation would give.  The input and output
    trees are part of the key too: arguments the program does not read are pruned from its text,
    so two functions of different parameter trees may lower to the same text."""
    key = hashlib.sha256(repr((lowered.as_text(), lowered.in_tree, lowered.out_tree, context)).encode()).hexdigest()
    compiled = _shared.get(key)
    if compiled is None:
        compiled = lowered.compile()
        _shared[key] = compiled
        while len(_shared) > SHARED_EXECUTABLES:
            _shared.popitem(last=False)
    else:
        _shared.move_to_end(key)
    return compiled


class SharedJit:
    """``jax.jit(fun, **jit_kwargs)`` whose executables come from :func:`compile_shared`: a
    function rebuilt with the same program (another run of the same model) does not compile
    again.  ``mesh``: the devices it runs on (part of what is shared).  Arguments must be
    arrays (or pytrees of arrays); each new tree, shape, dtype or sharding compiles (or finds)
    its own executable."""

    def __init__(self, fun, mesh: jax.sharding.Mesh | None = None, **jit_kwargs: Any):
        self._jit = jax.jit(fun, **jit_kwargs)
        self._context = () if mesh is None else tuple(int(d.id) for d in mesh.devices.flat)
        self._executables: dict[Any, jax.stages.Compiled] = {}

    def lower(self, *args) -> jax.stages.Lowered:
        return self._jit.lower(*args)

    def compile(self, *args) -> jax.stages.Compiled:
        """The executable for arguments shaped like ``args``."""
        signature = _signature(args)
        executable = self._executables.get(signature)
        if executable is None:
            executable = self._executables[signature] = compile_shared(self._jit.lower(*args), self._context)
        return executable

    def __call__(self, *args):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
            return self._jit(*args)  # inside a transformation (jax.eval_shape, an outer jit)
        return self.compile(*args)(*args)


def _signature(args) -> tuple:
    """What an executable is specialised to: the arguments' tree, shapes, dtypes and shardings."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    return tree, tuple((getattr(x, "shape", ()), getattr(x, "dtype", type(x)), getattr(x, "weak_type", False),
                        getattr(x, "sharding", None)) for x in leaves)


# --- counting compilations ---------------------------------------------------------------------

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # a compilation, or a persistent-cache load
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_counters: list[dict[str, Any]] = []
_listening = False


def _on_duration(event: str, duration: float, **kwargs: Any) -> None:
    if event == _BACKEND_COMPILE:
        for c in _counters:
            c["requests"].append(str(kwargs.get("fun_name", "")))


def _on_event(event: str, **kwargs: Any) -> None:
    if event == _CACHE_HIT:
        for c in _counters:
            c["cache_hits"] += 1


@contextlib.contextmanager
def count_compilations() -> Iterator[dict[str, Any]]:
    """Counts the XLA compilations of the ``with`` block: yields a dict whose ``compiled`` (the
    programs compiled), ``loaded`` (those loaded from the persistent cache instead) and
    ``names`` (each program's name, compiled or loaded) are filled in when the block ends.
    Programs reused from memory (a jit's own cache, :func:`compile_shared`) count as neither."""
    global _listening
    if not _listening:  # JAX's listeners cannot all be removed again: register once, dispatch here
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    counter: dict[str, Any] = {"requests": [], "cache_hits": 0}
    result: dict[str, Any] = {}
    _counters.append(counter)
    try:
        yield result
    finally:
        _counters.remove(counter)
        result.update(names=list(counter["requests"]), loaded=counter["cache_hits"],
                      compiled=len(counter["requests"]) - counter["cache_hits"])
