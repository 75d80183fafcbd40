"""Validation-free stopping signals beside the gain: pure functions of predictions, of a model
and a batch, or of the gain curve. The selection rule that turns them into a kept epoch is
:mod:`gainsearch.core.selection`; the built-in trainer records them every epoch.

* :func:`prediction_changes` and :class:`PredictionChanges` (Yuan, Feng & Liu, ICLR 2025, "Label
  Wave"): at epoch ``e``, the number of training examples whose predicted class differs from
  their prediction at epoch ``e - 1``. The predictions are the ones the training forward passes
  made (train mode: dropout and augmentation as they happened, the weights of the moment the
  batch was seen), so the signal is free. The first epoch has no previous one: ``nan``.
  :func:`label_wave_epoch` is the paper's rule: the epoch of the minimum of the moving average.
* :func:`gradient_disparity` (Forouzesh & Thiran, 2021): the L2 distance between the loss
  gradients (with respect to the parameters) of two disjoint training batches, averaged over
  ``pairs`` pairs. The batches are drawn with a generator of its own (``seed``); the model is
  left exactly as it was: no parameter ``.grad`` written, train/eval modes and BatchNorm buffers
  restored, the global RNG untouched.
* :func:`gain_variability` and :func:`gain_trend`: the gain's own stopping rule (the paper,
  section IV-C1: "flat, then variable"; and a rise after a plateau) as per-epoch signals.
* :class:`Indexed`: a dataset wrapper that adds each example's index, for an own loop's or a
  LightningModule's prediction changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "DISPARITY_BATCHES",
    "GAIN_WINDOW",
    "Indexed",
    "PredictionChanges",
    "changes_by_class",
    "gain_trend",
    "gain_variability",
    "gradient_disparity",
    "label_wave_epoch",
    "moving_average",
    "prediction_changes",
]

#: Gradient disparity's batches per epoch: the paper's ``s = 5`` (10 pairs).
DISPARITY_BATCHES = 5
#: The gain signals' window (epochs), the diagnosis's ``W`` (:class:`DiagnosisConfig`).
GAIN_WINDOW = 5


def prediction_changes(previous: np.ndarray | None, current: np.ndarray) -> float:
    """How many examples changed their predicted class since the previous epoch.

    Args:
        previous: The predicted class of every training example at the previous epoch (``-1``
            where an example was not seen), or ``None`` at the first epoch.
        current: The same at this epoch.

    Returns:
        The count of examples seen at both epochs whose class differs; ``nan`` without a
        previous epoch.

    Raises:
        ValueError: the two do not have one entry per example each.
    """
    now = np.asarray(current).ravel()
    if previous is None:
        return math.nan
    before = np.asarray(previous).ravel()
    if before.shape != now.shape:
        raise ValueError(
            f"previous and current must have one prediction per training example each, but "
            f"got {before.size} and {now.size}."
        )
    seen = (before >= 0) & (now >= 0)
    return float(np.count_nonzero(before[seen] != now[seen]))


def changes_by_class(
    previous: np.ndarray | None, current: np.ndarray, given: np.ndarray, num_classes: int
) -> list[int] | None:
    """:func:`prediction_changes` per given label: ``[count for label 0, 1, ...]`` (``None``
    without a previous epoch). Per-class changes can still fall where one class's wrong labels
    are memorised (class-dependent noise) while the total settles."""
    if previous is None:
        return None
    before, now = np.asarray(previous).ravel(), np.asarray(current).ravel()
    labels = np.asarray(given).ravel()
    if not before.shape == now.shape == labels.shape:
        raise ValueError(
            f"previous, current and given must have one entry per training example each, but "
            f"got {before.size}, {now.size} and {labels.size}."
        )
    changed = (before >= 0) & (now >= 0) & (before != now)
    return np.bincount(labels[changed], minlength=num_classes).astype(int).tolist()


class PredictionChanges:
    """The prediction changes of an own training loop, from its batches' indices and logits.

    Call :meth:`update` after each training forward pass and :meth:`end_epoch` at the end of
    the epoch::

        changes = PredictionChanges(len(train_set))
        for epoch in range(1, epochs + 1):
            for idx, (x, y) in loader:             # idx: the examples' indices in train_set
                logits = model(x)
                ...
                changes.update(idx, logits)
            value = changes.end_epoch()            # nan at epoch 1

    Args:
        n: The number of training examples; ``None``: grown to the largest index seen.
    """

    def __init__(self, n: int | None = None) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer (the training set's size), got {n=}.")
        self.n = n
        self._previous: np.ndarray | None = None
        self._current = np.full(n or 0, -1, dtype=np.int64)
        #: The value of every finished epoch, in order.
        self.history: list[float] = []

    @property
    def seen(self) -> int:
        """Examples with a prediction in the epoch under way."""
        return int(np.count_nonzero(self._current >= 0))

    def state_dict(self) -> dict[str, object]:
        """What a resumed run needs (the last epoch's predictions, the history)."""
        return {
            "previous": None if self._previous is None else self._previous.tolist(),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        previous = state.get("previous")
        self._previous = None if previous is None else np.asarray(previous, dtype=np.int64)
        self.history = [float(v) for v in state.get("history", [])]  # type: ignore[attr-defined]
        self._current = np.full(self._size(), -1, dtype=np.int64)

    def _size(self) -> int:
        return self.n or (0 if self._previous is None else self._previous.size)

    def update(self, indices: torch.Tensor | Sequence[int], logits: torch.Tensor) -> None:
        """Record the predicted class (argmax of ``logits``, ``(B, K)``) of the batch's examples."""
        idx = torch.as_tensor(indices).detach().cpu().long().numpy().ravel()
        pred = logits.detach().argmax(dim=1).cpu().numpy().ravel()
        if idx.size != pred.size:
            raise ValueError(
                f"indices and logits must describe the same batch, but got {idx.size} indices "
                f"and {pred.size} rows of logits."
            )
        if idx.size and (idx.min() < 0 or (self.n is not None and idx.max() >= self.n)):
            raise ValueError(f"indices must be in [0, {self.n}), but got {idx.min()}..{idx.max()}.")
        if idx.size and idx.max() >= self._current.size:  # n=None: grow
            grown = np.full(int(idx.max()) + 1, -1, dtype=np.int64)
            grown[: self._current.size] = self._current
            self._current = grown
        self._current[idx] = pred

    def end_epoch(self) -> float:
        """The epoch's prediction changes (``nan`` at the first epoch); starts the next epoch."""
        current = self._current
        if self._previous is not None and self._previous.size != current.size:  # n=None
            size = max(self._previous.size, current.size)
            self._previous, current = (_pad(a, size) for a in (self._previous, current))
        value = prediction_changes(self._previous, current)
        self._previous = current
        self._current = np.full(self.n or current.size, -1, dtype=np.int64)
        self.history.append(value)
        return value


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    out = np.full(size, -1, dtype=np.int64)
    out[: values.size] = values
    return out


class Indexed(torch.utils.data.Dataset):
    """A dataset whose items are ``(index, *item)``: the example's index first, so that a
    training step can hand :class:`PredictionChanges` (or ``GainCallback``) the indices of its
    batch. ``Indexed(TensorDataset(x, y))[i] == (i, x[i], y[i])``."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[object, ...]:
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)


def moving_average(series: Sequence[float], window: int) -> np.ndarray:
    """The trailing mean over ``window`` values (fewer at the start); ``nan`` values skipped."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, but got {window=}.")
    values = np.asarray(series, dtype=np.float64).ravel()
    out = np.full(values.size, math.nan)
    for i in range(values.size):
        chunk = values[max(0, i - window + 1) : i + 1]
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            out[i] = float(finite.mean())
    return out


def label_wave_epoch(
    changes: Sequence[float], *, window: int = 3, epochs: Sequence[int] | None = None
) -> int | None:
    """Label Wave's selected epoch: where the moving average of the prediction changes is
    lowest (the first such epoch); ``None`` while no epoch has a value."""
    smooth = moving_average(changes, window)
    if not np.any(np.isfinite(smooth)):
        return None
    numbers = list(epochs) if epochs is not None else list(range(1, smooth.size + 1))
    if len(numbers) != smooth.size:
        raise ValueError(f"epochs must have one entry per value ({smooth.size}), got {numbers}.")
    return int(numbers[int(np.nanargmin(smooth))])


def gradient_disparity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
    batches: int = DISPARITY_BATCHES,
    seed: int = 0,
) -> float:
    """Mean L2 distance between the parameter gradients of every pair of ``batches`` disjoint
    training batches (5 batches: the 10 pairs among them, as the paper's ``s = 5``).

    The batches (``batch_size`` examples each, drawn without replacement) come from ``(x, y)``
    with a generator seeded by ``seed``; each gradient is that of the batch's mean loss
    (unnormalised). The forward passes run in the model's current mode (the training mode, as
    the training loss's gradients do), and the model is left as it was: no ``.grad`` written,
    modes and buffers (BatchNorm statistics) restored, the global RNG state restored (dropout
    draws from it inside). A non-finite gradient gives ``nan``. Costs ``batches`` forward and
    backward passes.

    Raises:
        ValueError: fewer than ``batches * batch_size`` examples, or a bad setting.
    """
    for name, setting in (("batch_size", batch_size), ("batches", batches)):
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={setting!r}.")
    if batches < 2:
        raise ValueError(f"batches must be at least 2 (a pair), but got {batches=}.")
    n = int(x.shape[0])
    if n < batches * batch_size:
        raise ValueError(
            f"gradient_disparity needs {batches} disjoint batches of batch_size={batch_size}, "
            f"but the data has {n} examples."
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    generator = torch.Generator().manual_seed(seed)
    devices = [x.device] if x.device.type == "cuda" else []
    order = torch.randperm(n, generator=generator)[: batches * batch_size].to(x.device)
    grads = []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        for part in order.split(batch_size):
            loss = loss_fn(model(x[part]), y[part])
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    for module, training in modes.items():
        module.train(training)
    stacked = torch.stack(grads).double()
    mean = float(torch.pdist(stacked).mean())  # the L2 distance of every pair
    return mean if math.isfinite(mean) else math.nan


def gain_variability(
    gains: Sequence[float] | np.ndarray, *, window: int = GAIN_WINDOW
) -> list[float]:
    """The paper's "flat, then variable" as a per-epoch signal: at each epoch, the spread
    (standard deviation) of the gain's last ``window`` epoch-to-epoch differences (dB/epoch),
    ``nan`` until two differences exist. Lowest on a flat, calm stretch; it rises when the gain
    turns variable, the paper's "strong overfitting, time to stop"."""
    g = np.asarray(gains, dtype=np.float64).ravel()
    diffs = np.diff(g)
    out = [math.nan] * g.size
    for i in range(2, g.size):  # epoch index i has differences diffs[: i]
        chunk = diffs[max(0, i - window) : i]
        out[i] = float(np.std(chunk)) if np.all(np.isfinite(chunk)) else math.nan
    return out


def gain_trend(
    gains: Sequence[float] | np.ndarray,
    *,
    epochs: Sequence[int] | None = None,
    window: int = GAIN_WINDOW,
) -> list[float]:
    """The gain's "rise after a plateau" as a per-epoch signal: at each epoch, the
    least-squares slope (dB/epoch) of the gain over its last ``window`` readings, ``nan`` until
    three readings exist. Lowest on the plateau; it rises when the gain climbs again."""
    g = np.asarray(gains, dtype=np.float64).ravel()
    e = np.asarray(epochs if epochs is not None else range(1, g.size + 1), dtype=np.float64)
    if e.size != g.size:
        raise ValueError(f"epochs must have one entry per gain ({g.size}), got {e.size}.")
    out = [math.nan] * g.size
    for i in range(2, g.size):
        lo = max(0, i - window + 1)
        ys, xs = g[lo : i + 1], e[lo : i + 1]
        if np.all(np.isfinite(ys)):
            xc = xs - xs.mean()
            out[i] = float(np.dot(xc, ys - ys.mean()) / np.dot(xc, xc))
    return out
