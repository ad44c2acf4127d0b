"""Stateless random streams.

Every key is derived from the run's seed by purpose, then by epoch, step or example
(``fold_in``), never carried through a loop: a run resumed at epoch e draws exactly the noise an
uninterrupted run would have drawn, and every estimate keys example i by ``fold_in(key, i)``.
"""

from __future__ import annotations

import jax

PURPOSES = {"init": 0, "shuffle": 1, "noise": 2, "validation": 3, "evaluation": 4, "sample": 5, "auxiliary": 6}
"""The streams and their ids."""


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """The root key of one random stream: ``fold_in(key(seed), purpose id)``."""
    return jax.random.fold_in(jax.random.key(seed), PURPOSES[purpose])
