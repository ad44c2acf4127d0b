"""A trained run's codes: what its encoder makes of the training images.

A density fitted to a run's codes (:mod:`vaegen.runs.recipes`) needs them as plain arrays:

* :func:`training_images` -- the training images as the model sees them (one binarization draw);
* :func:`encode_codes` -- z ~ q(z | x) (samples of the aggregate posterior q(z) = E_x q(z | x)) or
  E_q[z | x] (f(x) for an autoencoder), one key per example;
* :func:`run_codes` -- training and held-out codes of a run, as a fit uses them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.data import binarization
from vaegen.data import splits as splits_lib
from vaegen.errors import NO_LATENT_MESSAGE, ConfigError, NoLatentError
from vaegen.runs.run import Run

CODE_KINDS = ("sample", "mean")
"""Which codes a density is fitted to: ``sample``, z ~ q(z | x) (samples of the aggregate posterior,
what a VAE's p(z) should match); ``mean``, E_q[z | x].  An autoencoder's codes are f(x) either way."""


def training_images(run: Run, *, max_examples: int = 0, seed: int = 0) -> jax.Array:
    """The run's training images as its model sees them (one binarization draw with ``seed`` under a
    dynamic protocol): float32 ``[N, *event]``, the first ``max_examples`` (0 = all)."""
    data = run.spec.data
    x_u8 = run.data().train
    if max_examples:
        x_u8 = x_u8[:max_examples]
    stored = splits_lib.stored_split(data, x_u8, "train")
    return binarization.to_float(jax.random.key(seed), jnp.asarray(stored), splits_lib.split_protocol(data, "train"))


@dataclasses.dataclass(frozen=True)
class _Code:
    """One example's code: a draw z ~ q(z | x) or the mean E_q[z | x]."""

    model: Any
    draw: bool

    def __call__(self, variables, x, key):
        q = self.model.apply(variables, x, method="q_z_given_x")
        return q.sample(seed=key) if self.draw else q.mean()


def encode_codes(model: Any, variables: Any, x: jax.Array, key: jax.Array, *, sample: bool = True,
                 batch_size: int = 1000) -> np.ndarray:
    """Codes of ``x [N, *event]``: draws z_n ~ q(z | x_n) (samples of the aggregate posterior
    q(z) = E_x q(z | x)) if ``sample`` and q has a density, else E_q[z | x_n] (f(x_n) for an
    autoencoder).  Example ``n`` uses ``fold_in(key, n)``.  Returns ``[N, D]``."""
    x = jnp.asarray(x)
    fn = jax.tree_util.Partial(_Code(model, bool(sample and not model.is_autoencoder)), variables)
    return np.asarray(sharding_lib.map_examples(fn, x, key, batch_size=min(batch_size, x.shape[0])))


def check_code_kind(codes: str) -> None:
    if codes not in CODE_KINDS:
        raise ConfigError(f"codes={codes!r}: choose one of {', '.join(CODE_KINDS)}")


def run_codes(run: Run, *, max_codes: int, seed: int, codes: str = "sample") -> tuple[np.ndarray, np.ndarray, dict]:
    """``(training codes [N, D], validation codes [M, D], info)`` of ``run``: the first ``max_codes``
    training images (one binarization draw with ``seed``) and up to ``max_codes // 4`` images of the
    validation split (when the run has none, the last 10% of the training codes are held out
    instead), encoded as ``codes`` says (:data:`CODE_KINDS`)."""
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    check_code_kind(codes)
    sample = codes == "sample"
    x = training_images(run, max_examples=max_codes, seed=seed)
    train = encode_codes(run.model, run.variables, x, jax.random.key(seed), sample=sample)
    data = run.data()
    what = ("f(x), the autoencoder's point-mass codes" if run.is_autoencoder else
            "z ~ q(z | x), samples of the aggregate posterior" if sample else "E_q[z | x], posterior means")
    if data.validation.shape[0]:
        xv = splits_lib.model_view(run.spec.data, data.validation[:max(max_codes // 4, 1)], "validation")
        val = encode_codes(run.model, run.variables, jnp.asarray(xv), jax.random.key(seed + 1), sample=sample)
        held = "the run's validation split"
    else:
        cut = int(0.9 * train.shape[0])
        train, val = train[:cut], train[cut:]
        held = "the last 10% of the training codes (the run has no validation split)"
    return train, val, {"codes_are": what, "validation_codes_from": held}
