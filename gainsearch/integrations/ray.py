"""Ray Tune adapter: the trial score (the training loss; :func:`gainsearch.trial_score`) as the
metric and stopping signal of your own Tune trainable, with the gain curve's diagnosis.

* :func:`report_gain`: the once-per-epoch call inside a function trainable
  (``ray.tune.report(metrics, checkpoint=...)``);
* :class:`GainScheduler`: a ``TrialScheduler`` over the decision core, the twin of
  :class:`~gainsearch.integrations.optuna.GainPruner`;
* :class:`GainResults`: a Tune callback that stores each epoch's diagnosis and the decision's
  rule in the trial's results (``result.json``, ``Result.metrics``).

The scheduler evaluates every result with :func:`gainsearch.core.evaluation.evaluate` against the
trials that reached the same epoch (running or finished), the peers of the Optuna back end too.
A trainable cannot see its peers, so :func:`report_gain` diagnoses without them; ``GainResults``
replaces that diagnosis with the scheduler's. The built-in trainable and the runner live in
:mod:`gainsearch.search.run_ray`. Needs ``pip install gainsearch[ray]``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gainsearch.core.decision import DIVERGED, DecisionConfig
from gainsearch.core.evaluation import Evaluation, evaluate
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.objective import ScoreConfig, TrialScoreConfig
from gainsearch.integrations._settings import decision_config

try:
    from ray import tune
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gainsearch.integrations.ray needs Ray Tune: pip install 'gainsearch[ray]'"
    ) from err

__all__ = ["GainResults", "GainScheduler", "gain_metrics", "report_gain"]

logger = logging.getLogger(__name__)

#: The result keys of the trial score and of the gain score.
TRIAL_SCORE = "trial_score"
SCORE = "gain_score"


class GainScheduler(FIFOScheduler):
    """Stop trials on their gain curve against their peers at the same epoch.

    A thin adapter over :func:`gainsearch.core.evaluation.evaluate`: diverged trials are stopped
    at once; after ``grace_period`` epochs, with at least ``min_peers`` other trials that reached
    the same epoch (running or finished), a trial is stopped when it is too variable (learning
    rate too high) or its ``metric`` (the trial score in the built-in runner) is below the
    ``percentile``-th percentile of the peers' at that epoch. Each result's evaluation is kept
    in :attr:`evaluations` (trial id -> the latest) and the reasons of the stopped trials in
    :attr:`stop_reasons`; add :class:`GainResults` to the run's callbacks to store them in the
    results.

    Each result must carry ``epoch`` and ``gain`` (and may carry ``train_loss`` and
    ``diverged``), as :func:`report_gain` reports. A result without them is an error listing the
    keys it has. ``epoch`` is the epoch number (Tune's ``time_attr``): a trainable may report
    every k-th epoch, or first after epoch 1, and is compared with its peers at the same epoch
    numbers. A restarted trial that reports an epoch again replaces its curve from that epoch
    on.

    Args:
        grace_period: The first epoch at which a trial may be stopped for anything but
            divergence.
        metric: The result key Tune optimises (set here or once in ``TuneConfig``): the
            percentile rule compares its value with the peers' at the same epoch (results
            without it: the gain score of the curves).
        mode: ``"max"`` or ``"min"`` for ``metric``.
        **settings: The decision core's other settings (``min_peers``, ``percentile``,
            ``variability_factor``, ``min_variability``, or a whole ``config``), as
            :class:`~gainsearch.integrations.optuna.GainPruner` takes them.
    """

    def __init__(
        self,
        *,
        grace_period: int = 1,
        metric: str | None = None,
        mode: str | None = None,
        **settings: Any,
    ) -> None:
        FIFOScheduler.__init__(self)
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', but got mode={mode!r}.")
        if settings.get("config") is None and (
            isinstance(grace_period, bool) or not isinstance(grace_period, int) or grace_period < 1
        ):  # Ray's name, and the decision core's
            raise ValueError(
                f"grace_period must be an integer >= 1, but got grace_period={grace_period!r}."
            )
        self.config = decision_config(grace_period=grace_period, **settings)
        self._metric = metric
        self._mode = mode
        #: trial id -> {epoch: value}: gain, training loss, the optimised metric (as reported)
        self.curves: dict[str, dict[int, float]] = {}
        self.losses: dict[str, dict[int, float]] = {}
        self.values: dict[str, dict[int, float]] = {}
        #: trial id -> its latest evaluation
        self.evaluations: dict[str, Evaluation] = {}
        self.stop_reasons: dict[str, str] = {}

    @property
    def mode(self) -> str | None:
        """``"max"`` or ``"min"`` for :attr:`metric` (``None`` until set)."""
        return self._mode

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if self._metric and metric and metric != self._metric:
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return (
            TrialScheduler.STOP if self.observe(trial.trial_id, result) else TrialScheduler.CONTINUE
        )

    def record(self, trial_id: str, result: dict[str, Any]) -> tuple[int, bool]:
        """Add one result to the trial's series (no decision); (epoch, the metric is in it)."""
        if "epoch" not in result or "gain" not in result:
            raise ValueError(
                "GainScheduler needs 'epoch' and 'gain' in every result (report them with "
                f"gainsearch.integrations.ray.report_gain); the result has {sorted(result)}."
            )
        epoch = int(result["epoch"])
        _extend(self.curves, trial_id, epoch, result["gain"])
        _extend(self.losses, trial_id, epoch, result.get("train_loss"))
        has_metric = bool(self._metric) and self._metric in result
        if has_metric:
            _extend(self.values, trial_id, epoch, result[str(self._metric)])
        return epoch, has_metric

    def observe(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record and evaluate one result of ``trial_id``; True when the trial should stop."""
        _, has_metric = self.record(trial_id, result)
        curve = self.curves[trial_id]
        losses = list(self.losses[trial_id].values())
        others = [tid for tid in self.curves if tid != trial_id]
        metric = str(self._metric) if has_metric else "gain_score"
        evaluation = evaluate(
            list(curve.values()),
            epochs=list(curve),
            train_loss=losses if all(math.isfinite(v) for v in losses) else None,
            peers=[self.curves[tid] for tid in others],
            peer_values=[self.values.get(tid, {}) for tid in others] if has_metric else None,
            metric=metric,
            mode=self._mode or "max",
            value=_number(result[metric]) if has_metric else None,
            diverged=bool(result.get("diverged")),
            config=self.config,
        )
        self.evaluations[trial_id] = evaluation
        if evaluation.decision.prune:
            self.stop_reasons[trial_id] = evaluation.decision.reason
            logger.info("stopping trial %s: %s", trial_id, evaluation.decision.reason)
        return evaluation.decision.prune

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        """Write what the scheduler has seen (every trial's series, the stop reasons, its metric
        and mode) to ``checkpoint_path``, as JSON (``TrialScheduler.save``, as ASHA has it).

        Tune 2.60 itself never calls a scheduler's ``save`` or ``restore`` (its controller
        pickles the scheduler with the run's configuration when the run starts), so the
        built-in runner rebuilds the series of a resumed run from the results on disk instead.
        """
        state = {
            "metric": self._metric,
            "mode": self._mode,
            "curves": self.curves,
            "losses": self.losses,
            "values": self.values,
            "stop_reasons": self.stop_reasons,
        }
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        """Read back what :meth:`save` wrote; the next result is judged as if the scheduler
        had never stopped."""
        state = json.loads(Path(checkpoint_path).read_text())
        self._metric, self._mode = state["metric"], state["mode"]
        for name in ("curves", "losses", "values"):
            series = {
                tid: {int(e): float(v) for e, v in s.items()} for tid, s in state[name].items()
            }
            setattr(self, name, series)
        self.stop_reasons = dict(state["stop_reasons"])

    def debug_string(self) -> str:
        return f"GainScheduler: {len(self.stop_reasons)} trial(s) stopped early."


class GainResults(tune.Callback):
    """Store each epoch's evaluation in the trial's result: ``diagnosis``,
    ``diagnosis_reason``, ``decision_rule``, ``decision_reason`` and, when the trial is stopped,
    ``prune_rule`` and ``prune_reason`` (so that ``Result.metrics`` and ``result.json`` hold
    them; Tune lets callbacks add to a result).

    Args:
        scheduler: The run's :class:`GainScheduler`. With another scheduler (or none) the
            callback evaluates the results itself against the same peers, for the diagnosis,
            and records a stop before ``budget`` epochs as rule ``pruner``.
        budget: The epoch budget (for stops by other schedulers).
        metric: With another scheduler: the metric it compares (default: its public
            ``metric``), for the diagnosis's percentile rule.
        mode: With another scheduler: ``"max"`` or ``"min"`` for ``metric``.
    """

    def __init__(
        self,
        scheduler: Any = None,
        budget: int | None = None,
        *,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        self.gain = scheduler if isinstance(scheduler, GainScheduler) else None
        if self.gain is None and scheduler is not None and metric is None:
            metric = getattr(scheduler, "metric", None)  # TrialScheduler's public property
        self.book = self.gain or GainScheduler(metric=metric, mode=mode)
        self.name = type(scheduler).__name__ if scheduler is not None else "no"
        self.budget = budget

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        if "epoch" not in result or "gain" not in result:
            return
        if self.gain is None:
            self.book.observe(trial.trial_id, result)
        evaluation = self.book.evaluations.get(trial.trial_id)
        if evaluation is None:
            return
        record = evaluation.record()
        if self.gain is None and evaluation.decision.rule != DIVERGED:
            # the diagnosis is ours, the decision (but divergence) another scheduler's
            record.pop("prune_rule", None)
            record.pop("prune_reason", None)
            epoch = int(result["epoch"])
            if result.get("done") and self.budget is not None and epoch < self.budget:
                record.update(
                    prune_rule="pruner",
                    prune_reason=f"stopped at epoch {epoch} by the {self.name} scheduler",
                )
        result.update(record)


def _extend(
    store: dict[str, dict[int, float]], trial_id: str, epoch: int, value: Any
) -> dict[int, float]:
    """``store[trial_id]`` without its readings from ``epoch`` on (a restarted trial reports an
    epoch again), then ``value`` (``None`` -> NaN) at ``epoch``."""
    series = {e: v for e, v in store.get(trial_id, {}).items() if e < epoch}
    series[epoch] = _number(value)
    store[trial_id] = series
    return series


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def gain_metrics(
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    train_loss: Sequence[float],
    diverged: bool = False,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> dict[str, Any]:
    """The metrics one epoch reports to Tune (see :func:`report_gain`), without reporting."""
    if isinstance(monitor, GainMonitor):
        curve = [float(v) for v in monitor.gains]
        epochs: list[int] | None = monitor.epochs
    else:
        curve, epochs = [float(v) for v in monitor], None
    epoch = epoch if epoch is not None else (epochs[-1] if epochs else len(curve))
    config = DecisionConfig(score=score_config or ScoreConfig())
    evaluation = evaluate(
        curve,
        train_loss=train_loss,
        epochs=epochs,
        diverged=diverged,
        config=config,
        trial_config=trial_config,
    )
    losses = [float(v) for v in train_loss]
    return {
        "epoch": int(epoch),
        "gain": _finite(curve[-1]) if curve else None,
        **evaluation.metrics(),
        # NaN, not None, when diverged: OptunaSearch reports it to Optuna, which takes floats
        # only (and records the diverged trial as failed in its study)
        TRIAL_SCORE: evaluation.trial_score,
        SCORE: evaluation.gain_score,
        "diagnosis": evaluation.diagnosis.label,
        "train_loss": _finite(losses[-1]) if losses else None,
        "diverged": bool(diverged or not math.isfinite(evaluation.trial_score)),
    }


def report_gain(
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    train_loss: Sequence[float],
    diverged: bool = False,
    checkpoint: Any = None,
    extra: dict[str, Any] | None = None,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> dict[str, Any]:
    """Report one epoch of your own training loop to Ray Tune (the twin of the Optuna helper).

    Call it inside a Tune function trainable once per epoch, after
    ``monitor.measure(model, epoch)``. It reports ``epoch``, ``gain``, ``trial_score`` (the
    value the built-in runner optimises, :func:`gainsearch.trial_score`), ``gain_score``,
    ``level``, ``trend``, ``variability``, ``saturation``, ``diagnosis`` (without peers: see
    :class:`GainResults`), ``train_loss`` and ``diverged`` (plus ``extra``) with
    ``ray.tune.report(metrics, checkpoint=checkpoint)``, so that :class:`GainScheduler`
    (``metric="trial_score"``) can stop the trial. A diverged trial reports ``trial_score`` NaN
    and ``diverged`` True, and GainScheduler stops it.

    Args:
        monitor: The trial's :class:`~gainsearch.GainMonitor` (or its gain curve).
        epoch: The epoch just measured (default: the monitor's last).
        train_loss: The training loss of every measured epoch so far.
        diverged: The training loss went non-finite.
        checkpoint: A ``ray.tune.Checkpoint`` to report with the metrics.
        extra: More metrics to report (e.g. your own accuracy, for logging only).
        score_config: Weights of the gain score.
        trial_config: The trial score's form.

    Returns:
        The metrics reported.
    """
    metrics = gain_metrics(
        monitor,
        epoch,
        train_loss=train_loss,
        diverged=diverged,
        score_config=score_config,
        trial_config=trial_config,
    )
    metrics.update(extra or {})
    tune.report(metrics, checkpoint=checkpoint)
    return metrics


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
