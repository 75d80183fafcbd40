"""Determinism and safe loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pytest
import torch

from gainsearch.batteries.train import load_checkpoint
from gainsearch.cli import main
from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import parse_spec

SPEC = parse_spec(
    {
        "name": "determinism",
        "train": {
            "dataset": "digits",
            "model": "nin",
            "width": 0.1,
            "epochs": 3,
            "batch_size": 128,
        },
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True}},
        "pruner": {"min_peers": 2},
        "sampler": {"type": "tpe", "seed": 7},
    }
)


def test_same_spec_and_seed_give_the_same_curves_and_best_configuration(tmp_path: Path) -> None:
    runs = [run_study(SPEC, out_dir=tmp_path / name, n_trials=5, heartbeat=None) for name in "ab"]
    curves = []
    for name in "ab":
        study = optuna.load_study(
            study_name="determinism", storage=f"sqlite:///{tmp_path / name / 'study.db'}"
        )
        curves.append([t.user_attrs["gain_curve"] for t in study.trials])
    assert curves[0] == curves[1]  # bit-identical gains, run to run (nin has dropout: RNG used)
    assert runs[0].best == runs[1].best
    best = [json.loads((tmp_path / n / "best.json").read_text())["best"] for n in "ab"]
    assert best[0] == best[1]


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def test_checkpoints_never_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "executed"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"version": 1, "payload": _Marker(str(marker))}, evil)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_checkpoint(evil)
    assert main(["gain", "--checkpoint", str(evil)]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not marker.exists()


def test_cifar_batches_and_specs_never_run_code(tmp_path: Path) -> None:
    from gainsearch.batteries.data import DataError, load_dataset
    from gainsearch.search.spaces import SpecError, load_spec

    marker = tmp_path / "executed"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Marker(str(marker)), b"labels": [0]}))
    with pytest.raises(DataError, match=r"refusing to load"):
        load_dataset("cifar10", tmp_path)
    import yaml

    def payload(target: Path) -> str:  # a spec that creates ``target`` when loaded unsafely
        return f"!!python/object/apply:builtins.exec [\"open({str(target)!r}, 'w').close()\"]\n"

    proof = tmp_path / "proof"
    yaml.unsafe_load(payload(proof))  # the payload does run code under an unsafe loader...
    assert proof.exists()
    spec = tmp_path / "spec.yaml"
    spec.write_text(payload(marker))
    with pytest.raises(SpecError, match=r"not valid YAML"):
        load_spec(spec)
    assert not marker.exists()  # ...and not under ours
