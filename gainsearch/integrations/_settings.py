"""The decision core's settings as the adapters take them (keyword arguments or one config)."""

from __future__ import annotations

from gainsearch.core.decision import DecisionConfig

__all__ = ["decision_config"]


def decision_config(
    *,
    grace_period: int = 1,
    min_peers: int = 3,
    percentile: float = 50.0,
    variability_factor: float | None = None,
    min_variability: float | None = None,
    config: DecisionConfig | None = None,
) -> DecisionConfig:
    """The :class:`~gainsearch.core.decision.DecisionConfig` of an adapter's arguments.

    Args:
        grace_period: The first epoch at which a trial may be pruned for anything but
            divergence.
        min_peers: Peers needed before comparing.
        percentile: Score percentile of the peers below which a trial is pruned (0-100).
        variability_factor: Multiple of the peers' median variability that is "too high".
        min_variability: Variability floor (dB/epoch), and the fall (dB) a jagged curve shows.
        config: A complete :class:`DecisionConfig` instead of the arguments above.
    """
    if config is not None:
        return config
    return DecisionConfig(
        grace_period=grace_period,
        min_peers=min_peers,
        percentile=percentile,
        variability_factor=variability_factor,
        min_variability=min_variability,
    )
