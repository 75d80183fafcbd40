"""Experiment specs: the shipped ones load; every mistake is a clear error."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from gainsearch.search.spaces import SpecError, load_spec, parse_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))
BASE = {"train": {"dataset": "digits", "model": "digits_lenet", "epochs": 3}}


def spec_with(**sections: object) -> dict:
    return {
        **BASE,
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
        **sections,
    }


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem and "lr" in spec.search
    assert parse_spec(spec.to_dict()) == spec  # the resolved form round-trips


def test_four_specs_are_shipped() -> None:
    assert {p.stem for p in SPECS} >= {
        "digits_lr",
        "mnist_lenet_lr",
        "cifar10_lenet_lr",
        "cifar10_nin_lr",
    }


def test_suggest_and_distributions() -> None:
    spec = parse_spec(
        spec_with(
            search={
                "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                "batch_size": {"type": "categorical", "choices": [32, 64]},
                "seed": {"type": "int", "low": 0, "high": 10, "step": 2},
                "momentum": {"type": "float", "low": 0.5, "high": 0.9, "step": 0.1},
            }
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        params = spec.suggest(trial)
        assert 1e-3 <= params["lr"] <= 0.1 and params["batch_size"] in (32, 64)
        assert params["seed"] % 2 == 0 and spec.train_config(params).epochs == 3
        study.tell(trial, 0.0)
    dists = spec.to_optuna()
    assert dists["lr"].log and dists["seed"].step == 2 and dists["batch_size"].choices == (32, 64)


def test_ray_domains() -> None:
    pytest.importorskip("ray.tune")
    spec = parse_spec(
        spec_with(
            search={
                "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                "batch_size": {"type": "categorical", "choices": [32, 64]},
                "seed": {"type": "int", "low": 0, "high": 3},
            }
        )
    )
    domains = spec.to_ray()
    assert {"lr", "batch_size", "seed"} == set(domains)
    assert 1e-3 <= domains["lr"].sample() <= 0.1
    assert domains["seed"].sample() in (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({**BASE, "serach": {}}, r"spec: unknown key\(s\) \['serach'\]; allowed keys are"),
        (
            {**BASE, "train": {"dataset": "imagenet"}},
            r"train: Unknown dataset 'imagenet'; available",
        ),
        ({**BASE, "train": {"model": "vgg"}}, r"train: Unknown model 'vgg'; available models"),
        ({**BASE, "train": {"epochs": "ten"}}, r"train: epochs must be a positive integer.*'ten'"),
        ({**BASE, "train": [1, 2]}, r"train must be a mapping, but got list"),
        (spec_with(search={"lr": [0.1, 1]}), r"search.lr must be a mapping like"),
        (
            spec_with(search={"lr": {"type": "real", "low": 0, "high": 1}}),
            r"search.lr.type must be one of \['float', 'int', 'categorical'\], but got 'real'",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": 0.1, "high": 0.01}}),
            r"search.lr: low must be <= high, but got low=0.1 > high=0.01 \(inverted range\)",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": 0.1, "high": 0.1}}),
            r"search.lr: empty range",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
            r"a log scale needs low > 0",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": "yes"}}),
            r"search.lr.log must be true or false",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": "a", "high": 0.1}}),
            r"search.lr.low must be a finite number, but got 'a'",
        ),
        (spec_with(search={"lr": {"type": "float", "high": 0.1}}), r"search.lr needs 'low'"),
        (
            spec_with(search={"lr": {"type": "float", "low": 0.01, "high": 0.1, "lg": True}}),
            r"search.lr: unknown key\(s\) \['lg'\]",
        ),
        (
            spec_with(
                search={
                    "lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0.01, "log": True}
                }
            ),
            r"step and log cannot be combined",
        ),
        (
            spec_with(search={"seed": {"type": "int", "low": 0.5, "high": 3}}),
            r"search.seed.low must be an integer",
        ),
        (
            spec_with(search={"batch_size": {"type": "categorical", "choices": []}}),
            r"search.batch_size.choices must be a non-empty list",
        ),
        (
            spec_with(search={"batch_size": {"type": "categorical", "choices": [32, 0]}}),
            r"search.batch_size: the value 0 is not allowed: batch_size must be a positive integer",
        ),
        (
            spec_with(search={"lr": {"type": "float", "low": -1.0, "high": 0.1}}),
            r"search.lr: the value -1.0 is not allowed: lr must be a positive number",
        ),
        (
            spec_with(search={"learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}),
            r"search.learning_rate: unknown training setting; searchable settings are",
        ),
        (
            spec_with(search={"model": {"type": "categorical", "choices": ["nin"]}}),
            r"search.model: 'model' cannot be searched",
        ),
        (
            {**spec_with(), "train": {**BASE["train"], "lr": 0.1}},
            r"'lr' is both fixed under train: and searched",
        ),
        (
            spec_with(objective={"metric": "accuracy"}),
            r"objective.metric: unknown metric 'accuracy'",
        ),
        (
            spec_with(objective={"metric": ["level", "variability"], "mode": ["max"]}),
            r"objective.mode needs one mode per metric",
        ),
        (
            spec_with(objective={"metric": "gain_score", "mode": "maximize"}),
            r"objective.mode must be 'max' or 'min'.*'maximize'",
        ),
        (
            spec_with(objective={"variability_weight": -1}),
            r"objective.variability_weight must be a non-negative number",
        ),
        (
            spec_with(pruner={"type": "hyperband"}),
            r"pruner.type must be one of \['gain', 'median', 'asha', 'none'\], but got 'hyperband'",
        ),
        (spec_with(pruner={"percentile": 150}), r"pruner.percentile must be between 0 and 100"),
        (spec_with(pruner={"warmup": 3}), r"pruner: unknown key\(s\) \['warmup'\]"),
        (spec_with(sampler={"type": "grid"}), r"sampler.type must be one of \['tpe', 'random'\]"),
        (spec_with(sampler={"seed": -1}), r"sampler.seed must be a non-negative integer or null"),
        (spec_with(name=""), r"name must be a non-empty string"),
    ],
)
def test_bad_specs(data: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_spec(data)


def test_load_spec_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml is not valid YAML"):
        load_spec(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"must hold a mapping with keys"):
        load_spec(bad)
    bad.write_text("!!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(SpecError, match=r"not valid YAML"):  # safe_load refuses Python tags
        load_spec(bad)
    with pytest.raises(SpecError, match=r"cannot read it"):
        load_spec(tmp_path / "missing.yaml")
    bad.write_text("train: {dataset: digits}\nsearch: {lr: {type: float, low: 1, high: 0.1}}\n")
    with pytest.raises(SpecError, match=r"spec .*bad.yaml: search.lr: low must be <= high"):
        load_spec(bad)


def test_multi_objective_spec() -> None:
    spec = parse_spec(
        spec_with(objective={"metric": ["level", "variability"], "mode": ["max", "min"]})
    )
    assert spec.multi_objective and spec.directions == ["maximize", "minimize"]
    default_modes = parse_spec(spec_with(objective={"metric": ["level", "variability"]}))
    assert default_modes.modes == ("max", "min")
