"""The README's two set-up commands, .ci/run and the packaging agree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    return lines[start : start + 2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test_command = readme_commands()
    assert "pytest" in test_command and "ruff check" in test_command and "mypy" in test_command
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_main_job_is_the_digits_search_on_local_ray() -> None:
    main_job, _ = readme_commands()
    assert "-c constraints.txt" in main_job
    assert "gainsearch search search_spaces/digits_lr.yaml --backend ray" in main_job
    assert "--address" not in main_job  # local Ray
    assert (ROOT / "search_spaces" / "digits_lr.yaml").is_file()


def test_torch_is_pinned_in_constraints_not_in_metadata() -> None:
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("torch==") for dep in project["dependencies"])
    assert set(project["optional-dependencies"]) >= {"ray", "vision", "plot", "dev"}
    assert project["scripts"]["gainsearch"] == "gainsearch.cli:main"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if "://" not in link]
    assert local, "the README links into the documentation"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_shows_the_committed_main_job_output() -> None:
    """The README's copy of the main job's output is the committed one (docs/main-job.txt, which
    the documentation includes as it is), so the two cannot drift apart."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / "docs" / "main-job.txt").read_text()


def test_every_quoted_output_comes_from_the_script_that_writes_it() -> None:
    """Every command output the docs show is a file docs/outputs.py writes, included (not
    copied) right after the command that made it; the README's main job is that script's command
    for docs/main-job.txt; and every file the script writes is shown somewhere."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("outputs", ROOT / "docs" / "outputs.py")
    assert spec is not None and spec.loader is not None
    outputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(outputs)
    command, _ = outputs.OUTPUTS["docs/main-job.txt"]
    first = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].splitlines()[0]
    assert first.endswith(".venv/bin/" + " ".join(command)), first
    shown: set[str] = set()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        for match in re.finditer(r'```text\n--8<-- "([^"]+)"\n```', text):
            target = match[1]
            if target.startswith("benchmarks/"):
                continue  # a benchmark's figures: the script named beside them prints them
            assert target in outputs.OUTPUTS, (page, target)
            assert (ROOT / target).is_file(), target
            shown.add(target)
            if target == "docs/main-job.txt":
                continue  # the README quotes its command (above)
            # the command shown last before the output is the one that wrote it
            blocks = re.findall(r"```bash\n(.*?)```", text[: match.start()], flags=re.S)
            assert blocks, (page, target)
            quoted = " ".join(blocks[-1].replace("\\\n", " ").split())
            assert quoted == " ".join(outputs.OUTPUTS[target][0]), (page, target, quoted)
        # no hand-copied output: an output block is an include
        for block in re.findall(r"```text\n(.*?)```", text, flags=re.S):
            assert block.startswith("--8<--"), (page, block[:200])
    assert shown == set(outputs.OUTPUTS), set(outputs.OUTPUTS) - shown
