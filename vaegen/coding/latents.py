"""Distributions over a latent vector z [D] as entropy models on the grid (:mod:`vaegen.coding.grid`).

A prior p(z) or a posterior q(z | x) is turned into a *plan*: a tree of nodes, each coding some of
the dimensions of z on the grid, found from the distrax distribution's structure (never from a
component's name):

=================================  =============================================================
``MultivariateNormalDiag``         the dimensions at once; a prior whose own Gaussian is the grid's
                                   reference has mass exactly 2^-P per bin: :class:`Uniform`;
                                   any other Gaussian: two tables per dimension, :class:`Gaussian`
mixture of Gaussians, or one       dimension by dimension with p(z_d | z_<d) (:class:`Mixture`):
full-covariance Gaussian           a mixture of Gaussians again, whose weights, means and scales
                                   follow from the components' Cholesky factors
``TwoStage`` (two layers)          the first block, then the second given it (:class:`Chain`)
a second-stage VAE p(z)            bits back inside: u from q(u | z), z with p(z | u), u with
                                   N(0, I) (:class:`SecondStage`)
a flow on a Gaussian base          (only to code a point-mass code, no bits back) the grid lies in
                                   the base space: u = T^-1(z) is quantized, z = T(u) is decoded
                                   (:class:`FlowBase`)
=================================  =============================================================

Anything else (a flow posterior, a diffusion prior, a flow prior under bits back) is refused with
a one-line reason (:class:`Refused`); a discrete z needs no grid and is coded by
:mod:`vaegen.coding.discrete` instead.

**The invariant that makes decoding exact.**  An entropy model's probabilities are computed by a
compiled (``jax.jit``) function of arrays, and the decoder calls the *same* function with
*bitwise the same* arguments as the coder did: the same padded batch shape, the latents decoded so
far with zeros where the coder had not yet decided them either.  Different arguments (another
batch size, values the decoder does not have yet) could change a float in the last bit and with it
a quantized probability, and the decoded stream would diverge.  (Across machines the compiled
networks may round differently: decode on the platform that coded, see the docs.)

Shapes: a block of ``rows`` padded examples, the first ``n`` real; indices ``j [rows, D]`` int32 and
representatives ``values [rows, D]`` float32 live in a :class:`Block`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks import discrete as discrete_lib
from vaegen.coding import grid as grid_lib
from vaegen.coding.ans import Stack
from vaegen.model.two_layer import TwoStage

MAX_TABLE_ENTRIES = 2**25
"""Entries of the largest probability table a node builds in one call (memory: 128 MiB of float32);
a node whose tables grow with the number of components or dimensions limits its block's rows."""

REFERENCE_SAMPLES = 4096
"""Ancestral samples whose moments are the grid's reference for dimensions whose marginal has no
closed form (z1 of two stochastic layers), drawn with a fixed key."""


class Refused(Exception):
    """A distribution that cannot be coded exactly on the grid; the message says why, in one line."""


@dataclasses.dataclass
class Block:
    """The latents of one block of examples (see the module): ``n`` examples padded to ``rows``."""

    n: int
    rows: int
    j: np.ndarray             # [rows, D] int32 bin indices (0 where not decided)
    values: np.ndarray        # [rows, D] float32 representatives (0 where not decided)
    context: Any = None       # what q(z | x) is conditioned on: x [rows, *event]

    @classmethod
    def empty(cls, n: int, rows: int, dim: int, context: Any = None) -> "Block":
        return cls(n, rows, np.zeros((rows, dim), np.int32), np.zeros((rows, dim), np.float32), context)


@dataclasses.dataclass
class Session:
    """What every node of a plan shares: the model's ``variables``, the ``grid`` and the grid's
    reference ``loc``, ``scale [D]`` (float32)."""

    variables: Any
    grid: grid_lib.Grid
    loc: np.ndarray | None = None
    scale: np.ndarray | None = None


def pad(a: np.ndarray, rows: int) -> np.ndarray:
    """``a [n, ...]`` padded with zeros to ``[rows, ...]``."""
    a = np.asarray(a)
    if a.shape[0] == rows:
        return a
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    out[: a.shape[0]] = a
    return out


# --- a Gaussian per dimension on the grid: two tables per dimension ---------------------------------

class GaussianTables:
    """Codes bin indices ``j [n, d]`` under independent Gaussians N(loc, scale^2) per dimension whose
    parameters ``params(variables, context, prefix) -> (loc, scale [rows, d])`` come from a compiled
    function, on the grid with reference ``(ref_loc, ref_scale) [d]``."""

    def __init__(self, grid: grid_lib.Grid, params: Callable[..., tuple[jax.Array, jax.Array]]):
        self.grid = grid

        def coarse(variables, context, prefix, ref_loc, ref_scale):
            loc, scale = params(variables, context, prefix)
            mu, sigma = (loc - ref_loc) / ref_scale, scale / ref_scale
            return mu, sigma, grid_lib.gaussian_masses(grid, mu, sigma)

        self._coarse = jax.jit(coarse)
        self._fine = jax.jit(lambda mu, sigma, h: grid_lib.gaussian_masses(grid, mu, sigma, h))

    def pop(self, stack: Stack, session: Session, context, prefix, n: int, ref_loc, ref_scale) -> np.ndarray:
        mu, sigma, coarse = self._coarse(session.variables, context, prefix, ref_loc, ref_scale)
        d, rows = int(mu.shape[-1]), int(mu.shape[0])
        h = stack.pop_categorical(np.asarray(coarse)[:n]).reshape(n, d)
        fine = self._fine(mu, sigma, pad(h, rows))
        l = stack.pop_categorical(np.asarray(fine)[:n]).reshape(n, d)
        return self.grid.join(h, l)

    def push(self, stack: Stack, session: Session, context, prefix, j: np.ndarray, ref_loc, ref_scale) -> None:
        mu, sigma, coarse = self._coarse(session.variables, context, prefix, ref_loc, ref_scale)
        rows, n = int(mu.shape[0]), int(j.shape[0])
        h, l = self.grid.split(j)
        fine = self._fine(mu, sigma, pad(h, rows))
        stack.push_categorical(l, np.asarray(fine)[:n])                     # popped second: pushed first
        stack.push_categorical(h, np.asarray(coarse)[:n])


# --- nodes ------------------------------------------------------------------------------------------

class Node:
    """Codes the dimensions ``dims`` of z, conditioned on the dimensions ``needs`` (decided before).

    ``pop`` decides ``block.j[:, dims]`` and ``block.values[:, dims]`` off the stack; ``push`` codes
    them onto it (the exact inverse).  ``pop_bits`` is about the most one example takes off the stack
    when the node is popped (the coder pops a posterior: its initial bits); ``push_pops`` what one
    example takes off the stack while the node is *pushed* (bits back inside a prior);
    ``max_rows`` the largest block its tables allow."""

    dims: np.ndarray
    needs: np.ndarray = np.zeros((0,), np.int64)

    def pop(self, stack: Stack, block: Block, session: Session) -> None:
        raise NotImplementedError

    def push(self, stack: Stack, block: Block, session: Session) -> None:
        raise NotImplementedError

    def pop_bits(self, grid: grid_lib.Grid) -> int:
        return len(self.dims) * int(grid.precision) + 64

    def push_pops(self, grid: grid_lib.Grid) -> int:
        return 0

    @property
    def max_rows(self) -> int:
        return 1 << 30

    def reference(self, session: Session) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) ``[len(dims)]`` of the grid for these dimensions (priors only)."""
        raise NotImplementedError

    def quantize(self, session: Session, z: np.ndarray) -> np.ndarray:
        """The bins of the codes ``z [rows, D]`` (the whole vector; only this node's dims are used):
        int32 ``[rows, len(dims)]``."""
        t = (np.asarray(z, np.float32)[:, self.dims] - session.loc[self.dims]) / session.scale[self.dims]
        return np.asarray(_quantize(session.grid, jnp.asarray(t)))

    def set(self, block: Block, session: Session, j: np.ndarray) -> None:
        """Records the decided bins ``j [n, len(dims)]`` and their representatives."""
        block.j[: j.shape[0], self.dims] = j
        block.values[: j.shape[0], self.dims] = session.grid.values(j, session.loc[self.dims],
                                                                    session.scale[self.dims])

    def _prefix(self, block: Block) -> np.ndarray:
        return np.ascontiguousarray(block.values[:, self.needs])


_quantize = jax.jit(lambda grid, t: grid.quantize(t), static_argnums=0)


def _rows_of(prefix: jax.Array, context: Any) -> int:
    if context is not None:
        return int(jax.tree_util.tree_leaves(context)[0].shape[0])
    return int(prefix.shape[0])


class Uniform(Node):
    """A factorized Gaussian prior that is itself the grid's reference: every bin has mass exactly
    2^-P, so each index is P uniform bits (no network, no table)."""

    def __init__(self, dims: np.ndarray, params: Callable[..., tuple[jax.Array, jax.Array]]):
        self.dims = np.asarray(dims)
        self._params = jax.jit(lambda v: params(v, None, jnp.zeros((1, 0), jnp.float32)))

    def reference(self, session: Session):
        loc, scale = self._params(session.variables)
        d = len(self.dims)
        return (np.asarray(jnp.broadcast_to(loc, (1, d))[0], np.float32),
                np.asarray(jnp.broadcast_to(scale, (1, d))[0], np.float32))

    def pop(self, stack, block, session):
        j = stack.pop_uniform(block.n * len(self.dims), session.grid.precision).reshape(block.n, len(self.dims))
        self.set(block, session, j)

    def push(self, stack, block, session):
        stack.push_uniform(block.j[: block.n, self.dims], session.grid.precision)


class Gaussian(Node):
    """Independent Gaussians on the grid (a posterior, or a conditional p(z1 | z2)), two tables per
    dimension: the coarse bin, then the fine bin inside it."""

    def __init__(self, grid: grid_lib.Grid, dims: np.ndarray, needs: np.ndarray,
                 params: Callable[..., tuple[jax.Array, jax.Array]]):
        self.dims, self.needs = np.asarray(dims), np.asarray(needs, np.int64)
        self.tables = GaussianTables(grid, params)

    def pop(self, stack, block, session):
        j = self.tables.pop(stack, session, block.context, self._prefix(block), block.n,
                            session.loc[self.dims], session.scale[self.dims])
        self.set(block, session, j)

    def push(self, stack, block, session):
        self.tables.push(stack, session, block.context, self._prefix(block), block.j[: block.n, self.dims],
                         session.loc[self.dims], session.scale[self.dims])

    @property
    def max_rows(self):
        return max(1, MAX_TABLE_ENTRIES // (2 * len(self.dims) * (max(self.tables.grid.coarse, self.tables.grid.fine) + 1)))


class Mixture(Node):
    """A mixture of Gaussians (diagonal or full-covariance components; one full-covariance Gaussian is
    a mixture of one), coded dimension by dimension: dimension t with

        p(z_t | z_<t) = sum_k w_k(z_<t) N(z_t; m_kt(z_<t), s_kt^2),

    w_k(z_<t) proportional to pi_k N_k(z_<t) (the component's marginal of the dimensions before t).  With
    a component's Cholesky factor L (z = mu + L eps): eps_<t solves L eps = z - mu on the first t
    dimensions, m_kt = mu_t + sum_{i<t} L_ti eps_i, s_kt = L_tt, log N_k(z_<t) = sum_{i<t} (-eps_i^2 / 2
    - log L_ii) + const.  Evaluated at the representatives of the bins decided before, each factor is
    the exact mass of a bin, so prod_t P(j_t | j_<t) is a distribution over the grid: exact and
    lossless (it tends to the bins' mass under p(z) as the bins shrink).

    ``params(variables, context, prefix) -> (log_weights [rows, K], loc [rows, K, d], scale)`` with
    ``scale`` the diagonal ``[rows, K, d]`` (``diagonal``) or the Cholesky factors ``[rows, K, d, d]``.
    """

    def __init__(self, grid: grid_lib.Grid, dims: np.ndarray, needs: np.ndarray, params: Callable[..., Any],
                 *, diagonal: bool, num_components: int, is_prior: bool):
        self.dims, self.needs = np.asarray(dims), np.asarray(needs, np.int64)
        self.grid, self.diagonal, self.k, self.is_prior = grid, bool(diagonal), int(num_components), bool(is_prior)
        self._params = jax.jit(params)
        self._step = jax.jit(self._conditional)
        self._fine = jax.jit(lambda w, mu, sigma, h: grid_lib.mixture_masses(grid, w, mu, sigma, h))
        self._moments = jax.jit(self._moments_of)

    def _conditional(self, params, z, t, ref_loc, ref_scale):
        """Weights, standardized means and scales ``[rows, K]`` of z_t | z_<t, and the coarse table
        ``[rows, H]``, for ``z [rows, d]`` whose dimensions >= t are 0."""
        log_w, loc, scale = params
        d = loc.shape[-1]
        before = (jnp.arange(d) < t).astype(loc.dtype)                              # [d]
        r = z[:, None, :] - loc                                                     # [rows, K, d]
        if self.diagonal:
            eps = r / scale
            log_n = jnp.sum(before * (-0.5 * eps**2 - jnp.log(scale)), -1)          # [rows, K]
            mean = jnp.take(loc, t, axis=-1)
            std = jnp.take(scale, t, axis=-1)
        else:
            eps = jax.scipy.linalg.solve_triangular(scale, r[..., None], lower=True)[..., 0]   # [rows, K, d]
            diag = jnp.diagonal(scale, axis1=-2, axis2=-1)                          # [rows, K, d]
            log_n = jnp.sum(before * (-0.5 * eps**2 - jnp.log(diag)), -1)
            row = jnp.take(scale, t, axis=-2)                                       # [rows, K, d]: L_t.
            mean = jnp.take(loc, t, axis=-1) + jnp.sum(before * row * eps, -1)
            std = jnp.take(diag, t, axis=-1)
        w = jax.nn.softmax(log_w + log_n, axis=-1)                                  # [rows, K]
        mu = (mean - jnp.take(ref_loc, t)) / jnp.take(ref_scale, t)
        sigma = std / jnp.take(ref_scale, t)
        return w, mu, sigma, grid_lib.mixture_masses(self.grid, w, mu, sigma)

    def _moments_of(self, variables):
        log_w, loc, scale = self._call_params(variables, 1)
        pi = jax.nn.softmax(log_w[0])[:, None]                                      # [K, 1]
        var = scale[0] ** 2 if self.diagonal else jnp.sum(scale[0] ** 2, -1)       # [K, d]
        mean = jnp.sum(pi * loc[0], 0)
        second = jnp.sum(pi * (var + loc[0] ** 2), 0)
        return mean, jnp.sqrt(jnp.maximum(second - mean**2, 1e-12))

    def _call_params(self, variables, rows, context=None, prefix=None):
        prefix = jnp.zeros((rows, len(self.needs)), jnp.float32) if prefix is None else prefix
        return self._params(variables, context, prefix)

    def reference(self, session):
        mean, std = self._moments(session.variables)
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)

    @property
    def max_rows(self):
        per_row = (self.k * (len(self.dims) ** 2 if not self.diagonal else len(self.dims))
                   + 2 * self.k * (max(self.grid.coarse, self.grid.fine) + 1))
        return max(1, MAX_TABLE_ENTRIES // per_row)

    def _tables(self, session, params, z, t, ref_loc, ref_scale):
        return self._step(params, jnp.asarray(z), jnp.int32(t), ref_loc, ref_scale)

    def pop(self, stack, block, session):
        params = self._params(session.variables, block.context, self._prefix(block))
        ref_loc, ref_scale = session.loc[self.dims], session.scale[self.dims]
        d = len(self.dims)
        z = np.zeros((block.rows, d), np.float32)
        j = np.zeros((block.n, d), np.int32)
        for t in range(d):
            w, mu, sigma, coarse = self._tables(session, params, z, t, ref_loc, ref_scale)
            h = stack.pop_categorical(np.asarray(coarse)[: block.n])
            l = stack.pop_categorical(np.asarray(self._fine(w, mu, sigma, pad(h, block.rows)))[: block.n])
            j[:, t] = self.grid.join(h, l)
            z[: block.n, t] = self.grid.values(j[:, t], ref_loc[t:t + 1], ref_scale[t:t + 1])
        self.set(block, session, j)

    def push(self, stack, block, session):
        params = self._params(session.variables, block.context, self._prefix(block))
        ref_loc, ref_scale = session.loc[self.dims], session.scale[self.dims]
        d = len(self.dims)
        full = block.values[:, self.dims]
        j = block.j[: block.n, self.dims]
        tables = []
        for t in range(d):                                     # the decoder's arguments: dims >= t still 0
            z = np.zeros_like(full)
            z[:, :t] = full[:, :t]
            w, mu, sigma, coarse = self._tables(session, params, z, t, ref_loc, ref_scale)
            h, l = self.grid.split(j[:, t])
            tables.append((h, l, np.asarray(coarse)[: block.n],
                           np.asarray(self._fine(w, mu, sigma, pad(h, block.rows)))[: block.n]))
        for h, l, coarse, fine in reversed(tables):            # the last dimension popped last: pushed first
            stack.push_categorical(l, fine)
            stack.push_categorical(h, coarse)


class Chain(Node):
    """Two blocks of dimensions, the second conditioned on the first (two stochastic layers)."""

    def __init__(self, first: Node, second: Node, reference_fn: Callable[[Any], Any] | None = None):
        self.first, self.second = first, second
        self.dims = np.concatenate([first.dims, second.dims])
        self.needs = first.needs
        self._reference_fn = jax.jit(reference_fn) if reference_fn is not None else None

    def pop(self, stack, block, session):
        self.first.pop(stack, block, session)
        self.second.pop(stack, block, session)

    def push(self, stack, block, session):
        self.second.push(stack, block, session)
        self.first.push(stack, block, session)

    def pop_bits(self, grid):
        return self.first.pop_bits(grid) + self.second.pop_bits(grid)

    def push_pops(self, grid):
        return self.first.push_pops(grid) + self.second.push_pops(grid)

    @property
    def max_rows(self):
        return min(self.first.max_rows, self.second.max_rows)

    def reference(self, session):
        """The first block's own reference; the second block's from the moments of
        :data:`REFERENCE_SAMPLES` ancestral samples (fixed key)."""
        loc_a, scale_a = self.first.reference(session)
        samples = np.asarray(self._reference_fn(session.variables), np.float64)   # [S, D], by dimension of z
        loc = samples.mean(0).astype(np.float32)
        scale = np.maximum(samples.std(0), 1e-6).astype(np.float32)
        loc[self.first.dims], scale[self.first.dims] = loc_a, scale_a
        return loc[self.dims], scale[self.dims]


class SecondStage(Node):
    """p(z) a second-stage VAE (Dai & Wipf 2019) on the standardized codes s = (z - m) / c: p(s) =
    E_{u ~ N(0, I)} N(s; mu(u), diag sigma^2), with its encoder q(u | s) beside it.  Coding z is
    bits back once more: pushing z's bins pops u from q(u | s) on u's own grid, pushes s's bins with
    p(s | u) and u with N(0, I) (P bits per dimension); popping does the reverse.  The grid of z is
    the standardization's, so s's bins have equal N(0, 1) mass.  The cost of z is then
    -log P(s | u) - log P(u) + log Q(u | s), whose expectation is the second stage's own negative
    ELBO on the grid: its p(z), which is only an importance-sampled estimate, is never needed."""

    def __init__(self, grid: grid_lib.Grid, dims: np.ndarray, inner_dim: int, standardizer: Callable,
                 encode: Callable, decode: Callable):
        self.dims, self.k, self.grid = np.asarray(dims), int(inner_dim), grid
        self._standardizer = jax.jit(standardizer)
        zeros_k = np.zeros(self.k, np.float32)
        self._u_loc, self._u_scale = zeros_k, np.ones(self.k, np.float32)
        self._q = GaussianTables(grid, encode)       # q(u | s): context s [rows, D]
        self._p = GaussianTables(grid, decode)       # p(s | u): context u [rows, K]

    def reference(self, session):
        loc, scale = self._standardizer(session.variables)
        return np.asarray(loc, np.float32), np.maximum(np.asarray(scale, np.float32), 1e-6)

    def _s(self, block):
        return np.ascontiguousarray(self.grid.centres[block.j[:, self.dims]]).astype(np.float32)   # [rows, D]

    def push(self, stack, block, session):
        s = self._s(block)
        s[block.n:] = 0.0
        empty = np.zeros((block.rows, 0), np.float32)
        u = self._q.pop(stack, session, s, empty, block.n, self._u_loc, self._u_scale)          # bits back
        u_values = pad(self.grid.values(u, self._u_loc, self._u_scale), block.rows)
        self._p.push(stack, session, u_values, empty, block.j[: block.n, self.dims],
                     np.zeros(len(self.dims), np.float32), np.ones(len(self.dims), np.float32))
        stack.push_uniform(u, self.grid.precision)

    def pop(self, stack, block, session):
        empty = np.zeros((block.rows, 0), np.float32)
        u = stack.pop_uniform(block.n * self.k, self.grid.precision).reshape(block.n, self.k)
        u_values = pad(self.grid.values(u, self._u_loc, self._u_scale), block.rows)
        j = self._p.pop(stack, session, u_values, empty, block.n,
                        np.zeros(len(self.dims), np.float32), np.ones(len(self.dims), np.float32))
        self.set(block, session, j)
        s = self._s(block)
        s[block.n:] = 0.0
        self._q.push(stack, session, s, empty, u, self._u_loc, self._u_scale)

    def push_pops(self, grid):
        return self.k * int(grid.precision) + 64      # q(u | s) is popped while z is pushed

    @property
    def max_rows(self):
        return max(1, MAX_TABLE_ENTRIES // (2 * max(len(self.dims), self.k) * (max(self.grid.coarse, self.grid.fine) + 1)))


class FlowBase(Node):
    """p(z) a flow T on a diagonal Gaussian base: the grid lies in the base space, u = T^-1(z), whose
    bins have mass exactly 2^-P under the base (P uniform bits per dimension); the decoder sees
    z = T(c_j).  Used to code a point-mass code (no bits back)."""

    def __init__(self, dims: np.ndarray, base: Callable, forward: Callable, inverse: Callable):
        self.dims = np.asarray(dims)
        self._base = jax.jit(base)
        self._forward = jax.jit(forward)
        self._inverse = jax.jit(inverse)

    def reference(self, session):
        loc, scale = self._base(session.variables)
        return np.asarray(loc, np.float32), np.asarray(scale, np.float32)

    def quantize(self, session, z):
        u = np.asarray(self._inverse(session.variables, jnp.asarray(z, jnp.float32)), np.float32)
        return super().quantize(session, u)

    def set(self, block, session, j):
        super().set(block, session, j)                       # base-space representatives
        block.values[:] = np.asarray(self._forward(session.variables, jnp.asarray(block.values)), np.float32)

    def pop(self, stack, block, session):
        j = stack.pop_uniform(block.n * len(self.dims), session.grid.precision).reshape(block.n, len(self.dims))
        self.set(block, session, j)

    def push(self, stack, block, session):
        stack.push_uniform(block.j[: block.n, self.dims], session.grid.precision)


# --- plans from distributions -----------------------------------------------------------------------

FLOW_POSTERIOR = ("q(z|x) is a normalizing flow: bits back needs the mass q gives each bin of z, dimension by "
                  "dimension, which a flow does not give; use a diagonal or full-covariance Gaussian posterior")
FLOW_PRIOR_BITS_BACK = ("p(z) is a normalizing flow, whose mass on the bins of z is not tractable dimension by "
                        "dimension, so bits back cannot code z with it; code the posterior mean with the "
                        "quantized_latent coder (bins in the flow's base space) instead")
DISCRETE = ("{what} is a {name}, over a discrete z: it is coded exactly, without a grid, by the discrete_bits_back "
            "coder")
UNSUPPORTED = "{what} is a {name}, which has no tractable mass on the bins of z, so it cannot code z exactly"
BOUND_ONLY = ("p(z) is a variational diffusion model: its log p(z) is only a Monte Carlo estimate of a variational "
              "bound, and its reverse chain gives no tractable mass to the bins of z, so z cannot be entropy-coded "
              "with it; use an ex-post gmm, flow or two_stage density")


def diagonal_parameters(dist: distrax.Distribution, rows: int) -> tuple[jax.Array, jax.Array]:
    """(loc, scale) ``[rows, d]`` of a diagonal Gaussian (broadcast over the rows)."""
    d = dist.event_shape[-1]
    return (jnp.broadcast_to(dist.loc, (rows, d)).astype(jnp.float32),
            jnp.broadcast_to(dist.scale_diag, (rows, d)).astype(jnp.float32))


def _is_gaussian_mixture(dist: Any) -> bool:
    return (isinstance(dist, distrax.MixtureSameFamily)
            and isinstance(dist.components_distribution, (distrax.MultivariateNormalDiag, distrax.MultivariateNormalTri)))


def mixture_parameters(dist: distrax.Distribution, rows: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log weights ``[rows, K]``, loc ``[rows, K, d]``, scale) of a Gaussian mixture or a
    full-covariance Gaussian (K = 1); scale ``[rows, K, d]`` for diagonal components, the Cholesky
    factors ``[rows, K, d, d]`` otherwise."""
    if isinstance(dist, distrax.MixtureSameFamily):
        log_w = jax.nn.log_softmax(dist.mixture_distribution.logits, axis=-1)
        comps = dist.components_distribution
    else:
        log_w = jnp.zeros(tuple(dist.batch_shape) + (1,), jnp.float32)
        comps = None
    if comps is None:
        loc, tri = dist.loc[..., None, :], dist.scale_tri[..., None, :, :]
        d = loc.shape[-1]
        k = 1
    else:
        loc = comps.loc
        d, k = loc.shape[-1], loc.shape[-2]
        tri = comps.scale_diag if isinstance(comps, distrax.MultivariateNormalDiag) else comps.scale_tri
    diagonal = comps is not None and isinstance(comps, distrax.MultivariateNormalDiag)
    scale_shape = (rows, k, d) if diagonal else (rows, k, d, d)
    return (jnp.broadcast_to(log_w, (rows, k)).astype(jnp.float32), jnp.broadcast_to(loc, (rows, k, d)).astype(jnp.float32),
            jnp.broadcast_to(tri, scale_shape).astype(jnp.float32))


def _unwrap_flow(dist: distrax.Distribution) -> tuple[list, distrax.Distribution]:
    """The bijectors of nested ``Transformed`` distributions (outermost first) and the base."""
    bijectors = []
    while (isinstance(dist, distrax.Transformed)
           and not isinstance(dist, (distrax.MultivariateNormalDiag, distrax.MultivariateNormalTri))):
        bijectors.append(dist.bijector)
        dist = dist.distribution
    return bijectors, dist


def _second_stage(dist: distrax.Distribution):
    """The second-stage VAE inside a standardized density, or None: ``Transformed(inner, affine)`` with
    an inner distribution that has ``encode(s)`` and ``decode(u)``."""
    if (isinstance(dist, distrax.Transformed) and hasattr(dist.distribution, "encode")
            and hasattr(dist.distribution, "decode") and isinstance(dist.bijector, distrax.Block)
            and isinstance(dist.bijector.bijector, distrax.ScalarAffine)):
        return dist.distribution
    return None


def plan(dist: distrax.Distribution, root: Callable, grid: grid_lib.Grid, *, what: str, is_prior: bool,
         allow_flow: bool = False) -> Node:
    """The plan that codes the whole vector z under ``dist`` (the value of ``root(variables, context)``
    for one example, evaluated outside ``jit`` to read its structure).

    Args:
      root: ``root(variables, context) -> distribution``: p(z) (context None) or q(z | x) (context x
        ``[rows, *event]``), called inside compiled functions.
      what: ``"p(z)"`` or ``"q(z|x)"``, for messages.
      is_prior: a prior defines the grid's reference (a posterior uses the prior's).
      allow_flow: a flow prior codes in its base space (a point-mass code, no bits back).
    Raises:
      Refused: the distribution cannot be coded on the grid (one line why).
    """
    if discrete_lib.is_discrete(dist):
        raise Refused(DISCRETE.format(what=what, name=type(dist).__name__))
    d = int(dist.event_shape[-1])
    dims = np.arange(d)
    none = np.zeros((0,), np.int64)

    def diag_params(get):
        return lambda v, ctx, prefix: diagonal_parameters(get(root(v, ctx), prefix), _rows_of(prefix, ctx))

    if isinstance(dist, distrax.MultivariateNormalDiag):
        params = diag_params(lambda p, prefix: p)
        return Uniform(dims, params) if is_prior else Gaussian(grid, dims, none, params)
    if isinstance(dist, distrax.MultivariateNormalTri) or _is_gaussian_mixture(dist):
        diagonal = (isinstance(dist, distrax.MixtureSameFamily)
                    and isinstance(dist.components_distribution, distrax.MultivariateNormalDiag))
        k = 1 if not isinstance(dist, distrax.MixtureSameFamily) else int(dist.components_distribution.loc.shape[-2])
        params = lambda v, ctx, prefix: mixture_parameters(root(v, ctx), _rows_of(prefix, ctx))
        return Mixture(grid, dims, none, params, diagonal=diagonal, num_components=k, is_prior=is_prior)
    if isinstance(dist, TwoStage):
        a, b = (np.asarray(i).astype(np.int64) for i in dist.split(np.arange(d, dtype=np.float32)))
        first = dist.first
        if isinstance(first, distrax.MultivariateNormalDiag):
            first_params = diag_params(lambda p, prefix: p.first)
            first_node = (Uniform(a, first_params) if is_prior else Gaussian(grid, a, none, first_params))
        elif _is_gaussian_mixture(first) or isinstance(first, distrax.MultivariateNormalTri):
            diagonal = (isinstance(first, distrax.MixtureSameFamily)
                        and isinstance(first.components_distribution, distrax.MultivariateNormalDiag))
            k = 1 if not isinstance(first, distrax.MixtureSameFamily) else int(first.components_distribution.loc.shape[-2])
            first_node = Mixture(grid, a, none,
                                 lambda v, ctx, prefix: mixture_parameters(root(v, ctx).first, _rows_of(prefix, ctx)),
                                 diagonal=diagonal, num_components=k, is_prior=is_prior)
        else:
            raise Refused(UNSUPPORTED.format(what=f"the first layer of {what}", name=type(first).__name__))
        second = dist.conditional(jnp.zeros(tuple(dist.batch_shape) + (len(a),), jnp.float32))
        if not isinstance(second, distrax.MultivariateNormalDiag):
            raise Refused(UNSUPPORTED.format(what=f"the second layer of {what}", name=type(second).__name__))
        second_node = Gaussian(grid, b, a, lambda v, ctx, prefix: diagonal_parameters(
            root(v, ctx).conditional(prefix), _rows_of(prefix, ctx)))
        sample = (lambda v: root(v, None).sample(seed=jax.random.key(0), sample_shape=(REFERENCE_SAMPLES,))
                  ) if is_prior else None
        return Chain(first_node, second_node, sample)
    inner = _second_stage(dist)
    if inner is not None and is_prior:
        k = int(inner.encode(jnp.zeros((1, d), jnp.float32)).event_shape[-1])

        def standardizer(v):
            affine = root(v, None).bijector.bijector
            return (jnp.broadcast_to(affine.shift, (d,)).astype(jnp.float32),
                    jnp.broadcast_to(jnp.exp(affine.log_scale), (d,)).astype(jnp.float32))

        encode = lambda v, s, prefix: diagonal_parameters(root(v, None).distribution.encode(s), s.shape[0])
        decode = lambda v, u, prefix: diagonal_parameters(root(v, None).distribution.decode(u), u.shape[0])
        return SecondStage(grid, dims, k, standardizer, encode, decode)
    bijectors, base = _unwrap_flow(dist)
    if bijectors and isinstance(base, distrax.MultivariateNormalDiag) and inner is None:
        if not is_prior:
            raise Refused(FLOW_POSTERIOR)
        if not allow_flow:
            raise Refused(FLOW_PRIOR_BITS_BACK)
        depth = len(bijectors)

        def chain(v):
            p, out = root(v, None), []
            for _ in range(depth):
                out.append(p.bijector)
                p = p.distribution
            return out, p

        def base_params(v):
            return diagonal_parameters(chain(v)[1], 1)[0][0], diagonal_parameters(chain(v)[1], 1)[1][0]

        def forward(v, u):
            for bij in reversed(chain(v)[0]):
                u = bij.forward(u)
            return u

        def inverse(v, z):
            for bij in chain(v)[0]:
                z = bij.inverse(z)
            return z

        return FlowBase(dims, base_params, forward, inverse)
    core = inner if inner is not None else (base if bijectors else dist)
    if hasattr(core, "bound_terms"):
        raise Refused(BOUND_ONLY)
    raise Refused(UNSUPPORTED.format(what=what, name=_describe(core)))


def _describe(dist: Any) -> str:
    doc = (type(dist).__doc__ or "").strip().split("\n")[0].rstrip(".")
    return f"{type(dist).__name__} ({doc})" if doc else type(dist).__name__
