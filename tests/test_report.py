"""Figures and the HTML report: built from a small finished search, checked as files and in a
headless browser; progress in JSON-lines mode."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image

from gainsearch import GainMonitor, create_model
from gainsearch.cli import main
from gainsearch.report import (
    RunData,
    load_run,
    plot_curves,
    plot_diagnosis,
    plot_features,
    plot_per_epoch,
    plot_spectrum,
    write_report,
    write_sweep,
)
from gainsearch.search.results import TrialRow

SPEC = """\
name: report_e2e
description: a small search for the report tests
train: {dataset: digits, model: digits_lenet, epochs: 4, batch_size: 128}
search:
  lr: {type: float, low: 1.0e-3, high: 3.0, log: true}
pruner: {grace_period: 1, min_peers: 2}
sampler: {type: tpe, seed: 3}
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A finished 7-trial search (some pruned, one diverged) run through the CLI in JSON-lines
    mode; returns its output directory and the JSON events it printed."""
    root = tmp_path_factory.mktemp("search")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    out = root / "out"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        code = main(
            ["search", str(spec), "--trials", "7", "--out", str(out), "--progress", "jsonl"]
        )
    assert code == 0
    events = [json.loads(line) for line in capture.getvalue().splitlines()]
    return out, events


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes the whole image: a truncated PNG fails here
        return image.size


class Sources(HTMLParser):
    """Every src/href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster") and value is not None:
                self.refs.append((tag, name, value))


def test_jsonl_progress_is_one_json_object_a_line(search: tuple[Path, list[dict]]) -> None:
    _, events = search
    assert events[-1]["event"] == "done" and all(e["event"] == "progress" for e in events[:-1])
    progress = events[:-1]
    assert progress and {"done", "pruned", "running", "best", "wanted"} <= set(progress[0])
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert progress[-1]["done"] == 7
    done = events[-1]
    assert done["trials"] == 7 and sum(done["states"].values()) == 7
    assert done["best"]["params"]["lr"] > 0 and done["report"].endswith("report.html")


def test_search_writes_figures_and_a_self_contained_report(
    search: tuple[Path, list[dict]],
) -> None:
    out, _ = search
    rows = [TrialRow.from_dict(r) for r in json.loads((out / "trials.json").read_text())["rows"]]
    assert len(rows) == 7 and {r.state for r in rows} >= {"complete", "pruned"}
    assert any("diverged" in r.prune_reason for r in rows)
    for r in rows:
        assert len(r.gain_curve) == r.epochs == len(r.train_loss)
    complete = [r for r in rows if r.state == "complete"]
    assert all(np.asarray(r.spectrum["db"]).shape == (1, 8, 8) for r in complete)
    sizes = {}
    for stem in ("curves", "features", "diagnosis", "spectrum", "labels"):
        sizes[stem] = png_size((out / f"{stem}.png").read_bytes())
        assert min(sizes[stem]) >= 200, (stem, sizes[stem])
    page = (out / "report.html").read_text()
    parser = Sources()
    parser.feed(page)
    images = [v for tag, name, v in parser.refs if tag == "img"]
    assert len(images) == 5 and len(parser.refs) == 5  # the images and nothing else referenced
    for src in images:  # each embedded image is the PNG written beside it, decodable
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert png_size(data) in sizes.values()
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    best = json.loads((out / "best.json").read_text())["best"]
    assert f"Trial <b>#{best['number']}</b>" in page
    for r in rows:  # the trial table has every trial, its diagnosis and its prune reason
        assert f"<td>{r.number}</td>" in page
        if r.prune_reason:
            assert r.prune_reason.split(":")[0] in page


def test_report_command_from_the_directory_and_from_the_storage(
    search: tuple[Path, list[dict]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = search
    assert main(["report", str(out), "--out", str(tmp_path / "a")]) == 0
    assert "report.html" in capsys.readouterr().out
    url = f"sqlite:///{out / 'study.db'}"
    assert main(["report", url, "--out", str(tmp_path / "b")]) == 0  # the only study: no name
    assert main(["report", url, "--study-name", "report_e2e", "--out", str(tmp_path / "c")]) == 0
    from_dir, from_db = load_run(out), load_run(url)
    assert [r.number for r in from_dir.rows] == [r.number for r in from_db.rows]
    assert [r.gain_curve for r in from_dir.rows] == [r.gain_curve for r in from_db.rows]
    assert from_db.best["best"]["number"] == from_dir.best["best"]["number"]
    for folder in "abc":
        files = sorted(p.name for p in (tmp_path / folder).iterdir())
        assert files == [
            "curves.png",
            "diagnosis.png",
            "features.png",
            "labels.png",
            "report.html",
            "spectrum.png",
        ]


def synthetic_run() -> RunData:
    """Every kind of trial the figures must draw: complete, pruned for each reason, diverged at
    once (no finite gain), failed, and an interrupted one."""

    def row(
        number: int, lr: float, state: str, gains: list, reason: str = "", rule: str = ""
    ) -> dict:
        return {
            "prune_rule": rule,
            "number": number,
            "state": state,
            "params": {"lr": lr, "batch": 32},
            "value": gains[-1] if gains and gains[-1] is not None else None,
            "epochs": len(gains),
            "gain_curve": gains,
            "train_loss": [1.0 / (i + 1) for i in range(len(gains))],
            "diagnosis": "converging" if state == "complete" else "undetermined",
            "prune_reason": reason,
            "spectrum": None,
        }

    rows = [
        row(0, 1e-3, "complete", [1.0, 3.0, 4.0, 4.5, 4.6]),
        row(1, 1e-2, "complete", [2.0, 5.0, 6.0, 6.2, 6.3]),
        row(
            2,
            1e-4,
            "pruned",
            [0.5, 0.7],
            "gain score 0.70 at epoch 2 is below the 50th pct",
            "below_percentile",
        ),
        row(
            3,
            0.3,
            "pruned",
            [5.0, -2.0, 7.0],
            "learning rate too high: variability 4.0",
            "too_variable",
        ),
        row(
            4, 3.0, "pruned", [None], "diverged: the gain became non-finite at epoch 1", "diverged"
        ),
        row(5, 0.05, "failed", [3.0]),
        row(6, 0.02, "interrupted", [2.0, 4.0]),
    ]
    return RunData(
        rows=rows,
        best={},
        spec={"search": {"lr": {"log": True}}},
        source="memory",
        log_params={"lr"},
    )


def test_each_figure_draws_every_kind_of_trial() -> None:
    run = synthetic_run()
    fig = plot_curves(run)
    gain_ax = fig.axes[0]
    legend = [t.get_text() for t in gain_ax.get_legend().get_texts()]
    assert legend == [
        "diverged",
        "too variable (lr too high)",
        "score below peers",
        "failed",
        "interrupted",
    ]
    markers = [line.get_marker() for line in gain_ax.get_lines() if line.get_marker() != "None"]
    assert sorted(markers) == sorted(["X", "^", "v", "D", "o"])  # one per stopped trial
    assert gain_ax.get_xscale() == "linear" and fig.axes[-1].get_ylabel() == "lr (log scale)"
    feats = plot_features(run)
    assert len(feats.axes) == 2 * 4  # two numeric parameters x four features
    assert (
        feats.axes[0].get_xscale() == "linear" and feats.axes[4].get_xscale() == "log"
    )  # batch, lr
    diag = plot_diagnosis(run)
    assert [t.get_text() for t in diag.axes[0].get_yticklabels()] == ["converging", "undetermined"]


def test_spectrum_figure_from_a_model_and_from_stored_spectra() -> None:
    net = create_model("lenet_cifar", in_shape=(3, 32, 32), num_classes=10)
    fig = plot_spectrum(net, in_shape=(3, 32, 32))
    assert len([ax for ax in fig.axes if ax.get_images()]) == 3  # one panel per colour channel
    monitor = GainMonitor(in_shape=(3, 32, 32))
    stored = monitor.spectrum(net)
    maps = np.asarray(stored["db"])
    assert maps.shape == (3, 32, 32) and len(monitor) == 0  # no reading appended
    # the stored maxima are the per-channel Maximum Gains; their mean is the scalar gain
    assert math.isclose(float(maps.max(axis=(1, 2)).mean()), stored["gain"], abs_tol=0.01)
    panels = [ax for ax in plot_spectrum(maps).axes if ax.get_images()]
    assert [ax.get_images()[0].get_array().shape for ax in panels] == [(32, 32)] * 3
    with pytest.raises(ValueError, match=r"spectra must have shape \(C, H, W\), but got"):
        plot_spectrum(np.zeros((2, 2, 2, 2)))


def test_report_of_a_run_without_completed_trials(tmp_path: Path) -> None:
    run = synthetic_run()
    run.rows = [r for r in run.rows if r.state != "complete"]
    path = write_report(run, tmp_path)
    page = path.read_text()
    assert "No trial has completed yet." in page and page.count("<img ") == 3  # no spectrum


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def open_in_chromium(page: Path) -> tuple[list[list], list[str]]:
    """(images as [alt, complete, naturalWidth, naturalHeight], errors logged) for a page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, offline=True
        )
        try:
            tab = browser.new_page()
            tab.on(
                "console",
                lambda m: (
                    errors.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            tab.goto(page.resolve().as_uri(), wait_until="load")
            images = tab.evaluate(
                "() => Array.from(document.images).map("
                "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
        finally:
            browser.close()
    return images, errors


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run does)")
def test_report_opens_in_headless_chromium(search: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out, _ = search
    alone = tmp_path / "mailed" / "report.html"  # the page alone, away from its PNG files
    alone.parent.mkdir()
    shutil.copy(out / "report.html", alone)
    images, errors = open_in_chromium(alone)
    assert errors == []
    assert [i[0] for i in images] == ["curves", "features", "diagnosis", "spectrum", "labels"]
    for alt, complete, width, height in images:
        expected = png_size((out / f"{alt}.png").read_bytes())
        assert complete and (width, height) == expected, alt

    # the check itself can fail: a page with a broken image and a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img alt="x" src="missing.png">'
        "<script>undefinedFunction()</script></body></html>"
    )
    images, errors = open_in_chromium(broken)
    assert images == [["x", True, 0, 0]]
    assert any("undefinedFunction" in e for e in errors)
    assert any("missing.png" in e for e in errors)


def test_a_sweep_of_your_own_results_makes_a_report(tmp_path: Path) -> None:
    from gainsearch import train_trial

    base = {
        "dataset": "digits",
        "model": "digits_lenet",
        "epochs": 3,
        "batch_size": 256,
        "eval_test": True,
    }
    results = [train_trial({**base, "lr": lr}) for lr in (0.001, 0.05, 50.0)]
    run = RunData.from_results(results, ["lr"], source="sweep")
    assert run.log_params == {"lr"} and run.color_param == "lr"
    assert [r.state for r in run.rows] == ["complete", "complete", "pruned"]
    assert run.rows[2].diagnosis == "diverged" and "non-finite" in run.rows[2].prune_reason
    assert run.rows[0].gain_curve == results[0].gains
    curve = [h["test_acc"] for h in results[0].history]  # final value, as in a search's rows
    assert run.rows[0].test_acc == curve[-1] and run.rows[0].test_acc_curve == curve
    lines = plot_per_epoch(run, "test_acc_curve", "test accuracy").axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines] == [3, 3, 1]  # the diverged one: 1 epoch
    page = write_report(run, tmp_path).read_text()
    assert page.count("<img ") == 3 and "diverged" in page
    lines = write_sweep(run, tmp_path / "sweep", "lr")  # the paper scripts' files
    assert [p.name for p in sorted((tmp_path / "sweep").iterdir())] == [
        "lr.json",
        "lr_curves.png",
        "lr_test.png",
    ]
    assert json.loads((tmp_path / "sweep" / "lr.json").read_text())[1]["params"] == {"lr": 0.05}
    assert lines[0].startswith("lr 0.001    test acc ") and lines[2].split()[5] == "diverged"


def test_an_exploding_trial_does_not_flatten_the_other_curves() -> None:
    run = synthetic_run()
    run.rows[3].gain_curve = [5.0, 6.0, 600.0]  # finite but exploded, then pruned
    run.rows[3].train_loss = [1.0, 0.5, 1e12]
    fig = plot_curves(run)
    low, high = fig.axes[0].get_ylim()
    assert high < 100 and low < 0.5  # the other curves keep their scale
    assert fig.axes[1].get_ylim()[1] < 1e6
    marker = next(line for line in fig.axes[0].get_lines() if line.get_marker() == "^")
    assert marker.get_ydata()[0] == pytest.approx(high)  # drawn on the top edge, not lost
