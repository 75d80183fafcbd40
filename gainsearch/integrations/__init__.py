"""Adapters of the core to the tools that run trials: ``optuna`` (GainPruner, report_gain),
``ray`` (GainScheduler, report_gain; ``pip install gainsearch[ray]``) and ``lightning``
(GainCallback; ``pip install gainsearch[lightning]``). They need only :mod:`gainsearch.core`:
your own model and training loop work with them, no built-in trainer needed."""
