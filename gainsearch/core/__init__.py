"""The pure core: the measurement and what is derived from it, without training or search.

``spectral`` (the Maximum Gain of a model) -> ``monitor`` (one reading per epoch) ->
``features`` (a curve's level, trend, variability and diagnosis) -> ``objective`` (scores) ->
``decision`` (prune or continue) -> ``evaluation`` (all of them for one epoch, in one call: what
every adapter reports). Imports torch and numpy only.
"""
