"""Paired differences between models measured on the same test images, with their errors and the
words a report may use for them.

Two models' log p(x) (or ELBO, reconstruction, coded size) on the same N test images differ per
image by d_i = a_i - b_i.  The images vary far more than the difference between the models, so each
model's own standard error (std_i(a_i) / sqrt(N)) is large, while the *paired* standard error of
the mean difference,

    SE(d) = std_i(d_i) / sqrt(N),

removes that variation: two models 1 nat apart with standard errors of 3.3 nats each are told
apart by a paired standard error of a few tenths.  Importance-sampling estimates are paired further
by drawing them with the same random numbers for every model (common random numbers).

With several training seeds s = 1..S (each model trained S times; the same test images and draws),
each seed gives its own d_s and SE_s; the report gives their mean, the image noise of that mean,
sqrt(sum_s SE_s^2) / S, and the spread over seeds, std_s(d_s), which measures the training noise
the image-level error does not see.  A model is called **better** (or **worse**) than the reference
only where, for every seed, the paired difference exceeds 2 paired standard errors in the same
direction; otherwise the two are **not distinguishable at this budget**.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

BETTER, WORSE, SAME = "better", "worse", "not distinguishable at this budget"
THRESHOLD = 2.0
"""A difference counts where it exceeds this many paired standard errors (for every seed)."""


@dataclasses.dataclass(frozen=True)
class Paired:
    """The paired difference row - reference of one metric, over seeds.

    Attributes:
      means: ``[S]`` the mean per-image difference for each seed (nats).
      stderrs: ``[S]`` its paired standard error for each seed.
      n: images per seed.
    """

    means: tuple[float, ...]
    stderrs: tuple[float, ...]
    n: int

    @property
    def mean(self) -> float:
        """The mean difference over seeds."""
        return float(np.mean(self.means))

    @property
    def stderr(self) -> float:
        """The image noise of :attr:`mean`: sqrt(sum_s SE_s^2) / S."""
        return float(math.sqrt(sum(se * se for se in self.stderrs)) / len(self.stderrs))

    @property
    def seed_spread(self) -> float | None:
        """The standard deviation of the per-seed differences (None with one seed)."""
        return float(np.std(self.means, ddof=1)) if len(self.means) > 1 else None

    @property
    def verdict(self) -> str:
        """``BETTER`` / ``WORSE`` where every seed's difference exceeds ``THRESHOLD`` paired standard
        errors in the same direction, else ``SAME`` (higher is better)."""
        return verdict(self.means, self.stderrs)

    def to_json(self) -> dict:
        return {"mean": self.mean, "stderr": self.stderr, "seed_spread": self.seed_spread, "verdict": self.verdict,
                "per_seed": [{"mean": m, "stderr": s} for m, s in zip(self.means, self.stderrs)], "n": self.n}


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(mean, paired standard error)`` of ``a - b`` over the same examples: ``a``, ``b`` float ``[N]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired values must be two vectors of at least 2 values over the same examples, got shapes "
                         f"{a.shape} and {b.shape}")
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def paired(rows: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Paired:
    """The paired difference of a row's per-image values and the reference's, seed by seed:
    ``rows[s]`` and ``references[s]`` are float ``[N]`` on the same images."""
    if len(rows) != len(references) or not rows:
        raise ValueError(f"one array per seed for the row and the reference, got {len(rows)} and {len(references)}")
    pairs = [difference(a, b) for a, b in zip(rows, references)]
    return Paired(tuple(m for m, _ in pairs), tuple(s for _, s in pairs), int(np.asarray(rows[0]).size))


def verdict(means: Sequence[float], stderrs: Sequence[float], threshold: float = THRESHOLD) -> str:
    """The word for a difference (higher is better): see the module."""
    z = [m / s if s > 0 else (math.inf if m > 0 else -math.inf if m < 0 else 0.0) for m, s in zip(means, stderrs)]
    if z and all(v > threshold for v in z):
        return BETTER
    if z and all(v < -threshold for v in z):
        return WORSE
    return SAME


def digits_for(p: Paired, digits: int = 1) -> int:
    """``digits`` decimals, or more where the standard error would otherwise round to zero."""
    if 0 < p.stderr < 0.5 * 10.0 ** -digits:
        return min(int(math.ceil(-math.log10(2 * p.stderr))), 6)
    return digits


def number(p: Paired, digits: int = 1) -> str:
    """``+1.9 ± 0.3``: the mean difference and its paired standard error (``+0.04 ± 0.01`` where one
    decimal would show a standard error of zero)."""
    digits = digits_for(p, digits)
    return f"{p.mean:+.{digits}f} ± {p.stderr:.{digits}f}"


def cell(p: Paired | None, digits: int = 1) -> str:
    """A table cell: ``number(p)`` and, when there are several seeds, their spread in brackets."""
    if p is None:
        return "—"
    text = number(p, digits)
    digits = digits_for(p, digits)
    if p.seed_spread is not None:
        text += f" [seeds ±{p.seed_spread:.{digits}f}]"
    return text
