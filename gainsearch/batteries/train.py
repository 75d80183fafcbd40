"""One trial: fit a registry model on the merged training set, measuring the gain every epoch.

The loop (per epoch ``e = 1..epochs``)::

    shuffle (seeded generator) -> [augment on the device] -> optimizer steps on the full
    training set, the learning-rate schedule stepped per batch -> training loss
    -> GainMonitor.measure(model, e) -> [test loss/accuracy, reporting only] -> checkpoint
    -> callbacks (may stop the trial: return a reason string, or raise e.g. optuna.TrialPruned)

The recorded ``train_loss`` of an epoch is the mean plain cross-entropy of that epoch's batches,
as the weights changed (augmented images included): the quantity the trial score and the
diagnosis read. With label smoothing the loss that was optimised differs (its smoothing term
grows with the smoothing, so it cannot compare trials across smoothing values); it is recorded
beside it as ``train_objective``. ``lr`` is the learning rate the optimizer applied at the
epoch's last step.

A non-finite training loss or gain ends the trial with status ``"diverged"``. A checkpoint holds
model, optimizer, monitor history, per-epoch records and RNG states; ``train_trial`` resumes from
it when given the same ``checkpoint_path`` (it is loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gainsearch.batteries.data import DATASETS, TensorData, load_dataset
from gainsearch.batteries.models import check_model_name, create_model
from gainsearch.core.features import DIVERGED, Diagnosis, diagnose
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.noise import LabelNoise, auto_verdict, estimate_label_noise, noise_record
from gainsearch.core.selection import (
    AUTO,
    LAST,
    SIGNALS,
    Selection,
    check_selection,
    select_epoch,
)
from gainsearch.core.signals import (
    DISPARITY_BATCHES,
    changes_by_class,
    gain_trend,
    gain_variability,
    gradient_disparity,
    prediction_changes,
)
from gainsearch.core.spectral import check_target

__all__ = [
    "COMPLETED",
    "DEFAULT_SIGNALS",
    "DIVERGED",
    "EARLY_STOPPED",
    "STOPPED",
    "EpochContext",
    "TrainConfig",
    "TrialResult",
    "augment_batch",
    "build_model",
    "evaluate_model",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "measure_disparity",
    "train_epoch",
    "train_trial",
]

logger = logging.getLogger(__name__)

COMPLETED = "completed"
STOPPED = "stopped"
#: Patience ran out: the trial ends as a completed one, with its selected epoch's weights.
EARLY_STOPPED = "early_stopped"

#: The signals recorded by default: the free ones (gradient disparity costs extra passes).
DEFAULT_SIGNALS = ("prediction_changes", "gain_variability", "gain_trend")
#: The label-noise fields are recorded for up to this many classes (a K x K confusion per epoch).
MAX_NOISE_CLASSES = 100

CHECKPOINT_VERSION = 1

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("none", "standard")
PRECISIONS = ("32", "bf16", "16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one trial. Validated on construction.

    Attributes:
        dataset: Data set name (see :data:`gainsearch.batteries.data.DATASETS`).
        data_root: Folder of on-disk data sets (not needed for ``digits``).
        model: Registry model name (see :func:`gainsearch.batteries.models.list_models`) or
            the import path ``"module:callable"`` of your own model (see
            :mod:`gainsearch.batteries.models`).
        model_args: Keyword arguments for the model factory (e.g. for your own model).
        width: Channel multiplier of the model (registry models).
        dropout: Dropout before the classifier's last layer; ``None`` keeps the model's default
            (none, or 0.5 for ``nin``).
        epochs: Epoch budget.
        batch_size: Mini-batch size.
        optimizer: ``"sgd"`` (momentum, optionally Nesterov; L2 weight decay), ``"adam"`` (L2
            weight decay) or ``"adamw"`` (decoupled weight decay).
        lr: Peak learning rate.
        momentum: SGD momentum (ignored by Adam and AdamW).
        nesterov: Nesterov momentum (SGD only; needs ``momentum > 0``).
        weight_decay: Weight decay (L2 for SGD and Adam, decoupled for AdamW).
        schedule: ``"constant"``, ``"cosine"`` (to zero over the epoch budget) or ``"onecycle"``
            (up from ``lr/25`` then cosine down to ``lr/25e4``, over the budget). Stepped per
            batch.
        warmup_epochs: Linear warm-up from ``lr/steps`` to the schedule over this many epochs
            (any schedule; ``onecycle`` uses it as its rising part, 30 % of the budget if 0).
        label_smoothing: Label smoothing of the cross-entropy, in ``[0, 1)``.
        augment: ``"none"`` or ``"standard"``: random crop with zero padding (``H // 8``
            pixels; zero is the training mean after normalisation) and, for colour (3-channel)
            images, random horizontal flips. Runs on the training device, seeded by ``seed``.
        precision: ``"32"``, ``"bf16"`` (autocast; CPU or CUDA) or ``"16"`` (autocast with a
            gradient scaler; CUDA only). The gain is always measured in float32.
        channels_last: Keep the model and the images in channels-last memory format.
        seed: Seeds model initialisation, the shuffling and the augmentation generators.
        device: Torch device, e.g. ``"cpu"`` or ``"cuda"``.
        gain_target: ``"all"`` (default: the class-robust mean over classes, which does not
            jump when the impulse's winning class flips), ``"winner"`` (the paper) or a class
            index (see :func:`gainsearch.core.spectral.maximum_gain`).
        gain_smoothing: ``0``: the paper's impulse gain; ``s > 0``: the smoothed gain, the
            derivative averaged over 8 impulse probes with fixed Gaussian noise of std ``s``
            (robust on BatchNorm networks, see :func:`gainsearch.core.spectral.maximum_gain`).
        eval_test: Record test loss/accuracy per epoch. Reporting only: nothing decides on it.
        signals: The stopping signals recorded per epoch, from
            :data:`gainsearch.core.selection.SIGNALS` (default: the free ones; add
            ``"gradient_disparity"``, 5 extra forward and backward passes per epoch). See
            :mod:`gainsearch.core.signals` for their exact definitions.
        select_by: Which epoch's weights the trial keeps: ``"last"`` (default), a recorded
            signal, lowest (smoothed) value wins (:mod:`gainsearch.core.selection`), or
            ``"auto"``: the label-noise kind estimated so far picks the rule
            (:func:`gainsearch.core.noise.auto_verdict`; measured in ``docs/label-noise.md``).
        patience: Stop once ``select_by`` has not improved for this many epochs; ``None``
            (default): train the whole budget.
        select_window: Readings in the trailing mean of ``select_by`` (1: the raw signal).
        threads: Torch threads for this trial (``torch.set_num_threads`` in its process);
            ``None`` (default): the back end's (Optuna: the cores divided by the workers; Ray:
            the trial's CPUs; ``gainsearch train``: torch's own). Results change in their last
            digits with the thread count and the machine.
        image_size: ``dataset: image_folder`` only: resize every image to this square size
            (``None``: the images must share one size).
    """

    dataset: str = "digits"
    data_root: str | None = None
    model: str = "digits_lenet"
    model_args: dict[str, Any] = field(default_factory=dict)
    width: float = 1.0
    dropout: float | None = None
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "none"
    precision: str = "32"
    channels_last: bool = False
    seed: int = 0
    device: str = "cpu"
    gain_target: str | int = "all"
    gain_smoothing: float = 0.0
    eval_test: bool = False
    signals: list[str] = field(default_factory=lambda: list(DEFAULT_SIGNALS))
    select_by: str = LAST
    patience: int | None = None
    select_window: int = 1
    threads: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"{name} must be {allowed}, but got {name}={getattr(self, name)!r}.")

        if self.dataset not in DATASETS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; available datasets are {sorted(DATASETS)}."
            )
        check_model_name(self.model)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            fail("threads", "a positive integer (torch threads) or None (the back end's default)")
        if self.image_size is not None and (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or self.image_size < 1
        ):
            fail("image_size", "a positive integer (pixels) or None")
        if not isinstance(self.model_args, dict) or not all(
            isinstance(k, str) for k in self.model_args
        ):
            fail("model_args", "a mapping of keyword arguments")
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("augment", AUGMENTS),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                fail(name, "one of " + ", ".join(repr(a) for a in allowed))
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "a non-negative integer")
        if not _is_number(self.lr) or not self.lr > 0:
            fail("lr", "a positive number")
        if not _is_number(self.width) or not self.width > 0:
            fail("width", "a positive number")
        if not _is_number(self.momentum) or not 0.0 <= self.momentum < 1.0:
            fail("momentum", "a number in [0, 1)")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a non-negative number")
        if self.dropout is not None and (not _is_number(self.dropout) or not 0 <= self.dropout < 1):
            fail("dropout", "a number in [0, 1) or None (the model's default)")
        if not _is_number(self.gain_smoothing) or self.gain_smoothing < 0:
            fail("gain_smoothing", "a non-negative number (0: the paper's impulse gain)")
        if not _is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "a number in [0, 1)")
        if not _is_number(self.warmup_epochs) or not 0 <= self.warmup_epochs < self.epochs:
            fail("warmup_epochs", f"a number in [0, epochs={self.epochs})")
        for name in ("eval_test", "nesterov", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            fail("nesterov", "false unless optimizer is 'sgd' with momentum > 0")
        if self.data_root is not None and not isinstance(self.data_root, str):
            fail("data_root", "a path string or None")
        try:
            check_target(self.gain_target)
        except ValueError:
            fail("gain_target", "'winner', 'all' or a non-negative class index")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("device", "a torch device such as 'cpu', 'cuda' or 'cuda:1'")
        if self.precision == "16" and torch.device(self.device).type != "cuda":
            fail("precision", "'32' or 'bf16' on a non-CUDA device ('16' needs a CUDA device)")
        if (
            not isinstance(self.signals, list)
            or any(name not in SIGNALS for name in self.signals)
            or len(set(self.signals)) != len(self.signals)
        ):
            fail("signals", "a list of distinct names from " + ", ".join(map(repr, SIGNALS)))
        check_selection(self.select_by, self.patience, self.select_window)
        if self.select_by == AUTO and "prediction_changes" not in self.signals:
            raise ValueError(
                f"select_by='auto' needs 'prediction_changes' in signals (its symmetric-noise "
                f"rule), but got signals={self.signals!r}."
            )
        if self.select_by not in (LAST, AUTO) and self.select_by not in self.signals:
            raise ValueError(
                f"select_by={self.select_by!r} is not recorded by this trial: add it to signals "
                f"(signals={self.signals!r}), or select by one of "
                f"{', '.join(map(repr, [LAST, *self.signals]))}."
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error listing the known ones."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a trial configuration must be a mapping, but got {type(data).__name__}."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; known settings are {sorted(known)}."
            )
        values = dict(data)
        # YAML/JSON give ints for floats such as `lr: 1` and floats for `epochs: 10.0`: coerce
        # only where the conversion is exact, so bad values still fail validation.
        for name in (
            "lr",
            "width",
            "momentum",
            "weight_decay",
            "dropout",
            "label_smoothing",
            "warmup_epochs",
            "gain_smoothing",
        ):
            if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
                values[name] = float(values[name])
        if isinstance(values.get("precision"), int) and not isinstance(
            values.get("precision"), bool
        ):
            values["precision"] = str(values["precision"])  # YAML reads `precision: 32` as int
        if isinstance(values.get("signals"), tuple):
            values["signals"] = list(values["signals"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the resolved configuration written next to results)."""
        return asdict(self)


@dataclass
class EpochContext:
    """What a callback sees after each epoch.

    Attributes:
        epoch: The epoch just finished (1-based).
        diverged: The training loss or the gain went non-finite this epoch (the trial ends).
        record: This epoch's record: ``epoch``, ``train_loss`` (plain cross-entropy),
            ``train_objective`` (the optimised loss, with label smoothing), ``lr``, ``gain``,
            ``gain_max``, ``winner``, each recorded signal (``prediction_changes``, ...),
            ``selected_epoch``, ``seconds`` (+ ``test_loss``, ``test_acc`` with ``eval_test``).
        history: All records so far, this one last.
        monitor: The trial's :class:`GainMonitor`.
        model: The model being trained.
        optimizer: Its optimizer.
        config: The trial's configuration.
        selection: The selection rule's verdict after this epoch (``selection.stop``: patience
            ran out and the trial ends after the callbacks); ``None`` on a diverged epoch.
    """

    epoch: int
    record: dict[str, Any]
    history: list[dict[str, Any]]
    monitor: GainMonitor
    diverged: bool
    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    selection: Selection | None = None
    _state: Callable[[], dict[str, Any]] = field(repr=False, default=dict)

    def checkpoint_state(self) -> dict[str, Any]:
        """The full resumable state (as written to ``checkpoint_path``)."""
        return self._state()

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`checkpoint_state` to ``path`` atomically."""
        return _atomic_save(self.checkpoint_state(), Path(path))


#: A callback returns ``None`` to continue or a reason string to stop the trial.
Callback = Callable[[EpochContext], "str | None"]


@dataclass
class TrialResult:
    """The outcome of :func:`train_trial`.

    Attributes:
        config: The trial's configuration.
        status: ``"completed"``, ``"early_stopped"`` (patience ran out: a completed trial that
            stopped before its budget), ``"diverged"`` or ``"stopped"`` (a callback stopped it).
        reason: Why it stopped early (empty when completed).
        selected_epoch: The epoch whose weights ``model`` holds (``config.select_by``; the last
            epoch with ``"last"``).
        history: Per-epoch records.
        monitor: The gain monitor with the whole gain history.
        diagnosis: Diagnosis of the final gain curve.
        model: The trained model, with the selected epoch's weights.
        data: Summary of the data set used.
    """

    config: TrainConfig
    status: str
    reason: str
    history: list[dict[str, Any]]
    monitor: GainMonitor
    diagnosis: Diagnosis
    model: nn.Module
    data: dict[str, Any]
    selected_epoch: int | None = None

    @property
    def gains(self) -> list[float]:
        """The gain curve (dB)."""
        return [float(r["gain"]) for r in self.history]

    @property
    def label_noise(self) -> LabelNoise:
        """The label-noise diagnosis from the training predictions of every recorded epoch
        (:func:`gainsearch.core.noise.estimate_label_noise`): rate, kind, pairs."""
        return estimate_label_noise(self.history)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary: configuration, status, history, diagnosis."""
        return {
            "config": self.config.to_dict(),
            "data": self.data,
            "status": self.status,
            "reason": self.reason,
            "selected_epoch": self.selected_epoch,
            "label_noise": self.label_noise.to_dict(),
            "history": self.history,
            "diagnosis": self.diagnosis.to_dict(),
        }


def train_trial(
    config: TrainConfig | Mapping[str, Any],
    *,
    data: TensorData | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_path: str | Path | None = None,
    monitor: bool = True,
    stop_event: threading.Event | None = None,
) -> TrialResult:
    """Train one trial on the merged training set, measuring the Maximum Gain every epoch.

    Args:
        config: A :class:`TrainConfig` or a mapping of its fields.
        data: Pre-loaded data (default: ``load_dataset(config.dataset, config.data_root)``).
        callbacks: Called after every epoch (the diverged one included) with an
            :class:`EpochContext`; a returned string stops the trial with that reason (status
            ``"stopped"``); exceptions propagate (the epoch's checkpoint is already written).
        checkpoint_path: Write a checkpoint here every epoch; if the file exists the trial
            resumes from it (its configuration must match, except ``epochs`` which may grow).
        monitor: Measure the gain (``False`` only for overhead/identity comparisons).
        stop_event: Once set (e.g. by a signal handler), ``KeyboardInterrupt`` is raised at the
            next batch boundary: Ctrl-C at a safe point. The epoch under way is not recorded;
            the last epoch's checkpoint stands, so the trial resumes from it.

    Returns:
        A :class:`TrialResult`.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    data = (
        data
        if data is not None
        else load_dataset(cfg.dataset, cfg.data_root, image_size=cfg.image_size)
    )
    if data.name != cfg.dataset:
        raise ValueError(f"data is {data.name!r} but config.dataset={cfg.dataset!r}.")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.in_shape, data.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(data.x_train.shape[0] / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg, steps_per_epoch)
    )
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    augment = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    gain_monitor = GainMonitor(
        in_shape=data.in_shape,
        target=cfg.gain_target,  # type: ignore[arg-type]
        smoothing=cfg.gain_smoothing,
    )
    history: list[dict[str, Any]] = []
    status, reason, start_epoch = COMPLETED, "", 1
    selected_epoch: int | None = None  # the selection rule's epoch, and its weights (not "last")
    kept_weights: dict[str, torch.Tensor] | None = None
    held: dict[int, dict[str, torch.Tensor]] = {}  # weights the rule may still return to
    previous_predictions = None  # the last epoch's predicted class per training example

    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        _check_resumable(state, cfg, ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # absent in checkpoints of constant-rate versions
            scheduler.load_state_dict(state["scheduler"])
        gain_monitor.load_state_dict(state["monitor"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        shuffle.set_state(state["rng"]["shuffle"])
        if "augment" in state["rng"]:
            augment.set_state(state["rng"]["augment"])
        status, reason = state["status"], state["reason"]
        start_epoch = int(state["epoch"]) + 1
        kept = state.get("selection") or {}
        selected_epoch = kept.get("epoch", start_epoch - 1)
        kept_weights = kept.get("model")
        held = {int(e): w for e, w in (kept.get("held") or {}).items()}
        if kept_weights is not None and selected_epoch is not None:
            held.setdefault(int(selected_epoch), kept_weights)
        if kept.get("predictions") is not None:
            previous_predictions = kept["predictions"].numpy()
        logger.info("resumed %s at epoch %d (status %s)", ckpt, start_epoch, status)

    x_train = data.x_train.to(device)  # (N, C, H, W)
    y_train = data.y_train.to(device)  # (N,)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "16" else None

    def state_now(epoch: int) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": cfg.to_dict(),
            "data": data.summary(),
            "epoch": epoch,
            "status": status,
            "reason": reason,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "monitor": gain_monitor.state_dict(),
            "history": history,
            "selection": {
                "epoch": selected_epoch,
                "model": kept_weights,
                "held": {str(e): w for e, w in held.items()},
                "predictions": (
                    torch.from_numpy(previous_predictions)
                    if previous_predictions is not None
                    else None
                ),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": shuffle.get_state(),
                "augment": augment.get_state(),
            },
        }

    track_predictions = "prediction_changes" in cfg.signals
    # the label-noise fields (gainsearch.core.noise), from the same training pass: K <= 100
    track_noise = data.num_classes <= MAX_NOISE_CLASSES
    predictions = torch.full((x_train.shape[0],), -1, dtype=torch.long, device=device)
    example_losses = torch.full((x_train.shape[0],), math.nan, device=device)
    example_confidence = torch.zeros((x_train.shape[0],), device=device)
    epoch = start_epoch - 1
    if status == COMPLETED:
        for epoch in range(start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            predictions.fill_(-1)
            train_loss, lr_last, objective = train_epoch(
                model,
                optimizer,
                x_train,
                y_train,
                cfg,
                shuffle,
                stop_event,
                scheduler=scheduler,
                augment=augment if cfg.augment == "standard" else None,
                scaler=scaler,
                predictions=predictions if track_predictions or track_noise else None,
                losses=example_losses if track_noise else None,
                confidence=example_confidence if track_noise else None,
            )
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "lr": lr_last}
            if cfg.label_smoothing:
                record["train_objective"] = objective  # the smoothed loss that was optimised
            if monitor:
                reading = gain_monitor.measure(model, epoch)
                record.update(gain=reading.gain, gain_max=reading.gain_max, winner=reading.winner)
            if track_predictions or track_noise:
                now = predictions.cpu().numpy().copy()  # the buffer is refilled next epoch
                if track_predictions:
                    record["prediction_changes"] = prediction_changes(previous_predictions, now)
                if track_noise:
                    given = data.y_train.numpy()
                    record.update(
                        noise_record(
                            given,
                            now,
                            example_losses.cpu().numpy(),
                            example_confidence.cpu().numpy(),
                            data.num_classes,
                        )
                    )
                    record["changes_by_class"] = changes_by_class(
                        previous_predictions, now, given, data.num_classes
                    )
                previous_predictions = now
            record.update(_curve_signals(cfg, gain_monitor))
            if "gradient_disparity" in cfg.signals:
                record["gradient_disparity"] = measure_disparity(
                    model, x_train, y_train, cfg, epoch
                )
            if cfg.eval_test:
                test_loss, test_acc = evaluate_model(
                    model, data.x_test, data.y_test, cfg.batch_size
                )
                record.update(test_loss=test_loss, test_acc=test_acc)
            history.append(record)
            selection = None
            if not math.isfinite(train_loss) or (monitor and not math.isfinite(record["gain"])):
                what = "training loss" if not math.isfinite(train_loss) else "gain"
                status, reason = DIVERGED, f"{what} became non-finite at epoch {epoch}"
            else:  # a diverged epoch is never selected
                selection, hold = _select(cfg, history)
                if cfg.select_by != LAST:
                    if epoch in hold:
                        held[epoch] = {
                            k: v.detach().to("cpu", copy=True)
                            for k, v in model.state_dict().items()
                        }
                    held = {e: w for e, w in held.items() if e in hold}
                    kept_weights = held.get(selection.epoch)
                selected_epoch = selection.epoch
            record["selected_epoch"] = selected_epoch
            record["seconds"] = time.perf_counter() - started
            if ckpt is not None:
                _atomic_save(state_now(epoch), ckpt)
            context = EpochContext(
                epoch=epoch,
                record=record,
                history=history,
                monitor=gain_monitor,
                diverged=status == DIVERGED,
                model=model,
                optimizer=optimizer,
                config=cfg,
                selection=selection,
                _state=functools.partial(state_now, epoch),
            )
            stop = None
            for callback in callbacks:  # also on a diverged epoch, so adapters can report it
                stop = callback(context) or stop
            if status != COMPLETED:
                break
            patience_ran_out = selection.reason if selection is not None and selection.stop else ""
            if stop or patience_ran_out:
                if stop:
                    status, reason = STOPPED, str(stop)
                else:
                    rule = "auto" if cfg.select_by == AUTO else "patience"
                    status, reason = EARLY_STOPPED, f"{rule}: {patience_ran_out}"
                if ckpt is not None:
                    _atomic_save(state_now(epoch), ckpt)
                break
    if status != COMPLETED:
        logger.info("trial %s: %s", status, reason)
    if kept_weights is not None and selected_epoch != epoch:
        model.load_state_dict(kept_weights)  # the selected epoch's weights
    return TrialResult(
        config=cfg,
        status=status,
        reason=reason,
        history=history,
        monitor=gain_monitor,
        diagnosis=diagnose(
            gain_monitor.gains,
            epochs=gain_monitor.epochs,
            diverged_epoch=next(
                (r["epoch"] for r in history if not math.isfinite(r["train_loss"])), None
            ),
            train_loss=[r["train_loss"] for r in history],
        ),
        model=model,
        data=data.summary(),
        selected_epoch=selected_epoch,
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a trial checkpoint safely (``weights_only=True``: tensors and plain data only).

    Raises:
        ValueError: the file is missing, not a gainsearch checkpoint, or unsafe to load.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(
            f"checkpoint {path} is not a readable gainsearch checkpoint: it is loaded with "
            f"weights_only=True, which admits tensors and plain data only ({type(err).__name__})."
        ) from err
    required = {"version", "config", "epoch", "model", "optimizer", "monitor", "history", "rng"}
    if not isinstance(state, dict) or not required <= set(state):
        raise ValueError(
            f"checkpoint {path} is not a gainsearch trial checkpoint: expected keys "
            f"{sorted(required)}."
        )
    return state


def model_from_checkpoint(
    path: str | Path,
    *,
    in_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    weights: str = "selected",
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint written by :func:`train_trial` (on the CPU), rebuilt
    from the checkpoint's own configuration, and the checkpoint.

    Args:
        path: The ``checkpoint.pt``.
        in_shape: ``(C, H, W)``, for a checkpoint that does not record its data's shape.
        num_classes: Likewise for the number of classes.
        weights: ``"selected"`` (default): the weights of the epoch the trial kept
            (``select_by``; the last epoch's with ``select_by="last"``); ``"last"``: the last
            epoch's, from which the trial resumes.

    Raises:
        ValueError: as :func:`load_checkpoint`, or the shape is unknown.
    """
    if weights not in ("selected", "last"):
        raise ValueError(f"weights must be 'selected' or 'last', but got {weights=}.")
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    data = state.get("data") or {}
    shape = data.get("in_shape") or in_shape
    classes = data.get("num_classes") or num_classes
    if not shape or not classes:
        raise ValueError(
            f"checkpoint {path} does not record its input shape and classes: pass in_shape and "
            "num_classes."
        )
    model = build_model(config, shape, int(classes))
    kept = (state.get("selection") or {}).get("model")
    model.load_state_dict(kept if weights == "selected" and kept is not None else state["model"])
    return model, state


class GainHistory(NamedTuple):
    """A gain history read back from a file (:func:`read_history`)."""

    gains: list[float]
    epochs: list[int] | None
    diverged_epoch: int | None  # the first epoch whose training loss was non-finite
    train_loss: list[float] | None  # when every record has one


def read_history(path: str | Path) -> GainHistory:
    """Read a gain history: ``history.json`` written by ``gainsearch train``
    (:meth:`TrialResult.to_dict`), a JSON list of gains (dB), or a text file of one gain a line.

    Raises:
        ValueError: the file cannot be read or is none of these.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"history {path}: cannot read it: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            values = [float(line) for line in text.split() if line.strip()]
        except ValueError as err:
            raise ValueError(
                f"history {path} is neither JSON nor a text file of one gain (dB) per line: {err}"
            ) from err
        return GainHistory(values, None, None, None)
    return history_of(data, path)


def history_of(data: Any, path: str | Path = "<data>") -> GainHistory:
    """:func:`read_history` of JSON already parsed (``path`` names it in errors)."""
    if isinstance(data, dict) and isinstance(data.get("history"), list):
        records = data["history"]
        if not all(isinstance(r, dict) and "gain" in r for r in records):
            raise ValueError(f"history {path}: every record of 'history' needs a 'gain' entry.")
        diverged = next(
            (
                int(r["epoch"])
                for r in records
                if "train_loss" in r and not math.isfinite(float(r["train_loss"]))
            ),
            None,
        )
        with_losses = bool(records) and all("train_loss" in r for r in records)
        return GainHistory(
            [float(r["gain"]) for r in records],
            [int(r["epoch"]) for r in records] if all("epoch" in r for r in records) else None,
            diverged,
            [float(r["train_loss"]) for r in records] if with_losses else None,
        )
    if isinstance(data, list) and all(isinstance(v, (int, float)) for v in data):
        return GainHistory([float(v) for v in data], None, None, None)
    raise ValueError(
        f"history {path} must be a history.json written by `gainsearch train` (a mapping with a "
        "'history' list) or a JSON list of gains in dB."
    )


# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_model(cfg: TrainConfig, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The configuration's model (``model``, ``width``, ``dropout``, ``model_args``) for inputs of
    ``in_shape`` and ``num_classes`` classes, freshly initialised."""
    kwargs: dict[str, Any] = dict(cfg.model_args)
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    return create_model(cfg.model, tuple(in_shape), num_classes, width=cfg.width, **kwargs)


def _curve_signals(cfg: TrainConfig, gain_monitor: GainMonitor) -> dict[str, float]:
    """The latest value of each recorded signal of the gain curve (``nan`` before enough
    readings, or without a gain)."""
    out = {}
    gains, epochs = gain_monitor.gains, gain_monitor.epochs
    if "gain_variability" in cfg.signals:
        out["gain_variability"] = gain_variability(gains)[-1] if len(gains) else math.nan
    if "gain_trend" in cfg.signals:
        out["gain_trend"] = gain_trend(gains, epochs=epochs)[-1] if len(gains) else math.nan
    return out


def measure_disparity(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, epoch: int
) -> float:
    """Gradient disparity after ``epoch``: 5 batches of the trial's batch size (smaller on a
    small training set), un-augmented, in float32, drawn by a generator of their own."""
    batch = min(cfg.batch_size, x.shape[0] // DISPARITY_BATCHES)
    if batch < 1:
        return math.nan
    return gradient_disparity(model, x, y, batch_size=batch, seed=cfg.seed * 100_003 + epoch)


def _select(cfg: TrainConfig, history: Sequence[Mapping[str, Any]]) -> tuple[Selection, set[int]]:
    """The selection rule over the records so far (diverged ones excluded by the caller), and
    the epochs whose weights must still be held (the rule may return to any of them)."""
    if cfg.select_by == LAST:
        return Selection(int(history[-1]["epoch"]), math.nan, False), set()
    if cfg.select_by == AUTO:
        verdict = auto_verdict(history)
        return Selection(verdict.epoch, math.nan, verdict.stop, verdict.reason), set(verdict.keep)
    values = {int(r["epoch"]): float(r.get(cfg.select_by, math.nan)) for r in history}
    selection = select_epoch(
        values, select_by=cfg.select_by, window=cfg.select_window, patience=cfg.patience
    )
    return selection, {selection.epoch}


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configuration's optimizer (``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ...)
    over the model's parameters."""
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``cfg.lr``.

    A pure function of the step, so a resumed trial continues its schedule exactly: linear
    warm-up over ``warmup_epochs``, then ``constant`` (1), ``cosine`` (to 0 at the end of the
    budget) or ``onecycle`` (cosine up from 1/25 over the warm-up, or 30 % of the budget, then
    cosine down to 1/25e4, the shape of ``torch.optim.lr_scheduler.OneCycleLR``).
    """
    total = cfg.epochs * steps_per_epoch
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        start, end = 1.0 / 25.0, 1.0 / 25e4
        rise = warm if warm > 0 else round(0.3 * total)
        if step < rise:
            return start + (1.0 - start) * (1.0 - math.cos(math.pi * step / rise)) / 2.0
        t = min(1.0, (step - rise) / max(1, total - rise))
        return end + (1.0 - end) * (1.0 + math.cos(math.pi * t)) / 2.0
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return (1.0 + math.cos(math.pi * t)) / 2.0
    return 1.0


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The ``standard`` augmentation of a batch ``(N, C, H, W)``, on its device, no image loop.

    Random crop of the zero-padded image (``max(1, H // 8)`` pixels each side: 4 for 32x32,
    3 for 28x28, 1 for 8x8), and for colour images (``C == 3``) a random horizontal flip.
    Random numbers come from ``generator`` only (same seed, same batches).
    """
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H + 2p, W + 2p), zeros = training mean
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]  # (N, C, H, W)
    if c == 3:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    stop_event: threading.Event | None = None,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    augment: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    predictions: torch.Tensor | None = None,
    losses: torch.Tensor | None = None,
    confidence: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """One pass over the data: (the mean plain cross-entropy, NaN/inf if the epoch diverged;
    the learning rate the optimizer applied at the epoch's last step; the mean optimised loss,
    which differs from the first with label smoothing).

    The loss is summed on the model's device and read once per epoch: no host sync per step.
    The schedule steps after every batch. ``predictions`` (one entry per example) receives each
    example's predicted class from its training forward pass (train mode, augmented images, the
    weights of the moment), on the device; ``losses`` and ``confidence`` (optional, the same
    size) each example's plain cross-entropy and top softmax probability from that pass.
    ``KeyboardInterrupt`` before any batch once ``stop_event`` is set.
    """
    model.train()
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    ce_total = torch.zeros((), dtype=torch.float64, device=x.device)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(cfg.precision)
    lr = float(optimizer.param_groups[0]["lr"])
    for start in range(0, x.shape[0], cfg.batch_size):
        if stop_event is not None and stop_event.is_set():
            raise KeyboardInterrupt("stop requested")
        idx = order[start : start + cfg.batch_size]
        xb = x[idx] if augment is None else augment_batch(x[idx], augment)
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
        if predictions is not None:
            predictions[idx] = logits.detach().argmax(dim=1)
        if losses is not None and confidence is not None:
            with torch.no_grad():
                detached = logits.detach().float()
                log_p = detached.log_softmax(dim=1)
                losses[idx] = -log_p.gather(1, y[idx, None]).squeeze(1)  # per-example CE
                confidence[idx] = log_p.amax(dim=1).exp()
        if cfg.label_smoothing:
            with torch.no_grad():
                plain = F.cross_entropy(logits.float(), y[idx])
            ce_total += plain.to(torch.float64) * idx.numel()
        optimizer.zero_grad(set_to_none=True)
        lr = float(optimizer.param_groups[0]["lr"])  # what this step applies
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().to(torch.float64) * idx.numel()
    optimised = float(total) / x.shape[0]
    plain_mean = float(ce_total) / x.shape[0] if cfg.label_smoothing else optimised
    return plain_mean, lr, optimised


def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode; the model's mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        step = max(batch_size, 256)  # evaluation only: larger batches, same result
        for start in range(0, x.shape[0], step):
            xb, yb = (
                x[start : start + step].to(device),
                y[start : start + step].to(device),
            )
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return loss_sum / x.shape[0], correct / x.shape[0]


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    # a setting the checkpoint's version did not have yet had that version's behaviour: the
    # default (a constant-rate SGD checkpoint resumes as such)
    saved = {**TrainConfig().to_dict(), **state["config"]}
    current = cfg.to_dict()
    differ = sorted(
        k for k in current if k not in ("epochs", "threads") and saved.get(k) != current[k]
    )
    if differ:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differ)
        raise ValueError(
            f"checkpoint {path} belongs to a different trial ({pairs}); only 'epochs' may change "
            "on resume. Use another checkpoint path or delete this one."
        )


def _atomic_save(state: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
