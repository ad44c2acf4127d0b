"""Datasets: loading, offline preparation, train/validation/test splits and binarization.

Storage convention
------------------
Every dataset is returned as numpy ``uint8`` grey levels in ``0..255`` with shape
``[N, H, W, C]`` (labels, where the dataset has them, as ``int64 [N]``).  The trainer puts
these arrays on the device whole and converts batches to floats inside its jitted steps
with :func:`vaegen.data.binarization.to_float`.  ``binarized_mnist`` is stored by TFDS as ``{0, 1}``; it is
multiplied by 255 on loading so that it follows the same convention.

Datasets
--------
``fashion_mnist``, ``mnist``, ``binarized_mnist`` and ``cifar10`` (``uint8 [N, 32, 32, 3]``
colour images, 50000 train and 10000 test, labels 0..9) come from TensorFlow Datasets (TFDS),
read without TensorFlow: TFDS writes them as ``array_record`` files and they are read with
``tfds.data_source``.  ``digits`` is scikit-learn's 8x8 digits (1797 images, bundled with
scikit-learn, no download); its grey levels ``0..16`` are rescaled to ``round(v * 255 / 16)``
and it is split deterministically: the first 1500 images are ``"train"``, the remaining 297
``"test"``.

Decoding 60k PNG records takes several seconds, so :func:`load_split` caches the decoded
arrays in ``<data_dir>/<name>/<version>/vaegen_cache-<split>.npz`` next to the prepared
dataset (skipped silently where that directory is read-only).

Offline preparation
-------------------
TFDS downloads MNIST and Fashion-MNIST from their upstream hosts.  Without internet,
:func:`prepare` imports the original IDX files (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``) from a local directory.  It runs TFDS's own builder for
the dataset with only the file access replaced, so the result is the standard TFDS dataset
(same name, version, features and splits) and ``tfds.builder(name)`` /
``tfds.data_source(name)`` read it exactly as if TFDS had downloaded it.  On Debian and
Ubuntu, ``apt-get install dataset-fashion-mnist`` installs the Fashion-MNIST IDX files in
``/usr/share/datasets/fashion-mnist``; :func:`prepare` uses that directory automatically.
CIFAR-10 is imported the same way from a directory holding the official binary version,
``cifar-10-binary.tar.gz`` or its extracted ``cifar-10-batches-bin/`` folder
(``vaegen data prepare cifar10 --from-dir DIR``).

Binarization protocols live in :mod:`vaegen.data.binarization`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import logging
import os
import re
import socket
import struct
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vaegen import files as files_lib
from vaegen.errors import ConfigError, DatasetNotFoundError, IDXFormatError, SourceFormatError

logger = logging.getLogger(__name__)

TFDS_DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist", "binarized_mnist", "cifar10")
"""Datasets read through TFDS."""

DATASETS: tuple[str, ...] = TFDS_DATASETS + ("digits",)
"""Every dataset name :func:`load_split` and :func:`load_splits` accept."""

IDX_DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist")
"""Datasets :func:`prepare` can import from local IDX files."""

CIFAR_DATASETS: tuple[str, ...] = ("cifar10",)
"""Datasets :func:`prepare` can import from the official CIFAR binary version."""

CIFAR10_HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES: tuple[str, ...] = ("test_batch.bin",)
CIFAR10_META_FILE = "batches.meta.txt"

DEBIAN_IDX_DIRS: dict[str, str] = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
"""Where Debian packages install IDX files (``apt-get install dataset-fashion-mnist``)."""

VALIDATION_MODES: tuple[str, ...] = ("random", "tail", "split")
"""How :func:`load_splits` takes the validation split: ``random`` (a seeded permutation of the
train split), ``tail`` (its last ``validation_size`` examples, unshuffled: the IWAE protocol),
``split`` (the dataset's own ``validation`` split; binarized_mnist)."""

DIGITS_TRAIN_SIZE = 1500
"""``digits``: the first 1500 of scikit-learn's 1797 images are ``"train"``, the rest ``"test"``."""

_IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MNIST_SHAPE = (28, 28)
_NUM_CLASSES = 10
_CIFAR_SIZE = 32
_CIFAR_RECORD_BYTES = 1 + 3 * _CIFAR_SIZE * _CIFAR_SIZE  # a label byte, then the R, G and B planes
_CIFAR10_RECORDS_PER_FILE = 10000

_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_READ_CHUNK = 8192  # records decoded per data-source call
_REACHABILITY_TIMEOUT_S = 5.0


# ----------------------------------------------------------------------------------------
# Names, directories, messages
# ----------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")


def _tfds() -> Any:
    """Imports TFDS lazily (it takes a second or two and is not needed for binarization)."""
    import tensorflow_datasets as tfds

    return tfds


@functools.lru_cache(maxsize=None)
def tfds_installed() -> bool:
    """Whether tensorflow-datasets can be imported.  Without it (a bare accelerator image), a dataset
    prepared elsewhere is read from the arrays vaegen cached beside it (:func:`cached_dataset_dir`)."""
    try:
        _tfds()
    except ImportError:
        return False
    return True


def default_data_dir() -> str:
    """TFDS's default data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

    Resolved at call time, so a ``TFDS_DATA_DIR`` set after importing TFDS is honoured.
    """
    if not tfds_installed():
        return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    return os.path.expanduser(_tfds().core.constants.get_default_data_dir())


def cached_dataset_dir(name: str, data_dir: str | os.PathLike[str]) -> Path | None:
    """``<data_dir>/<name>/<version>/`` of a dataset prepared elsewhere and copied here with the arrays
    vaegen cached beside it (``dataset_info.json`` and ``vaegen_cache-train.npz``, ``-test.npz``;
    ``scripts/device_data.py`` makes such a copy): the latest version there, or None."""
    root = Path(os.path.expanduser(os.fspath(data_dir))) / name
    found = sorted(p for p in root.glob("*") if (p / "dataset_info.json").is_file()
                   and (p / "vaegen_cache-train.npz").is_file()) if root.is_dir() else []
    return found[-1] if found else None


def _from_cache_only(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A split read from vaegen's cached arrays alone (no tensorflow-datasets here)."""
    dataset_dir = cached_dataset_dir(name, data_dir)
    cached = (_read_cache(_cache_path(dataset_dir, split), _fingerprint(dataset_dir, split))
              if dataset_dir is not None and _cache_path(dataset_dir, split).is_file() else None)
    if cached is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} needs tensorflow-datasets, which is not installed here, or a copy of a prepared "
            f"dataset with vaegen's cached arrays in {data_dir}/{name}/<version>/ (its {split} split is missing): "
            "pip install tensorflow-datasets, or copy one made by scripts/device_data.py")
    return cached


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> str:
    """The data directory to use; a :class:`vaegen.errors.ConfigError` if it is (or lies under) a
    file, where nothing could be prepared."""
    path = os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if str(existing) == os.path.normpath(path) else f"lies under the file {existing}"
        raise ConfigError(f"data_dir {path} {where}, not a directory: point config.data.data_dir (or --data-dir) at "
                          f"a TFDS data directory, e.g. {default_data_dir()}")
    return path


def how_to_get(name: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """One line of instructions to prepare dataset ``name`` in ``data_dir``."""
    _check_name(name)
    if name == "digits":
        return "'digits' is bundled with scikit-learn (pip install scikit-learn)"
    data_dir = _resolve_data_dir(data_dir)
    flag = "" if data_dir == default_data_dir() else f" --data-dir {data_dir}"
    text = f"get it with `vaegen data prepare {name}{flag}` (needs internet)"
    if name == "fashion_mnist":
        src = DEBIAN_IDX_DIRS[name]
        text += (f", or offline with `apt-get install dataset-fashion-mnist` then "
                 f"`vaegen data prepare {name}{flag} --from-idx {src}`")
    elif name == "mnist":
        text += (", or offline from the four MNIST IDX files (train/t10k images and labels, .gz or not) "
                 f"in a directory DIR: `vaegen data prepare {name}{flag} --from-idx DIR`")
    elif name == "cifar10":
        text += (f", or offline from the CIFAR-10 binary version ({CIFAR10_ARCHIVE} from {CIFAR10_HOMEPAGE}, or "
                 f"its extracted {CIFAR10_FOLDER}/ folder) in a directory DIR: "
                 f"`vaegen data prepare {name}{flag} --from-dir DIR`")
    return text


def _not_found(name: str, data_dir: str, reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared in the TFDS data_dir {data_dir} ({reason}); "
        + how_to_get(name, data_dir)
    )


def _builder(name: str, data_dir: str) -> Any:
    """TFDS's registered builder for ``name`` (reads ``dataset_info.json`` if prepared)."""
    return _tfds().builder(name, data_dir=data_dir, file_format="array_record")


def _builder_prepared(builder: Any) -> bool:
    # Checking for the file first avoids TFDS's warning about a missing dataset_info.json.
    info_file = Path(os.fspath(builder.data_path)) / "dataset_info.json"
    return info_file.is_file() and bool(builder.is_prepared())


def is_prepared(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether dataset ``name`` can be loaded from ``data_dir`` without preparing it.

    ``digits`` is always prepared (it is bundled with scikit-learn).
    """
    _check_name(name)
    if name == "digits":
        return True
    return _builder_prepared(_builder(name, _resolve_data_dir(data_dir)))


# ----------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not, detected from its first bytes).

    The header is the magic number ``0x0000TTNN`` (``TT`` the element type, ``NN`` the
    number of dimensions) followed by ``NN`` big-endian ``uint32`` sizes.

    Returns:
      The array with the header's dimensions and element type (``uint8`` for MNIST).

    Raises:
      IDXFormatError: the file is missing, not an IDX file, or its size does not match
        its header; the message names the file.
    """
    return _read_idx(path)[1]


def _read_idx(path: str | os.PathLike[str]) -> tuple[int, np.ndarray]:
    """(magic number, array) of an IDX file; see :func:`read_idx`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IDXFormatError(f"IDX file not found: {path}") from None
    except OSError as e:
        raise IDXFormatError(f"Cannot read IDX file {path}: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise IDXFormatError(f"Corrupt gzip IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IDXFormatError(
            f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty file)'}."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"Truncated IDX header in {path}.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXFormatError(
            f"IDX file {path} holds {len(raw) - header} bytes of data but its header "
            f"(dims {list(dims)}, {dtype}) announces {expected}: the file is truncated or corrupt."
        )
    magic = int.from_bytes(raw[:4], "big")
    return magic, np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX image file: ``uint8 [N, 28, 28]`` (magic ``0x00000803``).

    Raises:
      IDXFormatError: naming the file, if it is not a 28x28 ``uint8`` image file.
    """
    magic, x = _read_idx(path)
    if magic != _IDX_IMAGES_MAGIC or x.shape[1:] != _MNIST_SHAPE:
        raise IDXFormatError(
            f"{path} is not an MNIST-style image file: magic 0x{magic:08x}, shape "
            f"{list(x.shape)} (expected magic 0x{_IDX_IMAGES_MAGIC:08x}, shape [N, 28, 28])."
        )
    return x


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX label file: ``int64 [N]`` in ``0..9`` (magic ``0x00000801``).

    Raises:
      IDXFormatError: naming the file, if it is not a label file or has labels > 9.
    """
    magic, y = _read_idx(path)
    if magic != _IDX_LABELS_MAGIC:
        raise IDXFormatError(
            f"{path} is not an MNIST-style label file: magic 0x{magic:08x} "
            f"(expected 0x{_IDX_LABELS_MAGIC:08x})."
        )
    if y.size and int(y.max()) >= _NUM_CLASSES:
        raise IDXFormatError(f"{path} holds label {int(y.max())}, outside 0..{_NUM_CLASSES - 1}.")
    return y.astype(np.int64)


def find_idx_file(source_dir: str | os.PathLike[str], stem: str) -> Path:
    """Finds the IDX file ``stem`` (e.g. ``train-images-idx3-ubyte``) in ``source_dir``.

    Accepts ``<stem>.gz``, ``<stem>`` and the ``train-images.idx3-ubyte`` spelling.

    Raises:
      IDXFormatError: naming the file names tried, if none exists.
    """
    source_dir = Path(source_dir)
    dotted = stem.replace("-idx", ".idx")
    candidates = [f"{stem}.gz", stem, f"{dotted}.gz", dotted]
    for c in candidates:
        if (source_dir / c).is_file():
            return source_dir / c
    raise IDXFormatError(
        f"IDX file {stem}[.gz] not found in {source_dir} (tried {', '.join(candidates)})."
    )


def _check_idx_pair(images_path: str, labels_path: str, expected: int | None) -> int:
    """Validates an images/labels pair of IDX files; returns their number of examples."""
    n_images = read_idx_images(images_path).shape[0]
    n_labels = read_idx_labels(labels_path).shape[0]
    if n_images != n_labels:
        raise IDXFormatError(
            f"{images_path} holds {n_images} images but {labels_path} holds {n_labels} labels."
        )
    if expected is not None and n_images != expected:
        raise IDXFormatError(
            f"{images_path} holds {n_images} images; the standard dataset has {expected}. "
            "Refusing to write it under the standard TFDS name (pass "
            "require_standard_sizes=False to import it anyway)."
        )
    return n_images


def _png_bytes(image: np.ndarray) -> bytes:
    """Encodes a ``uint8 [H, W]`` grey or ``[H, W, 3]`` RGB image as (8-bit) PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class _LocalIDX:
    """Stands in for TFDS's download manager: maps each URL to the local IDX file with the
    same name (``.gz`` or decompressed) in ``source_dir``."""

    def __init__(self, source_dir: str | os.PathLike[str]):
        self.source_dir = Path(source_dir)

    def download_and_extract(self, url_or_urls: Any) -> Any:
        def local(url: str) -> str:
            name = os.path.basename(urllib.parse.urlparse(url).path)
            stem = name[: -len(".gz")] if name.endswith(".gz") else name
            return os.fspath(find_idx_file(self.source_dir, stem))

        if isinstance(url_or_urls, dict):
            return {k: local(v) for k, v in url_or_urls.items()}
        if isinstance(url_or_urls, (list, tuple)):
            return type(url_or_urls)(local(u) for u in url_or_urls)
        return local(url_or_urls)


class _DownloadOnly:
    """TFDS's download manager with ``download_and_extract`` reduced to ``download``.

    TFDS extracts archives with TensorFlow; :func:`read_idx` decompresses gzip itself.
    """

    def __init__(self, dl_manager: Any):
        self._dl_manager = dl_manager

    def download_and_extract(self, url_or_urls: Any) -> Any:
        return self._dl_manager.download(url_or_urls)


def _point_to_official_code(cls: type, base: type) -> None:
    """Makes TFDS look for builder ``cls``'s files next to the official builder ``base``.

    TFDS finds a builder's URL checksums (``code_path``) and metadata files such as
    ``CITATIONS.bib`` (``pkg_dir_path``) next to its source file.  Pointing both at the
    official builder's file gives the subclass the official checksums and metadata.  (It
    also sidesteps TFDS's own ``code_path``, which needs the ``importlib_resources``
    backport that TFDS does not install on Python >= 3.9.)
    """
    import inspect

    from etils import epath

    code_path = epath.Path(inspect.getfile(base))
    cls.code_path = code_path  # type: ignore[attr-defined]
    cls.pkg_dir_path = code_path.parent  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def _idx_builder_class(name: str) -> type:
    """TFDS's own MNIST / Fashion-MNIST builder with TensorFlow-free file access.

    ``_split_generators`` is TFDS's, given a :class:`_LocalIDX` when importing local files
    (``_vaegen_source_dir`` set), otherwise TFDS's download manager (which checks TFDS's
    registered URL checksums) wrapped in :class:`_DownloadOnly`.  ``_generate_examples``
    parses the IDX files with numpy and yields PNG bytes (TFDS encodes numpy images with
    TensorFlow but stores bytes as given).  The number of examples comes from the IDX
    headers; with ``_vaegen_strict`` it must equal TFDS's standard split size.
    """
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    base = {"fashion_mnist": tfds_mnist.FashionMNIST, "mnist": tfds_mnist.MNIST}[name]

    class _IDXBuilder(base, skip_registration=True):  # type: ignore[misc, valid-type]
        _vaegen_source_dir: str | None = None
        _vaegen_strict: bool = True

        def _split_generators(self, dl_manager: Any) -> Any:
            if self._vaegen_source_dir is not None:
                dl_manager = _LocalIDX(self._vaegen_source_dir)
            else:
                dl_manager = _DownloadOnly(dl_manager)
            generators = super()._split_generators(dl_manager)
            for g in generators:  # validate every file before TFDS starts writing
                kw = g.gen_kwargs
                _check_idx_pair(
                    kw["data_path"],
                    kw["label_path"],
                    kw["num_examples"] if self._vaegen_strict else None,
                )
            return generators

        def _generate_examples(
            self, num_examples: int, data_path: str, label_path: str
        ) -> Iterator[tuple[int, dict[str, Any]]]:
            del num_examples  # the IDX header's count is used (validated above)
            images = read_idx_images(data_path)
            labels = read_idx_labels(label_path)
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": _png_bytes(image), "label": int(label)}

    _IDXBuilder.name = name
    _point_to_official_code(_IDXBuilder, base)
    return _IDXBuilder


@functools.lru_cache(maxsize=None)
def _binarized_mnist_builder_class() -> type:
    """TFDS's ``binarized_mnist`` builder with TensorFlow-free parsing of the ``.amat``
    files (values ``{0, 1}``, stored as PNG bytes)."""
    from tensorflow_datasets.datasets.binarized_mnist import (
        binarized_mnist_dataset_builder as tfds_bmnist,
    )

    base = tfds_bmnist.Builder

    class _BinarizedMNIST(base, skip_registration=True):  # type: ignore[misc, valid-type]
        URL = tfds_bmnist._URL  # download host (the builder joins file names to it itself)

        def _generate_examples(self, data_path: str) -> Iterator[tuple[int, dict[str, Any]]]:
            images = np.loadtxt(data_path, delimiter=" ", dtype=np.uint8)
            images = images.reshape((-1,) + _MNIST_SHAPE)
            for index, image in enumerate(images):
                yield index, {"image": _png_bytes(image)}

    _BinarizedMNIST.name = "binarized_mnist"
    _point_to_official_code(_BinarizedMNIST, base)
    return _BinarizedMNIST


# ----------------------------------------------------------------------------------------
# CIFAR-10 binary files
# ----------------------------------------------------------------------------------------


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads a CIFAR-10 binary batch file (``data_batch_1.bin``, ..., ``test_batch.bin``).

    Each record is 3073 bytes: the label (0..9), then the 1024 red, the 1024 green and the
    1024 blue values of the 32x32 image, each plane row by row.

    Returns:
      ``(images, labels)``: ``uint8 [N, 32, 32, 3]`` and ``int64 [N]``.

    Raises:
      SourceFormatError: naming the file, if it is missing, not a whole number of records,
        or holds a label above 9.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SourceFormatError(f"cannot read CIFAR-10 file {path}: {e}") from e
    if not raw or len(raw) % _CIFAR_RECORD_BYTES:
        raise SourceFormatError(
            f"{path} holds {len(raw)} bytes, not a whole number of CIFAR-10 records of {_CIFAR_RECORD_BYTES} bytes "
            "(a label byte and 32x32x3 pixel bytes): the file is truncated or corrupt."
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if int(labels.max()) >= _NUM_CLASSES:
        raise SourceFormatError(f"{path} holds label {int(labels.max())}, outside 0..{_NUM_CLASSES - 1}: "
                                "it is not a CIFAR-10 batch file.")
    images = records[:, 1:].reshape(-1, 3, _CIFAR_SIZE, _CIFAR_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _extract_cifar10(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extracts the CIFAR-10 files (and nothing else) of ``archive`` into
    ``dest/cifar-10-batches-bin/``; returns ``dest``.  Members are read by their expected names,
    so no path from the archive is ever written."""
    import tarfile

    archive, dest = Path(archive), Path(dest)
    folder = dest / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES + (CIFAR10_META_FILE,):
                try:
                    member = tar.getmember(f"{CIFAR10_FOLDER}/{name}")
                except KeyError:
                    raise SourceFormatError(f"{archive} holds no {CIFAR10_FOLDER}/{name}: it is not the CIFAR-10 "
                                            f"binary version ({CIFAR10_HOMEPAGE})") from None
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise SourceFormatError(f"{CIFAR10_FOLDER}/{name} in {archive} is not a regular file")
                with source, open(folder / name, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SourceFormatError(f"cannot read the CIFAR-10 archive {archive}: {type(e).__name__}: {e}") from e
    return dest


def _find_cifar10(source_dir: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``(root, None)`` with ``root/cifar-10-batches-bin/`` for a ``--from-dir`` source that is or
    holds the extracted folder, or ``(source, archive)`` for one that holds the archive."""
    source = Path(source_dir)
    if (source / CIFAR10_FOLDER).is_dir():
        return source, None
    if source.name == CIFAR10_FOLDER and (source / CIFAR10_TRAIN_FILES[0]).is_file():
        return source.parent, None
    if (source / CIFAR10_ARCHIVE).is_file():
        return source, source / CIFAR10_ARCHIVE
    raise SourceFormatError(
        f"{source} holds neither {CIFAR10_ARCHIVE} nor its extracted {CIFAR10_FOLDER}/ folder: download the "
        f"CIFAR-10 binary version from {CIFAR10_HOMEPAGE}"
    )


def _cifar10_root(source_dir: str | os.PathLike[str], scratch: str | os.PathLike[str] | None) -> Path:
    """The directory that holds ``cifar-10-batches-bin/`` for a ``--from-dir`` source: the source
    itself, its parent if it is that folder, or ``scratch`` after extracting the archive."""
    root, archive = _find_cifar10(source_dir)
    if archive is None:
        return root
    if scratch is None:
        raise RuntimeError("extracting the CIFAR-10 archive needs a scratch directory")
    return _extract_cifar10(archive, scratch)


def _check_cifar10_folder(folder: Path, strict: bool) -> None:
    """Validates every CIFAR-10 file in ``folder`` before TFDS starts writing."""
    for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES:
        path = folder / name
        if not path.is_file():
            raise SourceFormatError(f"CIFAR-10 file {name} not found in {folder}")
        n = read_cifar_batch(path)[1].shape[0]
        if strict and n != _CIFAR10_RECORDS_PER_FILE:
            raise SourceFormatError(
                f"{path} holds {n} images; the standard dataset has {_CIFAR10_RECORDS_PER_FILE} per file. "
                "Refusing to write it under the standard TFDS name (pass require_standard_sizes=False to "
                "import it anyway)."
            )
    meta = folder / CIFAR10_META_FILE
    try:
        names = [line for line in meta.read_text().split("\n") if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise SourceFormatError(f"cannot read the CIFAR-10 class names {meta}: {e}") from e
    if len(names) != _NUM_CLASSES:
        raise SourceFormatError(f"{meta} names {len(names)} classes; CIFAR-10 has {_NUM_CLASSES}")


class _CIFAR10Files:
    """Stands in for TFDS's download manager in the CIFAR-10 builder: ``download_and_extract``
    of the archive's URL returns a directory holding ``cifar-10-batches-bin/`` -- from the local
    ``source_dir``, or downloaded by TFDS's ``dl_manager`` (which checks TFDS's registered URL
    checksums) and extracted with :mod:`tarfile` (TFDS extracts with TensorFlow) -- after
    validating every file."""

    def __init__(self, source_dir: str | None, dl_manager: Any, scratch: str | None, strict: bool):
        self.source_dir, self.dl_manager, self.scratch, self.strict = source_dir, dl_manager, scratch, strict

    def download_and_extract(self, url: str) -> str:
        if self.source_dir is not None:
            root = _cifar10_root(self.source_dir, self.scratch)
        else:
            if self.scratch is None:
                raise RuntimeError("extracting the CIFAR-10 archive needs a scratch directory")
            root = _extract_cifar10(self.dl_manager.download(url), self.scratch)
        _check_cifar10_folder(root / CIFAR10_FOLDER, self.strict)
        return os.fspath(root)


@functools.lru_cache(maxsize=None)
def _cifar10_builder_class() -> type:
    """TFDS's own CIFAR-10 builder with TensorFlow-free file access.

    ``_split_generators`` is TFDS's (it reads the class names and lists the batch files), given
    a :class:`_CIFAR10Files` as its download manager; ``_generate_examples`` is TFDS's with the
    batch files parsed by numpy (:func:`read_cifar_batch`) and the images given as PNG bytes
    (TFDS encodes numpy images with TensorFlow but stores bytes as given).  The archive's URL
    is ``URL + cifar-10-binary.tar.gz``.
    """
    from tensorflow_datasets.image_classification import cifar as tfds_cifar

    base = tfds_cifar.Cifar10

    class _Cifar10(base, skip_registration=True):  # type: ignore[misc, valid-type]
        URL = "https://www.cs.toronto.edu/~kriz/"  # download host of the official archive
        _vaegen_source_dir: str | None = None
        _vaegen_strict: bool = True
        _vaegen_scratch: str | None = None

        @property
        def _cifar_info(self) -> Any:
            return super()._cifar_info._replace(url=urllib.parse.urljoin(self.URL, CIFAR10_ARCHIVE))

        def _split_generators(self, dl_manager: Any) -> Any:
            files = _CIFAR10Files(self._vaegen_source_dir, dl_manager, self._vaegen_scratch, self._vaegen_strict)
            return super()._split_generators(files)

        def _generate_examples(self, split_prefix: str, filepaths: Any) -> Iterator[tuple[int, dict[str, Any]]]:
            index = 0  # TFDS's keys: the record's position in the split
            for path in filepaths:
                images, labels = read_cifar_batch(path)
                for image, label in zip(images, labels):
                    yield index, {"id": f"{split_prefix}{index:05d}", "image": _png_bytes(image), "label": int(label)}
                    index += 1

    _Cifar10.name = "cifar10"
    _point_to_official_code(_Cifar10, base)
    return _Cifar10


@contextlib.contextmanager
def _scratch_dir(data_dir: str) -> Iterator[str]:
    """A temporary directory inside ``data_dir`` (where there is room for the extracted files),
    removed afterwards."""
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vaegen-extract-", dir=data_dir) as scratch:
        yield scratch


def _download_builder_class(name: str) -> type:
    """The TensorFlow-free TFDS builder that downloads dataset ``name`` from ``cls.URL``."""
    if name in IDX_DATASETS:
        return _idx_builder_class(name)
    if name == "cifar10":
        return _cifar10_builder_class()
    return _binarized_mnist_builder_class()


def _host_and_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)


def _host_reachable(host: str, port: int, timeout: float = _REACHABILITY_TIMEOUT_S) -> str | None:
    """``None`` if a TCP connection to ``host:port`` opens within ``timeout`` seconds, else
    the reason it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def prepare(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    from_idx: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    from_dir: str | os.PathLike[str] | None = None,
    require_standard_sizes: bool = True,
) -> str:
    """Prepares dataset ``name`` in the TFDS ``data_dir`` as the standard TFDS dataset.

    In order: if it is already prepared, nothing is done; if ``from_dir`` (or ``from_idx``) is
    given, the local files in that directory are imported; for ``fashion_mnist``, the Debian
    directory ``/usr/share/datasets/fashion-mnist`` is imported if it exists; otherwise, if
    ``download``, TFDS downloads it (after checking within ~5 s that the download host is
    reachable, so an offline machine fails fast).  TFDS shows its progress bars.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: TFDS data directory; ``None`` for TFDS's default.
      from_idx: directory with the four IDX files (``.gz`` or not); mnist and
        fashion_mnist only.
      download: allow downloading.
      from_dir: directory with the dataset's original files: the four IDX files (mnist,
        fashion_mnist), or ``cifar-10-binary.tar.gz`` or its extracted
        ``cifar-10-batches-bin/`` folder (cifar10; the folder itself may be given).
      require_standard_sizes: refuse files whose example counts differ from the standard
        dataset's (MNIST: 60000 train, 10000 test; CIFAR-10: 10000 per batch file), since
        the result is written under the standard TFDS name.

    Returns:
      The prepared dataset's directory ``<data_dir>/<name>/<version>`` (for ``digits``,
      scikit-learn's data file).

    Raises:
      ValueError: unknown ``name``, ``from_idx`` for a dataset without IDX files, or
        ``from_dir`` for a dataset without an offline import.
      SourceFormatError: a local file is missing or corrupt (naming the file);
        ``IDXFormatError`` for IDX files.
      DatasetNotFoundError: the dataset could not be prepared, with how to get it.
    """
    _check_name(name)
    if name == "digits":
        import sklearn.datasets

        return os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")
    data_dir = _resolve_data_dir(data_dir)
    builder = _builder(name, data_dir)
    if _builder_prepared(builder):
        return os.fspath(builder.data_path)

    if from_idx is not None and name not in IDX_DATASETS:
        raise ValueError(f"from_idx applies to {', '.join(IDX_DATASETS)}, not {name!r}.")
    if from_idx is not None and from_dir is not None:
        raise ValueError("give the source directory once: from_dir (or from_idx, IDX files only), not both.")
    source = from_dir if from_dir is not None else from_idx
    if source is None and name in DEBIAN_IDX_DIRS and os.path.isdir(DEBIAN_IDX_DIRS[name]):
        source = DEBIAN_IDX_DIRS[name]
    if source is not None and name in CIFAR_DATASETS:
        if not os.path.isdir(source):
            raise SourceFormatError(f"CIFAR-10 source directory not found: {source}")
        _find_cifar10(source)  # fails before TFDS creates any directory
        logger.info("Importing %s from %s into %s", name, source, data_dir)
        cifar_builder = _cifar10_builder_class()(data_dir=data_dir, file_format="array_record")
        cifar_builder._vaegen_source_dir = os.fspath(source)
        cifar_builder._vaegen_strict = require_standard_sizes
        with _scratch_dir(data_dir) as scratch:
            cifar_builder._vaegen_scratch = scratch
            cifar_builder.download_and_prepare()
        return os.fspath(cifar_builder.data_path)
    if source is not None:
        if name not in IDX_DATASETS:
            raise ValueError(f"{name!r} has no offline import; from_dir applies to "
                             f"{', '.join(IDX_DATASETS + CIFAR_DATASETS)}.")
        if not os.path.isdir(source):
            raise IDXFormatError(f"IDX source directory not found: {source}")
        logger.info("Importing %s from IDX files in %s into %s", name, source, data_dir)
        idx_builder = _idx_builder_class(name)(data_dir=data_dir, file_format="array_record")
        idx_builder._vaegen_source_dir = os.fspath(source)
        idx_builder._vaegen_strict = require_standard_sizes
        idx_builder.download_and_prepare()
        return os.fspath(idx_builder.data_path)

    if not download:
        raise _not_found(name, data_dir, "downloading not allowed")
    cls = _download_builder_class(name)
    host, port = _host_and_port(cls.URL)
    reason = _host_reachable(host, port)
    if reason is not None:
        raise _not_found(name, data_dir, f"download host {host}:{port} unreachable: {reason}")
    try:
        dl_builder = cls(data_dir=data_dir, file_format="array_record")
        dl_builder._vaegen_strict = require_standard_sizes
        with _scratch_dir(data_dir) as scratch:
            dl_builder._vaegen_scratch = scratch
            dl_builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download/preparation failure
        raise _not_found(name, data_dir, f"download failed: {type(e).__name__}: {e}") from e
    return os.fspath(dl_builder.data_path)


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    if split == "train":
        return x[:DIGITS_TRAIN_SIZE], y[:DIGITS_TRAIN_SIZE]
    if split == "test":
        return x[DIGITS_TRAIN_SIZE:], y[DIGITS_TRAIN_SIZE:]
    raise ValueError(f"'digits' has splits 'train' and 'test', not {split!r}.")


def _cache_path(dataset_dir: Path, split: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    if safe != split:
        safe += "-" + hashlib.sha1(split.encode()).hexdigest()[:8]
    return dataset_dir / f"vaegen_cache-{safe}.npz"


def _fingerprint(dataset_dir: Path, split: str) -> str:
    """Identifies the prepared dataset's content (its ``dataset_info.json``) and split."""
    info = (dataset_dir / "dataset_info.json").read_bytes()
    return hashlib.sha256(info + f"|{split}|{_CACHE_FORMAT}".encode()).hexdigest()


def _read_cache(path: Path, fingerprint: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The cached split, or None if the cache is stale, truncated or damaged (it is then rebuilt
    from the prepared dataset: a cache holds nothing that is not there)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            labels = np.asarray(z["labels"]) if bool(z["has_labels"]) else None
            return np.asarray(z["images"]), labels
    except files_lib.READ_ERRORS + (TypeError, AttributeError):  # not an .npz archive: np.load gave an array
        return None


def _write_cache(
    path: Path, fingerprint: str, images: np.ndarray, labels: np.ndarray | None
) -> None:
    """Writes the cache atomically (:func:`vaegen.files.write_atomic`); skipped (with a debug log) if
    the directory is read-only or full: a cache is never needed."""
    try:
        files_lib.write_npz(path, {"images": images,
                                   "labels": labels if labels is not None else np.zeros((0,), np.int64),
                                   "has_labels": np.array(labels is not None),
                                   "fingerprint": np.array(fingerprint)}, kind="data", report_disk_full=False)
    except OSError as e:
        logger.debug("Not caching %s: %s", path, e)


def _read_data_source(
    source: Any, image_shape: tuple[int, ...], has_labels: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads every record of a TFDS data source into ``uint8 [N, *image_shape]`` images
    and ``int64 [N]`` labels (``None`` without labels), in the source's order."""
    n = len(source)
    images = np.empty((n,) + tuple(image_shape), np.uint8)
    labels = np.empty((n,), np.int64) if has_labels else None
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, n)))
        records = source.__getitems__(keys) if batched else [source[k] for k in keys]
        for i, record in zip(keys, records):
            images[i] = record["image"]
            if labels is not None:
                labels[i] = record["label"]
    return images, labels


def load_split(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Loads one split of a prepared dataset into memory.

    Args:
      name: one of :data:`DATASETS`.
      split: a TFDS split (``"train"``, ``"test"``, ``"validation"`` for binarized_mnist,
        slices such as ``"train[:1000]"``); ``"train"`` or ``"test"`` for ``digits``.
      data_dir: TFDS data directory; ``None`` for TFDS's default.

    Returns:
      ``(images, labels)``: ``uint8 [N, H, W, C]`` grey levels 0..255 in the order TFDS
      stores them, and ``int64 [N]`` labels, or ``None`` for datasets without labels
      (binarized_mnist).

    Raises:
      ValueError: unknown ``name``.
      DatasetNotFoundError: the dataset is not prepared in ``data_dir`` (see :func:`prepare`).
    """
    _check_name(name)
    if name == "digits":
        return _load_digits(split)
    data_dir = _resolve_data_dir(data_dir)
    if not tfds_installed():
        return _from_cache_only(name, split, data_dir)
    builder = _builder(name, data_dir)
    if not _builder_prepared(builder):
        raise _not_found(name, data_dir, "no prepared dataset found")
    dataset_dir = Path(os.fspath(builder.data_path))
    cache = _cache_path(dataset_dir, split)
    fingerprint = _fingerprint(dataset_dir, split)
    cached = _read_cache(cache, fingerprint) if cache.exists() else None
    if cached is not None:
        return cached
    source = _tfds().data_source(name, split=split, data_dir=data_dir, download=False)
    features = builder.info.features
    images, labels = _read_data_source(
        source, tuple(features["image"].shape), has_labels="label" in features
    )
    if name == "binarized_mnist":
        images *= 255  # stored as {0, 1}
    _write_cache(cache, fingerprint, images, labels)
    return images, labels


# ----------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation / test data, ``uint8 [N, H, W, C]`` grey levels 0..255.

    ``validation`` may hold zero examples.  Labels are ``int64 [N]`` or ``None`` for
    datasets without labels.  ``info`` records where the data came from: ``name``,
    ``version`` (TFDS version string, or ``"sklearn"``), ``event_shape`` (list),
    ``sizes`` (dict of split sizes), ``validation_seed``, ``source``, ``data_dir``.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    validation_labels: np.ndarray | None
    test_labels: np.ndarray | None
    info: dict[str, Any]


def load_splits(data_cfg: Any) -> Splits:
    """Loads a dataset's train / validation / test splits as a config describes them.

    The validation set is taken out of the dataset's train split (``validation_mode``):
    ``random``, a permutation of the train split seeded with ``validation_seed``
    (``np.random.default_rng``) gives the validation examples (its first ``validation_size``
    entries) and the train examples (the rest, in permuted order); ``tail``, the last
    ``validation_size`` examples are the validation set and the others, in order, the train
    set; ``split``, the dataset's own ``validation`` split (``validation_size`` unused).  Of
    the train examples the first ``max_train_examples`` are kept.  The test set is the first
    ``max_test_examples`` of the test split.

    Args:
      data_cfg: an ``ml_collections.ConfigDict`` (or any object with attributes):
        ``name``; ``data_dir`` (``''`` = TFDS default); ``validation_size`` (0 = none);
        ``validation_seed``; ``validation_mode`` (``random``); ``max_train_examples`` and
        ``max_test_examples`` (0 = all);
        ``auto_prepare`` (prepare the dataset with :func:`prepare` if it is missing).
        Missing optional fields take these defaults: ``''``, 0, 0, 0, 0, False.

    Raises:
      ValueError: unknown name, negative sizes, or ``validation_size`` not smaller than
        the train split.
      DatasetNotFoundError: the dataset is not prepared (and ``auto_prepare`` is off or
        preparing failed).
    """
    name: str = data_cfg.name
    _check_name(name)
    data_dir = getattr(data_cfg, "data_dir", "") or None
    validation_size = int(getattr(data_cfg, "validation_size", 0))
    validation_seed = int(getattr(data_cfg, "validation_seed", 0))
    max_train = int(getattr(data_cfg, "max_train_examples", 0))
    max_test = int(getattr(data_cfg, "max_test_examples", 0))
    auto_prepare = bool(getattr(data_cfg, "auto_prepare", False))
    validation_mode = str(getattr(data_cfg, "validation_mode", "random"))
    if validation_mode not in VALIDATION_MODES:
        raise ValueError(f"data.validation_mode={validation_mode!r} is not one of {', '.join(VALIDATION_MODES)}.")
    for field, value in [
        ("validation_size", validation_size),
        ("max_train_examples", max_train),
        ("max_test_examples", max_test),
    ]:
        if value < 0:
            raise ValueError(f"data.{field} must be >= 0, got {value}.")

    if name == "digits":
        version, source, resolved_dir = "sklearn", "sklearn.datasets.load_digits", None
    elif not tfds_installed():          # a copy of a dataset prepared elsewhere, with vaegen's cached arrays
        resolved_dir = _resolve_data_dir(data_dir)
        copy = cached_dataset_dir(name, resolved_dir)
        if copy is None:
            _from_cache_only(name, "train", resolved_dir)      # one line saying what is missing
        version, source = copy.name, f"cached arrays:{copy}"
    else:
        resolved_dir = _resolve_data_dir(data_dir)
        builder = _builder(name, resolved_dir)
        if not _builder_prepared(builder):
            if not auto_prepare:
                raise _not_found(name, resolved_dir, "data.auto_prepare is off")
            prepare(name, resolved_dir)
            builder = _builder(name, resolved_dir)
        version, source = str(builder.info.version), f"tfds:{os.fspath(builder.data_path)}"

    train_all, train_labels_all = load_split(name, "train", resolved_dir)
    test, test_labels = load_split(name, "test", resolved_dir)
    n_train = train_all.shape[0]

    def take(labels: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return labels[idx] if labels is not None else None

    if validation_mode == "split":
        # The dataset's own validation split (binarized_mnist: Larochelle's 50k / 10k / 10k).
        validation, validation_labels = load_split(name, "validation", resolved_dir)
        train_idx = np.arange(n_train)
    else:
        if validation_size >= n_train:
            raise ValueError(
                f"data.validation_size={validation_size} must be smaller than the {n_train} "
                f"examples of {name!r}'s train split."
            )
        if validation_mode == "tail":  # the IWAE code's split: the last examples, unshuffled
            order = np.arange(n_train)
            val_idx, train_idx = order[n_train - validation_size:], order[: n_train - validation_size]
        else:
            perm = np.random.default_rng(validation_seed).permutation(n_train)
            val_idx, train_idx = perm[:validation_size], perm[validation_size:]
        validation, validation_labels = train_all[val_idx], take(train_labels_all, val_idx)
    if max_train:
        train_idx = train_idx[:max_train]
    if max_test:
        test = test[:max_test]
        test_labels = test_labels[:max_test] if test_labels is not None else None

    train = train_all[train_idx]
    info = {
        "name": name,
        "version": version,
        "event_shape": list(train.shape[1:]),
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
        "validation_seed": validation_seed,
        "validation_mode": validation_mode,
        "source": source,
        "data_dir": resolved_dir,
    }
    return Splits(
        train=train,
        validation=validation,
        test=test,
        train_labels=take(train_labels_all, train_idx),
        validation_labels=validation_labels,
        test_labels=test_labels,
        info=info,
    )
