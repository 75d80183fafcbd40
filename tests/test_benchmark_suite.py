"""The evidence suite's analysis on hand-made runs: Spearman over the runs that trained, the
validation accuracy reference, and the cache rule for runs recorded before train_loss became
the plain cross-entropy."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402
import suite_analysis  # noqa: E402


def run(loss: float, acc: float, *, status: str = "completed", val: float = 0.5) -> tuple:
    merged = {
        "status": status,
        "history": [{"train_loss": loss, "gain": 1.0, "test_acc": acc}],
    }
    split = {"status": status, "history": [{"val_loss": 1.0 - val, "val_acc": val}]}
    return merged, split


def test_spearman_over_the_runs_that_trained_leaves_diverged_runs_out() -> None:
    # three runs that trained, ranked backwards by the loss; one diverged (accuracy 0, and its
    # loss non-finite: last for every signal), which alone makes the all-runs Spearman positive
    pairs = [
        run(0.1, 0.80, val=0.8),
        run(0.2, 0.85, val=0.85),
        run(0.3, 0.90, val=0.9),
        run(math.inf, math.nan, status="diverged", val=0.1),
    ]
    setup = suite_analysis.SetupRuns("sx", {"role": "report", "grid": []}, {0: pairs})
    stats = suite_analysis.evaluate(setup, suite_analysis.neg_final_loss)
    assert stats.spearman_trained == pytest.approx(-1.0)
    assert stats.spearman > stats.spearman_trained
    accuracy = suite_analysis.evaluate(
        setup, suite_analysis.neg_final_loss, split=True, key="val_acc"
    )
    assert accuracy.spearman_trained == pytest.approx(1.0) and accuracy.regret == 0.0


def test_runs_recorded_before_the_plain_cross_entropy_are_retrained() -> None:
    smoothing = {"setup": "s10", "point": {"label_smoothing": 0.1}}
    assert suite.stale({**smoothing, "history": [{"train_loss": 0.5}]})
    fresh = {**smoothing, "history": [{"train_loss": 0.4, "train_objective": 0.5}]}
    assert not suite.stale(fresh)
    assert not suite.stale({"setup": "s01", "point": {"lr": 0.1}, "history": [{}]})
