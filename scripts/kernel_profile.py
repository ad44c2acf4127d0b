"""Where a compiled program's time goes: XLA's kernels timed by JAX's profiler, each attributed to
the part of the model whose JAX operation emitted it.

Used by ``bench_train.py --profile``.  :func:`enable_kernel_tracing` must run before JAX starts
its backend (on CPU it asks XLA to time every kernel); then :func:`profile` runs a call under
``jax.profiler.trace`` and groups the kernels' times by the parts of a training step,
:data:`TRAIN_PARTS`.  A kernel is attributed through its HLO instruction's
``op_name`` (the JAX operation and the flax modules around it) and, for a fusion, whether the
fused computation contains a matrix product.

The shares are of the summed kernel time, not of wall time: XLA runs independent kernels
concurrently (two at a time on a two-core CPU), so the sum exceeds the wall time, and a part's
share says how much work it is rather than how much it delays the step.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable

import jax

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"

# (part, pattern on the op_name); the first match wins, after "matrix products" (by HLO content).
TRAIN_PARTS = (
    ("optimizer update (Adam, inside the non-finite guard's cond)", r"/cond/|/cond$"),
    ("random bits (sampling noise, keys)",
     r"threefry|random_bits|_uniform|_normal|erf_inv|random_split|_split|fold_in|random_wrap|random_unwrap"),
    ("data order (the epoch's permutation)", r"_shuffle|permutation|/sort"),
    ("likelihood p(x|z): decoder activations, log-density", r"log_likelihood|p_x_given_z"),
    ("posterior q(z|x) and KL: encoder activations, sampling, log-densities", r"q_z_given_x|KullbackLeibler|kl_"),
    ("batch gather and binarization (with its random bits, fused)", r"gather|reduce_scatter|select_n|dynamic_slice|convert_element_type|/lt|/or|"
                                      r"concatenate|shift_right|/add$"),
    ("norms, non-finite check, metrics", r"global_norm|is_finite|isfinite|/sqrt|reduce_sum|/mean|/where"),
)
MATMUL = "matrix products (with what XLA fused into them)"


def enable_kernel_tracing() -> None:
    """Asks XLA (CPU) to time each kernel for the profiler; call before JAX starts its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if TRACE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + TRACE_FLAG).strip()


def _instructions(hlo: str) -> dict[str, tuple[str, bool]]:
    """``{instruction name: (op_name, is or fuses a matrix product)}`` of an optimized HLO text."""
    computations, current = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
        if m and line.rstrip().endswith("{"):
            current = m.group(1)
            computations[current] = []
        elif current is not None:
            computations[current].append(line)
    has_dot = {name: any(re.search(r"\bdot\(|convolution\(", l) for l in lines) for name, lines in computations.items()}
    out = {}
    for lines in computations.values():
        for line in lines:
            m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
            if not m:
                continue
            op = re.search(r'op_name="([^"]*)"', line)
            called = re.search(r"calls=%([\w.\-]+)", line)
            dot = bool(re.search(r"\bdot\(|convolution\(", line)) or bool(called and has_dot.get(called.group(1)))
            out[m.group(1)] = (op.group(1) if op else "", dot)
    return out


def kernel_times(call: Callable[[], object]) -> tuple[dict[str, tuple[float, int]], float]:
    """Runs ``call()`` (which must block until done) under the profiler: ``({kernel: (seconds,
    count)}, wall seconds)``."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t = time.perf_counter()
            call()
            wall = time.perf_counter() - t
        files = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)
        if not files:
            raise RuntimeError("the profiler wrote no trace")
        with gzip.open(files[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    seconds, counts = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            seconds[e["name"]] += e.get("dur", 0) / 1e6
            counts[e["name"]] += 1
    return {k: (seconds[k], counts[k]) for k in seconds}, wall


def attribute(hlo: str, times: dict[str, tuple[float, int]], parts=TRAIN_PARTS, top: int = 3) -> dict:
    """Groups the kernels of ``times`` that belong to the program ``hlo`` by part: seconds, share
    of the summed kernel time and the ``top`` largest kernels of each part."""
    instructions = _instructions(hlo)
    groups: dict[str, list] = collections.defaultdict(list)
    for name, (sec, count) in times.items():
        if name not in instructions:
            continue  # the profiler's own events, the host side
        op, dot = instructions[name]
        part = MATMUL if dot else next((p for p, pat in parts if re.search(pat, op)), "other")
        groups[part].append((sec, name, op))
    total = sum(s for g in groups.values() for s, _, _ in g)
    out = {}
    for part, kernels in sorted(groups.items(), key=lambda kv: -sum(s for s, _, _ in kv[1])):
        sec = sum(s for s, _, _ in kernels)
        out[part] = {"seconds": round(sec, 4), "share": round(sec / total, 4) if total else 0.0,
                     "kernels": len(kernels),
                     "largest": [{"kernel": n, "seconds": round(s, 4), "op": op[-120:]}
                                 for s, n, op in sorted(kernels, reverse=True)[:top]]}
    return out


def profile(call: Callable[[], object], hlo: str, parts=TRAIN_PARTS) -> dict:
    """:func:`kernel_times` of ``call`` grouped by :func:`attribute`, with the wall time and the
    summed kernel time (seconds)."""
    times, wall = kernel_times(call)
    by_part = attribute(hlo, times, parts)
    return {"wall_seconds": round(wall, 4),
            "kernel_seconds": round(sum(p["seconds"] for p in by_part.values()), 4),
            "parts": by_part}
