"""Which epoch's weights a trial keeps, and when it stops: the selection rule. Pure.

A *stopping signal* is a per-epoch number computed from the training data alone
(:mod:`gainsearch.core.signals`); every one of them is lower when it is better (:data:`SIGNALS`).
The rule, for ``select_by = s`` with smoothing ``window`` and ``patience``:

1. smooth the signal's curve with a trailing mean over ``window`` readings (``1``: the raw
   values; ``nan`` readings are skipped);
2. the *selected epoch* is the first epoch of the lowest smoothed value among the epochs
   trained so far (before any finite reading, the latest epoch);
3. with ``patience = p``, the trial stops once the latest epoch is ``p`` or more epochs after the
   selected one (``p`` epochs without improvement, counted in epoch numbers).

A trailing mean never changes a past value, so the selected epoch only ever moves to the latest
epoch: a trainer keeps the weights of an epoch when it becomes the selected one, and restores
them at the end. ``select_by = "last"`` keeps the last epoch (no stop): the behaviour without a
stopping signal.

Without patience the lowest value over the whole budget is kept. Prediction changes fall again
once the noisy labels are memorised (the predictions settle), so their rule is a stopping rule:
Label Wave stops at the first minimum that holds for ``patience`` epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gainsearch.core.series import Series, by_epoch
from gainsearch.core.signals import moving_average

__all__ = [
    "AUTO",
    "LAST",
    "SELECT_BY",
    "SIGNALS",
    "Selection",
    "check_selection",
    "select_epoch",
]

LAST = "last"

#: The stopping signals, what each measures and where it comes from (every one: lower is better).
SIGNALS: dict[str, str] = {
    "prediction_changes": (
        "training examples whose predicted class changed since the previous epoch (Label Wave, "
        "Yuan, Feng & Liu, ICLR 2025); free: the training forward passes' predictions"
    ),
    "gradient_disparity": (
        "mean L2 distance between the loss gradients of 5 disjoint training batches' pairs "
        "(Forouzesh & Thiran, 2021); 5 extra forward and backward passes per epoch"
    ),
    "gain_variability": (
        "spread of the gain's last 5 differences (dB/epoch): the paper's 'flat, then variable'; "
        "free: from the gain curve"
    ),
    "gain_trend": (
        "slope of the gain over its last 5 epochs (dB/epoch): a rise after a plateau; free"
    ),
}

#: The label-noise diagnosis picks the rule per trial (:func:`gainsearch.core.noise.auto_verdict`).
AUTO = "auto"

#: Every ``select_by``: the last epoch, a signal, or ``auto``.
SELECT_BY = (LAST, *SIGNALS, AUTO)


@dataclass(frozen=True)
class Selection:
    """The selection rule's verdict after the latest epoch.

    Attributes:
        epoch: The selected epoch (whose weights are kept).
        value: The smoothed signal at that epoch (``nan`` for ``last`` or before a reading).
        stop: Patience ran out: stop training now.
        reason: Why it stops, in words (empty when it does not).
    """

    epoch: int
    value: float
    stop: bool
    reason: str = ""


def check_selection(select_by: object, patience: object, window: object) -> None:
    """Raise the one-line ``ValueError`` for a bad ``select_by``, ``patience`` or ``window``."""
    if select_by not in SELECT_BY:
        raise ValueError(
            f"select_by must be one of {', '.join(map(repr, SELECT_BY))}, but got "
            f"select_by={select_by!r}."
        )
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ValueError(
            f"patience must be a positive integer (epochs without improvement) or None (no "
            f"early stop), but got patience={patience!r}."
        )
    if patience is not None and select_by == LAST:
        raise ValueError(
            f"patience={patience} needs a stopping signal to wait on: set select_by to one of "
            f"{', '.join(map(repr, SIGNALS))} (select_by='last' never stops early)."
        )
    if select_by == AUTO and (patience is not None or window != 1):
        raise ValueError(
            f"select_by='auto' picks its own rule per trial (prediction changes with a window "
            f"of 3 and patience 3 under symmetric noise, the noise-rate criterion under "
            f"class-dependent noise, the last epoch for clean labels): leave patience and "
            f"select_window unset, but got patience={patience!r}, select_window={window!r}."
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(
            f"select_window must be a positive integer (readings in the trailing mean, 1: the "
            f"raw signal), but got select_window={window!r}."
        )


def select_epoch(
    values: Series,
    *,
    select_by: str,
    window: int = 1,
    patience: int | None = None,
    epochs: Sequence[int] | None = None,
) -> Selection:
    """The selected epoch of a signal's curve (see the module docstring).

    Args:
        values: The signal per epoch: ``{epoch: value}`` or a sequence for epochs ``1, 2, ...``
            (ignored for ``select_by="last"`` except for its epochs).
        select_by: ``"last"`` or a name in :data:`SIGNALS`.
        window: The trailing mean's readings.
        patience: Epochs without improvement before stopping; ``None``: never stop.
        epochs: For ``"last"`` without values: the epochs trained.

    Raises:
        ValueError: a bad setting, or no epoch at all.
    """
    check_selection(select_by, patience, window)
    if select_by == AUTO:
        raise ValueError(
            "select_by='auto' reads whole records (gainsearch.core.noise.auto_verdict), not "
            "one signal's curve."
        )
    series = by_epoch(values)
    numbers = sorted(series) if series else sorted(int(e) for e in (epochs or ()))
    if not numbers:
        raise ValueError("select_epoch needs at least one epoch.")
    latest = numbers[-1]
    if select_by == LAST:
        return Selection(latest, math.nan, False)
    smooth = moving_average([series.get(e, math.nan) for e in numbers], window)
    if not np.any(np.isfinite(smooth)):
        return Selection(latest, math.nan, False)
    best = int(np.nanargmin(smooth))
    epoch = numbers[best]
    stop = patience is not None and latest - epoch >= patience
    reason = (
        f"{select_by} has not improved for {latest - epoch} epochs since epoch {epoch} "
        f"(patience {patience})"
        if stop
        else ""
    )
    return Selection(epoch, float(smooth[best]), stop, reason)
