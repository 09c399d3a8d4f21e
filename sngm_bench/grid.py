"""A sweep's runs as Hydra's basic sweeper expands them: the grid of `hydra.sweeper.params` (set by
a `+sweep=NAME` preset) crossed with the command line's swept values, where a command-line value
of a key the grid also sweeps wins. One place for the command line's checks before a sweep starts
(`cli`) and for the progress count while it runs (`callbacks`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser


def expand(params: Mapping | None, overrides: Iterable[str]) -> list[list[str]]:
    """The overrides of each run, in the basic sweeper's order. A `glob(...)` lists the options of
    the Hydra initialized in this process, as the sweeper does."""
    grid = [f"{key}={value}" for key, value in (params or {}).items()]
    hydra = GlobalHydra.instance()
    parser = OverridesParser.create(config_loader=hydra.config_loader() if hydra.is_initialized() else None)
    return BasicSweeper.split_arguments(parser.parse_overrides(grid + list(overrides)), None)[0]
