"""Regenerate the command outputs that the README and the docs include (no hand copies).

    python docs/outputs.py            # every output below; a few minutes on 2 CPU cores
    python docs/outputs.py docs/outputs/stop.txt   # one of them
    python docs/outputs.py --list     # the commands and the files they write

Each command runs from the repository root on a fresh output folder; what it prints on stdout is
written to its file, with this checkout's absolute path replaced by ``<checkout>``. The docs
include those files (``--8<--`` snippets); the README, which GitHub shows without includes, gets
the main job's block rewritten here (``tests/test_setup.py`` checks the copy). The figures in
them vary between machines in their last digits (thread count, floating-point order) and, with
two trials at once, in the peers a trial was judged against.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GAINSEARCH = str(Path(sys.executable).with_name("gainsearch"))

#: file written -> (the command, as the docs show it (the README after `.venv/bin/`); folders
#: it writes, removed first). ``gainsearch`` and ``python`` run from this interpreter's venv.
OUTPUTS: dict[str, tuple[list[str], list[str]]] = {
    "docs/main-job.txt": (
        [
            "gainsearch",
            "search",
            "search_spaces/digits_lr.yaml",
            "--backend",
            "ray",
            "--trials",
            "12",
            "--out",
            "runs/digits",
        ],
        ["runs/digits"],
    ),
    "docs/outputs/stop.txt": (
        [
            "gainsearch",
            "train",
            "--dataset",
            "digits",
            "--select-by",
            "prediction_changes",
            "--select-window",
            "3",
            "--patience",
            "3",
            "--epochs",
            "30",
            "--eval-test",
            "--out",
            "runs/stop",
        ],
        ["runs/stop"],
    ),
    "docs/outputs/r20.txt": (
        [
            "gainsearch",
            "train",
            "--dataset",
            "mnist",
            "--data-root",
            "../shared/data/mnist5k",
            "--model",
            "resnet20",
            "--optimizer",
            "adamw",
            "--schedule",
            "cosine",
            "--warmup-epochs",
            "1",
            "--augment",
            "standard",
            "--label-smoothing",
            "0.1",
            "--epochs",
            "3",
            "--out",
            "runs/r20",
        ],
        ["runs/r20"],
    ),
    "docs/outputs/lightning-optuna.txt": (
        ["python", "examples/lightning_optuna.py", "--trials", "4", "--epochs", "3"],
        ["runs/lightning_optuna"],
    ),
    "docs/outputs/lightning-ray.txt": (
        ["python", "examples/lightning_ray.py", "--trials", "4", "--epochs", "3"],
        ["runs/lightning_ray"],
    ),
}


def run(target: str) -> str:
    command, folders = OUTPUTS[target]
    for folder in folders:
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    program = {"gainsearch": GAINSEARCH, "python": sys.executable}[command[0]]
    done = subprocess.run(
        [program, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    text = done.stdout.replace(str(ROOT) + "/", "<checkout>/")
    (ROOT / target).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / target).write_text(text)
    if target == "docs/main-job.txt":  # GitHub shows the README without includes: its copy
        readme = ROOT / "README.md"
        head, rest = readme.read_text().split("```text\n", 1)
        readme.write_text(head + "```text\n" + text + "```" + rest.split("```", 1)[1])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(OUTPUTS)}")
    parser.add_argument("--list", action="store_true", help="print the commands only")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(OUTPUTS))
    if unknown:
        parser.error(f"unknown target(s) {unknown}; the targets are {list(OUTPUTS)}")
    for target, (command, _) in OUTPUTS.items():
        if args.targets and target not in args.targets:
            continue
        print(f"{target}: {' '.join(command)}")
        if not args.list:
            run(target)


if __name__ == "__main__":
    main()
