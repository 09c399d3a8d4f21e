"""sngm-bench: a benchmark of optimizers (SNGM, MSGD, LARS, LAMB) for large-batch training.

The Python API, for notebooks and scripts: `run` trains one run as the `sngm-bench` command does,
`collect` reads run folders as `sngm-bench-report` does. Both import their dependencies (torch,
Hydra, pandas) only when called, so `import sngm_bench` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__version__ = "0.1.0"
__all__ = ["collect", "run"]


def run(overrides: list[str]) -> dict:
    """Train one run, as `sngm-bench OVERRIDES...` would, in the same run folder with the same
    records; returns its summary (summary.json). Bad input raises `sngm_bench.errors.UserError`.

    >>> summary = sngm_bench.run(["experiment=smoke", "optimizer=msgd", "batch_size=256"])
    """
    from sngm_bench.cli import run_overrides
    from sngm_bench.invocation import launched_as

    if isinstance(overrides, str):
        raise TypeError("overrides is a list of strings, e.g. ['optimizer=msgd', 'batch_size=256']")
    with launched_as(f"sngm_bench.run({list(overrides)!r})"):  # the run's recorded launch_command
        return run_overrides(list(overrides))


def collect(paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """A pandas.DataFrame with one row per run folder at or under `paths` (searched recursively):
    the report's runs table, config columns and every scalar of summary.json."""
    from sngm_bench.report import collect_runs

    return collect_runs([paths] if isinstance(paths, (str, os.PathLike)) else paths)
