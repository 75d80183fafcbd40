"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``PATH.tmp`` and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    tmp.replace(path)
