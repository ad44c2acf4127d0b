"""Test harness: CPU only, deterministic, quiet."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib

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
    from vaegen import config

    return config.load_config("tiny")
