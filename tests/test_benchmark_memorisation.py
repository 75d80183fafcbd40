"""The memorisation suite's data damage and its offline replay of the stopping rules, which must
be exactly what the trainer does."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gainsearch.batteries.data import TensorData
from gainsearch.batteries.train import train_trial
from gainsearch.core.selection import select_epoch

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


def _rows(**curves: list[float]) -> list[dict]:
    n = len(next(iter(curves.values())))
    return [{"epoch": e + 1, **{k: v[e] for k, v in curves.items()}} for e in range(n)]


def test_a_pair_of_signals_stops_at_the_first_or_at_both_and_keeps_that_epoch() -> None:
    loss = [1.0 / (e + 1) for e in range(12)]
    changes = [50, 40, 30, 20, 25, 26, 27, 28, 29, 30, 31, 32]  # lowest at 4
    trend = [9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 7, 8]  # lowest at 7
    h = _rows(train_loss=loss, prediction_changes=changes, gain_trend=trend)
    pair = "prediction_changes+gain_trend"
    first = memorisation_analysis.Candidate(pair, 1, 2, "score", "first")
    both = memorisation_analysis.Candidate(pair, 1, 2, "score", "both")
    # first: the changes run out of patience at 6; the earlier kept epoch is theirs
    assert memorisation_analysis.replay(h, first)[:2] == (4, 6)
    # both: the trend runs out at 9; the later kept epoch is the trend's
    assert memorisation_analysis.replay(h, both)[:2] == (7, 9)


def test_configurations_are_chosen_by_score_by_signal_or_by_their_mean_rank() -> None:
    # score ranks (training loss, lower is better) A > C > D > B; changes ranks B > C > D > A;
    # mean ranks A 2.5, B 2.5, C 3, D 2
    runs = [
        _rows(train_loss=[0.01], prediction_changes=[40.0]),  # A
        _rows(train_loss=[1.0], prediction_changes=[10.0]),  # B
        _rows(train_loss=[0.1], prediction_changes=[20.0]),  # C
        _rows(train_loss=[0.5], prediction_changes=[30.0]),  # D
    ]
    by = {
        k: memorisation_analysis.choose(
            runs, memorisation_analysis.Candidate("prediction_changes", 1, None, k)
        )[0]
        for k in ("score", "signal", "rank")
    }
    assert by == {"score": 0, "signal": 1, "rank": 2}
    # a tie in the signal goes to the better trial score
    tied = [runs[3], _rows(train_loss=[0.2], prediction_changes=[30.0])]
    sig = memorisation_analysis.Candidate("prediction_changes", 1, None, "signal")
    assert memorisation_analysis.choose(tied, sig)[0] == 1


def test_the_calibration_rule_refuses_what_hurts_or_cannot_show_the_controls() -> None:
    a = memorisation_analysis
    good, hurts, unknown = (a.Candidate(s, 1, 5) for s in ("gain_trend", *a.SIGNALS[:2]))
    results = {
        (good, "m"): {"regret": 1.0},
        (hurts, "m"): {"regret": 0.0},
        (unknown, "m"): {"regret": -1.0},
        (a.TODAY, "m"): {"regret": 5.0},
    }
    deltas = {(good, "s"): -0.3, (hurts, "s"): -0.31, (unknown, "s"): None, (a.TODAY, "s"): 0.0}
    pool = [a.TODAY, good, hurts, unknown]
    assert a.pick(results, deltas, ["m"], ["s"], pool) == good
    assert a.pick(results, deltas, ["m"], [], pool) == unknown  # no control: the lowest regret
    assert a.pick(results, {(a.TODAY, "s"): 0.0}, ["m"], ["s"], pool) == a.TODAY


def test_the_published_tables_regenerate_from_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 28: ``python benchmarks/memorisation.py`` (the cache only, no training) prints
    ``benchmarks/results/memorisation.txt`` byte for byte."""
    memorisation.main([])
    published = (Path(memorisation.__file__).parent / "results" / "memorisation.txt").read_text()
    assert capsys.readouterr().out == published


def test_the_one_pass_replay_is_select_epoch_on_every_prefix() -> None:
    """The analysis asks the selection rule once per history instead of once per epoch; its
    verdicts are select_epoch's on every prefix (nan, inf and plateaus included)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 25))
        values = rng.normal(size=n).round(1)  # ties
        values[rng.random(n) < 0.2] = math.nan
        values[rng.random(n) < 0.05] = math.inf
        history = [{"epoch": e, "gain_trend": float(v)} for e, v in enumerate(values, 1)]
        window, patience = int(rng.integers(1, 4)), [None, 1, 3][int(rng.integers(0, 3))]
        got = memorisation_analysis.prefix_selections(history, "gain_trend", window, patience)
        for k, sel in enumerate(got, 1):
            want = select_epoch(
                {e: v for e, v in enumerate(values[:k], 1)},
                select_by="gain_trend",
                window=window,
                patience=patience,
            )
            assert (sel.epoch, sel.stop) == (want.epoch, want.stop)
            assert sel.value == want.value or (math.isnan(sel.value) and math.isnan(want.value))
