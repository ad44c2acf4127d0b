"""scripts/device_check.py: its stages call the benchmark scripts with flags they accept, and its
summary judges a target only when it was measured at the target's own sizes."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("_device_check", ROOT / "scripts" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_stage_passes_flags_its_script_accepts(dc):
    """Each stage runs a benchmark script or a vaegen subcommand (``-m vaegen.cli NAME``) with flags
    its --help lists; the default stages fit one device command (600 s), a second-call stage alone."""
    for name, (full, tiny, limit) in dc.STAGES.items():
        if full[0] == "-m":
            command = full[:3]
            assert tiny[:3] == command and command[1] == "vaegen.cli", name
        else:
            command = full[:1]
            assert full[0] == tiny[0] == f"scripts/{name}.py", name
        assert 0 < limit <= 600, name
        usage = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120).stdout
        for flag in {a for a in full + tiny if a.startswith("--")}:
            assert flag in usage, (name, flag)
    assert sum(dc.STAGES[name][2] for name in dc.DEFAULT_STAGES) <= 600   # one device command


def _results(n_images=10000, k=5000, ais=(1000, 16, 10), examples=10000, steps=500):
    return {
        "bench_train": {"results": {"batch_128": {"vaegen": {"examples_per_second_best": 1.3e6}},
                                    "batch_1024": {"vaegen": {"examples_per_second_best": 5.0e6}}}},
        "bench_eval": {"n_images": n_images, "k": k, "is": {"seconds": 0.8},
                       "ais": {"num_steps": ais[0], "num_chains": ais[1], "num_leapfrog": ais[2],
                               f"projected_seconds_for_{n_images}_images": 700.0}},
        "bench_inference": {"num_examples": examples, "steps": steps, "results": [{"family": "diag", "seconds": 30.0}]},
    }


def test_targets_are_judged_at_their_own_sizes_only(dc):
    met = {r["target"]: r["met"] for r in dc.targets(_results())}
    assert list(met.values()) == [True, False, True, False, True]
    small = {r["target"]: r for r in dc.targets(_results(n_images=16, k=50, ais=(5, 2, 2), examples=16, steps=5))}
    assert [r["met"] for r in small.values()][2:] == [None, None, None]
    assert small["q*, 10,000 images x 500 steps"]["value"] == 30.0
    failed = dc.targets({"bench_train": None})
    assert all(r["value"] is None and r["met"] is None for r in failed)
