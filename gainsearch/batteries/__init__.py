"""The batteries: in-memory data sets (validation merged into training), the model registry and
the built-in trainer. Your own data, model and training loop replace them; the core and the
adapters do not need them."""
