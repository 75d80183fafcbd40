"""`gainsearch search` end to end: table and files, bad input, SIGTERM mid-study then resume."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import wait_until

from gainsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = """\
name: e2e
train: {dataset: digits, model: digits_lenet, epochs: 6, batch_size: 128}
search:
  lr: {type: float, low: 1.0e-3, high: 2.0, log: true}
pruner: {grace_period: 2, min_peers: 2}
sampler: {type: tpe, seed: 1}
"""


def write_spec(folder: Path, text: str = SPEC) -> Path:
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def test_search_prints_the_table_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    assert main(["search", str(spec), "--trials", "4", "--out", str(out), "--eval-test"]) == 0
    printed = capsys.readouterr().out
    assert "state" in printed and "diagnosis" in printed and "prune reason" in printed
    assert "best trial:  #" in printed
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "trial_score" and "lr" in best["best"]["params"]
    assert best["storage"].startswith("sqlite:///")
    lines = (out / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("number,state,lr,value") and len(lines) == 5
    assert (out / "spec.yaml").is_file() and (out / "study.db").is_file()
    # the study opens in plain Optuna (and so in optuna-dashboard) without conversion
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 4 and study.user_attrs["spec"]["name"] == "e2e"
    figure = optuna.visualization.plot_intermediate_values(study)  # plotly is a dev dependency
    assert len(figure.data) == 4


def test_timeout_says_so_and_the_same_command_adds_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gainsearch.search.run_optuna as optuna_backend

    ticks = iter(range(100))  # 1 s per reading: deadline 2.5, then trials at 1 and 2, stop at 3
    monkeypatch.setattr(optuna_backend, "_now", lambda: float(next(ticks)))
    spec = write_spec(tmp_path, SPEC.replace("epochs: 6", "epochs: 2"))
    argv = ["search", str(spec), "--trials", "4", "--timeout", "2.5", "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-report", "--progress", "jsonl"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["timed_out"] is True and done["interrupted"] is False and done["trials"] == 2
    monkeypatch.setattr(optuna_backend, "_now", lambda: 0.0)
    assert main([*argv, "--no-report", "--progress", "none"]) == 0
    captured = capsys.readouterr()
    assert "timeout:" not in captured.err
    assert len((tmp_path / "o" / "trials.csv").read_text().splitlines()) == 1 + 4
    ticks = iter(range(100))
    monkeypatch.setattr(optuna_backend, "_now", lambda: float(next(ticks)))
    more = ["--trials", "9", "--no-report", "--progress", "none"]
    assert main([*argv, *more]) == 0
    assert "timeout:     6 of 9 trials finished in 2.5 s; run the same command again" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["search", "{dir}/missing.yaml", "--out", "{dir}/o"], "cannot read it"),
        (
            ["search", "{spec}", "--trials", "0", "--out", "{dir}/o"],
            "n_trials must be a positive integer",
        ),
        (
            ["search", "{spec}", "--workers", "0", "--out", "{dir}/o"],
            "workers must be a positive integer",
        ),
        (
            ["search", "{spec}", "--epochs", "0", "--out", "{dir}/o"],
            "epochs must be a positive integer",
        ),
        (  # a flag the Ray back end has no use for is refused, not ignored
            ["search", "{spec}", "--backend", "ray", "--retry-failed", "2", "--out", "{dir}/o"],
            "--retry-failed belong(s) to --backend optuna, not ray: on Ray, --max-concurrent",
        ),
        (
            ["search", "{spec}", "--max-failures", "1", "--out", "{dir}/o"],
            "--max-failures belong(s) to --backend ray, not optuna.",
        ),
        (
            ["search", "{spec}", "--no-reuse-actors", "--out", "{dir}/o"],
            "--no-reuse-actors belong(s) to --backend ray, not optuna.",
        ),
        (
            ["search", "{spec}", "--storage", "nosuchdb://u:secret@x/db", "--out", "{dir}/o"],
            "storage 'nosuchdb://u:***@x/db' cannot be opened",
        ),
    ],
)
def test_search_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    spec = write_spec(tmp_path)
    argv = [a.replace("{dir}", str(tmp_path)).replace("{spec}", str(spec)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err
    assert "secret" not in err  # storage passwords are never printed
    assert not (tmp_path / "o").exists()  # refused before anything is written


def count_finished(db: Path) -> int:
    """Finished trials in a search's SQLite file, read-only: polling with Optuna would create
    the tables itself and race the search that is creating them."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            query = "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
            return int(con.execute(query).fetchone()[0])
    except sqlite3.OperationalError:  # no tables yet, or the file is locked for a moment
        return 0


def finished(storage: str) -> list[optuna.trial.FrozenTrial]:
    if not Path(storage.removeprefix("sqlite:///")).exists():
        return []
    try:
        study = optuna.load_study(study_name="e2e", storage=storage)
    except KeyError:  # the study is not created yet
        return []

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


# No pruning and small batches: every trial takes seconds, so the signal lands mid-study (with
# pruning on the training loss, pruned trials end in a fraction of a second and the study could
# be over before the test's poll saw two finished trials).
SIGNAL_SPEC = SPEC.replace("batch_size: 128", "batch_size: 32").replace(
    "pruner: {grace_period: 2, min_peers: 2}", "pruner: {type: none}"
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_study_then_the_same_command_resumes(tmp_path: Path, signum: int) -> None:
    assert SIGNAL_SPEC != SPEC
    spec = write_spec(tmp_path, SIGNAL_SPEC)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gainsearch", "search", str(spec), "--trials", "10"]
    command += ["--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    storage = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        db = out / "study.db"
        wait_until(
            lambda: count_finished(db) >= 2, timeout=300, what="two finished trials", proc=proc
        )
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"run the same command again to resume" in err
    study = optuna.load_study(study_name="e2e", storage=storage)
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states  # the interrupted trial was failed
    done_before = {t.number: (t.state, t.params, t.value) for t in finished(storage)}
    assert 2 <= len(done_before) < 10
    assert (out / "trials.csv").is_file()  # the table of what was done is written

    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    after = finished(storage)
    assert len(after) == 10
    assert {
        t.number: (t.state, t.params, t.value) for t in after if t.number in done_before
    } == done_before
    study = optuna.load_study(study_name="e2e", storage=storage)
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in study.trials}


RAY_SPEC = """\
name: ray_cli
train: {dataset: digits, model: digits_lenet, epochs: 4, batch_size: 32}
search:
  lr: {type: float, low: 1.0e-3, high: 0.05, log: true}
pruner: {type: none}
sampler: {type: tpe, seed: 2}
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ray_backend_interrupted_then_resumed_by_the_same_command(
    tmp_path: Path, signum: int, ray_address: str
) -> None:
    spec = write_spec(tmp_path, RAY_SPEC)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gainsearch", "search", str(spec), "--backend", "ray"]
    command += ["--address", ray_address]  # the session's Ray (a local one: the main job)
    command += ["--trials", "4", "--max-concurrent", "1", "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = out / "ray_results" / "ray_cli"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def one_done_one_started() -> bool:
            logs = [p.read_text().count("\n") for p in results.glob("*/result.json")]
            return len(logs) >= 2 and max(logs) >= 4 and min(logs) >= 2

        wait_until(
            one_done_one_started,
            timeout=400,
            what="one trial done and one at epoch 2",
            proc=proc,
            poll=0.2,
        )
        proc.send_signal(signum)
        printed, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    # a quiet main job: nothing of Ray's own reporting on stdout (its experiment box, where the
    # results are, the TensorBoard hint), though Tune's new output prints them at verbose=0
    for ray_line in (b"Configuration for experiment", b"View detailed results", b"tensorboard"):
        assert ray_line not in printed, printed.decode()[-2000:]
    rows_before = (out / "trials.csv").read_text().splitlines()
    cut = [int(line.split(",")[0]) for line in rows_before[1:] if ",interrupted," in line]
    assert cut
    # the study records every trial as it ended: the interrupted ones failed, none running
    storage = f"sqlite:///{out / 'study.db'}"
    states = [t.state for t in optuna.load_study(study_name="ray_cli", storage=storage).trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == len(cut)
    done_before = [line for line in rows_before[1:] if ",complete," in line]
    assert done_before

    # resumed in JSON-lines mode: stdout carries JSON only (Ray's own prints go to stderr)
    jsonl = [*command[:-1], "--progress", "jsonl"]
    rerun = subprocess.run(jsonl, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    events = [json.loads(line) for line in rerun.stdout.decode().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["states"] == {"complete": 4}
    assert all(e["event"] == "progress" for e in events[:-1])
    last = events[-2]  # the last trial counted as it ends (Tune sets its status afterwards)
    assert (last["done"], last["running"], last["pruned"]) == (4, 0, 0)
    rows_after = (out / "trials.csv").read_text().splitlines()
    assert len(rows_after) == 5
    assert all(",complete," in line for line in rows_after[1:])
    for line in done_before:  # finished trials are kept as they were
        assert line in rows_after
    # after the resume: the study holds the four trials complete (and the interrupted ones'
    # failed records), none running, each with its intermediate values and curve
    study = optuna.load_study(study_name="ray_cli", storage=storage)
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in study.trials}
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    assert all(
        len(t.intermediate_values) == 4 and len(t.user_attrs["gain_curve"]) == 4 for t in complete
    )
    # the Ray back end leaves the same report as the Optuna one: curves, losses, spectra
    rows = json.loads((out / "trials.json").read_text())["rows"]
    for row in rows:
        assert len(row["gain_curve"]) == len(row["train_loss"]) == row["epochs"] == 4
        # resumed from its checkpoint, not restarted: epoch 1 was trained once (the epochs as
        # reported; the curve itself keeps one reading per epoch either way)
        assert row["epoch_log"][0] == 1 and row["epoch_log"].count(1) == 1, row["epoch_log"]
    for number in cut:  # an interrupted trial had reported 2+ epochs before the signal
        assert rows[number]["epoch_log"][:2] == [1, 2], rows[number]["epoch_log"]
        assert np.asarray(rows[number]["spectrum"]["db"]).shape == (1, 8, 8)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5  # with the label-noise figure


def test_a_sigkilled_ray_driver_loses_no_finished_trial_from_the_study(
    tmp_path: Path, ray_address: str
) -> None:
    """Issue 30: the Ray back end records each trial in the study as it ends. A driver killed
    with SIGKILL (no handler runs, nothing is written at the end) leaves the study with every
    trial that had finished; the same command resumes, and the study then holds each trial
    once, the ones recorded before the kill unchanged."""
    # 5 trials one at a time: once the first is recorded, 4 more (seconds) are left to kill in
    spec = write_spec(tmp_path, RAY_SPEC.replace("batch_size: 32", "batch_size: 16"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gainsearch", "search", str(spec), "--backend", "ray"]
    command += ["--address", ray_address]  # a driver on a cluster: the cluster outlives it
    command += ["--trials", "5", "--max-concurrent", "1", "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    storage = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_until(
            lambda: count_finished(out / "study.db") >= 1,
            timeout=400,
            what="a trial recorded in the study",
            proc=proc,
            poll=0.1,
        )
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, without warning
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "trials.csv").exists()  # nothing ran at the end: the study is the record

    def recorded() -> dict[str, tuple]:
        study = optuna.load_study(study_name="ray_cli", storage=storage)
        ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
        assert len(ids) == len(set(ids)), ids  # no trial recorded twice
        return {
            t.user_attrs["ray_trial_id"]: (t.state, t.params, t.value, t.intermediate_values)
            for t in study.trials
        }

    before = recorded()
    assert 1 <= len(before) < 5, len(before)  # killed mid-search, with trials recorded
    assert all(s == optuna.trial.TrialState.COMPLETE for s, *_ in before.values())
    rerun = subprocess.run(
        [*command[:-1], "--progress", "jsonl"], env=env, capture_output=True, timeout=400
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    events = [json.loads(line) for line in rerun.stdout.decode().splitlines()]
    # the kill landed while trials were left to run (not between the end of the search and
    # the end of the run, when a study written at the end would hold every trial too)
    assert any(e.get("running") for e in events), events
    after = recorded()
    assert len(after) == 5 and all(
        s == optuna.trial.TrialState.COMPLETE for s, *_ in after.values()
    )
    assert {k: after[k] for k in before} == before  # kept as they were


RECIPE = """\
name: recipe
train: {dataset: digits, model: resnet20, width: 0.125, epochs: 2, batch_size: 256,
        optimizer: sgd, nesterov: true, augment: standard, warmup_epochs: 1}
search:
  lr: {type: float, low: 1.0e-3, high: 0.5, log: true}
  schedule: {type: categorical, choices: [constant, cosine, onecycle]}
  weight_decay: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
  label_smoothing: {type: float, low: 0.0, high: 0.2}
pruner: {type: none}
sampler: {type: random, seed: 3}
"""


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_modern_recipe_spec_searches_schedule_decay_and_smoothing(
    tmp_path: Path, backend: str
) -> None:
    if backend == "ray":
        pytest.importorskip("ray.tune")
    out = tmp_path / "out"
    spec = write_spec(tmp_path, RECIPE)
    # a process of its own, as a user runs it (Ray cannot pickle pytest's captured streams)
    command = [sys.executable, "-m", "gainsearch", "search", str(spec), "--backend", backend]
    command += ["--trials", "3", "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    assert {"lr", "schedule", "weight_decay", "label_smoothing"} <= set(rows[0])
    assert all(r["schedule"] in ("constant", "cosine", "onecycle") for r in rows)
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "trial_score"
    config = best["best"]["config"]
    assert config["model"] == "resnet20" and config["nesterov"] and config["augment"] == "standard"


def test_a_directory_holds_one_study_another_spec_is_refused_and_nothing_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = write_spec(tmp_path, SPEC.replace("epochs: 6", "epochs: 1"))
    assert main(["search", str(first), "--trials", "2", "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = tmp_path / "other.yaml"
    other.write_text(first.read_text().replace("name: e2e", "name: other"))
    capsys.readouterr()
    code = main(["search", str(other), "--trials", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds the results of study 'e2e'" in err and "study 'other'" in err
    assert "--study-name e2e" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}") == ["e2e"]
    # the same study continues; --study-name picks the one the directory holds
    assert main(["search", str(other), "--trials", "3", "--out", str(out), "--quiet",
                 "--study-name", "e2e"]) == 0  # fmt: skip


def test_a_spec_that_is_not_text_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "spec.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert main(["search", str(png), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{png} is not a text file" in err and "byte 0x89 at position 0" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "reuse"), [([], True), (["--no-reuse-actors"], False)])
def test_reuse_actors_reaches_the_ray_back_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], reuse: bool
) -> None:
    import gainsearch.search.run_ray as run_ray

    seen: dict = {}

    class CalledError(Exception):
        pass

    def fake(spec, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise CalledError

    monkeypatch.setattr(run_ray, "run_tuner", fake)
    with pytest.raises(CalledError):
        main(["search", str(write_spec(tmp_path)), "--backend", "ray", *flag, "--out", "o"])
    assert seen["reuse_actors"] is reuse
