"""The one decision core on hand-made curves."""

from __future__ import annotations

import numpy as np
import pytest

from gainsearch.core.decision import (
    BELOW_PERCENTILE,
    CONTINUE,
    DIVERGED,
    FEW_PEERS,
    GRACE_PERIOD,
    TOO_VARIABLE,
    DecisionConfig,
    decide,
)

E = np.arange(1, 11)
GOOD = list(20 - 15 * np.exp(-E / 3))
OK = list(15 - 12 * np.exp(-E / 3))
SLOW = list(-10 + 0.5 * E)
JAGGED = list(10 + 4 * (-1.0) ** E)
PEERS = [GOOD, OK, list(np.array(OK) + 1.0)]


def test_diverged_is_pruned_at_once_even_in_warmup() -> None:
    d = decide([1.0, float("nan")], PEERS)
    assert d.prune and d.rule == DIVERGED and "epoch 2" in d.reason
    d = decide([1.0], [], diverged=True)
    assert d.prune and d.rule == DIVERGED and "training loss" in d.reason


def test_warmup_is_respected() -> None:
    d = decide(SLOW[:2], PEERS, config=DecisionConfig(grace_period=3))
    assert not d.prune and d.rule == GRACE_PERIOD


def test_few_peers_continue() -> None:
    d = decide(SLOW[:5], [GOOD, OK[:3]])
    assert not d.prune and d.rule == FEW_PEERS and d.peers == 1


def test_too_variable_against_peers() -> None:
    d = decide(JAGGED[:6], PEERS)
    assert d.prune and d.rule == TOO_VARIABLE
    assert "learning rate too high" in d.reason and "3 peers" in d.reason


def test_too_variable_needs_the_absolute_floor() -> None:
    wiggle = list(np.array(GOOD) + 0.2 * (-1.0) ** E)  # 0.4 dB/epoch: far above calm peers...
    d = decide(wiggle, [GOOD, GOOD, GOOD])
    assert d.rule != TOO_VARIABLE  # ...but below min_variability = 1 dB/epoch


def test_below_percentile() -> None:
    d = decide(SLOW[:5], PEERS)
    assert d.prune and d.rule == BELOW_PERCENTILE and "50th percentile of 3 peers" in d.reason


def test_good_trial_continues() -> None:
    d = decide(GOOD[:5], [OK, list(np.array(OK) + 1.0), SLOW])
    assert not d.prune and d.rule == CONTINUE


def test_percentile_zero_prunes_only_a_trial_worse_than_every_peer() -> None:
    config = DecisionConfig(percentile=0.0)
    assert decide(SLOW[:5], PEERS, config=config).rule == BELOW_PERCENTILE
    between = list(np.array(OK) + 0.5)  # above OK, below the others
    assert not decide(between[:5], PEERS, config=config).prune
    assert decide(between[:5], PEERS, config=DecisionConfig(percentile=50.0)).prune


def test_peers_that_diverged_before_the_epoch_are_ignored() -> None:
    d = decide(SLOW[:5], [GOOD, OK, [1.0, float("nan"), 2.0, 3.0, 4.0]])
    assert d.peers == 2 and d.rule == FEW_PEERS


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grace_period": 0}, r"grace_period must be an integer >= 1, but got grace_period=0"),
        ({"min_peers": 1.5}, r"min_peers must be an integer >= 1"),
        ({"percentile": 101}, r"percentile must be between 0 and 100 inclusive, but got p=101"),
        ({"variability_factor": 0}, r"variability_factor must be a positive number"),
        ({"min_variability": float("inf")}, r"min_variability must be a positive number"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecisionConfig(**kwargs)
