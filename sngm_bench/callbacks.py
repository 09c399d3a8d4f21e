"""What the user sees between runs, as a Hydra callback (`hydra.callbacks` in configs/config.yaml):
one summary line at the end of each run; in a sweep, which run of how many is starting, how many
have completed, failed or diverged, and an ETA; at the end of a sweep, a table of its runs and
the report command to run next.

Hydra calls `on_multirun_*` in the launching process and `on_job_*` in the process that runs the
job (the same one for the basic launcher, a worker for joblib or submitit), so the sweep's state
is read from files, not kept in memory: each run of the sweep adds its folder to the sweep
folder's `.started_runs.txt` as it starts (a folder's own file times cannot tell, since a run that
finished earlier keeps its old Hydra files), and its state is its summary.json. Runs that fail are
also listed in the sweep folder's `failed_runs.txt`, which the launching process reads at the end
for the command's exit code. A run refused because its folder holds another run leaves that run's
summary alone, so it shows as `refused`, never with the other run's status or accuracy.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sngm_bench import grid
from sngm_bench.records import SUMMARY_FILE, read_summary

log = logging.getLogger("sngm_bench")

STARTED_FILE = ".started_runs.txt"
FAILURES_FILE = "failed_runs.txt"
ENDED = ("completed", "failed", "diverged")
failed_runs: list[str] = []  # the last sweep's failed run folders, read when it ends


def add_to_list(sweep_dir: Path, list_file: str, run_dir: Path) -> None:
    """Adds a run folder to one of the sweep folder's lists (one short append: workers of a
    parallel launcher can share the file)."""
    with open(sweep_dir / list_file, "a") as f:
        f.write(f"{run_dir}\n")


def listed(sweep_dir: Path, list_file: str) -> list[str]:
    """The run folders that the sweep in `sweep_dir` has added to `list_file` so far."""
    path = sweep_dir / list_file
    return path.read_text().splitlines() if path.exists() else []


def note_failure(run_dir: Path) -> None:
    """Adds a run of the sweep in progress to its sweep folder's list of failed runs."""
    add_to_list(Path(HydraConfig.get().sweep.dir), FAILURES_FILE, run_dir)


def failures_of(sweep_dir: Path) -> list[str]:
    """The run folders that the sweep in `sweep_dir` has listed as failed so far."""
    return listed(sweep_dir, FAILURES_FILE)


def this_sweeps_runs(sweep_dir: Path) -> list[Path]:
    """Run folders that the sweep in `sweep_dir` has started so far, each once, in the order they first
    started: the sweep's own order (batch_size=64,256 lists 64 first, where names would put 256 first)."""
    return list(dict.fromkeys(Path(d).resolve() for d in listed(sweep_dir, STARTED_FILE)))


def refused(run_dir: Path, summary: dict, failures: list[str]) -> bool:
    """Whether a run of the sweep did not train because its folder holds another run (another
    config, or a live process): it is listed as failed, but the summary there is the other run's."""
    return summary.get("status") != "failed" and any(Path(f).resolve() == run_dir.resolve() for f in failures)


def sweep_size(config: DictConfig) -> int | None:
    """How many runs the sweep launches: the product of its swept values, as the basic sweeper
    counts them (`hydra.sweeper.params`, then the command line); None if that cannot be told."""
    try:
        return len(grid.expand(OmegaConf.select(config, "hydra.sweeper.params"), config.hydra.overrides.task))
    except Exception:  # e.g. a sweep that only its own sweeper plugin can expand
        return None


def shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def percent(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "–"


def run_line(summary: dict, run_dir: Path) -> str:
    """The one line that ends a run: status, accuracy, time, throughput and where its files are."""
    status = summary.get("status", "unknown")
    if status == "failed":
        return f"failed: {summary.get('error', 'see train.log')}; run folder {shown(run_dir)}"
    parts = [status]
    if status == "diverged":
        parts.append(f"at epoch {summary.get('diverged_epoch')}, step {summary.get('diverged_step')} "
                     f"({summary.get('diverged_reason')})")
    parts.append(f"final test accuracy {percent(summary.get('final_test_acc'))} "
                 f"(best {percent(summary.get('best_test_acc'))})")
    if summary.get("final_holdout_acc") is not None:  # dataset.holdout_images: what a sweep's LR is chosen on
        parts.append(f"held-out accuracy {percent(summary['final_holdout_acc'])}")
    if summary.get("wall_seconds") is not None:
        parts.append(f"{summary['wall_seconds']:.0f} s")
    if summary.get("images_per_second") is not None:
        parts.append(f"{summary['images_per_second']:.0f} images/s")
    return f"{', '.join(parts)}; run folder {shown(run_dir)}"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class RunReport(Callback):
    """The end-of-run line, the sweep's progress and its closing table (see the module docstring)."""

    def __init__(self) -> None:
        self.sweep_start: float | None = None
        self.sweep_runs: int | None = None
        self.job_start = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_start, self.sweep_runs = time.time(), sweep_size(config)
        for list_file in (STARTED_FILE, FAILURES_FILE):  # an earlier sweep's
            (Path(config.hydra.sweep.dir) / list_file).unlink(missing_ok=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_start = time.time()
        if config.hydra.mode != RunMode.MULTIRUN or int(os.environ.get("RANK", "0")) > 0:
            return
        sweep_dir, here = Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir).resolve()
        others = [d for d in this_sweeps_runs(sweep_dir) if d != here]
        add_to_list(sweep_dir, STARTED_FILE, here)
        if self.sweep_start is None:  # a launcher's worker: the launching process keeps the sweep's pace
            return
        summaries = {d: read_summary(d) for d in others}
        failures = failures_of(sweep_dir)
        refusals = {d for d, s in summaries.items() if refused(d, s, failures)}  # failed, whatever their summary says
        statuses = ["failed" if d in refusals else s.get("status") for d, s in summaries.items()]
        ended = sum(status in ENDED for status in statuses)
        counts = ", ".join(f"{statuses.count(status)} {status}" for status in ENDED)
        total = self.sweep_runs
        # Runs that ended without training in this sweep (finished earlier, refused) do not count towards the pace.
        trained = sum(s.get("status") in ENDED and d not in refusals
                      and (d / SUMMARY_FILE).stat().st_mtime >= self.sweep_start for d, s in summaries.items())
        eta = ""
        if total and trained:
            eta = f"; ETA {duration((time.time() - self.sweep_start) / trained * (total - ended))}"
        log.info("sweep: run %d of %s (%s so far%s)", config.hydra.job.num + 1, total or "?", counts, eta)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) > 0:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        summary = read_summary(run_dir)
        if not summary or refused(run_dir, summary, failures_of(Path(config.hydra.sweep.dir))):
            return  # a refused run's reason is already logged; the summary there is another run's
        line = run_line(summary, run_dir)
        if (run_dir / SUMMARY_FILE).stat().st_mtime < self.job_start:
            line += " (finished earlier: nothing trained)"
        log.log(logging.INFO if summary.get("status") == "completed" else logging.WARNING, line)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed_runs[:] = failures_of(sweep_dir)
        runs = this_sweeps_runs(sweep_dir)
        if not runs:
            return
        sweep_dir = sweep_dir.resolve()
        rows = []
        for d in runs:
            summary = read_summary(d)
            status, acc = summary.get("status", "unknown"), percent(summary.get("final_test_acc"))
            if refused(d, summary, failed_runs):
                status, acc = "refused", "–"
            rows.append((status, acc, str(d.relative_to(sweep_dir))))
        width = max(len(status) for status, _, _ in rows)
        print(f"\nsweep of {len(runs)} runs in {shown(sweep_dir)} "
              f"({duration(time.time() - self.sweep_start)}):")
        print(f"  {'status':<{width}}  {'test acc':>8}  run")
        for status, acc, name in rows:
            print(f"  {status:<{width}}  {acc:>8}  {name}")
        print(f"next: sngm-bench-report {shown(sweep_dir)}")
