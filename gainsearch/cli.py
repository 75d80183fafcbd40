"""Command-line interface: ``gainsearch gain | train | search | report | diagnose``.

Every command exits 0 on success and 2 with a one-line ``gainsearch: error: ...`` message on bad
input (argparse's convention), without touching results already on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gainsearch._files import write_atomic
from gainsearch.core.selection import LAST

if TYPE_CHECKING:
    from gainsearch.search.results import TrialRow

__all__ = ["main"]

logger = logging.getLogger("gainsearch")


class CliError(Exception):
    """A user error reported as ``gainsearch: error: ...`` with exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gainsearch`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (CliError, ValueError, OSError) as err:
        print(f"gainsearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gainsearch: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gainsearch",
        description="Tune CNN classifiers without hold-out validation data, using the network's "
        "Maximum Gain (spectral response to an impulse image).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_gain, _add_train, _add_search, _add_report, _add_diagnose, _add_export):
        add(sub)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory")


def _add_gain(sub: Any) -> None:
    """``gainsearch gain``: the Maximum Gain of one model."""
    gain = sub.add_parser("gain", help="Maximum Gain of a registry model or a saved checkpoint")
    source = gain.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registry model name (freshly initialised)")
    source.add_argument("--checkpoint", type=Path, help="a checkpoint.pt written by train")
    gain.add_argument("--in-shape", default="1,28,28", help="C,H,W of the input (default 1,28,28)")
    gain.add_argument("--num-classes", type=int, default=10, help="number of classes (10)")
    gain.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0)")
    gain.add_argument("--seed", type=int, default=0, help="initialisation seed (0)")
    gain.add_argument(
        "--target",
        default="all",
        help="'all' (class mean, as in searches; the default), 'winner' (the paper) or a class",
    )
    gain.add_argument(
        "--no-normalize", action="store_true", help="differentiate y_c instead of log y_c"
    )
    gain.add_argument(
        "--probe", type=Path, help="a .npy image (C,H,W) to use instead of the impulse"
    )
    gain.add_argument(
        "--spectrum", type=Path, help="write the dB spectra: .npy, or .png (plot extra)"
    )
    _json_flag(gain)
    gain.set_defaults(handler=_cmd_gain)


def _add_train(sub: Any) -> None:
    """``gainsearch train``: one trial (a flag per training setting)."""
    train = sub.add_parser("train", help="one trial on the merged training set")
    train.add_argument("--spec", type=Path, help="YAML file of training settings (flags override)")
    _out_flag(train)
    train.add_argument("--download", action="store_true", help="download with torchvision")
    _add_setting_flags(train)
    train.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    train.add_argument("--quiet", action="store_true", help="no table, no progress bar")
    train.set_defaults(handler=_cmd_train)


def _add_search(sub: Any) -> None:
    """``gainsearch search``: a search from a spec, on either back end."""
    search = sub.add_parser("search", help="a hyperparameter search from an experiment spec")
    search.add_argument(
        "spec", type=Path, help="experiment spec (YAML), e.g. search_spaces/digits_lr.yaml"
    )
    _out_flag(search)
    search.add_argument(
        "--backend", choices=("optuna", "ray"), default="optuna", help="optuna (default) or ray"
    )
    search.add_argument(
        "--trials", type=int, default=20, help="finished trials wanted in the study (20)"
    )
    search.add_argument(
        "--timeout",
        type=float,
        help="seconds after which no new trial starts; running trials finish",
    )
    search.add_argument(
        "--storage", help="Optuna storage URL of the study (default sqlite:///OUT/study.db)"
    )
    search.add_argument("--study-name", help="study name (default: the spec's name)")
    search.add_argument(
        "--workers", type=int, default=argparse.SUPPRESS, help="parallel worker processes (1)"
    )
    search.add_argument(
        "--heartbeat", type=int, default=10, help="heartbeat seconds; 0 turns it off (10)"
    )
    _add_ray_options(search.add_argument_group("Ray back end"))
    search.add_argument(
        "--retry-failed",
        type=int,
        default=argparse.SUPPRESS,
        help="re-queue a trial whose worker died, up to N times (optuna, needs --heartbeat)",
    )
    search.add_argument(
        "--keep",
        default=argparse.SUPPRESS,
        help="optuna: the best K complete trials keep their kept epoch's weights in "
        "OUT/models/ (1: the best only), 'all' or 'none' (Ray keeps Tune's checkpoints)",
    )
    search.add_argument(
        "--threads",
        type=int,
        help="torch threads per trial (default: optuna, the cores over --workers; ray, "
        "--cpus-per-trial); results change in their last digits with it",
    )
    search.add_argument("--data-root", help="override the spec's data_root")
    search.add_argument("--epochs", type=int, help="override the spec's epoch budget")
    search.add_argument(
        "--eval-test", action="store_true", help="record test metrics per trial (evaluation only)"
    )
    search.add_argument(
        "--progress",
        choices=("bar", "jsonl", "none"),
        default="bar",
        help="bar (default, on stderr), jsonl (one JSON object a line on stdout, for scripts: "
        "progress events, then one 'done' event instead of the table) or none",
    )
    search.add_argument(
        "--quiet", action="store_true", help="no progress bar and no table (--progress none)"
    )
    search.add_argument(
        "--no-report", action="store_true", help="do not write the HTML report and figures"
    )
    search.set_defaults(handler=_cmd_search)


def _add_ray_options(ray_opts: Any) -> None:
    """The options of ``search --backend ray`` (refused with ``--backend optuna``)."""
    unset = argparse.SUPPRESS  # told from a given flag; the defaults are BACKEND_ONLY's
    ray_opts.add_argument("--max-concurrent", type=int, default=unset, help="trials at once (2)")
    ray_opts.add_argument("--cpus-per-trial", type=float, default=unset, help="CPUs per trial (1)")
    ray_opts.add_argument("--gpus-per-trial", type=float, default=unset, help="GPUs per trial (0)")
    ray_opts.add_argument(
        "--address",
        default=unset,
        help="join a running cluster: auto, host:port or ray://host:10001",
    )
    ray_opts.add_argument(
        "--storage-path",
        default=unset,
        help="results location (default OUT/ray_results); shared path or bucket URI on clusters",
    )
    ray_opts.add_argument(
        "--max-failures", type=int, default=unset, help="restarts per trial from its checkpoint (3)"
    )
    ray_opts.add_argument(
        "--reuse-actors",
        action=argparse.BooleanOptionalAction,
        default=unset,
        help="run the next trial in a finished trial's process (Tune's reuse_actors; default "
        "on: no new process and torch import per trial); --no-reuse-actors: a fresh process "
        "per trial, for model code that keeps global state",
    )


def _add_report(sub: Any) -> None:
    """``gainsearch report``: figures and HTML of a search."""
    report = sub.add_parser("report", help="figures and a self-contained HTML report of a search")
    report.add_argument(
        "run",
        help="a search's output directory, or an Optuna storage URL (e.g. sqlite:///study.db)",
    )
    report.add_argument("--study-name", help="study in the storage (needed if it holds several)")
    report.add_argument(
        "--out", type=Path, help="where to write (default: the run directory, or ./report)"
    )
    report.add_argument(
        "--signal",
        help="a stopping signal to plot per epoch beside the curves, e.g. prediction_changes "
        "(default: the run's select_by, when it is not last)",
    )
    report.set_defaults(handler=_cmd_report)


def _add_export(sub: Any) -> None:
    """``gainsearch export``: the tuned model of a search as a plain state_dict."""
    export = sub.add_parser("export", help="write a search's tuned model (the best trial's)")
    export.add_argument("run", type=Path, help="the search's output directory (its --out)")
    export.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.pt")
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from gainsearch.search.models import export_best

    try:
        path = export_best(args.run, args.out)
    except ValueError as err:
        raise CliError(str(err)) from err
    print(f"exported:    {path} (torch.load({str(path)!r}, weights_only=True): state_dict, config)")
    return 0


def _add_diagnose(sub: Any) -> None:
    """``gainsearch diagnose``: features and diagnosis of a history."""
    diag = sub.add_parser("diagnose", help="features and diagnosis of a gain history")
    diag.add_argument(
        "history",
        type=Path,
        help="history.json from train, a JSON list of gains, a text file of one gain a line, "
        "or a directory: a train's --out, or a search's --out (its best trial, or --trial N)",
    )
    diag.add_argument("--trial", type=int, help="with a search's directory: this trial number")
    diag.add_argument("--window", type=int, help="feature window in epochs (default 5)")
    _json_flag(diag)
    diag.set_defaults(handler=_cmd_diagnose)


def _cmd_gain(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from gainsearch.batteries.models import create_model
    from gainsearch.batteries.train import model_from_checkpoint
    from gainsearch.core.spectral import maximum_gain

    if args.checkpoint is not None:
        model, state = model_from_checkpoint(
            args.checkpoint, in_shape=_parse_shape(args.in_shape), num_classes=args.num_classes
        )
        in_shape = tuple((state.get("data") or {}).get("in_shape") or _parse_shape(args.in_shape))
        source = f"checkpoint {args.checkpoint} (epoch {state['epoch']})"
    else:
        in_shape = _parse_shape(args.in_shape)
        torch.manual_seed(args.seed)
        model = create_model(args.model, in_shape, args.num_classes, width=args.width)
        source = f"{args.model} (seed {args.seed}, untrained)"
    probe = None
    if args.probe is not None:
        probe = torch.from_numpy(np.load(args.probe, allow_pickle=False).astype(np.float32))
    result = maximum_gain(
        model,
        probe,
        in_shape=None if probe is not None else in_shape,
        target=_parse_target(args.target),
        normalize=not args.no_normalize,
        return_spectra=args.spectrum is not None,
    )
    if args.spectrum is not None and result.spectra is not None:
        _write_spectrum(args.spectrum, result.spectra)
    payload = {
        "source": source,
        "gain_db": result.gain,
        "channel_gains_db": list(result.channel_gains),
        "winner": result.winner,
        "confidence": result.confidence,
        "target": result.target,
        "gain_max_db": result.gain_max,
        "class_gains_db": None if result.class_gains is None else list(result.class_gains),
    }
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    print(f"model:            {source}")
    print(f"target:           {result.target} (winner {result.winner}, p={result.confidence:.3f})")
    for k, value in enumerate(result.channel_gains):
        print(f"channel {k} gain:   {value:.2f} dB")
    print(f"Maximum Gain:     {result.gain:.2f} dB")
    if result.class_gains is not None:
        print(f"max over classes: {result.gain_max:.2f} dB")
        print("per class:        " + " ".join(f"{v:.1f}" for v in result.class_gains))
    if args.spectrum is not None:
        print(f"spectrum written: {args.spectrum}")
    return 0


def _write_spectrum(path: Path, spectra: Any) -> None:
    import numpy as np

    if path.suffix not in (".npy", ".png"):
        raise CliError(f"--spectrum must end in .npy or .png, but got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, np.asarray(spectra))
        return
    try:
        from gainsearch.report import plot_spectrum
    except ImportError as err:
        raise CliError(
            "--spectrum .png needs matplotlib: `pip install gainsearch[plot]`, or write .npy"
        ) from err
    maps = np.asarray(spectra)
    if maps.ndim == 4:  # (K, C, H, W) for target="all": average over classes for the picture
        maps = maps.mean(axis=0)
    plot_spectrum(np.fft.fftshift(maps, axes=(-2, -1))).savefig(path, dpi=100)


# -- train ------------------------------------------------------------------------------------


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~gainsearch.batteries.train.TrainConfig` setting (``batch_size`` ->
    ``--batch-size``), typed by the dataclass and described by its docstring, so that a new
    setting cannot be left without one."""
    import dataclasses
    import typing

    from gainsearch.batteries.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    docs = _attribute_docs(TrainConfig.__doc__ or "")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        text = docs.get(field.name, field.name).replace("%", "%%")
        default = field.default if field.default is not dataclasses.MISSING else None
        if default not in (None, {}, ""):
            text += f" (default: {default})".replace("%", "%%")
        kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif kinds == {int}:
            parser.add_argument(flag, type=int, help=text)
        elif kinds == {float}:
            parser.add_argument(flag, type=float, help=text)
        elif typing.get_origin(hint) is list:  # signals: names, checked by the setting
            parser.add_argument(flag, nargs="+", metavar="NAME", help=text)
        elif typing.get_origin(hint) is dict or hint is dict:
            parser.add_argument(flag, type=_json_mapping(field.name), metavar="JSON", help=text)
        else:  # str, or str | int (gain_target): parsed by the setting's own check
            parser.add_argument(flag, help=text)


def _attribute_docs(doc: str) -> dict[str, str]:
    """``name: description`` entries of a Google-style docstring (read by ``docstring_parser``),
    on one line, Sphinx roles and literal markup removed (for ``--help``)."""
    import re

    import docstring_parser

    return {
        entry.arg_name: re.sub(
            r":\w+:`~?([^`]+)`", r"\1", " ".join(entry.description.split())
        ).replace("``", "")
        for entry in docstring_parser.parse(doc, docstring_parser.DocstringStyle.GOOGLE).params
        if entry.description
    }


def _json_mapping(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} must be a JSON object, e.g. '{{\"depth\": 3}}', "
                f"but got {text!r} ({err.msg})"
            ) from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} must be a JSON object, but got {text!r}"
            )
        return value

    return parse


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gainsearch.batteries.data import load_dataset
    from gainsearch.batteries.train import EpochContext, TrainConfig, train_trial

    settings: dict[str, Any] = {}
    if args.spec is not None:
        settings.update(_read_train_spec(args.spec))
    for name in TrainConfig.field_names():  # every setting that has a flag of the same name
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if "gain_target" in settings and isinstance(settings["gain_target"], str):
        settings["gain_target"] = _parse_target(settings["gain_target"])
    config = TrainConfig.from_dict(settings)
    data = load_dataset(
        config.dataset, config.data_root, download=args.download, image_size=config.image_size
    )

    out: Path = args.out
    checkpoint = out / "checkpoint.pt"
    if args.fresh and checkpoint.exists():
        checkpoint.unlink()
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"train": config.to_dict(), "data": data.summary()}

    header = f"{'epoch':>5} {'lr':>9} {'train_loss':>10} {'gain_dB':>8} {'trend':>6}"
    shown = [name for name in _SIGNAL_COLUMNS if name in config.signals]
    for name in shown:
        header += f" {_SIGNAL_COLUMNS[name][0]:>{_SIGNAL_COLUMNS[name][1]}}"
    if config.select_by != LAST:
        header += f" {'kept':>4}"
    if config.eval_test:
        header += f" {'test_acc':>8}"
    bars: list[Any] = []  # opened at the first epoch: a trial refused on resume prints no bar

    def show(ctx: EpochContext) -> None:
        if not bars:
            bars.append(
                tqdm(total=config.epochs, unit="epoch", disable=args.quiet, file=sys.stderr)
            )
            if not args.quiet:
                tqdm.write(header)
        bar = bars[0]
        feats = ctx.monitor.features()
        row = f"{ctx.epoch:>5} {ctx.record['lr']:>9.3g} {ctx.record['train_loss']:>10.4f}"
        row += f" {ctx.record['gain']:>8.2f}"
        row += f" {feats.trend:>+6.2f}"
        for name in shown:
            _, width, form = _SIGNAL_COLUMNS[name]
            row += f" {ctx.record[name]:>{width}{form}}"
        if config.select_by != LAST:
            row += f" {ctx.record['selected_epoch'] or '':>4}"
        if config.eval_test:
            row += f" {ctx.record['test_acc']:>8.3f}"
        if not args.quiet:
            tqdm.write(row)
        bar.n = ctx.epoch
        bar.set_postfix(gain=f"{ctx.record['gain']:.1f}dB")
        bar.refresh()

    try:
        result = train_trial(config, data=data, callbacks=[show], checkpoint_path=checkpoint)
    finally:
        for bar in bars:
            bar.close()
    # The resolved configuration is written only once training ran, so a bad resume (another
    # trial's checkpoint) leaves the directory exactly as it was.
    _write_json(out / "config.json", resolved)
    _write_json(out / "history.json", result.to_dict())
    if result.status == "completed" and not args.quiet and len(result.history) == 0:
        print("nothing to do: the checkpoint already holds all epochs")
    print(f"status:    {result.status}" + (f" ({result.reason})" if result.reason else ""))
    print(f"diagnosis: {result.diagnosis}")
    _print_label_noise(result.label_noise, "labels:    ")
    if config.select_by != LAST and result.selected_epoch is not None:
        print(
            f"selected:  epoch {result.selected_epoch} (lowest {config.select_by}"
            + (f", mean of {config.select_window}" if config.select_window > 1 else "")
            + "): its weights are the trial's model and the checkpoint's kept weights"
        )
    print(f"results:   {out}/history.json, {out}/config.json, {checkpoint}")
    return 0


#: The train table's column for each signal: title, width, format.
_SIGNAL_COLUMNS = {
    "prediction_changes": ("changes", 7, ".0f"),
    "gradient_disparity": ("disparity", 9, ".3g"),
    "gain_variability": ("gain_var", 8, ".2f"),
}  # gain_trend is the table's `trend` column already


def _read_train_spec(path: Path) -> dict[str, Any]:
    from gainsearch.search.spaces import read_yaml_mapping

    data = read_yaml_mapping(path, what="--spec", expected="a mapping of training settings")
    if isinstance(data.get("train"), dict):
        data = data["train"]
    elif isinstance(data.get("best"), dict) and isinstance(data["best"].get("config"), dict):
        data = dict(data["best"]["config"])  # a search's best.json: its best trial's settings
    return data


# -- search ---------------------------------------------------------------------------------


def _cmd_search(args: argparse.Namespace) -> int:
    from gainsearch.search.spaces import load_spec

    spec = load_spec(args.spec)
    overrides = {
        k: v for k, v in (("data_root", args.data_root), ("epochs", args.epochs)) if v is not None
    }
    if overrides:
        spec = spec.with_train(**overrides)
    if args.quiet:
        args.progress = "none"
    given = {  # back-end-only flags given on the command line (parsed with SUPPRESS)
        backend: [_flag(dest, getattr(args, dest)) for dest in flags if hasattr(args, dest)]
        for backend, flags in BACKEND_ONLY.items()
    }
    if given["ray"] and args.backend == "optuna":
        raise CliError(f"{', '.join(given['ray'])} belong(s) to --backend ray, not optuna.")
    if given["optuna"] and args.backend == "ray":
        raise CliError(
            f"{', '.join(given['optuna'])} belong(s) to --backend optuna, not ray: on Ray, "
            "--max-concurrent sets the trials at once and --max-failures the restarts of a "
            "failed trial from its checkpoint."
        )
    for flags in BACKEND_ONLY.values():
        for dest, default in flags.items():
            setattr(args, dest, getattr(args, dest, default))
    return _search(args, spec)


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        from gainsearch.report import load_run, write_report
    except ImportError as err:  # matplotlib missing
        raise CliError(f"report needs matplotlib: `pip install gainsearch[plot]` ({err}).") from err
    run = load_run(args.run, args.study_name)
    try:
        path = write_report(run, args.out, signal=args.signal)
    except ValueError as err:
        raise CliError(f"--signal: {err}") from err
    print(f"report:      {path}")
    print(f"figures:     {', '.join(sorted(p.name for p in path.parent.glob('*.png')))}")
    return 0


#: The flags of one back end only (refused with the other) and their defaults. They are parsed
#: with ``argparse.SUPPRESS``, so a flag given on the command line is told from its default.
BACKEND_ONLY: dict[str, dict[str, Any]] = {
    "ray": {
        "address": None,
        "storage_path": None,
        "max_concurrent": 2,
        "cpus_per_trial": 1.0,
        "gpus_per_trial": 0.0,
        "max_failures": 3,
        "reuse_actors": True,
    },
    "optuna": {"retry_failed": 0, "workers": 1, "keep": "1"},
}


def _flag(dest: str, value: Any) -> str:
    """The command-line flag of ``dest`` as given (``--no-reuse-actors`` for False)."""
    flag = "--" + dest.replace("_", "-")
    return flag.replace("--", "--no-", 1) if value is False else flag


#: Flags passed on to the runners under their own names.
SEARCH_ARGS = ("storage", "study_name", "timeout", "eval_test", "threads")
RAY_ARGS = (
    "max_concurrent",
    "cpus_per_trial",
    "gpus_per_trial",
    "address",
    "storage_path",
    "max_failures",
    "reuse_actors",
)


def _search(args: argparse.Namespace, spec: Any) -> int:
    """Run the search on the chosen back end; the table, the summary and the report."""
    kwargs = {name: getattr(args, name) for name in SEARCH_ARGS}
    if args.backend == "ray":
        try:
            from gainsearch.search.run_ray import run_tuner
        except ImportError as err:
            raise CliError(f"{err}") from err
        run: Callable[..., Any] = run_tuner
        kwargs.update({name: getattr(args, name) for name in RAY_ARGS})
        kwargs["ray_output"] = args.verbose  # Ray's own reporting only with --verbose
    else:
        from gainsearch.search.run_optuna import run_study

        run = run_study
        kwargs.update(
            workers=args.workers,
            heartbeat=args.heartbeat or None,
            retry_failed=args.retry_failed,
            keep=args.keep,
        )
    _quiet_optuna(args)
    with _progress_bar(args) as progress, _stdout_for(args):
        outcome = run(spec, out_dir=args.out, n_trials=args.trials, progress=progress, **kwargs)
    if outcome.new_trials == 0 and not outcome.interrupted:
        finished = sum(r.state in ("complete", "pruned") for r in outcome.rows)
        print(
            f"nothing to run: the study already holds {finished} finished trial(s) "
            f"(--trials {args.trials}); raise --trials to add more",
            file=sys.stderr,
        )
    return _report_outcome(args, outcome.rows, outcome.best, outcome.where(), outcome.interrupted)


def _quiet_optuna(args: argparse.Namespace) -> None:
    """Optuna's INFO lines (one per trial) only with --verbose: the progress bar says it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)


def _stdout_for(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """In ``--progress jsonl`` mode stdout carries JSON lines only: whatever the back end prints
    (Ray's experiment box, worker logs) goes to stderr meanwhile."""
    if args.progress == "jsonl":
        return contextlib.redirect_stdout(sys.stderr)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A tqdm bar of finished trials with pruned/running counts and the best score so far.

    Created on the first update, so a run that fails its argument checks prints only the error.
    With ``--progress jsonl`` each change of the counts is one JSON line on stdout instead.
    """
    from tqdm import tqdm

    bars: list[Any] = []
    last: list[dict[str, Any]] = []
    stream = sys.stdout  # the real stdout: the back end's own prints go to stderr in jsonl mode

    def progress(counts: dict[str, Any]) -> None:
        if last and last[0] == counts:  # Ray calls on every result: draw changes only
            return
        last[:] = [dict(counts)]
        if args.progress == "jsonl":
            event = {"event": "progress", "wanted": args.trials, **counts}
            print(json.dumps(event), file=stream, flush=True)
            return
        if not bars:
            bars.append(
                tqdm(
                    total=args.trials,
                    unit="trial",
                    disable=args.progress != "bar",
                    file=sys.stderr,
                )
            )
        bar = bars[0]
        bar.n = min(counts["done"], args.trials)
        best = counts["best"]
        postfix = {
            "pruned": counts["pruned"],
            "running": counts["running"],
            "best": "-" if best is None else f"{best:.2f}",
        }
        if counts.get("waiting"):  # the count is reached; a dead worker's trial is settled
            postfix["waiting"] = f"<={counts['waiting']}s for running trials to end or go stale"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _report_outcome(
    args: argparse.Namespace,
    rows: list[TrialRow],
    best: dict[str, Any],
    where: list[str],
    interrupted: bool,
) -> int:
    """The end-of-run table, the best trial, where results are, the report; 130 when
    interrupted (the report is written then too: it shows the trials so far)."""
    report = _write_search_report(args)
    finished = sum(r.state in ("complete", "pruned") for r in rows)
    timed_out = bool(args.timeout) and not interrupted and finished < args.trials
    if args.progress == "jsonl":
        states = sorted({r.state for r in rows})
        done = {
            "event": "done",
            "interrupted": interrupted,
            "timed_out": timed_out,
            "trials": len(rows),
            "states": {s: sum(r.state == s for r in rows) for s in states},
            "best": best.get("best"),
            "out": str(args.out),
            "report": report,
        }
        print(json.dumps(done, default=str), flush=True)
        return 130 if interrupted else 0
    if not args.quiet:
        print(format_table(rows))
    top = best.get("best")
    if top:
        print(f"best trial:  #{top['number']} {top['params']} {top['values']} ({top['diagnosis']})")
    elif "pareto_front" in best:
        print(f"Pareto front: trials {[t['number'] for t in best['pareto_front']]}")
    if top and top.get("label_noise"):
        from gainsearch.core.noise import LabelNoise

        noise = top["label_noise"]
        _print_label_noise(
            LabelNoise(
                rate=float(noise["rate"]) if noise.get("rate") is not None else math.nan,
                kind=str(noise["kind"]),
                pairs=[tuple(p) for p in noise.get("pairs") or []],
                epoch=noise.get("epoch"),
                provisional=bool(noise.get("provisional")),
            ),
            "labels:      ",
        )
    for line in where:
        print(line)
    print(f"results:     {args.out}/trials.csv, {args.out}/best.json, {args.out}/spec.yaml")
    if top and top.get("model_file"):
        print(
            f"best model:  {args.out}/{top['model_file']} (load it: "
            f"gainsearch.load_best({str(args.out)!r}); or `gainsearch export {args.out} --out "
            "model.pt`)"
        )
    if report:
        print(f"report:      {report}")
    if interrupted:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    if timed_out:
        print(
            f"timeout:     {finished} of {args.trials} trials finished in {args.timeout:g} s; run "
            "the same command again for the rest",
            file=sys.stderr,
        )
    return 0


def _write_search_report(args: argparse.Namespace) -> str | None:
    """The HTML report of the search just run; a note (not an error) if matplotlib is missing.

    A failure to draw never fails the search: its results are already on disk.
    """
    if args.no_report:
        return None
    try:
        from gainsearch.report import write_report
    except ImportError:
        print(
            "report:      skipped (needs matplotlib: pip install 'gainsearch[plot]'; then "
            f"`gainsearch report {args.out}`)",
            file=sys.stderr,
        )
        return None
    try:
        return str(write_report(args.out))
    except Exception as err:  # the search itself succeeded: say why and go on
        logger.warning("the report could not be written: %s: %s", type(err).__name__, err)
        return None


def format_table(rows: list[TrialRow]) -> str:
    """The end-of-run table of trials."""
    params = sorted({k for r in rows for k in r.params})
    # with a stopping rule: the kept epoch (whose score is the value), and why trials stopped
    selecting = any((r.config or {}).get("select_by", LAST) != LAST for r in rows)
    header = ["#", "state", *params, "value", "epochs", *(["kept"] if selecting else [])]
    header += ["diagnosis", "stop reason" if selecting else "prune reason"]
    lines = []
    for r in rows:
        value = r.value if r.value is not None else r.values
        kept = [_fmt(r.selected_epoch)] if selecting else []
        lines.append(
            [
                str(r.number),
                r.state,
                *[_fmt(r.params.get(p, "")) for p in params],
                _fmt(value),
                str(r.epochs),
                *kept,
                r.diagnosis,
                r.prune_reason or r.stop_reason,
            ]
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(x.rstrip() for x in out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


# -- diagnose ---------------------------------------------------------------------------------


def _search_trial_record(folder: Path, trial: int | None) -> dict[str, Any]:
    """A search directory's trial (default: the best) as the record ``diagnose`` reads, in the
    form of ``history.json``."""
    try:
        rows = json.loads((folder / "trials.json").read_text())["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise CliError(
            f"{folder}: a directory needs history.json (gainsearch train) or trials.json "
            f"(gainsearch search), and has neither readable ({err})."
        ) from None
    if trial is None:
        best = json.loads((folder / "best.json").read_text()).get("best") or {}
        trial = best.get("number")
        if trial is None:
            raise CliError(f"{folder}: no best trial yet; pass --trial N.")
    row = next((r for r in rows if r.get("number") == trial), None)
    if row is None:
        numbers = sorted(r.get("number") for r in rows)
        raise CliError(f"--trial {trial}: no such trial in {folder}; it has {numbers}.")
    losses = row.get("train_loss") or []
    print(f"trial:             #{trial} of {folder}")
    return {
        "history": [
            {
                "epoch": e,
                "gain": math.nan if g is None else g,
                "train_loss": (
                    math.nan if e > len(losses) or losses[e - 1] is None else losses[e - 1]
                ),
            }
            for e, g in enumerate(row.get("gain_curve") or [], start=1)
        ],
        "selected_epoch": row.get("selected_epoch"),
        "config": row.get("config") or {},
        "status": row.get("state", ""),
        "label_noise": row.get("label_noise"),
    }


def _cmd_diagnose(args: argparse.Namespace) -> int:
    """The history is read once: a train's history.json (or its --out), a search's trial, a
    JSON list or a text file of gains."""
    from gainsearch.batteries.train import history_of, read_history

    source: Path = args.history
    if args.trial is not None and not source.is_dir():
        raise CliError("--trial needs a search's directory as the history.")
    data: Any = None
    if source.is_dir() and not (source / "history.json").is_file():
        data = _search_trial_record(source, args.trial)
    else:
        source = source / "history.json" if source.is_dir() else source
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError):
            data = None  # read_history says why, or reads a text file of gains
    if isinstance(data, dict):
        history = history_of(data, source)
        kept, noise = _kept_epoch(data), _label_noise_of(data)
    else:
        history, kept, noise = read_history(source), {}, None
    return _diagnose(args, history, kept, noise)


def _diagnose(args: argparse.Namespace, history: Any, kept: dict[str, Any], noise: Any) -> int:
    from gainsearch.core.features import DiagnosisConfig, diagnose

    gains, epochs, loss_diverged, losses = history
    config = DiagnosisConfig()
    if args.window is not None:
        config = config.with_overrides(window=args.window)
    result = diagnose(
        gains, epochs=epochs, config=config, diverged_epoch=loss_diverged, train_loss=losses
    )
    if args.json:
        extra = {"label_noise": noise.to_dict()} if noise and math.isfinite(noise.rate) else {}
        print(json.dumps({**result.to_dict(), **kept, **extra}, indent=2))
        return 0
    feats = result.features
    print(f"epochs:            {feats.n_epochs}")
    print(f"level:             {feats.level:.2f} dB (median of the last {feats.window})")
    print(f"trend:             {feats.trend:+.3f} dB/epoch")
    print(
        f"variability:       {feats.variability:.3f} dB/epoch (early {feats.early_variability:.3f})"
    )
    print(f"saturation:        {feats.saturation:.2f}")
    print(f"overfit onset:     {feats.overfit_onset if feats.overfit_onset is not None else '-'}")
    print(f"diverged at epoch: {feats.diverged_epoch if feats.diverged_epoch is not None else '-'}")
    if losses:
        print(f"training loss:     {losses[-1]:.4g} (last epoch)")
    if kept:
        print(
            f"selected epoch:    {kept['selected_epoch']} (select_by {kept['select_by']}"
            + (f", {kept['status']}" if kept["status"] != "completed" else "")
            + ")"
        )
    print(f"diagnosis:         {result.label}")
    print(f"reason:            {result.reason}")
    if noise is not None:
        _print_label_noise(noise, "label noise:       ")
    return 0


def _print_label_noise(noise: Any, label: str) -> None:
    """The label-noise line (``gainsearch.core.noise``), and where the kind is class-dependent
    the plain warning that a validation split is needed, and why."""
    if not math.isfinite(noise.rate):
        return
    print(label + noise.describe())
    if noise.needs_split:
        from gainsearch.core.noise import NEEDS_SPLIT

        print(" " * len(label) + "WARNING: " + NEEDS_SPLIT)


def _label_noise_of(data: dict[str, Any]) -> Any:
    """The label-noise diagnosis of a history whose records carry the fields (or the stored one
    of a search's trial)."""
    from gainsearch.core.noise import LabelNoise, estimate_label_noise

    if not isinstance(data.get("history"), list):
        return None
    from_records = estimate_label_noise([r for r in data["history"] if isinstance(r, dict)])
    stored = data.get("label_noise")
    if math.isfinite(from_records.rate) or not isinstance(stored, dict):
        return from_records
    if stored.get("kind") and stored.get("rate") is not None:  # a search's trial: stored
        return LabelNoise(
            rate=float(stored["rate"]),
            kind=str(stored["kind"]),
            pairs=[tuple(p) for p in stored.get("pairs") or []],
            epoch=stored.get("epoch"),
            provisional=bool(stored.get("provisional")),
        )
    return from_records


def _kept_epoch(data: dict[str, Any]) -> dict[str, Any]:
    """``selected_epoch``, ``select_by`` and ``status`` of a history that has them."""
    if data.get("selected_epoch") is None:
        return {}
    return {
        "selected_epoch": int(data["selected_epoch"]),
        "select_by": (data.get("config") or {}).get("select_by", LAST),
        "status": data.get("status", ""),
    }


# -- helpers ----------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(v <= 0 for v in shape):
        raise CliError(f"--in-shape must be three positive integers C,H,W, but got {text!r}.")
    return shape  # type: ignore[return-value]


def _parse_target(text: str | int) -> Any:
    if isinstance(text, int) or text in ("winner", "all"):
        return text
    if str(text).isdigit():
        return int(text)
    raise CliError(f"target must be 'winner', 'all' or a class index, but got {text!r}.")


def _write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
