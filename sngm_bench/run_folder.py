"""What to do in a run folder that may already hold a run: start, continue, or leave it.

The rule, single run or sweep: a finished run (completed or diverged) is never trained twice;
rerunning its command says where it is and does nothing. An unfinished run (interrupted,
failed, killed) continues from its checkpoint. Either way the rerun's training config must
equal the one the folder's run was trained with (`sngm_bench.identity`), else it stops with
one line naming every difference. `overwrite=true` trains from scratch in any case. A lock
keeps two live processes out of one folder, and tells a reader whether a run is alive.

Hydra rewrites `.hydra/` at every start, before any of this runs; a start that trains writes
its own files there again (a start at the same time may have rewritten them) and a copy
(`.hydra/trained/`), and a start that does not train puts that copy back, so `.hydra/` always
describes the session that trained the run.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from enum import Enum
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sngm_bench import checkpoint
from sngm_bench.errors import UserError
from sngm_bench.identity import differences, flatten, training_config
from sngm_bench.loggers import EVENT_FILES
from sngm_bench.records import METRICS_FILE, SUMMARY_FILE, read_summary, temporary_path, write_atomic

log = logging.getLogger(__name__)

FINISHED = ("completed", "diverged")
# Of summary.json: the data a run trains on, as far as it is recorded (`data_fingerprint`: its files).
DATA_KEYS = ("train_images", "test_images", "data_fingerprint")
RUN_FILES = (*checkpoint.CHECKPOINT_FILES, METRICS_FILE, SUMMARY_FILE)  # what a run writes, less its logs
HYDRA_COPY = "trained"  # under Hydra's output subfolder (.hydra)
HYDRA_ONLY = {".hydra", "train.log", ".lock"}  # what a folder holds before a run writes anything


class Plan(Enum):
    fresh = "fresh"  # train from the start (earlier files, if any, are replaced)
    resume = "resume"  # continue from the checkpoint
    skip = "skip"  # the folder holds a finished run: nothing to do


def holds_run(run_dir: Path) -> bool:
    """Whether a run has started training here (its summary records its config) or left a checkpoint."""
    return "config" in read_summary(run_dir) or checkpoint.exists(run_dir)


def plan_run(run_dir: Path, cfg, overwrite: bool) -> Plan:
    """See the module docstring; raises UserError when the folder's run was trained otherwise."""
    if overwrite:
        return Plan.fresh
    summary = read_summary(run_dir)
    finished = summary.get("status") in FINISHED
    if not (finished or checkpoint.exists(run_dir)):
        return Plan.fresh
    if not isinstance(summary.get("config"), dict):
        unrecorded = ("whose summary.json, which records its config, is missing or unreadable" if not summary
                      else "whose config was not recorded (an earlier sngm-bench)" if "config" not in summary
                      else "whose summary.json records a config that is no JSON object")
        raise UserError(f"{run_dir} holds a run {unrecorded}; add overwrite=true to train it again, or choose "
                        "another folder")
    changed = differences(training_config(summary["config"]), training_config(cfg))
    if changed:
        raise UserError(f"{run_dir} holds a run trained with {_listed(changed)}; add overwrite=true to train it "
                        "again with the new config, or choose another folder")
    return Plan.skip if finished else Plan.resume


def check_same_data(run_dir: Path, summary: dict) -> None:
    """Raise UserError when the data a continuation found (the image counts and file fingerprint of
    its `summary`) is not what the folder's run trained on: `dataset.root` is where the data lives,
    not what is trained, and a copy with files missing or changed would otherwise continue the run
    on other data, unrecorded. The error names each count and file (or split) that differs."""
    recorded = read_summary(run_dir)
    keys = [key for key in DATA_KEYS if key in recorded]  # a summary from before one was recorded: unknown
    changed = [change for key in keys
               for change in differences(flatten({key: recorded[key]}), flatten({key: summary[key]}))]
    if changed:
        raise UserError(f"{run_dir} holds a run trained on other data: {_listed(changed)}; set dataset.root to "
                        "the data it was trained on, or add overwrite=true to train it again")


def _listed(changed: list[tuple]) -> str:
    return ", ".join(f"{key}={old!r} (now {new!r})" for key, old, new in changed)


def clear_run(run_dir: Path) -> None:
    """Remove the files of an earlier run before training afresh in its folder."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob(EVENT_FILES):
        path.unlink()


def remove_partial_writes(run_dir: Path) -> None:
    """Remove what a process killed while writing a run file left of it (`records.write_atomic`'s
    temporary file): a checkpoint's is as large as the checkpoint, and would otherwise stay until
    the end of the next epoch, or for good. Only for the process that holds the folder's lock."""
    for name in RUN_FILES:
        partial = temporary_path(run_dir / name)
        if partial.exists():
            partial.unlink()
            log.info("removed %s, which a killed process left half-written", partial.name)


def keep_hydra_files(hydra_dir: Path | None, cfg) -> None:
    """Write Hydra's files of a start that trains with `cfg` into `.hydra/` and its copy, made as Hydra
    makes them from what this start holds in memory: a start at the same time may have rewritten them."""
    if hydra_dir is None:
        return
    hydra = HydraConfig.instance().cfg
    files = {"config.yaml": cfg, "hydra.yaml": hydra, "overrides.yaml": hydra.hydra.overrides.task}
    for folder in (hydra_dir, hydra_dir / HYDRA_COPY):
        folder.mkdir(parents=True, exist_ok=True)
        for name, config in files.items():
            write_atomic(folder / name, OmegaConf.to_yaml(config))


def restore_hydra_files(hydra_dir: Path | None) -> None:
    """Put back Hydra's files of the start that trained this folder's run, when there was one."""
    copy = hydra_dir / HYDRA_COPY if hydra_dir is not None else None
    if copy is not None and copy.is_dir():
        for path in copy.glob("*.yaml"):
            shutil.copy2(path, hydra_dir / path.name)


def remove_stub(run_dir: Path, created_below: Path) -> None:
    """Remove `run_dir` when it holds only what Hydra put there and no live run holds it (a command
    started at the same time may have created it too), and the folders up to `created_below`
    (exclusive) that are left empty. For folders this command created."""
    if not run_dir.is_dir():
        return
    try:
        with FolderLock(run_dir):
            if {p.name for p in run_dir.iterdir()} - HYDRA_ONLY:
                return
            shutil.rmtree(run_dir, ignore_errors=True)
    except UserError:
        return
    for parent in run_dir.parents:
        if parent == created_below or created_below not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


class FolderLock:
    """An exclusive lock on a run folder for as long as the run lives, or on a sweep folder for as
    long as the sweep does (released by the OS if the process dies); `busy`: the refusal."""

    def __init__(self, run_dir: Path, busy: str = "another process is training in {folder}; wait for it or stop it"):
        self.path = run_dir / ".lock"
        self.busy = busy
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UserError(self.busy.format(folder=self.path.parent)) from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether a live process holds the folder's lock."""
        try:
            with open(run_dir / ".lock") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            pass
        return False


def live_status(run_dir: Path, status: str) -> str:
    """A run's status as a reader should show it: `running` only while a process holds the run;
    a run whose process died without saying so (kill -9, a crash) reads as interrupted."""
    return "interrupted" if status == "running" and not FolderLock.held(run_dir) else status
