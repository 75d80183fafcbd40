"""One trial on digits: determinism, monitor neutrality, checkpoints, callbacks, divergence."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from gainsearch.data import TensorData
from gainsearch.train import (
    COMPLETED,
    DIVERGED,
    STOPPED,
    EpochContext,
    TrainConfig,
    load_checkpoint,
    train_trial,
)

FAST = {"dataset": "digits", "model": "digits_lenet", "epochs": 3, "lr": 0.02, "batch_size": 128}


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


def test_trial_records_every_epoch(digits: TensorData) -> None:
    result = train_trial(FAST, data=digits)
    assert result.status == COMPLETED and result.reason == ""
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(
        {"train_loss", "gain", "gain_max", "winner", "seconds"} <= set(r) for r in result.history
    )
    assert "test_acc" not in result.history[0]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.gains == result.monitor.gains.tolist()
    assert result.diagnosis.features.n_epochs == 3


def test_same_seed_same_trial_and_monitor_leaves_training_bit_identical(
    digits: TensorData,
) -> None:
    config = {**FAST, "model": "nin", "width": 0.1}  # nin has dropout: the RNG matters
    a = train_trial(config, data=digits)
    b = train_trial(config, data=digits)
    unmonitored = train_trial(config, data=digits, monitor=False)
    assert a.gains == b.gains
    assert same_weights(a.model, b.model)
    assert same_weights(a.model, unmonitored.model)
    assert "gain" not in unmonitored.history[0]
    other_seed = train_trial({**config, "seed": 1}, data=digits)
    assert not same_weights(a.model, other_seed.model)


def test_test_metrics_are_recorded_but_change_nothing(digits: TensorData) -> None:
    plain = train_trial(FAST, data=digits)
    evaluated = train_trial({**FAST, "eval_test": True}, data=digits)
    assert (
        0.0 <= evaluated.history[-1]["test_acc"] <= 1.0 and evaluated.history[-1]["test_loss"] > 0
    )
    assert plain.gains == evaluated.gains
    assert same_weights(plain.model, evaluated.model)
    assert plain.diagnosis.label == evaluated.diagnosis.label


def test_resume_from_checkpoint_equals_an_uninterrupted_run(
    digits: TensorData, tmp_path: Path
) -> None:
    ckpt = tmp_path / "trial" / "checkpoint.pt"
    straight = train_trial({**FAST, "epochs": 4}, data=digits)
    train_trial({**FAST, "epochs": 2}, data=digits, checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed = train_trial({**FAST, "epochs": 4}, data=digits, checkpoint_path=ckpt)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.monitor.epochs == [1, 2, 3, 4]
    assert resumed.gains == straight.gains
    assert same_weights(resumed.model, straight.model)
    again = train_trial({**FAST, "epochs": 4}, data=digits, checkpoint_path=ckpt)
    assert again.gains == straight.gains  # nothing left to train


def test_checkpoint_of_another_trial_is_refused_and_kept(
    digits: TensorData, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    train_trial({**FAST, "epochs": 1}, data=digits, checkpoint_path=ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=r"different trial \(lr: 0.02 -> 0.1\)"):
        train_trial({**FAST, "lr": 0.1}, data=digits, checkpoint_path=ckpt)
    assert ckpt.read_bytes() == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not a readable gainsearch checkpoint"):
        load_checkpoint(bad)
    torch.save({"just": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"not a gainsearch trial checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match=r"does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_callbacks_see_each_epoch_and_can_stop(digits: TensorData, tmp_path: Path) -> None:
    seen: list[int] = []

    def stop_after_two(ctx: EpochContext) -> str | None:
        seen.append(ctx.epoch)
        assert ctx.history[-1] is ctx.record and ctx.monitor.epochs[-1] == ctx.epoch
        state = ctx.checkpoint_state()
        assert state["epoch"] == ctx.epoch and state["monitor"]["history"]
        return "enough" if ctx.epoch == 2 else None

    ckpt = tmp_path / "c.pt"
    result = train_trial(
        {**FAST, "epochs": 5}, data=digits, callbacks=[stop_after_two], checkpoint_path=ckpt
    )
    assert seen == [1, 2]
    assert result.status == STOPPED and result.reason == "enough"
    assert load_checkpoint(ckpt)["status"] == STOPPED
    # a stopped trial stays stopped on resume
    assert train_trial({**FAST, "epochs": 5}, data=digits, checkpoint_path=ckpt).status == STOPPED


def test_stop_event_interrupts_at_the_next_batch_and_the_checkpoint_resumes(
    digits: TensorData, tmp_path: Path
) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def request_stop(ctx: EpochContext) -> None:  # as a signal handler would, mid-epoch
        seen.append(ctx.epoch)
        if ctx.epoch == 1:
            stop.set()

    ckpt = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt, match="stop requested"):
        train_trial(
            FAST, data=digits, callbacks=[request_stop], checkpoint_path=ckpt, stop_event=stop
        )
    assert seen == [1] and load_checkpoint(ckpt)["epoch"] == 1
    resumed = train_trial(FAST, data=digits, checkpoint_path=ckpt, stop_event=threading.Event())
    assert resumed.gains == train_trial(FAST, data=digits).gains


def test_callback_exceptions_propagate_after_the_checkpoint(
    digits: TensorData, tmp_path: Path
) -> None:
    class PrunedError(Exception):
        pass

    def prune(ctx: EpochContext) -> None:
        raise PrunedError(f"pruned at {ctx.epoch}")

    ckpt = tmp_path / "c.pt"
    with pytest.raises(PrunedError, match="pruned at 1"):
        train_trial(FAST, data=digits, callbacks=[prune], checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_divergence_stops_cleanly(digits: TensorData) -> None:
    result = train_trial({**FAST, "lr": 50.0, "epochs": 5}, data=digits)
    assert result.status == DIVERGED
    assert "non-finite" in result.reason
    assert result.diagnosis.label == "diverged"
    assert len(result.history) < 5


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"dataset": "imagenet"}, r"Unknown dataset 'imagenet'; available datasets are"),
        ({"model": "vgg"}, r"Unknown model 'vgg'; available models are"),
        ({"optimizer": "rmsprop"}, r"optimizer must be one of 'sgd', 'adam', 'adamw'.*'rmsprop'"),
        ({"epochs": 0}, r"epochs must be a positive integer.*epochs=0"),
        ({"epochs": 2.5}, r"epochs must be a positive integer.*epochs=2.5"),
        ({"lr": -0.1}, r"lr must be a positive number.*lr=-0.1"),
        ({"lr": float("nan")}, r"lr must be a positive number"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\).*momentum=1.0"),
        ({"weight_decay": -1.0}, r"weight_decay must be a non-negative number"),
        ({"seed": -3}, r"seed must be a non-negative integer.*seed=-3"),
        ({"gain_target": "best"}, r"gain_target must be 'winner', 'all'.*'best'"),
        ({"device": "gpu0"}, r"device must be a torch device.*'gpu0'"),
        ({"eval_test": "yes"}, r"eval_test must be true or false"),
        ({"learning_rate": 0.1}, r"unknown training setting\(s\) \['learning_rate'\]"),
    ],
)
def test_config_errors(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**FAST, **override})


def test_from_dict_coerces_integral_floats() -> None:
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0
    assert TrainConfig.from_dict({"momentum": 0}).momentum == 0.0
