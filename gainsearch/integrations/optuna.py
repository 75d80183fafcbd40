"""Optuna back end: the gain as objective and pruning signal.

* :class:`GainPruner`: an ``optuna.pruners.BasePruner`` over the decision core
  (:func:`gainsearch.decision.decide`);
* :func:`report_gain`: the once-per-epoch call for your own training loop (report, store the
  features and the diagnosis, ask the pruner, raise ``TrialPruned`` with the reason);
* :class:`GainObjective`: the built-in trainer as an Optuna objective for an experiment spec;
* :func:`run_study`: the study runner behind ``gainsearch search --backend optuna``.

Each trial keeps in its user attributes: ``gain_curve`` (dB per epoch), ``features``,
``diagnosis`` and ``diagnosis_reason``, ``train_loss`` per epoch, ``prune_reason`` when pruned,
``config`` (the resolved training configuration) and, with ``eval_test``, ``test_acc`` and
``test_loss`` per epoch. Nothing that decides reads the test metrics.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from gainsearch._files import write_atomic
from gainsearch.data import TensorData, load_dataset
from gainsearch.decision import Decision, DecisionConfig, decide
from gainsearch.features import diagnose
from gainsearch.monitor import GainMonitor
from gainsearch.objective import ScoreConfig, TrialScoreConfig, curve_metric
from gainsearch.spaces import ExperimentSpec, spec_differences
from gainsearch.train import EpochContext, TrainConfig, train_trial

__all__ = [
    "GainObjective",
    "GainPruner",
    "StudyOutcome",
    "create_study",
    "report_gain",
    "run_study",
    "trial_rows",
]

logger = logging.getLogger(__name__)

#: Trial states that count towards ``--trials``.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CURVE_ATTR = "gain_curve"


class GainPruner(BasePruner):
    """Prune trials on their gain curve against their peers at the same epoch.

    Diverged trials (a non-finite gain, or the trainer's ``diverged`` flag) are pruned at once.
    After ``warmup_epochs``, with at least ``min_peers`` finished trials (complete or pruned)
    that reached the same epoch, a trial is pruned when its variability is far above the
    peers' median (learning rate too high) or the value it reported at this epoch (the study's
    objective: the trial score by default) is below the ``percentile``-th percentile of the
    peers' values at the same epoch. See :mod:`gainsearch.decision` for the exact rules.

    NaN policy: a trial whose gain curve holds NaN/inf is pruned; peers with non-finite gains
    before the epoch compared are ignored.

    The pruner reads the curve that :func:`report_gain` stores in the trial's user attribute
    ``gain_curve``; a trial reported with plain ``trial.report`` is an error.

    Args:
        warmup_epochs: Epochs before pruning for anything but divergence.
        min_peers: Peers needed before comparing.
        percentile: Score percentile of the peers below which a trial is pruned (0-100).
        variability_factor: Multiple of the peers' median variability that marks "too high".
        min_variability: Variability floor (dB/epoch) below which a trial is never too variable.
        config: A complete :class:`DecisionConfig` instead of the arguments above.
    """

    def __init__(
        self,
        *,
        warmup_epochs: int = 1,
        min_peers: int = 3,
        percentile: float = 50.0,
        variability_factor: float = 3.0,
        min_variability: float = 1.0,
        config: DecisionConfig | None = None,
    ) -> None:
        self.config = config or DecisionConfig(
            warmup_epochs=warmup_epochs,
            min_peers=min_peers,
            percentile=percentile,
            variability_factor=variability_factor,
            min_variability=min_variability,
        )
        #: trial number -> the decision that pruned it (read by :func:`report_gain`).
        self.last_decisions: dict[int, Decision] = {}

    def decision(self, study: optuna.Study, trial: FrozenTrial) -> Decision:
        """The decision core's verdict (with its reason) for ``trial``."""
        if CURVE_ATTR not in trial.user_attrs:
            raise ValueError(
                f"GainPruner needs the trial's gain curve in user attribute {CURVE_ATTR!r}; report "
                "with gainsearch.integrations.optuna.report_gain(trial, monitor). The trial has "
                f"user attributes {sorted(trial.user_attrs)}."
            )
        curves, values = _peers(study, exclude=trial.number)
        # the reported values when there are any (multi-objective trials report none): the
        # gain score of the curves otherwise
        reported = len(study.directions) == 1 and bool(trial.intermediate_values)
        return decide(
            trial.user_attrs[CURVE_ATTR],
            curves,
            config=self.config,
            diverged=bool(trial.user_attrs.get("diverged", False)),
            values=_values(study, trial) if reported else None,
            peer_values=values if reported else None,
        )

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        verdict = self.decision(study, trial)
        if verdict.prune:  # report_gain reads the reason from here
            self.last_decisions[trial.number] = verdict
        return verdict.prune


def peer_curves(study: optuna.Study, exclude: int | None = None) -> list[list[float]]:
    """Gain curves of the study's finished (complete or pruned) trials."""
    return _peers(study, exclude)[0]


def _peers(
    study: optuna.Study, exclude: int | None = None
) -> tuple[list[list[float]], list[list[float]]]:
    """Gain curves and reported values per epoch (higher is better) of the finished trials."""
    curves, values = [], []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if t.number != exclude and CURVE_ATTR in t.user_attrs:
            curves.append(t.user_attrs[CURVE_ATTR])
            values.append(_values(study, t))
    return curves, values


def _values(study: optuna.Study, trial: FrozenTrial) -> list[float]:
    """The trial's intermediate values by epoch (1..t), sign-flipped for a minimised study, so
    that higher is better; NaN where an epoch was not reported."""
    reported = trial.intermediate_values
    if len(study.directions) > 1:
        return []
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
    last = max(reported, default=0)
    return [sign * float(reported.get(e, math.nan)) for e in range(1, last + 1)]


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
    """Report one epoch of a trial's gain to Optuna; prune if the decision core says so.

    Call it once per epoch after ``monitor.measure(model, epoch)``. It stores the gain curve,
    features and diagnosis (judged against the study's other trials) in user attributes, reports
    the metric as the intermediate value (single-objective studies), asks the study's pruner
    (multi-objective studies, where ``trial.report`` is unavailable, ask the decision core with
    the pruner's settings directly) and raises ``optuna.TrialPruned`` with the reason, which is
    also stored as the user attribute ``prune_reason``. A diverged trial is always pruned.

    Args:
        trial: The running Optuna trial.
        monitor: The trial's :class:`GainMonitor` (or its gain curve).
        epoch: The epoch just measured (default: the monitor's last).
        metric: What the study optimises: ``"trial_score"`` (the default:
            :func:`gainsearch.trial_score`, which needs ``train_loss`` per epoch), ``"score"``
            (the gain score) or other :data:`METRICS` (a sequence for multi-objective studies,
            in the study's direction order).
        diverged: The training loss went non-finite (the trial cannot continue).
        score_config: Weights of the gain score (default: the pruner's, else the default).
        train_loss: The training loss per epoch so far (one per measured epoch; its last value
            alone is enough unless the metric is ``trial_score``). Also sharpens the diagnosis
            (a fitted training set reads as overfitting).
        trial_config: The trial score's form (default :class:`TrialScoreConfig`).

    Returns:
        The metric value(s) of the curve so far.
    """
    if isinstance(monitor, GainMonitor):
        curve = [float(v) for v in monitor.gains]
        epoch = epoch if epoch is not None else (monitor.epochs[-1] if len(monitor) else 0)
    else:
        curve = [float(v) for v in monitor]
        epoch = epoch if epoch is not None else len(curve)
    pruner = trial.study.pruner
    decision_config = pruner.config if isinstance(pruner, GainPruner) else DecisionConfig()
    score_cfg = score_config or decision_config.score
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    peers = peer_curves(trial.study, exclude=trial.number)  # for the diagnosis
    diag = diagnose(
        curve,
        peers=peers,
        config=decision_config.diagnosis,
        diverged_epoch=epoch if diverged else None,
        train_loss=train_loss,
    )
    feats = diag.features  # computed once per epoch, shared with the diagnosis
    losses = None if train_loss is None or isinstance(train_loss, (int, float)) else train_loss
    if "trial_score" in metrics and losses is None:
        raise ValueError(
            "metric 'trial_score' needs the training loss of every epoch so far: pass "
            "train_loss=[...] to report_gain (or report metric='score', the gain score)."
        )
    values = tuple(
        curve_metric(
            m,
            curve if m == "trial_score" else feats,
            config=score_cfg,
            train_loss=losses,
            trial=trial_config,
        )
        for m in metrics
    )
    trial.set_user_attr(CURVE_ATTR, curve)
    trial.set_user_attr("features", _jsonable(feats.to_dict()))
    trial.set_user_attr("diagnosis", diag.label)
    trial.set_user_attr("diagnosis_reason", diag.reason)
    if diverged:
        trial.set_user_attr("diverged", True)

    multi = len(trial.study.directions) > 1
    if not multi:
        trial.report(values[0], epoch)
    reason = ""
    if diverged or not all(math.isfinite(v) for v in curve):
        reason = decide(curve, diverged=True, config=decision_config).reason
    elif multi and not isinstance(pruner, NopPruner):  # no intermediate values: gain score
        verdict = decide(curve, peers, config=decision_config)
        reason = verdict.reason if verdict.prune else ""
    elif isinstance(pruner, GainPruner):
        # the reported values against the finished peers' (GainPruner.prune keeps the reason)
        if trial.should_prune():
            reason = pruner.last_decisions.pop(trial.number).reason
    elif not multi and trial.should_prune():
        reason = f"pruned by {type(pruner).__name__} at epoch {epoch}"
    if reason:
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)
    return values[0] if len(values) == 1 else values


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
    }


# -- the built-in trainer as an objective -------------------------------------------------------


class GainObjective:
    """Objective for ``study.optimize``: one built-in trial per call, on a spec's search space.

    Args:
        spec: The experiment.
        data: Pre-loaded data (default: loaded once, on first call).
        eval_test: Record test loss/accuracy per epoch in user attributes (evaluation only).
    """

    def __init__(
        self, spec: ExperimentSpec, *, data: TensorData | None = None, eval_test: bool = False
    ) -> None:
        self.spec = spec
        self.eval_test = eval_test
        self._data = data

    @property
    def data(self) -> TensorData:
        if self._data is None:  # dataset and data_root are never searched (spaces.NOT_SEARCHABLE)
            fixed = TrainConfig.from_dict(self.spec.train)
            self._data = load_dataset(fixed.dataset, fixed.data_root)
        return self._data

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        params = self.spec.suggest(trial)
        config = self.spec.train_config({**params, "eval_test": self.eval_test})
        trial.set_user_attr("config", config.to_dict())
        metrics = self.spec.metrics
        losses: list[float] = []
        test_acc: list[float] = []
        test_loss: list[float] = []

        def on_epoch(ctx: EpochContext) -> None:
            losses.append(float(ctx.record["train_loss"]))
            trial.set_user_attr("train_loss", _finite_json(losses))
            if ctx.epoch == config.epochs and not ctx.diverged:  # for the report's figure
                trial.set_user_attr("spectrum", ctx.monitor.spectrum(ctx.model))
            if self.eval_test:  # recorded for evaluation only: nothing below reads them
                test_acc.append(float(ctx.record["test_acc"]))
                test_loss.append(float(ctx.record["test_loss"]))
                trial.set_user_attr("test_acc", test_acc)
                trial.set_user_attr("test_loss", _finite_json(test_loss))
            report_gain(
                trial,
                ctx.monitor,
                ctx.epoch,
                metric=metrics,
                diverged=ctx.diverged,
                score_config=self.spec.score,
                train_loss=losses,
                trial_config=self.spec.trial,
            )

        result = train_trial(
            config, data=self.data, callbacks=[on_epoch], stop_event=_stop_requested
        )
        trial.set_user_attr("status", result.status)  # a diverged trial was pruned by on_epoch
        losses = [float(r["train_loss"]) for r in result.history]
        values = tuple(
            curve_metric(
                m,
                result.monitor.gains,
                config=self.spec.score,
                train_loss=losses,
                trial=self.spec.trial,
            )
            for m in metrics
        )
        return values[0] if len(values) == 1 else values


# -- study runner ---------------------------------------------------------------------------------


def make_sampler(spec: ExperimentSpec) -> optuna.samplers.BaseSampler:
    """TPE (default) or random sampling, seeded by the spec."""
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def make_pruner(spec: ExperimentSpec) -> BasePruner:
    """The spec's pruner: ``gain``, ``median``, ``asha`` (successive halving) or ``none``."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner in ("median", "asha") and spec.multi_objective:
        raise ValueError(
            f"pruner.type {spec.pruner!r} needs a single objective (Optuna's trial.report is "
            "single-objective); use 'gain' or 'none' with several metrics."
        )
    if spec.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.decision.warmup_epochs)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.decision.min_peers, n_warmup_steps=spec.decision.warmup_epochs
        )
    return GainPruner(config=spec.decision)


def make_storage(
    url: str, heartbeat: int | None, retry_failed: int = 0
) -> optuna.storages.BaseStorage:
    """An RDB storage (SQLite, PostgreSQL, ...) with heartbeats when ``heartbeat`` is set.

    With heartbeats, a trial whose worker died (no heartbeat for 3 intervals) is marked failed
    when any worker next starts a trial; ``retry_failed > 0`` then re-queues it with the same
    parameters, up to that many times (Optuna's ``RetryHeartbeatStaleTrialCallback``).

    Raises:
        ValueError: the URL is malformed, its driver is missing, or the database cannot be
            reached (within 10 seconds for a server); the message hides any password.
    """
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(url)}
    if heartbeat:
        kwargs.update(heartbeat_interval=int(heartbeat), grace_period=3 * int(heartbeat))
        if retry_failed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs["heartbeat_stale_trial_callback"] = (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=int(retry_failed))
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:  # sqlalchemy raises ArgumentError, OperationalError, ImportError...
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "://" in url and "@" in url:
            detail = detail.replace(url, redact(url))
        raise ValueError(
            f"storage {redact(url)!r} cannot be opened: {detail}. Expected an Optuna RDB URL "
            "such as sqlite:///path/study.db or postgresql://user@host/db."
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # several worker processes share one file
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def redact(url: str) -> str:
    """A storage URL with any password hidden."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def create_study(
    spec: ExperimentSpec,
    storage: str,
    *,
    study_name: str | None = None,
    heartbeat: int | None = 10,
    retry_failed: int = 0,
) -> optuna.Study:
    """Create or load (resume) the spec's study in ``storage``."""
    name = study_name or spec.name
    kwargs: dict[str, Any] = {"directions": spec.directions}
    return optuna.create_study(
        storage=make_storage(storage, heartbeat, retry_failed),
        study_name=name,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
        **kwargs,
    )


@dataclass
class StudyOutcome:
    """What :func:`run_study` leaves behind."""

    study_name: str
    storage: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    interrupted: bool = False


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class _Interrupted(KeyboardInterrupt):
    """A stop request (SIGINT/SIGTERM) raised at a safe point: Optuna fails the running trial."""


_stop_requested = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM during a study: stop at the next batch, or before the next trial.

    The first signal only sets a flag, which the trainer checks between batches and
    :func:`_optimize` between trials. An exception raised in the handler itself would land at
    any line: inside a finaliser Python drops it ("Exception ignored ... KeyboardInterrupt") and
    the study runs on (seen in CI); between the start of Optuna's heartbeat thread and its
    ``with`` block it leaves that non-daemon thread running, so the process never exits (the
    likely cause of a CI run that wrote its results and then hung). A second signal raises at
    once.
    """
    if _stop_requested.is_set():
        raise _Interrupted(f"signal {signum} again")
    _stop_requested.set()
    os.write(2, b"gainsearch: stopping after the current batch (signal again: at once)\n")


def _check_stop() -> None:
    if _stop_requested.is_set():
        raise _Interrupted("stop requested")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM request a stop (main thread only: elsewhere Python does not deliver
    signals, and the caller's handlers stay). An ignored signal stays ignored (``nohup``, or a
    background job of a script, whose SIGINT is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop_requested.clear()
    previous = {
        s: signal.signal(s, _request_stop)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_requested.clear()


# Wall-clock time: spawned workers compare it with the parent's deadline. Tests replace it.
_now = time.time


def _optimize(
    spec: ExperimentSpec,
    storage: str,
    study_name: str,
    n_trials: int,
    deadline: float | None,
    eval_test: bool,
    heartbeat: int | None,
    retry_failed: int = 0,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> None:
    """One worker: run trials until the study has ``n_trials`` finished ones or time is up."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(
        spec, storage, study_name=study_name, heartbeat=heartbeat, retry_failed=retry_failed
    )
    objective = GainObjective(spec, eval_test=eval_test)
    callbacks = [on_trial] if on_trial else []
    while finished_count(study) < n_trials:
        _check_stop()
        if deadline is not None and _now() >= deadline:
            break
        study.optimize(objective, n_trials=1, callbacks=callbacks, catch=())


def _worker_main(*args: Any) -> None:  # pragma: no cover - runs in a spawned process
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which sends SIGTERM
    threads = int(os.environ.get("GAINSEARCH_WORKER_THREADS", "1"))
    import torch

    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(KeyboardInterrupt):
        _optimize(*args)


def run_study(
    spec: ExperimentSpec,
    *,
    out_dir: str | Path,
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    workers: int = 1,
    eval_test: bool = False,
    heartbeat: int | None = 10,
    retry_failed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> StudyOutcome:
    """Run (or resume) a study until it holds ``n_trials`` finished trials.

    Finished means complete or pruned; failed trials (a killed worker, an interrupted run) do
    not count, so running the same command again tops the study up to ``n_trials``. With
    ``workers > 1`` that many processes share the storage; trials already running when the
    count is reached still finish, so the study may end up to ``workers - 1`` trials over.

    Args:
        spec: The experiment.
        out_dir: Where ``study.db`` (default storage), ``trials.csv``, ``best.json`` and
            ``spec.yaml`` go.
        n_trials: Finished trials wanted in the study (>= 1).
        storage: Optuna storage URL (default ``sqlite:///OUT/study.db``).
        study_name: Default: the spec's name.
        timeout: Seconds, counted from this call, after which no new trial starts.
        workers: Parallel worker processes.
        eval_test: Record test metrics (evaluation only).
        heartbeat: Heartbeat interval in seconds (``None``/0: off); a trial whose worker died
            is marked failed after 3 intervals.
        retry_failed: Re-queue a trial marked failed that way, with the same parameters, up to
            this many times (needs ``heartbeat``).
        progress: Called with counts (``done``, ``pruned``, ``running``, ``best``) as trials end.
    """
    _check_run_args(n_trials, timeout, workers, heartbeat)
    if isinstance(retry_failed, bool) or not isinstance(retry_failed, int) or retry_failed < 0:
        raise ValueError(f"retry_failed must be a non-negative integer, but got {retry_failed=}.")
    if retry_failed and not heartbeat:
        raise ValueError(
            f"retry_failed={retry_failed} needs heartbeats to notice a dead worker; set "
            "heartbeat to a positive number of seconds."
        )
    out = Path(out_dir)
    name = study_name or spec.name
    check_out_dir(out, name)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = create_study(spec, url, study_name=name, heartbeat=heartbeat, retry_failed=retry_failed)
    _check_same_space(study, spec)
    deadline = _now() + timeout if timeout else None
    interrupted = False
    try:
        with _stop_on_signals():
            if workers == 1:

                def on_trial(s: optuna.Study, _: FrozenTrial) -> None:
                    if progress:
                        progress(study_counts(s))

                if progress:
                    progress(study_counts(study))
                _optimize(
                    spec,
                    url,
                    name,
                    n_trials,
                    deadline,
                    eval_test,
                    heartbeat,
                    retry_failed,
                    on_trial,
                )
            else:
                interrupted = _run_workers(
                    (spec, url, name, n_trials, deadline, eval_test, heartbeat, retry_failed),
                    workers,
                    study,
                    progress,
                )
    except KeyboardInterrupt:
        interrupted = True
    rows = trial_rows(study)
    best = best_summary(study, spec)
    write_results(out, spec, rows, best, url, name)
    return StudyOutcome(name, url, rows, best, interrupted)


def _run_workers(
    worker_args: tuple[Any, ...],
    workers: int,
    study: optuna.Study,
    progress: Callable[[dict[str, Any]], None] | None,
) -> bool:
    """Run ``workers`` processes of :func:`_optimize` on one storage; True if interrupted."""
    ctx = multiprocessing.get_context("spawn")
    os.environ["GAINSEARCH_WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    procs = [
        ctx.Process(
            target=_worker_main,
            args=worker_args,
            daemon=False,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        while any(p.is_alive() for p in procs):
            _check_stop()
            if progress:
                progress(study_counts(study))
            time.sleep(1.0)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(timeout=60)
        return True
    finally:
        for proc in procs:
            proc.join(timeout=5)
    if progress:
        progress(study_counts(study))
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed with exit codes {failed}.")
    return False


def check_timeout(timeout: Any) -> None:
    """``timeout`` (both back ends) is None or a positive number of seconds."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, but got {timeout=}.")


def _check_run_args(n_trials: Any, timeout: Any, workers: Any, heartbeat: Any) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, but got n_trials={n_trials!r}.")
    check_timeout(timeout)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, but got workers={workers!r}.")
    if heartbeat is not None and (not isinstance(heartbeat, int) or heartbeat < 0):
        raise ValueError(f"heartbeat must be a non-negative integer, but got {heartbeat=}.")


def _check_same_space(study: optuna.Study, spec: ExperimentSpec) -> None:
    """A resumed study must have been run with the same spec."""
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", spec.to_dict())
        return
    differ = spec_differences(saved, spec)
    if differ:
        raise ValueError(
            f"study {study.study_name!r} was run with a different spec (sections {differ} "
            "differ); resume it with the same spec, or pick another --study-name or --out."
        )


def study_counts(study: optuna.Study) -> dict[str, Any]:
    """Counts of complete, pruned, running and failed trials, and the best value so far."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: 0 for state in TrialState}
    for t in trials:
        counts[t.state] += 1
    best = None
    if len(study.directions) == 1:
        done = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if done:
            best = (
                max(done) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(done)
            )
    return {
        "complete": counts[TrialState.COMPLETE],
        "pruned": counts[TrialState.PRUNED],
        "running": counts[TrialState.RUNNING],
        "failed": counts[TrialState.FAIL],
        "done": counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        "best": best,
    }


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, parameters, value(s), diagnosis, prune reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get(CURVE_ATTR, [])
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": dict(t.params),
                "value": t.value if t.values is None or len(t.values) == 1 else None,
                "values": list(t.values) if t.values is not None else None,
                "epochs": len(curve),
                "final_gain": float(curve[-1]) if curve and curve[-1] is not None else None,
                "diagnosis": t.user_attrs.get("diagnosis", ""),
                "prune_reason": t.user_attrs.get("prune_reason", ""),
                "test_acc": (t.user_attrs.get("test_acc") or [None])[-1],
                "gain_curve": list(curve),
                "train_loss": list(t.user_attrs.get("train_loss", [])),
                "diagnosis_reason": t.user_attrs.get("diagnosis_reason", ""),
                "spectrum": t.user_attrs.get("spectrum"),
            }
        )
    return rows


def best_summary(study: optuna.Study, spec: ExperimentSpec) -> dict[str, Any]:
    """The best trial (or the Pareto front for several metrics) with its full configuration."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"best": None, "reason": "no trial completed yet"}

    def describe(t: FrozenTrial) -> dict[str, Any]:
        return {
            "number": t.number,
            "params": dict(t.params),
            "values": dict(zip(spec.metrics, t.values, strict=True)),
            "diagnosis": t.user_attrs.get("diagnosis", ""),
            "config": t.user_attrs.get("config") or spec.train_config(t.params).to_dict(),
        }

    if spec.multi_objective:
        return {
            "metrics": list(spec.metrics),
            "modes": list(spec.modes),
            "pareto_front": [describe(t) for t in study.best_trials],
        }
    return {"metric": spec.metrics[0], "mode": spec.modes[0], "best": describe(study.best_trial)}


def write_results(
    out: Path,
    spec: ExperimentSpec,
    rows: list[dict[str, Any]],
    best: dict[str, Any],
    url: str,
    name: str,
) -> None:
    """``trials.csv``, ``trials.json`` (every row with its curves, read by ``gainsearch report``),
    ``best.json`` and ``spec.yaml`` in ``out`` (each written atomically)."""
    import yaml

    param_names = sorted({k for r in rows for k in r["params"]})
    header = [
        "number",
        "state",
        *param_names,
        "value",
        "epochs",
        "final_gain",
        "diagnosis",
        "prune_reason",
        "test_acc",
    ]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    for r in rows:
        value = r["value"] if r["value"] is not None else r["values"]
        writer.writerow(
            [
                r["number"],
                r["state"],
                *[r["params"].get(p, "") for p in param_names],
                value,
                r["epochs"],
                r["final_gain"],
                r["diagnosis"],
                r["prune_reason"],
                r["test_acc"],
            ]
        )
    write_atomic(out / "trials.csv", table.getvalue())
    write_atomic(
        out / "trials.json",
        json.dumps({"rows": _finite_json(rows)}, default=_json_default, allow_nan=False) + "\n",
    )
    payload = {"study_name": name, "storage": redact(url), **best}
    write_atomic(out / "best.json", json.dumps(payload, indent=2, default=_json_default) + "\n")
    write_atomic(out / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))


def check_out_dir(out: Path, name: str) -> None:
    """Refuse an output directory that holds the results of another study (a directory holds
    one study: its ``trials.csv``, ``best.json``, ``spec.yaml`` and report). Nothing is written.

    Raises:
        ValueError: ``out/best.json`` names another study.
    """
    try:
        held = json.loads((out / "best.json").read_text()).get("study_name")
    except (OSError, ValueError, AttributeError):
        return  # a new directory (or no readable results yet)
    if held and held != name:
        raise ValueError(
            f"output directory {out} holds the results of study {held!r}, and this search is "
            f"study {name!r}: a directory holds one study. Use another --out, or --study-name "
            f"{held} to continue that study."
        )


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON: no NaN)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
