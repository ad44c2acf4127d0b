"""A discrete latent z as an entropy model: exact, without a grid.

A continuous z must be cut into bins to be coded (:mod:`vaegen.coding.grid`); a discrete z
(:class:`vaegen.blocks.discrete.DiscreteLatents`) is coded as it is.  q(z | x) and p(z) factorize
over z's variables, so a block's n images are n x V independent symbols, each with its own
probabilities, coded in **one call** of constriction's categorical or Bernoulli model:

=======================  ========================================================================
``OneHotCategoricals``   V = M variables of K categories: the symbol of variable m is its category
                         k in {0..K-1}, coded with the table softmax(l_m) ``[K]``; the decoder reads
                         the M one-hot vectors, flattened ``[M K]`` (:class:`Categoricals`)
``Bernoullis``           V = D bits: bit d coded with P(z_d = 1) = sigmoid(l_d); the decoder reads
                         the bits ``[D]`` (:class:`Bits`)
=======================  ========================================================================

The probabilities are the distributions' own (``probs``: softmax of the logits, or their
sigmoid), quantized by the coder to fixed point with :data:`vaegen.coding.ans.PROBABILITY_BITS`
bits: every symbol keeps at least 2^-24 of mass, so one symbol never costs more than 24 bits, and
the code length of a symbol of probability p is -log2 of its quantized probability, within about
2^-24 / p of -log2 p.  A prior and a posterior must be distributions over the same z (the same
class, as many variables and categories); anything else is refused with one line
(:class:`vaegen.coding.latents.Refused`).

Symbols are int32 ``[n, V]``; probabilities float32 ``[n, M, K]`` (categorical) or ``[n, D]``
(Bernoulli), the first ``n`` rows of a padded block.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vaegen.blocks import discrete as discrete_lib
from vaegen.coding import ans
from vaegen.coding.latents import MAX_TABLE_ENTRIES, Refused


class Latents:
    """Codes a discrete z of ``num_variables`` symbols per image (see the module).

    ``pop(stack, probs)`` decides the symbols ``[n, V]`` of a block off the stack, ``push(stack,
    symbols, probs)`` codes them onto it (its exact inverse); ``decoder_input(symbols, rows)`` is z
    as the decoder reads it, float32 ``[rows, D]`` with zero rows below the n images."""

    num_variables: int
    latent_dim: int
    probs_shape: tuple[int, ...]     # one image's probabilities: (M, K) or (D,)
    describe: str

    @property
    def max_pop_bits(self) -> int:
        """The most one image can take off the stack when z is popped: every symbol has a quantized
        probability of at least 2^-PROBABILITY_BITS."""
        return self.num_variables * ans.PROBABILITY_BITS

    @property
    def max_entropy_bits(self) -> float:
        """The most one image pops in expectation: the entropy of q(z | x) is at most that of the
        uniform distribution, M log2 K (D for bits)."""
        return self.num_variables * math.log2(self._categories)

    @property
    def max_rows(self) -> int:
        """The largest block whose probability tables stay within :data:`MAX_TABLE_ENTRIES`."""
        return max(1, MAX_TABLE_ENTRIES // (self.num_variables * self._entries))

    _entries = 1        # table entries per variable (1: a Bernoulli's P(1))
    _categories = 2     # values per variable

    def pop(self, stack: ans.Stack, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def push(self, stack: ans.Stack, symbols: np.ndarray, probs: np.ndarray) -> None:
        raise NotImplementedError

    def decoder_input(self, symbols: np.ndarray, rows: int) -> np.ndarray:
        raise NotImplementedError


class Categoricals(Latents):
    """M one-hot categorical variables of K categories each: the symbols are the categories."""

    def __init__(self, num_variables: int, num_categories: int):
        self.num_variables, self.num_categories = int(num_variables), int(num_categories)
        self.latent_dim = self.num_variables * self.num_categories
        self._entries = self._categories = self.num_categories
        self.probs_shape = (self.num_variables, self.num_categories)
        self.describe = f"{self.num_variables} categorical variables of {self.num_categories} categories"

    def pop(self, stack, probs):
        n = probs.shape[0]
        return stack.pop_categorical(probs.reshape(n * self.num_variables, self.num_categories)).reshape(
            n, self.num_variables)

    def push(self, stack, symbols, probs):
        n = symbols.shape[0]
        stack.push_categorical(symbols.reshape(-1), probs.reshape(n * self.num_variables, self.num_categories))

    def decoder_input(self, symbols, rows):
        n = symbols.shape[0]
        z = np.zeros((rows, self.num_variables, self.num_categories), np.float32)
        z[np.arange(n)[:, None], np.arange(self.num_variables)[None, :], symbols] = 1.0
        return z.reshape(rows, self.latent_dim)


class Bits(Latents):
    """D Bernoulli variables: the symbols are the bits."""

    def __init__(self, num_variables: int):
        self.num_variables = self.latent_dim = int(num_variables)
        self.probs_shape = (self.num_variables,)
        self.describe = f"{self.num_variables} Bernoulli bits"

    def pop(self, stack, probs):
        n = probs.shape[0]
        return stack.pop_bernoulli(probs.reshape(-1)).reshape(n, self.num_variables)

    def push(self, stack, symbols, probs):
        stack.push_bernoulli(symbols.reshape(-1), probs.reshape(-1))

    def decoder_input(self, symbols, rows):
        z = np.zeros((rows, self.latent_dim), np.float32)
        z[: symbols.shape[0]] = symbols
        return z


def _categoricals(dist: discrete_lib.OneHotCategoricals) -> Latents:
    return Categoricals(dist.num_variables, dist.num_categories)


def _bits(dist: discrete_lib.Bernoullis) -> Latents:
    return Bits(dist.num_variables)


ENTROPY_MODELS = {discrete_lib.OneHotCategoricals: _categoricals, discrete_lib.Bernoullis: _bits}
"""The entropy model of each kind of discrete latent distribution (by its class)."""


def _what(dist: Any) -> str:
    """``over 2 categorical variables of 3 categories``, ``a MultivariateNormalDiag, over a continuous z``."""
    if not discrete_lib.is_discrete(dist):
        return f"a {type(dist).__name__}, over a continuous z"
    if type(dist) in ENTROPY_MODELS:
        return f"over {ENTROPY_MODELS[type(dist)](dist).describe}"
    return f"a {type(dist).__name__}"


CONTINUOUS_POSTERIOR = ("q(z|x) is {what}: this coder codes a discrete z (a categorical or Bernoulli q(z|x)); code a "
                        "continuous z with the bits_back coder")


def entropy_model(q: Any, p: Any) -> Latents:
    """The entropy model of z for a posterior ``q`` and a prior ``p`` over the same discrete z (the
    distributions of one example, read for their structure only).

    Raises:
      Refused: ``q`` is not over a discrete z, no entropy model codes its kind, or ``p`` is not a
        distribution over the same z (one line why)."""
    if not discrete_lib.is_discrete(q):
        raise Refused(CONTINUOUS_POSTERIOR.format(what=_what(q)))
    if type(q) not in ENTROPY_MODELS:
        raise Refused(f"q(z|x) is a {type(q).__name__}, a discrete z with no entropy model here (known: "
                      f"{', '.join(c.__name__ for c in ENTROPY_MODELS)})")
    model = ENTROPY_MODELS[type(q)](q)
    if type(p) is not type(q) or tuple(p.event_shape) != tuple(q.event_shape) or (
            getattr(p, "num_categories", None) != getattr(q, "num_categories", None)):
        raise Refused(f"q(z|x) is over {model.describe} and p(z) is {_what(p)}: bits back pushes z with p(z), "
                      "which must be a distribution over the same discrete z")
    return model
