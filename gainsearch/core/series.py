"""Per-epoch series, read by epoch number: the one form the decision core (pruning), the
selection rule (the kept epoch) and the evaluation share. Pure.

A series is a mapping ``{epoch: value}`` or a sequence whose entries are epochs 1, 2, ...;
:func:`by_epoch` gives the mapping, :func:`align` the readings of several series at the same
epoch numbers (how a trial is compared with its peers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Series", "align", "by_epoch"]

Series = Sequence[float] | np.ndarray | Mapping[int, float]
"""Per-epoch values: ``{epoch: value}``, or a sequence whose entries are epochs 1, 2, ..."""


def by_epoch(series: Series) -> dict[int, float]:
    """``series`` as ``{epoch number: value}`` (a sequence's entries are epochs 1, 2, ...)."""
    if isinstance(series, Mapping):
        return {int(k): float(v) for k, v in series.items()}
    values = np.asarray(series, dtype=np.float64).ravel()
    return {i + 1: float(v) for i, v in enumerate(values)}


def align(peers: Sequence[Series], epochs: Sequence[int]) -> list[dict[int, float]]:
    """Each peer's readings at ``epochs``, for the peers that have a finite reading at every
    one of them (the others cannot be compared there)."""
    out = []
    for peer in peers:
        values = by_epoch(peer)
        head = {int(e): values.get(int(e), math.nan) for e in epochs}
        if all(math.isfinite(v) for v in head.values()):
            out.append(head)
    return out
