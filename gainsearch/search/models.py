"""The tuned model a search hands back: every completed trial's kept-epoch weights, and
:func:`load_best` / :func:`export_best`.

Merging the validation split back into training buys one thing over the validation workflow:
no retrain. The weights of the epoch a trial keeps (``select_by``; the last with ``last``) are
already trained on all the data, so a search keeps them:

* **Optuna back end**: ``OUT/models/trial_N.pt``, written as the trial ends, for the best ``keep``
  complete trials (default 1: the best only; ``"all"``; ``0``/``"none"``: none). A file is a
  plain ``dict`` of tensors and data (safe with ``torch.load(weights_only=True)``): the
  ``state_dict``, the trial's resolved configuration, the data summary (shape, classes,
  normalisation), the kept epoch and the label-noise diagnosis.
* **Ray back end**: Tune's own checkpoints, as before: the trial's latest checkpoint holds the
  kept epoch's weights beside the last epoch's (``checkpoint.pt``'s ``selection``).

``best.json`` and ``trials.csv`` name the file (``model_file``, relative to the run directory).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gainsearch.batteries.train import TrainConfig, TrialResult, build_model, model_from_checkpoint
from gainsearch.search.results import TrialRow

if TYPE_CHECKING:
    import optuna

__all__ = ["MODELS_DIR", "TunedModel", "check_keep", "export_best", "load_best"]

#: The kept weights' folder in a run directory (Optuna back end).
MODELS_DIR = "models"
#: The marker of a kept-weights file (``format``).
FORMAT = "gainsearch-model"


def check_keep(keep: Any) -> int | None:
    """``keep`` as a count (``None``: all): a non-negative integer, ``"all"`` or ``"none"``.

    Raises:
        ValueError: anything else, naming the value and what is allowed.
    """
    if keep == "all":
        return None
    if keep == "none":
        return 0
    if isinstance(keep, str) and keep.isdigit():
        return int(keep)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(
            f"keep must be a non-negative integer (the best k complete trials keep their "
            f"weights), 'all' or 'none', but got keep={keep!r}."
        )
    return keep


def save_trial_model(path: Path, result: TrialResult, number: int) -> None:
    """Write a trial's kept weights and what rebuilds its model, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "version": 1,
        "trial": number,
        "config": result.config.to_dict(),
        "data": result.data,
        "selected_epoch": result.selected_epoch,
        "label_noise": result.label_noise.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def prune_models(study: optuna.Study, folder: Path, keep: int | None) -> None:
    """Delete the kept-weights files of finished trials outside the best ``keep`` complete ones
    (a running trial's file is never touched: another worker may be writing it)."""
    import optuna
    from optuna.trial import TrialState

    if keep is None or not folder.is_dir():
        return
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if len(study.directions) == 1:
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        complete.sort(key=lambda t: (-sign * float(t.values[0]), t.number))
        wanted = {t.number for t in complete[:keep]}
    else:  # several objectives: the Pareto front
        wanted = {t.number for t in study.best_trials} if keep else set()
    finished = {t.number for t in trials if t.state.is_finished()}
    for number in finished - wanted:
        (folder / f"trial_{number}.pt").unlink(missing_ok=True)


@dataclass
class TunedModel:
    """The best trial of a search, ready to use.

    Attributes:
        model: The network with the best trial's kept-epoch weights (CPU, ``eval()`` mode).
        config: The trial's resolved training configuration.
        row: The trial's row (``trials.json``): value, curves, kept epoch, label noise.
        path: The file the weights came from.
        data: The data summary (input shape, classes, the training normalisation to apply).
    """

    model: nn.Module
    config: dict[str, Any]
    row: TrialRow
    path: Path
    data: dict[str, Any]

    @property
    def history(self) -> dict[str, Any]:
        """The trial's per-epoch curves: gain, training loss, the reported value."""
        return {
            "gain": self.row.gain_curve,
            "train_loss": self.row.train_loss,
            "value": self.row.value_curve,
            "selected_epoch": self.row.selected_epoch,
        }


def _rows(run: Path) -> list[TrialRow]:
    try:
        payload = json.loads((run / "trials.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"run {run}: no readable trials.json ({err}); expected the --out folder of a "
            "finished or interrupted `gainsearch search`."
        ) from None
    return [TrialRow.from_dict(r) for r in payload.get("rows", [])]


def load_best(run: str | Path) -> TunedModel:
    """The tuned model of a search: the best trial's model with its kept-epoch weights.

    ``run`` is the search's output folder (``--out``), on either back end, after a resume too.

    Raises:
        ValueError: no such run, no completed trial, or its weights were not kept (``keep``
            none, or a search of an earlier version), each saying what to do.
    """
    folder = Path(run)
    try:
        best = json.loads((folder / "best.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"run {folder}: no readable best.json ({err}); pass the --out folder of a search."
        ) from None
    entry = best.get("best")
    if not entry:
        raise ValueError(f"run {folder}: {best.get('reason') or 'no best trial'}.")
    rows = {r.number: r for r in _rows(folder)}
    row = rows.get(int(entry["number"]))
    if row is None:
        raise ValueError(f"run {folder}: trials.json has no trial #{entry['number']}.")
    name = entry.get("model_file") or row.model_file
    if not name or not (folder / name).is_file():
        raise ValueError(
            f"run {folder}: the best trial #{row.number} kept no weights file (searched with "
            "keep='none', or before gainsearch kept them): train it again with "
            f"`gainsearch train --spec {folder / 'best.json'}`."
        )
    path = folder / name
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        config = TrainConfig.from_dict(state["config"])
        data = dict(state["data"])
        model = build_model(config, data["in_shape"], int(data["num_classes"]))
        model.load_state_dict(state["state_dict"])
    else:  # a trainer checkpoint (Ray): its kept weights
        model, state = model_from_checkpoint(path, weights="selected")
        config = TrainConfig.from_dict(state["config"])
        data = dict(state.get("data") or {})
    model.eval()
    return TunedModel(model=model, config=config.to_dict(), row=row, path=path, data=data)


def export_best(run: str | Path, out: str | Path) -> Path:
    """Write the tuned model as a plain ``state_dict`` with its configuration and data summary
    (``torch.load(out, weights_only=True)`` reads it). Returns ``out``."""
    tuned = load_best(run)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "config": tuned.config,
            "data": tuned.data,
            "selected_epoch": tuned.row.selected_epoch,
            "state_dict": tuned.model.state_dict(),
        },
        target,
    )
    return target


def ray_model_file(checkpoint_dir: str | None, out: Path | None, filename: str) -> str:
    """The trainer checkpoint in a Tune checkpoint folder, relative to ``out`` when inside."""
    if not checkpoint_dir:
        return ""
    path = Path(checkpoint_dir) / filename
    if out is not None:
        try:
            return str(path.resolve().relative_to(Path(out).resolve()))
        except ValueError:
            pass
    return str(path)
