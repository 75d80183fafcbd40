"""The evidence benchmark's analysis (benchmarks/selection.py): metrics on hand-made runs whose
answers are known, the ground-truth labels, and a smoke run of --quick."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("selection", ROOT / "benchmarks" / "selection.py")
assert spec is not None and spec.loader is not None
selection = importlib.util.module_from_spec(spec)
sys.modules["selection"] = selection
spec.loader.exec_module(selection)


def run(
    lr: float,
    seed: int,
    accs: list[float],
    losses: list[float],
    gains: list[float],
    protocol: str = "merged",
    status: str = "completed",
    val: list[float] | None = None,
) -> dict:
    history = []
    for i, (acc, loss, gain) in enumerate(zip(accs, losses, gains, strict=True)):
        row = {
            "epoch": i + 1,
            "train_loss": loss,
            "gain": gain,
            "gain_winner": gain,
            "gain_max": gain,
            "jacobian": 1.0 / (1 + lr),
        }
        if protocol == "merged":
            row.update(test_acc=acc, test_loss=1 - acc)
        else:
            row.update(val_loss=(val or losses)[i], val_acc=acc)
        history.append(row)
    return {
        "dataset": "digits",
        "protocol": protocol,
        "lr": lr,
        "seed": seed,
        "epochs": len(accs),
        "status": status,
        "epochs_trained": len(accs),
        "history": history,
    }


def grid() -> list[dict]:
    """Three rates: the gain ranks them like test accuracy; validation loss picks the worst."""
    n = 6
    return [
        run(0.001, 0, [0.5] * n, [1.0] * n, [0.0] * n),
        run(0.01, 0, [0.9] * n, [0.5] * n, [5.0] * n),
        run(0.1, 0, [0.8] * n, [0.2] * n, [3.0] * n),
        run(1.0, 0, [0.1], [math.nan], [math.nan], status="diverged"),
        run(0.001, 0, [0.5] * n, [1.0] * n, [0.0] * n, "split", val=[0.1] * n),
        run(0.01, 0, [0.9] * n, [0.5] * n, [5.0] * n, "split", val=[0.9] * n),
        run(0.1, 0, [0.8] * n, [0.2] * n, [3.0] * n, "split", val=[0.5] * n),
        run(1.0, 0, [0.1], [math.nan], [math.nan], "split", status="diverged"),
    ]


def test_signals_regret_and_compute_on_known_runs() -> None:
    runs = grid()
    rows = {r["signal"]: r for r in selection.selection_table(runs, "digits")}
    gain = rows["gain score (default)"]
    assert gain["chosen"] == [0.01] and gain["regret"] == 0.0
    assert gain["spearman"] == pytest.approx(1.0) and gain["epochs"] == 6 * 3 + 1
    loss = rows["-final training loss"]  # lowest training loss: lr 0.1, 10 points below best
    assert loss["chosen"] == [0.1] and loss["regret"] == pytest.approx(10.0)
    val = rows["-validation loss (80/20 split)"]  # lowest validation loss: lr 0.001
    assert val["chosen"] == [0.001] and val["regret"] == pytest.approx(40.0)
    assert val["epochs"] == 6 * 3 + 1 + 6  # the grid on 80 %, then the retrain on all data
    # random choice: the mean gap to the best over the grid (diverged counts as accuracy 0)
    assert rows["random choice (expected)"]["regret"] == pytest.approx(
        100 * (0.4 + 0 + 0.1 + 0.9) / 4
    )


def test_ground_truth_labels() -> None:
    best = 0.95
    n = 10
    assert selection.ground_truth(
        run(1.0, 0, [0.1], [math.nan], [math.nan], status="diverged"), best
    ) == ("diverged", None)
    jumpy = run(0.1, 0, [0.5, 0.8, 0.4, 0.8, 0.3, 0.7, 0.4, 0.8, 0.5, 0.7], [1.0] * n, [1.0] * n)
    for i, r in enumerate(jumpy["history"]):
        r["test_loss"] = 1.0 + (0.5 if i % 2 else 0.0)
    assert selection.ground_truth(jumpy, best)[0] == "lr_too_high"
    rising = run(
        0.001, 0, [0.5 + 0.03 * i for i in range(n)], [1.0 - 0.05 * i for i in range(n)], [1.0] * n
    )
    assert selection.ground_truth(rising, best)[0] == "lr_too_low"
    overfit = run(0.01, 0, [0.95] * n, [0.5 / (i + 1) for i in range(n)], [1.0] * n)
    for i, r in enumerate(overfit["history"]):
        r["test_loss"] = [0.3, 0.2, 0.15, 0.16, 0.18, 0.2, 0.22, 0.24, 0.26, 0.3][i]
    assert selection.ground_truth(overfit, best) == ("overfitting", 4)
    flat = run(0.01, 0, [0.95] * n, [0.1] * n, [1.0] * n)
    assert selection.ground_truth(flat, best)[0] == "converging"


def test_quick_mode_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "selection.json"
    selection.main(["--quick", "--workers", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "gain score (default)" in printed and "agreement" in printed
    assert "decision core replayed" in printed
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 2 * 2 * 5  # protocols x seeds x rates (quick mode: 5 rates)
    merged = [r for r in runs if r["protocol"] == "merged"]
    assert all("test_acc" in h and "jacobian" in h for r in merged for h in r["history"])
    assert all("val_loss" in h for r in runs if r["protocol"] == "split" for h in r["history"])


def test_quick_mode_never_overwrites_the_published_runs() -> None:
    published = ROOT / "benchmarks" / "results" / "selection.json"
    before = published.read_bytes()
    with pytest.raises(SystemExit):
        selection.main(["--quick", "--workers", "1", "--out", str(published)])
    assert published.read_bytes() == before
