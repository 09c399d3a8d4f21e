"""The two commands a run records (summary.json), both shell command lines:

- `command` trains this run again: `sngm-bench`, the Hydra settings given (`hydra.*`: folder,
  launcher, search path) and this job's own overrides as Hydra composed it, so a sweep's job
  names its own combination; a sweep's job keeps `-m`, so that it runs under the same launcher
  and, from the same working directory, finds this run's folder. Under torchrun it is torchrun's
  command with as many processes;
- `launch_command` is what started it: the command line typed, which every process it launches
  inherits (`LAUNCH_ENV`: joblib's workers, submitit's jobs, whose own command line is submitit's),
  or the Python call `sngm_bench.run([...])`.
"""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

LAUNCH_ENV = "SNGM_BENCH_LAUNCH"  # the launching command line, for the processes it starts


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it; None otherwise (a single process, a SLURM task)."""
    return int(os.environ.get("RANK", "0")) if "TORCHELASTIC_RUN_ID" in os.environ else None


def program() -> list[str]:
    """The command that starts sngm-bench in this process's place: torchrun's, with as many nodes
    and processes per node (a multi-node job also needs its rendezvous options), else `sngm-bench`."""
    if torchrun_rank() is None:
        return ["sngm-bench"]
    per_node, world_size = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
    nodes = [f"--nnodes={world_size // per_node}"] if world_size > per_node else ["--standalone"]
    return ["torchrun", *nodes, f"--nproc-per-node={per_node}", "-m", "sngm_bench"]


def mark_launch(args: list[str]) -> None:
    """Record `sngm-bench ARGS` as the launching command of every run this process and its children train."""
    os.environ[LAUNCH_ENV] = shlex.join([*program(), *args])


@contextmanager
def launched_as(call: str):
    """Record `call` (a Python call) as the launching command of the runs trained inside."""
    before = os.environ.get(LAUNCH_ENV)
    os.environ[LAUNCH_ENV] = call
    try:
        yield
    finally:
        if before is None:
            del os.environ[LAUNCH_ENV]
        else:
            os.environ[LAUNCH_ENV] = before


def job_command() -> str | None:
    """The command that trains the Hydra job running now again; None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    mode = ["-m"] if hydra.mode == RunMode.MULTIRUN else []
    settings = [o for o in hydra.overrides.hydra if not o.startswith("hydra.mode=")]  # the mode is `-m`
    return shlex.join([*program(), *mode, *settings, *hydra.overrides.task])


def commands() -> dict[str, str]:
    """The run's `command` and `launch_command`. Outside a Hydra job and a launch (a script that
    builds a `Trainer` itself) both are the process's command line."""
    launch = os.environ.get(LAUNCH_ENV) or shlex.join(sys.argv)
    return {"command": job_command() or launch, "launch_command": launch}
