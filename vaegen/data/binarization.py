"""Binarization protocols: how stored uint8 grey levels become what a model sees.

Models with a Bernoulli likelihood need binary data.  The protocol is explicit and named
(:data:`BINARIZATIONS`):

``dynamic``
    a fresh Bernoulli draw with ``p = x / 255`` every time a batch is used (inside the
    training step, :func:`to_float` with a new key each step; exact integer arithmetic on
    32-bit words, :func:`bernoulli_grey_levels`);
``static``
    one Bernoulli draw with ``p = x / 255`` and a recorded seed, done once
    (:func:`binarize_once`);
``threshold``
    ``x / 255 > 0.5``, done once;
``none``
    grey levels ``x / 255`` as floats in ``[0, 1]``;
``real``
    no grey levels: real-valued vectors stored as ``float32`` and seen as they are (data given
    in memory, e.g. the codes an ex-post density is fitted to, :mod:`vaegen.studies.expost`).

Validation and test sets are evaluated under :func:`eval_protocol` of the training
protocol: ``dynamic`` training is evaluated on a ``static`` binarization with a fixed seed
(the protocol of the VampPrior paper, Tomczak & Welling 2018); the other protocols are
evaluated as they are trained.
"""

from __future__ import annotations

import jax
import jax.extend.random as jax_random_ext
import jax.numpy as jnp
import numpy as np
from jax import lax

BINARIZATIONS: tuple[str, ...] = ("dynamic", "static", "threshold", "none", "real")
"""The binarization protocols; see the module docstring."""


def _check_protocol(protocol: str) -> None:
    if protocol not in BINARIZATIONS:
        raise ValueError(
            f"Unknown binarization protocol {protocol!r}; choices: {', '.join(BINARIZATIONS)}."
        )


@jax.jit
def _static_draw(key: jax.Array, x_u8: jax.Array) -> jax.Array:
    # Done once per split, so speed does not matter: jax.random.bernoulli, whose draw fixes the
    # binarized validation and test sets that every recorded evaluation used.
    p = x_u8.astype(jnp.float32) / 255.0
    return jax.random.bernoulli(key, p).astype(jnp.uint8) * jnp.uint8(255)


def binarize_once(x_u8: jax.Array | np.ndarray, protocol: str, seed: int) -> jax.Array:
    """The array as stored on the device for a protocol, binarized once where it applies.

    Args:
      x_u8: ``uint8 [..., H, W, C]`` grey levels 0..255.
      protocol: one of :data:`BINARIZATIONS`.
      seed: seed of the ``static`` draw (``jax.random.key(seed)``); unused otherwise.

    Returns:
      ``uint8``, same shape: ``static``: a Bernoulli draw with ``p = x / 255``, stored as
      ``{0, 255}``; ``threshold``: ``255 * (x / 255 > 0.5)``; ``dynamic`` and ``none``:
      ``x`` unchanged.  Deterministic given ``seed`` (one draw over the whole array, so it
      does not depend on the number of devices); peak memory is about 5 bytes per pixel.
    """
    _check_protocol(protocol)
    x = jnp.asarray(x_u8)
    if protocol == "real":
        return x
    if x.dtype != jnp.uint8:
        raise TypeError(f"binarize_once expects uint8 grey levels, got {x.dtype}.")
    if protocol == "static":
        return _static_draw(jax.random.key(seed), x)
    if protocol == "threshold":
        # x / 255 > 0.5  <=>  x >= 128 for integers 0..255.
        return jnp.where(x > 127, jnp.uint8(255), jnp.uint8(0))
    return x


# floor((2**32 - 1) / 255): a uniform 32-bit word w is below 16843009 * g with probability
# 16843009 * g / 2**32 = (g / 255) (1 - 2**-32).
_WORD_PER_GREY_LEVEL = 16843009


def _uniform_words(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """``uint32 [B, D]`` uniform words, row ``i`` column ``j`` from counter ``i * D + j``.

    With a threefry key both 32-bit halves of each threefry2x32 block are used (``jax.random.bits``
    folds them into one word), so a batch costs half the blocks; each row is hashed on its own,
    which keeps the draw partitionable over a batch-sharded mesh.  Other key implementations use
    ``jax.random.bits``.
    """
    if jax.random.key_impl(key) != "threefry2x32":
        return jax.random.bits(key, shape, jnp.uint32)
    rows, cols = shape
    if rows * cols > 2**32:
        raise ValueError(f"one draw of {rows} x {cols} grey levels exceeds 2**32 counters; draw in batches.")
    key_words = jax.random.key_data(key)
    counts = (lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(cols)
              + lax.broadcasted_iota(jnp.uint32, shape, 1))
    return jax.vmap(lambda c: jax_random_ext.threefry_2x32(key_words, c))(counts)


def bernoulli_grey_levels(key: jax.Array, x_u8: jax.Array) -> jax.Array:
    """A Bernoulli draw of every grey level: ``x ~ Bernoulli(g / 255)``, as ``float32 {0, 1}``.

    Args:
      key: a PRNG key (a typed ``jax.random.key``).
      x_u8: ``uint8 [B, ...]`` grey levels ``g`` in 0..255.

    Returns:
      ``float32``, the shape of ``x_u8``.  Exact integer arithmetic on uniform 32-bit words:
      ``P(x = 1) = 16843009 g / 2**32``, which is ``g / 255`` to a relative ``2**-32``
      (``jax.random.bernoulli`` on ``float32(g / 255)`` resolves ``2**-23``), exactly 0 for
      ``g = 0`` and 1 for ``g = 255``.  Pixel ``j`` of row ``i`` is a function of ``(key, i, j)``
      alone, so the draw does not depend on how the batch is sharded.
    """
    x = jnp.asarray(x_u8)
    if x.dtype != jnp.uint8:
        raise TypeError(f"bernoulli_grey_levels expects uint8 grey levels, got {x.dtype}.")
    flat = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
    g = flat.astype(jnp.uint32)
    words = _uniform_words(key, flat.shape)
    ones = (words < g * jnp.uint32(_WORD_PER_GREY_LEVEL)) | (g == 255)
    return ones.astype(jnp.float32).reshape(x.shape)


def to_float(key: jax.Array | None, x_u8: jax.Array, protocol: str) -> jax.Array:
    """What the model sees: a batch of stored ``uint8`` data as ``float32``, same shape.

    ``dynamic``: a fresh Bernoulli draw of the grey levels, ``x ~ Bernoulli(x_u8 / 255)`` in
    ``{0, 1}`` (:func:`bernoulli_grey_levels`; use a new ``key`` every step); ``static``,
    ``threshold`` (already ``{0, 255}`` after :func:`binarize_once`) and ``none``: ``x / 255`` in
    ``[0, 1]``.  Traceable inside jit; ``key`` may be ``None`` for the non-dynamic protocols.
    """
    _check_protocol(protocol)
    if protocol == "dynamic":
        if key is None:
            raise ValueError("The 'dynamic' protocol needs a PRNG key.")
        return bernoulli_grey_levels(key, x_u8)
    if protocol == "real":
        return jnp.asarray(x_u8).astype(jnp.float32)
    return jnp.asarray(x_u8).astype(jnp.float32) / 255.0


def eval_protocol(protocol: str) -> str:
    """The protocol for validation and test sets given the training protocol.

    ``dynamic`` -> ``static``: evaluation data are binarized once with a fixed seed, so
    every evaluation sees the same binary images (the VampPrior protocol); ``static``,
    ``threshold`` and ``none`` are evaluated as they are trained.
    """
    _check_protocol(protocol)
    return "static" if protocol == "dynamic" else protocol


def data_mean(x_u8: jax.Array | np.ndarray, protocol: str) -> np.ndarray:
    """Per-pixel mean of what the model sees, ``float64 [H, W, C]`` in ``[0, 1]``.

    ``x_u8`` is ``uint8 [N, H, W, C]``, raw or as returned by :func:`binarize_once`.
    ``dynamic``, ``static`` and ``none``: the mean of ``x / 255`` (for Bernoulli draws,
    their expected mean on raw grey levels and their exact mean on stored binary data);
    ``threshold``: the mean of ``x / 255 > 0.5``.  Used to initialise a decoder's
    output bias.
    """
    _check_protocol(protocol)
    x = np.asarray(x_u8)
    if protocol == "threshold":
        return (x > 127).mean(axis=0, dtype=np.float64)
    if protocol == "real":
        return x.mean(axis=0, dtype=np.float64)
    return x.mean(axis=0, dtype=np.float64) / 255.0
