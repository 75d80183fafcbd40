"""Stopping without validation data in the built-in trainer: the signals per epoch, the kept
checkpoint, patience, resume, and that measuring them leaves training bit-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from gainsearch.batteries import train as train_module
from gainsearch.batteries.data import TensorData
from gainsearch.batteries.train import (
    COMPLETED,
    EARLY_STOPPED,
    EpochContext,
    TrainConfig,
    load_checkpoint,
    model_from_checkpoint,
    train_trial,
)
from gainsearch.cli import main
from gainsearch.core.signals import prediction_changes

FAST = {"dataset": "digits", "model": "digits_lenet", "epochs": 6, "lr": 0.05, "batch_size": 128}
ALL = ["prediction_changes", "gain_variability", "gain_trend", "gradient_disparity"]


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_measuring_every_signal_leaves_training_bit_identical(digits: TensorData) -> None:
    config = {**FAST, "epochs": 3, "model": "nin", "width": 0.1}  # dropout: the RNG matters
    bare = train_trial({**config, "signals": []}, data=digits)
    measured = train_trial({**config, "signals": ALL}, data=digits)
    assert same(state_of(bare.model), state_of(measured.model))
    assert [r["train_loss"] for r in bare.history] == [r["train_loss"] for r in measured.history]
    assert bare.gains == measured.gains
    assert "prediction_changes" not in bare.history[0]
    assert all(set(ALL) <= set(r) for r in measured.history)
    assert math.isnan(measured.history[0]["prediction_changes"])
    assert all(r["gradient_disparity"] > 0 for r in measured.history)


def test_prediction_changes_are_those_of_the_training_forward_passes(
    digits: TensorData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilt independently: a forward hook sees every training-mode batch, and the epoch's
    shuffle order (the trainer's seeded generator) says which examples they were."""
    outputs: list[torch.Tensor] = []
    build = train_module.build_model

    def hooked(*args: object, **kwargs: object) -> torch.nn.Module:
        model = build(*args, **kwargs)
        model.register_forward_hook(
            lambda m, i, o: outputs.append(o.detach().argmax(1)) if m.training else None
        )
        return model

    monkeypatch.setattr(train_module, "build_model", hooked)
    config = TrainConfig.from_dict({**FAST, "epochs": 3})
    result = train_trial(config, data=digits)
    n = digits.x_train.shape[0]
    shuffle = torch.Generator().manual_seed(config.seed + 1)
    per_epoch = []
    batches = iter(outputs)
    for _ in range(3):
        order = torch.randperm(n, generator=shuffle)
        preds = torch.full((n,), -1, dtype=torch.long)
        for start in range(0, n, config.batch_size):
            preds[order[start : start + config.batch_size]] = next(batches)
        per_epoch.append(preds.numpy())
    expected = [math.nan] + [prediction_changes(per_epoch[i - 1], per_epoch[i]) for i in (1, 2)]
    recorded = [r["prediction_changes"] for r in result.history]
    assert math.isnan(recorded[0]) and recorded[1:] == expected[1:]
    assert recorded[1] > 0


def test_the_kept_weights_are_the_selected_epochs_bit_for_bit(
    digits: TensorData, tmp_path: Path
) -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(ctx: EpochContext) -> None:
        snapshots[ctx.epoch] = state_of(ctx.model)

    config = {**FAST, "epochs": 8, "select_by": "gain_trend"}
    ckpt = tmp_path / "checkpoint.pt"
    result = train_trial(config, data=digits, callbacks=[snapshot], checkpoint_path=ckpt)
    values = {r["epoch"]: r["gain_trend"] for r in result.history}
    finite = {e: v for e, v in values.items() if math.isfinite(v)}
    assert result.selected_epoch == min(finite, key=lambda e: (finite[e], e))
    assert result.selected_epoch < 8  # a real choice, not the last epoch
    assert same(state_of(result.model), snapshots[result.selected_epoch])
    assert [r["selected_epoch"] for r in result.history][-1] == result.selected_epoch
    kept, state = model_from_checkpoint(ckpt)
    assert same(state_of(kept), snapshots[result.selected_epoch])
    last, _ = model_from_checkpoint(ckpt, weights="last")
    assert same(state_of(last), snapshots[8])
    assert state["selection"]["epoch"] == result.selected_epoch
    with pytest.raises(ValueError, match=r"weights must be 'selected' or 'last'"):
        model_from_checkpoint(ckpt, weights="best")


def test_select_by_last_keeps_the_last_epoch_and_changes_nothing(digits: TensorData) -> None:
    default = train_trial({**FAST, "epochs": 3}, data=digits)
    assert default.config.select_by == "last" and default.selected_epoch == 3
    assert [r["selected_epoch"] for r in default.history] == [1, 2, 3]
    bare = train_trial({**FAST, "epochs": 3, "signals": []}, data=digits)
    assert same(state_of(default.model), state_of(bare.model))
    assert default.to_dict()["selected_epoch"] == 3


def test_patience_stops_a_trial_as_completed_early(digits: TensorData) -> None:
    config = {**FAST, "epochs": 30, "select_by": "prediction_changes", "patience": 2}
    result = train_trial(config, data=digits)
    assert result.status == EARLY_STOPPED and result.status != COMPLETED
    last = result.history[-1]["epoch"]
    assert last < 30 and last - result.selected_epoch == 2
    assert result.reason.startswith("patience: prediction_changes has not improved for 2 epochs")


def test_a_resumed_trial_keeps_its_selection_state(digits: TensorData, tmp_path: Path) -> None:
    config = {**FAST, "epochs": 8, "select_by": "gain_variability", "select_window": 2}
    straight = train_trial(config, data=digits)
    ckpt = tmp_path / "checkpoint.pt"
    train_trial({**config, "epochs": 5}, data=digits, checkpoint_path=ckpt)
    resumed = train_trial(config, data=digits, checkpoint_path=ckpt)
    assert resumed.selected_epoch == straight.selected_epoch
    assert same(state_of(resumed.model), state_of(straight.model))  # the kept weights
    for a, b in zip(resumed.history, straight.history, strict=True):
        assert a["selected_epoch"] == b["selected_epoch"]
        # the first resumed epoch compares with the saved predictions, not with none
        assert a["prediction_changes"] == b["prediction_changes"] or math.isnan(
            b["prediction_changes"]
        )
    assert not math.isnan(resumed.history[5]["prediction_changes"])
    saved = load_checkpoint(ckpt)["selection"]["predictions"]
    assert saved.shape == (digits.x_train.shape[0],)


def test_a_finished_early_stopped_trial_does_not_train_on(
    digits: TensorData, tmp_path: Path
) -> None:
    config = {**FAST, "epochs": 30, "select_by": "prediction_changes", "patience": 2}
    ckpt = tmp_path / "checkpoint.pt"
    first = train_trial(config, data=digits, checkpoint_path=ckpt)
    again = train_trial({**config, "epochs": 40}, data=digits, checkpoint_path=ckpt)
    assert again.status == EARLY_STOPPED
    assert json.dumps(again.history) == json.dumps(first.history)
    assert same(state_of(again.model), state_of(first.model))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"signals": ["val_loss"]}, r"signals must be a list of distinct names from"),
        ({"signals": "prediction_changes"}, r"signals must be a list"),
        ({"select_by": "val_loss"}, r"select_by must be one of 'last', 'prediction_changes'"),
        ({"select_by": "gain_trend", "patience": -2}, r"patience must be a positive integer"),
        ({"patience": 3}, r"patience=3 needs a stopping signal"),
        ({"select_by": "gain_trend", "select_window": 0}, r"select_window must be a positive"),
        (
            {"select_by": "gradient_disparity"},
            r"select_by='gradient_disparity' is not recorded by this trial: add it to signals",
        ),
    ],
)
def test_bad_selection_settings(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(override)


def test_cli_train_stops_by_patience_and_names_the_kept_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--select-by", "prediction_changes"]
    args += ["--patience", "2", "--epochs", "30", "--lr", "0.05", "--batch-size", "128"]
    args += ["--signals", "prediction_changes", "gradient_disparity", "--eval-test"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "early_stopped"
    kept = history["selected_epoch"]
    assert f"selected:  epoch {kept} (lowest prediction_changes)" in printed
    assert "status:    early_stopped (patience: prediction_changes" in printed
    assert history["history"][-1]["epoch"] == kept + 2 < 30
    assert "disparity" in printed and "changes" in printed
    assert main(["diagnose", str(out / "history.json")]) == 0
    printed = capsys.readouterr().out
    assert f"selected epoch:    {kept} (select_by prediction_changes, early_stopped)" in printed
    assert main(["diagnose", str(out / "history.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selected_epoch"] == kept


def test_a_spec_with_select_by_reports_the_kept_checkpoints_score_on_both_back_ends(
    tmp_path: Path,
) -> None:
    """Optuna and Ray: trials stopped by patience complete, their value is the trial score at
    the kept epoch (not the last one), the tables say why they stopped, and Tune's
    ``CheckpointConfig`` keeps the kept epoch's checkpoint."""
    import optuna
    import ray

    from gainsearch.search.run_optuna import run_study
    from gainsearch.search.run_ray import run_tuner
    from gainsearch.search.spaces import parse_spec

    spec = parse_spec(
        {
            "name": "kept",
            "train": {
                **{k: v for k, v in FAST.items() if k != "lr"},
                "epochs": 25,
                "select_by": "prediction_changes",
                "patience": 2,
            },
            "search": {"lr": {"type": "float", "low": 0.08, "high": 0.1}},
            "pruner": {"type": "none"},
            "sampler": {"type": "random", "seed": 0},
        }
    )

    def check(outcome: Any) -> None:
        for row in outcome.rows:
            assert row.state == "complete" and row.epochs < 25
            assert row.selected_epoch == row.epochs - 2
            assert row.value == row.value_curve[row.selected_epoch - 1] != row.value_curve[-1]
            assert row.stop_reason.startswith("patience: prediction_changes has not improved")
            assert len(row.signals["prediction_changes"]) == row.epochs
        assert outcome.best["best"]["selected_epoch"] in {r.selected_epoch for r in outcome.rows}

    optuna_run = run_study(spec, out_dir=tmp_path / "optuna", n_trials=2, heartbeat=None)
    check(optuna_run)
    ray_run = run_tuner(spec, out_dir=tmp_path / "ray", n_trials=2, max_concurrent=1)
    assert not ray.is_initialized()
    check(ray_run)
    for folder in ("optuna", "ray"):
        study = optuna.load_study(
            study_name="kept", storage=f"sqlite:///{tmp_path / folder}/study.db"
        )
        for t in study.trials:
            assert t.value == t.intermediate_values[t.user_attrs["selected_epoch"]]
    header = (tmp_path / "ray" / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"selected_epoch", "stop_reason"} <= set(header)
    # the report marks each trial's kept epoch and plots the signal it was chosen by
    from gainsearch.report import load_run, plot_curves

    run = load_run(str(tmp_path / "optuna"))
    fig = plot_curves(run)
    gain_ax, loss_ax, signal_ax = fig.axes[:3]
    assert signal_ax.get_ylabel() == "prediction_changes"
    for ax in (gain_ax, loss_ax, signal_ax):
        dots = sorted(int(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o")
        assert dots == sorted(r.selected_epoch for r in run.rows)
    with pytest.raises(ValueError, match=r"signal 'gradient_disparity' is not recorded"):
        plot_curves(run, "gradient_disparity")
    for row in ray_run.rows:  # Tune kept the selected epoch's checkpoint, and the latest
        kept = sorted((tmp_path / "ray").glob(f"ray_results/kept/*{row.trial_id}*/checkpoint_*"))
        epochs = [int(load_checkpoint(k / "checkpoint.pt")["epoch"]) for k in kept]
        assert epochs == [row.selected_epoch, row.epochs]


def test_spec_keys_are_the_trainers_and_not_searchable() -> None:
    from gainsearch.search.spaces import SpecError, parse_spec

    base = {"name": "s", "search": {"lr": {"type": "float", "low": 0.01, "high": 0.1}}}
    spec = parse_spec({**base, "train": {"select_by": "gain_trend", "patience": 3}})
    assert spec.train_config({"lr": 0.05}).patience == 3
    with pytest.raises(SpecError, match=r"train: select_by must be one of 'last'"):
        parse_spec({**base, "train": {"select_by": "val_loss"}})
    with pytest.raises(SpecError, match=r"search.patience: 'patience' cannot be searched"):
        parse_spec(
            {
                **base,
                "train": {"select_by": "gain_trend"},
                "search": {"patience": {"type": "int", "low": 2, "high": 5}},
            }
        )


def test_the_curves_figure_marks_kept_epochs_only_when_a_signal_selects(
    digits: TensorData,
) -> None:
    from gainsearch.report import RunData, plot_curves

    def dots(fig: object) -> list[list[int]]:
        return [
            sorted(int(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o")
            for ax in fig.axes[:-1]  # type: ignore[attr-defined]
        ]

    plain = [train_trial({**FAST, "epochs": 4, "lr": lr}, data=digits) for lr in (0.02, 0.05)]
    fig = plot_curves(RunData.from_results(plain))
    assert len(fig.axes) == 3 and dots(fig) == [[], []]  # select_by last: as before
    config = {**FAST, "epochs": 30, "select_by": "prediction_changes", "patience": 2}
    kept = [train_trial({**config, "lr": lr}, data=digits) for lr in (0.02, 0.05)]
    run = RunData.from_results(kept)
    assert [r.state for r in run.rows] == ["complete", "complete"]
    assert all(r.stop_reason.startswith("patience:") for r in run.rows)
    fig = plot_curves(run)
    assert len(fig.axes) == 4 and fig.axes[2].get_ylabel() == "prediction_changes"
    assert dots(fig) == [sorted(r.selected_epoch for r in kept)] * 3
