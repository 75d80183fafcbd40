"""Search back ends. Import the one you use: ``gainsearch.integrations.optuna`` (core
dependency) or ``gainsearch.integrations.ray`` (``pip install gainsearch[ray]``)."""
