"""Tests for bugs the earlier tests let through (issue 30): each was made in the code and the
guarding tests still passed. Expected values here are written out by hand, never computed by
the code under test."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from gainsearch.batteries.train import train_trial
from gainsearch.core.selection import select_epoch
from gainsearch.core.signals import PredictionChanges, prediction_changes
from gainsearch.integrations.optuna import GainPruner, record_gain

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_no_finite_reading_yet_selects_the_latest_epoch(digits) -> None:  # type: ignore[no-untyped-def]
    """Bug: the first epoch was returned (a 2-epoch gain_trend trial kept epoch 1's weights)."""
    nan = math.nan
    assert select_epoch({1: nan, 2: nan, 3: nan}, select_by="gain_trend").epoch == 3
    # gain_trend needs 5 readings: a 2-epoch trial has none, and keeps its last epoch
    result = train_trial({"dataset": "digits", "epochs": 2, "select_by": "gain_trend"}, data=digits)
    assert result.selected_epoch == 2
    assert [r["selected_epoch"] for r in result.history] == [1, 2]


def test_an_example_not_seen_this_epoch_is_not_a_change_and_not_remembered() -> None:
    """Bugs: a skipped example (drop_last, a sampler) counted as a change; the tracker kept its
    stale prediction and compared against it an epoch later."""
    assert prediction_changes(np.array([0, 1, 2]), np.array([0, -1, 2])) == 0
    assert prediction_changes(np.array([0, -1, 2]), np.array([0, 5, 2])) == 0
    tracker = PredictionChanges(3)
    logits = np.eye(10, dtype=np.float32)
    import torch

    tracker.update([0, 1, 2], torch.from_numpy(logits[[0, 1, 2]]))
    assert math.isnan(tracker.end_epoch())
    tracker.update([0, 2], torch.from_numpy(logits[[0, 2]]))  # example 1 skipped
    assert tracker.end_epoch() == 0
    tracker.update([0, 1, 2], torch.from_numpy(logits[[0, 5, 2]]))  # 1 now predicts 5
    assert tracker.end_epoch() == 0  # not compared with its epoch-1 prediction (1)
    tracker.update([0, 1, 2], torch.from_numpy(logits[[0, 6, 2]]))
    assert tracker.end_epoch() == 1  # seen at both epochs: 5 -> 6 is a change


def _study_with_peers(pruner: GainPruner, peers: int, epochs: int) -> optuna.Study:
    """``peers`` finished trials with a rising, good score curve."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(peers):
        t = study.ask()
        record_gain(t, [10.0 + e for e in range(epochs)], train_loss=[0.1] * epochs)
        for e in range(1, epochs + 1):
            t.report(5.0 + e, e)
        study.tell(t, 5.0 + epochs)
    return study


def _bad_trial_should_prune(study: optuna.Study, epoch: int) -> bool:
    """A trial far below its peers at every epoch, reported the own-loop way."""
    t = study.ask()
    record_gain(t, [10.0 + e for e in range(epoch)], train_loss=[0.1] * epoch)
    for e in range(1, epoch + 1):
        t.report(-100.0, e)
    return t.should_prune()


@pytest.mark.parametrize(("epoch", "expected"), [(1, False), (2, False), (3, True), (4, True)])
def test_gain_pruner_waits_for_its_grace_period(epoch: int, expected: bool) -> None:
    """Bug: pruned inside the grace period (only epoch 5 with 4 peers was tested)."""
    study = _study_with_peers(GainPruner(grace_period=3, min_peers=2), peers=3, epochs=6)
    assert _bad_trial_should_prune(study, epoch) is expected


@pytest.mark.parametrize(("peers", "expected"), [(0, False), (1, False), (2, True), (3, True)])
def test_gain_pruner_waits_for_enough_peers(peers: int, expected: bool) -> None:
    """Bug: pruned with fewer peers than min_peers."""
    study = _study_with_peers(GainPruner(grace_period=1, min_peers=2), peers=peers, epochs=4)
    assert _bad_trial_should_prune(study, 3) is expected


def test_the_value_curve_read_back_keeps_its_last_epoch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Bug: the value curve read back from the study lost its last epoch."""
    from gainsearch.search.record import trial_rows

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    t = study.ask()
    record_gain(t, [1.0, 2.0, 3.0])
    for e, v in ((1, 0.5), (2, 0.7), (3, 0.9)):
        t.report(v, e)
    study.tell(t, 0.9)
    (row,) = trial_rows(study)
    assert row.value_curve == [0.5, 0.7, 0.9]


def test_the_trainer_applies_the_configured_window(digits) -> None:  # type: ignore[no-untyped-def]
    """Bug: the trainer passed window=1 to the rule (caught only by a benchmark test). The
    expected epoch is computed here from the recorded changes with a plain trailing mean."""
    import dataclasses

    import torch

    gen = torch.Generator().manual_seed(0)  # 30 % symmetric noise: the changes rise again
    y = digits.y_train.clone()
    picked = torch.randperm(y.numel(), generator=gen)[: round(0.3 * y.numel())]
    y[picked] = (y[picked] + torch.randint(1, 10, (picked.numel(),), generator=gen)) % 10
    result = train_trial(
        {
            "dataset": "digits",
            "epochs": 10,
            "lr": 0.1,
            "select_by": "prediction_changes",
            "select_window": 3,
        },
        data=dataclasses.replace(digits, y_train=y),
    )
    changes = [r["prediction_changes"] for r in result.history]  # nan at epoch 1
    means = []
    for i in range(len(changes)):
        window = [v for v in changes[max(0, i - 2) : i + 1] if not math.isnan(v)]
        means.append(sum(window) / len(window) if window else math.inf)
    expected = 1 + min(range(len(means)), key=lambda i: (means[i], i))
    raw = 1 + min(range(1, len(changes)), key=lambda i: (changes[i], i))
    assert result.selected_epoch == expected
    assert expected != raw  # the run tells the two apart: window 1 would fail here


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # raw: the lowest reading is 2.0 at epoch 4; epochs 5 and 6 do not improve -> stop at 6
        (1, (4, 6, 2.0)),
        # trailing means 5, 4, 3.5, 3, 2.25, 2.75, 3.25: lowest 2.25 at epoch 5 -> stop at 7
        (2, (5, 7, 2.25)),
    ],
)
def test_the_replayed_selection_keeps_the_epoch_worked_out_by_hand(
    window: int, expected: tuple[int, int, float]
) -> None:
    """Bug: the selection-replay test compared select_epoch with itself (the benchmark's replay
    and the trainer both call it), so a wrong rule passed. The kept epoch, the epochs trained
    and the smoothed value are worked out by hand here (patience 2)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import memorisation_analysis

    curve = [5.0, 3.0, 4.0, 2.0, 2.5, 3.0, 3.5, 1.0, 0.5]
    history = [{"epoch": e, "gain_trend": v} for e, v in enumerate(curve, 1)]
    cand = memorisation_analysis.Candidate("gain_trend", window, 2)
    assert memorisation_analysis.replay(history, cand) == pytest.approx(expected)
