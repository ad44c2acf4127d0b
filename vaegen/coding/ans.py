"""The entropy coder: a stack of 32-bit words driven by asymmetric numeral systems (ANS).

:class:`Stack` wraps ``constriction``'s ANS coder (Bamler 2022; ``constriction.stream.stack.AnsCoder``:
32-bit words, a 64-bit state, probabilities in fixed point with 24 bits).  It is a stack: what is
pushed last is popped first.  ``push_*`` encodes symbols onto it, ``pop_*`` decodes symbols off it,
each with a whole array of symbols and their entropy models in one call (the models' parameters as
arrays: a probability table per symbol, or the probability of a one per bit).  Popping from a stack
that holds something else than what was pushed is *sampling*: the symbols come out distributed as the
model says, and pushing them back with the same model restores the stack word for word -- the bits
that bits-back coding gets back.

Every model is ``perfect=False`` (constriction's fast, "leaky" quantization: every symbol in the
alphabet keeps at least probability 2^-24, so any symbol can be coded, and the probabilities of one
table sum to exactly 1 in fixed point).  A coder and its decoder must quantize identically: the file
format records the constriction version that wrote it.

Costs are what the coder adds to the stack, in bits: -log2 of the quantized probability of every
pushed symbol, less -log2 of every popped one; the stack holds the initial words plus that sum, up to
the state's at most 64 bits.
"""

from __future__ import annotations

import importlib.metadata

import constriction
import numpy as np

_MODELS = constriction.stream.model
_BERNOULLI = _MODELS.Bernoulli(perfect=False)
_CATEGORICAL = _MODELS.Categorical(perfect=False)

PROBABILITY_BITS = 24
"""The fixed-point precision of every entropy model (constriction's default for 32-bit words): a
symbol's probability is a multiple of 2^-24, at least 2^-24, so no symbol costs more than 24 bits."""

PROBABILITY_FLOOR = 1e-30
"""Added to every entry of a probability table before it is handed to the coder: a table whose every
entry underflowed to 0 (a bin far in the tail of a narrow Gaussian) becomes uniform instead of
unnormalizable.  The coder gives every symbol at least 2^-24 anyway."""

MAX_UNIFORM_BITS = 23
"""constriction's uniform model takes alphabets of fewer than 2^24 symbols: 2^23 at most here."""


def version() -> str:
    """The installed constriction's version (recorded in every file: its quantization is the format)."""
    return importlib.metadata.version("constriction")


def seed_words(num_words: int) -> np.ndarray:
    """``num_words`` fixed pseudo-random 32-bit words (the same on every machine): the initial bits
    that the first bits-back decode takes its first latents from.  The last word is odd, so it is
    never a zero word (which the coder would drop)."""
    if num_words <= 0:
        return np.zeros((0,), np.uint32)
    words = np.random.default_rng(20190408).integers(0, 2**32, size=num_words, dtype=np.uint64).astype(np.uint32)
    words[-1] |= np.uint32(1)
    return words


class Stack:
    """An ANS stack of 32-bit words.

    Args:
      words: the compressed words to start from (uint32, as :meth:`words` returned them), or none:
        an empty stack.
    """

    def __init__(self, words: np.ndarray | None = None):
        words = np.zeros((0,), np.uint32) if words is None else np.ascontiguousarray(words, np.uint32)
        self._coder = constriction.stream.stack.AnsCoder(words) if words.size else constriction.stream.stack.AnsCoder()
        self.popped = 0  # bits taken off by every pop so far
    # --- size and content -----------------------------------------------------------------------
    def bits(self) -> int:
        """The information on the stack, in bits (not rounded to words)."""
        return int(self._coder.num_valid_bits())

    def words(self) -> np.ndarray:
        """The stack's content as uint32 words (a copy)."""
        return np.asarray(self._coder.get_compressed(), np.uint32)

    # --- Bernoulli: one probability of a one per symbol -------------------------------------------
    def push_bernoulli(self, bits: np.ndarray, p1: np.ndarray) -> None:
        """Encodes ``bits [n]`` (0 or 1) with P(bit = 1) = ``p1 [n]`` (float32)."""
        bits, p1 = _flat(bits, np.int32), _flat(p1, np.float32)
        if bits.size:
            self._coder.encode_reverse(bits, _BERNOULLI, p1)

    def pop_bernoulli(self, p1: np.ndarray) -> np.ndarray:
        """Decodes ``len(p1)`` bits, the i-th with P(1) = ``p1[i]``: int32 ``[n]``."""
        p1 = _flat(p1, np.float32)
        if not p1.size:
            return np.zeros((0,), np.int32)
        before = self.bits()
        out = np.asarray(self._coder.decode(_BERNOULLI, p1), np.int32)
        self.popped += before - self.bits()
        return out

    # --- categorical: a probability table per symbol ----------------------------------------------
    def push_categorical(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """Encodes ``symbols [n]`` in {0..K-1}, the i-th with the table ``probs[i] [K]`` (float32,
        any positive scale: each row is normalized by the coder)."""
        symbols = _flat(symbols, np.int32)
        if symbols.size:
            self._coder.encode_reverse(symbols, _CATEGORICAL, _table(probs))

    def pop_categorical(self, probs: np.ndarray) -> np.ndarray:
        """Decodes one symbol per row of ``probs [n, K]``: int32 ``[n]``."""
        probs = _table(probs)
        if not probs.shape[0]:
            return np.zeros((0,), np.int32)
        before = self.bits()
        out = np.asarray(self._coder.decode(_CATEGORICAL, probs), np.int32)
        self.popped += before - self.bits()
        return out

    # --- uniform over 2^bits symbols ------------------------------------------------------------
    def push_uniform(self, symbols: np.ndarray, bits: int) -> None:
        """Encodes ``symbols [n]`` in {0..2^bits - 1}, each with probability exactly 2^-bits."""
        symbols = _flat(symbols, np.int32)
        if symbols.size:
            self._coder.encode_reverse(symbols, _uniform(bits))

    def pop_uniform(self, n: int, bits: int) -> np.ndarray:
        """Decodes ``n`` symbols of {0..2^bits - 1}, uniform: int32 ``[n]``."""
        if not n:
            return np.zeros((0,), np.int32)
        before = self.bits()
        out = np.asarray(self._coder.decode(_uniform(bits), int(n)), np.int32)
        self.popped += before - self.bits()
        return out


def _flat(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).reshape(-1), dtype)


def _table(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, np.float32)
    return np.ascontiguousarray(probs.reshape(-1, probs.shape[-1]) + np.float32(PROBABILITY_FLOOR))


_UNIFORM: dict[int, object] = {}


def _uniform(bits: int):
    bits = int(bits)
    if not 1 <= bits <= MAX_UNIFORM_BITS:
        raise ValueError(f"a uniform model over 2^{bits} symbols: bits must be in 1..{MAX_UNIFORM_BITS}")
    if bits not in _UNIFORM:
        _UNIFORM[bits] = _MODELS.Uniform(2**bits)
    return _UNIFORM[bits]
