"""Optuna adapter: the gain as objective and pruning signal of your own training loop.

* :func:`report_gain`: the once-per-epoch call (evaluate, store, report, ask the pruner, raise
  ``optuna.TrialPruned`` with the reason);
* :class:`GainPruner`: an ``optuna.pruners.BasePruner`` over the decision core.

Both go through :func:`gainsearch.core.evaluation.evaluate`, against the peers it defines (the
study's other trials that reached the epoch: complete, pruned or running). The built-in trainer
as an objective and the study runner live in :mod:`gainsearch.search.run_optuna`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from gainsearch.core.decision import Decision, DecisionConfig, DecisionSettings, decide
from gainsearch.core.evaluation import Evaluation, evaluate
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.objective import ScoreConfig, TrialScoreConfig

__all__ = ["CURVE_ATTR", "GainPruner", "peer_curves", "report_gain"]

#: The user attribute that holds a trial's gain curve.
CURVE_ATTR = "gain_curve"
#: The trials that count as peers (see :mod:`gainsearch.core.evaluation`).
PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class GainPruner(DecisionSettings, BasePruner):
    """Prune trials on their gain curve against their peers at the same epoch.

    Diverged trials (a non-finite gain, or the trainer's ``diverged`` flag) are pruned at once.
    After ``warmup_epochs``, with at least ``min_peers`` other trials that reached the same
    epoch (complete, pruned or running), a trial is pruned when it is too variable (learning
    rate too high: the diagnosis's own definition) or the value it reported at this epoch (the
    study's objective: the trial score by default) is below the ``percentile``-th percentile of
    the peers' values at that epoch. See :mod:`gainsearch.core.decision` for the exact rules.

    The pruner reads what :func:`report_gain` stores; a trial reported with plain
    ``trial.report`` is an error.

    Takes the keyword arguments of :class:`~gainsearch.core.decision.DecisionSettings`
    (``warmup_epochs``, ``min_peers``, ``percentile``, ``variability_factor``,
    ``min_variability``, or a whole ``config``).
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decision(study, trial).prune

    def decision(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        """The decision core's verdict (with its reason) for ``trial`` at its last epoch."""
        pending = self.evaluations.pop(trial.number, None)
        if pending is not None and pending.epoch == trial.last_step:
            return pending.decision  # report_gain evaluated this very epoch
        if CURVE_ATTR not in trial.user_attrs:
            raise ValueError(
                f"GainPruner needs the trial's gain curve in user attribute {CURVE_ATTR!r}; report "
                "with gainsearch.integrations.optuna.report_gain(trial, monitor). The trial has "
                f"user attributes {sorted(trial.user_attrs)}."
            )
        curves, values = _peers(study, trial.number)
        single = len(study.directions) == 1 and bool(trial.intermediate_values)
        return decide(
            trial.user_attrs[CURVE_ATTR],
            curves,
            config=self.config,
            diverged=bool(trial.user_attrs.get("diverged", False)),
            values=_signed(study, _values(trial)) if single else None,
            peer_values=[_signed(study, v) for v in values] if single else None,
        )


def peer_curves(study: optuna.Study, exclude: int | None = None) -> list[list[float]]:
    """Gain curves of the study's peer trials (complete, pruned or running), but ``exclude``."""
    return _peers(study, exclude)[0]


def _peers(study: optuna.Study, exclude: int | None) -> tuple[list[list[float]], list[list[float]]]:
    """Gain curves and reported values per epoch (as reported) of the peer trials."""
    curves, values = [], []
    for t in study.get_trials(deepcopy=False, states=PEER_STATES):
        if t.number != exclude and CURVE_ATTR in t.user_attrs:
            curves.append(t.user_attrs[CURVE_ATTR])
            values.append(_values(t))
    return curves, values


def _values(trial: FrozenTrial) -> list[float]:
    """The trial's intermediate values by epoch (1..t); NaN where an epoch was not reported."""
    reported = trial.intermediate_values
    return [float(reported.get(e, math.nan)) for e in range(1, max(reported, default=0) + 1)]


def _signed(study: optuna.Study, values: list[float]) -> list[float]:
    minimise = study.direction == optuna.study.StudyDirection.MINIMIZE
    return [-v for v in values] if minimise else values


def report_gain(
    trial: optuna.Trial,
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    metric: str | Sequence[str] = "trial_score",
    diverged: bool = False,
    score_config: ScoreConfig | None = None,
    train_loss: Sequence[float] | float | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> float | tuple[float, ...]:
    """Report one epoch of a trial's gain to Optuna; prune if the study's pruner says so.

    Call it once per epoch after ``monitor.measure(model, epoch)``. It evaluates the epoch
    (:func:`gainsearch.core.evaluation.evaluate`, against the study's other trials), stores the
    gain curve, the features, the diagnosis and the decision's rule in user attributes, reports
    the metric as the intermediate value (single-objective studies), asks the study's pruner
    (multi-objective studies, where ``trial.report`` is unavailable, follow the decision core
    directly unless the pruner is a ``NopPruner``) and raises ``optuna.TrialPruned`` with the
    reason, stored as the user attributes ``prune_reason`` and ``prune_rule``. A diverged trial
    is always pruned.

    Args:
        trial: The running Optuna trial.
        monitor: The trial's :class:`GainMonitor` (or its gain curve).
        epoch: The epoch just measured (default: the monitor's last).
        metric: What the study optimises: ``"trial_score"`` (the default:
            :func:`gainsearch.trial_score`, which needs ``train_loss`` per epoch), ``"score"``
            (the gain score) or other :data:`~gainsearch.core.objective.METRICS` (a sequence
            for multi-objective studies, in the study's direction order).
        diverged: The training loss went non-finite (the trial cannot continue).
        score_config: Weights of the gain score (default: the pruner's, else the default).
        train_loss: The training loss per epoch so far (one per measured epoch; its last value
            alone is enough unless the metric is ``trial_score``). Also sharpens the diagnosis
            (a fitted training set reads as overfitting).
        trial_config: The trial score's form (default :class:`TrialScoreConfig`).

    Returns:
        The metric value(s) at this epoch.
    """
    if isinstance(monitor, GainMonitor):
        curve = [float(v) for v in monitor.gains]
        epoch = epoch if epoch is not None else (monitor.epochs[-1] if len(monitor) else 0)
    else:
        curve = [float(v) for v in monitor]
        epoch = epoch if epoch is not None else len(curve)
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    losses = None if train_loss is None or isinstance(train_loss, (int, float)) else train_loss
    if "trial_score" in metrics and losses is None:
        raise ValueError(
            "metric 'trial_score' needs the training loss of every epoch so far: pass "
            "train_loss=[...] to report_gain (or report metric='score', the gain score)."
        )
    study = trial.study
    pruner = study.pruner
    config = pruner.config if isinstance(pruner, GainPruner) else DecisionConfig()
    if score_config is not None:
        config = replace(config, score=score_config)
    multi = len(study.directions) > 1
    curves, values = _peers(study, trial.number)
    evaluation = evaluate(
        curve,
        train_loss=losses,
        peers=curves,
        peer_values=None if multi else values,
        metric=metrics[0],
        mode="min" if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else "max",
        diverged=diverged,
        config=config,
        trial_config=trial_config,
    )
    out = tuple(evaluation.metric_value(m) for m in metrics)
    trial.set_user_attr(CURVE_ATTR, curve)
    trial.set_user_attr("features", _jsonable(evaluation.features.to_dict()))
    record = evaluation.record()
    for key in ("diagnosis", "diagnosis_reason", "decision_rule", "decision_reason"):
        trial.set_user_attr(key, record[key])
    if diverged:
        trial.set_user_attr("diverged", True)
    if not multi:
        trial.report(out[0], epoch)
    rule, reason = _prune(trial, pruner, evaluation, multi, epoch)
    if reason:
        trial.set_user_attr("prune_rule", rule)
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)
    return out[0] if len(out) == 1 else out


def _prune(
    trial: optuna.Trial, pruner: BasePruner, evaluation: Evaluation, multi: bool, epoch: int
) -> tuple[str, str]:
    """(rule, reason) when the trial is to be pruned, else empty strings."""
    decision = evaluation.decision
    if decision.rule == "diverged" or (multi and not isinstance(pruner, NopPruner)):
        return (decision.rule, decision.reason) if decision.prune else ("", "")
    if multi:
        return "", ""
    if isinstance(pruner, GainPruner):
        pruner.evaluations[trial.number] = evaluation  # prune() reads it: one evaluation
    if not trial.should_prune():
        return "", ""
    if isinstance(pruner, GainPruner) and decision.prune:
        return decision.rule, decision.reason
    return "pruner", f"pruned by {type(pruner).__name__} at epoch {epoch}"


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
    }
