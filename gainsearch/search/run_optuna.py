"""The Optuna runner behind ``gainsearch search --backend optuna``: the built-in trainer as an
Optuna objective (:class:`GainObjective`), reported through
:func:`gainsearch.integrations.optuna.report_gain`, and :func:`run_study`, which runs (or resumes)
a study in one process or several, stops cleanly on SIGINT/SIGTERM and writes the results.

Each trial keeps in its user attributes: ``gain_curve`` (dB per epoch), ``features``,
``diagnosis``, ``diagnosis_reason``, ``decision_rule`` and ``decision_reason`` (see
:func:`gainsearch.core.evaluation.evaluate`), ``train_loss`` per epoch, ``prune_rule`` and
``prune_reason`` when pruned, ``config`` (the resolved training configuration), ``worker``
(``host:pid`` of the process that ran it) and, with
``eval_test``, ``test_acc`` and ``test_loss`` per epoch; ``signals`` (each recorded stopping
signal per epoch), ``selected_epoch`` (the kept epoch) and ``stop_reason`` (patience ran out).
The trial's value is the trial score at its kept epoch (the last epoch with ``select_by:
last``). Nothing that decides reads the test metrics.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gainsearch.batteries.data import TensorData, load_dataset
from gainsearch.batteries.train import EpochContext, TrainConfig, train_trial
from gainsearch.integrations.optuna import report_gain
from gainsearch.search.models import MODELS_DIR, check_keep, prune_models, save_trial_model
from gainsearch.search.record import TrialRecorder, read_study
from gainsearch.search.results import Outcome, check_out_dir, redact, write_results
from gainsearch.search.spaces import ExperimentSpec
from gainsearch.search.study import (
    STALE_GRACE_FACTOR,
    check_same_space,
    check_threads,
    check_timeout,
    create_study,
    finished_count,
    make_storage,
    study_counts,
)

__all__ = ["GainObjective", "StudyOutcome", "run_study"]


class GainObjective:
    """Objective for ``study.optimize``: one built-in trial per call, on a spec's search space.

    Args:
        spec: The experiment.
        data: Pre-loaded data (default: loaded once, on first call).
        eval_test: Record test loss/accuracy per epoch in user attributes (evaluation only).
    """

    def __init__(
        self,
        spec: ExperimentSpec,
        *,
        data: TensorData | None = None,
        eval_test: bool = False,
        models_dir: Path | None = None,
        keep: int | None = 1,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.threads = threads
        self.eval_test = eval_test
        self._data = data
        self.models_dir = models_dir
        self.keep = keep

    @property
    def data(self) -> TensorData:
        if self._data is None:  # dataset and data_root are never searched (spaces.NOT_SEARCHABLE)
            fixed = TrainConfig.from_dict(self.spec.train)
            self._data = load_dataset(fixed.dataset, fixed.data_root, image_size=fixed.image_size)
        return self._data

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        params = self.spec.suggest(trial)
        extra: dict[str, Any] = {"eval_test": self.eval_test}
        if self.threads is not None and self.spec.train.get("threads") is None:
            extra["threads"] = self.threads  # the back end's default, recorded in the config
        config = self.spec.train_config({**params, **extra})
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        metrics = self.spec.metrics
        recorder = TrialRecorder()  # the record both back ends report (search.record)

        def on_epoch(ctx: EpochContext) -> None:
            fields = recorder.add(ctx)
            trial.set_user_attr("signals", {n: recorder.series(n) for n in config.signals})
            trial.set_user_attr("selected_epoch", fields["selected_epoch"])
            trial.set_user_attr("label_noise", fields["label_noise"])
            for key in ("stop_reason", "spectrum"):
                if key in fields:
                    trial.set_user_attr(key, fields[key])
            if self.eval_test:  # recorded for evaluation only: nothing below reads them
                trial.set_user_attr("test_acc", recorder.series("test_acc"))
                trial.set_user_attr("test_loss", recorder.series("test_loss"))
            value = report_gain(  # stores the gain curve and the training loss, may prune
                trial,
                ctx.monitor,
                ctx.epoch,
                metric=metrics,
                diverged=ctx.diverged,
                score_config=self.spec.score,
                train_loss=[float(r["train_loss"]) for r in ctx.history],
                trial_config=self.spec.trial,
            )
            recorder.report(ctx.epoch, value)

        result = train_trial(
            config, data=self.data, callbacks=[on_epoch], stop_event=_stop_requested
        )
        trial.set_user_attr("status", result.status)  # a diverged trial was pruned by on_epoch
        if self.models_dir is not None and self.keep != 0:  # the kept epoch's weights
            path = self.models_dir / f"trial_{trial.number}.pt"
            save_trial_model(path, result, trial.number)
            trial.set_user_attr("model_file", f"{MODELS_DIR}/{path.name}")
        # the kept checkpoint's value(s): the last epoch's with select_by "last"
        return recorder.kept(result.selected_epoch)


@dataclass(kw_only=True)
class StudyOutcome(Outcome):
    """What :func:`run_study` leaves behind (and the study: ``study_name`` in ``storage``)."""

    study_name: str
    storage: str

    def where(self) -> list[str]:
        """Where the results are (for the end-of-run summary)."""
        return [f"study:       {self.study_name} in {redact(self.storage)}"]


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
_sleep = time.sleep


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
    waiting: Callable[[int], None] | None = None,
    models_dir: str | None = None,
    keep: int | None = 1,
    threads: int | None = None,
) -> None:
    """One worker: run trials until the study has ``n_trials`` finished ones or time is up,
    then settle the trials still running (:func:`_settle_running`): none of a dead worker's
    stays RUNNING."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(
        spec, storage, study_name=study_name, heartbeat=heartbeat, retry_failed=retry_failed
    )
    models = Path(models_dir) if models_dir is not None else None
    objective = GainObjective(
        spec, eval_test=eval_test, models_dir=models, keep=keep, threads=threads
    )

    def prune(s: optuna.Study, _: FrozenTrial) -> None:
        if models is not None:
            prune_models(s, models, keep)

    callbacks = [prune, *([on_trial] if on_trial else [])]
    while True:
        _check_stop()
        if deadline is not None and _now() >= deadline:
            break
        if finished_count(study) < n_trials or _has_waiting(study):
            # a waiting trial is a retry of a dead worker's trial: it runs even past the count
            study.optimize(objective, n_trials=1, callbacks=callbacks, catch=())
        elif not _settle_running(study, heartbeat, deadline, waiting):
            break


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _settle_running(
    study: optuna.Study,
    heartbeat: int | None,
    deadline: float | None,
    waiting: Callable[[int], None] | None = None,
) -> bool:
    """The trial count is reached: before leaving, make sure no trial of a dead worker stays
    RUNNING. True when a stale trial was failed (its retry, if any, is queued: run on).

    Optuna fails a stale trial only when a worker starts a trial. A worker that finds the count
    reached while trials still run waits, for at most the heartbeat grace period (plus one
    interval), for each to finish or to go stale; a stale one is failed with Optuna's
    ``fail_stale_trials`` (which queues its retry under ``retry_failed``). A trial still running
    after the wait has a live worker, which does the same check when it ends. Without
    heartbeats a dead worker cannot be told from a live one: nothing to wait for.
    """
    if not heartbeat:
        return False
    bound = _now() + STALE_GRACE_FACTOR * heartbeat + heartbeat
    if deadline is not None:
        bound = min(bound, deadline)
    while True:
        _check_stop()
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if any(t.number not in before for t in failed):
            return True
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
        left = bound - _now()
        if left <= 0:
            return False
        if waiting:
            waiting(math.ceil(left))
        _sleep(min(1.0, left))


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
    keep: int | str | None = 1,
    threads: int | None = None,
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
        keep: The best ``keep`` complete trials keep their kept epoch's weights in
            ``OUT/models/trial_N.pt`` (default 1: the best only); ``"all"``; ``0`` or
            ``"none"``: none (:mod:`gainsearch.search.models`).
        threads: Torch threads per trial (default: torch's count of cores divided by the
            workers; a spec's ``threads`` wins). A run argument, not a spec setting: a resume
            may change it.
    """
    _check_run_args(n_trials, timeout, workers, heartbeat)
    check_threads(threads)
    kept = check_keep(keep)
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
    if storage is not None:  # a storage elsewhere: a bad URL is refused before OUT is made
        make_storage(storage, heartbeat=None)
    out.mkdir(parents=True, exist_ok=True)
    # the trials' torch threads: torch's count (the cores, or OMP_NUM_THREADS) divided by the
    # workers; a spec's threads wins. Recorded in every trial's config.
    import torch

    threads = threads or max(1, torch.get_num_threads() // workers)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    models = str((out / MODELS_DIR).resolve())
    study = create_study(spec, url, study_name=name, heartbeat=heartbeat, retry_failed=retry_failed)
    check_same_space(study, spec)
    finished_before = finished_count(study)
    deadline = _now() + timeout if timeout else None
    interrupted = False
    # _optimize's arguments, around its two callbacks (set in this process only)
    head = (spec, url, name, n_trials, deadline, eval_test, heartbeat, retry_failed)
    tail = (models, kept, threads)
    try:
        with _stop_on_signals():
            if workers == 1:

                def on_trial(s: optuna.Study, _: FrozenTrial) -> None:
                    if progress:
                        progress(study_counts(s))

                def waiting(seconds: int) -> None:
                    if progress:
                        progress({**study_counts(study), "waiting": seconds})

                if progress:
                    progress(study_counts(study))
                _optimize(*head, on_trial, waiting, *tail)
            else:
                interrupted = _run_workers(
                    (*head, None, None, *tail),
                    workers,
                    study,
                    progress,
                )
    except KeyboardInterrupt:
        interrupted = True
    rows, best = read_study(study, spec)
    write_results(out, spec, rows, best, url, name)
    return StudyOutcome(
        study_name=name,
        storage=url,
        rows=rows,
        best=best,
        interrupted=interrupted,
        new_trials=finished_count(study) - finished_before,
    )


def _run_workers(
    worker_args: tuple[Any, ...],
    workers: int,
    study: optuna.Study,
    progress: Callable[[dict[str, Any]], None] | None,
) -> bool:
    """Run ``workers`` processes of :func:`_optimize` on one storage; True if interrupted."""
    ctx = multiprocessing.get_context("spawn")
    os.environ["GAINSEARCH_WORKER_THREADS"] = str(worker_args[-1])
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
        n_trials, heartbeat = worker_args[3], worker_args[6]
        while any(p.is_alive() for p in procs):
            _check_stop()
            if progress:
                counts = study_counts(study)
                if heartbeat and counts["done"] >= n_trials and counts["running"]:
                    # the workers settle the running trials (at most this long): say so
                    counts["waiting"] = (STALE_GRACE_FACTOR + 1) * heartbeat
                progress(counts)
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


def _check_run_args(n_trials: Any, timeout: Any, workers: Any, heartbeat: Any) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, but got n_trials={n_trials!r}.")
    check_timeout(timeout)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, but got workers={workers!r}.")
    if heartbeat is not None and (not isinstance(heartbeat, int) or heartbeat < 0):
        raise ValueError(f"heartbeat must be a non-negative integer, but got {heartbeat=}.")
