"""Images a user brings, as a model sees them: ``vaegen evaluate --images PATH``.

Accepted: a ``.npy`` file, a ``.npz`` file (its only array, or the one named ``images`` or
``x``), an IDX file (``.idx``/``-ubyte``, gzip or not) or a folder of ``.png`` files (sorted by
name).  Values may be

- ``uint8`` grey levels 0..255 (what vaegen stores);
- floats in [0, 1]: rounded to the nearest grey level, round(255 x) (exact for binary images
  and for images that were k / 255; the largest rounding change is recorded otherwise);
- binary ``{0, 1}`` of any integer or boolean dtype.

Shapes: ``[N, *event]`` for the run's event shape ``[H, W, C]``, ``[N, H, W]`` when C = 1, or one
image ``[*event]``.  How grey levels become binary for a Bernoulli likelihood is the caller's
explicit choice (:data:`BINARIZE`): ``threshold`` (x / 255 > 0.5), ``sample`` (one Bernoulli draw
x ~ Bernoulli(x / 255) keyed by ``seed``, as the ``static`` protocol of the datasets), or
``none`` (the images must then already be binary).  Binarizing is refused for a likelihood whose
support is not binary.  Every problem raises :class:`vaegen.errors.ImagesError` with one line
naming the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vaegen.data import binarization
from vaegen.data.datasets import read_idx
from vaegen.errors import IDXFormatError, ImagesError

BINARIZE = ("threshold", "sample", "none")
_NPZ_NAMES = ("images", "x")


@dataclasses.dataclass(frozen=True)
class UserImages:
    """Images as vaegen stores them, and how they got there.

    Attributes:
      stored: ``uint8 [N, *event]``: grey levels, or ``{0, 255}`` after binarization.
      protocol: the binarization protocol that turns ``stored`` into what the model sees
        (``none``: x / 255).
      info: JSON-able record of the source, conversion and binarization (written with the results).
    """

    stored: np.ndarray
    protocol: str
    info: dict[str, Any]


def read(path: str | pathlib.Path) -> np.ndarray:
    """The array in ``path`` (see the module docstring for the formats), unconverted."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ImagesError(f"--images {path}: no such file or folder")
    if path.is_dir():
        return _read_png_folder(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                names = list(f.keys())
                name = names[0] if len(names) == 1 else next((n for n in _NPZ_NAMES if n in names), None)
                if name is None:
                    raise ImagesError(f"--images {path} holds arrays {names}; name the images 'images' or 'x', or "
                                      "save only them")
                return np.asarray(f[name])
        if suffix == ".png":
            return _read_png(path)[None]
        return read_idx(path)
    except IDXFormatError as e:
        raise ImagesError(f"--images {path}: not a .npy, .npz, IDX file or PNG folder ({e})") from None
    except (ValueError, OSError, EOFError) as e:
        raise ImagesError(f"--images {path} cannot be read as {suffix or 'IDX'}: {e}") from None


def _read_png(path: pathlib.Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "1", "P", "LA", "RGBA", "I;16", "I"):
                raise ImagesError(f"--images {path}: PNG mode {im.mode} is not grey or RGB")
            rgb = im.mode in ("RGB", "RGBA", "P")
            return np.asarray(im.convert("RGB" if rgb else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImagesError(f"--images {path} is not a readable PNG: {e}") from None


def _read_png_folder(folder: pathlib.Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ImagesError(f"--images {folder} is a folder with no .png files")
    images = [_read_png(p) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd, shape = next((p, im.shape) for p, im in zip(files, images) if im.shape != first)
        raise ImagesError(f"--images {folder}: {odd.name} has shape {shape}, {files[0].name} {first}; all images "
                          "must have one shape")
    return np.stack(images)


def _grey_levels(x: np.ndarray, where: str, info: dict) -> np.ndarray:
    """``x`` as uint8 grey levels (see the module docstring), or a one-line error."""
    if x.dtype == np.uint8:
        info["converted"] = "none (uint8 grey levels)"
        return x
    if x.dtype == bool or (x.dtype.kind in "iu" and x.size and x.min() >= 0 and x.max() <= 1):
        info["converted"] = "binary {0, 1} -> {0, 255}"
        return x.astype(np.uint8) * np.uint8(255)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            raise ImagesError(f"{where} contains {int(bad.sum())} NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ImagesError(f"{where} has float values in [{lo:.4g}, {hi:.4g}]; floats must lie in [0, 1] "
                              "(or pass uint8 grey levels 0..255)")
        levels = np.round(x.astype(np.float64) * 255)
        info["converted"] = "float [0, 1] -> grey levels round(255 x)"
        info["max_rounding"] = float(np.max(np.abs(levels / 255 - x))) if x.size else 0.0
        return levels.astype(np.uint8)
    if x.dtype.kind in "iu":
        raise ImagesError(f"{where} has integer values in [{int(x.min())}, {int(x.max())}] of dtype {x.dtype}; "
                          "pass uint8 grey levels 0..255, binary {0, 1}, or floats in [0, 1]")
    raise ImagesError(f"{where} has dtype {x.dtype}; pass uint8 grey levels, binary {{0, 1}} or floats in [0, 1]")


def _shaped(x: np.ndarray, event_shape: tuple[int, ...], where: str) -> np.ndarray:
    event_shape = tuple(int(s) for s in event_shape)
    given = tuple(x.shape)
    if x.shape == event_shape or (event_shape[-1:] == (1,) and x.shape == event_shape[:-1]):
        x = x[None]                                                     # one image
    if x.ndim == len(event_shape) and event_shape[-1:] == (1,):
        x = x[..., None]                                                # [N, H, W] -> [N, H, W, 1]
    if x.shape[1:] != event_shape:
        raise ImagesError(f"{where} has shape {given}; this run's model takes images of shape "
                          f"{event_shape} ([N, {', '.join(map(str, event_shape))}])")
    if x.shape[0] == 0:
        raise ImagesError(f"{where} holds no images")
    return x


def load_images(path: str | pathlib.Path, *, event_shape: tuple[int, ...], support: str, binarize: str = "none",
         seed: int = 0, max_examples: int = 0) -> UserImages:
    """The images in ``path`` for a model of this ``event_shape`` whose likelihood has this
    ``support`` (``binary``, ``8bit`` or ``real``), binarized as ``binarize`` says.

    Raises :class:`vaegen.errors.ImagesError` (one line naming the file and what was expected).
    """
    if binarize not in BINARIZE:
        raise ImagesError(f"--binarize {binarize!r} is not one of {', '.join(BINARIZE)}")
    where = f"--images {path}"
    raw = read(path)
    info: dict[str, Any] = {"path": str(path), "dtype": str(raw.dtype), "shape": list(raw.shape)}
    x = _shaped(_grey_levels(np.asarray(raw), where, info), event_shape, where)
    if max_examples:
        x = x[:max_examples]
    grey = bool(((x != 0) & (x != 255)).any())
    if support != "binary" and binarize != "none":
        raise ImagesError(f"--binarize {binarize} is for a Bernoulli likelihood; this run's likelihood has {support} "
                          "support and takes the grey levels as they are: use --binarize none")
    if support == "binary" and binarize == "none" and grey:
        raise ImagesError(f"{where} has grey levels but this run's Bernoulli likelihood is defined on binary images "
                          "only: pass --binarize threshold, or --binarize sample --seed N")
    if binarize == "threshold":
        x = np.asarray(binarization.binarize_once(x, "threshold", seed))
        info["binarize"] = "threshold: x / 255 > 0.5"
    elif binarize == "sample":
        x = np.asarray(binarization.binarize_once(x, "static", seed))
        info["binarize"] = f"sample: one draw x ~ Bernoulli(grey level / 255), seed {seed}"
    else:
        info["binarize"] = "none"
    info["num_images"] = int(x.shape[0])
    return UserImages(stored=x, protocol="none", info=info)
