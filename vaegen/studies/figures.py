"""Figures with matplotlib: image grids of samples and reconstructions."""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from vaegen import files as files_lib


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles ``images [N, H, W, C]`` (values in [0, 1]) into one ``[rows*(H+pad), cols*(W+pad), C]``
    array, padding with white."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    out = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return np.clip(out, 0.0, 1.0)


def save_grid(path: str | os.PathLike, images: np.ndarray, *, ncols: int | None = None, title: str | None = None,
              scale: float = 0.35) -> pathlib.Path:
    """Saves a grid of ``images [N, H, W, C]`` in [0, 1] as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    g = image_grid(images, ncols)
    h, w = g.shape[:2]
    fig = Figure(figsize=(max(2.0, w * scale / 10), max(2.0, h * scale / 10) + (0.4 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    if g.shape[-1] == 1:
        ax.imshow(g[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(g, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    path = pathlib.Path(path)
    # A failed write leaves no temporary file and the previous figure as it was.
    files_lib.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100), kind="figure")
    return path


def interleave_rows(originals: np.ndarray, reconstructions: np.ndarray, ncols: int) -> np.ndarray:
    """Stacks rows of ``ncols`` originals over their reconstructions (for :func:`save_grid`)."""
    n = (min(len(originals), len(reconstructions)) // ncols) * ncols
    o = np.asarray(originals[:n]).reshape((-1, ncols) + originals.shape[1:])
    r = np.asarray(reconstructions[:n]).reshape((-1, ncols) + reconstructions.shape[1:])
    return np.stack([o, r], axis=1).reshape((-1,) + originals.shape[1:])
