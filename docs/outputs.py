"""Regenerate the command outputs that the README and the docs include (no hand copies).

    python docs/outputs.py            # every output below; about a minute on 2 CPU cores
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

#: file written -> (the command, as the README shows it after `.venv/bin/`; folders it writes)
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
}


def run(target: str) -> str:
    command, folders = OUTPUTS[target]
    for folder in folders:
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [GAINSEARCH, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    text = done.stdout.replace(str(ROOT) + "/", "<checkout>/")
    (ROOT / target).write_text(text)
    if target == "docs/main-job.txt":  # GitHub shows the README without includes: its copy
        readme = ROOT / "README.md"
        head, rest = readme.read_text().split("```text\n", 1)
        readme.write_text(head + "```text\n" + text + "```" + rest.split("```", 1)[1])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the commands only")
    args = parser.parse_args()
    for target, (command, _) in OUTPUTS.items():
        print(f"{target}: {' '.join(command)}")
        if not args.list:
            run(target)


if __name__ == "__main__":
    main()
