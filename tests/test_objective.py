"""The gain score and curve metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gainsearch.core.features import compute_features
from gainsearch.core.objective import (
    METRICS,
    ScoreConfig,
    TrialScoreConfig,
    curve_metric,
    gain_score,
    trial_score,
)


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
        assert math.isfinite(curve_metric(name, curve, train_loss=[1.0, 0.5, 0.2, 0.1]))
    assert curve_metric("trend", curve) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Unknown metric 'accuracy'; available metrics are"):
        curve_metric("accuracy", curve)
    with pytest.raises(ValueError, match=r"variability_weight must be a non-negative number"):
        ScoreConfig(variability_weight=-1)


def history(losses: list[float], gains: list[float]) -> list[dict[str, float]]:
    return [{"train_loss": v, "gain": g} for v, g in zip(losses, gains, strict=True)]


def test_trial_score_formula_early_and_late() -> None:
    gains = [2.0, 6.0, 9.0, 11.0, 12.0]
    losses = [1.0, 0.3, 0.1, 0.05, 0.01]
    cfg = TrialScoreConfig(gain_weight=0.5, early_epochs=3)
    # early: the loss in decades plus half the gain score in decades (dB / 20)
    for t in (1, 2, 3):
        expected = -math.log10(losses[t - 1]) + 0.5 * gain_score(gains[:t]) / 20
        assert trial_score(history(losses[:t], gains[:t]), config=cfg) == pytest.approx(expected)
    # late: the training loss alone
    assert trial_score(history(losses, gains), config=cfg) == pytest.approx(2.0)
    always = TrialScoreConfig(gain_weight=0.5, early_epochs=None)
    assert trial_score(history(losses, gains), config=always) == pytest.approx(
        2.0 + 0.5 * gain_score(gains) / 20
    )
    loss_only = TrialScoreConfig(gain_weight=0.0)
    assert trial_score(history(losses[:2], gains[:2]), config=loss_only) == pytest.approx(
        -math.log10(0.3)
    )


def test_trial_score_ranks_lower_final_loss_higher_and_nan_when_diverged() -> None:
    good = history([1.0, 0.5, 0.2, 0.1], [0.0, 1.0, 2.0, 3.0])
    worse = history([1.0, 0.5, 0.3, 0.2], [0.0, 9.0, 9.0, 9.0])
    assert trial_score(good) > trial_score(worse)
    assert math.isnan(trial_score([]))
    assert math.isnan(trial_score(history([1.0, float("nan")], [0.0, 1.0])))
    assert math.isnan(trial_score(history([1.0, 0.5], [0.0, float("inf")])))
    assert trial_score(history([0.0], [0.0]), config=TrialScoreConfig(gain_weight=0)) == 12.0
    extra = [{**r, "epoch": i + 1, "lr": 0.1} for i, r in enumerate(good)]
    assert trial_score(extra) == trial_score(good)


def test_trial_score_errors() -> None:
    with pytest.raises(ValueError, match=r"record 1 has \['gain'\]"):
        trial_score([{"train_loss": 1.0, "gain": 0.0}, {"gain": 1.0}])
    with pytest.raises(ValueError, match=r"gain_weight must be a non-negative number.*-1"):
        TrialScoreConfig(gain_weight=-1)
    with pytest.raises(ValueError, match=r"early_epochs must be a positive integer or None.*0"):
        TrialScoreConfig(early_epochs=0)
    with pytest.raises(ValueError, match=r"needs the gain curve and the training loss"):
        curve_metric("trial_score", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"train_loss has 1 value\(s\) but the gain curve 2"):
        curve_metric("trial_score", [1.0, 2.0], train_loss=[0.5])
