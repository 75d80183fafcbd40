"""Features and diagnosis on hand-made curves (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from gainsearch.core.features import (
    CONVERGING,
    DIVERGED,
    LR_TOO_HIGH,
    LR_TOO_LOW,
    OVERFITTING,
    UNDETERMINED,
    DiagnosisConfig,
    compute_features,
    diagnose,
    peer_levels,
    peer_variability,
)

EPOCHS = np.arange(1, 21)
SATURATING = 20 - 15 * np.exp(-EPOCHS / 3)  # rise then smooth flattening
LINEAR = 2.0 + 0.8 * EPOCHS  # smooth steady rise
JAGGED = 10 + 3 * (-1.0) ** EPOCHS  # high variability at all epochs
OVERFIT = np.concatenate([SATURATING[:12], SATURATING[11] + np.array([4, -3, 5, -4, 3, -5, 4, -2])])


def test_features_formulas_on_a_linear_curve() -> None:
    feats = compute_features(LINEAR, window=5)
    assert feats.trend == pytest.approx(0.8)
    assert feats.early_trend == pytest.approx(0.8)
    assert feats.variability == pytest.approx(0.0, abs=1e-12)
    assert feats.level == pytest.approx(np.median(LINEAR[-5:]))
    assert feats.rise == pytest.approx(np.median(LINEAR[-5:]) - LINEAR[0])
    assert feats.saturation == pytest.approx(0.0)
    assert feats.peak == pytest.approx(LINEAR[-1])
    assert feats.overfit_onset is None and feats.diverged_epoch is None
    assert feats.n_epochs == 20 and feats.last_epoch == 20


def test_variability_is_the_spread_of_the_last_differences() -> None:
    feats = compute_features(JAGGED, window=4)
    assert feats.variability == pytest.approx(np.std(np.diff(JAGGED)[-4:]))
    assert feats.variability == pytest.approx(6.0)
    assert feats.early_variability == pytest.approx(6.0)


def test_saturation_of_a_flattening_curve() -> None:
    feats = compute_features(SATURATING)
    assert feats.saturation > 0.9
    assert feats.trend > 0 and feats.trend < 0.2


@pytest.mark.parametrize(
    ("curve", "label"),
    [
        (SATURATING, CONVERGING),
        (LINEAR, LR_TOO_LOW),
        (JAGGED, LR_TOO_HIGH),
        (OVERFIT, OVERFITTING),
        ([1.0, 2.0], UNDETERMINED),
        ([1.0, 2.0, float("nan"), 4.0], DIVERGED),
        ([1.0, float("inf")], DIVERGED),
    ],
)
def test_paper_rules(curve: np.ndarray, label: str) -> None:
    result = diagnose(curve)
    assert result.label == label, result.reason
    assert result.reason


def test_overfitting_onset_epoch() -> None:
    feats = compute_features(OVERFIT)
    assert feats.overfit_onset == 13
    reason = diagnose(OVERFIT).reason
    assert "epoch 13" in reason


def test_divergence_epoch_and_features_on_the_finite_prefix() -> None:
    feats = compute_features([1.0, 2.0, 3.0, float("nan"), 5.0], epochs=[2, 4, 6, 8, 10])
    assert feats.diverged_epoch == 8
    assert feats.trend == pytest.approx(0.5)  # over epochs 2, 4, 6
    assert feats.last == 5.0  # the last reading, whatever came before


def test_outside_divergence_evidence_wins() -> None:
    result = diagnose(SATURATING, diverged_epoch=7)
    assert result.label == DIVERGED
    assert "training loss" in result.reason and "7" in result.reason


def test_high_variability_is_relative_to_peers() -> None:
    wobbly = LINEAR + 1.0 * (-1.0) ** EPOCHS  # differences 2.8, -1.2: spread 2 dB/epoch
    calm_peers = [LINEAR + 0.05 * (-1.0) ** EPOCHS, SATURATING, LINEAR]
    wild_peers = [JAGGED, JAGGED + 1.0, wobbly * 1.5]
    assert diagnose(wobbly, peers=calm_peers).label == LR_TOO_HIGH
    relative = diagnose(wobbly, peers=wild_peers)
    assert relative.label != LR_TOO_HIGH
    assert relative.peers == 3
    # peers shorter than the curve are not compared
    assert diagnose(wobbly, peers=[SATURATING[:5], LINEAR[:5]]).peers == 0


FITTING = 2.0 * 0.6**EPOCHS  # training loss: below 0.005 from epoch 12 on (0.0044)


def test_a_fitted_training_set_turns_still_rising_into_overfitting() -> None:
    assert diagnose(LINEAR).label == LR_TOO_LOW  # the gain alone: still rising
    fitted = diagnose(LINEAR, train_loss=FITTING)
    assert fitted.label == OVERFITTING and fitted.overfit_onset == 12
    assert "training set is fitted" in fitted.reason and "from epoch 12" in fitted.reason
    assert diagnose(LINEAR, train_loss=FITTING[-1]).overfit_onset is None  # last value only
    on_epochs = diagnose(LINEAR[::2], epochs=EPOCHS[::2], train_loss=FITTING[::2])
    assert on_epochs.overfit_onset == 13  # the first measured epoch below the threshold
    # still learning: the loss is not yet small, or the threshold is set lower
    assert diagnose(LINEAR, train_loss=FITTING + 0.01).label == LR_TOO_LOW
    lower = DiagnosisConfig(fitted_loss=5e-5)  # the last loss is 7.3e-5
    assert diagnose(LINEAR, train_loss=FITTING, config=lower).label == LR_TOO_LOW
    # a jagged curve stays "too high" and divergence wins, whatever the loss says
    assert diagnose(JAGGED, train_loss=FITTING).label == LR_TOO_HIGH
    assert diagnose(LINEAR, train_loss=FITTING, diverged_epoch=4).label == DIVERGED


def test_a_flat_curve_far_below_its_peers_is_too_low() -> None:
    stalled = np.full(20, -26.0) + 0.01 * (-1.0) ** EPOCHS  # flat: nothing learned yet
    assert diagnose(stalled).label == CONVERGING  # alone, flat reads as converged
    peers = [SATURATING, SATURATING - 2.0, LINEAR[:10]]  # levels 20.0 and 18.0 dB at epoch 20
    far = diagnose(stalled, peers=peers, min_peers=2)
    assert far.label == LR_TOO_LOW and "46.0 dB below the best of 2 peers" in far.reason
    assert diagnose(SATURATING - 5.0, peers=peers, min_peers=2).label == CONVERGING  # not far
    assert diagnose(stalled, peers=peers).label == CONVERGING  # too few peers (default 3)
    wider = DiagnosisConfig(far_below_peers=50.0)
    assert diagnose(stalled, peers=peers, config=wider, min_peers=2).label == CONVERGING
    np.testing.assert_allclose(
        peer_levels(peers, 20), [np.median(SATURATING[-5:]), np.median(SATURATING[-5:]) - 2.0]
    )


@pytest.mark.parametrize("bad", ["0.1", [[0.1, 0.2]], {"loss": 0.1}, [0.1, "x"]])
def test_train_loss_validation(bad: object) -> None:
    with pytest.raises(ValueError, match=r"train_loss must be a number or a sequence"):
        diagnose(LINEAR, train_loss=bad)  # type: ignore[arg-type]


def test_peer_variability_uses_the_same_epochs() -> None:
    values = peer_variability([JAGGED, LINEAR, [1.0, float("nan"), 2.0, 3.0]], 10)
    expected = np.std(np.diff(JAGGED[:10])[-5:])  # the last W=5 differences up to epoch 10
    np.testing.assert_allclose(sorted(values), [0.0, expected], atol=1e-12)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"window must be an integer >= 2.*window=1"):
        DiagnosisConfig(window=1)
    with pytest.raises(ValueError, match=r"peer_factor must be a positive number.*-1"):
        DiagnosisConfig(peer_factor=-1)
    with pytest.raises(ValueError, match=r"fitted_loss must be a positive number.*fitted_loss=0"):
        DiagnosisConfig(fitted_loss=0)
    with pytest.raises(ValueError, match=r"saturated must be between 0 and 1.*1.5"):
        DiagnosisConfig(saturated=1.5)
    with pytest.raises(ValueError, match=r"unknown diagnosis setting\(s\) \['windw'\]"):
        DiagnosisConfig().with_overrides(windw=3)


def test_curve_validation() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        compute_features([[1.0, 2.0]])
    with pytest.raises(ValueError, match="sequence of numbers"):
        compute_features(["a", "b"])
    with pytest.raises(ValueError, match=r"one entry per reading \(3\)"):
        compute_features([1.0, 2.0, 3.0], epochs=[1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        compute_features([1.0, 2.0, 3.0], epochs=[1, 3, 2])


def test_empty_and_all_nan_curves() -> None:
    assert compute_features([]).n_epochs == 0
    assert diagnose([]).label == UNDETERMINED
    assert diagnose([float("nan")]).label == DIVERGED
