"""The gain score and curve metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gainsearch.features import compute_features
from gainsearch.objective import METRICS, ScoreConfig, curve_metric, gain_score


def test_score_is_level_minus_weighted_variability() -> None:
    curve = [1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0]
    feats = compute_features(curve)
    assert gain_score(curve) == pytest.approx(feats.level - feats.variability)
    assert gain_score(curve, config=ScoreConfig(variability_weight=2.5)) == pytest.approx(
        feats.level - 2.5 * feats.variability
    )
    assert gain_score(feats) == gain_score(curve)


def test_smooth_beats_jagged_at_the_same_level() -> None:
    e = np.arange(1, 11)
    smooth = 10 + 0 * e
    jagged = 10 + 2 * (-1.0) ** e
    assert gain_score(smooth) > gain_score(jagged)


def test_diverged_scores_nan() -> None:
    assert math.isnan(gain_score([1.0, float("inf")]))
    assert math.isnan(curve_metric("level", [1.0, float("nan")]))
    assert math.isnan(gain_score([]))


def test_metrics() -> None:
    curve = [1.0, 2.0, 3.0, 4.0]
    for name in METRICS:
        assert math.isfinite(curve_metric(name, curve))
    assert curve_metric("trend", curve) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Unknown metric 'accuracy'; available metrics are"):
        curve_metric("accuracy", curve)
    with pytest.raises(ValueError, match=r"variability_weight must be a non-negative number"):
        ScoreConfig(variability_weight=-1)
