"""The grid a latent dimension is coded on: 2^P bins of equal mass under a reference Gaussian.

A continuous z cannot be entropy-coded; a bin index can.  Each latent dimension d is cut into
B = 2^P bins of equal mass under a reference N(m_d, s_d^2) -- the prior itself when p(z) is a
factorized Gaussian (BB-ANS: Townsend, Bird & Barber 2019), else a Gaussian of p(z)'s marginal
moments -- so in standardized units t = (z - m_d) / s_d the bin edges are the standard normal's
quantiles e_j = Phi^-1(j / B) (e_0 = -inf, e_B = +inf) and bin j's representative is the quantile
of its middle, c_j = Phi^-1((j + 1/2) / B).  A latent is coded as its bin index j in {0..B-1} and
the networks see the representative z = m_d + s_d c_j.

Probability tables over 2^P bins would be too large for P = 16, so an index is coded in two parts,
j = h L + l: the coarse bin h in {0..H-1} (H = 2^ceil(P/2)) with the mass of the H coarse bins, then
the fine bin l in {0..L-1} (L = 2^floor(P/2)) with the masses of the L bins inside bin h.  The
product of the two is exactly the mass of bin j: the same code length as one table of 2^P entries.

:func:`gaussian_masses` and :func:`mixture_masses` give those tables for a Gaussian or a mixture of
Gaussians in standardized units, from the standard normal's CDF, evaluated in the tail where it
is accurate (Phi(hi) - Phi(lo) below the median, Phi(-lo) - Phi(-hi) above it), in float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

MIN_PRECISION, MAX_PRECISION = 2, 20


@functools.lru_cache(maxsize=8)
def _tables(precision: int) -> dict[str, np.ndarray]:
    b = 2**precision
    q = np.arange(b + 1, dtype=np.float64) / b
    edges = special.ndtri(q)                                     # [B + 1], -inf .. +inf
    centres = special.ndtri((np.arange(b, dtype=np.float64) + 0.5) / b)
    coarse_bits = (precision + 1) // 2
    fine = b >> coarse_bits
    h = np.arange(2**coarse_bits)
    fine_edges = edges[h[:, None] * fine + np.arange(fine + 1)[None, :]]   # [H, L + 1]
    return {"edges": edges.astype(np.float32), "centres": centres.astype(np.float32),
            "coarse_edges": edges[h * fine].tolist() + [np.inf], "fine_edges": fine_edges.astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class Grid:
    """2^precision bins of equal mass per dimension, in standardized units (see the module).

    Attributes:
      precision: P, bits per dimension of the bin index.
    """

    precision: int

    def __post_init__(self):
        if not MIN_PRECISION <= int(self.precision) <= MAX_PRECISION:
            raise ValueError(f"precision={self.precision}: the grid takes {MIN_PRECISION}..{MAX_PRECISION} bits per "
                             "dimension")

    @property
    def coarse_bits(self) -> int:
        return (int(self.precision) + 1) // 2

    @property
    def fine_bits(self) -> int:
        return int(self.precision) - self.coarse_bits

    @property
    def coarse(self) -> int:
        """H, the coarse bins."""
        return 2**self.coarse_bits

    @property
    def fine(self) -> int:
        """L, the fine bins in one coarse bin."""
        return 2**self.fine_bits

    @property
    def centres(self) -> np.ndarray:
        """c_j, float32 ``[2^P]``: the representative of each bin (standardized)."""
        return _tables(int(self.precision))["centres"]

    @property
    def edges(self) -> np.ndarray:
        """e_j, float32 ``[2^P + 1]``: the bin edges (standardized; -inf and +inf at the ends)."""
        return _tables(int(self.precision))["edges"]

    def coarse_edges(self) -> jax.Array:
        """float32 ``[H + 1]``: the edges of the coarse bins."""
        return jnp.asarray(np.asarray(_tables(int(self.precision))["coarse_edges"], np.float32))

    def fine_edges(self) -> jax.Array:
        """float32 ``[H, L + 1]``: the edges of the fine bins inside each coarse bin."""
        return jnp.asarray(_tables(int(self.precision))["fine_edges"])

    # --- values and quantization (numpy: the same arithmetic wherever it runs) --------------------
    def values(self, j: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The representatives m + s c_j, float32, for indices ``j [..., d]`` and references
        ``loc``, ``scale [d]``."""
        return (np.asarray(loc, np.float32) + np.asarray(scale, np.float32) * self.centres[np.asarray(j)]
                ).astype(np.float32)

    def quantize(self, t: jax.Array) -> jax.Array:
        """The bin of standardized values ``t [...]``: int32, the j with e_j <= t < e_{j+1}."""
        j = jnp.searchsorted(jnp.asarray(self.edges), t, side="right") - 1
        return jnp.clip(j, 0, 2**int(self.precision) - 1).astype(jnp.int32)

    def split(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(h, l)`` with j = h L + l."""
        j = np.asarray(j, np.int32)
        return j >> self.fine_bits, j & (self.fine - 1)

    def join(self, h: np.ndarray, l: np.ndarray) -> np.ndarray:
        return (np.asarray(h, np.int32) << self.fine_bits) | np.asarray(l, np.int32)


# --- masses of bins (jax, float32) -------------------------------------------------------------------

def interval_mass(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """P(lo < t < hi) for t ~ N(0, 1), elementwise (edges may be infinite): the difference of CDFs in
    the tail where it keeps its relative precision."""
    upper = (lo + hi) > 0                                        # NaN (-inf + inf) is False: Phi(hi) - Phi(lo)
    return jnp.where(upper, jax.scipy.special.ndtr(-lo) - jax.scipy.special.ndtr(-hi),
                     jax.scipy.special.ndtr(hi) - jax.scipy.special.ndtr(lo))


def _masses(edges: jax.Array, mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """Masses of the bins between consecutive ``edges [..., E + 1]`` under N(mu, sigma^2) (``mu``,
    ``sigma [...]``): ``[..., E]``.  The CDF is evaluated once per edge, from below (Phi(t)) and from
    above (Phi(-t)); each bin takes the difference on the side of the median it lies on, where it
    keeps its relative precision (:func:`interval_mass`, with half the evaluations)."""
    t = (edges - mu[..., None]) / sigma[..., None]
    below = jax.scipy.special.ndtr(t)
    above = jax.scipy.special.ndtr(-t)
    upper = (t[..., :-1] + t[..., 1:]) > 0
    return jnp.where(upper, above[..., :-1] - above[..., 1:], below[..., 1:] - below[..., :-1])


def gaussian_masses(grid: Grid, mu: jax.Array, sigma: jax.Array, h: jax.Array | None = None) -> jax.Array:
    """The coarse table ``[..., H]`` of N(mu, sigma^2) (standardized ``mu``, ``sigma [...]``), or with
    coarse bins ``h [...]`` the fine table ``[..., L]`` of the bins inside them (unnormalized: the
    coder normalizes each table)."""
    if h is None:
        return _masses(grid.coarse_edges(), mu, sigma)
    return _masses(grid.fine_edges()[h], mu, sigma)


def mixture_masses(grid: Grid, weights: jax.Array, mu: jax.Array, sigma: jax.Array,
                   h: jax.Array | None = None) -> jax.Array:
    """The tables of sum_k w_k N(mu_k, sigma_k^2): ``weights``, ``mu``, ``sigma [..., K]``; ``h [...]``
    as in :func:`gaussian_masses`.  Returns ``[..., H]`` or ``[..., L]``."""
    edges = grid.coarse_edges() if h is None else grid.fine_edges()[h][..., None, :]     # [.., (K,) E + 1]
    return jnp.sum(weights[..., None] * _masses(edges, mu, sigma), axis=-2)
