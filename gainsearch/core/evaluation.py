"""One evaluation per epoch: features, scores, diagnosis and decision from one call. Pure.

Every adapter (Optuna's ``report_gain`` and ``GainPruner``, Ray's ``report_gain`` and
``GainScheduler``, Lightning's ``GainCallback``) calls :func:`evaluate` once per epoch and
stores what it returns, so the numbers a trial reports, the diagnosis it is given and the
decision taken on it come from the same features of the same curve, against the same peers::

    curve, training losses, peers, config
        -> features -> trial score, gain score -> diagnosis -> decision

**Epochs are numbers.** A trial is evaluated at its latest epoch number (the last of
``epochs``) and compared with its peers at the same epoch numbers (see
:mod:`gainsearch.core.decision`), so a loop that measures every second epoch, or first reports
after epoch 1, is judged as one that measures every epoch would be at those epochs.

**Peers** are the other trials of the study that reached this epoch, whatever became of them
since: finished (complete or pruned) or still running. Both back ends use this set (Optuna's
``GainPruner`` reads them from the study, Ray's ``GainScheduler`` from the results it has seen):
it is what a scheduler of asynchronous trials can see, so parallel trials are compared from the
first wave on instead of waiting for some to finish, and a trial's verdict depends only on the
curves at that epoch, not on which peers happened to have ended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gainsearch.core.decision import Decision, DecisionConfig, decide
from gainsearch.core.features import DIVERGED, CurveFeatures, Diagnosis, diagnose
from gainsearch.core.objective import (
    METRICS,
    TrialScoreConfig,
    canonical_metric,
    curve_metric,
    gain_score,
)
from gainsearch.core.series import Series, align, by_epoch

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """A trial at one epoch: what it reports, how it is diagnosed and whether it goes on.

    Attributes:
        epoch: The epoch number judged (the last measured).
        features: Features of the gain curve.
        trial_score: :func:`gainsearch.trial_score` (``nan`` without training losses).
        gain_score: The gain score of the curve.
        value: The value of ``metric`` (the study's objective), as the study reads it.
        metric: The metric ``value`` is.
        diagnosis: Against the same peers as the decision.
        decision: Prune or continue, the rule and the reason.
    """

    epoch: int
    features: CurveFeatures
    trial_score: float
    gain_score: float
    value: float
    metric: str
    diagnosis: Diagnosis
    decision: Decision

    def metric_value(self, name: str) -> float:
        """The value of any metric of :data:`~gainsearch.core.objective.METRICS` at this epoch
        (``nan`` when the trial diverged)."""
        name = canonical_metric(name)
        if name == "trial_score":
            return self.trial_score
        if name == "gain_score":
            return self.gain_score
        if self.features.diverged or self.decision.rule == DIVERGED:
            return math.nan
        return float(getattr(self.features, name))

    def metrics(self) -> dict[str, float | None]:
        """The numbers a trial reports each epoch (``None`` for non-finite ones)."""
        f = self.features
        values = {
            "trial_score": self.trial_score,
            "gain_score": self.gain_score,
            "level": f.level,
            "trend": f.trend,
            "variability": f.variability,
            "saturation": f.saturation,
        }
        return {k: (v if math.isfinite(v) else None) for k, v in values.items()}

    def record(self) -> dict[str, Any]:
        """What is stored with the trial (Optuna user attributes, Ray results): the diagnosis,
        its reason, the decision's rule and reason, and ``prune_reason`` when it prunes."""
        out: dict[str, Any] = {
            "diagnosis": self.diagnosis.label,
            "diagnosis_reason": self.diagnosis.reason,
            "decision_rule": self.decision.rule,
            "decision_reason": self.decision.reason,
        }
        if self.decision.prune:
            out["prune_rule"] = self.decision.rule
            out["prune_reason"] = self.decision.reason
        return out


def evaluate(
    curve: Sequence[float] | np.ndarray,
    *,
    train_loss: Sequence[float] | None = None,
    epochs: Sequence[int] | None = None,
    peers: Sequence[Series] = (),
    peer_values: Sequence[Series] | None = None,
    metric: str = "trial_score",
    mode: str = "max",
    value: float | None = None,
    diverged: bool = False,
    config: DecisionConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> Evaluation:
    """Evaluate a trial after its latest epoch.

    Args:
        curve: The trial's gains (dB), one per epoch so far.
        train_loss: The training loss of every epoch so far (one per reading; needed for
            ``trial_score``, and it sharpens the diagnosis).
        epochs: The epoch numbers of ``curve`` (strictly increasing; default ``1..t``).
        peers: The gain curves of the other trials (the peer set of the module docstring), each
            ``{epoch: gain}`` or a sequence for epochs 1, 2, ...; compared at ``epochs``.
        peer_values: Their ``metric`` by epoch, as reported (in the study's direction), in the
            same form. With them the percentile rule compares ``metric`` at the last epoch;
            without them the gain scores.
        metric: One of :data:`gainsearch.core.objective.METRICS` (any name with ``value``).
        mode: ``"max"`` or ``"min"``: the direction the study optimises ``metric`` in.
        value: This epoch's value of ``metric`` as the trial reported it (default: computed
            here, for the metrics of ``METRICS``).
        diverged: The training loss went non-finite.
        config: The decision core's settings (with the diagnosis's and the gain score's).
        trial_config: The trial score's form.

    Raises:
        ValueError: unknown metric or mode, or ``train_loss`` does not match ``curve``.
    """
    cfg = config or DecisionConfig()
    if value is None and metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; available metrics are {list(METRICS)}.")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', but got mode={mode!r}.")
    gains = [float(v) for v in np.asarray(curve, dtype=np.float64).ravel()]
    losses = None if train_loss is None else [float(v) for v in train_loss]
    if losses is not None and len(losses) != len(gains):
        raise ValueError(
            f"train_loss has {len(losses)} value(s) but the gain curve {len(gains)}: pass the "
            "training loss of every measured epoch."
        )
    t = len(gains)
    numbers = [int(e) for e in epochs] if epochs is not None else list(range(1, t + 1))
    e = numbers[-1] if numbers else 0
    aligned = align(peers, numbers) if len(numbers) == t else []  # else diagnose raises
    diag = diagnose(
        gains,
        peers=[list(head.values()) for head in aligned],  # the peers at this trial's epochs
        epochs=numbers,
        config=cfg.diagnosis,
        min_peers=cfg.min_peers,
        diverged_epoch=e if diverged else None,
        train_loss=losses,
    )
    feats = diag.features
    score = (
        curve_metric("trial_score", gains, train_loss=losses, trial=trial_config)
        if losses is not None
        else math.nan
    )
    if diverged:
        score = math.nan
    gscore = gain_score(feats, config=cfg.score)
    if value is None:
        value = {"trial_score": score, "gain_score": gscore}.get(metric)
    if value is None:
        value = math.nan if diverged else curve_metric(metric, feats, config=cfg.score)
    value = float(value)
    sign = -1.0 if mode == "min" else 1.0
    own = None
    if peer_values is not None:  # this epoch's value, against the peers' at the same epoch
        own = {e: sign * value}
        peer_values = [{k: sign * v for k, v in by_epoch(p).items()} for p in peer_values]
    decision = decide(
        gains,
        aligned,
        epochs=numbers,
        config=cfg,
        diverged=diverged,
        values=own,
        peer_values=peer_values,
        features=feats,
        metric=metric,
        variability=diag.variability,  # computed once, for the diagnosis and the decision
    )
    return Evaluation(
        epoch=e,
        features=feats,
        trial_score=score,
        gain_score=gscore,
        value=value,
        metric=metric,
        diagnosis=diag,
        decision=decision,
    )
