"""The search: experiment specs, the study plumbing and result files shared by both back ends,
and the two runners behind ``gainsearch search`` (Optuna: ``run_optuna``; Ray Tune:
``run_ray``), which drive the built-in trainer through the adapters of
``gainsearch.integrations``."""
