"""CIFAR-10 through TFDS: the offline import of the official binary version into the standard
TFDS `cifar10` dataset, loading it, and the message when it is missing."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from vaegen import cli
from vaegen.data import datasets as data

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIZES = {"data_batch_1.bin": 3, "data_batch_2.bin": 2, "data_batch_3.bin": 4, "data_batch_4.bin": 1,
         "data_batch_5.bin": 2, "test_batch.bin": 5}


def _images(n: int, rng) -> np.ndarray:
    """uint8 [n, 32, 32, 3] whose three channels differ (red: random, green: a ramp along the
    rows, blue: a ramp along the columns), so a swapped plane or a transposed image shows."""
    red = rng.integers(0, 256, (n, 32, 32))
    green = np.broadcast_to((np.arange(32)[:, None] * 8 + rng.integers(0, 8, (n, 1, 1))), (n, 32, 32))
    blue = np.broadcast_to((np.arange(32)[None, :] * 7 + rng.integers(0, 8, (n, 1, 1))), (n, 32, 32))
    return np.stack([red, green, blue], -1).astype(np.uint8)


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The CIFAR-10 binary format, written by hand: per record the label byte, then the red,
    green and blue 32x32 planes, row-major."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for c in range(3):
            for row in range(32):
                out.extend(bytes(int(v) for v in image[row, :, c]))
    return bytes(out)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """A tiny CIFAR-10 binary folder ``<src>/cifar-10-batches-bin/`` and the arrays it holds."""
    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("cifar_src")
    folder = src / data.CIFAR10_FOLDER
    folder.mkdir()
    arrays = {}
    for name, n in SIZES.items():
        x, y = _images(n, rng), rng.integers(0, 10, n)
        arrays[name] = (x, y)
        (folder / name).write_bytes(_records(x, y))
    (folder / data.CIFAR10_META_FILE).write_text("\n".join(CLASSES) + "\n\n")
    train = tuple(np.concatenate(a) for a in zip(*[arrays[f"data_batch_{i}.bin"] for i in range(1, 6)]))
    return src, {"train": train, "test": arrays["test_batch.bin"]}


def _tarball(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / data.CIFAR10_ARCHIVE, "w:gz") as tar:
        tar.add(src / data.CIFAR10_FOLDER, arcname=data.CIFAR10_FOLDER)
    return dest


def _multiset(images, labels):
    """Order-independent view of a split (TFDS shuffles the record order)."""
    return sorted(int(y).to_bytes(1, "big") + x.tobytes() for x, y in zip(images, labels))


def _cfg(**kw):
    base = dict(name="cifar10", data_dir="", validation_size=0, validation_seed=0, max_train_examples=0,
                max_test_examples=0, auto_prepare=False)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_read_cifar_batch_layout(fake_cifar):
    src, expected = fake_cifar
    x, y = data.read_cifar_batch(src / data.CIFAR10_FOLDER / "test_batch.bin")
    assert x.dtype == np.uint8 and x.shape == (5, 32, 32, 3) and y.dtype == np.int64
    np.testing.assert_array_equal(x, expected["test"][0])
    np.testing.assert_array_equal(y, expected["test"][1])
    # The first 1024 bytes after the label are the red plane, row by row.
    raw = (src / data.CIFAR10_FOLDER / "test_batch.bin").read_bytes()
    assert raw[1:33] == bytes(x[0, 0, :, 0]) and raw[1 + 1024 + 32: 1 + 1024 + 64] == bytes(x[0, 1, :, 1])


@pytest.mark.parametrize("layout", ["folder", "tarball", "the folder itself"])
def test_import_roundtrip_through_load_splits(fake_cifar, tmp_path, layout):
    src, expected = fake_cifar
    source = {"folder": src, "tarball": None, "the folder itself": src / data.CIFAR10_FOLDER}[layout]
    if layout == "tarball":
        source = _tarball(src, tmp_path / "archive")
    data_dir = tmp_path / "tfds"
    assert not data.is_prepared("cifar10", data_dir)
    path = data.prepare("cifar10", data_dir=data_dir, from_dir=source, require_standard_sizes=False)
    assert Path(path) == data_dir / "cifar10" / "3.0.2" and data.is_prepared("cifar10", data_dir)
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".vaegen")] == []  # scratch removed

    s = data.load_splits(_cfg(data_dir=str(data_dir), validation_size=4))
    assert s.train.shape == (8, 32, 32, 3) and s.validation.shape == (4, 32, 32, 3) and s.test.shape == (5, 32, 32, 3)
    assert s.train.dtype == np.uint8 and s.train_labels.dtype == np.int64
    assert s.info["event_shape"] == [32, 32, 3] and s.info["version"] == "3.0.2"
    train = (np.concatenate([s.train, s.validation]), np.concatenate([s.train_labels, s.validation_labels]))
    assert _multiset(*train) == _multiset(*expected["train"])
    assert _multiset(s.test, s.test_labels) == _multiset(*expected["test"])


def test_imported_dataset_is_the_standard_tfds_dataset(fake_cifar, tmp_path):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar as tfds_cifar

    src, _ = fake_cifar
    data.prepare("cifar10", data_dir=tmp_path, from_dir=src, require_standard_sizes=False)
    builder = tfds.builder("cifar10", data_dir=tmp_path)
    assert type(builder) is tfds_cifar.Cifar10 and builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 12 and builder.info.splits["test"].num_examples == 5
    assert builder.info.features["label"].names == CLASSES
    record = tfds.data_source("cifar10", split="test", data_dir=tmp_path, download=False)[0]
    assert record["image"].shape == (32, 32, 3) and record["id"].startswith(b"test_")


def test_command_line_from_dir(fake_cifar, tmp_path, capsys):
    src, expected = fake_cifar
    data_dir = tmp_path / "tfds"
    # The fake folder has fewer than the standard 10000 images per file: refused, nothing written.
    assert cli.main(["data", "prepare", "cifar10", "--from-dir", str(src), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaegen: error: ") and "the standard dataset has 10000 per file" in err
    assert not data.is_prepared("cifar10", data_dir)
    # --from-idx keeps its meaning: IDX files, for the MNIST datasets only.
    assert cli.main(["data", "prepare", "cifar10", "--from-idx", str(src), "--data-dir", str(data_dir)]) == 2
    assert "from_idx applies to fashion_mnist, mnist" in capsys.readouterr().err


def test_corrupt_or_missing_files_are_named(fake_cifar, tmp_path):
    src, _ = fake_cifar
    bad = tmp_path / "bad"
    (bad / data.CIFAR10_FOLDER).mkdir(parents=True)
    for p in (src / data.CIFAR10_FOLDER).iterdir():
        (bad / data.CIFAR10_FOLDER / p.name).write_bytes(p.read_bytes())
    batch = bad / data.CIFAR10_FOLDER / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(data.SourceFormatError, match="data_batch_3.bin holds 12282 bytes.*truncated or corrupt"):
        data.prepare("cifar10", data_dir=tmp_path / "tfds", from_dir=bad, require_standard_sizes=False)
    batch.unlink()
    with pytest.raises(data.SourceFormatError, match="data_batch_3.bin not found"):
        data.prepare("cifar10", data_dir=tmp_path / "tfds", from_dir=bad, require_standard_sizes=False)
    with pytest.raises(data.SourceFormatError, match="holds neither cifar-10-binary.tar.gz nor"):
        data.prepare("cifar10", data_dir=tmp_path / "tfds", from_dir=tmp_path / "tfds", require_standard_sizes=False)
    archive = tmp_path / "not_cifar"
    archive.mkdir()
    with tarfile.open(archive / data.CIFAR10_ARCHIVE, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(data.SourceFormatError, match="holds no cifar-10-batches-bin/data_batch_1.bin"):
        data.prepare("cifar10", data_dir=tmp_path / "tfds", from_dir=archive, require_standard_sizes=False)
    assert not (tmp_path / "escape.bin").exists() and not data.is_prepared("cifar10", tmp_path / "tfds")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_splits(_cfg(data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "dataset 'cifar10' is not prepared" in msg and str(tmp_path) in msg
    assert "cifar-10-binary.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert f"vaegen data prepare cifar10 --data-dir {tmp_path} --from-dir DIR" in msg


def test_download_path_needs_no_tensorflow(fake_cifar, tmp_path, monkeypatch):
    """prepare()'s download path, against a local HTTP server serving the archive."""
    src, expected = fake_cifar
    served = _tarball(src, tmp_path / "www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = data._cifar10_builder_class()

        class LocalServer(base, skip_registration=True):
            name = "cifar10"
            URL = f"http://127.0.0.1:{server.server_address[1]}/"
            url_infos = None  # TFDS's registered checksum is that of the real archive

        monkeypatch.setattr(data, "_download_builder_class", lambda name: LocalServer)
        data.prepare("cifar10", data_dir=tmp_path / "tfds", require_standard_sizes=False)
    finally:
        server.shutdown()
        thread.join()
    x, y = data.load_split("cifar10", "test", tmp_path / "tfds")
    assert _multiset(x, y) == _multiset(*expected["test"])


def test_download_builder_uses_the_official_checksum():
    cls = data._download_builder_class("cifar10")
    assert cls.name == "cifar10" and list(cls.url_infos) == [cls.URL + data.CIFAR10_ARCHIVE]
