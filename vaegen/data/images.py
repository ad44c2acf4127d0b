"""Images a user brings, as a model sees them: ``vaegen evaluate --images PATH``.

Accepted: a ``.npy`` file, a ``.npz`` file (its only array, or the one named ``images`` or
``x``), an IDX file (``.idx``/``-ubyte``, gzip or not) or a folder of ``.png`` files (sorted by
name).  Values may be

- ``uint8`` grey levels 0..255 (what vaegen stores);
- floats in [0, 1]: rounded to the nearest grey level, round(255 x) (exact for binary images
  and for images that were k / 255; the largest rounding change is recorded otherwise);
- binary ``{0, 1}`` of any integer or boolean dtype.

PNGs are read as 8-bit levels: a 16-bit grey PNG is scaled by its bit depth, round(255 v / 65535)
(never clipped); for a model of grey images (C = 1), colour images ``[..., 3|4]`` (PNGs, or arrays)
whose three channels are equal and whose alpha is opaque -- grey images saved in colour, as
``plt.imsave(path, x, cmap='gray')`` writes them -- are taken as grey, exactly; other colour images
are refused with the conversion to run.  Both conversions are recorded in ``info``.

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

from vaegen import files as files_lib
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
    """The array in ``path`` (see the module docstring for the formats); PNGs as 8-bit levels
    (16-bit ones scaled by their bit depth), otherwise unconverted."""
    return _read(pathlib.Path(path), {})


def _read(path: pathlib.Path, info: dict) -> np.ndarray:
    """:func:`read`, recording in ``info`` what was converted on the way (16-bit PNGs)."""
    if not path.exists():
        raise ImagesError(f"--images {path}: no such file or folder")
    if path.is_dir():
        return _read_png_folder(path, info)
    suffix = path.suffix.lower()
    fix = "check the file (truncated by a copy or a full disk?) and save the images again"
    if suffix == ".npy":
        return files_lib.load_npy(path, what=".npy array of images", fix=fix, error=ImagesError,
                                  name=f"--images {path}")
    if suffix == ".npz":
        arrays = files_lib.load_npz(path, what=".npz archive of images", fix=fix, error=ImagesError,
                                    name=f"--images {path}")
        names = list(arrays)
        name = names[0] if len(names) == 1 else next((n for n in _NPZ_NAMES if n in names), None)
        if name is None:
            raise ImagesError(f"--images {path} holds arrays {names}; name the images 'images' or 'x', or "
                              "save only them")
        return arrays[name]
    if suffix == ".png":
        image, notes = _read_png(path)
        info.update(notes)
        return image[None]
    try:
        return read_idx(path)
    except IDXFormatError as e:
        raise ImagesError(f"--images {path}: not a .npy, .npz, IDX file or PNG folder ({e})") from None
    except (ValueError, OSError, EOFError) as e:
        raise ImagesError(f"--images {path} cannot be read as {suffix or 'IDX'}: {e}") from None


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit grey PNG


def _read_png(path: pathlib.Path) -> tuple[np.ndarray, dict]:
    """A PNG as uint8: ``[H, W]`` grey levels, or ``[H, W, 3|4]`` RGB(A) (a palette becomes RGBA),
    and notes on what was converted: a 16-bit grey PNG is scaled by its bit depth to the nearest
    8-bit level, round(255 v / 65535) (exact for levels written as 257 k), never clipped."""
    try:
        with Image.open(path) as im:
            if im.mode in _SIXTEEN_BIT:
                v = np.asarray(im).astype(np.int64)
                if v.size and (v.min() < 0 or v.max() > 65535):
                    raise ImagesError(f"--images {path}: PNG mode {im.mode} holds values in [{v.min()}, {v.max()}], "
                                      "not 16-bit grey levels 0..65535")
                levels = np.round(v * 255 / 65535).astype(np.uint8)
                return levels, {"png_bit_depth": 16,
                                "png_conversion": "16-bit grey levels v -> 8-bit round(255 v / 65535)",
                                "png_max_rounding": float(np.max(np.abs(levels / 255 - v / 65535))) if v.size else 0.0}
            if im.mode in ("1", "L"):
                return np.asarray(im.convert("L")), {}
            if im.mode in ("LA", "La"):
                return np.asarray(im.convert("RGBA")), {}
            if im.mode in ("RGB", "RGBA", "P", "PA"):
                rgba = im.mode in ("RGBA", "PA") or (im.mode == "P" and "transparency" in im.info)
                return np.asarray(im.convert("RGBA" if rgba else "RGB")), {}
            raise ImagesError(f"--images {path}: PNG mode {im.mode} is not grey or RGB; save the images as 8-bit "
                              "grey PNGs (PIL: Image.fromarray(uint8_array).save(path))")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImagesError(f"--images {path} is not a readable PNG: {e}") from None


def _read_png_folder(folder: pathlib.Path, info: dict) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ImagesError(f"--images {folder} is a folder with no .png files")
    read = [_read_png(p) for p in files]
    images = [im for im, _ in read]
    for _, notes in read:
        info.update(notes)  # the same conversion for every 16-bit PNG; the largest rounding is kept below
    if any(n.get("png_bit_depth") for _, n in read):
        info["png_max_rounding"] = max(n.get("png_max_rounding", 0.0) for _, n in read)
        info["png_16_bit_files"] = sum(1 for _, n in read if n.get("png_bit_depth"))
    if len({im.ndim for im in images}) > 1 or len({im.shape[-1] for im in images if im.ndim == 3}) > 1:
        images = [_as_rgba(im) for im in images]  # grey and colour PNGs together: all as RGBA, checked later
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd, shape = next((p, im.shape) for p, im in zip(files, images) if im.shape != first)
        raise ImagesError(f"--images {folder}: {odd.name} has shape {shape}, {files[0].name} {first}; all images "
                          "must have one shape")
    return np.stack(images)


def _as_rgba(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` grey, ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA (uint8) as RGBA."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 3:
        image = np.concatenate([image, np.full(image.shape[:-1] + (1,), 255, image.dtype)], axis=-1)
    return image


_TO_GREY = ("convert them to grey first, e.g. with PIL: Image.open(path).convert('L').save(path) (ITU-R 601 luma); "
            "matplotlib keeps grey images grey with plt.imsave(path, x, cmap='gray', vmin=0, vmax=1)")


def _colour_to_grey(x: np.ndarray, event_shape: tuple[int, ...], where: str, info: dict) -> np.ndarray:
    """Colour images ``[N, H, W, 3|4]`` (uint8) for a model of grey images ``[H, W, 1]``: grey when
    the three channels are equal everywhere and the alpha channel, if any, opaque (a grey image
    saved in colour, as matplotlib's ``imsave`` writes it) -- exact, and recorded in ``info``; a
    one-line error saying how to convert otherwise.  Other arrays pass unchanged."""
    event_shape = tuple(int(s) for s in event_shape)
    if (event_shape[-1:] != (1,) or x.ndim != len(event_shape) + 1 or x.shape[-1] not in (3, 4)
            or tuple(x.shape[1:-1]) != event_shape[:-1]):
        return x
    channels = "RGBA" if x.shape[-1] == 4 else "RGB"
    if channels == "RGBA" and (x[..., 3] != 255).any():
        n = int((x[..., 3] != 255).any(axis=tuple(range(1, x.ndim - 1))).sum())
        raise ImagesError(f"{where} holds RGBA images with transparent pixels (alpha < 255 in {n} of {x.shape[0]} "
                          "images), and this run's model takes opaque grey images: flatten them onto a background "
                          "first, e.g. with PIL: Image.alpha_composite(Image.new('RGBA', im.size, 'black'), "
                          "im).convert('L')")
    rgb = x[..., :3]
    if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
        raise ImagesError(f"{where} holds colour ({channels}) images whose channels differ, and this run's model takes "
                          f"grey images {event_shape}: {_TO_GREY}")
    info["colour"] = (f"{channels} with R = G = B{' and opaque alpha' if channels == 'RGBA' else ''} -> grey "
                      "(the common channel; exact)")
    return np.ascontiguousarray(rgb[..., :1])


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
        hint = " (16-bit levels v: np.round(v * 255 / 65535).astype(np.uint8))" if x.dtype.itemsize > 1 else ""
        raise ImagesError(f"{where} has integer values in [{int(x.min())}, {int(x.max())}] of dtype {x.dtype}; "
                          f"pass uint8 grey levels 0..255{hint}, binary {{0, 1}}, or floats in [0, 1]")
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
    notes: dict[str, Any] = {}
    raw = _read(pathlib.Path(path), notes)
    info: dict[str, Any] = {"path": str(path), "dtype": str(raw.dtype), "shape": list(raw.shape), **notes}
    x = _grey_levels(np.asarray(raw), where, info)
    x = _shaped(_colour_to_grey(x, event_shape, where, info), event_shape, where)
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
