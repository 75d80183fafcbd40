"""One trial on digits: determinism, monitor neutrality, checkpoints, callbacks, divergence."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import pytest
import torch

from gainsearch.batteries.data import TensorData
from gainsearch.batteries.train import (
    COMPLETED,
    DIVERGED,
    STOPPED,
    EpochContext,
    TrainConfig,
    augment_batch,
    load_checkpoint,
    lr_factor,
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
        ({"schedule": "step"}, r"schedule must be one of 'constant', 'cosine', 'onecycle'.*'step'"),
        ({"warmup_epochs": 3}, r"warmup_epochs must be a number in \[0, epochs=3\).*=3"),
        ({"warmup_epochs": -1}, r"warmup_epochs must be a number in \[0, epochs=3\).*=-1"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be a number in \[0, 1\).*=1.0"),
        ({"dropout": 1.2}, r"dropout must be a number in \[0, 1\) or None.*dropout=1.2"),
        ({"augment": "heavy"}, r"augment must be one of 'none', 'standard'.*'heavy'"),
        ({"precision": "8"}, r"precision must be one of '32', 'bf16', '16'.*'8'"),
        ({"precision": "16"}, r"precision must be '32' or 'bf16' on a non-CUDA device.*'16'"),
        ({"nesterov": "yes"}, r"nesterov must be true or false.*'yes'"),
        ({"nesterov": True, "optimizer": "adam"}, r"nesterov must be false unless optimizer"),
        ({"nesterov": True, "momentum": 0.0}, r"nesterov must be false unless .* momentum > 0"),
        ({"channels_last": 1}, r"channels_last must be true or false.*=1"),
        ({"gain_smoothing": -1.0}, r"gain_smoothing must be a non-negative number.*=-1.0"),
        ({"model_args": [1]}, r"model_args must be a mapping of keyword arguments.*\[1\]"),
        ({"model": "nosuchmodule_xyz:build"}, r"module 'nosuchmodule_xyz' cannot be imported"),
        ({"model": "math:nothing"}, r"module 'math' has no attribute 'nothing'"),
        ({"model": "math:pi"}, r"'pi' is not callable"),
        ({"model": ":build"}, r"is not an import path: expected 'module.path:callable'"),
    ],
)
def test_config_errors(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**FAST, **override})


def test_from_dict_coerces_integral_floats() -> None:
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0
    assert TrainConfig.from_dict({"momentum": 0}).momentum == 0.0
    assert TrainConfig.from_dict({"precision": 32}).precision == "32"  # YAML's `precision: 32`
    assert TrainConfig.from_dict({"warmup_epochs": 1}).warmup_epochs == 1.0


def lrs_of(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    return [lr_factor(cfg, steps_per_epoch, s) for s in range(cfg.epochs * steps_per_epoch)]


def test_schedules_warm_up_then_follow_their_shape() -> None:
    constant = lrs_of(TrainConfig(epochs=4, warmup_epochs=1), 10)
    assert constant[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warm-up
    assert constant[10:] == [1.0] * 30
    cosine = lrs_of(TrainConfig(epochs=4, schedule="cosine"), 10)
    assert cosine[0] == 1.0 and cosine[20] == pytest.approx(0.5) and cosine[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(cosine))  # never rises
    warm_cos = lrs_of(TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1), 10)
    assert warm_cos[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    # the cosine starts where the warm-up ends: step s is (s - 10) / 30 of the way down
    assert warm_cos[10:] == pytest.approx(
        [(1 + math.cos(math.pi * (s - 10) / 30)) / 2 for s in range(10, 40)]
    )
    one = lrs_of(TrainConfig(epochs=10, schedule="onecycle"), 10)  # rises over 30 % of 100 steps
    assert one[0] == pytest.approx(1 / 25) and max(one) == one[30] == pytest.approx(1.0)
    assert one[-1] < 1e-3


def test_the_learning_rate_of_every_epoch_is_recorded_and_steps_per_batch(
    digits: TensorData,
) -> None:
    cfg = {**FAST, "epochs": 3, "schedule": "cosine", "warmup_epochs": 1, "lr": 0.05}
    result = train_trial(cfg, data=digits)
    steps = -(-digits.x_train.shape[0] // FAST["batch_size"])  # ceil
    config = TrainConfig.from_dict(cfg)
    expected = [0.05 * lr_factor(config, steps, e * steps - 1) for e in (1, 2, 3)]
    # the recorded rate is what the optimizer applied at each epoch's last step
    assert [r["lr"] for r in result.history] == pytest.approx(expected)
    assert result.history[0]["lr"] == pytest.approx(0.05)  # end of the warm-up epoch
    assert result.history[-1]["lr"] < 0.05 * 0.01  # the cosine ends near zero
    # and at every step: the optimizer's rate, watched through its step hook
    applied: list[float] = []
    original = torch.optim.SGD.step

    def spy(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> object:
        applied.append(float(self.param_groups[0]["lr"]))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    torch.optim.SGD.step = spy  # type: ignore[method-assign]
    try:
        train_trial(cfg, data=digits)
    finally:
        torch.optim.SGD.step = original  # type: ignore[method-assign]
    assert applied == pytest.approx([0.05 * lr_factor(config, steps, s) for s in range(3 * steps)])


def test_resume_continues_the_schedule_and_the_augmentation(
    digits: TensorData, tmp_path: Path
) -> None:
    cfg = {
        **FAST,
        "epochs": 4,
        "optimizer": "adamw",
        "weight_decay": 0.01,
        "schedule": "onecycle",
        "augment": "standard",
        "label_smoothing": 0.1,
        "dropout": 0.2,
    }
    straight = train_trial(cfg, data=digits)

    def crash_after_two(ctx: EpochContext) -> None:
        if ctx.epoch == 2:
            raise RuntimeError("node lost")

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match="node lost"):
        train_trial(cfg, data=digits, checkpoint_path=ckpt, callbacks=[crash_after_two])
    resumed = train_trial(cfg, data=digits, checkpoint_path=ckpt)
    steps = -(-digits.x_train.shape[0] // FAST["batch_size"])  # ceil
    config = TrainConfig.from_dict(cfg)
    expected = [float(cfg["lr"]) * lr_factor(config, steps, e * steps - 1) for e in (1, 2, 3, 4)]
    assert [r["lr"] for r in straight.history] == pytest.approx(expected)  # the schedule ran
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert same_weights(resumed.model, straight.model)


def test_modern_recipe_settings_change_training(digits: TensorData) -> None:
    one = {**FAST, "epochs": 1}  # 11 steps: enough for each setting to move the loss
    base = train_trial(one, data=digits)
    for override in (
        {"augment": "standard"},
        {"label_smoothing": 0.2},
        {"dropout": 0.3},
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        {"nesterov": True},
        {"precision": "bf16"},
        {"channels_last": True},
    ):
        other = train_trial({**one, **override}, data=digits)
        changes = other.history[-1]["train_loss"] != base.history[-1]["train_loss"]
        assert changes or override == {"channels_last": True}, override
        again = train_trial({**one, **override}, data=digits)  # same seed, same batches
        assert [r["train_loss"] for r in again.history] == [
            r["train_loss"] for r in other.history
        ], override
    # channels_last changes no number on the CPU: check the layout itself, of the weights and
    # of the batches the model sees (colour images: with one channel both layouts coincide)
    g = torch.Generator().manual_seed(0)
    colour = TensorData(
        name="cifar10",  # a generated stand-in: CIFAR-10 is not on this machine
        x_train=torch.randn(64, 3, 8, 8, generator=g),
        y_train=torch.randint(0, 10, (64,), generator=g),
        x_test=torch.randn(16, 3, 8, 8, generator=g),
        y_test=torch.randint(0, 10, (16,), generator=g),
        num_classes=10,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    layouts: list[bool] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: (
            layouts.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
                and not args[0].is_contiguous()
            )
            if isinstance(module, torch.nn.Conv2d) and module.training
            else None
        )
    )
    try:
        last = train_trial(
            {**FAST, "dataset": "cifar10", "channels_last": True, "epochs": 1}, data=colour
        )
    finally:
        hook.remove()
    conv = next(m for m in last.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert layouts and all(layouts)
    smoothed = train_trial({**FAST, "label_smoothing": 0.2}, data=digits)
    # train_loss is the plain cross-entropy, the optimised (smoothed) loss is beside it
    last = smoothed.history[-1]
    assert last["train_objective"] > last["train_loss"] > 0
    assert "train_objective" not in base.history[-1]  # without smoothing the two are one


def test_the_recorded_loss_is_the_plain_cross_entropy_with_label_smoothing(
    digits: TensorData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cross-entropy the trainer computes in the epoch, watched: train_loss is the mean
    of the plain ones (no smoothing), train_objective of the smoothed ones it optimised."""
    import gainsearch.batteries.train as train_module

    original = torch.nn.functional.cross_entropy
    calls: dict[float, list[tuple[float, int]]] = {0.0: [], 0.2: []}

    def watched(logits: torch.Tensor, target: torch.Tensor, **kwargs: float) -> torch.Tensor:
        value = original(logits, target, **kwargs)
        smoothing = float(kwargs.get("label_smoothing", 0.0))
        calls[smoothing].append((float(value.detach()), int(target.numel())))
        return value

    monkeypatch.setattr(train_module.F, "cross_entropy", watched)
    result = train_trial({**FAST, "label_smoothing": 0.2, "epochs": 1}, data=digits)

    def mean(pairs: list[tuple[float, int]]) -> float:
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)

    n = digits.x_train.shape[0]
    assert sum(k for _, k in calls[0.2]) == sum(k for _, k in calls[0.0]) == n
    assert result.history[0]["train_loss"] == pytest.approx(mean(calls[0.0]))
    assert result.history[0]["train_objective"] == pytest.approx(mean(calls[0.2]))


def test_augment_batch_crops_shifted_copies_and_flips_colour_only() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8) + 1
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):  # each image is a 8x8 window of its zero-padded self (pad 8 // 8 = 1)
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    again = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    colour = torch.rand(64, 3, 32, 32)
    crops = augment_batch(colour, torch.Generator().manual_seed(1))
    unflipped = [
        any(
            torch.equal(
                crops[i], torch.nn.functional.pad(colour, (4,) * 4)[i, :, a : a + 32, b : b + 32]
            )
            for a in range(9)
            for b in range(9)
        )
        for i in range(64)
    ]
    assert 10 < sum(unflipped) < 54  # about half the colour images are flipped


OWN_MODULE = """
import torch
from torch import nn


def build(in_shape, num_classes, hidden=8):
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(hidden * h * w, num_classes),
    )


def wrong_output(in_shape, num_classes):
    return nn.Flatten()


def not_a_module(in_shape, num_classes):
    return 42
"""


def test_own_model_by_import_path(
    digits: TensorData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mynets_gs_test.py").write_text(OWN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {**FAST, "model": "mynets_gs_test:build", "model_args": {"hidden": 4}}
    result = train_trial(cfg, data=digits)
    assert result.status == COMPLETED and all(math.isfinite(g) for g in result.gains)
    assert result.model[0].out_channels == 4
    with pytest.raises(ValueError, match=r"must return logits of shape \(N, 10\).*\(2, 64\)"):
        train_trial({**FAST, "model": "mynets_gs_test:wrong_output"}, data=digits)
    with pytest.raises(ValueError, match=r"must return a torch.nn.Module, but returned int"):
        train_trial({**FAST, "model": "mynets_gs_test:not_a_module"}, data=digits)
    with pytest.raises(
        ValueError,
        match=r"must accept in_shape, num_classes and the model_args \['depth'\] as keyword",
    ):
        train_trial({**cfg, "model_args": {"depth": 3}}, data=digits)
    # the checkpoint rebuilds the same model from its own configuration (model_args included:
    # the CLI used to rebuild it with the registry defaults)
    from gainsearch.batteries.train import model_from_checkpoint
    from gainsearch.core.spectral import maximum_gain

    path = tmp_path / "own.pt"
    result = train_trial(cfg, data=digits, checkpoint_path=path)
    model, state = model_from_checkpoint(path)
    assert model[0].out_channels == 4 and state["epoch"] == FAST["epochs"]
    gain = maximum_gain(model.eval(), in_shape=digits.in_shape, target="all").gain
    assert gain == pytest.approx(result.gains[-1], abs=1e-4)


def test_a_checkpoint_from_before_the_modern_settings_resumes(
    digits: TensorData, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    train_trial({**FAST, "epochs": 1}, data=digits, checkpoint_path=ckpt)
    state = load_checkpoint(ckpt)
    for key in ("schedule", "augment", "label_smoothing", "nesterov", "model_args"):
        del state["config"][key]  # as the previous version wrote it
    del state["scheduler"], state["rng"]["augment"]
    torch.save(state, ckpt)
    resumed = train_trial({**FAST, "epochs": 2}, data=digits, checkpoint_path=ckpt)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    with pytest.raises(ValueError, match=r"different trial \(schedule: 'constant' -> 'cosine'\)"):
        train_trial({**FAST, "epochs": 3, "schedule": "cosine"}, data=digits, checkpoint_path=ckpt)
