"""TensorBoard event files beside ``metrics.jsonl``.

Every number of a ``metrics.jsonl`` line is also written as a TensorBoard scalar under the same
name (``train/elbo``, ``validation/elbo``, ``train/bits_per_dim``, ``learning_rate``,
``steps_per_second``, ...) at the line's global ``step``; at each validation, image grids of model
samples and of reconstructions of validation images are added (``images/samples``,
``images/reconstructions``).  The files go to ``<workdir>/tensorboard`` and are written by
tensorboardX, which needs no TensorFlow::

    tensorboard --logdir <workdir>/tensorboard

A resumed run opens its writer with ``purge_step`` = the first step it has not logged, so
TensorBoard drops whatever an interrupted process wrote beyond the checkpoint it resumed from:
every step appears once, as ``metrics.jsonl`` (which is truncated the same way) has it.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from vaegen import compilation as compilation_lib
from vaegen.errors import WorkdirError

DIRECTORY = "tensorboard"
_NOT_SCALARS = ("epoch", "step")


def check_writable(workdir: pathlib.Path) -> None:
    """Raises :class:`vaegen.errors.WorkdirError` (one line) unless the TensorBoard directory of
    ``workdir`` can be created or written: checked before training, not after it."""
    directory = workdir / DIRECTORY
    probe = directory if directory.exists() else next((p for p in (workdir, *workdir.parents) if p.exists()), None)
    if probe is None or not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise WorkdirError(f"the TensorBoard directory {directory} cannot be written ({probe} is not a writable "
                           "directory); make it writable, or set --config.train.tensorboard=false")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalars_of(line: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` line that become TensorBoard scalars: every int or float
    value except ``epoch`` and ``step`` (non-finite values are ``None`` in the line and skipped),
    and each entry of a per-unit list (``latent/kl_per_dim``) as ``<name>/<unit>``."""
    out = {}
    for k, v in line.items():
        if k in _NOT_SCALARS:
            continue
        if _number(v):
            out[k] = float(v)
        elif k.endswith("_per_dim") and isinstance(v, list):
            out.update({f"{k}/{i:02d}": float(x) for i, x in enumerate(v) if _number(x)})
    return out


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles ``images [n, H, W]`` or ``[n, H, W, C]`` (values in [0, 1]; clipped) into one
    ``[rows * (H + 1) - 1, columns * (W + 1) - 1, C]`` uint8 image, a 1-pixel white border between
    tiles."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be [n, H, W] or [n, H, W, C], got shape {x.shape}")
    n, h, w, c = x.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = x[i]
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)


def _mean_or_sample(dist: Any, key: jax.Array) -> jax.Array:
    """The distribution's mean where distrax has one in closed form (else one draw)."""
    try:
        return dist.mean()
    except NotImplementedError:
        return dist.sample(seed=key)


def make_pictures(model: Any, *, has_latents: bool, num_images: int, mesh: Any = None):
    """A compiled ``pictures(variables, x [n, *event], key) -> {name: [n, *event]}`` of the images
    shown at each validation (values as the likelihood's mean, in the data's units):

    - ``samples``: the means of p(x | z) for z ~ p(z) (``num_images`` of them), where the model has
      a prior; for a model without latents, its own ancestral samples' pixel probabilities
      (``sample_with_probs``) where it has them;
    - ``reconstructions``: the means of p(x | z = E_q[z | x]) for the given validation images.
    """

    def pictures(variables, x, key):
        k_z, k_x = jax.random.split(key)
        if not has_latents:
            if hasattr(model, "sample_with_probs"):
                return {"samples": model.apply(variables, k_z, num_images, method="sample_with_probs")[1]}
            return {}

        def in_model(m):
            out = {"reconstructions": _mean_or_sample(m.p_x_given_z(_mean_or_sample(m.q_z_given_x(x), k_z)), k_x)}
            if m.has_prior:
                z = m.p_z().sample(seed=k_z, sample_shape=(num_images,))
                out["samples"] = _mean_or_sample(m.p_x_given_z(z), k_x)
            return out

        return model.apply(variables, method=in_model)

    return compilation_lib.SharedJit(pictures, mesh)  # another run of the same model compiles nothing


def shows_images(event_shape: tuple[int, ...]) -> bool:
    """Whether observations of this shape are images a grid can show: [H, W] or [H, W, 1 | 3]."""
    return len(event_shape) == 2 or (len(event_shape) == 3 and event_shape[-1] in (1, 3))


class Board:
    """A TensorBoard writer for one training process (the primary one).

    Args:
      workdir: the run's workdir; files go to ``<workdir>/tensorboard``.
      purge_step: on resume, the first step not yet logged (events at or beyond it from earlier
        processes are discarded by TensorBoard); ``None`` for a new run.
    """

    def __init__(self, workdir: pathlib.Path, purge_step: int | None = None):
        # Imported on first use: tensorboardX loads PyTorch when that is installed (about a second).
        import tensorboardX

        self.directory = pathlib.Path(workdir) / DIRECTORY
        self._writer = tensorboardX.SummaryWriter(str(self.directory), purge_step=purge_step, flush_secs=30)

    def scalars(self, line: Mapping[str, Any]) -> None:
        """Every number of a ``metrics.jsonl`` line at its ``step``."""
        step = int(line["step"])
        for name, value in scalars_of(line).items():
            self._writer.add_scalar(name, value, step)

    def images(self, name: str, images: np.ndarray, step: int) -> None:
        """A grid of ``images [n, H, W(, C)]`` in [0, 1]."""
        self._writer.add_image(name, image_grid(images), int(step), dataformats="HWC")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
