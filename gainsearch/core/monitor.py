"""GainMonitor: one Maximum Gain reading per epoch, kept as a history that checkpoints with a trial.

Three lines in any training loop::

    monitor = GainMonitor(in_shape=(1, 28, 28))
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        reading = monitor.measure(model, epoch)     # reading.gain in dB; never raises on NaN
    print(monitor.diagnose())                        # e.g. converging: rose 12 dB then flattened
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gainsearch.core.features import CurveFeatures, Diagnosis, compute_features, diagnose
from gainsearch.core.spectral import (
    DEFAULT_EPS,
    Target,
    check_in_shape,
    check_smoothing,
    check_target,
    impulse_probe,
    maximum_gain,
)

__all__ = ["GainMonitor", "GainReading"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GainReading:
    """The Maximum Gain of one epoch.

    Attributes:
        epoch: The epoch the reading belongs to (as passed to :meth:`GainMonitor.measure`).
        gain: Scalar Maximum Gain in dB (class mean for ``target="all"``); non-finite = diverged.
        channel_gains: Per-channel gains in dB.
        winner: Winning class on the probe.
        gain_max: Max over classes for ``target="all"``, else equal to ``gain``.
        class_gains: Per-class gains for ``target="all"``, else ``None``.
        confidence: Softmax score of the winning class on the probe.
    """

    epoch: int
    gain: float
    channel_gains: tuple[float, ...]
    winner: int
    gain_max: float
    class_gains: tuple[float, ...] | None = None
    confidence: float = math.nan

    @property
    def diverged(self) -> bool:
        """True when the gain is not a finite number."""
        return not math.isfinite(self.gain)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON- and ``torch.load(weights_only=True)``-safe dict."""
        out = asdict(self)
        out["channel_gains"] = list(self.channel_gains)
        out["class_gains"] = None if self.class_gains is None else list(self.class_gains)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GainReading:
        """Inverse of :meth:`to_dict`."""
        class_gains = data.get("class_gains")
        return cls(
            epoch=int(data["epoch"]),
            gain=float(data["gain"]),
            channel_gains=tuple(float(v) for v in data["channel_gains"]),
            winner=int(data["winner"]),
            gain_max=float(data.get("gain_max", data["gain"])),
            class_gains=None if class_gains is None else tuple(float(v) for v in class_gains),
            confidence=float(data.get("confidence", math.nan)),
        )


class GainMonitor:
    """Measures the Maximum Gain after each epoch and keeps the history.

    Args:
        in_shape: ``(C, H, W)`` of the model's input; the probe is then the impulse image.
        probe: A natural image ``(C, H, W)`` in the model's input space, used instead of the
            impulse. Give ``in_shape`` or ``probe`` (or both, if they agree).
        target: ``"all"`` (class mean, the default everywhere in gainsearch: the winning class
            of an impulse image flips between epochs and the paper's gain then jumps by several
            dB for no reason of learning), ``"winner"`` (the paper's measurement) or a fixed
            class index. The measurement functions of :mod:`gainsearch.core.spectral` keep the
            paper's ``"winner"``: they are its definition.
        normalize: Differentiate ``log y_c`` (the paper) rather than ``y_c``.
        eps: Floor added to the amplitude before the logarithm.
        smoothing: ``0`` (the paper's impulse gain) or the noise level of the smoothed gain
            (see :func:`gainsearch.core.spectral.maximum_gain`), robust on BatchNorm networks.

    Epochs passed to :meth:`measure` must strictly increase; a restarted trial restores the
    history with :meth:`load_state_dict` and continues after its last epoch.
    """

    def __init__(
        self,
        in_shape: Sequence[int] | None = None,
        *,
        probe: torch.Tensor | None = None,
        target: Target = "all",
        normalize: bool = True,
        eps: float = DEFAULT_EPS,
        smoothing: float = 0.0,
    ) -> None:
        if probe is None and in_shape is None:
            raise ValueError("GainMonitor needs in_shape=(C, H, W) or probe=<(C, H, W) tensor>.")
        if in_shape is not None:
            in_shape = check_in_shape(in_shape)
        if probe is not None:
            if not isinstance(probe, torch.Tensor):
                probe = torch.as_tensor(np.asarray(probe))
            if probe.dim() == 4 and probe.shape[0] == 1:
                probe = probe[0]
            if probe.dim() != 3:
                raise ValueError(
                    f"probe must have shape (C, H, W), but got shape={tuple(probe.shape)}."
                )
            if in_shape is not None and tuple(probe.shape) != tuple(in_shape):
                raise ValueError(
                    f"probe shape {tuple(probe.shape)} does not match in_shape={tuple(in_shape)}."
                )
            probe = probe.detach().to(torch.float32).cpu()
            in_shape = tuple(probe.shape)
        check_target(target)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, but got normalize={normalize!r}.")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, but got eps={eps!r}.")
        check_smoothing(smoothing)
        self.smoothing = float(smoothing)
        self.in_shape: tuple[int, int, int] = tuple(in_shape)  # type: ignore[assignment,arg-type]
        self.probe = probe
        self.target: Target = target
        self.normalize = normalize
        self.eps = float(eps)
        self._history: list[GainReading] = []
        self._probe_cache: dict[torch.device, torch.Tensor] = {}

    # ---------------------------------------------------------------------------------------
    @property
    def history(self) -> tuple[GainReading, ...]:
        """All readings so far, oldest first."""
        return tuple(self._history)

    @property
    def epochs(self) -> list[int]:
        """The epochs measured, in order."""
        return [r.epoch for r in self._history]

    @property
    def gains(self) -> np.ndarray:
        """The gain curve (dB), one value per reading; float64, may hold NaN/inf."""
        return np.array([r.gain for r in self._history], dtype=np.float64)

    @property
    def diverged(self) -> bool:
        """True once any reading was non-finite."""
        return any(r.diverged for r in self._history)

    def __len__(self) -> int:
        return len(self._history)

    def __repr__(self) -> str:
        return (
            f"GainMonitor(in_shape={self.in_shape}, target={self.target!r}, "
            f"normalize={self.normalize}, smoothing={self.smoothing}, "
            f"readings={len(self._history)})"
        )

    # ---------------------------------------------------------------------------------------
    def measure(self, model: nn.Module, epoch: int) -> GainReading:
        """Measure ``model`` now and append the reading for ``epoch``.

        Non-finite gains are recorded (the trial diverged) and logged, never raised.

        Raises:
            ValueError: ``epoch`` is not an int greater than the last recorded epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"epoch must be an int, but got epoch={epoch!r}.")
        epoch = int(epoch)
        if self._history and epoch <= self._history[-1].epoch:
            raise ValueError(
                f"epoch must increase: got epoch={epoch} after epoch {self._history[-1].epoch}. "
                "A restarted trial should load_state_dict() and continue after its last epoch."
            )
        result = maximum_gain(
            model,
            self._probe_on(model),
            target=self.target,
            normalize=self.normalize,
            eps=self.eps,
            smoothing=self.smoothing,
        )
        reading = GainReading(
            epoch=epoch,
            gain=result.gain,
            channel_gains=result.channel_gains,
            winner=result.winner,
            gain_max=result.gain_max,
            class_gains=result.class_gains,
            confidence=result.confidence,
        )
        if reading.diverged:
            logger.info("epoch %d: Maximum Gain is %s: the network diverged", epoch, result.gain)
        self._history.append(reading)
        return reading

    def spectrum(self, model: nn.Module, *, decimals: int = 2) -> dict[str, Any]:
        """The winning class's amplitude spectrum now, as plain data for storage and figures.

        Measured on this monitor's probe with ``target="winner"`` (the paper's Figures 4-6),
        whatever the monitor's own target; nothing is appended to the history. Returns
        ``{"db": C x H x W nested lists (dB, zero frequency centred, rounded to decimals),
        "winner": int, "gain": float}``; ``db`` is ``None`` if the network has diverged.
        """
        result = maximum_gain(
            model,
            self._probe_on(model),
            target="winner",
            normalize=self.normalize,
            eps=self.eps,
            return_spectra=True,
        )
        spectra = np.fft.fftshift(np.asarray(result.spectra), axes=(-2, -1))
        finite = bool(np.all(np.isfinite(spectra)))
        return {
            "db": np.round(spectra, decimals).tolist() if finite else None,
            "winner": result.winner,
            "gain": result.gain if finite else None,
        }

    def features(self, **kwargs: Any) -> CurveFeatures:
        """:func:`gainsearch.core.features.compute_features` of the gain curve."""
        return compute_features(self.gains, epochs=self.epochs, **kwargs)

    def diagnose(self, peers: Sequence[Sequence[float]] | None = None, **kwargs: Any) -> Diagnosis:
        """:func:`gainsearch.core.features.diagnose` of the gain curve, optionally against peers."""
        return diagnose(self.gains, peers=peers, epochs=self.epochs, **kwargs)

    # ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: options, probe and history (``weights_only``-safe)."""
        return {
            "version": 1,
            "in_shape": list(self.in_shape),
            "probe": None if self.probe is None else self.probe.clone(),
            "target": self.target,
            "normalize": self.normalize,
            "eps": self.eps,
            "smoothing": self.smoothing,
            "history": [r.to_dict() for r in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history (and options) saved by :meth:`state_dict`.

        Raises:
            ValueError: the state is not a GainMonitor state or does not fit this monitor's
                input shape.
        """
        if not isinstance(state, dict) or "history" not in state or "in_shape" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state must be a dict from GainMonitor.state_dict() with keys 'in_shape' and "
                f"'history', but got {keys}."
            )
        in_shape = tuple(int(s) for s in state["in_shape"])
        if in_shape != self.in_shape:
            raise ValueError(
                f"state has in_shape={in_shape}, but this monitor measures in_shape="
                f"{self.in_shape}."
            )
        history = [GainReading.from_dict(r) for r in state["history"]]
        epochs = [r.epoch for r in history]
        if any(b <= a for a, b in itertools.pairwise(epochs)):
            raise ValueError(f"state history epochs must strictly increase, but got {epochs}.")
        probe = state.get("probe")
        self.probe = None if probe is None else torch.as_tensor(probe).to(torch.float32).cpu()
        self.target = state.get("target", self.target)
        self.normalize = bool(state.get("normalize", self.normalize))
        self.eps = float(state.get("eps", self.eps))
        self.smoothing = float(state.get("smoothing", 0.0))
        self._history = history
        self._probe_cache.clear()

    # ---------------------------------------------------------------------------------------
    def _probe_on(self, model: nn.Module) -> torch.Tensor:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        probe = self._probe_cache.get(device)
        if probe is None:
            if self.probe is not None:
                probe = self.probe.to(device)
            else:
                probe = impulse_probe(self.in_shape, device=device)
            self._probe_cache[device] = probe
        return probe
