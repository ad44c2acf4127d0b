"""Sample-quality metrics without downloads, and the mismatch between codes and prior.

**A feature space vaegen trains itself.**  FID needs an ImageNet Inception network, which cannot
be downloaded here and does not fit 28x28 binary images anyway.  Instead vaegen trains a small
classifier on the *same dataset and data protocol* as the generative models
(:data:`CLASSIFIER_RECIPE`: an MLP with ReLU hidden layers of 512 and 128 units, the 128-unit
layer's output being the feature vector, and a softmax over the classes; Adam 1e-3, batch 128,
5 epochs, seed 0, on training images binarized afresh every step when the models' protocol is
dynamic).  An MLP rather than a CNN: XLA's convolutions on a CPU are two orders of magnitude
slower here, and one recipe must serve every platform for the numbers to be comparable.  The
recipe and the classifier's test accuracy are written next to its parameters.

* :func:`frechet_distance` -- the Frechet distance between Gaussians fitted to two feature sets,
  ``||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``.  Computed in *this classifier's*
  feature space it is a dataset-specific metric ("FD-vaegen"): comparable between models
  evaluated with the same classifier, sample size and reference set, **not FID** and not
  comparable to published FIDs.  Like FID it is biased upward at finite sample size, so compare
  against the data-vs-data floor (a held-out split against the reference set).
* :func:`precision_recall` -- improved precision and recall (Kynkaanniemi et al. 2019): the
  fraction of samples inside the k-NN balls of the real features (precision: are samples
  realistic?) and of real features inside the k-NN balls of the samples (recall: is the data's
  variety covered?).
* :func:`classifier_confidence` -- the classifier's mean max-softmax on samples and the entropy
  of its predicted labels (exp(entropy) is the effective number of classes the samples cover).
* :func:`prior_mass_off_codes` -- the mismatch between the aggregate posterior and the prior:
  the fraction of z ~ p(z) lying outside every training code's k-NN ball, i.e. prior mass where
  no code lies.  Samples decoded from there are what the decoder never saw in training.

All distances are computed in JAX, chunked so that memory stays O(chunk * N).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaegen import files as files_lib
from vaegen.data import binarization
from vaegen.data import datasets
from vaegen.errors import DamagedFileError


# --- the classifier ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClassifierRecipe:
    """How the feature classifier is trained (the shipped recipe is the default)."""

    hidden: tuple[int, ...] = (512,)  # ReLU layers before the feature layer
    features: int = 128  # width of the last ReLU layer: the feature vector
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


CLASSIFIER_RECIPE = ClassifierRecipe()


class Classifier(nn.Module):
    """An MLP: ``x [..., H, W, C] -> (logits [..., classes], features [..., F])``."""

    num_classes: int = 10
    hidden: tuple[int, ...] = (512,)
    features: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch = x.shape[:-3]
        h = x.reshape(batch + (-1,)).astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense_{i}")(h))
        f = nn.relu(nn.Dense(self.features, name="features")(h))
        return nn.Dense(self.num_classes, name="logits")(f), f


@dataclasses.dataclass
class FeatureSpace:
    """A trained classifier: :meth:`__call__` maps images to features and class probabilities."""

    module: Classifier
    params: Any
    info: dict

    def __call__(self, x: jax.Array | np.ndarray, *, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """``x [N, *event]`` floats as the models see them -> ``(features [N, F], probs [N, C])``."""
        x = jnp.asarray(x, jnp.float32)
        if x.shape[0] == 0:
            return np.zeros((0, self.module.features), np.float32), np.zeros((0, self.module.num_classes), np.float32)
        logits, feats = _apply_classifier(self.module, self.params, x, batch_size)
        return np.asarray(feats), np.asarray(jax.nn.softmax(logits))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply_classifier(module, params, x, batch_size):
    return jax.lax.map(lambda xi: module.apply(params, xi), x, batch_size=min(batch_size, x.shape[0]))


def train_classifier(splits: datasets.Splits, protocol: str, directory: str | os.PathLike, *,
                     recipe: ClassifierRecipe = CLASSIFIER_RECIPE, progress: bool = False) -> FeatureSpace:
    """Trains the feature classifier on ``splits.train`` (labels required) under the binarization
    ``protocol`` of the models, or loads it from ``directory`` if it was trained there with the
    same recipe, data and protocol.  Writes ``classifier.msgpack`` and ``classifier.json``
    (recipe, data, protocol, test accuracy, seconds)."""
    from tqdm.auto import tqdm

    if splits.train_labels is None:
        raise ValueError(f"{splits.info.get('name')} has no labels: the feature classifier needs them")
    directory = pathlib.Path(directory)
    num_classes = int(max(splits.train_labels.max(), splits.test_labels.max() if splits.test_labels is not None else 0) + 1)
    module = Classifier(num_classes=num_classes, hidden=tuple(recipe.hidden), features=int(recipe.features))
    identity = {"recipe": recipe.to_dict(), "protocol": protocol, "num_classes": num_classes,
                "data": {k: splits.info.get(k) for k in ("name", "version", "sizes", "validation_seed")}}
    event = tuple(splits.train.shape[1:])
    template = module.init(jax.random.key(0), jnp.zeros((1,) + event))
    info_path, params_path = directory / "classifier.json", directory / "classifier.msgpack"
    if info_path.exists() and params_path.exists():
        fix = f"remove {directory} and run the same command again (the classifier is then trained again)"
        info = files_lib.read_json(info_path, what="record of a trained feature classifier", fix=fix)
        if {k: info.get(k) for k in identity} == json.loads(json.dumps(identity)):
            try:
                params = flax.serialization.from_bytes(template, params_path.read_bytes())
            except Exception as e:  # msgpack's and flax's own errors for truncated or foreign bytes
                raise DamagedFileError(f"{params_path} is not a readable feature classifier's parameters "
                                       f"({type(e).__name__}: {e}); {fix}") from None
            return FeatureSpace(module, params, info)

    t0 = time.perf_counter()
    key = jax.random.key(recipe.seed)
    params = module.init(jax.random.fold_in(key, 0), jnp.zeros((1,) + event))
    opt = optax.adam(recipe.learning_rate)
    opt_state = opt.init(params)
    x_all, y_all = jnp.asarray(splits.train), jnp.asarray(splits.train_labels.astype(np.int32))
    n = x_all.shape[0]
    bs = min(int(recipe.batch_size), n)
    steps = n // bs
    train_proto = protocol

    def step(carry, args):
        params, opt_state = carry
        idx, k = args
        x = binarization.to_float(k, x_all[idx], train_proto)
        y = y_all[idx]

        def loss_fn(p):
            logits, _ = module.apply(p, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def epoch(params, opt_state, e):
        k = jax.random.fold_in(jax.random.fold_in(key, 1), e)
        perm = jax.random.permutation(k, n)[: steps * bs].reshape(steps, bs)
        keys = jax.random.split(jax.random.fold_in(k, 1), steps)
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (perm, keys))
        return params, opt_state, jnp.mean(losses)

    for e in tqdm(range(int(recipe.epochs)), desc="classifier", disable=not progress, unit="epoch"):
        params, opt_state, loss = epoch(params, opt_state, jnp.int32(e))
    space = FeatureSpace(module, params, {})
    accuracy = float("nan")
    if splits.test_labels is not None and splits.test.shape[0]:
        test = binarization.to_float(None, binarization.binarize_once(splits.test, binarization.eval_protocol(protocol), 0),
                                 binarization.eval_protocol(protocol))
        _, probs = space(test)
        accuracy = float(np.mean(np.argmax(probs, -1) == splits.test_labels))
    info = {**identity, "test_accuracy": accuracy, "final_train_loss": float(loss),
            "seconds": time.perf_counter() - t0}
    files_lib.write_atomic(params_path, flax.serialization.to_bytes(params), kind="table")
    files_lib.write_json(info_path, info, kind="table")
    return FeatureSpace(module, params, info)


# --- Frechet distance --------------------------------------------------------------------------

def gaussian_frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):
    ``||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)`` (float64, eigh)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    w, v = np.linalg.eigh(cov1)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T                   # cov1^1/2
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(fd, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to ``a [N, F]`` and
    ``b [M, F]``; 0 for identical sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"frechet_distance needs two sets [N >= 2, F] of equal F, got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# --- k-NN manifolds: precision, recall, prior holes -----------------------------------------------

def _sq_dists(q: jax.Array, r: jax.Array, r_sq: jax.Array) -> jax.Array:
    """||q_i - r_j||^2 ``[B, N]`` for ``q [B, F]``, ``r [N, F]``."""
    return jnp.maximum(jnp.sum(q**2, -1, keepdims=True) + r_sq[None, :] - 2.0 * q @ r.T, 0.0)


@functools.partial(jax.jit, static_argnums=1)
def _knn_radii(x: jax.Array, k: int) -> jax.Array:
    x_sq = jnp.sum(x**2, -1)
    n = x.shape[0]

    def one(q):
        d = _sq_dists(q[None], x, x_sq)[0]                          # [N], includes itself (0)
        for _ in range(k):                                           # drop the k smallest, one at a
            d = d.at[jnp.argmin(d)].set(jnp.inf)                     # time (ties count separately)
        return jnp.min(d)                                            # the (k+1)-th smallest

    return jnp.sqrt(jax.lax.map(one, x, batch_size=min(256, n)))


def knn_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each row of ``x [N, F]`` to its k-th nearest *other* row, ``[N]``."""
    x = jnp.asarray(x, jnp.float32)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} must be in [1, N - 1] for N={x.shape[0]}")
    return np.asarray(_knn_radii(x, int(k)))


@jax.jit
def _covered(reference: jax.Array, radii: jax.Array, query: jax.Array) -> jax.Array:
    r_sq = jnp.sum(reference**2, -1)

    def one(q):
        d = jnp.sqrt(_sq_dists(q[None], reference, r_sq)[0])        # [N]
        return jnp.any(d <= radii)

    return jax.lax.map(one, query, batch_size=min(256, query.shape[0]))


def manifold_coverage(reference: np.ndarray, query: np.ndarray, *, k: int = 3,
                      radii: np.ndarray | None = None) -> np.ndarray:
    """For each row of ``query [M, F]``: is it inside the ball of some reference point, of radius
    that point's distance to its k-th nearest reference neighbour?  ``bool [M]``."""
    reference = jnp.asarray(reference, jnp.float32)
    radii = knn_radii(reference, k) if radii is None else radii
    return np.asarray(_covered(reference, jnp.asarray(radii, jnp.float32), jnp.asarray(query, jnp.float32)))


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake [M, F]`` against
    ``real [N, F]`` with k-NN radii (k = 3 in the paper)."""
    return {"precision": float(np.mean(manifold_coverage(real, fake, k=k))),
            "recall": float(np.mean(manifold_coverage(fake, real, k=k)))}


def prior_mass_off_codes(codes: np.ndarray, prior_samples: np.ndarray, *, k: int = 3) -> float:
    """The fraction of ``prior_samples [M, D]`` (z ~ p(z)) outside the k-NN balls of ``codes [N, D]``
    (draws of the aggregate posterior): an estimate of the prior mass where no code lies."""
    return float(1.0 - np.mean(manifold_coverage(codes, prior_samples, k=k)))


def classifier_confidence(probs: np.ndarray) -> dict[str, float]:
    """From class probabilities ``[N, C]``: ``confidence`` (mean max-probability) and
    ``label_entropy`` (nats) of the predicted-label histogram, with ``effective_classes`` =
    exp(label_entropy)."""
    probs = np.asarray(probs, np.float64)
    hist = np.bincount(np.argmax(probs, -1), minlength=probs.shape[-1]) / probs.shape[0]
    nz = hist[hist > 0]
    entropy = float(-np.sum(nz * np.log(nz)))
    return {"confidence": float(np.mean(np.max(probs, -1))), "label_entropy": entropy,
            "effective_classes": math.exp(entropy)}


def sample_quality(space: FeatureSpace, samples: np.ndarray, reference_features: np.ndarray, *,
                   k: int = 3) -> dict[str, float]:
    """Every sample metric of ``samples [M, *event]`` against a reference set's features:
    ``fd``, ``precision``, ``recall``, ``confidence``, ``label_entropy``, ``effective_classes``."""
    feats, probs = space(samples)
    return {"fd": frechet_distance(reference_features, feats), **precision_recall(reference_features, feats, k=k),
            **classifier_confidence(probs), "num_samples": int(feats.shape[0])}
