"""Every example in examples/ runs to the end on the embedded digits, at its smallest size (the
long paper reproductions excepted: their figures are checked in docs/paper.md's tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_own_loop(tmp_path: Path) -> None:
    out = run_example("own_loop.py", cwd=tmp_path)
    assert "kept epoch" in out


def test_optuna_own_loop(tmp_path: Path) -> None:
    assert "best lr:" in run_example("optuna_own_loop.py", cwd=tmp_path)


def test_lightning_optuna(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    out = run_example(
        "lightning_optuna.py",
        "--trials", "2", "--epochs", "2", "--storage", f"sqlite:///{tmp_path / 'study.db'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert "best: #" in out and "kept=" in out


@pytest.mark.parametrize("name", ["lightning_ray.py", "ray_own_loop.py"])
def test_ray_examples(tmp_path: Path, name: str) -> None:
    pytest.importorskip("ray.tune")
    if name.startswith("lightning"):
        pytest.importorskip("lightning")
    out = run_example(name, "--trials", "2", "--epochs", "1", cwd=tmp_path)
    assert "lr=1.00e-03 complete" in out and "lr=3.16e+00 " in out  # both trials reported
