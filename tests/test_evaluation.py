"""One evaluation per epoch: the decision and the diagnosis share one "too variable"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gainsearch.core.decision import TOO_VARIABLE, DecisionConfig, decide
from gainsearch.core.evaluation import evaluate
from gainsearch.core.features import LR_TOO_HIGH, diagnose, variability_check

EPOCHS = np.arange(1, 13)
SMOOTH = 20 - 15 * np.exp(-EPOCHS / 3)


def _random_curves(seed: int, n: int) -> list[np.ndarray]:
    """Calm and noisy curves, and one that zigzags (too variable against calm peers)."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n - 1):
        noise = rng.choice([0.05, 0.2, 0.5, 1.5, 3.0])
        curves.append(SMOOTH + rng.normal(0, noise, EPOCHS.size) * rng.random())
    curves.append(SMOOTH + rng.uniform(1.5, 3.0) * (-1.0) ** EPOCHS)
    return curves


@pytest.mark.parametrize("seed", range(20))
def test_pruned_as_too_variable_if_and_only_if_diagnosed_lr_too_high(seed: int) -> None:
    curves = _random_curves(seed, 7)
    seen = set()
    for i, curve in enumerate(curves):
        peers = curves[:i] + curves[i + 1 :]
        for t in range(1, EPOCHS.size + 1):
            ev = evaluate(curve[:t], peers=peers, metric="gain_score")
            too = ev.decision.rule == TOO_VARIABLE
            assert too == (ev.diagnosis.label == LR_TOO_HIGH), (seed, i, t, ev)
            # and the same verdict from the functions called on their own
            assert too == (decide(curve[:t], peers).rule == TOO_VARIABLE)
            assert (diagnose(curve[:t], peers=peers).label == LR_TOO_HIGH) == too
            seen.add(too)
    assert seen == {True, False}  # the curves exercise both sides


def test_jagged_calm_jagged_is_too_variable_not_overfitting() -> None:
    """A curve jagged early and late with a calm stretch between: both the variability rule and
    the overfitting rule ("flat, then variable") match; the variability rule comes first, in
    the diagnosis as in the decision."""
    e = np.arange(1, 18)
    zig = 3.0 * (-1.0) ** e
    curve = 15.0 + np.where((e <= 5) | (e >= 12), zig, 0.02 * e)  # calm over epochs 6-11
    peers = [15.0 + 0.1 * np.sin(e + k) for k in range(4)]
    ev = evaluate(curve, peers=peers, metric="gain_score")
    assert ev.features.overfit_onset is not None  # the calm stretch is there
    assert ev.decision.rule == TOO_VARIABLE
    assert ev.diagnosis.label == LR_TOO_HIGH


def test_the_definition_is_the_diagnosis_config_and_the_decision_writes_to_it() -> None:
    config = DecisionConfig(variability_factor=5.0, min_variability=2.0)
    assert config.diagnosis.peer_factor == 5.0
    assert config.diagnosis.min_high_variability == 2.0
    assert config.variability_factor == 5.0 and config.min_variability == 2.0
    default = DecisionConfig()
    assert default.variability_factor == default.diagnosis.peer_factor == 3.0
    assert default.min_variability == default.diagnosis.min_high_variability == 1.0


def test_a_steep_smooth_rise_is_not_too_variable_without_a_fall() -> None:
    rise = np.array([0.0, 8.0, 12.0, 14.0, 15.0, 15.5])  # differences spread widely, never fall
    check = variability_check(rise, [SMOOTH[:6] * 0.1] * 3)
    assert check.late_high and check.fall == 0.0 and not check.too_variable


def test_evaluation_reports_the_study_value_and_records_the_rule() -> None:
    losses = [2.0, 1.0, 0.5]
    peers = [SMOOTH[:3] for _ in range(3)]
    peer_values = [[0.0, 0.1, 0.2]] * 3  # the peers' trial scores: -log10(loss)
    ev = evaluate(SMOOTH[:3], train_loss=losses, peers=peers, peer_values=peer_values)
    assert ev.value == pytest.approx(-math.log10(0.5))
    assert ev.decision.rule == "continue" and ev.decision.peers == 3
    assert "trial_score" in ev.decision.reason
    record = ev.record()
    assert record["decision_rule"] == "continue" and "prune_rule" not in record
    worse = evaluate(SMOOTH[:3], train_loss=[2.0, 1.9, 1.8], peers=peers, peer_values=peer_values)
    assert worse.decision.rule == "below_percentile"
    assert worse.record()["prune_rule"] == "below_percentile"
    # minimised metric: the lower value wins
    low = evaluate(
        SMOOTH[:3], peers=peers, peer_values=[[5.0] * 3] * 3, metric="variability", mode="min"
    )
    assert low.decision.rule == "continue"


def test_evaluation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown metric 'acc'"):
        evaluate(SMOOTH[:3], metric="acc")
    with pytest.raises(ValueError, match=r"mode must be 'max' or 'min', but got mode='up'"):
        evaluate(SMOOTH[:3], mode="up")
    with pytest.raises(ValueError, match=r"train_loss has 2 value\(s\) but the gain curve 3"):
        evaluate(SMOOTH[:3], train_loss=[1.0, 0.5])
