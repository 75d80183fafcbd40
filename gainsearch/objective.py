"""Gain curve -> one scalar score, higher is better (the objective and intermediate value).

Default formula (``ScoreConfig``)::

    score = level - variability_weight * variability          # dB

with ``level`` the median gain of the last ``W`` epochs and ``variability`` the spread of the last
``W`` first differences (see :mod:`gainsearch.features`). A higher, saturated gain is a better
trained network (the paper's figures 8-13: the gain rises and flattens at a good learning rate,
stays low when training is too slow); a jagged curve is a learning rate that is too high. A
diverged curve scores ``nan`` (and is pruned by the decision core, never ranked).

Other metrics can be optimised instead (``metric=``), and several at once in multi-objective
studies: any numeric :class:`~gainsearch.features.CurveFeatures` field, e.g. ``level``
(maximise) with ``variability`` (minimise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gainsearch.features import CurveFeatures, DiagnosisConfig, compute_features

__all__ = ["METRICS", "ScoreConfig", "curve_metric", "gain_score"]

#: Metrics a study may optimise: the score and the numeric curve features.
METRICS = (
    "score",
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
) -> float:
    """One metric of :data:`METRICS` for a gain curve; ``nan`` if the curve diverged."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; available metrics are {list(METRICS)}.")
    feats = curve if isinstance(curve, CurveFeatures) else compute_features(curve, config=diagnosis)
    if name == "score":
        return gain_score(feats, config=config)
    if feats.diverged:
        return math.nan
    return float(getattr(feats, name))
