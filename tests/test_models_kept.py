"""The tuned model a search hands back (issue 29): kept weights on both back ends, load_best,
export, ``train --spec best.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gainsearch
from gainsearch.batteries.data import load_dataset
from gainsearch.batteries.train import evaluate_model
from gainsearch.cli import main
from gainsearch.search.models import check_keep
from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import parse_spec

SPEC = parse_spec(
    {
        "name": "kept",
        "train": {
            "dataset": "digits",
            "model": "digits_lenet",
            "epochs": 8,
            "batch_size": 128,
            "select_by": "gain_trend",  # its lowest reading: often not the last epoch
        },
        "search": {"lr": {"type": "float", "low": 0.03, "high": 0.15, "log": True}},
        "pruner": {"type": "none"},
        "sampler": {"type": "random", "seed": 3},
    }
)


def _accuracy(model: torch.nn.Module) -> float:
    data = load_dataset("digits")
    return evaluate_model(model, data.x_test, data.y_test, 256)[1]


def _best_row(run: Path) -> dict:
    best = json.loads((run / "best.json").read_text())["best"]
    rows = json.loads((run / "trials.json").read_text())["rows"]
    return next(r for r in rows if r["number"] == best["number"]) | {"best": best}


def test_optuna_keeps_the_best_trials_weights_and_load_best_returns_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_study(SPEC, out_dir=run, n_trials=2, heartbeat=None, eval_test=True)
    # interrupted after two trials, resumed to three: still one file, the best's
    run_study(SPEC, out_dir=run, n_trials=3, heartbeat=None, eval_test=True)
    files = sorted(p.name for p in (run / "models").iterdir())
    row = _best_row(run)
    assert files == [f"trial_{row['number']}.pt"]
    assert row["best"]["model_file"] == f"models/trial_{row['number']}.pt"
    assert f"models/trial_{row['number']}.pt" in (run / "trials.csv").read_text()
    tuned = gainsearch.load_best(run)
    kept = row["selected_epoch"]
    assert tuned.row.selected_epoch == kept and tuned.config["lr"] == row["params"]["lr"]
    # the loaded model is the kept epoch's: its test accuracy is the one recorded there
    assert _accuracy(tuned.model) == pytest.approx(row["test_acc_curve"][kept - 1])
    assert any(
        r["selected_epoch"] < r["epochs"]
        for r in json.loads((run / "trials.json").read_text())["rows"]
    )  # some trial kept an earlier epoch
    # export: a plain state_dict and its configuration, safe to load
    out = tmp_path / "model.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["config"]["lr"] == row["params"]["lr"]
    rebuilt = gainsearch.create_model("digits_lenet", (1, 8, 8), 10)
    rebuilt.load_state_dict(state["state_dict"])
    assert _accuracy(rebuilt) == pytest.approx(_accuracy(tuned.model))


def test_keep_all_none_and_bad_values(tmp_path: Path) -> None:
    run_study(SPEC, out_dir=tmp_path / "all", n_trials=2, heartbeat=None, keep="all")
    assert len(list((tmp_path / "all" / "models").iterdir())) == 2
    run_study(SPEC, out_dir=tmp_path / "none", n_trials=1, heartbeat=None, keep="none")
    assert not (tmp_path / "none" / "models").exists()
    with pytest.raises(ValueError, match=r"train it again with `gainsearch train --spec"):
        gainsearch.load_best(tmp_path / "none")
    with pytest.raises(ValueError, match=r"keep must be a non-negative integer.*keep=-1"):
        check_keep(-1)
    with pytest.raises(ValueError, match=r"no readable best.json"):
        gainsearch.load_best(tmp_path / "nowhere")


def test_train_reads_a_searchs_best_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run_study(SPEC.with_train(epochs=2), out_dir=run, n_trials=1, heartbeat=None)
    lr = json.loads((run / "best.json").read_text())["best"]["config"]["lr"]
    assert main(["train", "--spec", str(run / "best.json"), "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["train"]["lr"] == lr


def test_ray_names_the_kept_checkpoint_and_load_best_reads_it(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    from gainsearch.search.run_ray import run_tuner

    run = tmp_path / "ray"
    from gainsearch.batteries.train import model_from_checkpoint

    run_tuner(SPEC, out_dir=run, n_trials=3, max_concurrent=1, eval_test=True)
    row = _best_row(run)
    assert row["best"]["model_file"].startswith("ray_results/")
    tuned = gainsearch.load_best(run)
    assert tuned.path == run / row["best"]["model_file"]
    earlier = 0
    for r in json.loads((run / "trials.json").read_text())["rows"]:
        path = run / r["model_file"]  # every complete trial names its checkpoint
        model, _ = model_from_checkpoint(path, weights="selected")
        trial_dir = path.parent.parent  # ray_results/<name>/<trial>/checkpoint_N/
        results = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]
        recorded = next(x["test_acc"] for x in results if x["epoch"] == r["selected_epoch"])
        assert _accuracy(model) == pytest.approx(recorded)
        earlier += r["selected_epoch"] < r["epochs"]
    assert earlier  # some trial kept an earlier epoch than its last
    assert _accuracy(tuned.model) == pytest.approx(
        _accuracy(model_from_checkpoint(tuned.path, weights="selected")[0])
    )
    # load_best itself on a trial that kept an earlier epoch (the best may have kept its last):
    # best.json pointed at it, the loaded model tests as recorded at that kept epoch
    rows = json.loads((run / "trials.json").read_text())["rows"]
    early = next(r for r in rows if r["selected_epoch"] < r["epochs"])
    summary = json.loads((run / "best.json").read_text())
    summary["best"].update(number=early["number"], model_file=early["model_file"])
    (run / "best.json").write_text(json.dumps(summary))
    trial_dir = (run / early["model_file"]).parent.parent
    results = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]
    recorded = next(x["test_acc"] for x in results if x["epoch"] == early["selected_epoch"])
    assert _accuracy(gainsearch.load_best(run).model) == pytest.approx(recorded)


def test_a_finished_search_says_nothing_to_run_and_diagnose_reads_its_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: again\ntrain: {dataset: digits, model: digits_lenet, epochs: 2}\n"
        "search:\n  lr: {type: float, low: 0.01, high: 0.1, log: true}\n"
    )
    run = tmp_path / "run"
    args = ["search", str(spec), "--trials", "1", "--out", str(run), "--quiet", "--no-report"]
    assert main(args) == 0
    assert "nothing to run" not in capsys.readouterr().err
    assert main(args) == 0
    assert "nothing to run: the study already holds 1 finished trial(s)" in capsys.readouterr().err
    assert main(["diagnose", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "trial:             #0" in printed and "diagnosis:" in printed
    assert main(["diagnose", str(run), "--trial", "7"]) == 2
    assert "--trial 7: no such trial" in capsys.readouterr().err
