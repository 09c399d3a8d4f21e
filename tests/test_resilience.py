"""Runs that survive: one-line errors, divergence as a result, interruption and resumption,
resumable sweeps, folders that are never overwritten unnoticed. Real processes on real data."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import TWO_PROCESSES, run_cli, run_command, wait_for
from sngm_bench.errors import LostPeer
from sngm_bench.records import read_summary
from sngm_bench.run_folder import live_status

TINY = ["experiment=smoke", "model.width=4", "dataset.subset=1000", "epochs=1", "batch_size=100"]


def summaries(root, key="batch_size"):
    """Summaries of the runs under `root`, by the value of config `key` (read, not parsed from names)."""
    runs = {}
    for path in root.glob("*/summary.json"):
        config = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
        runs[config[key]] = json.loads(path.read_text())
    return runs


@pytest.fixture(scope="module")
def corrupted_root(cifar_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupted")
    shutil.copytree(cifar_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    with open(root / "cifar-10-batches-py" / "data_batch_2", "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\xff" * 100)
    return root


BAD_INPUTS = [
    (["optimizer=adam"], "unknown optimizer 'adam': choose one of "),
    (["model=vgg16"], "unknown model 'vgg16'"),
    (["optimizer.lrr=1"], "unknown key 'optimizer.lrr': 'optimizer' has "),
    (["learning_rate=1"], "unknown key 'learning_rate': the top level has "),
    (["batch_size=abc"], "bad value for 'batch_size': Value 'abc' of type 'str' could not be converted to Integer"),
    (["device=tpu"], "bad value for 'device': Invalid value 'tpu', expected one of [auto, cpu, cuda]"),
    (["precision=fp8"], "bad value for 'precision': Invalid value 'fp8', expected one of [fp32, bf16]"),
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["batch_size=-64"], "batch_size=-64 must be a positive integer"),
    (["epochs=0"], "epochs=0 must be a positive integer"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be positive"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be in [0, 1)"),
    (["micro_batch_size=30"], "batch_size=100 is not divisible by 1 process(es) x micro_batch_size=30"),
    (["batch_size=5000"], "batch_size=5000 exceeds the 1000 training images"),
    (["dataset.subset=5"], "dataset.subset=5 must be between 10 and 50000"),
    (["model.depth=10"], "model.depth=10 is not 6n+2"),
    (["schedule.power=-1"], "schedule.power=-1.0 must be non-negative"),
    (["dataset=imagenet"], "ImageNet layout not found: no train/ under "),
    (["max_minutes=0"], "max_minutes=0.0 must be positive or null"),
    # Not a number, or infinite: no key means that (null does, where a key may be unset).
    (["schedule.warmup_epochs=nan"], "schedule.warmup_epochs=nan must be a finite number"),
    (["schedule.warmup_epochs=inf"], "schedule.warmup_epochs=inf must be a finite number"),
    (["lr_factor=nan"], "lr_factor=nan must be a finite number"),
    (["schedule.power=nan"], "schedule.power=nan must be a finite number"),
    (["max_minutes=nan"], "max_minutes=nan must be a finite number"),
    (["optimizer.lr=inf"], "optimizer.lr=inf must be a finite number"),
    (["seed=18446744073709551616"], "seed=18446744073709551616 is too large: torch takes integers up to 2**63 - 1"),
    (["eval_batch_size=9223372036854775808"], "eval_batch_size=9223372036854775808 is too large: "),  # 2**63
    (["dataset.root={missing}"], "CIFAR-10 not found: no cifar-10-batches-py/ under "),
    (["dataset.root={corrupted}"], "data_batch_2 fails its md5 check"),
    (["optimizer=sngm,msgd"], "is a sweep: add -m"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], "device=cuda but no CUDA GPU is visible; use device=cpu or device=auto"))


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, cifar_root, corrupted_root):
    args = [a.format(missing=tmp_path / "nowhere", corrupted=corrupted_root) for a in args]
    result = run_cli([*TINY, *args], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sngm-bench: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "outputs").exists()  # no stub run folder


def test_full_error_shows_the_traceback(tmp_path, cifar_root):
    result = run_cli([*TINY, "epochs=0"], cwd=tmp_path, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.is_bf16_supported(),
                    reason="needs a CUDA GPU without bf16 support")
def test_bf16_where_unsupported(tmp_path, cifar_root):
    result = run_cli([*TINY, "precision=bf16", "device=cuda"], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 2 and "precision=bf16 is not supported" in result.stderr


def test_absurd_lr_diverges_and_is_recorded(tmp_path, cifar_root):
    result = run_cli([*TINY, "batch_size=50", "optimizer=msgd", "optimizer.lr=1e6", "log_every=5"], cwd=tmp_path,
                     env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == 1
    assert 1 <= summary["diverged_step"] <= 20 and summary["final_test_acc"] is None
    assert pd.read_csv(run_dir / "metrics.csv").empty


def test_a_finished_run_is_never_trained_twice_single_or_in_a_sweep(tmp_path, cifar_root):
    env = {"SNGM_DATA": str(cifar_root)}
    first = {}
    for args, root in [(TINY, tmp_path / "outputs"), (["-m", *TINY], tmp_path / "multirun")]:
        assert run_cli(args, cwd=tmp_path, env_extra=env).returncode == 0
        (run_dir,) = [p for p in (root / "smoke").iterdir() if p.is_dir()]  # beside Hydra's multirun.yaml
        first[root] = (run_dir / "summary.json").read_text()
        again = run_cli(args, cwd=tmp_path, env_extra=env)
        assert again.returncode == 0, again.stderr
        assert f"{run_dir} already holds a completed run; nothing to do" in again.stdout
        accuracy = json.loads(first[root])["final_test_acc"]
        assert re.findall(r"final test accuracy (\S+)", again.stdout) == [f"{100 * accuracy:.2f}"]  # once, in %
        assert (run_dir / "summary.json").read_text() == first[root]
    retrained = run_cli([*TINY, "overwrite=true"], cwd=tmp_path, env_extra=env)
    assert retrained.returncode == 0
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["wall_seconds"] != \
        json.loads(first[tmp_path / "outputs"])["wall_seconds"]


def _start(args, cwd, cifar_root, command=(sys.executable, "-m", "sngm_bench")):
    return subprocess.Popen([*command, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SNGM_DATA": str(cifar_root)})


RESUMABLE = ["experiment=smoke", "model.width=4", "dataset.subset=1000", "epochs=3", "batch_size=10", "log_every=5"]
COMPARED = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]


def _metrics_rows(runs) -> int:
    """Epochs written to the one metrics.csv under `runs` (0 before it exists)."""
    found = list(runs.glob("*/metrics.csv"))
    return len(found[0].read_text().splitlines()) - 1 if found else 0


def _epochs_recorded(runs) -> int:
    """Epochs that the one summary.json under `runs` counts (0 before it exists): it is written after
    each epoch's checkpoint."""
    return max((read_summary(run_dir).get("epochs", 0) for run_dir in runs.glob("*/")), default=0)


def test_sigterm_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path, cifar_root):
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = run_cli(RESUMABLE, cwd=tmp_path / "straight", env_extra={"SNGM_DATA": str(cifar_root)})
    assert straight.returncode == 0, straight.stderr

    process = _start(RESUMABLE, tmp_path / "stopped", cifar_root)
    runs = tmp_path / "stopped" / "outputs" / "smoke"
    # The event: epoch 1 is written. The flag is read after every step, so the run stops early in
    # a later epoch; where exactly is read from its checkpoint.
    wait_for(lambda: _metrics_rows(runs) >= 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "run the same command again to continue" in stderr.strip().splitlines()[-1]
    (run_dir,) = runs.iterdir()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["epoch"] >= 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["interrupted_by"], summary["interrupted_epoch"], summary["interrupted_step"]) \
        == ("interrupted", "SIGTERM", state["epoch"], state["step"])

    resumed = run_cli(RESUMABLE, cwd=tmp_path / "stopped", env_extra={"SNGM_DATA": str(cifar_root)})
    assert resumed.returncode == 0, resumed.stderr
    (straight_dir,) = (tmp_path / "straight" / "outputs" / "smoke").iterdir()
    expected, got = pd.read_csv(straight_dir / "metrics.csv"), pd.read_csv(run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(expected[COMPARED], got[COMPARED], check_exact=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["resumed_at"] == [{"epoch": state["epoch"], "step": state["step"]}]
    final, reference = torch.load(run_dir / "checkpoint.pt", weights_only=False), \
        torch.load(straight_dir / "checkpoint.pt", weights_only=False)
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key


def test_two_processes_stopped_mid_epoch_resume_to_the_uninterrupted_run(tmp_path, cifar_root):
    # torchrun passes SIGTERM on to both processes; they agree on the step to stop at, rank 0 saves
    # this epoch's loss and accuracy sums so far, and the rerun must equal the uninterrupted run.
    env = {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}
    args = [*RESUMABLE, "logger=tensorboard"]  # the running loss and accuracy, every log_every steps
    torchrun = [*TWO_PROCESSES, "-m", "sngm_bench", *args]
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = run_command(torchrun, tmp_path / "straight", env)
    assert straight.returncode == 0, straight.stderr[-3000:]

    process = _start(args, tmp_path / "stopped", cifar_root, [*TWO_PROCESSES, "-m", "sngm_bench"])
    runs = tmp_path / "stopped" / "outputs" / "smoke"
    wait_for(lambda: _metrics_rows(runs) >= 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0
    (run_dir,) = runs.iterdir()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["interrupted_by"], summary["world_size"]) == ("interrupted", "SIGTERM", 2)
    assert state["epoch"] >= 2, stderr[-3000:]  # within a few steps of epoch 2 (every log_every=5 steps)

    resumed = run_command(torchrun, tmp_path / "stopped", env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (straight_dir,) = (tmp_path / "straight" / "outputs" / "smoke").iterdir()
    expected, got = pd.read_csv(straight_dir / "metrics.csv"), pd.read_csv(run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(expected[COMPARED], got[COMPARED], check_exact=True)
    final, reference = torch.load(run_dir / "checkpoint.pt", weights_only=False), \
        torch.load(straight_dir / "checkpoint.pt", weights_only=False)
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    # What the progress bar and the logger read: rank 0's running means, the same after the resume.
    expected, got = _scalars(straight_dir, "train/loss", "train/accuracy"), _scalars(run_dir, "train/loss",
                                                                                      "train/accuracy")
    assert got == expected


# `python -m sngm_bench` for torchrun, each process first writing its pid to rank_<RANK>.pid.
PID_FILES = """
import os, pathlib, runpy
pathlib.Path(f"rank_{os.environ['RANK']}.pid").write_text(str(os.getpid()))
runpy.run_module("sngm_bench", run_name="__main__")
"""
KILLED = ["experiment=smoke", "model.width=4", "dataset.subset=1000", "epochs=2", "batch_size=10"]


@pytest.fixture(scope="module")
def two_processes_uninterrupted(cifar_root, tmp_path_factory):
    """The run folder of KILLED trained by two processes without interruption."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_command([*TWO_PROCESSES, "-m", "sngm_bench", *KILLED], cwd,
                         {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "smoke").iterdir()
    return run_dir


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_process_ends_torchrun_truthfully_and_the_rerun_continues(rank, tmp_path, cifar_root,
                                                                            two_processes_uninterrupted):
    # The other process's next collective fails at once (gloo): it must say so in one line, not with a
    # traceback, and the run's record must say what happened. Only rank 0 writes the record: when it
    # is the one killed, summary.json stays `running`, which a reader shows as interrupted.
    script = tmp_path / "pid_files.py"
    script.write_text(PID_FILES)
    process = _start(KILLED, tmp_path, cifar_root, [*TWO_PROCESSES, str(script)])
    runs = tmp_path / "outputs" / "smoke"
    # The event: epoch 1's checkpoint is written.
    wait_for(lambda: _epochs_recorded(runs) >= 1, process)
    os.kill(int((tmp_path / f"rank_{rank}.pid").read_text()), signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0
    assert "Error executing job" not in stderr, stderr[-3000:]  # Hydra's heading of a traceback from our code
    assert stderr.count(f"sngm-bench: error: {LostPeer.MESSAGE}") == (rank == 1), stderr[-3000:]  # rank 0 says it
    # torchrun's report names the process killed as the first failure: the survivor leaves no error file,
    # whose second could precede the one at which torchrun noticed the death.
    assert "Signal 9 (SIGKILL)" in stderr.split("Root Cause")[-1], stderr[-3000:]
    assert f"traceback : {LostPeer.MESSAGE}" not in stderr
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (live_status(run_dir, summary["status"]), summary["epochs"]) == ("failed" if rank else "interrupted", 1)
    assert summary.get("error", "").startswith(LostPeer.MESSAGE) == (rank == 1)

    resumed = run_command([*TWO_PROCESSES, "-m", "sngm_bench", *KILLED], tmp_path,
                          {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(at["epoch"], at["step"]) for at in summary["resumed_at"]] == [(2, 0)]
    expected = pd.read_csv(two_processes_uninterrupted / "metrics.csv")
    pd.testing.assert_frame_equal(expected[COMPARED], pd.read_csv(run_dir / "metrics.csv")[COMPARED], check_exact=True)
    final = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    reference = torch.load(two_processes_uninterrupted / "checkpoint.pt", weights_only=False)
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key


def _scalars(run_dir, *tags) -> dict:
    """{(tag, step): value} of the TensorBoard event files in `run_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {(tag, event.step): event.value for tag in tags for event in events.Scalars(tag)}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR2], ids=["SIGINT", "SIGUSR2"])
def test_a_signal_leaves_status_interrupted_with_the_signal_and_the_step(tmp_path, cifar_root, signum):
    process = _start(RESUMABLE, tmp_path, cifar_root)
    runs = tmp_path / "outputs" / "smoke"
    wait_for(lambda: list(runs.glob("*/summary.json")), process)  # written once the signals are handled
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 128 + signum, stderr
    (run_dir,) = runs.iterdir()
    assert stderr.strip().splitlines()[-1] == f"sngm-bench: stopped by {signal.Signals(signum).name}; " \
        f"checkpoint saved in {run_dir}, run the same command again to continue", stderr
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["interrupted_by"], summary["interrupted_epoch"], summary["interrupted_step"]) \
        == ("interrupted", signal.Signals(signum).name, state["epoch"], state["step"])


def cli_with_signals(function: str, call: int, signals: int, signum: int = signal.SIGINT, before: str = "",
                     module: str = "sngm_bench.train") -> str:
    """The command line as a script for `python -c`, in which the `call`-th call of `module`'s
    `function` first sends the process `signals` signals `signum` (SIGINT: Ctrl-C); `before` runs first."""
    return f"""import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; a shell's `command &` ignores SIGINT
{before}
import {module} as patched
real, calls = patched.{function}, []
def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == {call}:
        for _ in range({signals}):
            os.kill(os.getpid(), {int(signum)})
    return real(*args, **kwargs)
patched.{function} = wrapped
sys.argv[0] = "sngm-bench"
from sngm_bench.cli import main
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_records_where_the_saved_checkpoint_continues(signum, tmp_path, cifar_root):
    tiny = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=2", "batch_size=100",  # 4 steps an epoch
            "hydra.run.dir=run"]
    two_signals_in_step_6 = cli_with_signals("train_step", call=6, signals=2, signum=signum)
    result = run_command([sys.executable, "-c", two_signals_in_step_6, *tiny], tmp_path, {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "sngm-bench: stopped at once, without a new checkpoint; " \
        f"run the same command again to continue from the last one in {tmp_path / 'run'}", result.stderr
    assert "Traceback" not in result.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (state["epoch"], state["step"]) == (2, 0)  # the end of epoch 1: step 6 stopped at once
    assert (summary["status"], summary["interrupted_by"], summary["interrupted_epoch"], summary["interrupted_step"]) \
        == ("interrupted", "a second signal", 2, 0)


def test_a_stop_while_an_epoch_is_evaluated_stops_at_that_epochs_checkpoint(tmp_path, cifar_root):
    tiny = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=2", "batch_size=100",
            "hydra.run.dir=run"]
    ctrl_c_evaluating_epoch_1 = cli_with_signals("evaluate", call=1, signals=1)
    result = run_command([sys.executable, "-c", ctrl_c_evaluating_epoch_1, *tiny], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (state["epoch"], state["step"]) == (2, 0)  # was (2, 1): a step of epoch 2 trained, then stopped
    assert (summary["status"], summary["epochs"], summary["interrupted_epoch"], summary["interrupted_step"]) == \
        ("interrupted", 1, 2, 0)


def test_a_second_signal_while_a_checkpoint_is_written_records_only_the_epochs_it_saved(tmp_path, cifar_root):
    tiny = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=2", "batch_size=100",
            "hydra.run.dir=run"]
    two_signals_writing_epoch_2s = cli_with_signals("save", call=2, signals=2, module="sngm_bench.checkpoint")
    result = run_command([sys.executable, "-c", two_signals_writing_epoch_2s, *tiny], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (state["epoch"], state["step"], len(state["rows"])) == (2, 0, 1)  # epoch 2 is trained again
    assert (summary["status"], summary["epochs"], summary["best_epoch"], summary["interrupted_epoch"],
            summary["interrupted_step"]) == ("interrupted", 1, 1, 2, 0)


# A stop signal while the command loads the data: before training, and so before StopRequest handles it. SIGTERM
# is SLURM's preemption and `timeout`'s; SIGUSR2 SLURM's time limit (sbatch --signal).
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2],
                         ids=["SIGINT", "SIGTERM", "SIGUSR2"])
def test_a_stop_signal_while_loading_the_data_is_one_line_and_leaves_no_run_folder(signum, tmp_path, cifar_root):
    script = cli_with_signals("build_data", call=1, signals=1, signum=signum)
    result = run_command([sys.executable, "-c", script, *TINY, "hydra.run.dir=runs/run"], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines() == ["sngm-bench: stopped at once, before the run's first "
                                                  "checkpoint; run the same command again to start it"], result.stderr
    assert not (tmp_path / "runs").exists()  # a stub would be reported as an interrupted run


STOPPED_OUTSIDE_A_JOB = ("sngm-bench: stopped at once, before a run's training began; run the same command "
                         "again to continue")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2],
                         ids=["SIGINT", "SIGTERM", "SIGUSR2"])
def test_a_stop_signal_while_a_sweep_is_checked_is_one_line_and_starts_nothing(signum, tmp_path, cifar_root):
    # Every combination is composed before the sweep starts (`cli.check_overrides`), a few a second: the
    # signal comes then, in the fifth composition (the fourth combination's). SIGTERM ended it silently.
    script = cli_with_signals("compose", call=5, signals=1, signum=signum, module="sngm_bench.cli")
    result = run_command([sys.executable, "-c", script, "-m", *TINY, "seed=range(20)", "hydra.sweep.dir=sweep"],
                         tmp_path, {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines() == [STOPPED_OUTSIDE_A_JOB]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_hydra_sets_the_run_up_is_one_line_and_leaves_no_run_folder(signum, tmp_path,
                                                                                        cifar_root):
    script = cli_with_signals("configure_log", call=1, signals=1, signum=signum,
                              module="hydra.core.utils")  # before the job
    result = run_command([sys.executable, "-c", script, *TINY, "hydra.run.dir=runs/run"], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines() == [STOPPED_OUTSIDE_A_JOB]
    assert not (tmp_path / "runs").exists()  # a stub would be reported as an interrupted run


# hydra-submitit-launcher's handlers: SIGTERM is logged and ignored (SIGUSR2 requeues the job).
SUBMITIT_SIGTERM = "signal.signal(signal.SIGTERM, lambda signum, frame: print('bypassed', signum, file=sys.stderr))"


def test_a_handler_set_before_the_command_still_gets_its_signal_while_loading_the_data(tmp_path, cifar_root):
    script = cli_with_signals("build_data", call=1, signals=1, signum=signal.SIGTERM, before=SUBMITIT_SIGTERM)
    result = run_command([sys.executable, "-c", script, *TINY, "hydra.run.dir=run"], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr
    assert f"bypassed {int(signal.SIGTERM)}" in result.stderr
    assert read_summary(tmp_path / "run")["status"] == "completed"


def test_the_signal_handler_it_replaced_still_gets_the_signal_after_the_checkpoint():
    """Under hydra-submitit-launcher, SIGUSR2's handler requeues the job; it must still run."""
    from sngm_bench.errors import Interrupted
    from sngm_bench.stop import StopRequest

    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(Interrupted):
            with StopRequest() as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert stop.requested and received == []  # the run stops first
                raise Interrupted(stop.reason(), "run")
        assert received == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sweep_records_a_bad_combination_and_completes_the_others(tmp_path, cifar_root):
    result = run_cli(["-m", *TINY, "batch_size=100,0,200"], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 2
    assert "1 run(s) of the sweep failed" in result.stderr.strip().splitlines()[-1]
    runs = summaries(tmp_path / "multirun" / "smoke")
    assert {size: s["status"] for size, s in runs.items()} == {100: "completed", 0: "failed", 200: "completed"}
    assert runs[0]["error"] == "batch_size=0 must be a positive integer"


def test_killed_sweep_rerun_trains_only_the_missing_runs(tmp_path, cifar_root):
    args = ["-m", *TINY, "seed=0,1,2,3"]
    process = _start(args, tmp_path, cifar_root)
    sweep = tmp_path / "multirun" / "smoke"
    wait_for(lambda: sum(s["status"] == "completed" for s in summaries(sweep, "seed").values()) >= 2, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode != 0
    before = summaries(sweep, "seed")
    done = {seed for seed, s in before.items() if s["status"] == "completed"}
    assert 2 <= len(done) < 4
    rerun = run_cli(args, cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert rerun.returncode == 0, rerun.stderr
    after = summaries(sweep, "seed")
    assert sorted(after) == [0, 1, 2, 3]
    assert all(s["status"] == "completed" for s in after.values())
    for seed in done:  # finished runs were left alone
        assert after[seed] == before[seed]


def test_a_sweep_into_the_folder_of_a_live_sweep_is_refused_and_the_live_one_ends_truthfully(tmp_path, cifar_root):
    # The two would share the folder's lists of started and failed runs: the live sweep, its run completed,
    # ended with "1 run(s) of the sweep failed" and listed the run as refused, the other's refusal.
    args = ["-m", *TINY]
    first = _start(args, tmp_path, cifar_root)
    sweep = tmp_path / "multirun" / "smoke"
    wait_for(lambda: [s["status"] for s in summaries(sweep).values()] == ["running"], first)
    first.send_signal(signal.SIGSTOP)  # it holds its folders, and cannot finish before the second sweep has started
    try:
        second = run_cli(args, cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2 and second.stderr.strip().splitlines() == [
        f"sngm-bench: error: another sweep is running in {sweep}; wait for it, or give this one its own "
        "hydra.sweep.dir"]
    assert [s["status"] for s in summaries(sweep).values()] == ["completed"]
    assert re.search(r"^  completed +\d", out, re.MULTILINE), out[-3000:]
