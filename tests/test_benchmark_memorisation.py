"""The memorisation suite's data damage and its offline replay of the stopping rules, which must
be exactly what the trainer does."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gainsearch.batteries.data import TensorData
from gainsearch.batteries.train import train_trial

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import memorisation  # noqa: E402
import memorisation_analysis  # noqa: E402


def test_label_noise_and_subsets_are_exact_seeded_and_leave_the_test_set_clean(
    digits: TensorData,
) -> None:
    sym = memorisation.Setup("x", "", {}, [], role="calib", noise=0.2)
    a, b = memorisation.damaged(digits, sym, 0), memorisation.damaged(digits, sym, 0)
    changed = a.y_train != digits.y_train
    assert int(changed.sum()) == round(0.2 * digits.y_train.numel())  # every pick moves
    assert torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, memorisation.damaged(digits, sym, 1).y_train)
    assert torch.equal(a.y_test, digits.y_test) and torch.equal(a.x_train, digits.x_train)
    flip = memorisation.Setup("x", "", {}, [], role="calib", noise=0.3, noise_kind="pairflip")
    f = memorisation.damaged(digits, flip, 0)
    moved = f.y_train != digits.y_train
    assert torch.equal(f.y_train[moved], (digits.y_train[moved] + 1) % 10)
    small = memorisation.Setup("x", "", {}, [], role="calib", subset=100)
    s = memorisation.damaged(digits, small, 0)
    assert s.y_train.numel() == 100 and torch.bincount(s.y_train).tolist() == [10] * 10


def test_the_replayed_rule_is_the_trainers(digits: TensorData) -> None:
    signal, window = "gain_trend", 2  # a smoothed signal: the window is replayed too
    config = {"epochs": 20, "lr": 0.05, "batch_size": 128, "select_window": window}
    full = train_trial(config, data=digits)  # select_by last: the whole budget, every signal
    stopped = train_trial({**config, "select_by": signal, "patience": 2}, data=digits)
    cand = memorisation_analysis.Candidate(signal, window, 2)
    kept, trained, _ = memorisation_analysis.replay(full.history, cand)
    assert (kept, trained) == (stopped.selected_epoch, len(stopped.history))
    assert trained < 20
