"""Per-epoch records -> one scalar score, higher is better (the objective and intermediate value).

**The trial score** (:func:`trial_score`, metric ``trial_score``, the default of both back
ends)::

    trial_score = -log10(final training loss) + gain_weight * gain score / 20   # decades

with ``gain_weight = 0`` by default: **the training loss alone**, NaN for a diverged trial (a
non-finite loss or gain). ``benchmarks/suite.py`` compared every candidate on 12 set-ups, each
constant chosen on set-ups it was not scored on (docs/evidence.md): no way of adding the gain
(at every epoch, only in the first epochs, as a stability guard; impulse or smoothed gain) beat
the training loss held out, in final selection, early ranking or pruning, and adding it at every
epoch lost to it. So the gain is not in the default score. ``TrialScoreConfig`` keeps the form
for those who want to try it (``gain_weight``, and ``early_epochs`` to count it only early).

**The gain score** (metric ``gain_score``, formerly ``score``, the paper-based objective of earlier
versions)::

    score = level - variability_weight * variability          # dB

with ``level`` the median gain of the last ``W`` epochs and ``variability`` the spread of the last
``W`` first differences (see :mod:`gainsearch.core.features`). A higher, saturated gain is a better
trained network (the paper's figures 8-13: the gain rises and flattens at a good learning rate,
stays low when training is too slow); a jagged curve is a learning rate that is too high. A
diverged curve scores ``nan`` (and is pruned by the decision core, never ranked).

Other metrics can be optimised instead (``metric=``), and several at once in multi-objective
studies: any numeric :class:`~gainsearch.core.features.CurveFeatures` field, e.g. ``level``
(maximise) with ``variability`` (minimise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gainsearch.core.features import CurveFeatures, DiagnosisConfig, compute_features

__all__ = [
    "METRICS",
    "ScoreConfig",
    "TrialScoreConfig",
    "canonical_metric",
    "curve_metric",
    "gain_score",
    "trial_score",
]

#: Metrics a study may optimise: the trial score, the gain score and the numeric curve features.
METRICS = (
    "trial_score",
    "gain_score",
    "level",
    "last",
    "peak",
    "rise",
    "trend",
    "early_trend",
    "variability",
    "early_variability",
    "saturation",
)


def canonical_metric(name: str) -> str:
    """``name``, checked: one of :data:`METRICS`.

    Raises:
        ValueError: ``name`` is not a metric of :data:`METRICS`.
    """
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; available metrics are {list(METRICS)}.")
    return name


@dataclass(frozen=True)
class ScoreConfig:
    """Weights of the gain score.

    Attributes:
        variability_weight: dB of score lost per dB/epoch of variability.
    """

    variability_weight: float = 1.0

    def __post_init__(self) -> None:
        w = self.variability_weight
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(
                f"variability_weight must be a non-negative number, but got "
                f"variability_weight={w!r}."
            )


@dataclass(frozen=True)
class TrialScoreConfig:
    """Form of :func:`trial_score`. The default (the training loss alone) is what the held-out
    comparison of ``benchmarks/suite.py`` supports; see the module docstring.

    Attributes:
        gain_weight: Decades of score per 20 dB of gain score (0, the default: the training
            loss alone).
        early_epochs: The gain term counts while the history has at most this many epochs;
            ``None``: at every epoch.
    """

    gain_weight: float = 0.0
    early_epochs: int | None = 3

    def __post_init__(self) -> None:
        w = self.gain_weight
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(
                f"gain_weight must be a non-negative number, but got gain_weight={w!r}."
            )
        e = self.early_epochs
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise ValueError(
                f"early_epochs must be a positive integer or None, but got early_epochs={e!r}."
            )


def trial_score(
    history: Sequence[Mapping[str, Any]], *, config: TrialScoreConfig | None = None
) -> float:
    """The value both back ends optimise, from a trial's per-epoch records (higher is better).

    Args:
        history: One record per epoch so far, oldest first, each with at least ``train_loss``
            and ``gain`` (``TrialResult.history``; your own loop: ``{"train_loss": ...,
            "gain": reading.gain}``).
        config: The score's form (default :class:`TrialScoreConfig`).

    Returns:
        ``-log10(last train_loss) + gain_weight * gain_score(gains) / 20`` (the gain term only in
        the first ``early_epochs`` epochs); ``nan`` for an empty or diverged history (a
        non-finite loss or gain).

    Raises:
        ValueError: a record lacks ``train_loss`` or ``gain``.
    """
    cfg = config or TrialScoreConfig()
    losses, gains = [], []
    for i, record in enumerate(history):
        missing = [k for k in ("train_loss", "gain") if k not in record]
        if missing:
            raise ValueError(
                f"trial_score needs 'train_loss' and 'gain' in every record, but record {i} "
                f"has {sorted(record)}."
            )
        losses.append(float(record["train_loss"]))
        gains.append(float(record["gain"]))
    if not losses or not all(math.isfinite(v) for v in losses + gains):
        return math.nan
    value = -math.log10(max(losses[-1], 1e-12))  # a loss of exactly 0 counts as 1e-12
    early = cfg.early_epochs is None or len(gains) <= cfg.early_epochs
    if cfg.gain_weight and early:
        value += cfg.gain_weight * gain_score(gains) / 20.0
    return float(value)


def gain_score(
    curve: Sequence[float] | np.ndarray | CurveFeatures,
    *,
    config: ScoreConfig | None = None,
    diagnosis: DiagnosisConfig | None = None,
) -> float:
    """The score of a gain curve (or of its features): higher is better; ``nan`` if diverged."""
    cfg = config or ScoreConfig()
    feats = curve if isinstance(curve, CurveFeatures) else compute_features(curve, config=diagnosis)
    if feats.diverged or not math.isfinite(feats.level):
        return math.nan
    return float(feats.level - cfg.variability_weight * feats.variability)


def curve_metric(
    name: str,
    curve: Sequence[float] | np.ndarray | CurveFeatures,
    *,
    config: ScoreConfig | None = None,
    diagnosis: DiagnosisConfig | None = None,
    train_loss: Sequence[float] | None = None,
    trial: TrialScoreConfig | None = None,
) -> float:
    """One metric of :data:`METRICS` for a gain curve; ``nan`` if the curve diverged.

    ``trial_score`` also needs ``train_loss`` (one value per epoch) and the raw ``curve``.
    """
    name = canonical_metric(name)
    if name == "trial_score":
        if train_loss is None or isinstance(curve, CurveFeatures):
            raise ValueError(
                "metric 'trial_score' needs the gain curve and the training loss per epoch "
                "(train_loss=...)."
            )
        gains = [float(v) for v in np.asarray(curve, dtype=np.float64).ravel()]
        losses = [float(v) for v in train_loss]
        if len(losses) != len(gains):
            raise ValueError(
                f"train_loss has {len(losses)} value(s) but the gain curve {len(gains)}: one "
                "training loss per measured epoch is needed for 'trial_score'."
            )
        records = [{"train_loss": v, "gain": g} for v, g in zip(losses, gains, strict=True)]
        return trial_score(records, config=trial)
    feats = curve if isinstance(curve, CurveFeatures) else compute_features(curve, config=diagnosis)
    if name == "gain_score":
        return gain_score(feats, config=config)
    if feats.diverged:
        return math.nan
    return float(getattr(feats, name))
