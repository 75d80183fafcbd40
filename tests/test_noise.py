"""The label-noise diagnosis (gainsearch.core.noise): confusions, the loss mixture, the kind.

Expected values are counted here by hand or by construction, not by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gainsearch.core.noise import (
    NEEDS_SPLIT,
    estimate_label_noise,
    label_confusion,
    loss_mixture,
    noise_record,
)
from gainsearch.core.signals import changes_by_class


def test_label_confusion_counts_given_by_predicted_and_skips_unseen() -> None:
    given = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, -1, 0, 2]  # the fourth example was not seen this epoch
    c = label_confusion(given, predicted, 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="one entry per example"):
        label_confusion([0, 1], [0], 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        label_confusion([0, 3], [0, 0], 3)


def test_loss_mixture_finds_the_high_loss_share() -> None:
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0.2, 0.05, 800), rng.normal(2.5, 0.3, 200)])
    weight, separation = loss_mixture(losses)
    assert weight == pytest.approx(0.2, abs=0.01)
    assert separation > 5
    assert all(math.isnan(v) for v in loss_mixture([1.0] * 50))  # one value: no mixture
    assert all(math.isnan(v) for v in loss_mixture([0.1, 2.0]))  # too few


def _confusion(k: int, n: int, rate: float, target: str, rng: np.random.Generator) -> list:
    """A given x predicted confusion where the prediction is the true class (a network before
    memorisation) and a ``rate`` share of labels is damaged."""
    true = rng.integers(0, k, n)
    given = true.copy()
    picked = rng.choice(n, round(rate * n), replace=False)
    if target == "pairflip":
        given[picked] = (true[picked] + 1) % k
    else:
        given[picked] = (true[picked] + rng.integers(1, k, picked.size)) % k
    return label_confusion(given, true, k).tolist()


def _record(epoch: int, confusion: list, separation: float, weight: float = 0.3) -> dict:
    return {
        "epoch": epoch,
        "label_confusion": confusion,
        "mixture_separation": separation,
        "noise_mixture": weight,
    }


@pytest.mark.parametrize(
    ("rate", "target", "kind"),
    [
        (0.0, "symmetric", "none"),
        (0.2, "symmetric", "symmetric"),
        (0.2, "pairflip", "class-dependent"),
    ],
)
def test_the_kind_and_rate_at_the_best_separated_epoch(rate: float, target: str, kind: str) -> None:
    rng = np.random.default_rng(1)
    good = _confusion(10, 3000, rate, target, rng)
    memorised = np.diag(np.bincount(rng.integers(0, 10, 3000), minlength=10)).tolist()
    history = [
        _record(1, _confusion(10, 3000, 0.7, "symmetric", rng), 9.0),  # epoch 1 never counts
        _record(2, good, 2.0),
        _record(3, memorised, 50.0, weight=0.01),  # a component of 1 %: never the epoch
    ]
    noise = estimate_label_noise(history)
    assert noise.epoch == 2
    assert noise.kind == kind
    assert noise.rate == pytest.approx(rate, abs=0.02)
    if kind == "class-dependent":  # pair-flip: true c carries label c + 1
        assert noise.needs_split and noise.pairs
        assert all(g == (t + 1) % 10 for t, g, _ in noise.pairs)
        assert all(s == pytest.approx(0.2, abs=0.06) for _, _, s in noise.pairs)
        assert "->" in noise.describe()
    else:
        assert not noise.needs_split
    assert "class-dependent" in NEEDS_SPLIT and "validation split" in NEEDS_SPLIT


def test_small_data_symmetric_noise_is_not_called_class_dependent() -> None:
    """250 examples: a few wrong labels concentrate by chance; the chi-square gate holds."""
    fooled = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        history = [_record(2, _confusion(10, 250, 0.2, "symmetric", rng), 1.0)]
        fooled += estimate_label_noise(history).kind == "class-dependent"
    assert fooled <= 1


def test_the_estimate_is_causal_and_unknown_without_confusions() -> None:
    rng = np.random.default_rng(2)
    history = [
        _record(2, _confusion(10, 2000, 0.3, "symmetric", rng), 1.0),
        _record(3, _confusion(10, 2000, 0.1, "symmetric", rng), 3.0),
    ]
    assert estimate_label_noise(history, upto=2).rate == pytest.approx(0.3, abs=0.03)
    assert estimate_label_noise(history).rate == pytest.approx(0.1, abs=0.03)
    unknown = estimate_label_noise([{"epoch": 1, "train_loss": 1.0}])
    assert math.isnan(unknown.rate) and "unknown" in unknown.describe()


def test_noise_record_and_changes_by_class() -> None:
    given = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    losses = np.linspace(0.1, 3.0, 6)
    confidence = np.array([0.9, 0.2, 0.8, 0.7, 0.6, 0.5])
    rec = noise_record(given, predicted, losses, confidence, 3)
    assert rec["train_acc"] == pytest.approx(4 / 6)
    assert rec["label_confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    # the confident half of each predicted class: class 0 {0.9, 0.6} -> the 0.9 one (given 0);
    # class 1 {0.2, 0.8, 0.7} -> 0.8 and 0.7 (both given 1); class 2 -> its one example
    assert rec["confident_confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    previous = np.array([0, 0, 1, 0, -1, 2])
    assert changes_by_class(previous, predicted, given, 3) == [1, 1, 0]  # unseen not a change
    assert changes_by_class(None, predicted, given, 3) is None


@pytest.mark.parametrize(
    ("shift", "kind"), [("pairflip", "class-dependent"), ("uniform", "symmetric")]
)
def test_a_noisy_training_run_names_its_noise(digits, shift: str, kind: str) -> None:
    """The built-in trainer records the fields from its training pass, and the trial's
    diagnosis names 30 % of damaged digits labels for what they are."""
    import dataclasses

    import torch

    from gainsearch.batteries.train import train_trial

    gen = torch.Generator().manual_seed(0)
    y = digits.y_train.clone()
    picked = torch.randperm(y.numel(), generator=gen)[: round(0.3 * y.numel())]
    step = 1 if shift == "pairflip" else torch.randint(1, 10, (picked.numel(),), generator=gen)
    y[picked] = (y[picked] + step) % 10
    noisy = dataclasses.replace(digits, y_train=y)
    config = {"dataset": "digits", "model": "digits_lenet", "epochs": 8, "lr": 0.05, "seed": 0}
    result = train_trial(config, data=noisy)
    last = result.history[-1]
    assert len(last["label_confusion"]) == 10 and sum(map(sum, last["label_confusion"])) == len(y)
    assert sum(last["changes_by_class"]) == last["prediction_changes"]
    noise = result.label_noise
    assert noise.kind == kind, noise
    assert 0.2 < noise.rate < 0.45, noise
    assert result.to_dict()["label_noise"]["kind"] == kind


def _noisy_digits(digits, shift: str, rate: float = 0.3):  # type: ignore[no-untyped-def]
    import dataclasses

    import torch

    gen = torch.Generator().manual_seed(0)
    y = digits.y_train.clone()
    picked = torch.randperm(y.numel(), generator=gen)[: round(rate * y.numel())]
    step = 1 if shift == "pairflip" else torch.randint(1, 10, (picked.numel(),), generator=gen)
    y[picked] = (y[picked] + step) % 10
    return dataclasses.replace(digits, y_train=y)


@pytest.mark.parametrize("shift", ["pairflip", "uniform"])
def test_select_by_auto_keeps_what_its_replay_keeps(digits, shift: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The trainer applies auto exactly as the analysis replays it (auto_verdict on the records
    so far), stops where it says, and hands back the kept epoch's weights (their test accuracy
    is the one recorded at that epoch); a resumed run keeps the same."""
    from gainsearch.batteries.train import evaluate_model, train_trial
    from gainsearch.core.noise import auto_verdict

    noisy = _noisy_digits(digits, shift)
    config = {
        "dataset": "digits",
        "model": "digits_lenet",
        "epochs": 20,
        "lr": 0.1,
        "seed": 0,
        "select_by": "auto",
        "eval_test": True,
    }
    result = train_trial(config, data=noisy)
    history = result.history
    for i in range(1, len(history) + 1):  # the replay, epoch by epoch
        verdict = auto_verdict(history[:i])
        if verdict.stop:
            break
    assert i == len(history)  # it stopped where the replay stops (or ran its budget)
    assert result.selected_epoch == verdict.epoch
    assert (result.status == "early_stopped") == verdict.stop
    kept = history[verdict.epoch - 1]
    _, acc = evaluate_model(result.model, noisy.x_test, noisy.y_test, 256)
    assert acc == pytest.approx(kept["test_acc"])
    if shift == "pairflip":
        assert verdict.kind == "class-dependent" and verdict.stop
    # interrupted after 4 epochs and resumed: the same kept epoch and weights
    ckpt = tmp_path / "ckpt.pt"
    train_trial({**config, "epochs": 4}, data=noisy, checkpoint_path=ckpt)
    resumed = train_trial(config, data=noisy, checkpoint_path=ckpt)
    assert resumed.selected_epoch == result.selected_epoch
    pairs = zip(
        result.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    )
    for a, b in pairs:
        assert torch_equal(a, b)


def torch_equal(a, b) -> bool:  # type: ignore[no-untyped-def]
    import torch

    return bool(torch.equal(a, b))


def test_select_by_auto_refuses_settings_it_fixes_itself() -> None:
    from gainsearch.batteries.train import TrainConfig

    with pytest.raises(ValueError, match=r"select_by='auto' picks its own rule.*patience=3"):
        TrainConfig(select_by="auto", patience=3)
    with pytest.raises(ValueError, match=r"needs 'prediction_changes' in signals"):
        TrainConfig(select_by="auto", signals=["gain_trend"])
