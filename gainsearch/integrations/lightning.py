"""Lightning: the gain (and the trial score) every training epoch, no validation loop needed.

``GainCallback`` measures the module's Maximum Gain at the end of every training epoch, logs
``gain``, ``trial_score``, ``level``, ``trend`` and ``variability`` with ``pl_module.log`` (so
loggers, ``ModelCheckpoint(monitor=...)`` and ``EarlyStopping(monitor=...)`` see them), and, when
asked, reports to Optuna (the same decision core as ``GainPruner``) or to Ray Tune (so that
``GainScheduler`` decides). Optuna's and Ray's own Lightning callbacks report on the validation
end, so a run without a validation loop, the run this library is for, is never pruned by them::

    callback = GainCallback(trial=trial)           # an optuna.Trial; or ray_tune=True
    trainer = lightning.Trainer(max_epochs=10, callbacks=[callback], limit_val_batches=0)
    trainer.fit(model, train_loader)
    callback.check_pruned()                        # raises optuna.TrialPruned with the reason

The training loss of an epoch is the mean of what ``training_step`` returned (its ``loss``),
weighted by batch size, reduced over processes: the same quantity the built-in trainer records.
Under DDP the gain is measured on rank 0 only and every rank receives the same values and the
same decision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from gainsearch.core.evaluation import evaluate
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.objective import TrialScoreConfig
from gainsearch.core.spectral import Target

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "gainsearch.integrations.lightning needs Lightning: pip install 'gainsearch[lightning]'"
    ) from err

__all__ = ["GainCallback"]

logger = logging.getLogger(__name__)

#: What the callback logs every epoch (and what ModelCheckpoint/EarlyStopping may monitor).
LOGGED = ("gain", "trial_score", "level", "trend", "variability")


class GainCallback(pl.Callback):
    """Measure the gain every training epoch; log it; report to Optuna or Ray Tune; prune.

    Args:
        trial: An ``optuna.Trial``: each epoch is reported with
            :func:`gainsearch.integrations.optuna.report_gain` (the study's pruner decides; a
            ``GainPruner`` asks the same decision core as the built-in back end). A pruned trial
            stops the trainer at the end of that epoch; call :meth:`check_pruned` after
            ``fit`` to raise ``optuna.TrialPruned`` with the reason.
        ray_tune: Report each epoch with :func:`gainsearch.integrations.ray.report_gain`
            (call ``fit`` inside a Ray Tune function trainable; a ``GainScheduler`` with
            ``metric="trial_score"`` then stops bad trials).
        ray_checkpoint: With ``ray_tune``, also report the trainer's checkpoint (written to a
            temporary folder with ``trainer.save_checkpoint``) so Tune can restore the trial.
            The Ray path is for single-process fits (Tune runs one trial per process; use Ray
            Train for distributed trials).
        in_shape: ``(C, H, W)`` of the probe; default: the shape of the first training batch's
            inputs (the first tensor of the batch).
        target: ``"all"`` (class mean, default), ``"winner"`` (the paper) or a class index.
        smoothing: The smoothed gain's noise level (0: the paper's impulse gain).
        metric: What is reported to Optuna: ``"trial_score"`` (default) or another metric of
            :data:`gainsearch.core.objective.METRICS` (a sequence for multi-objective studies).
        trial_config: The trial score's form.
        log: Log :data:`LOGGED` with ``pl_module.log`` every epoch.

    State (the gain history and the training losses) is saved in Lightning checkpoints, so a
    fit resumed from a checkpoint continues the curve.
    """

    def __init__(
        self,
        *,
        trial: Any = None,
        ray_tune: bool = False,
        ray_checkpoint: bool = False,
        in_shape: Sequence[int] | None = None,
        target: Target = "all",
        smoothing: float = 0.0,
        metric: str | Sequence[str] = "trial_score",
        trial_config: TrialScoreConfig | None = None,
        log: bool = True,
    ) -> None:
        super().__init__()
        if trial is not None and ray_tune:
            raise ValueError("GainCallback reports to one back end: pass trial= or ray_tune=True.")
        if ray_checkpoint and not ray_tune:
            raise ValueError("ray_checkpoint=True needs ray_tune=True.")
        self.trial = trial
        self.ray_tune = ray_tune
        self.ray_checkpoint = ray_checkpoint
        self.target: Target = target
        self.smoothing = smoothing
        self.metric = metric
        self.trial_config = trial_config
        self.log = log
        self.monitor: GainMonitor | None = None
        if in_shape is not None:  # validated now: a bad shape fails before training starts
            self.monitor = GainMonitor(in_shape, target=target, smoothing=smoothing)
        else:  # the options, validated now too
            GainMonitor((1, 1, 1), target=target, smoothing=smoothing)
        self.losses: list[float] = []
        self.pruned_reason: str = ""
        self._loss_sum: torch.Tensor | None = None
        self._count = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return "GainCallback"

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "losses": list(self.losses),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(v) for v in state_dict.get("losses", [])]
        monitor = state_dict.get("monitor")
        if monitor is not None:
            if self.monitor is None:
                self.monitor = GainMonitor(
                    monitor["in_shape"], target=self.target, smoothing=self.smoothing
                )
            self.monitor.load_state_dict(monitor)

    # -- hooks --------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._count = None, 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        inputs = _first_tensor(batch)
        if self.monitor is None:
            if inputs is None or inputs.dim() != 4:
                raise ValueError(
                    "GainCallback takes the probe's shape from the first training batch, whose "
                    "first tensor must be images (N, C, H, W); pass in_shape=(C, H, W)."
                )
            self.monitor = GainMonitor(
                tuple(inputs.shape[1:]), target=self.target, smoothing=self.smoothing
            )
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            n = int(inputs.shape[0]) if inputs is not None else 1
            value = loss.detach().to(torch.float64) * n  # summed on the device: no host sync
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._count += n

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or self._loss_sum is None:
            return  # no batch this epoch
        epoch = trainer.current_epoch + 1
        total = trainer.strategy.reduce(self._loss_sum, reduce_op="sum")
        count = trainer.strategy.reduce(
            torch.tensor(float(self._count), device=self._loss_sum.device), reduce_op="sum"
        )
        loss = float(total / count)
        self.losses = [*self.losses[: epoch - 1], loss]
        # rank 0 measures and decides; every rank gets the same numbers and decision
        values: dict[str, Any] = {}
        if trainer.is_global_zero:
            values = self._measure_and_report(trainer, pl_module, epoch, loss)
        # the curve lives on rank 0, which writes the checkpoints
        values = trainer.strategy.broadcast(values, src=0)
        if self.log:
            for name in LOGGED:
                value = values.get(name)
                pl_module.log(name, math.nan if value is None else float(value), on_epoch=True)
        if values.get("prune_reason"):
            self.pruned_reason = str(values["prune_reason"])
            logger.info("pruning at epoch %d: %s", epoch, self.pruned_reason)
            trainer.should_stop = True

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` with the reason if the trial was pruned (after fit)."""
        if self.pruned_reason:
            import optuna

            raise optuna.TrialPruned(self.pruned_reason)

    # -- internals -----------------------------------------------------------------------------
    def _measure_and_report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, loss: float
    ) -> dict[str, Any]:
        assert self.monitor is not None  # set on the first batch
        reading = self.monitor.measure(pl_module, epoch)
        diverged = not (math.isfinite(loss) and math.isfinite(reading.gain))
        # the numbers logged: the trial's own evaluation (the back ends evaluate against peers)
        gains = self.monitor.gains
        evaluation = evaluate(
            gains,
            train_loss=self.losses if len(self.losses) == len(gains) else None,
            diverged=diverged,
            trial_config=self.trial_config,
        )
        values: dict[str, Any] = {
            "epoch": epoch,
            "gain": reading.gain,
            "gain_max": reading.gain_max,
            "winner": reading.winner,
            **{k: v for k, v in evaluation.metrics().items() if k in LOGGED},
        }
        if self.trial is not None:
            import optuna

            from gainsearch.integrations.optuna import report_gain

            try:
                report_gain(
                    self.trial,
                    self.monitor,
                    epoch,
                    metric=self.metric,
                    diverged=diverged,
                    train_loss=self.losses,
                    trial_config=self.trial_config,
                )
            except optuna.TrialPruned as pruned:
                values["prune_reason"] = str(pruned)
        else:
            if self.ray_tune:
                self._report_to_tune(trainer, epoch, diverged)
            if diverged:  # nothing to learn from more epochs
                values["prune_reason"] = f"diverged: non-finite loss or gain at epoch {epoch}"
        return values

    def _report_to_tune(self, trainer: pl.Trainer, epoch: int, diverged: bool) -> None:
        import tempfile
        from pathlib import Path

        from gainsearch.integrations.ray import report_gain

        assert self.monitor is not None  # measured just before
        with tempfile.TemporaryDirectory(prefix="gainsearch-lightning-") as folder:
            checkpoint = None
            if self.ray_checkpoint:
                from ray.tune import Checkpoint

                trainer.save_checkpoint(str(Path(folder) / "checkpoint.ckpt"))
                checkpoint = Checkpoint.from_directory(folder)
            report_gain(
                self.monitor,
                epoch,
                train_loss=self.losses,
                diverged=diverged,
                checkpoint=checkpoint,
                trial_config=self.trial_config,
            )


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)):
        return next((b for b in batch if isinstance(b, torch.Tensor)), None)
    if isinstance(batch, dict):
        return next((b for b in batch.values() if isinstance(b, torch.Tensor)), None)
    return None
