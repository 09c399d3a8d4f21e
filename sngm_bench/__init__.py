"""sngm-bench: a benchmark of optimizers (SNGM, MSGD, LARS, LAMB) for large-batch training."""

__version__ = "0.1.0"
