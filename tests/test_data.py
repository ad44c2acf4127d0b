"""Tests for vaegen.data: IDX import into TFDS, loading and caching, splits, binarization."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaegen import files as files_lib
from vaegen.data import binarization
from vaegen.data import datasets as data

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool) -> Path:
    raw = _idx_bytes(arr, magic)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _synthetic_mnist(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def _write_mnist_dir(directory: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in data._IDX_FILES.items():
        magic = 0x803 if key.endswith("images") else 0x801
        _write_idx(directory / stem, arrays[key], magic, compress)
    return directory


def _as_multiset(images: np.ndarray, labels: np.ndarray | None) -> list[bytes]:
    """Order-independent view of a split (TFDS shuffles the record order)."""
    labels = np.zeros(len(images), np.int64) if labels is None else labels
    return sorted(int(y).to_bytes(1, "big") + x.tobytes() for x, y in zip(images, labels))


def _cfg(**kw) -> ml_collections.ConfigDict:
    base = dict(
        name="digits",
        data_dir="",
        validation_size=0,
        validation_seed=0,
        max_train_examples=0,
        max_test_examples=0,
        auto_prepare=False,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def synthetic_idx(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    arrays = _synthetic_mnist()
    return arrays, _write_mnist_dir(tmp_path_factory.mktemp("idx_src"), arrays)


@pytest.fixture(scope="module")
def synthetic_mnist_dir(synthetic_idx, tmp_path_factory) -> str:
    """A TFDS data_dir holding a 20/10-example `mnist` imported from synthetic IDX files."""
    _, src = synthetic_idx
    data_dir = str(tmp_path_factory.mktemp("tfds_synthetic"))
    data.prepare("mnist", data_dir=data_dir, from_idx=src, require_standard_sizes=False)
    return data_dir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


# ----------------------------------------------------------------------------------------
# IDX parsing and import
# ----------------------------------------------------------------------------------------


def test_read_idx_parses_header_and_gzip(tmp_path):
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for compress in (False, True):
        p = _write_idx(tmp_path / f"a{compress}-idx3-ubyte", x, 0x803, compress)
        np.testing.assert_array_equal(data.read_idx_images(p), x)
    y = np.array([3, 1, 4], np.uint8)
    p = _write_idx(tmp_path / "l-idx1-ubyte", y, 0x801, compress=True)
    out = data.read_idx_labels(p)
    assert out.dtype == np.int64 and out.tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda raw: raw[:-5], "truncated or corrupt"),
        (lambda raw: b"\x12\x34" + raw[2:], "bad magic"),
        (lambda raw: b"", "empty"),
    ],
)
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, corrupt, match):
    x = np.zeros((3, 28, 28), np.uint8)
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(corrupt(_idx_bytes(x, 0x803)))
    with pytest.raises(data.IDXFormatError, match=match) as e:
        data.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_checks_images_vs_labels_magic(tmp_path):
    p = _write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(4, np.uint8), 0x801, compress=False)
    with pytest.raises(data.IDXFormatError, match="not an MNIST-style image file"):
        data.read_idx_images(p)
    p = _write_idx(tmp_path / "labels2-idx1-ubyte", np.array([11], np.uint8), 0x801, True)
    with pytest.raises(data.IDXFormatError, match="outside 0..9"):
        data.read_idx_labels(p)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_import_roundtrip(synthetic_idx, tmp_path, compress):
    arrays, _ = synthetic_idx
    src = _write_mnist_dir(tmp_path / "src", arrays, compress=compress)
    data_dir = str(tmp_path / "tfds")
    assert not data.is_prepared("mnist", data_dir)
    path = data.prepare("mnist", data_dir=data_dir, from_idx=src, require_standard_sizes=False)
    assert data.is_prepared("mnist", data_dir)
    assert Path(path) == Path(data_dir) / "mnist" / "3.0.1"
    for split, key in [("train", "train"), ("test", "test")]:
        x, y = data.load_split("mnist", split, data_dir)
        assert x.dtype == np.uint8 and x.shape == (len(arrays[f"{key}_images"]), 28, 28, 1)
        assert y is not None and y.dtype == np.int64
        expected = _as_multiset(arrays[f"{key}_images"][..., None], arrays[f"{key}_labels"])
        assert _as_multiset(x, y) == expected
    # Preparing again is a no-op that returns the same directory.
    assert data.prepare("mnist", data_dir=data_dir, from_idx=src) == path


def test_imported_dataset_is_the_standard_tfds_dataset(synthetic_mnist_dir):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    builder = tfds.builder("mnist", data_dir=synthetic_mnist_dir)
    assert type(builder) is tfds_mnist.MNIST
    assert builder.is_prepared()
    assert str(builder.info.version) == str(tfds_mnist.MNIST.VERSION)
    assert builder.info.splits["train"].num_examples == 20
    assert builder.info.splits["test"].num_examples == 10
    source = tfds.data_source("mnist", split="test", data_dir=synthetic_mnist_dir, download=False)
    assert len(source) == 10 and source[0]["image"].shape == (28, 28, 1)


def test_idx_import_requires_standard_sizes_by_default(synthetic_idx, tmp_path):
    _, src = synthetic_idx
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(data.IDXFormatError, match="standard dataset has 60000"):
        data.prepare("mnist", data_dir=data_dir, from_idx=src)
    assert not data.is_prepared("mnist", data_dir)


def test_idx_import_corrupt_or_missing_file_names_it(synthetic_idx, tmp_path):
    arrays, _ = synthetic_idx
    src = _write_mnist_dir(tmp_path / "src", arrays)
    bad = src / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-100]))
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(data.IDXFormatError, match="t10k-images-idx3-ubyte.gz"):
        data.prepare("mnist", data_dir=data_dir, from_idx=src, require_standard_sizes=False)
    assert not data.is_prepared("mnist", data_dir)

    bad.unlink()
    with pytest.raises(data.IDXFormatError, match="t10k-images-idx3-ubyte.*not found"):
        data.prepare("mnist", data_dir=data_dir, from_idx=src, require_standard_sizes=False)

    labels = src / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(7, np.uint8), 0x801)))
    _write_idx(src / "t10k-images-idx3-ubyte", arrays["test_images"], 0x803, compress=False)
    with pytest.raises(data.IDXFormatError, match="20 images but .*7 labels"):
        data.prepare("mnist", data_dir=data_dir, from_idx=src, require_standard_sizes=False)


def test_load_split_uses_cache(synthetic_mnist_dir, monkeypatch):
    import tensorflow_datasets as tfds

    x1, y1 = data.load_split("mnist", "train", synthetic_mnist_dir)
    cache = Path(synthetic_mnist_dir) / "mnist" / "3.0.1" / "vaegen_cache-train.npz"
    assert cache.is_file()

    def no_data_source(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tfds, "data_source", no_data_source)
    x2, y2 = data.load_split("mnist", "train", synthetic_mnist_dir)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_without_tensorflow_datasets_a_copy_with_the_cached_arrays_is_read_alone(synthetic_mnist_dir, tmp_path,
                                                                                monkeypatch):
    """A bare accelerator image has no tensorflow-datasets: a copy of the prepared dataset's info and vaegen's
    cached arrays (scripts/device_data.py) gives the same splits, in the same order; without one, one line."""
    cfg = ml_collections.ConfigDict({"name": "mnist", "data_dir": synthetic_mnist_dir, "validation_size": 5,
                                     "validation_mode": "random", "validation_seed": 0, "max_train_examples": 0,
                                     "max_test_examples": 0, "auto_prepare": False})
    with_tfds = data.load_splits(cfg)
    source = Path(synthetic_mnist_dir) / "mnist" / "3.0.1"
    copy = tmp_path / "copy" / "mnist" / "3.0.1"
    copy.mkdir(parents=True)
    (copy / "dataset_info.json").write_bytes((source / "dataset_info.json").read_bytes())
    for split in ("train", "test"):
        with np.load(data._cache_path(source, split)) as z:
            np.savez_compressed(data._cache_path(copy, split), **{k: z[k] for k in z.files})
    monkeypatch.setattr(data, "tfds_installed", lambda: False)
    without = data.load_splits(ml_collections.ConfigDict({**cfg.to_dict(), "data_dir": str(tmp_path / "copy")}))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(without, split), getattr(with_tfds, split))
    assert without.info["source"].startswith("cached arrays:")
    with pytest.raises(data.DatasetNotFoundError, match="needs tensorflow-datasets, which is not installed here"):
        data.load_split("mnist", "train", str(tmp_path / "nothing"))


def test_a_damaged_cache_is_rebuilt_from_the_prepared_dataset(synthetic_mnist_dir):
    x1, y1 = data.load_split("mnist", "train", synthetic_mnist_dir)
    cache = Path(synthetic_mnist_dir) / "mnist" / "3.0.1" / "vaegen_cache-train.npz"
    good = cache.read_bytes()
    for damaged in (good[: len(good) // 2], b"", b"not an npz"):   # a full disk, a kill, an edit
        cache.write_bytes(damaged)
        x2, y2 = data.load_split("mnist", "train", synthetic_mnist_dir)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert cache.read_bytes() == good   # written again, whole
    assert not [p for p in cache.parent.iterdir() if ".tmp" in p.name]


def test_load_split_skips_cache_in_read_only_dir(synthetic_idx, tmp_path, monkeypatch):
    _, src = synthetic_idx
    data_dir = str(tmp_path / "tfds")
    path = Path(data.prepare("mnist", data_dir, from_idx=src, require_standard_sizes=False))

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files_lib, "_temporary", read_only)  # the one writer's temporary file
    x, y = data.load_split("mnist", "test", data_dir)
    assert x.shape == (10, 28, 28, 1) and y.shape == (10,)
    assert not list(path.glob("vaegen_cache*"))


def test_download_path_needs_no_tensorflow(synthetic_idx, tmp_path, monkeypatch):
    """prepare()'s download path, against a local HTTP server serving the IDX .gz files."""
    _, src = synthetic_idx
    handler = functools.partial(_QuietHandler, directory=str(src))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = data._idx_builder_class("mnist")

        class LocalServer(base, skip_registration=True):
            name = "mnist"
            URL = f"http://127.0.0.1:{server.server_address[1]}/"
            url_infos = None  # TFDS's registered checksums are those of the real files

        monkeypatch.setattr(data, "_download_builder_class", lambda name: LocalServer)
        data_dir = str(tmp_path / "tfds")
        data.prepare("mnist", data_dir=data_dir, require_standard_sizes=False)
    finally:
        server.shutdown()
        thread.join()
    arrays, _ = synthetic_idx
    x, y = data.load_split("mnist", "test", data_dir)
    expected = _as_multiset(arrays["test_images"][..., None], arrays["test_labels"])
    assert _as_multiset(x, y) == expected


def test_download_builders_use_official_checksums():
    for name in ("mnist", "fashion_mnist", "binarized_mnist"):
        cls = data._download_builder_class(name)
        assert cls.name == name and cls.url_infos, name
        assert all(url.startswith(cls.URL) for url in cls.url_infos)


def test_binarized_mnist_is_scaled_to_255(tmp_path):
    """binarized_mnist's {0, 1} pixels are returned as {0, 255}, without labels."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in [("train", 6), ("valid", 3), ("test", 4)]:
        x = rng.integers(0, 2, (n, 784))
        files[split] = x
        np.savetxt(tmp_path / f"{split}.amat", x, fmt="%d", delimiter=" ")

    class LocalAmat:
        def download(self, urls):
            names = {"train_data": "train", "validation_data": "valid", "test_data": "test"}
            return {k: str(tmp_path / f"{names[k]}.amat") for k in urls}

    base = data._binarized_mnist_builder_class()

    class Local(base, skip_registration=True):
        name = "binarized_mnist"

        def _split_generators(self, dl_manager):
            return super()._split_generators(LocalAmat())

    data_dir = str(tmp_path / "tfds")
    Local(data_dir=data_dir, file_format="array_record").download_and_prepare()
    x, y = data.load_split("binarized_mnist", "test", data_dir)
    assert y is None and x.dtype == np.uint8 and x.shape == (4, 28, 28, 1)
    assert set(np.unique(x).tolist()) <= {0, 255}
    expected = _as_multiset((files["test"] * 255).astype(np.uint8).reshape(4, 28, 28, 1), None)
    assert _as_multiset(x, None) == expected


# ----------------------------------------------------------------------------------------
# Real Fashion-MNIST from Debian's dataset-fashion-mnist package
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> str:
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} absent (apt-get install dataset-fashion-mnist)")
    data_dir = str(tmp_path_factory.mktemp("tfds_fashion"))
    data.prepare("fashion_mnist", data_dir=data_dir, download=False)
    return data_dir


@pytest.mark.slow
def test_fashion_mnist_from_debian(fashion_dir):
    assert data.is_prepared("fashion_mnist", fashion_dir)
    x, y = data.load_split("fashion_mnist", "train", fashion_dir)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert y is not None and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    # Same examples as the IDX files, in TFDS's order.
    idx_x = data.read_idx_images(DEBIAN_FASHION / "train-images-idx3-ubyte.gz")
    digest = lambda a: sorted(hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in a)
    assert digest(x) == digest(idx_x[..., None])

    xt, yt = data.load_split("fashion_mnist", "test", fashion_dir)
    assert xt.shape == (10000, 28, 28, 1) and set(np.unique(yt).tolist()) == set(range(10))

    start = time.perf_counter()
    x2, y2 = data.load_split("fashion_mnist", "train", fashion_dir)
    assert time.perf_counter() - start < 1.0, "the decoded-array cache was not used"
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.slow
def test_fashion_mnist_splits(fashion_dir):
    cfg = _cfg(name="fashion_mnist", data_dir=fashion_dir, validation_size=5000, validation_seed=3)
    s = data.load_splits(cfg)
    assert s.train.shape == (55000, 28, 28, 1) and s.validation.shape == (5000, 28, 28, 1)
    assert s.test.shape == (10000, 28, 28, 1)
    assert s.info["name"] == "fashion_mnist" and s.info["version"] == "3.0.1"
    assert s.info["event_shape"] == [28, 28, 1]
    assert s.info["sizes"] == {"train": 55000, "validation": 5000, "test": 10000}


# ----------------------------------------------------------------------------------------
# Missing datasets, unknown names, default data_dir
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_missing_dataset_says_how_to_get_it(tmp_path, name):
    cfg = _cfg(name=name, data_dir=str(tmp_path), auto_prepare=False)
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_splits(cfg)
    msg = str(e.value)
    assert name in msg and str(tmp_path) in msg
    assert f"vaegen data prepare {name}" in msg and "--from-idx" in msg
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(data.DatasetNotFoundError):
        data.load_split(name, "train", str(tmp_path))


def test_prepare_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_host_reachable", lambda host, port: "timed out")
    with pytest.raises(data.DatasetNotFoundError, match="unreachable.*timed out"):
        data.prepare("mnist", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="downloading not allowed"):
        data.prepare("mnist", data_dir=str(tmp_path), download=False)


def test_unknown_names():
    with pytest.raises(ValueError, match="fashion_mnist, mnist, binarized_mnist, cifar10, digits"):
        data.load_split("cifar100", "train")
    with pytest.raises(ValueError, match="known datasets"):
        data.load_splits(_cfg(name="nope"))
    with pytest.raises(ValueError, match="from_idx"):
        data.prepare("binarized_mnist", data_dir="/nonexistent", from_idx="/tmp")


def test_default_data_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path)):
        data.load_split("mnist", "train")


# ----------------------------------------------------------------------------------------
# digits and splits
# ----------------------------------------------------------------------------------------


def test_digits():
    x, y = data.load_split("digits", "train")
    xt, yt = data.load_split("digits", "test")
    assert x.shape == (1500, 8, 8, 1) and xt.shape == (297, 8, 8, 1)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 255
    assert set(np.unique(x).tolist()) <= {round(v * 255 / 16) for v in range(17)}
    assert set(y.tolist()) == set(range(10))
    assert data.is_prepared("digits")


def test_splits_validation_disjoint_and_seeded():
    s = data.load_splits(_cfg(validation_size=300, validation_seed=1))
    assert s.train.shape == (1200, 8, 8, 1) and s.validation.shape == (300, 8, 8, 1)
    assert s.test.shape == (297, 8, 8, 1)
    assert len(s.train_labels) == 1200 and len(s.validation_labels) == 300
    assert s.info["sizes"] == {"train": 1200, "validation": 300, "test": 297}
    assert s.info["version"] == "sklearn" and s.info["event_shape"] == [8, 8, 1]
    assert s.info["validation_seed"] == 1
    # Disjoint and together the whole train split (as multisets).
    full, full_labels = data.load_split("digits", "train")
    union = np.concatenate([s.train, s.validation])
    union_labels = np.concatenate([s.train_labels, s.validation_labels])
    assert _as_multiset(union, union_labels) == _as_multiset(full, full_labels)
    # Deterministic for a seed, different for another.
    again = data.load_splits(_cfg(validation_size=300, validation_seed=1))
    np.testing.assert_array_equal(again.validation, s.validation)
    np.testing.assert_array_equal(again.train, s.train)
    other = data.load_splits(_cfg(validation_size=300, validation_seed=2))
    assert not np.array_equal(other.validation, s.validation)


def test_splits_disjoint_by_index():
    """Validation and train come from disjoint indices of the train split."""
    full, _ = data.load_split("digits", "train")
    s = data.load_splits(_cfg(validation_size=100, validation_seed=5))
    perm = np.random.default_rng(5).permutation(len(full))
    np.testing.assert_array_equal(s.validation, full[perm[:100]])
    np.testing.assert_array_equal(s.train, full[perm[100:]])


def test_splits_limits():
    s = data.load_splits(_cfg(validation_size=100, max_train_examples=50, max_test_examples=20))
    assert len(s.train) == 50 and len(s.validation) == 100 and len(s.test) == 20
    assert len(s.train_labels) == 50 and len(s.test_labels) == 20
    full_test, _ = data.load_split("digits", "test")
    np.testing.assert_array_equal(s.test, full_test[:20])
    bigger = data.load_splits(_cfg(validation_size=100, max_train_examples=60))
    np.testing.assert_array_equal(bigger.train[:50], s.train)  # first n of the same order
    none = data.load_splits(_cfg())
    assert none.validation.shape == (0, 8, 8, 1) and len(none.train) == 1500


def test_splits_validation_too_large():
    with pytest.raises(ValueError, match="validation_size=1500"):
        data.load_splits(_cfg(validation_size=1500))


def test_splits_on_imported_tfds_dataset(synthetic_mnist_dir):
    s = data.load_splits(
        _cfg(name="mnist", data_dir=synthetic_mnist_dir, validation_size=5, max_test_examples=4)
    )
    assert s.info["version"] == "3.0.1" and s.info["source"].startswith("tfds:")
    assert s.info["sizes"] == {"train": 15, "validation": 5, "test": 4}


# ----------------------------------------------------------------------------------------
# Binarization
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)


def test_static_binarization(grey):
    a = binarization.binarize_once(grey, "static", seed=7)
    b = binarization.binarize_once(jnp.asarray(grey), "static", seed=7)
    c = binarization.binarize_once(grey, "static", seed=8)
    assert a.dtype == jnp.uint8 and a.shape == grey.shape
    assert set(np.unique(np.asarray(a)).tolist()) <= {0, 255}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Pixels that are 0 or 255 are deterministic under the draw.
    edge = np.array([[0, 255]], np.uint8).reshape(1, 1, 2, 1)
    np.testing.assert_array_equal(binarization.binarize_once(edge, "static", 0), edge)
    # The draw follows p = x / 255.
    big = np.full((200, 10, 10, 1), 64, np.uint8)
    frac = np.asarray(binarization.binarize_once(big, "static", 0)).mean() / 255
    assert abs(frac - 64 / 255) < 0.02


def test_threshold_binarization():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    out = np.asarray(binarization.binarize_once(x, "threshold", seed=0))
    expected = np.where(x.astype(np.float64) / 255 > 0.5, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("protocol", ["dynamic", "none"])
def test_binarize_once_leaves_grey_levels(grey, protocol):
    np.testing.assert_array_equal(binarization.binarize_once(grey, protocol, seed=0), grey)


def test_dynamic_draws(grey):
    x = jnp.asarray(grey)
    f = jax.jit(lambda k, x: binarization.to_float(k, x, "dynamic"))
    a, b = f(jax.random.key(0), x), f(jax.random.key(1), x)
    assert a.dtype == jnp.float32 and a.shape == grey.shape
    assert set(np.unique(np.asarray(a)).tolist()) <= {0.0, 1.0}
    assert not np.array_equal(a, b)
    keys = jax.random.split(jax.random.key(2), 2000)
    mean = jax.vmap(lambda k: f(k, x))(keys).mean(axis=0)
    np.testing.assert_allclose(mean, grey / 255.0, atol=0.05)


def test_grey_level_draws_follow_every_level_exactly_at_the_ends():
    """Every grey level g is drawn 1 with frequency g / 255 (z-scores over 4000 draws), g = 0 never
    and g = 255 always."""
    x = jnp.asarray(np.tile(np.arange(256, dtype=np.uint8), (2, 1)))        # [2, 256]
    keys = jax.random.split(jax.random.key(3), 4000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: binarization.bernoulli_grey_levels(k, x)))(keys))
    assert draws.dtype == np.float32 and set(np.unique(draws).tolist()) == {0.0, 1.0}
    freq, p = draws.mean(axis=0), np.asarray(x) / 255.0
    assert np.all(freq[:, 0] == 0.0) and np.all(freq[:, 255] == 1.0)
    inner = (p > 0) & (p < 1)
    z = (freq - p)[inner] / np.sqrt(p * (1 - p) / len(keys))[inner]
    assert np.abs(z).max() < 4.5 and 0.8 < np.mean(z ** 2) < 1.2


def test_grey_level_draws_are_independent_within_a_threefry_block_and_row_local():
    """Pixels j and j + D/2 of a row come from one threefry2x32 block: uncorrelated.  A row's draw
    depends on the key and its position only, not on the other rows; odd widths, any event shape
    and other PRNG implementations work."""
    x = jnp.full((4, 200), 128, jnp.uint8)
    keys = jax.random.split(jax.random.key(4), 3000)
    d = np.asarray(jax.jit(jax.vmap(lambda k: binarization.bernoulli_grey_levels(k, x)))(keys))   # [3000, 4, 200]
    a, b = d[:, :, :100] - d[:, :, :100].mean(0), d[:, :, 100:] - d[:, :, 100:].mean(0)
    corr = (a * b).mean(0) / (a.std(0) * b.std(0))                                     # 400 pairs
    assert abs(corr.mean()) < 4 / np.sqrt(len(keys) * corr.size) and np.abs(corr).max() < 0.1
    key = jax.random.key(5)
    other = x.at[1:].set(7)
    np.testing.assert_array_equal(binarization.bernoulli_grey_levels(key, x)[0], binarization.bernoulli_grey_levels(key, other)[0])
    img = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8))
    out = binarization.bernoulli_grey_levels(key, img)
    assert out.shape == img.shape and np.array_equal(np.asarray(out)[np.asarray(img) == 255], np.ones(int((img == 255).sum())))
    odd = jnp.full((1000, 3), 51, jnp.uint8)
    for k in (jax.random.key(6), jax.random.key(6, impl="rbg")):
        assert abs(float(binarization.bernoulli_grey_levels(k, odd).mean()) - 0.2) < 0.03
    with pytest.raises(TypeError, match="uint8"):
        binarization.bernoulli_grey_levels(key, x.astype(jnp.float32))
    huge = jax.ShapeDtypeStruct((2**17, 2**15 + 1), jnp.uint8)        # more pixels than 32-bit counters
    with pytest.raises(ValueError, match="exceeds 2\\*\\*32 counters"):
        jax.eval_shape(lambda a: binarization.bernoulli_grey_levels(key, a), huge)


@pytest.mark.parametrize("protocol", ["static", "threshold", "none"])
def test_to_float_non_dynamic(grey, protocol):
    stored = binarization.binarize_once(grey, protocol, seed=0)
    out = jax.jit(lambda x: binarization.to_float(None, x, protocol))(stored)
    assert out.dtype == jnp.float32 and out.shape == grey.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_allclose(out, np.asarray(stored) / 255.0, rtol=1e-6)
    if protocol != "none":
        assert set(np.unique(np.asarray(out)).tolist()) <= {0.0, 1.0}


def test_dynamic_needs_a_key(grey):
    with pytest.raises(ValueError, match="key"):
        binarization.to_float(None, jnp.asarray(grey), "dynamic")


def test_eval_protocol():
    assert binarization.eval_protocol("dynamic") == "static"
    for p in ("static", "threshold", "none"):
        assert binarization.eval_protocol(p) == p


def test_unknown_protocol(grey):
    for fn in (
        lambda: binarization.binarize_once(grey, "otsu", 0),
        lambda: binarization.to_float(None, jnp.asarray(grey), "otsu"),
        lambda: binarization.eval_protocol("otsu"),
        lambda: binarization.data_mean(grey, "otsu"),
    ):
        with pytest.raises(ValueError, match="dynamic, static, threshold, none"):
            fn()


def test_data_mean(grey):
    for p in ("dynamic", "none", "static"):
        m = binarization.data_mean(grey, p)
        assert m.dtype == np.float64 and m.shape == (8, 8, 1)
        np.testing.assert_allclose(m, grey.mean(axis=0) / 255.0)
    np.testing.assert_allclose(binarization.data_mean(grey, "threshold"), (grey > 127.5).mean(axis=0))
    stored = binarization.binarize_once(grey, "static", seed=3)
    np.testing.assert_allclose(
        binarization.data_mean(stored, "static"), (np.asarray(stored) == 255).mean(axis=0)
    )
