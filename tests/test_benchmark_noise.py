"""The label-noise suite's damage and its analysis: the regret's sign, the leave-one-out pool,
the replay of auto (the trainer's own function), the calibration rule's constraint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from gainsearch.batteries.data import TensorData

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import noise_analysis  # noqa: E402
import noise_suite  # noqa: E402


def test_lookalike_damage_moves_only_pairs_and_is_seeded(digits: TensorData) -> None:
    setup = noise_suite.Setup(
        "x", "", {"dataset": "digits"}, [], role="calib", noise=0.3, noise_kind="lookalike"
    )
    a, changed = noise_suite.damaged(digits, setup, 0, None)
    b, _ = noise_suite.damaged(digits, setup, 0, None)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_test, digits.y_test)
    moved = a.y_train != digits.y_train
    partner = {1: 7, 7: 1, 3: 8, 8: 3, 4: 9, 9: 4, 5: 6, 6: 5}
    assert all(
        partner[int(t)] == int(g)
        for t, g in zip(digits.y_train[moved], a.y_train[moved], strict=True)
    )
    assert not moved[(digits.y_train == 0) | (digits.y_train == 2)].any()
    assert changed == pytest.approx(float(moved.float().mean()))
    assert 0.18 < changed < 0.3  # 30 % of the 8 paired classes' examples


def _history(accs: list[float], losses: list[float]) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": loss,
            "gain": 0.0,
            "test_acc": acc,
            "train_acc": 0.9,
            "prediction_changes": float(10 - e),
            "gain_trend": 0.0,
            "gain_variability": 0.0,
        }
        for e, (acc, loss) in enumerate(zip(accs, losses, strict=True), start=1)
    ]


def _body(name: str) -> dict:
    """Two grid points, one seed: the trial score prefers point b (lower loss), whose last
    epoch tests at 0.80; point a peaks at 0.95; the validation choice is a at epoch 2."""
    runs = [
        {
            "protocol": "merged",
            "point": {"lr": 0.1},
            "seed": 0,
            "history": _history([0.90, 0.95, 0.90], [1.0, 0.9, 0.8]),
        },
        {
            "protocol": "merged",
            "point": {"lr": 0.2},
            "seed": 0,
            "history": _history([0.85, 0.82, 0.80], [0.5, 0.2, 0.1]),
        },
        {
            "protocol": "split",
            "point": {"lr": 0.1},
            "seed": 0,
            "history": [
                {"epoch": e, "val_loss": v, "val_acc": 0.9}
                for e, v in enumerate([0.5, 0.3, 0.4], start=1)
            ],
        },
        {
            "protocol": "split",
            "point": {"lr": 0.2},
            "seed": 0,
            "history": [
                {"epoch": e, "val_loss": v, "val_acc": 0.9}
                for e, v in enumerate([0.6, 0.5, 0.45], start=1)
            ],
        },
    ]
    setup = {"name": name, "grid": [{"lr": 0.1}, {"lr": 0.2}], "train": {}, "regime": "clean"}
    return {"setup": setup, "runs": runs}


def test_regret_and_gap_have_the_right_sign() -> None:
    out = noise_analysis.seed_outcome(_body("x"), 0, noise_analysis.LAST)
    assert out is not None
    # last epoch by score: point b at epoch 3 (0.80); oracle 0.95; validation: a at epoch 2
    assert out["ours"] == pytest.approx(80.0) and out["validation"] == pytest.approx(95.0)
    assert out["regret"] == pytest.approx(15.0)  # oracle - ours: positive when we lose
    assert out["gap"] == pytest.approx(15.0)  # validation - ours: positive when the split wins
    assert out["validation_regret"] == pytest.approx(0.0)


def test_leave_one_out_never_calibrates_on_the_held_out_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["c09", "m01", "r01"]
    for n in names:
        body = _body(n)
        (tmp_path / f"{n}.json").write_text(json.dumps(body))
    monkeypatch.setattr(noise_analysis, "_complete", lambda out, ns: [n for n in ns if n in names])
    pools: list[list[str]] = []
    original = noise_analysis.calibrate

    def spy(out: str, pool: list[str], cands=noise_analysis.CANDIDATES):  # type: ignore[no-untyped-def]
        pools.append(list(pool))
        return original(out, pool, cands[:8])  # a few candidates: fast

    monkeypatch.setattr(noise_analysis, "calibrate", spy)
    noise_analysis.print_all(tmp_path, names)
    held_out = pools[1:]  # the first call is the calibration half's
    assert len(held_out) == len(names)
    for name, pool in zip(names, held_out, strict=True):
        assert name not in pool and sorted(pool) == sorted(set(names) - {name})


def test_the_calibration_rule_refuses_a_candidate_that_loses_to_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = noise_analysis.CANDIDATES[4], noise_analysis.CANDIDATES[8]
    monkeypatch.setattr(noise_analysis, "mean_regret", lambda out, ns, c: {a: 1.0}.get(c, 2.0))
    monkeypatch.setattr(noise_analysis, "loses_to_last", lambda out, n, c: c == a)
    monkeypatch.setattr(noise_analysis, "outcomes", lambda out, n, c: ())
    assert noise_analysis.calibrate("x", ["m01"], [a, b]) == b


def test_bootstrap_interval_covers_the_mean_and_is_seeded() -> None:
    lo, hi = noise_analysis.bootstrap([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo < 3.0 < hi and (lo, hi) == noise_analysis.bootstrap([1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(noise_analysis.bootstrap([])[0])
