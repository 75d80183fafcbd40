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


def test_search_threads_is_a_run_argument(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``search --threads`` sets the trials' threads without changing the spec (a resume with
    another count is not refused); a bad value is one line and writes nothing."""
    from gainsearch.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: th\ntrain: {dataset: digits, epochs: 1}\n"
        "search:\n  lr: {type: float, low: 0.01, high: 0.1}\n"
    )
    out = tmp_path / "out"
    base = ["search", str(spec), "--out", str(out), "--quiet", "--no-report"]
    before = torch.get_num_threads()
    try:
        assert main([*base, "--trials", "1", "--threads", "1"]) == 0
        assert main([*base, "--trials", "2", "--threads", "2"]) == 0  # resumed, another count
    finally:
        torch.set_num_threads(before)
    study = optuna.load_study(study_name="th", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.user_attrs["config"]["threads"] for t in study.trials] == [1, 2]
    assert main([*base, "--trials", "3", "--threads", "0"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err
    assert (
        len(optuna.load_study(study_name="th", storage=f"sqlite:///{out / 'study.db'}").trials) == 2
    )
