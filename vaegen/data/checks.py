"""Checks on the data a run is given, before anything is written or compiled.

The trainer takes data as :class:`vaegen.data.datasets.Splits`: ``uint8 [N, H, W, C]`` grey levels
``0..255`` (see :mod:`vaegen.data.datasets`).  Data given through the Python API
(``train_and_evaluate(config, workdir, splits=...)``) is checked here, and so is data loaded
from a dataset: a wrong rank, dtype, NaN, an empty split, mismatched event shapes or values
outside the likelihood's support each raise one clear error naming the split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaegen.errors import DataError, SupportError


_SPLITS = ("train", "validation", "test")


def check_array(x: Any, what: str) -> np.ndarray:
    """Checks one split: a ``uint8 [N, H, W, C]`` array.  Returns it as a numpy array.

    Raises :class:`DataError` with a message that says what is wrong and how to fix it.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise DataError(f"{what} must be an array of uint8 grey levels [N, H, W, C], got {type(x).__name__}")
    x = np.asarray(x)
    if x.dtype.kind == "f" or x.dtype.kind == "c":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argmax(bad.reshape(x.shape[0], -1).any(axis=1))) if x.ndim else 0
            raise DataError(
                f"{what} contains {int(bad.sum())} NaN or infinite values (first in example {first}); "
                "remove or repair those examples"
            )
    if x.dtype != np.uint8:
        hint = ""
        if x.dtype.kind == "f" and x.size:
            lo, hi = float(x.min()), float(x.max())
            scale = "255 * x" if hi <= 1.0 else "x"
            hint = (f" (values in [{lo:.4g}, {hi:.4g}]); convert with "
                    f"np.clip(np.round({scale}), 0, 255).astype(np.uint8)")
        elif x.dtype.kind in "iub" and x.size:
            hint = f" (values in [{int(x.min())}, {int(x.max())}]); convert with x.astype(np.uint8) if they lie in 0..255"
        raise DataError(f"{what} has dtype {x.dtype}, but vaegen stores data as uint8 grey levels 0..255{hint}")
    if x.ndim != 4:
        if x.ndim == 3:
            hint = f"; add the channel axis: x[..., None] -> {(*x.shape, 1)}"
        elif x.ndim == 2:
            hint = "; reshape flat vectors to images, e.g. x.reshape(-1, 28, 28, 1)"
        else:
            hint = ""
        raise DataError(f"{what} has shape {x.shape}, but a split is [N, H, W, C]{hint}")
    if min(x.shape[1:]) < 1:
        raise DataError(f"{what} has an empty event shape {x.shape[1:]}")
    return x


def check_real_array(x: Any, what: str) -> np.ndarray:
    """Checks one split of real-valued data (``binarization="real"``): a finite float array
    ``[N, D]`` (or ``[N, *event]``).  Returns it as ``float32``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise DataError(f"{what} must be an array of real vectors [N, D], got {type(x).__name__}")
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise DataError(f"{what} has dtype {x.dtype}; real-valued data (binarization 'real') are numbers [N, D]")
    if x.ndim < 2 or min(x.shape[1:]) < 1:
        raise DataError(f"{what} has shape {x.shape}, but real-valued data are [N, D]; reshape to (-1, D)")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argmax(bad.reshape(x.shape[0], -1).any(axis=1)))
        raise DataError(f"{what} contains {int(bad.sum())} NaN or infinite values (first in example {first}); "
                        "remove or repair those examples")
    return x.astype(np.float32)


def check_splits(splits: Any, *, support: str, binarization: str, dataset: str = "the data") -> None:
    """Checks every split of ``splits`` (:class:`vaegen.data.datasets.Splits`) for a run:
    dtype and rank (:func:`check_array`), a non-empty training split, one event shape, and the
    likelihood's ``support`` on what the model will see (binary data for a ``"binary"`` support
    under ``binarization="none"``; 8-bit levels need no check: uint8 data are always levels k / 255).

    Raises :class:`vaegen.errors.DataError` or :class:`vaegen.errors.SupportError`.
    """
    arrays = {}
    for name in _SPLITS:
        x = getattr(splits, name, None)
        if x is None:
            if name == "train":
                raise DataError("the data have no train split")
            continue
        arrays[name] = (check_real_array(x, f"the {name} split") if binarization == "real"
                        else check_array(x, f"the {name} split"))
    if arrays["train"].shape[0] == 0:
        raise DataError("the train split is empty")
    event = arrays["train"].shape[1:]
    for name, x in arrays.items():
        if x.shape[1:] != event:
            raise DataError(f"the {name} split has examples of shape {x.shape[1:]}, the train split {event}")
    if support == "binary" and binarization == "real":
        for name, x in arrays.items():
            if np.any((x != 0) & (x != 1)):
                raise SupportError(f"the {name} split of {dataset} (binarization 'real') has values outside {{0, 1}} "
                                   "but the Bernoulli likelihood is only defined on binary data: choose a likelihood "
                                   "for real values (--config.model.likelihood=gaussian)")
    if support == "binary" and binarization == "none":
        for name, x in arrays.items():
            bad = (x != 0) & (x != 255)                          # not 0 or 1 after x / 255
            if bad.any():
                example = float(x[bad].reshape(-1)[0]) / 255.0
                raise SupportError(
                    f"the {name} split of {dataset} (binarization 'none') has values outside "
                    f"{{0, 1}} (e.g. {example:.4g}, {int(bad.sum())} values in all) but the Bernoulli "
                    "likelihood is only defined on binary data: choose a binarization protocol "
                    "(--config.data.binarization=dynamic|static|threshold) or a likelihood for grey levels "
                    "(--config.model.likelihood=gaussian)"
                )
