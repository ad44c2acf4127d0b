"""Paired differences between models on the same test images: the standard error by hand, and the words
a report may use, decided by the rule (two paired standard errors, for every seed)."""

import math

import numpy as np
import pytest

from vaegen.studies import paired


def test_the_paired_standard_error_is_the_hand_computed_one():
    a = np.array([-10.0, -20.0, -30.0, -40.0])
    b = np.array([-11.0, -20.5, -31.5, -40.0])
    d = a - b                                           # 1.0, 0.5, 1.5, 0.0
    mean = d.sum() / 4                                  # 0.75
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)  # sample standard deviation
    m, se = paired.difference(a, b)
    assert m == pytest.approx(0.75) and se == pytest.approx(sd / 2)
    p = paired.paired([a, a], [b, b - 0.25])            # two seeds
    assert p.means == pytest.approx((0.75, 1.0)) and p.mean == pytest.approx(0.875)
    assert p.stderr == pytest.approx(math.sqrt(2 * (sd / 2) ** 2) / 2)
    assert p.seed_spread == pytest.approx(np.std([0.75, 1.0], ddof=1))
    with pytest.raises(ValueError, match="same examples"):
        paired.difference(a, b[:3])


def test_paired_errors_tell_apart_what_unpaired_bars_cannot():
    """Two models whose per-image values differ by a little everywhere: their own error bars (image to image
    spread / sqrt(N)) overlap widely, the paired one does not, and the report says "better"."""
    rng = np.random.default_rng(0)
    images = rng.normal(-240.0, 75.0, size=500)        # images differ by tens of nats
    a = images + 1.0 + rng.normal(0.0, 0.3, size=500)  # model a is 1 nat better on every image, give or take
    b = images
    se_a, se_b = a.std(ddof=1) / math.sqrt(500), b.std(ddof=1) / math.sqrt(500)
    assert abs(a.mean() - b.mean()) < se_a + se_b        # the unpaired bars overlap
    p = paired.paired([a], [b])
    assert p.stderr < 0.05 and p.verdict == paired.BETTER
    assert paired.paired([b], [a]).verdict == paired.WORSE


def test_a_difference_that_is_only_image_noise_is_not_distinguishable():
    """The reverse: a mean difference of one nat that is noise of a few nats per image, paired or not."""
    rng = np.random.default_rng(1)
    images = rng.normal(-240.0, 75.0, size=100)
    a, b = images + rng.normal(0.0, 10.0, size=100), images + rng.normal(0.0, 10.0, size=100)
    p = paired.paired([a], [b])
    assert abs(p.mean) < 2 * p.stderr and p.verdict == paired.SAME


def test_better_must_hold_for_every_seed():
    assert paired.verdict([1.0, 1.2, 0.9], [0.1, 0.1, 0.1]) == paired.BETTER
    assert paired.verdict([1.0, 1.2, 0.1], [0.1, 0.1, 0.1]) == paired.SAME     # one seed within noise
    assert paired.verdict([1.0, -1.2, 1.0], [0.1, 0.1, 0.1]) == paired.SAME    # seeds disagree
    assert paired.verdict([-1.0, -1.2], [0.1, 0.1]) == paired.WORSE
    assert paired.cell(paired.Paired((1.0, 2.0), (0.1, 0.1), 10)) == "+1.5 ± 0.1 [seeds ±0.7]"


def test_a_small_difference_is_shown_with_the_digits_its_error_needs():
    """A standard error that one decimal would round to 0.0 gets the decimals that show it, so a significant
    difference never reads "+0.0 ± 0.0"."""
    small = paired.Paired((0.04, 0.05), (0.01, 0.012), 1000)
    assert paired.number(small) == "+0.04 ± 0.01"
    assert paired.cell(small) == "+0.04 ± 0.01 [seeds ±0.01]"
    assert paired.number(paired.Paired((0.004,), (0.002,), 1000)) == "+0.004 ± 0.002"
    assert paired.number(paired.Paired((1.0,), (0.05,), 1000)) == "+1.0 ± 0.1"
