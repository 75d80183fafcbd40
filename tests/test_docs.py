"""Every Python block of the README and of docs/ runs, or is marked as a fragment; the
documentation site builds in strict mode (a broken link, a missing file or a docstring that does
not render fails it) and its API reference lists every public name.

A block right after a ``<!-- fragment: why -->`` line is a fragment (it needs names the reader
brings: a model, a loader): it is compiled, so a syntax error still fails. Every other block is
run, each in a fresh namespace in a temporary directory, as a reader would paste it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str, bool]]:
    """(where, code, fragment) of every Python block."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            fragment = before.startswith("<!-- fragment:")
            out.append((f"{page.relative_to(ROOT)}:{line}", match[1], fragment))
    return out


BLOCKS = blocks()


def test_the_pages_have_python_blocks_to_check() -> None:
    assert sum(not fragment for _, _, fragment in BLOCKS) >= 2


@pytest.mark.parametrize(("where", "code", "fragment"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_python_block_runs(
    where: str, code: str, fragment: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = compile(code, where, "exec")
    if fragment:
        return
    monkeypatch.chdir(tmp_path)
    exec(compiled, {"__name__": "__readme__"})


def test_the_site_builds_strict_with_every_public_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    import gainsearch

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    monkeypatch.chdir(ROOT)
    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"))
    assert config["strict"]
    build(config)  # raises on any warning in strict mode
    html = (tmp_path / "site" / "reference" / "index.html").read_text()
    missing = [n for n in gainsearch.__all__ if f'id="gainsearch.{n}"' not in html]
    assert not missing, missing
    for name in (
        "integrations.optuna.GainPruner",
        "integrations.optuna.report_gain",
        "integrations.ray.GainScheduler",
        "integrations.ray.GainResults",
        "integrations.lightning.GainCallback",
    ):
        assert f'id="gainsearch.{name}"' in html, name
