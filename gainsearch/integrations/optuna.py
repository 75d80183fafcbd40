"""Optuna adapter: the trial score (the training loss; :func:`gainsearch.trial_score`) as the
objective and the pruning signal of your own training loop, with the gain curve's diagnosis.

* :func:`report_gain`: the once-per-epoch call (evaluate, store, report, ask the pruner, raise
  ``optuna.TrialPruned`` with the reason);
* :class:`GainPruner`: an ``optuna.pruners.BasePruner`` over the decision core.

Both go through :func:`gainsearch.core.evaluation.evaluate`, against the peers it defines (the
study's other trials that reached the epoch: complete, pruned or running). The built-in trainer
as an objective and the study runner live in :mod:`gainsearch.search.run_optuna`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from gainsearch.core.decision import DIVERGED, Decision, DecisionConfig
from gainsearch.core.evaluation import Evaluation, evaluate
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.objective import ScoreConfig, TrialScoreConfig, canonical_metric
from gainsearch.integrations._settings import decision_config

__all__ = [
    "CURVE_ATTR",
    "EPOCHS_ATTR",
    "LOSS_ATTR",
    "GainPruner",
    "peer_curves",
    "record_gain",
    "report_epoch",
    "report_gain",
]

#: The user attribute that holds a trial's gain curve (dB, one per measured epoch).
CURVE_ATTR = "gain_curve"
#: The user attribute that holds the epoch numbers of the gain curve.
EPOCHS_ATTR = "gain_epochs"
#: The user attribute that holds the training loss of each measured epoch.
LOSS_ATTR = "train_loss"
#: The user attribute that names the metric reported as the intermediate value.
METRIC_ATTR = "gain_metric"
#: The user attribute set on a trial whose training loss went non-finite.
DIVERGED_ATTR = "diverged"
#: The trials that count as peers (see :mod:`gainsearch.core.evaluation`).
PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class GainPruner(BasePruner):
    """Prune trials on their gain curve against their peers at the same epoch.

    Diverged trials (a non-finite gain, or the trainer's ``diverged`` flag) are pruned at once.
    From epoch ``grace_period`` on, with at least ``min_peers`` other trials that reached the
    same epoch (complete, pruned or running), a trial is pruned when it is too variable
    (learning rate too high: the diagnosis's own definition) or the value it reported at this
    epoch (the study's objective: the trial score by default) is below the ``percentile``-th
    percentile of the peers' values at that epoch. See :mod:`gainsearch.core.decision` for the
    exact rules; epochs are Optuna's steps, compared by number.

    Like Optuna's own pruners, the decision is a function of what the study holds: the trial's
    gain curve (user attributes :data:`CURVE_ATTR` and :data:`EPOCHS_ATTR`, written by
    :func:`record_gain`), its intermediate values and its peers'. So ``report_gain(trial,
    monitor, ...)`` and ``record_gain(trial, monitor); trial.report(value, epoch);
    trial.should_prune()`` give the same decisions. A trial without a stored gain curve is an
    error that says how to store one.

    Args:
        grace_period: The first epoch (step) at which a trial may be pruned for anything but
            divergence (Optuna's ``n_warmup_steps``, Ray Tune's ``grace_period``).
        min_peers: Peers that reached the same epoch needed before comparing.
        percentile: Prune below this percentile of the peers' values (0-100).
        variability_factor: Too variable above this multiple of the peers' median variability.
        min_variability: ...and above this floor (dB/epoch), with a fall of as many dB.
        config: A whole :class:`~gainsearch.core.decision.DecisionConfig` instead.
    """

    def __init__(
        self,
        *,
        grace_period: int = 1,
        min_peers: int = 3,
        percentile: float = 50.0,
        variability_factor: float | None = None,
        min_variability: float | None = None,
        config: DecisionConfig | None = None,
    ) -> None:
        self.config = decision_config(
            grace_period=grace_period,
            min_peers=min_peers,
            percentile=percentile,
            variability_factor=variability_factor,
            min_variability=min_variability,
            config=config,
        )

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decision(study, trial).prune

    def decision(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        """The decision core's verdict (with its rule and reason) for ``trial`` at its last
        reported epoch."""
        return self.evaluation(study, trial).decision

    def evaluation(self, study: optuna.Study, trial: FrozenTrial) -> Evaluation:
        """The trial's evaluation at its last reported epoch, from what the study holds."""
        return _evaluate(study, trial, self.config)


def _evaluate(study: optuna.Study, trial: FrozenTrial, config: DecisionConfig) -> Evaluation:
    """Evaluate ``trial`` at its last step (or its last reading, with no step) from the study."""
    attrs = trial.user_attrs
    if CURVE_ATTR not in attrs:
        raise ValueError(
            f"GainPruner needs the trial's gain curve in user attribute {CURVE_ATTR!r}: report "
            "with gainsearch.integrations.optuna.report_gain(trial, monitor, ...), or call "
            "record_gain(trial, monitor) before trial.report and trial.should_prune. The trial "
            f"has user attributes {sorted(attrs)}."
        )
    epochs, curve = _series(trial)
    step = trial.last_step
    if step is not None:  # judged at the epoch reported last
        keep = [i for i, e in enumerate(epochs) if e <= step]
        epochs, curve = [epochs[i] for i in keep], [curve[i] for i in keep]
    stored = attrs.get(LOSS_ATTR)  # non-finite losses are stored as None
    losses = (
        [math.nan if v is None else float(v) for v in stored[: len(curve)]]
        if isinstance(stored, list)
        else None
    )
    single = len(study.directions) == 1 and step is not None
    peers, values = _peers(study, trial.number)
    reported = trial.intermediate_values.get(step) if step is not None else None
    metric = str(attrs.get(METRIC_ATTR, "value"))
    if single and epochs and epochs[-1] != step:
        single = False  # no reading at the reported epoch: judge the curve on its gain score
    return evaluate(
        curve,
        train_loss=losses if losses is not None and len(losses) == len(curve) else None,
        epochs=epochs,
        peers=peers,
        peer_values=values if single else None,
        metric=metric if single else "gain_score",
        mode=_mode(study),
        value=float(reported) if single and reported is not None else None,
        diverged=bool(attrs.get(DIVERGED_ATTR, False)),
        config=config,
    )


def _series(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    """The trial's measured epochs and gains (epochs 1..t for a curve stored without them)."""
    curve = [math.nan if v is None else float(v) for v in trial.user_attrs[CURVE_ATTR]]
    epochs = trial.user_attrs.get(EPOCHS_ATTR)
    if not isinstance(epochs, list) or len(epochs) != len(curve):
        epochs = list(range(1, len(curve) + 1))
    return [int(e) for e in epochs], curve


def _mode(study: optuna.Study) -> str:
    return "min" if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else "max"


def peer_curves(study: optuna.Study, exclude: int | None = None) -> list[dict[int, float]]:
    """Gain curves (``{epoch: gain}``) of the study's peer trials (complete, pruned or
    running), but ``exclude``."""
    return _peers(study, exclude)[0]


def _peers(
    study: optuna.Study, exclude: int | None
) -> tuple[list[dict[int, float]], list[dict[int, float]]]:
    """Gain curves and reported values, by epoch number, of the peer trials."""
    curves, values = [], []
    for t in study.get_trials(deepcopy=False, states=PEER_STATES):
        if t.number != exclude and CURVE_ATTR in t.user_attrs:
            epochs, curve = _series(t)
            curves.append(dict(zip(epochs, curve, strict=True)))
            values.append({int(k): float(v) for k, v in t.intermediate_values.items()})
    return curves, values


def record_gain(
    trial: optuna.Trial,
    monitor: GainMonitor | Sequence[float],
    *,
    epochs: Sequence[int] | None = None,
    train_loss: Sequence[float] | None = None,
    diverged: bool = False,
) -> tuple[list[int], list[float]]:
    """Store the trial's gain curve in its user attributes, where :class:`GainPruner` reads it.

    :func:`report_gain` calls it; call it yourself when you report with ``trial.report`` and
    ask ``trial.should_prune()``: the pruner then decides exactly as with ``report_gain``.

    Args:
        trial: The running Optuna trial.
        monitor: The trial's :class:`GainMonitor` (its epochs are stored) or its gain curve.
        epochs: The epoch numbers of a plain curve (default ``1..t``).
        train_loss: The training loss of each measured epoch (for the diagnosis).
        diverged: The training loss went non-finite (the pruner then prunes at once).

    Returns:
        The epochs and the gains stored.
    """
    if isinstance(monitor, GainMonitor):
        curve, numbers = [float(v) for v in monitor.gains], list(monitor.epochs)
    else:
        curve = [float(v) for v in monitor]
        numbers = list(range(1, len(curve) + 1)) if epochs is None else [int(e) for e in epochs]
    if len(numbers) != len(curve) or any(b <= a for a, b in itertools.pairwise(numbers)):
        raise ValueError(
            f"epochs must be strictly increasing, one per gain reading ({len(curve)}), but got "
            f"epochs={numbers!r}."
        )
    trial.set_user_attr(CURVE_ATTR, [v if math.isfinite(v) else None for v in curve])
    trial.set_user_attr(EPOCHS_ATTR, numbers)
    if train_loss is not None:
        trial.set_user_attr(LOSS_ATTR, [float(v) if math.isfinite(v) else None for v in train_loss])
    if diverged:
        trial.set_user_attr(DIVERGED_ATTR, True)
    return numbers, curve


def report_gain(
    trial: optuna.Trial,
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    metric: str | Sequence[str] = "trial_score",
    diverged: bool = False,
    train_loss: Sequence[float] | float | None = None,
    config: DecisionConfig | None = None,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> float | tuple[float, ...]:
    """Report one epoch of a trial's gain to Optuna; prune if the study's pruner says so.

    Call it once per epoch after ``monitor.measure(model, epoch)``. It stores the gain curve
    (:func:`record_gain`), evaluates the epoch (:func:`gainsearch.core.evaluation.evaluate`,
    against the study's other trials at the same epoch numbers) and stores the features and the
    diagnosis in user attributes, reports the metric as the intermediate value at step
    ``epoch`` (single-objective studies), asks the study's pruner and raises
    ``optuna.TrialPruned`` with the reason, stored as the user attributes ``prune_reason`` and
    ``prune_rule`` (the decision's rule and reason are stored every epoch as ``decision_rule``
    and ``decision_reason``). A diverged trial is always pruned. Multi-objective studies, where
    ``trial.report`` is unavailable, follow the decision core directly unless the pruner is a
    ``NopPruner``.

    Args:
        trial: The running Optuna trial.
        monitor: The trial's :class:`GainMonitor` (or its gain curve, entries = epochs 1..t).
        epoch: The epoch just measured (default: the monitor's last); it must be the curve's
            last epoch.
        metric: What the study optimises: ``"trial_score"`` (the default:
            :func:`gainsearch.trial_score`, which needs ``train_loss`` per epoch),
            ``"gain_score"`` (the gain score) or other
            :data:`~gainsearch.core.objective.METRICS` (a sequence for multi-objective studies,
            in the study's direction order).
        diverged: The training loss went non-finite (the trial cannot continue).
        train_loss: The training loss of each measured epoch so far (its last value alone is
            enough unless the metric is ``trial_score``). Also sharpens the diagnosis.
        config: The settings of the diagnosis stored with the trial. Default: the study's
            pruner's when it is a :class:`GainPruner` (read from ``trial.study.pruner``, so that
            the diagnosis and the pruner agree), else :class:`DecisionConfig`'s defaults. The
            decision to prune is always the study's pruner's.
        score_config: Weights of the gain score (replaces ``config.score``).
        trial_config: The trial score's form (default :class:`TrialScoreConfig`).

    Returns:
        The metric value(s) at this epoch.

    Raises:
        ValueError: the metric needs ``train_loss``, or ``epoch`` is not the curve's last epoch.
        optuna.TrialPruned: the pruner pruned the trial (the message is the reason).
    """
    value, decision = report_epoch(
        trial,
        monitor,
        epoch,
        metric=metric,
        diverged=diverged,
        train_loss=train_loss,
        config=config,
        score_config=score_config,
        trial_config=trial_config,
    )
    if decision.prune:
        raise optuna.TrialPruned(decision.reason)
    return value


def report_epoch(
    trial: optuna.Trial,
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    metric: str | Sequence[str] = "trial_score",
    diverged: bool = False,
    train_loss: Sequence[float] | float | None = None,
    config: DecisionConfig | None = None,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> tuple[float | tuple[float, ...], Decision]:
    """:func:`report_gain` without the raise: the value(s) reported and the decision acted on
    (its ``prune``, ``rule`` and ``reason``), for callers that act on it themselves (Lightning's
    :class:`~gainsearch.integrations.lightning.GainCallback`). Same arguments."""
    metrics = tuple(canonical_metric(m) for m in ((metric,) if isinstance(metric, str) else metric))
    losses = None if train_loss is None or isinstance(train_loss, (int, float)) else train_loss
    if "trial_score" in metrics and losses is None:
        raise ValueError(
            "metric 'trial_score' needs the training loss of every measured epoch so far: pass "
            "train_loss=[...] to report_gain (or report metric='gain_score', the gain score)."
        )
    study = trial.study
    pruner = study.pruner
    if isinstance(monitor, GainMonitor) or epoch is None:
        epochs, curve = record_gain(trial, monitor, train_loss=losses, diverged=diverged)
    else:  # a plain curve reported at ``epoch``: its readings end there
        t = len(monitor)
        epochs, curve = record_gain(
            trial,
            monitor,
            epochs=_epochs_ending(trial, t, int(epoch)),
            train_loss=losses,
            diverged=diverged,
        )
    epoch = epochs[-1] if epoch is None and epochs else epoch
    if epochs and epoch != epochs[-1]:
        raise ValueError(
            f"epoch must be the last measured epoch ({epochs[-1]}), but got epoch={epoch!r}."
        )
    multi = len(study.directions) > 1
    epoch = int(epoch or 0)
    if not multi and isinstance(pruner, GainPruner) and config is None and score_config is None:
        # the pruner's own evaluation (from the study, after the report) is the record: the
        # values reported do not depend on the peers, so the peers are read once
        alone = evaluate(
            curve,
            train_loss=losses,
            epochs=epochs,
            metric=metrics[0],
            diverged=diverged,
            config=pruner.config,
            trial_config=trial_config,
        )
        out = tuple(alone.metric_value(m) for m in metrics)
        trial.set_user_attr(METRIC_ATTR, metrics[0])
        trial.report(out[0], epoch)
        evaluation = pruner.evaluation(study, _frozen(trial))
        decision = evaluation.decision
    else:
        if config is None:
            config = pruner.config if isinstance(pruner, GainPruner) else DecisionConfig()
        if score_config is not None:
            config = replace(config, score=score_config)
        curves, values = _peers(study, trial.number)
        evaluation = evaluate(
            curve,
            train_loss=losses,
            epochs=epochs,
            peers=curves,
            peer_values=None if multi else values,
            metric=metrics[0],
            mode=_mode(study),
            diverged=diverged,
            config=config,
            trial_config=trial_config,
        )
        out = tuple(evaluation.metric_value(m) for m in metrics)
        if not multi:
            trial.set_user_attr(METRIC_ATTR, metrics[0])
            trial.report(out[0], epoch)
        decision = _decision(trial, pruner, evaluation, multi, epoch)
    trial.set_user_attr("features", _jsonable(evaluation.features.to_dict()))
    trial.set_user_attr("diagnosis", evaluation.diagnosis.label)
    trial.set_user_attr("diagnosis_reason", evaluation.diagnosis.reason)
    trial.set_user_attr("decision_rule", decision.rule)
    trial.set_user_attr("decision_reason", decision.reason)
    if decision.prune:
        trial.set_user_attr("prune_rule", decision.rule)
        trial.set_user_attr("prune_reason", decision.reason)
    return (out[0] if len(out) == 1 else out), decision


def _epochs_ending(trial: optuna.Trial, t: int, epoch: int) -> list[int]:
    """Epoch numbers for a plain curve of ``t`` readings that ends at ``epoch``: the epochs
    stored before, then ``epoch`` (``1..t`` when they do not fit)."""
    before = trial.user_attrs.get(EPOCHS_ATTR) if hasattr(trial, "user_attrs") else None
    if isinstance(before, list) and len(before) == t - 1 and (not before or before[-1] < epoch):
        return [*(int(e) for e in before), epoch]
    if t and epoch >= t:
        return [*range(1, t), epoch]
    return list(range(1, t + 1))


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    """The running trial as the study holds it now (what ``trial.should_prune`` passes)."""
    return next(
        t
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.number == trial.number
    )


def _decision(
    trial: optuna.Trial, pruner: BasePruner, evaluation: Evaluation, multi: bool, epoch: int
) -> Decision:
    """The decision acted on: the study's pruner's (a GainPruner's with its rule and reason)."""
    own = evaluation.decision
    if own.rule == DIVERGED or multi:
        if own.prune and (own.rule == DIVERGED or not isinstance(pruner, NopPruner)):
            return own
        return Decision(False, own.rule, own.reason, own.epoch, own.value, own.peers)
    if isinstance(pruner, GainPruner):  # the pruner's verdict, from what the study now holds
        return pruner.decision(trial.study, _frozen(trial))
    name = type(pruner).__name__
    if trial.should_prune():
        return Decision(True, "pruner", f"pruned by {name} at epoch {epoch}", epoch)
    return Decision(False, "pruner", f"{name} continues at epoch {epoch}", epoch)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
    }
