"""The CLI end to end (in-process for speed, one real console-script run)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gainsearch.cli import main

TRAIN = ["train", "--dataset", "digits", "--epochs", "3", "--batch-size", "128", "--quiet"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_train_writes_config_history_and_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--eval-test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "diagnosis:" in printed and "status:    completed" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["eval_test"] is True
    assert config["data"]["train"] == 1437
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["history"]] == [1, 2, 3]
    assert "test_acc" in history["history"][0]
    assert history["diagnosis"]["label"] in {
        "converging",
        "lr_too_low",
        "lr_too_high",
        "overfitting",
    }
    assert (out / "checkpoint.pt").is_file()

    # the same command again resumes: nothing retrained, same history
    assert main([*TRAIN, "--eval-test", "--out", str(out)]) == 0
    assert json.loads((out / "history.json").read_text())["history"] == history["history"]
    # more epochs continue from the checkpoint
    assert main([*TRAIN[:4], "5", *TRAIN[5:], "--eval-test", "--out", str(out)]) == 0
    longer = json.loads((out / "history.json").read_text())["history"]
    assert [r["epoch"] for r in longer] == [1, 2, 3, 4, 5]
    assert longer[:3] == history["history"]


def test_train_has_a_flag_for_every_setting(tmp_path: Path) -> None:
    """The flags are derived from TrainConfig: a new setting cannot be left without one."""
    import dataclasses

    from gainsearch.batteries.train import TrainConfig
    from gainsearch.cli import _build_parser

    parser = _build_parser()
    train = next(
        a
        for a in parser._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(a, argparse._SubParsersAction)
    ).choices["train"]
    flags = {o for a in train._actions for o in a.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name
    args = parser.parse_args(
        ["train", "--out", "x", "--gain-smoothing", "0.1", "--model-args", '{"a": 1}']
    )
    assert args.gain_smoothing == 0.1 and args.model_args == {"a": 1}
    assert parser.parse_args(["train", "--out", "x", "--no-eval-test"]).eval_test is False


def test_train_model_args_reach_the_model(tmp_path: Path) -> None:
    assert (
        main(
            [
                *TRAIN[:3],
                "--model",
                "digits_lenet",
                "--model-args",
                '{"dropout": 0.375}',
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["train"]["model_args"] == {"dropout": 0.375}
    from torch import nn

    from gainsearch.batteries.train import model_from_checkpoint

    model = model_from_checkpoint(tmp_path / "m" / "checkpoint.pt")[0]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.375]


def test_train_table_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "t")]) == 0
    captured = capsys.readouterr()
    assert "train_loss" in captured.out + captured.err and "gain_dB" in captured.out + captured.err


def test_train_from_yaml_spec_with_flag_override(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  dataset: digits\n  model: digits_cnn\n  epochs: 2\n  lr: 0.05\n")
    out = tmp_path / "run"
    assert main(["train", "--spec", str(spec), "--lr", "0.01", "--quiet", "--out", str(out)]) == 0
    resolved = json.loads((out / "config.json").read_text())["train"]
    assert resolved["model"] == "digits_cnn" and resolved["lr"] == 0.01 and resolved["epochs"] == 2


def test_diagnose_history_and_plain_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main([*TRAIN, "--out", str(out)])
    capsys.readouterr()
    assert main(["diagnose", str(out / "history.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["features"]["n_epochs"] == 3
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps([float(v) for v in 20 - 15 * np.exp(-np.arange(1, 16) / 2)]))
    assert main(["diagnose", str(curve)]) == 0
    assert "converging" in capsys.readouterr().out
    text = tmp_path / "curve.txt"
    text.write_text("1\n2\nnan\n")
    assert main(["diagnose", str(text)]) == 0
    assert "diverged" in capsys.readouterr().out
    # a history whose training loss reached the fitted threshold: the loss is read too
    rising = [2.0 + 0.8 * e for e in range(1, 16)]
    records = [{"epoch": e, "gain": g, "train_loss": 2.0 * 0.5**e} for e, g in enumerate(rising, 1)]
    fitted = tmp_path / "fitted.json"
    fitted.write_text(json.dumps({"history": records}))
    assert main(["diagnose", str(fitted)]) == 0
    printed = capsys.readouterr().out
    assert "overfitting" in printed and "from epoch 9" in printed  # 2 * 0.5**9 = 0.0039
    assert "training loss:     6.104e-05 (last epoch)" in printed
    fitted.write_text(json.dumps([r["gain"] for r in records]))  # the gains alone
    assert main(["diagnose", str(fitted)]) == 0
    assert "lr_too_low" in capsys.readouterr().out


def test_gain_of_a_registry_model_and_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gain", "--model", "lenet_mnist", "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert len(fresh["channel_gains_db"]) == 1 and isinstance(fresh["gain_db"], float)
    out = tmp_path / "run"
    main([*TRAIN, "--out", str(out)])
    capsys.readouterr()
    spectrum = tmp_path / "spec.npy"
    args = ["gain", "--checkpoint", str(out / "checkpoint.pt"), "--target", "all"]
    assert main([*args, "--spectrum", str(spectrum), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    history = json.loads((out / "history.json").read_text())["history"]
    assert trained["gain_db"] == pytest.approx(history[-1]["gain"], abs=1e-6)
    assert np.load(spectrum).shape == (10, 1, 8, 8)
    png = tmp_path / "spec.png"
    pytest.importorskip("matplotlib")
    assert main([*args, "--spectrum", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["gain", "--model", "resnet"], "Unknown model 'resnet'; available models are"),
        (
            ["gain", "--model", "digits_cnn", "--in-shape", "1,8"],
            "--in-shape must be three positive",
        ),
        (
            ["gain", "--model", "digits_cnn", "--in-shape", "1,8,8", "--target", "x"],
            "target must be",
        ),
        (
            ["gain", "--model", "digits_cnn", "--in-shape", "1,8,8", "--spectrum", "a.txt"],
            "must end in .npy or .png",
        ),
        (["train", "--model", "vgg", "--out", "{out}"], "Unknown model 'vgg'"),
        (
            ["train", "--lr", "-1", "--out", "{out}"],
            r"lr must be a positive number, but got lr=-1.0",
        ),
        (
            ["train", "--dataset", "mnist", "--out", "{out}"],
            "mnist is read from disk: pass its folder",
        ),
        (
            ["train", "--dataset", "mnist", "--data-root", "{out}/none", "--out", "{out}"],
            "no MNIST IDX files",
        ),
        (["train", "--spec", "{out}/missing.yaml", "--out", "{out}"], "cannot read it"),
        (["diagnose", "{out}/missing.json"], "cannot read it"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    argv = [a.replace("{out}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gainsearch: error:")
    assert __import__("re").search(match, err), err


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("train: [unclosed", "is not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping of training settings"),
        ("lr: 0.1\nlearning_rate: 0.2\n", r"unknown training setting\(s\) \['learning_rate'\]"),
        ("epochs: ten\n", r"epochs must be a positive integer, but got epochs='ten'"),
    ],
)
def test_bad_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, match: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    assert main(["train", "--spec", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_bad_history_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps({"history": [{"loss": 1}]}))
    assert main(["diagnose", str(bad)]) == 2
    assert "needs a 'gain' entry" in capsys.readouterr().err
    bad.write_text(json.dumps({"a": 1}))
    assert main(["diagnose", str(bad)]) == 2
    assert "must be a history.json" in capsys.readouterr().err
    bad.write_text("1\nfoo\n")
    assert main(["diagnose", str(bad)]) == 2
    assert "neither JSON nor a text file" in capsys.readouterr().err
    bad.write_text("[1, 2, 3]")
    assert main(["diagnose", str(bad), "--window", "1"]) == 2
    assert "window must be an integer >= 2" in capsys.readouterr().err


def test_resume_with_other_settings_leaves_the_run_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main([*TRAIN, "--out", str(out)])
    before = snapshot(out)
    assert main([*TRAIN, "--lr", "0.3", "--out", str(out)]) == 2
    assert "different trial" in capsys.readouterr().err
    assert snapshot(out) == before


def test_console_script(tmp_path: Path) -> None:
    exe = shutil.which("gainsearch", path=str(Path(sys.executable).parent)) or shutil.which(
        "gainsearch"
    )
    command = [exe] if exe else [sys.executable, "-m", "gainsearch"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [*command, "diagnose", "/nonexistent.json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "gainsearch: error:" in done.stderr
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and "diagnose" in done.stdout


def test_the_progress_bar_draws_changes_only(capsys: pytest.CaptureFixture[str]) -> None:
    from gainsearch.cli import _progress_bar

    args = argparse.Namespace(progress="bar", trials=4)
    same = {"done": 0, "pruned": 0, "running": 2, "best": None}
    with _progress_bar(args) as progress:
        for _ in range(20):  # Ray reports every result; most change nothing
            progress(dict(same))
        progress({**same, "done": 1, "running": 1, "best": 8.5})
    drawn = [s for s in capsys.readouterr().err.split("\r") if "trial" in s]
    assert len(drawn) <= 4, drawn  # tqdm's first draw, one per change, the close
    assert "best=8.50" in drawn[-1] and "running=1" in drawn[-1]


def test_train_a_modern_recipe_and_an_own_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = [
        "--model", "resnet20", "--width", "0.125", "--optimizer", "adamw", "--schedule",
        "cosine", "--warmup-epochs", "1", "--augment", "standard", "--label-smoothing", "0.1",
        "--epochs", "2", "--batch-size", "256",
    ]  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "r"), *recipe]) == 0
    printed = capsys.readouterr().out
    assert "lr" in printed.splitlines()[0] or " lr " in printed
    history = json.loads((tmp_path / "r" / "history.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["gain"]) and r["gain"] > -200 for r in history)
    assert history[0]["lr"] == pytest.approx(0.02) and history[1]["lr"] < 0.1 * 0.02
    (tmp_path / "mynets_cli_test.py").write_text(
        "from torch import nn\n"
        "def build(in_shape, num_classes):\n"
        "    c, h, w = in_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["train", "--out", str(tmp_path / "own"), "--model", "mynets_cli_test:build"]
    assert main([*args, "--epochs", "2"]) == 0
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    assert config["train"]["model"] == "mynets_cli_test:build"
    assert main(["train", "--out", str(tmp_path / "x"), "--model", "mynets_cli_test:nope"]) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err


def test_one_small_parser_builder_per_command() -> None:
    import inspect

    import gainsearch.cli as cli

    sub = next(
        a
        for a in cli._build_parser()._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(a, argparse._SubParsersAction)
    )
    for command in sub.choices:
        assert callable(getattr(cli, f"_add_{command}")), command
    assert len(inspect.getsource(cli._build_parser).splitlines()) < 15
