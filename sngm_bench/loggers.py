"""Live curves of a run for a dashboard: `logger=tensorboard` writes TensorBoard event files into
the run folder, so `tensorboard --logdir multirun/` shows every run of a sweep while it trains.

The training loop hands over values it has already read on the host (every `log_every` steps
and at each epoch's end), so a logger adds no device sync; with `logger=none` (the default) the
calls do nothing. Only the main process writes.
"""

from __future__ import annotations

from pathlib import Path

from sngm_bench.config import Logger
from sngm_bench.errors import UserError

EVENT_FILES = "events.out.tfevents.*"  # what TensorBoard writes; a fresh run removes the old ones


class NullLogger:
    """What the training loop calls; this one does nothing (logger=none, and processes but the main one)."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_epoch(self, step: int, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    """Scalars at optimizer step `step` (counted over the whole run): `train/<name>` from the
    progress checks, `epoch/<column>` from each metrics.csv row (test accuracy, and any column a
    measurement adds, such as the noise scale)."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard extra: "
                            "pip install 'sngm-bench[tensorboard]'") from None
        # A run continued from its checkpoint at `start_step` hides what a crashed session logged after
        # it (TensorBoard purges the later steps), so no step shows twice.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def log_epoch(self, step: int, row: dict) -> None:
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{name}", value, step)
        self.writer.flush()  # an epoch is worth showing at once

    def close(self) -> None:
        self.writer.close()


def open_logger(kind, run_dir: Path, is_main: bool, start_step: int = 0) -> NullLogger:
    """The logger `kind` (a config value) for the run in `run_dir`, which continues after optimizer
    step `start_step`; others than the main process get one that does nothing."""
    if is_main and Logger(kind) is Logger.tensorboard:
        return TensorBoardLogger(run_dir, start_step)
    return NullLogger()
