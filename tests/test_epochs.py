"""Epochs are numbers, not counts: a trial measured every k-th epoch, or first after epoch 1, is
judged at its epoch numbers against its peers' readings at the same numbers, on both back ends
(Lightning: tests/test_integrations_lightning.py)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from gainsearch.core.decision import DIVERGED, Decision, DecisionConfig, align, decide
from gainsearch.core.evaluation import evaluate
from gainsearch.integrations.optuna import GainPruner, record_gain, report_gain

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIG = DecisionConfig(grace_period=1, min_peers=3)
RNG = np.random.default_rng(3)
#: peers: four smooth rising curves; the trial: a slow one (pruned below the median)
PEERS = [list(20 - 15 * np.exp(-np.arange(1, 9) / s)) for s in (2.0, 2.5, 3.0, 3.5)]
SLOW = [float(v) for v in -10 + 0.5 * np.arange(1, 9)]
LOSSES = [float(v) for v in 2.0 * np.exp(-np.arange(1, 9) / 4)]
SLOW_LOSSES = [float(v) for v in 2.3 - 0.01 * np.arange(1, 9)]


def test_align_reads_peers_at_the_trial_epochs() -> None:
    peers = [[1.0, 2.0, 3.0, 4.0], {2: 5.0, 4: 6.0}, {2: 1.0, 3: 2.0}, [1.0, math.nan]]
    assert align(peers, [2, 4]) == [{2: 2.0, 4: 4.0}, {2: 5.0, 4: 6.0}]


def test_decide_judges_the_epoch_number_not_the_count() -> None:
    config = DecisionConfig(grace_period=4, min_peers=3)
    # two readings, the second at epoch 4: the grace period is over
    d = decide(SLOW[:2], PEERS, epochs=[2, 4], config=config)
    assert d.epoch == 4 and d.rule != "grace_period"
    # the peers are read at epochs 2 and 4: the same decision as with their values cut there
    cut = [[p[1], p[3]] for p in PEERS]
    same = decide(SLOW[:2], cut, config=CONFIG)  # epoch 2 of the counts: grace period 1
    assert (d.prune, d.rule, d.value) == (same.prune, same.rule, same.value)
    assert "epoch 4" in d.reason and "epoch 2 " not in d.reason
    # a peer without a reading at epoch 4 cannot be compared there
    few = decide(SLOW[:2], [{2: 1.0, 3: 2.0}] * 3, epochs=[2, 4], config=config)
    assert few.rule == "few_peers" and few.peers == 0
    with pytest.raises(ValueError, match=r"epochs must have one entry per reading \(2\)"):
        decide(SLOW[:2], PEERS, epochs=[4])


def test_evaluate_compares_values_at_the_same_epoch() -> None:
    values = [{e: float(e) for e in range(1, 9)} for _ in range(3)]
    ev = evaluate(
        SLOW[:3],
        epochs=[2, 4, 6],
        peers=PEERS,
        peer_values=values,
        metric="gain_score",
        value=5.0,  # below the peers' 6.0 at epoch 6 (their 3.0 at epoch 3 would be above)
        config=CONFIG,
    )
    assert ev.epoch == 6 and ev.decision.epoch == 6
    assert ev.decision.rule == "below_percentile" and ev.decision.value == 5.0


def test_a_first_report_after_epoch_one_is_not_divergence() -> None:
    ev = evaluate(SLOW[:1], epochs=[2], train_loss=SLOW_LOSSES[:1], config=CONFIG)
    assert ev.decision.rule != DIVERGED and ev.epoch == 2


# -- Optuna --------------------------------------------------------------------------------------


def _optuna_run(stride: int, *, plain: bool) -> list[tuple[int, Decision | str]]:
    """A study of the four peers and the slow trial, each measured every ``stride``-th epoch;
    the slow trial reported with report_gain, or (``plain``) with record_gain + trial.report +
    should_prune. Returns the slow trial's (epoch, decision) per report."""
    study = optuna.create_study(direction="maximize", pruner=GainPruner(config=CONFIG))
    for peer in PEERS:
        trial = study.ask()
        for i in range(len(peer)):
            report_gain(
                trial,
                peer[: i + 1],
                (i + 1) * stride,
                train_loss=LOSSES[: i + 1],
            )
        study.tell(trial, 1.0)
    trial = study.ask()
    out: list[tuple[int, Decision | str]] = []
    pruner = study.pruner
    assert isinstance(pruner, GainPruner)
    for i in range(len(SLOW)):
        epoch = (i + 1) * stride
        epochs = [(j + 1) * stride for j in range(i + 1)]
        if plain:
            record_gain(trial, SLOW[: i + 1], epochs=epochs, train_loss=SLOW_LOSSES[: i + 1])
            value = evaluate(
                SLOW[: i + 1], train_loss=SLOW_LOSSES[: i + 1], epochs=epochs
            ).trial_score
            trial.report(value, epoch)
            frozen = next(t for t in study.trials if t.number == trial.number)
            decision = pruner.decision(study, frozen)
            assert trial.should_prune() == decision.prune
            out.append((epoch, decision))
            if decision.prune:
                break
        else:
            try:
                report_gain(trial, SLOW[: i + 1], epoch, train_loss=SLOW_LOSSES[: i + 1])
                frozen = next(t for t in study.trials if t.number == trial.number)
                out.append((epoch, pruner.decision(study, frozen)))
            except optuna.TrialPruned as pruned:
                out.append((epoch, str(pruned)))
                break
    return out


def test_optuna_stride_two_prunes_where_stride_one_does() -> None:
    one, two = _optuna_run(1, plain=False), _optuna_run(2, plain=False)
    assert isinstance(one[-1][1], str) and isinstance(two[-1][1], str)  # both pruned
    assert len(one) == len(two)  # at the same reading
    assert two[-1][0] == 2 * one[-1][0]  # at its own epoch number
    assert f"at epoch {two[-1][0]}" in two[-1][1]


@pytest.mark.parametrize("stride", [1, 2])
def test_optuna_report_gain_and_plain_report_decide_alike(stride: int) -> None:
    via_report_gain = _optuna_run(stride, plain=False)
    plain = _optuna_run(stride, plain=True)
    assert [e for e, _ in plain] == [e for e, _ in via_report_gain]
    for (_, ours), (_, theirs) in zip(via_report_gain, plain, strict=True):
        if isinstance(ours, str):  # pruned by report_gain: the plain path pruned with that reason
            assert isinstance(theirs, Decision) and theirs.prune
            assert theirs.reason == ours.replace("trial_score", "value")
        else:
            assert isinstance(theirs, Decision)
            assert (theirs.prune, theirs.rule) == (ours.prune, ours.rule)


def test_optuna_report_gain_needs_the_curve_last_epoch() -> None:
    study = optuna.create_study(direction="maximize", pruner=GainPruner(config=CONFIG))
    trial = study.ask()
    from gainsearch.core.monitor import GainMonitor

    monitor = GainMonitor((1, 4, 4))
    monitor.load_state_dict(
        {
            "in_shape": [1, 4, 4],
            "history": [
                {"epoch": 2, "gain": 1.0, "channel_gains": [1.0], "winner": 0, "gain_max": 1.0}
            ],
        }
    )
    with pytest.raises(ValueError, match=r"epoch must be the last measured epoch \(2\), but got"):
        report_gain(trial, monitor, 3, train_loss=[1.0])
    report_gain(trial, monitor, train_loss=[1.0])
    assert trial.user_attrs["gain_epochs"] == [2]
    assert study.trials[0].intermediate_values.keys() == {2}


# -- Ray -----------------------------------------------------------------------------------------


def _ray_run(stride: int, first: int | None = None) -> list[tuple[int, str]]:
    """The peers and the slow trial reported at epochs first, first + stride, ... (default
    stride, 2 * stride, ...) to a GainScheduler; the slow trial's (epoch, rule) per result."""
    pytest.importorskip("ray.tune")
    first = stride if first is None else first
    from gainsearch.integrations.ray import GainScheduler

    scheduler = GainScheduler(config=CONFIG, metric="trial_score", mode="max")
    for n, peer in enumerate(PEERS):
        for i, gain in enumerate(peer):
            epoch = first + i * stride
            ev = evaluate(peer[: i + 1], train_loss=LOSSES[: i + 1])
            result = {"epoch": epoch, "gain": gain, "train_loss": LOSSES[i]}
            scheduler.observe(f"peer{n}", {**result, "trial_score": ev.trial_score})
    out = []
    for i, gain in enumerate(SLOW):
        epoch = first + i * stride
        ev = evaluate(SLOW[: i + 1], train_loss=SLOW_LOSSES[: i + 1])
        result = {"epoch": epoch, "gain": gain, "train_loss": SLOW_LOSSES[i]}
        stop = scheduler.observe("slow", {**result, "trial_score": ev.trial_score})
        decision = scheduler.evaluations["slow"].decision
        out.append((epoch, decision.rule))
        assert decision.epoch == epoch
        if stop:
            break
    # the series are keyed by the epoch numbers reported, not by their count
    assert list(scheduler.curves["slow"]) == [e for e, _ in out]
    assert list(scheduler.curves["peer0"]) == [first + i * stride for i in range(len(PEERS[0]))]
    return out


def test_ray_stride_two_stops_where_stride_one_does() -> None:
    one, two = _ray_run(1), _ray_run(2)
    assert [rule for _, rule in one] == [rule for _, rule in two]
    assert one[-1][1] == "below_percentile"
    assert [e for e, _ in two] == [2 * e for e, _ in one]


def test_ray_a_first_report_at_epoch_two_is_not_divergence() -> None:
    late = _ray_run(1, first=2)
    assert late[0][1] != DIVERGED
    assert [rule for _, rule in late] == [rule for _, rule in _ray_run(1)]
