"""Ray Tune back end: GainScheduler on fake results; a two-node loopback cluster with a node
removed mid-search."""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

pytest.importorskip("ray.tune")

import ray
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from gainsearch.core.decision import DecisionConfig
from gainsearch.integrations.optuna import GainPruner
from gainsearch.integrations.ray import GainScheduler
from gainsearch.search.run_ray import run_tuner
from gainsearch.search.spaces import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def feed(scheduler: GainScheduler, trial_id: str, curve: list[float]) -> list[bool]:
    return [
        scheduler.observe(trial_id, {"epoch": e, "gain": g}) for e, g in enumerate(curve, start=1)
    ]


def test_same_curves_same_decisions_as_gain_pruner() -> None:
    rng = np.random.default_rng(1)
    config = DecisionConfig(grace_period=2, min_peers=2)
    for _ in range(15):
        peers = [list(np.cumsum(rng.normal(1, rng.uniform(0.1, 3), 6))) for _ in range(3)]
        curve = list(np.cumsum(rng.normal(1, rng.uniform(0.1, 3), 6)))
        scheduler = GainScheduler(config=config)
        study = optuna.create_study(direction="maximize", pruner=GainPruner(config=config))
        for i, peer in enumerate(peers):
            feed(scheduler, f"peer{i}", peer)
            t = study.ask()
            t.set_user_attr("gain_curve", peer)
            study.tell(t, peer[-1])
        trial = study.ask()
        for epoch in range(1, len(curve) + 1):
            trial.set_user_attr("gain_curve", curve[:epoch])
            frozen = study._storage.get_trial(trial._trial_id)
            expected = study.pruner.decision(study, frozen)
            stop = scheduler.observe("me", {"epoch": epoch, "gain": curve[epoch - 1]})
            assert stop == expected.prune
            if stop:
                assert scheduler.stop_reasons["me"] == expected.reason
                break


def test_diverged_stops_at_once_and_grace_period_is_respected() -> None:
    scheduler = GainScheduler(grace_period=4, min_peers=1)
    feed(scheduler, "peer", [10.0, 12.0, 13.0, 14.0, 15.0])
    assert feed(scheduler, "slow", [-10.0, -9.0, -8.0, -7.0]) == [False, False, False, True]
    assert "percentile" in scheduler.stop_reasons["slow"]
    assert scheduler.observe("bad", {"epoch": 1, "gain": None}) is True
    assert scheduler.stop_reasons["bad"].startswith("diverged")
    assert scheduler.observe("loss", {"epoch": 1, "gain": 3.0, "diverged": True}) is True


def test_on_trial_result_returns_ray_decisions() -> None:
    scheduler = GainScheduler(min_peers=1, grace_period=1)
    trial = SimpleNamespace(trial_id="t1")
    assert (
        scheduler.on_trial_result(None, trial, {"epoch": 1, "gain": 5.0}) == TrialScheduler.CONTINUE
    )
    assert (
        scheduler.on_trial_result(None, trial, {"epoch": 2, "gain": float("nan")})
        == TrialScheduler.STOP
    )


def test_the_scheduler_saves_and_restores_what_it_has_seen(tmp_path: Path) -> None:
    """GainScheduler.save/restore (TrialScheduler's, as ASHA has them): a restored scheduler
    judges the next result as the one that saw the peers; a fresh one cannot (too few peers)."""

    def result(epoch: int, gain: float) -> dict[str, float]:
        return {"epoch": epoch, "gain": gain, "trial_score": gain / 10}

    seen = GainScheduler(grace_period=2, min_peers=2, metric="trial_score", mode="max")
    for i, peer in enumerate(([10.0, 12.0, 13.0], [11.0, 13.0, 15.0], [9.0, 12.0, 14.0])):
        for epoch, gain in enumerate(peer, 1):
            seen.observe(f"peer{i}", result(epoch, gain))
    seen.observe("slow", result(1, -10.0))
    seen.save(str(tmp_path / "scheduler.json"))
    restored = GainScheduler(grace_period=2, min_peers=2)
    restored.restore(str(tmp_path / "scheduler.json"))
    assert restored.curves == seen.curves and restored.values == seen.values
    assert (restored.metric, restored.mode) == ("trial_score", "max")
    assert restored.observe("slow", result(2, -9.0)) is seen.observe("slow", result(2, -9.0))
    assert "slow" in restored.stop_reasons  # below its peers at epoch 2
    fresh = GainScheduler(grace_period=2, min_peers=2, metric="trial_score", mode="max")
    fresh.observe("slow", result(1, -10.0))
    assert fresh.observe("slow", result(2, -9.0)) is False  # no peers: what restore gave back


def test_a_restarted_trial_replaces_its_curve() -> None:
    scheduler = GainScheduler()
    feed(scheduler, "t", [1.0, 2.0, 3.0])
    scheduler.observe("t", {"epoch": 2, "gain": 2.5})
    assert scheduler.curves["t"] == {1: 1.0, 2: 2.5}


def test_missing_metrics_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"needs 'epoch' and 'gain'.*\['loss'\]"):
        GainScheduler().observe("t", {"loss": 1.0})
    with pytest.raises(ValueError, match=r"percentile must be between 0 and 100"):
        GainScheduler(percentile=200)
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', but got mode='up'"):
        GainScheduler(mode="up")


SPEC = parse_spec(
    {
        "name": "ray_e2e",
        "train": {"dataset": "digits", "model": "digits_lenet", "epochs": 8, "batch_size": 16},
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True}},
        "pruner": {"grace_period": 3, "min_peers": 2},
        "sampler": {"type": "tpe", "seed": 0},
    }
)


def test_bad_tuner_arguments(tmp_path: Path) -> None:
    multi = parse_spec({**SPEC.to_dict(), "objective": {"metric": ["level", "variability"]}})
    with pytest.raises(ValueError, match=r"Ray back end optimises one metric"):
        run_tuner(multi, out_dir=tmp_path, n_trials=2)
    with pytest.raises(ValueError, match=r"max_concurrent must be a positive integer"):
        run_tuner(SPEC, out_dir=tmp_path, n_trials=2, max_concurrent=0)
    with pytest.raises(ValueError, match=r"cpus_per_trial must be a positive number"):
        run_tuner(SPEC, out_dir=tmp_path, n_trials=2, cpus_per_trial=0)
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, but got "):
        run_tuner(SPEC, out_dir=tmp_path, n_trials=2, timeout=-5)
    with pytest.raises(ValueError, match=r"reuse_actors must be True or False, but got reuse_"):
        run_tuner(SPEC, out_dir=tmp_path / "x", n_trials=2, reuse_actors="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists() and not ray.is_initialized()  # refused before anything


@pytest.fixture
def two_node_cluster():  # type: ignore[no-untyped-def]
    from ray.cluster_utils import Cluster

    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # set in conftest.py
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_two_node_search_survives_losing_a_worker(two_node_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, worker = two_node_cluster
    assert cluster.address.startswith("127.0.0.1:")
    ray.init(address=cluster.address, include_dashboard=False)
    worker_id = worker.node_id
    removed = threading.Event()
    results_dir = tmp_path / "out" / "ray_results" / "ray_e2e"

    def remove_worker_mid_trial() -> None:
        """Once a trial on the worker node has reported 2 epochs, take the node away."""
        deadline = time.time() + 240
        while time.time() < deadline and not removed.is_set():
            for result_file in results_dir.glob("*/result.json"):
                lines = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
                if (
                    len(lines) >= 2
                    and lines[-1].get("node_id") == worker_id
                    and lines[-1]["epoch"] < 8
                ):
                    cluster.remove_node(worker, allow_graceful=False)
                    removed.set()
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_worker_mid_trial, daemon=True)
    killer.start()
    outcome = run_tuner(
        SPEC, out_dir=tmp_path / "out", n_trials=4, max_concurrent=2, address=cluster.address
    )
    killer.join(timeout=5)
    assert removed.is_set(), "no trial ran on the worker node"
    rows = outcome.rows
    assert len(rows) == 4
    assert all(r.state in ("complete", "pruned") for r in rows), [r.prune_reason for r in rows]
    nodes = {n for r in rows for n in r.nodes}
    assert worker_id in nodes and len(nodes) == 2  # trials ran on both nodes
    for r in rows:  # a restarted trial resumed from its last checkpoint: no gap, never back
        # more than the epoch in flight (Ray delivers results at least once: if the node dies
        # between an epoch's report and the driver registering its checkpoint, that one epoch
        # is trained and reported again; seen once in CI), and the curve has one reading each
        log = r.epoch_log
        assert sorted(set(log)) == list(range(1, r.epochs + 1)), log
        assert log == sorted(log), log
        assert len(log) - len(set(log)) <= 1, log
        assert len(r.gain_curve) == r.epochs
    for r in rows:  # the scheduler's evaluation, stored in the results by GainResults
        assert r.diagnosis and r.diagnosis_reason, r
        assert r.prune_rule in (
            ("diverged", "too_variable", "below_percentile") if r.state == "pruned" else ("",)
        )
    moved = [r for r in rows if len(r.nodes) == 2]
    assert moved, "the interrupted trial should have finished on the head node"
    table = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert table[0].startswith("number,state,lr,value") and len(table) == 5
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["metric"] == "trial_score"


def test_a_local_ray_started_by_gainsearch_binds_loopback_only(ray_address: str) -> None:
    """...and has no dashboard: no web UI address, nothing listening on its port; and it is a
    Ray of its own even where `ray start` left a cluster on the machine (the session's here),
    which a bare ``ray.init()`` would join."""
    import subprocess
    import sys

    code = (
        "import socket\n"
        "import ray\n"
        "from ray._private import worker\n"
        "from gainsearch.search.ray_cluster import connect\n"
        "def listening():\n"
        "    with socket.socket() as s:\n"
        "        return s.connect_ex(('127.0.0.1', 8265)) == 0\n"
        "before = listening()  # something else may hold the port: only a change counts\n"
        "assert connect(None)\n"
        "info = worker.global_worker.node.address_info\n"
        "print(repr(info.get('webui_url')), listening() and not before)\n"
        "print(ray.nodes()[0]['NodeManagerAddress'])\n"
        "print(ray.get_runtime_context().gcs_address)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    *_, dashboard, address, gcs = done.stdout.strip().splitlines()
    assert address == "127.0.0.1"
    assert gcs != ray_address  # its own, not the cluster `ray start` left running
    assert dashboard in ("'' False", "None False"), dashboard
    assert "Token authentication" not in done.stderr  # Ray's note, silenced for a local Ray


def test_unreachable_address_is_a_clear_error(tmp_path: Path) -> None:
    started = time.time()
    with pytest.raises(ValueError, match=r"--address '127.0.0.1:1': cannot connect to a Ray"):
        run_tuner(SPEC, out_dir=tmp_path, n_trials=1, address="127.0.0.1:1")
    assert time.time() - started < 120


def test_diverged_trials_without_a_gain_scheduler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A diverged trial reports a NaN score; OptunaSearch must take it (regression), and the
    user sees no warning for it (Optuna's "The value nan is not acceptable")."""
    spec = parse_spec(
        {
            "name": "ray_diverge",
            "train": {"dataset": "digits", "model": "digits_lenet", "epochs": 3},
            "search": {"lr": {"type": "float", "low": 5.0, "high": 50.0, "log": True}},
            "pruner": {"type": "none"},
        }
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run_tuner(spec, out_dir=tmp_path, n_trials=2, max_concurrent=1)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "is not acceptable" in m], said
    assert [r.state for r in outcome.rows] == ["pruned", "pruned"]
    assert all(r.prune_reason.startswith("diverged") for r in outcome.rows)
    assert outcome.best["best"] is None


@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_ray_schedulers_on_the_gain_score_mark_stopped_trials(tmp_path: Path, pruner: str) -> None:
    settings = {"type": pruner, "grace_period": 1, "min_peers": 1}
    spec = parse_spec({**SPEC.to_dict(), "name": f"ray_{pruner}", "pruner": settings})
    spec = spec.with_train(batch_size=128, epochs=4)
    wide = {"lr": {"type": "float", "low": 1e-5, "high": 0.05, "log": True}}  # some far too low
    spec = parse_spec({**spec.to_dict(), "search": wide})
    outcome = run_tuner(spec, out_dir=tmp_path, n_trials=5, max_concurrent=1)  # deterministic
    states = [r.state for r in outcome.rows]
    assert len(states) == 5 and "interrupted" not in states and "failed" not in states
    assert "pruned" in states and "complete" in states, states
    for r in outcome.rows:
        if r.state == "pruned":
            assert r.prune_reason.startswith(("stopped at epoch", "diverged"))
            assert r.prune_rule in ("pruner", "diverged")
            assert r.epochs < 4
        assert r.diagnosis_reason  # GainResults diagnosed it against its peers


def test_resume_with_another_spec_is_refused(tmp_path: Path) -> None:
    spec = SPEC.with_train(batch_size=256, epochs=2)
    run_tuner(spec, out_dir=tmp_path, n_trials=1, max_concurrent=1)
    before = (tmp_path / "trials.csv").read_bytes()
    with pytest.raises(ValueError, match=r"different spec \(sections \['train'\] differ\)"):
        run_tuner(
            spec.with_train(epochs=3),
            out_dir=tmp_path,
            n_trials=1,
            max_concurrent=1,
        )
    assert (tmp_path / "trials.csv").read_bytes() == before


def test_timeout_lets_running_trials_finish_and_the_same_call_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout`` means what it means on the Optuna back end. Tune's ``time_budget_s`` (used
    before) stopped the running trials, left them "interrupted", and carried its spent budget
    over to the resumed run, which then started nothing and said "interrupted" again."""
    import gainsearch.search.run_ray as ray_backend

    started: list[str] = []
    create = ray_backend._DeadlineSearch.create_trial_if_possible

    def counting(self, spec):  # type: ignore[no-untyped-def]
        trial = create(self, spec)
        if trial is not None:
            started.append(trial.trial_id)
        return trial

    monkeypatch.setattr(ray_backend._DeadlineSearch, "create_trial_if_possible", counting)
    # time stands still until two trials have started, then the 60 s are up
    monkeypatch.setattr(ray_backend, "_now", lambda: 0.0 if len(started) < 2 else 1e12)
    spec = SPEC.with_train(batch_size=256, epochs=2)
    first = run_tuner(spec, out_dir=tmp_path, n_trials=5, max_concurrent=2, timeout=60)
    assert len(first.rows) == 2 and not first.interrupted
    assert {r.state for r in first.rows} <= {"complete", "pruned"}, first.rows
    assert all(r.epochs == 2 for r in first.rows if r.state == "complete")

    # later: past the first deadline, not the new one (the restored search gets the new one)
    monkeypatch.setattr(ray_backend, "_now", lambda: 1000.0)
    again = run_tuner(spec, out_dir=tmp_path, n_trials=5, max_concurrent=2, timeout=60)
    assert len(again.rows) == 5 and not again.interrupted
    assert [(r.trial_id, r.value) for r in again.rows[:2]] == [
        (r.trial_id, r.value) for r in first.rows
    ]


def test_a_directory_of_another_study_is_refused_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "best.json").write_text(json.dumps({"study_name": "someone_else"}))
    with pytest.raises(ValueError, match=r"holds the results of study 'someone_else'.*'ray_e2e'"):
        run_tuner(SPEC, out_dir=tmp_path, n_trials=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]
    assert not ray.is_initialized()  # refused before Ray started


def test_running_trials_are_peers_on_both_back_ends() -> None:
    """The peer set is the same: every other trial that reached the epoch, running or not."""
    config = DecisionConfig(min_peers=3)
    peers = [[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [0.5, 1.0, 1.5]]
    study = optuna.create_study(direction="maximize", pruner=GainPruner(config=config))
    scheduler = GainScheduler(config=config)
    running = []
    for i, peer in enumerate(peers):
        t = study.ask()  # never told: still running
        t.set_user_attr("gain_curve", peer)
        running.append(t)
        feed(scheduler, f"peer{i}", peer)
    study.tell(running[0], state=optuna.trial.TrialState.PRUNED)  # pruned peers count too
    me = study.ask()
    me.set_user_attr("gain_curve", [0.0, 0.1, 0.2])
    decision = study.pruner.decision(study, study._storage.get_trial(me._trial_id))
    assert decision.peers == 3 and decision.rule == "below_percentile"
    assert feed(scheduler, "me", [0.0, 0.1, 0.2])[-1] is True
    assert scheduler.evaluations["me"].decision == decision


def test_finished_and_stopped_trials_stay_peers() -> None:
    """Peers are the trials that reached the epoch, whatever became of them since: completed,
    stopped, errored or removed trials keep their series."""
    scheduler = GainScheduler(min_peers=3)
    peers = {"done": [1.0, 2.0, 3.0], "stopped": [1.5, 2.5, 3.5], "failed": [0.5, 1.0, 1.5]}
    for trial_id, curve in peers.items():
        feed(scheduler, trial_id, curve)
    trial = SimpleNamespace(trial_id="done")
    scheduler.on_trial_complete(None, trial, {"epoch": 3, "gain": 3.0})
    scheduler.on_trial_remove(None, SimpleNamespace(trial_id="stopped"))
    scheduler.on_trial_error(None, SimpleNamespace(trial_id="failed"))
    assert feed(scheduler, "me", [0.0, 0.1, 0.2])[-1] is True
    assert scheduler.evaluations["me"].decision.peers == 3


def test_the_diagnosis_is_against_the_peers_after_the_first_epochs() -> None:
    """A flat curve far below its peers is "learning rate too low" only against them (alone
    it reads as converged): the stored diagnosis is the one with peers, at epoch 4."""
    from gainsearch.core.features import diagnose
    from gainsearch.integrations.ray import GainResults

    scheduler = GainScheduler(min_peers=2, metric="trial_score", mode="max")
    callback = GainResults(scheduler, budget=6)
    rising = [[20 - 15 * math.exp(-e / s) for e in range(1, 5)] for s in (1.0, 1.5, 2.0)]
    flat = [0.0, 0.05, 0.1, 0.1]
    stored = {}
    for trial_id, curve in [*((f"p{i}", c) for i, c in enumerate(rising)), ("me", flat)]:
        for e, gain in enumerate(curve, 1):
            result = {"epoch": e, "gain": gain, "train_loss": 1.0, "trial_score": 0.0}
            scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)
            callback.on_trial_result(0, [], SimpleNamespace(trial_id=trial_id), result)
        stored[trial_id] = result
    alone = diagnose(flat, train_loss=[1.0] * 4).label
    against = diagnose(flat, peers=rising, train_loss=[1.0] * 4).label
    assert alone != against == "lr_too_low"
    assert stored["me"]["diagnosis"] == against and stored["me"]["epoch"] == 4


def test_gain_results_under_another_scheduler_keep_a_divergence() -> None:
    from gainsearch.integrations.ray import GainResults

    other = GainResults(FIFOScheduler(), budget=3)
    first = {"epoch": 1, "gain": 1.0, "train_loss": 1.0}
    other.on_trial_result(0, [], SimpleNamespace(trial_id="x"), first)
    diverged = {"epoch": 2, "gain": None, "train_loss": None, "diverged": True, "done": True}
    other.on_trial_result(0, [], SimpleNamespace(trial_id="x"), diverged)
    assert diverged["prune_rule"] == "diverged"
    assert "non-finite at epoch 2" in diverged["prune_reason"]
    assert diverged["diagnosis"] == "diverged"


def test_gain_results_store_the_evaluation_in_the_result() -> None:
    from gainsearch.integrations.ray import GainResults

    scheduler = GainScheduler(min_peers=2, metric="trial_score", mode="max")
    callback = GainResults(scheduler, budget=3)
    results = {}
    for trial_id, loss in (("a", 1.0), ("b", 0.5), ("c", 2.0)):
        result = {"epoch": 1, "gain": 1.0, "train_loss": loss, "trial_score": -math.log10(loss)}
        scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)
        callback.on_trial_result(0, [], SimpleNamespace(trial_id=trial_id), result)
        results[trial_id] = result
    assert results["a"]["decision_rule"] == "few_peers" and "prune_rule" not in results["a"]
    assert results["c"]["prune_rule"] == "below_percentile"
    assert results["c"]["prune_reason"] == scheduler.stop_reasons["c"]
    assert results["c"]["diagnosis"] == scheduler.evaluations["c"].diagnosis.label
    # with another scheduler: the diagnosis against the peers, a stop before the budget as rule
    other = GainResults(FIFOScheduler(), budget=3)
    stopped = {"epoch": 1, "gain": 1.0, "train_loss": 1.0, "done": True}
    other.on_trial_result(0, [], SimpleNamespace(trial_id="x"), stopped)
    assert stopped["prune_rule"] == "pruner" and "FIFOScheduler" in stopped["prune_reason"]
    assert stopped["diagnosis"] == "undetermined"


def test_resuming_through_ray_client_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restored Tuner in Ray Client mode would run without this run's scheduler and
    callbacks (they are installed on the local Tuner): refused, saying what to do instead."""
    import ray.tune

    import gainsearch.search.run_ray as ray_backend

    monkeypatch.setattr(ray.tune.Tuner, "can_restore", staticmethod(lambda path: True))
    restored: list[str] = []
    monkeypatch.setattr(ray.tune.Tuner, "restore", lambda *a, **k: restored.append("called"))
    run = ray_backend._Run(
        SPEC,
        "ray_e2e",
        tmp_path,
        dict(SPEC.train),
        str(tmp_path / "ray_results"),
        f"sqlite:///{tmp_path / 'study.db'}",
        None,
        None,
        "ray://127.0.0.1:10001",
    )
    with pytest.raises(ValueError, match=r"resuming a Ray search through Ray Client \(ray://\)"):
        run.tuner(1, 1, 0, ray_backend.gain_trainable, {}, True)
    assert not restored and not ray.is_initialized()


def test_the_ray_study_is_the_record_the_optuna_back_end_keeps(tmp_path: Path) -> None:
    """The same spec and seed on both back ends (one trial at a time on Ray, so the peers are
    the same): the Ray back end's study holds the same states, values, intermediate values and
    user attributes as the Optuna back end's, and its report from the URL shows the table of
    its report from the directory."""
    from optuna.trial import TrialState

    from gainsearch.report import load_run
    from gainsearch.search.run_optuna import run_study

    spec = parse_spec(
        {
            "name": "record",
            "train": {"dataset": "digits", "model": "digits_lenet", "epochs": 3, "batch_size": 256},
            "search": {"lr": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}},
            "pruner": {"grace_period": 1, "min_peers": 1},
            "sampler": {"type": "random", "seed": 5},
        }
    )
    run_study(spec, out_dir=tmp_path / "optuna", n_trials=5, heartbeat=None)
    run_tuner(spec, out_dir=tmp_path / "ray", n_trials=5, max_concurrent=1)
    assert not ray.is_initialized()
    # one process ran every trial (reuse_actors), and the records below are still the Optuna
    # back end's, trial for trial: nothing a trial leaves behind changes the next one
    results = (tmp_path / "ray" / "ray_results" / "record").glob("*/result.json")
    pids = {json.loads(line)["pid"] for f in results for line in f.read_text().splitlines()}
    assert len(pids) == 1
    studies = [
        optuna.load_study(study_name="record", storage=f"sqlite:///{tmp_path / b / 'study.db'}")
        for b in ("optuna", "ray")
    ]
    ours, theirs = (sorted(s.trials, key=lambda t: t.number) for s in studies)
    assert len(ours) == len(theirs) == 5
    states = [t.state for t in theirs]
    assert TrialState.RUNNING not in states and TrialState.COMPLETE in states
    rules = {t.user_attrs.get("prune_rule") for t in theirs}
    assert {"diverged", "below_percentile"} <= rules  # pruned and diverged trials recorded
    for a, b in zip(ours, theirs, strict=True):
        assert a.state == b.state, (a.number, a.user_attrs.get("prune_reason"))
        assert a.params == pytest.approx(b.params)
        assert (a.value is None) == (b.value is None)
        if a.value is not None:
            assert a.value == pytest.approx(b.value)
        assert sorted(a.intermediate_values) == sorted(b.intermediate_values)
        for step, value in a.intermediate_values.items():
            other = b.intermediate_values[step]
            assert (math.isnan(value) and math.isnan(other)) or value == pytest.approx(other)
        for key in ("gain_curve", "gain_epochs", "train_loss", "diagnosis", "prune_rule"):
            assert a.user_attrs.get(key) == pytest.approx(b.user_attrs.get(key)), key
        assert a.user_attrs.get("prune_reason") == b.user_attrs.get("prune_reason")
        assert b.user_attrs["ray_trial_id"] and b.user_attrs["config"]["lr"] == b.params["lr"]

    def table(source: str) -> list[tuple]:
        return [
            (r.state, r.params, r.value, r.epochs, r.diagnosis, r.prune_rule, r.prune_reason)
            for r in load_run(source).rows
        ]

    url = f"sqlite:///{tmp_path / 'ray' / 'study.db'}"
    assert table(url) == table(str(tmp_path / "ray"))
    # written once: the rows of the run written again add nothing
    from gainsearch.search.record import write_trials

    study = optuna.load_study(study_name="record", storage=url)
    assert write_trials(study, load_run(str(tmp_path / "ray")).rows, spec) == 0
    assert len(optuna.load_study(study_name="record", storage=url).trials) == 5


def test_tpe_on_ray_learns_the_kept_epochs_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With select_by the kept epoch is not always the last: the value Tune's searcher
    tells TPE is the row's value (the kept epoch's trial score) and the Optuna back end's (issue
    30: it was the last result's)."""
    from ray.tune.search.optuna import OptunaSearch

    from gainsearch.search.run_optuna import run_study

    told: dict[str, float] = {}
    original = OptunaSearch.on_trial_complete

    def spy(self, trial_id, result=None, error=False):  # type: ignore[no-untyped-def]
        if result is not None:
            told[trial_id] = result[self._metric]
        return original(self, trial_id, result, error)

    monkeypatch.setattr(OptunaSearch, "on_trial_complete", spy)
    spec = parse_spec(
        {
            "name": "kept",
            "train": {
                "dataset": "digits",
                "model": "digits_lenet",
                "epochs": 8,
                "batch_size": 128,
                "select_by": "gain_trend",  # its lowest reading: rarely the last epoch
            },
            "search": {"lr": {"type": "float", "low": 0.03, "high": 0.15, "log": True}},
            "pruner": {"type": "none"},
            "sampler": {"type": "random", "seed": 3},
        }
    )
    ray_run = run_tuner(spec, out_dir=tmp_path / "ray", n_trials=3, max_concurrent=1)
    optuna_run = run_study(spec, out_dir=tmp_path / "optuna", n_trials=3, heartbeat=None)
    rows = {r.trial_id: r for r in ray_run.rows}
    assert sorted(told) == sorted(rows)
    stopped_early = 0
    for trial_id, value in told.items():
        row = rows[trial_id]
        if row.diagnosis == "diverged":  # nan, as the Optuna back end prunes it
            assert math.isnan(value), trial_id
            continue
        assert value == pytest.approx(row.value), trial_id
        stopped_early += row.selected_epoch is not None and row.selected_epoch < row.epochs
    assert stopped_early  # at least one trial kept an epoch before its last
    assert [r.value for r in ray_run.rows] == pytest.approx([r.value for r in optuna_run.rows])
