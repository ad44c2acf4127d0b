"""Sample metrics: Frechet distance, k-NN precision/recall, prior mass off the codes."""

import numpy as np
import pytest
import scipy.linalg

from vaegen.studies import metrics as metrics


def _gaussian_set(seed, n=400, dim=6, shift=0.0):
    rng = np.random.RandomState(seed)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ a.T + shift


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_known_shift():
    x = _gaussian_set(0)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    previous = 0.0
    for size in (0.1, 0.5, 1.0, 3.0):
        delta = np.full(x.shape[1], size)
        fd = metrics.frechet_distance(x, x + delta)
        # A shift leaves the covariance unchanged: FD = ||delta||^2 exactly.
        assert fd == pytest.approx(float(delta @ delta), rel=1e-6)
        assert fd > previous
        previous = fd


def test_gaussian_frechet_distance_matches_the_sqrtm_formula():
    rng = np.random.RandomState(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    reference = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    assert metrics.gaussian_frechet_distance(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-8)
    assert metrics.gaussian_frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)


def test_knn_radii_match_brute_force_and_count_duplicates():
    x = _gaussian_set(2, n=300)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    for k in (1, 3):
        np.testing.assert_allclose(metrics.knn_radii(x, k), np.sort(d, 1)[:, k], rtol=1e-4, atol=1e-4)
    dup = np.repeat(np.eye(3), 3, axis=0)  # each point three times
    np.testing.assert_array_equal(metrics.knn_radii(dup, 2), 0.0)
    with pytest.raises(ValueError, match="k=5"):
        metrics.knn_radii(np.zeros((5, 2)), 5)


def test_precision_recall_extremes():
    x = _gaussian_set(3)
    same = metrics.precision_recall(x, x, k=3)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = metrics.precision_recall(x, x + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}
    # Samples collapsed onto a small part of the data: precise, but they miss most of it.
    mode = x[np.argsort(np.linalg.norm(x - x[0], axis=1))[:40]]
    collapsed = metrics.precision_recall(x, mode, k=3)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.3


def test_prior_mass_off_codes():
    rng = np.random.RandomState(4)
    prior = rng.normal(size=(2000, 2))
    matched = metrics.prior_mass_off_codes(rng.normal(size=(2000, 2)), prior)
    narrow = metrics.prior_mass_off_codes(0.1 * rng.normal(size=(2000, 2)), prior)
    assert matched < 0.15 and narrow > 0.8


def test_classifier_confidence():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    out = metrics.classifier_confidence(probs)
    assert out["confidence"] == pytest.approx(0.75)
    assert out["label_entropy"] == pytest.approx(np.log(2))
    assert out["effective_classes"] == pytest.approx(2.0)
    one_class = metrics.classifier_confidence(np.array([[0.6, 0.4]] * 3))
    assert one_class["effective_classes"] == pytest.approx(1.0)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="two sets"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
