"""One record of a trial, the same on both back ends: what a built-in trial reports each epoch,
the one row builder from what a trial reported, the best trial, and the study writer.

The way back out of a trial has three steps, each written once here:

1. **Each epoch** a built-in trial reports the fields of :func:`epoch_fields` (the training loss,
   the stopping signals, the kept epoch, the label-noise estimate, ...), the metric of that epoch,
   and the metric at the epoch it keeps so far (:meth:`TrialRecorder.kept`: what Optuna's sampler
   is returned and what Ray's searcher learns). The Optuna back end stores the fields in the
   trial's user attributes (:class:`gainsearch.search.run_optuna.GainObjective`), the Ray back
   end in the trial's results (:func:`gainsearch.search.run_ray.gain_trainable`).
2. **Read back**, either store gives a :class:`Reported` (per-epoch series and the latest value
   of everything else: :func:`reported_by_optuna` from a study's trial,
   :func:`reported_by_tune` from a Tune trial's results), and :func:`trial_row` makes the
   :class:`~gainsearch.search.results.TrialRow`; :func:`best_summary` picks the best row for
   ``best.json``.
3. **The study**: the Ray back end records each row in the Optuna study as the trial ends
   (:func:`write_trials`), so that :func:`trial_rows` reads either back end's study alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from gainsearch.core.noise import estimate_label_noise
from gainsearch.integrations.optuna import (
    CURVE_ATTR,
    DIVERGED_ATTR,
    EPOCHS_ATTR,
    LOSS_ATTR,
    METRIC_ATTR,
)
from gainsearch.search.results import TrialRow, finite_float, finite_json
from gainsearch.search.spaces import ExperimentSpec

if TYPE_CHECKING:
    from gainsearch.batteries.train import EpochContext

__all__ = [
    "RAY_TRIAL_ATTR",
    "Reported",
    "TrialRecorder",
    "best_summary",
    "epoch_fields",
    "read_study",
    "reported_by_optuna",
    "reported_by_tune",
    "trial_row",
    "trial_rows",
    "write_trials",
]

#: The user attribute that names a trial's Ray Tune trial (the Ray back end's record).
RAY_TRIAL_ATTR = "ray_trial_id"
#: The per-epoch series a row holds (besides the stopping signals, named by the config).
GAIN, TRAIN_LOSS, VALUE, TEST_ACC = "gain", "train_loss", "value", "test_acc"
#: TrialRow fields taken from the latest report as they are, on both back ends (and stored as
#: user attributes of the same name in the study).
LATEST = (
    "diagnosis",
    "diagnosis_reason",
    "decision_rule",
    "decision_reason",
    "spectrum",
    "config",
    "epoch_log",
    "nodes",
    "selected_epoch",
    "stop_reason",
    "label_noise",
    "model_file",
)


def epoch_fields(ctx: EpochContext) -> dict[str, Any]:
    """What a built-in trial reports after each epoch, besides the gain evaluation
    (:func:`gainsearch.core.evaluation.evaluate`'s metrics, which each back end reports its
    way): ``epoch``, ``train_loss``, ``gain_max``, each recorded stopping signal,
    ``selected_epoch``, ``label_noise`` (:meth:`~gainsearch.core.noise.LabelNoise.to_dict`),
    ``stop_reason`` once patience ran out, ``spectrum`` after the last epoch (the report's
    figure) and, with ``eval_test``, ``test_acc`` and ``test_loss`` (evaluation only: nothing
    that decides reads them). Non-finite numbers are ``None``."""
    record, config = ctx.record, ctx.config
    out: dict[str, Any] = {
        "epoch": ctx.epoch,
        TRAIN_LOSS: finite_float(record["train_loss"]),
        "gain_max": finite_float(record["gain_max"]),
        **{name: finite_float(record[name]) for name in config.signals},
        "selected_epoch": record["selected_epoch"],
        "label_noise": finite_json(estimate_label_noise(ctx.history).to_dict()),
    }
    if ctx.selection is not None and ctx.selection.stop:
        out["stop_reason"] = f"patience: {ctx.selection.reason}"
    if ctx.epoch == config.epochs and not ctx.diverged:
        out["spectrum"] = ctx.monitor.spectrum(ctx.model)
    if config.eval_test:
        out[TEST_ACC] = finite_float(record["test_acc"])
        out["test_loss"] = finite_float(record["test_loss"])
    return out


@dataclass
class TrialRecorder:
    """A built-in trial's reports so far: the fields of each epoch (:func:`epoch_fields`) and
    the metric value(s) reported at each, from which :meth:`kept` gives the value at the kept
    epoch. One per trial, on both back ends."""

    #: The fields of each epoch, in order.
    epochs: list[dict[str, Any]] = field(default_factory=list)
    #: epoch -> the metric value(s) reported at it.
    values: dict[int, Any] = field(default_factory=dict)

    def add(self, ctx: EpochContext) -> dict[str, Any]:
        """Record (and return) the fields of the epoch just trained."""
        fields = epoch_fields(ctx)
        self.epochs.append(fields)
        return fields

    def series(self, key: str) -> list[Any]:
        """``key`` in every epoch so far (``None`` where not reported)."""
        return [fields.get(key) for fields in self.epochs]

    def report(self, epoch: int, value: Any) -> None:
        """The metric value(s) reported at ``epoch``."""
        self.values[int(epoch)] = value

    def kept(self, selected: int | None, *, diverged: bool = False) -> Any:
        """The value(s) at the kept epoch ``selected`` (the latest reported where the kept epoch
        reported none; NaN once diverged, or before any report)."""
        if diverged or not self.values:
            latest = self.values[max(self.values)] if self.values else math.nan
            return tuple(math.nan for _ in latest) if isinstance(latest, tuple) else math.nan
        if selected is not None and int(selected) in self.values:
            return self.values[int(selected)]
        return self.values[max(self.values)]


@dataclass
class Reported:
    """What a trial reported, read back from either back end's store: per-epoch series
    (``gain``, ``train_loss``, ``value``, ``test_acc`` and the stopping signals; epoch ->
    value, ``None`` where non-finite) and the latest value of everything else (:data:`LATEST`
    and the back end's own: ``epoch``, ``prune_rule``, ...)."""

    series: dict[str, dict[int, float | None]]
    latest: dict[str, Any]

    def curve(self, key: str) -> list[float | None]:
        """``key``'s readings in epoch order (the epochs it was reported at)."""
        values = self.series.get(key, {})
        return [values[e] for e in sorted(values)]

    def by_epoch(self, key: str, last: int) -> list[float | None]:
        """``key`` at epochs ``1..last`` (``None`` where not reported)."""
        values = self.series.get(key, {})
        return [values.get(e) for e in range(1, last + 1)]


def trial_row(
    number: int,
    state: str,
    params: Mapping[str, Any],
    reported: Reported,
    *,
    value: float | None,
    values: Sequence[float] | None = None,
    prune_rule: str = "",
    prune_reason: str = "",
    trial_id: str = "",
) -> TrialRow:
    """The one row builder: a trial's :class:`~gainsearch.search.results.TrialRow` from what it
    reported (either back end), its state, parameters and value at the kept epoch."""
    latest = reported.latest
    gains = reported.series.get(GAIN, {})
    epochs = int(latest.get("epoch") or max(gains, default=0))
    last = max(epochs, max(reported.series.get(VALUE, {}), default=0))
    names = (latest.get("config") or {}).get("signals") or []
    test = reported.curve(TEST_ACC)
    return TrialRow(
        number=number,
        state=state,
        params=dict(params),
        value=value,
        values=list(values) if values is not None else ([value] if value is not None else None),
        epochs=epochs,
        gain_curve=reported.curve(GAIN),
        train_loss=reported.curve(TRAIN_LOSS),
        value_curve=reported.by_epoch(VALUE, last),
        signals={name: reported.by_epoch(name, epochs) for name in names},
        test_acc=test[-1] if test else latest.get(TEST_ACC),
        test_acc_curve=test or None,
        prune_rule=prune_rule,
        prune_reason=prune_reason,
        trial_id=trial_id,
        **{key: latest[key] for key in LATEST if latest.get(key) is not None},
    )


# -- the Optuna store: a study's trials ------------------------------------------------------


def reported_by_optuna(trial: FrozenTrial) -> Reported:
    """What an Optuna trial reported: its user attributes (the gain curve with its epochs, the
    training loss, the signals and test accuracy per epoch) and intermediate values."""
    attrs = trial.user_attrs
    gains = list(attrs.get(CURVE_ATTR, []))
    numbers = attrs.get(EPOCHS_ATTR)
    if not isinstance(numbers, list) or len(numbers) != len(gains):
        numbers = list(range(1, len(gains) + 1))
    numbers = [int(e) for e in numbers]
    series: dict[str, dict[int, float | None]] = {
        GAIN: dict(zip(numbers, gains, strict=True)),
        TRAIN_LOSS: dict(zip(numbers, attrs.get(LOSS_ATTR, []), strict=False)),
        VALUE: {int(e): v for e, v in trial.intermediate_values.items()},
    }
    test = attrs.get(TEST_ACC)
    series[TEST_ACC] = dict(enumerate(test, 1)) if isinstance(test, list) else {}
    for name, values in (attrs.get("signals") or {}).items():
        series[name] = dict(enumerate(values, 1))
    return Reported(series, dict(attrs))


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """One row per trial of a study, of either back end (the Ray back end's trials as
    :func:`write_trials` recorded them)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        single = t.values is None or len(t.values) == 1
        attrs = t.user_attrs
        rows.append(
            trial_row(
                t.number,
                t.state.name.lower(),
                t.params,
                reported_by_optuna(t),
                value=t.value if single else None,
                values=list(t.values) if t.values is not None else None,
                prune_rule=attrs.get("prune_rule", "") if t.state == TrialState.PRUNED else "",
                prune_reason=attrs.get("prune_reason", ""),
                trial_id=str(attrs.get(RAY_TRIAL_ATTR, "")),
            )
        )
    return rows


# -- the Tune store: a trial's results -------------------------------------------------------


def reported_by_tune(
    results: Sequence[Mapping[str, Any]],
    numeric: Mapping[str, str],
    last: Mapping[str, Any] | None = None,
) -> Reported:
    """What a Tune trial reported: its results in order (a restored trial reports some epochs
    again: the last reading of each epoch counts). ``numeric`` maps the per-epoch series (their
    :class:`Reported` names) to the result keys they are read from (``value``: the key Tune's
    scheduler reads). The latest result gives the rest, with the epochs as reported
    (``epoch_log``), the nodes, and the label-noise estimate decoded; ``last``: the latest result
    as Tune kept it, where ``results`` are a table's rows (``Result.metrics_dataframe``)."""
    series: dict[str, dict[int, float | None]] = {name: {} for name in numeric}
    epoch_log, nodes = [], set()
    latest: dict[str, Any] = {}
    for result in results:
        epoch = result.get("epoch")
        if epoch is None or epoch != epoch or GAIN not in result:
            continue
        epoch = int(epoch)
        epoch_log.append(epoch)
        for name, key in numeric.items():
            if key in result:
                series[name][epoch] = finite_float(result[key])
        if result.get("node_id") and result["node_id"] == result["node_id"]:
            nodes.add(str(result["node_id"]))
        latest = dict(result)
    for name in list(series):  # a restored trial's later epochs replace its earlier readings
        series[name] = dict(sorted(series[name].items()))
    if last is not None:
        latest = dict(last)
    latest.update(epoch_log=epoch_log, nodes=sorted(nodes))
    noise = latest.get("label_noise")
    if isinstance(noise, str):  # Tune flattens dicts: reported as JSON
        try:
            latest["label_noise"] = json.loads(noise) if noise else None
        except ValueError:
            latest["label_noise"] = None
    return Reported(series, latest)


# -- the best trial ----------------------------------------------------------------------------


def best_summary(
    rows: Sequence[TrialRow], spec: ExperimentSpec, *, pareto: Sequence[int] | None = None
) -> dict[str, Any]:
    """``best.json``'s entry: the best complete row (or, for several metrics, the rows of the
    Pareto front ``pareto``, by number) with its full configuration."""
    complete = [r for r in rows if r.state == "complete" and (r.value, r.values) != (None, None)]
    if not complete:
        return {"best": None, "reason": "no trial completed yet"}

    def describe(row: TrialRow) -> dict[str, Any]:
        config = row.config or spec.train_config(row.params).to_dict()
        return row.best_entry(spec.metrics, config)

    if spec.multi_objective:
        front = set(pareto or ())
        return {
            "metrics": list(spec.metrics),
            "modes": list(spec.modes),
            "pareto_front": [describe(r) for r in complete if r.number in front],
        }
    scored = [r for r in complete if r.value is not None and math.isfinite(r.value)]
    if not scored:
        return {"best": None, "reason": "no trial completed yet"}
    pick = max if spec.modes[0] == "max" else min
    best = pick(scored, key=lambda r: float(r.value))  # type: ignore[arg-type]
    return {"metric": spec.metrics[0], "mode": spec.modes[0], "best": describe(best)}


def read_study(study: optuna.Study, spec: ExperimentSpec) -> tuple[list[TrialRow], dict[str, Any]]:
    """A study's rows (:func:`trial_rows`) and its best entry (:func:`best_summary`; the Pareto
    front as Optuna finds it, for several metrics)."""
    rows = trial_rows(study)
    pareto = [t.number for t in study.best_trials] if spec.multi_objective else None
    return rows, best_summary(rows, spec, pareto=pareto)


# -- the study writer ----------------------------------------------------------------------------

#: A row's state -> the trial state it is recorded in. An interrupted Ray trial is recorded as
#: the Optuna back end records one: failed (the resumed run finishes it as a new trial).
STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "interrupted": TrialState.FAIL,
}


def write_trials(study: optuna.Study, rows: Sequence[TrialRow], spec: ExperimentSpec) -> int:
    """Record finished rows (the Ray back end's trials) in the study, with the state they ended
    in, their intermediate values and the user attributes the Optuna back end stores (those
    :func:`trial_rows` reads back). A row already recorded in that state is skipped, so a
    resumed run, or the end of a run whose trials were recorded as they ended, adds only what
    is new; an interrupted trial is recorded as failed and, once a resumed run finishes it,
    again in its final state. Returns the trials written."""
    done = {
        (t.user_attrs.get(RAY_TRIAL_ATTR), t.state)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(RAY_TRIAL_ATTR)
    }
    distributions = spec.to_optuna()
    written = 0
    for row in rows:
        state = STATES.get(row.state)
        if state is None or (row.trial_id, state) in done:
            continue
        value = row.value if state == TrialState.COMPLETE else None
        if state == TrialState.PRUNED and row.value_curve:  # Optuna: the last value reported
            value = row.value_curve[-1]
        if state == TrialState.COMPLETE and (value is None or not np.isfinite(value)):
            state, value = TrialState.FAIL, None  # a completed trial without a finite value
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state != TrialState.FAIL else None,
                params={k: v for k, v in row.params.items() if k in distributions},
                distributions={k: d for k, d in distributions.items() if k in row.params},
                user_attrs=_attributes(row, spec.metrics[0], state),
                intermediate_values={  # a non-finite report is NaN, as Optuna stores it
                    e: math.nan if v is None else float(v) for e, v in enumerate(row.value_curve, 1)
                },
            )
        )
        done.add((row.trial_id, state))
        written += 1
    return written


def _attributes(row: TrialRow, metric: str, state: TrialState) -> dict[str, Any]:
    """The user attributes the Optuna back end stores, from a row (what
    :func:`reported_by_optuna` reads back)."""
    attrs: dict[str, Any] = {
        key: getattr(row, key) for key in LATEST if getattr(row, key) not in (None, "", [])
    }
    attrs.update(
        {
            CURVE_ATTR: list(row.gain_curve),
            EPOCHS_ATTR: list(range(1, len(row.gain_curve) + 1)),
            LOSS_ATTR: list(row.train_loss),
            METRIC_ATTR: metric,
            RAY_TRIAL_ATTR: row.trial_id,
        }
    )
    if row.signals:
        attrs["signals"] = row.signals
    if row.prune_rule == "diverged":
        attrs[DIVERGED_ATTR] = True
    if state == TrialState.PRUNED or row.prune_reason:
        attrs.update(prune_rule=row.prune_rule, prune_reason=row.prune_reason)
    if row.test_acc_curve:
        attrs[TEST_ACC] = list(row.test_acc_curve)
    elif row.test_acc is not None:
        attrs[TEST_ACC] = [row.test_acc]
    return attrs
