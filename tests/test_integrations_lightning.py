"""GainCallback on a tiny LightningModule without a validation loop: reports, prunes, resumes,
logs what ModelCheckpoint can monitor."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from gainsearch.batteries.data import TensorData  # noqa: E402
from gainsearch.integrations.lightning import GainCallback  # noqa: E402
from gainsearch.integrations.optuna import GainPruner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the tiny LightningModule (no validation_step) of the DDP script, which the tests also run
_spec = importlib.util.spec_from_file_location(
    "lightning_ddp", ROOT / "benchmarks" / "lightning_ddp.py"
)
assert _spec is not None and _spec.loader is not None
lightning_ddp = importlib.util.module_from_spec(_spec)
sys.modules["lightning_ddp"] = lightning_ddp
_spec.loader.exec_module(lightning_ddp)
Tiny = lightning_ddp.Tiny


def loader(digits: TensorData) -> DataLoader:
    data = TensorDataset(digits.x_train[:512], digits.y_train[:512])
    return DataLoader(
        data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


def trainer(epochs: int, callbacks: list, tmp_path: Path, **kwargs: object) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        **kwargs,
    )


def test_reports_every_epoch_without_validation(digits: TensorData, tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", pruner=GainPruner())
    trial = study.ask()
    callback = GainCallback(trial=trial)
    torch.manual_seed(0)
    trainer(3, [callback], tmp_path).fit(Tiny(0.05), loader(digits))
    callback.check_pruned()  # not pruned: no exception
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [1, 2, 3]
    assert len(frozen.user_attrs["gain_curve"]) == 3
    assert frozen.user_attrs["diagnosis"]
    # the value reported is the trial score of the epoch's records: -log10(mean training loss)
    assert frozen.intermediate_values[3] == pytest.approx(-math.log10(callback.losses[-1]))
    assert callback.losses[-1] < callback.losses[0]
    assert callback.monitor is not None and callback.monitor.in_shape == (1, 8, 8)


def test_a_diverging_trial_is_pruned_with_its_reason(digits: TensorData, tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", pruner=GainPruner())
    callback = GainCallback(trial=study.ask())
    torch.manual_seed(0)
    fit = trainer(5, [callback], tmp_path)
    fit.fit(Tiny(1e4), loader(digits))
    assert fit.current_epoch < 5  # the trainer stopped early
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        callback.check_pruned()
    assert callback.stopped is not None and callback.stopped.rule == "diverged"  # the rule kept


def test_measuring_every_second_epoch_reports_epoch_numbers(
    digits: TensorData, tmp_path: Path
) -> None:
    study = optuna.create_study(direction="maximize", pruner=GainPruner())
    callback = GainCallback(trial=study.ask(), every_n_epochs=2)
    torch.manual_seed(0)
    trainer(4, [callback], tmp_path).fit(Tiny(0.05), loader(digits))
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [2, 4]  # steps are the epoch numbers
    assert frozen.user_attrs["gain_epochs"] == [2, 4]
    assert callback.monitor is not None and callback.monitor.epochs == [2, 4]
    assert sorted(callback.epoch_losses) == [2, 4]


def test_two_callbacks_share_a_trainer_and_its_checkpoints(
    digits: TensorData, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    mean, winner = GainCallback(target="all", log=False), GainCallback(target="winner", log=False)
    assert mean.state_key != winner.state_key
    trainer(2, [mean, winner, ckpt], tmp_path).fit(Tiny(0.05), loader(digits))
    again = GainCallback(target="all", log=False), GainCallback(target="winner", log=False)
    ckpt2 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)
    trainer(3, [*again, ckpt2], tmp_path).fit(
        Tiny(0.05), loader(digits), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    for before, after in zip((mean, winner), again, strict=True):
        assert before.monitor is not None and after.monitor is not None
        assert after.monitor.epochs == [1, 2, 3]
        assert list(after.monitor.gains[:2]) == list(before.monitor.gains)


def test_a_resumed_fit_continues_the_curve(digits: TensorData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = GainCallback()
    trainer(2, [first, checkpoints], tmp_path).fit(Tiny(0.05), loader(digits))
    assert first.monitor is not None and first.monitor.epochs == [1, 2]
    resumed = GainCallback()
    again = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)
    trainer(4, [resumed, again], tmp_path).fit(
        Tiny(0.05), loader(digits), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert resumed.monitor is not None and resumed.monitor.epochs == [1, 2, 3, 4]
    assert list(resumed.monitor.gains[:2]) == list(first.monitor.gains)
    assert resumed.losses[:2] == first.losses and len(resumed.losses) == 4


def test_logs_metrics_model_checkpoint_can_monitor(digits: TensorData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    best = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "best", monitor="trial_score", mode="max"
    )
    fit = trainer(3, [GainCallback(), best], tmp_path)
    fit.fit(Tiny(0.05), loader(digits))
    assert {"gain", "trial_score", "level", "trend", "variability"} <= set(fit.callback_metrics)
    assert best.best_model_score is not None and math.isfinite(float(best.best_model_score))
    assert Path(best.best_model_path).is_file()


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="one back end"):
        GainCallback(trial=object(), ray_tune=True)
    with pytest.raises(ValueError, match="ray_checkpoint=True needs ray_tune=True"):
        GainCallback(ray_checkpoint=True)
    with pytest.raises(ValueError, match=r"target must be 'winner', 'all'"):
        GainCallback(target="best")
    with pytest.raises(ValueError, match=r"in_shape must be three positive integers"):
        GainCallback(in_shape=(8, 8))
    # checked at construction, before any epoch
    with pytest.raises(ValueError, match=r"metric must be one of \['trial_score'.*metric='loss'"):
        GainCallback(metric="loss")
    with pytest.raises(ValueError, match=r"every_n_epochs must be an integer >= 1, but got"):
        GainCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"smoothing must be a non-negative number"):
        GainCallback(smoothing=-1.0)
    with pytest.raises(
        ValueError,
        match=r"select_window must be a positive integer .* got "
        r"select_window=0",
    ):
        GainCallback(select_window=0)


def test_ddp_rank_zero_measures_and_every_rank_decides_alike(tmp_path: Path) -> None:
    """Two CPU processes (gloo) through benchmarks/lightning_ddp.py: one JSON file per rank."""
    import json
    import subprocess
    import sys

    def run(name: str, *args: str) -> dict[int, dict]:
        out = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "lightning_ddp.py"),
                "--out",
                str(out),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
        )
        rows = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
        assert len(rows) == 2, done.stdout + done.stderr
        return {r["rank"]: r for r in rows}

    healthy = run("healthy", "--epochs", "3")
    assert healthy[0]["measured"] == [1, 2, 3] and healthy[1]["measured"] == []
    assert healthy[0]["reported"] == [1, 2, 3]  # rank 0 reported every epoch
    assert healthy[0]["losses"] == healthy[1]["losses"]  # reduced over both ranks
    assert healthy[0]["pruned_reason"] == healthy[1]["pruned_reason"] == ""
    diverging = run("diverging", "--epochs", "5", "--lr", "1e4")
    assert diverging[0]["epochs_run"] == diverging[1]["epochs_run"] < 5
    assert "diverged" in diverging[0]["pruned_reason"]
    assert diverging[1]["pruned_reason"] == diverging[0]["pruned_reason"]


def ray_fit(config: dict) -> None:
    """A Tune function trainable: a Lightning fit reported by GainCallback(ray_tune=True)."""
    from gainsearch.batteries.data import load_dataset

    digits = load_dataset("digits")
    torch.manual_seed(0)
    callback = GainCallback(ray_tune=True, ray_checkpoint=True)
    trainer(3, [callback], Path(config["root"])).fit(Tiny(config["lr"]), loader(digits))


def test_inside_ray_tune_the_gain_scheduler_decides(tmp_path: Path) -> None:
    tune = pytest.importorskip("ray.tune")
    import sys

    import ray
    from ray import cloudpickle

    from gainsearch.integrations.ray import GainScheduler
    from gainsearch.search.ray_cluster import connect

    # Ray workers cannot import this test module: ship its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(lightning_ddp)
    started = connect(None, num_cpus=2)
    scheduler = GainScheduler(metric="trial_score", mode="max", min_peers=1)
    try:
        grid = tune.Tuner(
            ray_fit,
            # one at a time: the good rate first, then a rate too low to learn in an epoch,
            # which only the scheduler can stop (the callback stops nothing but divergence),
            # then a diverging one
            param_space={"lr": tune.grid_search([0.05, 1e-5, 1e4]), "root": str(tmp_path)},
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                metric="trial_score",
                mode="max",
                max_concurrent_trials=1,
                reuse_actors=True,  # as gainsearch's own back end: one import of Lightning
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        if started:
            ray.shutdown()
    assert not grid.errors, grid.errors
    by_lr = {r.config["lr"]: r for r in grid}
    good, slow, bad = by_lr[0.05], by_lr[1e-5], by_lr[1e4]
    assert good.metrics["epoch"] == 3 and math.isfinite(good.metrics["trial_score"])
    assert slow.metrics["epoch"] < 3  # stopped by the scheduler: STOP reached the trial
    assert "below the 50th percentile" in scheduler.stop_reasons[slow.metrics["trial_id"]]
    assert {"gain", "trial_score", "gain_score", "level", "diagnosis"} <= set(good.metrics)
    assert good.checkpoint is not None  # ray_checkpoint: the Lightning checkpoint went along
    assert bad.metrics["epoch"] < 3  # stopped by the scheduler too (below its peers or diverged)
    assert bad.metrics["trial_id"] in scheduler.stop_reasons


class IndexedTiny(Tiny):
    """Tiny whose training step returns what prediction changes need."""

    def training_step(self, batch: tuple[torch.Tensor, ...], _: int) -> dict[str, torch.Tensor]:
        idx, x, y = batch
        logits = self(x)
        return {
            "loss": torch.nn.functional.cross_entropy(logits, y),
            "logits": logits,
            "indices": idx,
        }


@pytest.mark.parametrize("window", [1, 3])
def test_lightning_early_stopping_and_checkpoint_work_on_prediction_changes(
    digits: TensorData, tmp_path: Path, window: int
) -> None:
    from gainsearch.core.signals import Indexed, gain_variability

    data = Indexed(TensorDataset(digits.x_train[:512], digits.y_train[:512]))
    train = DataLoader(
        data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    callback = GainCallback(
        signals=["prediction_changes", "gain_variability"], select_window=window
    )
    stop = pl.callbacks.EarlyStopping(monitor="prediction_changes", mode="min", patience=2)
    keep = pl.callbacks.ModelCheckpoint(
        monitor="prediction_changes", mode="min", save_top_k=1, dirpath=tmp_path / "ckpt"
    )
    logged: list[float] = []
    variability: dict[int, float] = {}
    direct: list[float] = []
    predictions: list[dict[int, int]] = [{}]

    class Record(pl.Callback):  # what EarlyStopping saw, and the changes counted directly
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            pairs = zip(
                outputs["indices"].tolist(), outputs["logits"].argmax(1).tolist(), strict=True
            )
            predictions[-1].update(pairs)

        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            logged.append(float(trainer.callback_metrics["prediction_changes"]))
            if "gain_variability" in trainer.callback_metrics:
                variability[len(logged)] = float(trainer.callback_metrics["gain_variability"])
            if len(predictions) > 1:
                before, now = predictions[-2], predictions[-1]
                direct.append(float(sum(before[i] != now[i] for i in now)))
            predictions.append({})

    torch.manual_seed(0)
    fit = trainer(40, [callback, Record(), stop, keep], tmp_path)
    fit.fit(IndexedTiny(0.1), train)
    assert 0 < stop.stopped_epoch < 39  # stopped by Lightning's EarlyStopping, on our signal
    assert logged[0] == 512.0  # the first epoch: every example counts as changed
    # the built-in rule's trailing mean, written out here (logged in float32)
    smooth = [
        sum(direct[max(0, i - window + 1) : i + 1]) / len(direct[max(0, i - window + 1) : i + 1])
        for i in range(len(direct))
    ]
    assert logged[1:] == pytest.approx(smooth, rel=1e-6) and min(logged) >= 0
    # the gain's signal is logged smoothed the same way (issue 30: it was logged raw)
    raw = gain_variability(callback.monitor.gains)
    assert len(variability) >= 3
    for e, value in variability.items():
        tail = [v for v in raw[max(0, e - window) : e] if not math.isnan(v)]
        assert value == pytest.approx(sum(tail) / len(tail), rel=1e-5), e
    best = min(range(len(logged)), key=lambda i: (logged[i], i))
    assert len(logged) - 1 - best == 2  # patience 2, counted from the best epoch
    assert float(keep.best_model_score) == logged[best]
    assert f"epoch={best}" in Path(keep.best_model_path).name  # Lightning counts from 0


def test_measuring_every_second_epoch_counts_changes_from_the_epoch_before(
    digits: TensorData, tmp_path: Path
) -> None:
    """Issue 30: with ``every_n_epochs=2`` the prediction changes logged at epoch e are those
    from epoch e - 1 to e (counted here from the training step's own logits), not from e - 2."""
    from gainsearch.core.signals import Indexed

    data = Indexed(TensorDataset(digits.x_train[:512], digits.y_train[:512]))
    train = DataLoader(
        data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    callback = GainCallback(signals=["prediction_changes"], every_n_epochs=2)
    logged: dict[int, float] = {}
    predictions: list[dict[int, int]] = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            predictions.append({})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            pairs = zip(
                outputs["indices"].tolist(), outputs["logits"].argmax(1).tolist(), strict=True
            )
            predictions[-1].update(pairs)

        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            epoch = trainer.current_epoch + 1
            if epoch % 2 == 0:
                logged[epoch] = float(trainer.callback_metrics["prediction_changes"])

    torch.manual_seed(0)
    trainer(6, [callback, Record()], tmp_path).fit(IndexedTiny(0.1), train)

    def changed(a: int, b: int) -> float:  # examples whose prediction differs, epochs a -> b
        before, now = predictions[a - 1], predictions[b - 1]
        return float(sum(before[i] != now[i] for i in now))

    assert sorted(logged) == [2, 4, 6]
    assert logged == {e: changed(e - 1, e) for e in logged}
    assert any(changed(e - 2, e) != changed(e - 1, e) for e in (4, 6))  # the test can tell


def test_prediction_changes_need_logits_and_indices(digits: TensorData, tmp_path: Path) -> None:
    callback = GainCallback(signals=["prediction_changes"])
    with pytest.raises(ValueError, match=r"needs training_step to return \{'loss': loss, 'logits'"):
        trainer(1, [callback], tmp_path).fit(Tiny(0.05), loader(digits))
    with pytest.raises(ValueError, match=r"signals must be a sequence of names from"):
        GainCallback(signals=["gradient_disparity"])
