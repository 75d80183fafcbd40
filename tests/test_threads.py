"""Torch threads per trial (issue 29): a setting, a default per back end, recorded."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from gainsearch.batteries.train import TrainConfig, train_trial
from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import parse_spec


def test_threads_is_applied_and_checked(digits) -> None:  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    try:
        train_trial({"dataset": "digits", "epochs": 1, "threads": 2}, data=digits)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=r"threads must be a positive integer.*threads=0"):
        TrainConfig(threads=0)


def test_an_optuna_search_records_its_default_threads(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "name": "threads",
            "train": {"dataset": "digits", "epochs": 1},
            "search": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
        }
    )
    expected = torch.get_num_threads()  # one worker: torch's own count, unchanged
    run_study(spec, out_dir=tmp_path, n_trials=1, heartbeat=None)
    study = optuna.load_study(study_name="threads", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.trials[0].user_attrs["config"]["threads"] == expected
    assert torch.get_num_threads() == expected
    # a spec's threads wins
    run_study(spec.with_train(threads=1), out_dir=tmp_path / "b", n_trials=1, heartbeat=None)
    study = optuna.load_study(
        study_name="threads", storage=f"sqlite:///{tmp_path / 'b' / 'study.db'}"
    )
    assert study.trials[0].user_attrs["config"]["threads"] == 1
    torch.set_num_threads(expected)
