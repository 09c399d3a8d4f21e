"""The commands a run records (sngm_bench.invocation): `command`, run as a new command in a fresh
folder on the same data, trains the same run (config, accuracy, weights), however the run was
started: one run, a sweep's job under each launcher, torchrun; `launch_command` is what started
it. A run recorded before `launch_command` continues and reads as before. Real CLI, tiny runs."""

import json
import shlex
import sys

import pytest
import torch

from conftest import TWO_PROCESSES, run_cli, run_command
from sngm_bench.records import read_summary as summary
from sngm_bench.report import collect_runs

TINY = ["experiment=smoke", "model.width=4", "dataset.subset=200", "epochs=1", "batch_size=100"]  # 2 steps
PROGRAMS = {"sngm-bench": [sys.executable, "-m", "sngm_bench"],  # this checkout's, whatever PATH holds
            "torchrun": [sys.executable, "-m", "torch.distributed.run"]}


def run_recorded(command: str, cwd, env):
    """The shell command line `command`, its program run by this test's Python."""
    program, *args = shlex.split(command)
    cwd.mkdir()
    result = run_command([*PROGRAMS[program], *args], cwd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_file,) = cwd.rglob("summary.json")
    return summary_file.parent


def assert_same_run(run_dir, again) -> None:
    first, second = summary(run_dir), summary(again)
    assert second["status"] == "completed" and second["config"] == first["config"]
    assert (second["world_size"], second["final_test_acc"]) == (first["world_size"], first["final_test_acc"])
    weights = [torch.load(d / "checkpoint.pt", weights_only=False)["model"] for d in (run_dir, again)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.fixture
def env(cifar_root):
    return {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local"]], ids=["basic", "joblib", "submitit_local"])
def test_each_job_of_a_sweep_records_its_own_command_which_trains_it_again(tmp_path, env, launcher):
    (tmp_path / "first").mkdir()
    sweep = run_cli(["-m", *TINY, "seed=0,1", *launcher], tmp_path / "first", env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    for seed in (0, 1):
        (run_dir,) = (tmp_path / "first" / "multirun" / "smoke").glob(f"*seed={seed}")
        recorded = summary(run_dir)
        # Not the sweep's command line (which names no seed), nor submitit's own (its job's process).
        assert recorded["command"] == shlex.join(["sngm-bench", "-m", *launcher, *TINY, f"seed={seed}"])
        assert recorded["launch_command"] == shlex.join(["sngm-bench", "-m", *TINY, "seed=0,1", *launcher])
    assert_same_run(run_dir, run_recorded(recorded["command"], tmp_path / "again", env))


def test_a_run_records_a_command_the_shell_runs_again_quoting_included(tmp_path, env):
    args = [*TINY, "name=tiny run"]  # a value with a space: one argument
    (tmp_path / "first").mkdir()
    first = run_cli(args, tmp_path / "first", env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "first" / "outputs" / "tiny run").iterdir()
    recorded = summary(run_dir)
    assert recorded["command"] == recorded["launch_command"] == shlex.join(["sngm-bench", *args])
    assert_same_run(run_dir, run_recorded(recorded["command"], tmp_path / "again", env))


def test_a_torchrun_run_records_torchrun_with_as_many_processes(tmp_path, env):
    (tmp_path / "first").mkdir()
    first = run_command([*TWO_PROCESSES, "-m", "sngm_bench", *TINY], tmp_path / "first", env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "first" / "outputs" / "smoke").iterdir()
    recorded = summary(run_dir)
    assert recorded["command"] == shlex.join(["torchrun", "--standalone", "--nproc-per-node=2", "-m", "sngm_bench",
                                              *TINY])
    assert_same_run(run_dir, run_recorded(recorded["command"], tmp_path / "again", env))


def test_a_run_recorded_without_launch_command_continues_and_is_reported(tmp_path, env):
    args = [*TINY, "hydra.run.dir=run"]
    stopped = run_cli([*args, "max_minutes=1e-6"], tmp_path, env)  # stops after its first step
    assert stopped.returncode == 124, stopped.stderr[-3000:]
    run_dir = tmp_path / "run"
    # As an earlier sngm-bench recorded it: no launch_command in the summary or the checkpoint.
    old = summary(run_dir)
    del old["launch_command"]
    (run_dir / "summary.json").write_text(json.dumps(old))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    del state["first_session"]["launch_command"]
    torch.save(state, run_dir / "checkpoint.pt")
    (row,) = collect_runs([run_dir]).to_dict("records")  # the report reads it as before
    assert row["status"] == "interrupted" and "launch_command" not in row

    continued = run_cli(args, tmp_path, env)
    assert continued.returncode == 0, continued.stderr[-3000:]
    finished = summary(run_dir)
    # The start's launch is unknown, not this continuation's, which its entry names.
    assert finished["status"] == "completed" and finished["launch_command"] is None
    assert finished["resumed_at"][0]["launch_command"] == shlex.join(["sngm-bench", *args])
    assert finished["command"] == shlex.join(["sngm-bench", "hydra.run.dir=run", *TINY, "max_minutes=1e-6"])
