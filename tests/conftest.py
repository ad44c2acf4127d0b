"""Test harness: CPU only, deterministic, quiet."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import atexit
import pathlib
import shutil
import tempfile

# Many tests (and their subprocesses, which inherit the environment) compile the same tiny
# programs: JAX's persistent compilation cache, in a directory private to this session, compiles
# each once.  Results do not change (the cached executable is the compiled one).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = tempfile.mkdtemp(prefix="vaegen-test-jax-cache-")
    atexit.register(shutil.rmtree, _JAX_CACHE, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Compiling is most of the tests' time on a small CPU, and nearly all of it is spent on programs
# that run for microseconds.  Three XLA settings halve it (training three tiny models: 19 s -> 9.5 s
# of CPU; the tiny compare study: 146 s -> 66 s).  None touches the HLO passes or allows fast math;
# they change only how XLA:CPU turns the optimized program into machine code, so a value may differ
# from a default build's in its last bits, never in its meaning, and the tests' bitwise checks
# (resumption, chunking, sharding) hold under them as under the defaults:
# - LLVM's optimisation level 0 (the default is 3).  It leaves the loops XLA emits for the
#   convolutions Eigen does not take (kernel gradients) unvectorised, about 15x slower to run: the
#   few tests that run such a model's gradients compile that program with VECTORISED
#   (``lowered.compile(compiler_options=VECTORISED)``).
# - LLVM's SelectionDAG instruction selector at level 0 too, not its FastISel (level 0's default,
#   which hands some blocks to SelectionDAG and not others): with FastISel, two training steps run
#   in one device call ended with Adam moments a few ulps away from the same two steps run in two
#   calls, so a resumed run would not equal the uninterrupted one.  It costs no measurable time.
# - XLA:CPU's elemental emitters for loop fusions instead of its MLIR fusion emitters, whose
#   pipeline costs more than the rest of compiling such small programs.  A flag XLA does not know
#   aborts the process, so this one is set only when this jaxlib has it.
VECTORISED = {"xla_backend_optimization_level": 1}
"""Compiler options for a program whose convolution gradients should run vectorised (see above)."""


def _xla_has_flag(name):
    """Whether this jaxlib's XLA knows the flag ``name`` (its name is in the compiled library);
    found without importing JAX, whose backend reads XLA_FLAGS once."""
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("jaxlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted(pathlib.Path(folder).glob("*.so")):
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name.encode()) >= 0:
                    return True
    return False


_TEST_XLA_FLAGS = {"xla_backend_optimization_level": "0", "xla_backend_extra_options": "-fast-isel=false",
                   "xla_cpu_use_fusion_emitters": "false"}
for _name, _value in _TEST_XLA_FLAGS.items():  # each unless the caller's XLA_FLAGS sets it already
    if _name not in os.environ.get("XLA_FLAGS", "") and (_name != "xla_cpu_use_fusion_emitters"
                                                         or _xla_has_flag(_name)):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_name}={_value}").strip()


def xla_flags(**flags):
    """This session's XLA_FLAGS plus ``--name=value`` for each keyword (for subprocesses)."""
    extra = " ".join(f"--{name}={value}" for name, value in flags.items())
    return (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()

import pytest

FASHION_MNIST_IDX = pathlib.Path("/usr/share/datasets/fashion-mnist")


def require_fashion_mnist():
    """Skips when Debian's Fashion-MNIST is absent, unless CI demands it (then fails)."""
    if FASHION_MNIST_IDX.is_dir():
        return
    if os.environ.get("VAEGEN_REQUIRE_FASHION_MNIST"):
        pytest.fail(f"{FASHION_MNIST_IDX} is missing but VAEGEN_REQUIRE_FASHION_MNIST is set: "
                    "install the Debian package dataset-fashion-mnist")
    pytest.skip(f"needs the Debian package dataset-fashion-mnist ({FASHION_MNIST_IDX}); .ci/run installs it")


@pytest.fixture
def tiny_config():
    from vaegen.config import loading as config

    return config.load_config("tiny")
