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

Without ``trial=`` or ``ray_tune=True`` the callback measures and logs, and stops the fit only
when the trial diverges (a non-finite training loss or gain): the gain is then a logged metric
like any other, for ``EarlyStopping``, ``ModelCheckpoint`` and the loggers.

The stopping signals (:mod:`gainsearch.core.signals`) are logged too, so that Lightning's own
early stopping and checkpointing work without validation data (put the callback before
``EarlyStopping`` in the list)::

    callbacks = [
        GainCallback(signals=["prediction_changes"]),
        EarlyStopping(monitor="prediction_changes", mode="min", patience=5),
        ModelCheckpoint(monitor="prediction_changes", mode="min"),
    ]

``prediction_changes`` needs the training step to return the batch's logits and its examples'
indices: ``return {"loss": loss, "logits": logits, "indices": idx}`` (wrap the training set in
:class:`gainsearch.core.signals.Indexed` to get them). At the first epoch, which has no
previous predictions, it logs the number of examples seen (every one counts as changed) rather
than the built-in trainer's ``nan``: ``EarlyStopping`` stops on a non-finite value. Single
process only (under DDP the ranks see different examples each epoch).

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

from gainsearch.core.decision import DIVERGED, Decision
from gainsearch.core.evaluation import evaluate
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.objective import METRICS, TrialScoreConfig
from gainsearch.core.signals import PredictionChanges, gain_trend, gain_variability, moving_average
from gainsearch.core.spectral import Target, check_in_shape, check_smoothing, check_target

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
#: The stopping signals the callback can log (gradient disparity needs the training data: the
#: built-in trainer or :func:`gainsearch.core.signals.gradient_disparity` in an own loop).
SIGNALS = ("prediction_changes", "gain_variability", "gain_trend")


class GainCallback(pl.Callback):
    """Measure the gain every ``every_n_epochs`` training epochs; log it; report to Optuna or
    Ray Tune; stop the fit when the decision says so.

    Each measured epoch is two steps, as in Lightning's ``EarlyStopping``: :meth:`decide`
    measures, evaluates and reports, and returns the :class:`~gainsearch.core.decision.Decision`
    (prune or not, its rule and reason); the hook acts on it (``trainer.should_stop``) and keeps
    it in :attr:`stopped` (``None`` while the fit goes on).

    What decides:

    * ``trial=``: the study's pruner, through
      :func:`gainsearch.integrations.optuna.report_epoch` (a ``GainPruner`` asks the same
      decision core as the built-in back end);
    * ``ray_tune=True``: the Ray Tune scheduler stops the trial (a ``GainScheduler`` with
      ``metric="trial_score"``); the callback itself stops only a diverged trial;
    * neither: the callback logs and stops only a diverged trial.

    Args:
        trial: An ``optuna.Trial``. A pruned trial stops the trainer at the end of that epoch;
            call :meth:`check_pruned` after ``fit`` to raise ``optuna.TrialPruned`` with the
            reason.
        ray_tune: Report each measured epoch with
            :func:`gainsearch.integrations.ray.report_gain` (call ``fit`` inside a Ray Tune
            function trainable).
        ray_checkpoint: With ``ray_tune``, also report the trainer's checkpoint (written to a
            temporary folder with ``trainer.save_checkpoint``) so Tune can restore the trial.
            The Ray path is for single-process fits (Tune runs one trial per process; use Ray
            Train for distributed trials).
        in_shape: ``(C, H, W)`` of the probe; default: the shape of the first training batch's
            inputs (the first tensor of the batch).
        target: ``"all"`` (class mean, default: the built-in trainer's; the winning class of an
            impulse flips between epochs and makes the gain jump), ``"winner"`` (the paper) or a
            class index.
        smoothing: The smoothed gain's noise level (0: the paper's impulse gain).
        metric: What is reported to Optuna: ``"trial_score"`` (default) or another metric of
            :data:`gainsearch.core.objective.METRICS` (a sequence for multi-objective studies).
        trial_config: The trial score's form.
        every_n_epochs: Measure (and report, and decide) every this many epochs (the epochs
            ``k, 2k, ...``, as ``check_val_every_n_epoch``); the epoch numbers are reported as
            they are, so the study compares trials at the same epochs.
        log: Log :data:`LOGGED` and the signals with ``pl_module.log`` at every measured epoch.
        signals: Stopping signals to log, from :data:`SIGNALS` (default: the gain's two, which
            need nothing; ``"prediction_changes"`` needs the training step's logits and indices,
            see the module docstring).
        select_window: Log each signal as its trailing mean over this many readings (the
            built-in trainer's ``select_window``; ``1``: the raw values), so that
            ``EarlyStopping(monitor=name, mode="min", patience=p)`` applies the built-in rule
            ``select_by=name, select_window=w, patience=p`` exactly.

    State (the gain history and the training losses) is saved in Lightning checkpoints under a
    key made of the arguments that shape it, so two callbacks (say, two targets) can share a
    Trainer, and a fit resumed from a checkpoint continues the curve.

    Raises:
        ValueError: a bad argument (named, with what is allowed), at construction.
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
        every_n_epochs: int = 1,
        log: bool = True,
        signals: Sequence[str] = ("gain_variability", "gain_trend"),
        select_window: int = 1,
    ) -> None:
        super().__init__()
        if (
            isinstance(select_window, bool)
            or not isinstance(select_window, int)
            or select_window < 1
        ):
            raise ValueError(
                f"select_window must be a positive integer (readings in the trailing mean, 1: "
                f"the raw signal), but got select_window={select_window!r}."
            )
        if isinstance(signals, str) or any(s not in SIGNALS for s in signals):
            raise ValueError(
                f"signals must be a sequence of names from {list(SIGNALS)}, but got "
                f"signals={signals!r}."
            )
        if trial is not None and ray_tune:
            raise ValueError("GainCallback reports to one back end: pass trial= or ray_tune=True.")
        if ray_checkpoint and not ray_tune:
            raise ValueError("ray_checkpoint=True needs ray_tune=True.")
        metrics = [metric] if isinstance(metric, str) else list(metric)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(
                f"metric must be one of {list(METRICS)} (or a sequence of them), but got "
                f"metric={metric!r}."
            )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise ValueError(f"every_n_epochs must be an integer >= 1, but got {every_n_epochs=}.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, but got {every_n_epochs=}.")
        check_smoothing(smoothing)
        check_target(target)
        self.target: Target = target
        self.in_shape = None if in_shape is None else check_in_shape(in_shape)
        self.trial = trial
        self.ray_tune = ray_tune
        self.ray_checkpoint = ray_checkpoint
        self.smoothing = float(smoothing)
        self.metric = metric
        self.trial_config = trial_config
        self.every_n_epochs = every_n_epochs
        self.log = log
        self.signals = tuple(signals)
        self.select_window = select_window
        #: the prediction changes of every epoch (with ``"prediction_changes"``)
        self.changes = PredictionChanges() if "prediction_changes" in self.signals else None
        self.monitor: GainMonitor | None = None
        if self.in_shape is not None:
            self.monitor = self._new_monitor(self.in_shape)
        #: training loss of each measured epoch, by epoch number
        self.epoch_losses: dict[int, float] = {}
        #: the decision that stopped the fit (``None`` while it goes on)
        self.stopped: Decision | None = None
        self._loss_sum: torch.Tensor | None = None
        self._count = 0

    def _new_monitor(self, in_shape: Sequence[int]) -> GainMonitor:
        return GainMonitor(in_shape, target=self.target, smoothing=self.smoothing)

    @property
    def losses(self) -> list[float]:
        """The training loss of each measured epoch, in order."""
        return list(self.epoch_losses.values())

    @property
    def pruned_reason(self) -> str:
        """The reason the fit was stopped (empty while it goes on)."""
        return self.stopped.reason if self.stopped is not None and self.stopped.prune else ""

    # -- state ------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            target=self.target, smoothing=self.smoothing, every_n_epochs=self.every_n_epochs
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "epoch_losses": dict(self.epoch_losses),
            "changes": None if self.changes is None else self.changes.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "epoch_losses" in state_dict:
            self.epoch_losses = {int(k): float(v) for k, v in state_dict["epoch_losses"].items()}
        else:  # a checkpoint from before every_n_epochs: one loss per epoch 1, 2, ...
            old = state_dict.get("losses", [])
            self.epoch_losses = {i + 1: float(v) for i, v in enumerate(old)}
        if self.changes is not None and state_dict.get("changes") is not None:
            self.changes.load_state_dict(state_dict["changes"])
        monitor = state_dict.get("monitor")
        if monitor is not None:
            if self.monitor is None:
                self.monitor = self._new_monitor(monitor["in_shape"])
            self.monitor.load_state_dict(monitor)

    # -- hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.changes is not None and trainer.world_size > 1:
            raise ValueError(
                "GainCallback(signals=[..., 'prediction_changes']) runs in a single process: "
                f"this fit has world_size={trainer.world_size}, whose ranks see different "
                "examples each epoch."
            )

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
            self.monitor = self._new_monitor(tuple(inputs.shape[1:]))
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            n = int(inputs.shape[0]) if inputs is not None else 1
            value = loss.detach().to(torch.float64) * n  # summed on the device: no host sync
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._count += n
        if self.changes is not None:
            if not (isinstance(outputs, dict) and {"logits", "indices"} <= set(outputs)):
                raise ValueError(
                    "GainCallback(signals=[..., 'prediction_changes']) needs training_step to "
                    "return {'loss': loss, 'logits': logits, 'indices': idx}, idx the batch's "
                    "example indices (wrap the data set in gainsearch.core.signals.Indexed); "
                    f"it returned {type(outputs).__name__}"
                    + (f" with keys {sorted(outputs)}" if isinstance(outputs, dict) else "")
                    + "."
                )
            self.changes.update(outputs["indices"], outputs["logits"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        changes = math.nan
        if self.changes is not None and self._count:  # every epoch: changes are epoch to epoch
            seen = self.changes.seen
            self.changes.end_epoch()
            changes = float(moving_average(self.changes.history, self.select_window)[-1])
            changes = float(seen) if math.isnan(changes) else changes  # the first epoch
        if self.monitor is None or self._loss_sum is None or epoch % self.every_n_epochs:
            return  # no batch this epoch, or not an epoch to measure
        total = trainer.strategy.reduce(self._loss_sum, reduce_op="sum")
        count = trainer.strategy.reduce(
            torch.tensor(float(self._count), device=self._loss_sum.device), reduce_op="sum"
        )
        loss = float(total / count)
        # rank 0 measures and decides; every rank gets the same numbers and decision
        payload: dict[str, Any] = {}
        if trainer.is_global_zero:
            values, decision = self.decide(trainer, pl_module, epoch, loss)
            payload = {
                "values": values,
                "decision": _as_dict(decision),
                "signals": self._signals(changes),
            }
        payload = trainer.strategy.broadcast(payload, src=0)
        self.epoch_losses = {e: v for e, v in self.epoch_losses.items() if e < epoch}
        self.epoch_losses[epoch] = loss
        if self.log:
            for name in LOGGED:
                value = payload["values"].get(name)
                pl_module.log(name, math.nan if value is None else float(value), on_epoch=True)
            for name in self.signals:
                value = payload["signals"][name]
                if math.isfinite(value):  # the gain's need a few epochs first
                    pl_module.log(name, value, on_epoch=True)
        decision = Decision(**payload["decision"])
        if decision.prune:  # the action, apart from the decision
            self.stopped = decision
            logger.info("stopping at epoch %d (%s): %s", epoch, decision.rule, decision.reason)
            trainer.should_stop = True

    def _signals(self, changes: float) -> dict[str, float]:
        assert self.monitor is not None
        gains, epochs = self.monitor.gains, self.monitor.epochs
        w = self.select_window
        return {
            "prediction_changes": changes,
            "gain_variability": float(moving_average(gain_variability(gains), w)[-1]),
            "gain_trend": float(moving_average(gain_trend(gains, epochs=epochs), w)[-1]),
        }

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` with the reason if the trial was pruned (after fit)."""
        if self.pruned_reason:
            import optuna

            raise optuna.TrialPruned(self.pruned_reason)

    # -- the decision ----------------------------------------------------------------------------
    def decide(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, loss: float
    ) -> tuple[dict[str, Any], Decision]:
        """Measure the gain at ``epoch``, evaluate and report it: (the numbers to log, the
        decision). Acts on nothing; rank 0 only."""
        assert self.monitor is not None  # set on the first batch
        reading = self.monitor.measure(pl_module, epoch)
        losses = [*(v for e, v in self.epoch_losses.items() if e < epoch), loss]
        diverged = not (math.isfinite(loss) and math.isfinite(reading.gain))
        # the numbers logged: the trial's own evaluation (the back ends evaluate against peers)
        gains, epochs = self.monitor.gains, self.monitor.epochs
        evaluation = evaluate(
            gains,
            epochs=epochs,
            train_loss=losses if len(losses) == len(gains) else None,
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
            from gainsearch.integrations.optuna import report_epoch

            _, decision = report_epoch(
                self.trial,
                self.monitor,
                epoch,
                metric=self.metric,
                diverged=diverged,
                train_loss=losses,
                trial_config=self.trial_config,
            )
            return values, decision
        if self.ray_tune:
            self._report_to_tune(trainer, epoch, losses, diverged)
        own = evaluation.decision
        if own.rule == DIVERGED:  # nothing to learn from more epochs
            return values, own
        who = "the Ray Tune scheduler" if self.ray_tune else "no back end"
        return values, Decision(False, "continue", f"epoch {epoch} measured; {who} decides", epoch)

    def _report_to_tune(
        self, trainer: pl.Trainer, epoch: int, losses: list[float], diverged: bool
    ) -> None:
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
                train_loss=losses,
                diverged=diverged,
                checkpoint=checkpoint,
                trial_config=self.trial_config,
            )


def _as_dict(decision: Decision) -> dict[str, Any]:
    return {
        "prune": decision.prune,
        "rule": decision.rule,
        "reason": decision.reason,
        "epoch": decision.epoch,
        "value": decision.value,
        "peers": decision.peers,
    }


def _first_tensor(batch: Any) -> torch.Tensor | None:
    """The batch's images: its first 4-D tensor (an ``Indexed`` batch starts with the indices),
    else its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, dict) else batch
    if not isinstance(batch, (list, tuple, dict)):
        return None
    tensors = [b for b in items if isinstance(b, torch.Tensor)]
    return next((t for t in tensors if t.dim() == 4), tensors[0] if tensors else None)
