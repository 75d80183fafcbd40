"""Names that mean one thing, and the public API (issue: contracts that hold)."""

from __future__ import annotations

import warnings

import pytest

import gainsearch
from gainsearch.search.spaces import parse_spec


def test_the_top_level_exports_the_entry_points_not_the_steps() -> None:
    entry = {"Decision", "DecisionConfig", "decide", "model_from_checkpoint", "read_history"}
    assert entry <= set(gainsearch.__all__)
    steps = {"data_derivative", "hann_window_2d", "amplitude_spectrum_db", "impulse_probe"}
    assert not steps & set(gainsearch.__all__)
    from gainsearch.core import spectral

    assert all(callable(getattr(spectral, name)) for name in steps)  # still importable there
    assert all(hasattr(gainsearch, name) for name in gainsearch.__all__)


def test_one_diverged_constant() -> None:
    from gainsearch.batteries import train
    from gainsearch.core import decision, features

    assert train.DIVERGED is features.DIVERGED is decision.DIVERGED == "diverged"


def test_one_default_gain_target() -> None:
    from gainsearch.batteries.train import TrainConfig
    from gainsearch.cli import _build_parser
    from gainsearch.core.monitor import GainMonitor

    parsed = _build_parser().parse_args(["gain", "--model", "digits_lenet"])
    assert GainMonitor((1, 8, 8)).target == TrainConfig().gain_target == parsed.target == "all"
    pytest.importorskip("lightning")
    from gainsearch.integrations.lightning import GainCallback

    assert GainCallback().target == "all"


def test_the_pruner_grace_period_has_one_name() -> None:
    base = {"name": "n", "train": {"dataset": "digits"}, "search": {}}
    spec = parse_spec({**base, "pruner": {"grace_period": 3}})
    assert spec.decision.grace_period == 3 and spec.to_dict()["pruner"]["grace_period"] == 3
    # no deprecation shims in a 0.1 package: the old names are errors that say the new one
    with pytest.raises(ValueError, match=r"pruner.warmup_epochs=3 is not a pruner setting.*grace"):
        parse_spec({**base, "pruner": {"warmup_epochs": 3}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training warm-up has no warning
        assert parse_spec({**base, "train": {"warmup_epochs": 1}}).train["warmup_epochs"] == 1
    from gainsearch.integrations.optuna import GainPruner

    with pytest.raises(TypeError, match=r"warmup_epochs"):
        GainPruner(warmup_epochs=2)  # type: ignore[call-arg]


def test_the_gain_score_has_one_name() -> None:
    base = {"name": "n", "train": {"dataset": "digits"}, "search": {}}
    assert parse_spec({**base, "objective": {"metric": "gain_score"}}).metrics == ("gain_score",)
    with pytest.raises(ValueError, match=r"score"):
        parse_spec({**base, "objective": {"metric": "score"}})
    from gainsearch.core.evaluation import evaluate

    ev = evaluate([1.0, 2.0, 3.0], metric="gain_score")
    assert ev.metric_value("gain_score") == ev.gain_score
    with pytest.raises(ValueError, match=r"Unknown metric 'score'"):
        ev.metric_value("score")
    assert not hasattr(ev.decision, "score")  # the compared number is Decision.value
