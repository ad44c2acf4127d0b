"""Observations x as entropy models: what p(x | z) (or p(x | codes)) gives each image.

Chosen by the likelihood's ``support`` (the trait its component declares, a class attribute of the
module):

==========  ==================================================================================
``binary``  Bernoulli p(x | z): one bit per pixel with P(x_i = 1) = sigmoid(logit_i), all pixels
            of a block in one call (:class:`Bernoulli`)
``8bit``    the discretized logistic (mixture) of PixelCNN++: a table of the 256 levels per
            subpixel, channel by channel (the mean of channel c depends on the channels before
            it): :class:`Logistic`
``real``    refused: a Gaussian p(x | z) is a density over real x and gives a discrete image no
            probability mass, so it cannot code it
==========  ==================================================================================

The parameters come from ``dist_fn(variables, inputs)`` (a distrax distribution over x with batch
``[rows]``), compiled, called with the same padded arguments when coding and decoding (see
:mod:`vaegen.coding.latents`).  Images are float32 ``[n, *event]`` as the model sees them; their
symbols are int32: the bits, or the levels k of x = k / 255.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks.likelihoods import NUM_LEVELS
from vaegen.coding.ans import Stack
from vaegen.coding.latents import MAX_TABLE_ENTRIES, pad
from vaegen.errors import CodingError, SupportError
from vaegen.registry import LIKELIHOODS

CONTINUOUS_LIKELIHOOD = ("p(x|z) is a Gaussian density over real-valued x: it gives a discrete image no probability "
                         "mass, so it cannot code one losslessly; train with a Bernoulli likelihood (binary images) "
                         "or a discretized logistic (8-bit images)")


class Observation:
    """Codes images ``[n, *event]`` given the decoder's inputs (see the module)."""

    support = ""

    def __init__(self, dist_fn: Callable[[Any, Any], Any], event_shape: tuple[int, ...]):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.dist_fn = dist_fn

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    @property
    def max_rows(self) -> int:
        return 1 << 30

    @staticmethod
    def symbols(x: np.ndarray) -> np.ndarray:
        """int32 ``[n, *event]`` of images ``x`` (SupportError for values the likelihood has no mass on)."""
        raise NotImplementedError

    def images(self, symbols: np.ndarray) -> np.ndarray:
        """float32 ``[n, *event]``: the images as the model sees them."""
        raise NotImplementedError

    def push(self, stack: Stack, variables: Any, inputs: Any, symbols: np.ndarray) -> None:
        raise NotImplementedError

    def pop(self, stack: Stack, variables: Any, inputs: Any, n: int) -> np.ndarray:
        raise NotImplementedError


def _bad_values(x: np.ndarray, bad: np.ndarray, what: str, fix: str) -> SupportError:
    example = float(np.asarray(x)[bad].reshape(-1)[0])
    return SupportError(f"the images have values {what} (e.g. {example:.6g}, {int(bad.sum())} values in all): {fix}")


class Bernoulli(Observation):
    """One bit per pixel, P(x_i = 1 | z) = sigmoid(logit_i(z))."""

    support = "binary"

    def __init__(self, dist_fn, event_shape):
        super().__init__(dist_fn, event_shape)
        self._probs = jax.jit(lambda v, inputs: jax.nn.sigmoid(dist_fn(v, inputs).distribution.logits)
                              .astype(jnp.float32).reshape(-1, self.num_dims))

    @staticmethod
    def symbols(x):
        x = np.asarray(x)
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise _bad_values(x, bad, "outside {0, 1}",
                              "a Bernoulli p(x|z) codes binary images only; binarize them first (`vaegen compress "
                              "--binarize threshold`, or vaegen.data.images.load(..., binarize='threshold'))")
        return x.astype(np.int32)

    def images(self, symbols):
        return np.asarray(symbols, np.float32).reshape((-1,) + self.event_shape)

    def push(self, stack, variables, inputs, symbols):
        n = symbols.shape[0]
        stack.push_bernoulli(symbols.reshape(n, -1), np.asarray(self._probs(variables, inputs))[:n])

    def pop(self, stack, variables, inputs, n):
        bits = stack.pop_bernoulli(np.asarray(self._probs(variables, inputs))[:n])
        return bits.reshape((n,) + self.event_shape)


class Logistic(Observation):
    """The 256 levels of each subpixel under the discretized logistic (mixture), channel by channel:
    ``level_log_probs`` of :class:`vaegen.blocks.likelihoods.DiscretizedLogisticMixture`."""

    support = "8bit"

    def __init__(self, dist_fn, event_shape):
        super().__init__(dist_fn, event_shape)

        def table(v, inputs, x, channel):
            log_p = dist_fn(v, inputs).level_log_probs(x, channel)                     # [rows, *pixel, 256]
            p = jnp.exp(log_p - jnp.max(log_p, axis=-1, keepdims=True))
            return p.reshape(p.shape[0], -1, NUM_LEVELS)

        self._table = jax.jit(table, static_argnums=3)

    @property
    def max_rows(self):
        return max(1, MAX_TABLE_ENTRIES // (4 * self.num_dims * NUM_LEVELS))

    @staticmethod
    def symbols(x):
        x = np.asarray(x, np.float64)
        levels = x * (NUM_LEVELS - 1)
        k = np.round(levels)
        bad = (np.abs(levels - k) > 1e-3) | (k < 0) | (k > NUM_LEVELS - 1)
        if bad.any():
            raise _bad_values(x, bad, "that are not 8-bit grey levels k/255",
                              "the discretized logistic codes the 256 levels of 8-bit images only")
        return k.astype(np.int32)

    def images(self, symbols):
        return (np.asarray(symbols, np.float32) / np.float32(NUM_LEVELS - 1)).reshape((-1,) + self.event_shape)

    def push(self, stack, variables, inputs, symbols):
        n = symbols.shape[0]
        rows = int(jax.tree_util.tree_leaves(inputs)[0].shape[0])
        full = pad(self.images(symbols), rows)
        channels = self.event_shape[-1]
        tables = []
        for c in range(channels):                             # the decoder's arguments: channels >= c still 0
            x = np.zeros_like(full)
            x[..., :c] = full[..., :c]
            tables.append(np.asarray(self._table(variables, inputs, x, c))[:n])
        for c in reversed(range(channels)):
            stack.push_categorical(symbols[..., c].reshape(-1), tables[c].reshape(-1, NUM_LEVELS))

    def pop(self, stack, variables, inputs, n):
        rows = int(jax.tree_util.tree_leaves(inputs)[0].shape[0])
        x = np.zeros((rows,) + self.event_shape, np.float32)
        symbols = np.zeros((n,) + self.event_shape, np.int32)
        for c in range(self.event_shape[-1]):
            table = np.asarray(self._table(variables, inputs, x, c))[:n]
            k = stack.pop_categorical(table.reshape(-1, NUM_LEVELS)).reshape((n,) + self.event_shape[:-1])
            symbols[..., c] = k
            x[:n, ..., c] = k.astype(np.float32) / np.float32(NUM_LEVELS - 1)
        return symbols


OBSERVATIONS: dict[str, type[Observation]] = {"binary": Bernoulli, "8bit": Logistic}
"""The entropy model of x for each likelihood support (a registered likelihood's ``support`` trait)."""


def support(likelihood: Any) -> str | None:
    """The ``support`` trait of the registered likelihood that built the module ``likelihood``
    (None for a module no registered likelihood builds)."""
    component = LIKELIHOODS.built_by(likelihood)
    return None if component is None else component.trait("support")


def refusal(likelihood: Any) -> str | None:
    """Why a likelihood module cannot code images (one line), or None."""
    values = support(likelihood)
    if values in OBSERVATIONS:
        return None
    if values == "real":
        return CONTINUOUS_LIKELIHOOD
    return (f"the likelihood {type(likelihood).__name__} declares no discrete support (binary or 8bit), so there "
            "is no entropy model of x to code images with")


def observation(likelihood: Any, dist_fn: Callable[[Any, Any], Any], event_shape: tuple[int, ...]) -> Observation:
    """The entropy model of x for ``likelihood`` (its module), its distribution given by ``dist_fn``."""
    reason = refusal(likelihood)
    if reason:
        raise CodingError(reason)
    return OBSERVATIONS[support(likelihood)](dist_fn, event_shape)
