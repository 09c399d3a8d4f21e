"""What to do in a run folder that may already hold a run: start, continue, or leave it.

Runs are keyed by their config, so the same command finds the same folder: an unfinished run
continues from its checkpoint, a finished one is not trained twice by accident, and two live
processes never write into one folder.
"""

from __future__ import annotations

import fcntl
import json
from enum import Enum
from pathlib import Path

from sngm_bench.checkpoint import CHECKPOINT_FILE
from sngm_bench.errors import UserError
from sngm_bench.loggers import EVENT_FILES
from sngm_bench.records import METRICS_FILE, SUMMARY_FILE

FINISHED = ("completed", "diverged")


class Plan(Enum):
    fresh = "fresh"  # train from the start (earlier files, if any, are replaced)
    resume = "resume"  # continue from checkpoint.pt
    skip = "skip"  # the folder holds a finished run: nothing to do


def read_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
    except (OSError, ValueError):
        return None


def plan_run(run_dir: Path, resume: bool, overwrite: bool, in_sweep: bool) -> Plan:
    """A finished run is kept in a sweep or with resume=true, retrained with overwrite=true, and
    refused otherwise; an unfinished run with a checkpoint continues unless overwrite=true."""
    status = read_status(run_dir)
    if overwrite:
        return Plan.fresh
    if status in FINISHED:
        if in_sweep or resume:
            return Plan.skip
        raise UserError(
            f"{run_dir} already holds a {status} run; add resume=true to keep it, "
            "or overwrite=true to train it again"
        )
    if (run_dir / CHECKPOINT_FILE).exists():
        return Plan.resume
    return Plan.fresh


def clear_run(run_dir: Path) -> None:
    """Remove the files of an earlier run before training afresh in its folder."""
    for name in (CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob(EVENT_FILES):
        path.unlink()


class FolderLock:
    """An exclusive lock on the run folder for as long as the run lives (released by the OS if
    the process dies)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UserError(f"another process is training in {self.path.parent}; wait for it or stop it") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
