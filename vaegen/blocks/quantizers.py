"""Vector quantization (van den Oord, Vinyals & Kavukcuoglu 2017): the VQ-VAE's posterior.

The encoder's output z_e(x) ``[D]`` is cut into M groups of ``code_dim`` d (D = M d); group m is
replaced by the nearest of K codebook vectors e_1..e_K ``[d]`` (one codebook shared by the groups)::

    c*_m = argmin_k ||z_e,m(x) - e_k||^2        c* in {0..K-1}^M: the code of x
    z_q(x) = [e_{c*_1}, ..., e_{c*_M}]          [D], what the decoder sees

q(c | x) is a point mass on c*.  argmin has no gradient; the straight-through estimator passes the
decoder's gradient to the encoder unchanged: z = z_e + sg(z_q - z_e), which equals z_q forward and
has dz/dz_e = I backward.

The codebook is learned in one of two ways:

* ``ema=False``: e is a parameter (``params/posterior/embedding [K, d]``), trained by the codebook
  loss ||sg(z_e) - e_c||^2 of the ``vq`` objective (:mod:`vaegen.objectives.vq`).
* ``ema=True``: e is not trained by the optimizer; after each step it is set to the running mean of
  the encoder outputs assigned to it (van den Oord et al. 2017, appendix; Sonnet's
  ``VectorQuantizerEMA``)::

      N_k <- g N_k + (1 - g) n_k                 n_k = #{(i, m): c*_im = k} in the batch
      S_k <- g S_k + (1 - g) sum_{c*_im = k} z_e,im
      e_k  = S_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j    (Laplace smoothing)

  g = ``ema_decay``; N (``cluster_size [K]``), S (``embedding_sum [K, d]``) and e (``embedding``)
  live in the flax collection ``codebook``, which the optimizer never touches; the objective's
  ``after_step`` applies :func:`ema_update`.  They start as if each code had been chosen once, at
  its initial vector (N_k = 1, S_k = e_k), so the first steps do not divide by ~0.

Either way ``codebook/cluster_size`` keeps the moving average of each code's usage (assignments per
step), and codes used less than ``dead_code_threshold`` times per step on average are restarted at
encoder outputs of the current batch (:func:`restart_dead_codes`; Dhariwal et al. 2020's Jukebox
does the same).  Everything here is deterministic given the batch and the step's key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.registry import Settings, setting

CODEBOOK = "codebook"
"""The flax collection of a quantizer's running statistics (and, with EMA, of its codebook)."""


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """||z_m - e_k||^2 for ``z [..., M, d]`` and ``codebook [K, d]``: ``[..., M, K]``."""
    zz = jnp.sum(z**2, -1, keepdims=True)                           # [..., M, 1]
    ee = jnp.sum(codebook**2, -1)                                    # [K]
    return jnp.maximum(zz - 2.0 * z @ codebook.T + ee, 0.0)


def nearest(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """argmin_k ||z_m - e_k||^2 for ``z [..., M, d]``: ``[..., M]`` int32 (the first on ties)."""
    return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def group(z: jax.Array, code_dim: int) -> jax.Array:
    """``[..., D] -> [..., M, d]`` with M = D / d."""
    return z.reshape(z.shape[:-1] + (z.shape[-1] // code_dim, code_dim))


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    """z_e + sg(z_q - z_e): the value of z_q with the gradient of z_e."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def perplexity(indices: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """``(perplexity, used codes)`` of the code indices ``[...]`` (pooled over every position):
    exp(-sum_k p_k log p_k) with p_k the fraction of indices equal to k (1 .. K), and the number of
    codes that occur at least once."""
    counts = jnp.sum(jax.nn.one_hot(indices.reshape(-1), codebook_size, dtype=jnp.float32), 0)   # [K]
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy), jnp.sum(counts > 0).astype(jnp.float32)


def ema_update(stats: dict[str, jax.Array], z: jax.Array, indices: jax.Array, *, decay: float,
               epsilon: float) -> dict[str, jax.Array]:
    """One EMA step of the codebook (see the module), from the encoder outputs ``z [N, d]`` and
    their codes ``indices [N]``.

    ``stats``: ``{"cluster_size" [K], "embedding_sum" [K, d], "embedding" [K, d]}``; returns the
    new ones (``embedding`` = the Laplace-smoothed S_k / N~_k)."""
    k = stats["cluster_size"].shape[0]
    onehot = jax.nn.one_hot(indices, k, dtype=z.dtype)                                     # [N, K]
    n = decay * stats["cluster_size"] + (1.0 - decay) * jnp.sum(onehot, 0)                 # [K]
    s = decay * stats["embedding_sum"] + (1.0 - decay) * onehot.T @ z                      # [K, d]
    total = jnp.sum(n)
    smoothed = (n + epsilon) / (total + k * epsilon) * total
    return {"cluster_size": n, "embedding_sum": s, "embedding": s / smoothed[:, None]}


def usage_update(cluster_size: jax.Array, indices: jax.Array, *, decay: float) -> jax.Array:
    """N_k <- decay N_k + (1 - decay) n_k: the moving average of each code's assignments per step."""
    counts = jnp.sum(jax.nn.one_hot(indices, cluster_size.shape[0], dtype=cluster_size.dtype), 0)
    return decay * cluster_size + (1.0 - decay) * counts


def restart_dead_codes(key: jax.Array, cluster_size: jax.Array, codebook: jax.Array, z: jax.Array,
                       threshold: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Moves every code with usage ``cluster_size [K] < threshold`` onto an encoder output of the
    batch ``z [N, d]`` (drawn by a permutation from ``key``, distinct while K <= N) and sets its usage
    to ``threshold``.

    Returns ``(dead [K] bool, cluster_size [K], codebook [K, d])``."""
    k, n = codebook.shape[0], z.shape[0]
    dead = cluster_size < threshold
    pick = jax.random.permutation(key, n)[jnp.arange(k) % n]                # [K]
    codebook = jnp.where(dead[:, None], z[pick], codebook)
    cluster_size = jnp.where(dead, jnp.asarray(threshold, cluster_size.dtype), cluster_size)
    return dead, cluster_size, codebook


@dataclasses.dataclass(frozen=True)
class VQSettings(Settings):
    """Settings of the ``vq_vae`` model kind (``config.model.kind``, :mod:`vaegen.model.vq`): the
    codebook and how it is kept, read by :class:`VectorQuantizer` and by the ``vq`` objective's update
    of the codebook (:func:`vaegen.objectives.vq.codebook_update`)."""

    codebook_size: int = setting(256, "K, the codebook's vectors (one codebook shared by the M groups)", ge=2)
    code_dim: int = setting(4, "d: z_e [latent_dim] is cut into M = latent_dim / d groups, each quantized", gt=0)
    ema: bool = setting(True, "codebook = moving averages of the encoder outputs assigned to each code (no codebook "
                        "loss); false: a parameter trained by the codebook loss")
    ema_decay: float = setting(0.99, "g of the moving averages (codebook with ema, code usage always)", ge=0, lt=1)
    ema_epsilon: float = setting(1e-5, "Laplace smoothing of the moving-average counts", gt=0)
    dead_code_threshold: float = setting(0.0, "restart codes used less than this many times per step (moving "
                                         "average) at encoder outputs of the batch; 0 = never", ge=0)
    init_scale: float = setting(1.0, "the codebook starts at N(0, init_scale^2)", gt=0)


class VectorQuantizer(nn.Module):
    """q(c | x) = delta(c - c*(x)): the VQ-VAE's posterior (see the module docstring).

    Attributes:
      encoder: trunk mapping ``x [..., *event]`` to features ``[..., F]``; a dense head ``loc``
        gives z_e ``[..., D]`` (the same parameters as :class:`vaegen.blocks.posteriors.PointMass`).
      latent_dim: D = M * code_dim.
      settings: :class:`VQSettings`: K = ``codebook_size``, d = ``code_dim``; ``ema``: the codebook
        is a moving average (collection ``codebook``, kept with ``ema_decay`` and ``ema_epsilon``)
        instead of a parameter; the initial codebook entries are N(0, ``init_scale``^2); codes used
        less than ``dead_code_threshold`` times per step are restarted.

    ``__call__(x)`` is q over z: a point mass at the straight-through z = z_e + sg(z_q - z_e)
    (event ``[D]``), so the questions asked of an autoencoder (its code, its reconstruction) work.
    """

    encoder: nn.Module
    latent_dim: int
    settings: VQSettings = VQSettings()

    @property
    def codebook_size(self) -> int:
        """K."""
        return int(self.settings.codebook_size)

    @property
    def code_dim(self) -> int:
        """d."""
        return int(self.settings.code_dim)

    @property
    def ema(self) -> bool:
        """Whether the codebook is a moving average."""
        return bool(self.settings.ema)

    @property
    def num_groups(self) -> int:
        """M, the number of code indices per example."""
        return self.latent_dim // self.code_dim

    def setup(self):
        self.loc = nn.Dense(self.latent_dim, name="loc")
        shape = (self.codebook_size, self.code_dim)
        init = nn.initializers.normal(float(self.settings.init_scale))
        if self.ema:
            self.embedding = self.variable(CODEBOOK, "embedding", lambda: init(self.make_rng("params"), shape))
            self.embedding_sum = self.variable(CODEBOOK, "embedding_sum",  # its own buffer: the state is donated
                                               lambda: jnp.array(self.embedding.value, copy=True))
        else:
            self.embedding_param = self.param("embedding", init, shape)
        self.cluster_size = self.variable(CODEBOOK, "cluster_size", lambda: jnp.ones((self.codebook_size,)))

    def codebook(self) -> jax.Array:
        """The codebook e ``[K, d]``."""
        return self.embedding.value if self.ema else self.embedding_param

    def encode(self, x: jax.Array) -> jax.Array:
        """z_e(x) ``[..., D]``."""
        return self.loc(self.encoder(x))

    def quantize(self, x: jax.Array) -> dict[str, jax.Array]:
        """Everything about x's code: ``z_e [..., D]``, ``indices [..., M]`` (int32, c*),
        ``z_q [..., D]`` (the code's vectors; gradient to the codebook only), ``z [..., D]``
        (straight-through: the value of z_q, the gradient of z_e) and ``distances [..., M, K]``
        (||z_e,m - e_k||^2)."""
        z_e = self.encode(x)
        e = self.codebook()
        dist = squared_distances(group(z_e, self.code_dim), e)
        indices = jnp.argmin(dist, axis=-1).astype(jnp.int32)
        z_q = self.lookup(indices)
        return {"z_e": z_e, "indices": indices, "z_q": z_q, "z": straight_through(z_e, z_q), "distances": dist}

    def lookup(self, indices: jax.Array) -> jax.Array:
        """The vectors of codes ``indices [..., M]``: ``[..., D]``."""
        e = self.codebook()
        return e[indices].reshape(indices.shape[:-1] + (self.latent_dim,))

    def __call__(self, x: jax.Array) -> distrax.Distribution:
        z = self.quantize(x)["z"]
        return distrax.Independent(distrax.Deterministic(loc=z), reinterpreted_batch_ndims=1)


def uniform_code_kl(codebook_size: int, num_groups: int) -> float:
    """KL(q(c | x) || uniform over the K^M codes) = M log K nats (q a point mass)."""
    return float(num_groups * math.log(codebook_size))


def is_quantizer(posterior: Any) -> bool:
    return isinstance(posterior, VectorQuantizer)
