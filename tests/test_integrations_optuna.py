"""Optuna back end: GainPruner and report_gain on in-memory studies; small real studies."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import gainsearch.search.run_optuna as optuna_backend
from gainsearch.core.decision import DecisionConfig, decide
from gainsearch.core.objective import gain_score
from gainsearch.integrations.optuna import GainPruner, report_gain
from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

E = np.arange(1, 11)
GOOD = [float(v) for v in 20 - 15 * np.exp(-E / 3)]
OK = [float(v) for v in 15 - 12 * np.exp(-E / 3)]
SLOW = [float(v) for v in -10 + 0.5 * E]
JAGGED = [float(v) for v in 10 + 4 * (-1.0) ** E]


def scores(curve: list[float]) -> list[float]:
    """The gain score at every epoch: what report_gain(metric="gain_score") reports."""
    return [gain_score(curve[:e]) for e in range(1, len(curve) + 1)]


def add_peer(study: optuna.Study, curve: list[float]) -> None:
    trial = study.ask()
    trial.set_user_attr("gain_curve", curve)
    for epoch, value in enumerate(scores(curve), 1):
        trial.report(value, epoch)
    study.tell(trial, curve[-1])


def study_with_peers(
    pruner: optuna.pruners.BasePruner | None = None, **kwargs: object
) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner or GainPruner(), **kwargs)
    for curve in (GOOD, OK, [v + 1.0 for v in OK]):
        add_peer(study, curve)
    return study


def run_epochs(study: optuna.Study, curve: list[float], **kwargs: object) -> tuple[int, str]:
    """Report ``curve`` epoch by epoch (the gain score unless ``metric`` is given); returns
    (epochs reported, prune reason or '')."""
    kwargs.setdefault("metric", "gain_score")
    trial = study.ask()
    for epoch in range(1, len(curve) + 1):
        try:
            report_gain(trial, curve[:epoch], epoch, **kwargs)  # type: ignore[arg-type]
        except optuna.TrialPruned as pruned:
            assert trial.user_attrs["prune_reason"] == str(pruned)
            study.tell(trial, state=TrialState.PRUNED)
            return epoch, str(pruned)
    study.tell(trial, curve[-1] if len(study.directions) == 1 else [curve[-1], 0.0])
    return len(curve), ""


def test_diverged_is_pruned_at_once() -> None:
    study = study_with_peers()
    epochs, reason = run_epochs(study, [30.0, float("nan"), 3.0])  # healthy, then NaN
    assert epochs == 2 and reason.startswith("diverged")
    pruned = study.trials[-1]
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["diagnosis"] == "diverged"


def test_trainer_divergence_flag_prunes() -> None:
    study = study_with_peers()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="training loss"):
        report_gain(trial, [5.0], 1, diverged=True, metric="gain_score")


def test_too_variable_after_warmup_with_reason() -> None:
    study = study_with_peers(GainPruner(grace_period=4))
    epochs, reason = run_epochs(study, JAGGED)
    assert epochs == 4  # warm-up respected: epochs 1-3 were not judged
    assert "learning rate too high" in reason


def test_below_percentile_with_reason() -> None:
    study = study_with_peers(GainPruner(grace_period=3, percentile=25))
    epochs, reason = run_epochs(study, SLOW)
    assert epochs == 3 and "below the 25th percentile of 3 peers" in reason
    intermediate = study.trials[-1].intermediate_values
    assert sorted(intermediate) == [1, 2, 3]


def test_default_pruner_judges_from_the_first_epoch_against_the_median() -> None:
    study = study_with_peers()
    epochs, reason = run_epochs(study, SLOW)
    assert epochs == 1 and "below the 50th percentile of 3 peers" in reason


def test_good_trial_completes_and_records_features() -> None:
    study = study_with_peers()
    epochs, reason = run_epochs(study, GOOD)
    assert epochs == 10 and reason == ""
    trial = study.trials[-1]
    assert trial.user_attrs["gain_curve"] == GOOD
    # still climbing 0.37 dB/epoch at epoch 10: the calibrated rule says "train longer"
    assert trial.user_attrs["diagnosis"] == "lr_too_low"
    assert trial.user_attrs["features"]["n_epochs"] == 10
    # the same curve with a fitted training set: overfitting; the decisions do not change
    fitted = study.ask()
    for epoch in range(1, len(GOOD) + 1):
        losses = [0.5**e for e in range(1, epoch + 1)]
        report_gain(fitted, GOOD[:epoch], epoch, train_loss=losses, metric="gain_score")
    assert fitted.user_attrs["diagnosis"] == "overfitting"
    assert "fitted" in fitted.user_attrs["diagnosis_reason"]


def test_pruner_matches_the_decision_core() -> None:
    rng = np.random.default_rng(0)
    config = DecisionConfig(grace_period=2, min_peers=2)
    for _ in range(20):
        peers = [list(np.cumsum(rng.normal(1, rng.uniform(0.1, 3), 6))) for _ in range(4)]
        curve = list(np.cumsum(rng.normal(1, rng.uniform(0.1, 3), 5)))
        study = optuna.create_study(direction="maximize", pruner=GainPruner(config=config))
        for peer in peers:
            add_peer(study, peer)
        trial = study.ask()
        trial.set_user_attr("gain_curve", curve)
        for epoch, value in enumerate(scores(curve), 1):
            trial.report(value, epoch)
        frozen = study._storage.get_trial(trial._trial_id)
        expected = decide(
            curve,
            peers,
            config=config,
            values=scores(curve),
            peer_values=[scores(p) for p in peers],
            metric="value",  # a plain trial.report names no metric
        )
        assert study.pruner.prune(study, frozen) == expected.prune
        assert study.pruner.decision(study, frozen).reason == expected.reason
        # reporting the gain score, the values give the gain-score rule's decisions
        assert expected.prune == decide(curve, peers, config=config).prune


def test_pruner_without_a_gain_curve_is_a_clear_error() -> None:
    study = optuna.create_study(pruner=GainPruner())
    trial = study.ask()
    trial.set_user_attr("loss", 1.0)
    trial.report(1.0, 1)
    with pytest.raises(ValueError, match=r"needs the trial's gain curve.*report_gain.*\['loss'\]"):
        trial.should_prune()


def test_other_pruners_give_a_generic_reason() -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(3):
        trial = study.ask()
        for epoch in range(1, 4):
            trial.report(20.0, epoch)
        study.tell(trial, 20.0)
    _, reason = run_epochs(study, SLOW)
    assert reason == "pruned by MedianPruner at epoch 1"


def test_multi_objective_studies_are_pruned_by_the_core() -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"], pruner=GainPruner(grace_period=3)
    )
    for curve in (GOOD, OK, [v + 1.0 for v in OK]):
        trial = study.ask()
        trial.set_user_attr("gain_curve", curve)
        study.tell(trial, [curve[-1], 0.0])
    epochs, reason = run_epochs(study, SLOW, metric=("level", "variability"))
    assert epochs == 3 and "percentile" in reason
    trial = study.ask()
    values = report_gain(trial, GOOD[:4], 4, metric=("level", "variability"))
    assert isinstance(values, tuple) and len(values) == 2
    assert 4 not in study._storage.get_trial(trial._trial_id).intermediate_values


def test_bad_pruner_arguments() -> None:
    with pytest.raises(ValueError, match=r"percentile must be between 0 and 100.*p=-5"):
        GainPruner(percentile=-5)
    with pytest.raises(ValueError, match=r"grace_period must be an integer >= 1"):
        GainPruner(grace_period=0)


# -- small real studies on digits -----------------------------------------------------------

SPEC = parse_spec(
    {
        "name": "tiny",
        "train": {"dataset": "digits", "model": "digits_lenet", "epochs": 4, "batch_size": 128},
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 2.0, "log": True}},
        "pruner": {"grace_period": 2, "min_peers": 2},
        "sampler": {"type": "random", "seed": 3},
    }
)


def decisions(rows: list[dict]) -> list[tuple]:
    return [(r.number, r.state, r.params, r.value, r.prune_reason, r.diagnosis) for r in rows]


def test_test_metrics_change_no_decision(tmp_path: Path) -> None:
    plain = run_study(SPEC, out_dir=tmp_path / "a", n_trials=6, heartbeat=None)
    evaluated = run_study(SPEC, out_dir=tmp_path / "b", n_trials=6, eval_test=True, heartbeat=None)
    assert decisions(plain.rows) == decisions(evaluated.rows)
    assert all(r.test_acc is None for r in plain.rows)
    assert all(r.test_acc is not None for r in evaluated.rows if r.epochs)
    assert {r.state for r in plain.rows} >= {"complete", "pruned"}


def test_resume_keeps_finished_trials_and_tops_up(tmp_path: Path) -> None:
    first = run_study(SPEC, out_dir=tmp_path, n_trials=3, heartbeat=None)
    second = run_study(SPEC, out_dir=tmp_path, n_trials=5, heartbeat=None)
    assert len(second.rows) == 5
    assert decisions(second.rows)[:3] == decisions(first.rows)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["best"]["config"]["model"] == "digits_lenet" and (tmp_path / "trials.csv").is_file()
    again = run_study(SPEC, out_dir=tmp_path, n_trials=5, heartbeat=None)
    assert decisions(again.rows) == decisions(second.rows)  # nothing to do


def test_resume_with_another_spec_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    run_study(SPEC, out_dir=tmp_path, n_trials=2, heartbeat=None)
    before = (tmp_path / "trials.csv").read_bytes(), (tmp_path / "best.json").read_bytes()
    other = SPEC.with_train(epochs=6)
    with pytest.raises(ValueError, match=r"different spec \(sections \['train'\] differ\)"):
        run_study(other, out_dir=tmp_path, n_trials=4, heartbeat=None)
    assert ((tmp_path / "trials.csv").read_bytes(), (tmp_path / "best.json").read_bytes()) == before
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 2


def sampled(first: int, n: int) -> list[float]:
    """The learning rates a process whose first trial is number ``first`` samples, drawn by
    an independent sampler seeded as :func:`gainsearch.search.study.make_sampler` says:
    (the spec's seed, ``first``); the spec's seed itself for the study's first process."""
    seed = 3 if first == 0 else int(np.random.SeedSequence([3, first]).generate_state(1)[0])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dist = optuna.distributions.FloatDistribution(1e-3, 2.0, log=True)
    return [study.ask({"lr": dist}).params["lr"] for _ in range(n)]


def test_parallel_workers_share_one_storage(tmp_path: Path) -> None:
    outcome = run_study(SPEC, out_dir=tmp_path, n_trials=4, workers=2, heartbeat=None)
    finished = [r for r in outcome.rows if r.state in ("complete", "pruned")]
    assert 4 <= len(finished) <= 5  # trials running when the count is reached still finish
    assert not [r for r in outcome.rows if r.state == "running"]
    # no duplicate: each worker samples its own sequence (a sampler seeded by the spec alone
    # made both workers run the same learning rates), and each trial ran in one worker
    lrs = [r.params["lr"] for r in outcome.rows]
    assert len(set(lrs)) == len(lrs), lrs
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2
    # reproducible, not fresh entropy: every rate is one of the sequences the two processes
    # draw from their seeds (which process got which first trial is the race's)
    possible = {lr for first in range(len(lrs)) for lr in sampled(first, len(lrs))}
    assert set(lrs) <= possible, (lrs, possible)


def test_a_resumed_study_does_not_repeat_its_first_parameters(tmp_path: Path) -> None:
    first = run_study(SPEC, out_dir=tmp_path, n_trials=2, heartbeat=None)
    again = run_study(SPEC, out_dir=tmp_path, n_trials=4, heartbeat=None)
    assert [r.params for r in again.rows[:2]] == [r.params for r in first.rows]
    lrs = [r.params["lr"] for r in again.rows]
    assert len(set(lrs)) == 4, lrs
    # reproducible: the first process drew the spec's sequence, the resumed one the sequence
    # of (seed, its first trial), exactly
    assert lrs[:2] == pytest.approx(sampled(0, 2))
    assert lrs[2:] == pytest.approx(sampled(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_trials": 0}, r"n_trials must be a positive integer, but got n_trials=0"),
        ({"n_trials": 2, "workers": 0}, r"workers must be a positive integer"),
        ({"n_trials": 2, "timeout": -1}, r"timeout must be a positive number of seconds"),
        ({"n_trials": 2, "heartbeat": -1}, r"heartbeat must be a non-negative integer"),
    ],
)
def test_bad_run_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_study(SPEC, out_dir=tmp_path, **kwargs)
    assert not (tmp_path / "study.db").exists()


def test_timeout_stops_starting_new_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that moves 1 s each time it is read, so the test does not depend on the machine's
    # speed: read at the start (deadline 2.5), then before each trial (1, 2: start; 3: stop).
    ticks = iter(range(100))
    monkeypatch.setattr(optuna_backend, "_now", lambda: float(next(ticks)))
    outcome = run_study(SPEC, out_dir=tmp_path, n_trials=6, timeout=2.5, heartbeat=None)
    assert len(outcome.rows) == 2
    assert {r.state for r in outcome.rows} <= {"complete", "pruned"}
    assert not outcome.interrupted


class SignalInFinaliser:
    """Sends a signal from ``__del__``, where Python drops any exception a handler raises
    ("Exception ignored ..."): as when a signal lands in SQLAlchemy's weakref clean-up, which
    once let an interrupted CI study run on to the end."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_anywhere_fails_the_running_trial_at_the_next_batch_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    real = optuna_backend.report_gain
    went_on = []

    def report_then_signal(trial: optuna.Trial, monitor: object, epoch: int, **kw: object) -> Any:
        value = real(trial, monitor, epoch, **kw)  # type: ignore[arg-type]
        if trial.number == 1 and epoch == 2:
            SignalInFinaliser(signum)  # dropped at once: __del__ sends the signal
            went_on.append(epoch)  # the handler only asked for a stop
        return value

    monkeypatch.setattr(optuna_backend, "report_gain", report_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outcome = run_study(SPEC, out_dir=tmp_path, n_trials=5, heartbeat=None)
    assert outcome.interrupted and went_on == [2]
    study = optuna.load_study(study_name="tiny", storage=outcome.storage)
    assert [t.state for t in study.trials][1:] == [TrialState.FAIL]  # no third trial started
    assert sorted(study.trials[1].intermediate_values) == [1, 2]  # stopped in epoch 3
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back
    again = run_study(SPEC, out_dir=tmp_path, n_trials=3, heartbeat=None)  # the same call resumes
    assert not again.interrupted and len(again.rows) == 4  # the failed trial does not count


def test_a_second_signal_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = optuna_backend.report_gain
    reached = []

    def report_then_signal(trial: optuna.Trial, monitor: object, epoch: int, **kw: object) -> Any:
        value = real(trial, monitor, epoch, **kw)  # type: ignore[arg-type]
        if trial.number == 0 and epoch == 1:
            signal.raise_signal(signal.SIGINT)
            reached.append("after the first")
            signal.raise_signal(signal.SIGINT)
            reached.append("after the second")
        return value

    monkeypatch.setattr(optuna_backend, "report_gain", report_then_signal)
    outcome = run_study(SPEC, out_dir=tmp_path, n_trials=5, heartbeat=None)
    assert outcome.interrupted and reached == ["after the first"]
    assert [r.state for r in outcome.rows] == ["fail"]


def test_a_signal_between_trials_stops_before_the_next(tmp_path: Path) -> None:
    events: list[dict] = []

    def progress(counts: dict) -> None:
        events.append(counts)
        if len(events) == 2:  # after the first trial ended
            SignalInFinaliser(signal.SIGINT)

    outcome = run_study(SPEC, out_dir=tmp_path, n_trials=5, heartbeat=None, progress=progress)
    assert outcome.interrupted
    assert [r.state for r in outcome.rows] in (["complete"], ["pruned"])


def test_an_ignored_signal_stays_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = optuna_backend.report_gain

    def report_then_signal(trial: optuna.Trial, monitor: object, epoch: int, **kw: object) -> Any:
        value = real(trial, monitor, epoch, **kw)  # type: ignore[arg-type]
        if trial.number == 0 and epoch == 1:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C in the terminal of a nohup job
        return value

    monkeypatch.setattr(optuna_backend, "report_gain", report_then_signal)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome = run_study(SPEC, out_dir=tmp_path, n_trials=2, heartbeat=None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not outcome.interrupted and len(outcome.rows) == 2
