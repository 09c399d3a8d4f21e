"""Large batch at any scale: accumulation, DDP over processes, the submitit launcher."""

import copy
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from sngm_bench.config import compose_config
from sngm_bench.models.cifar_resnet import CifarResNet
from sngm_bench.optim import build_optimizer
from sngm_bench.train import carried_totals, micro_batch_size, small_micro_batch_warning, train_step
from conftest import TWO_PROCESSES, run_cli, run_command

TINY = ["experiment=smoke", "model.width=4", "model.batch_norm=false", "dataset.subset=400", "epochs=1",
        "batch_size=100"]


@pytest.mark.parametrize("optimizer", ["sngm", "msgd"])
def test_accumulated_micro_batches_equal_one_full_batch(optimizer):
    torch.manual_seed(0)
    model = CifarResNet(8, width=4, batch_norm=False).double()
    x, y = torch.randn(32, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (32,))
    cfg = compose_config([f"optimizer={optimizer}"]).optimizer
    results = []
    for micro in (32, 8):
        replica = copy.deepcopy(model)
        opt = build_optimizer(cfg, replica, lr=0.05)
        for _ in range(2):
            loss, correct = train_step(replica, opt, x, y, micro, torch.autocast("cpu", enabled=False))
        results.append((replica, float(loss), int(correct)))
    (full, full_loss, full_correct), (accumulated, acc_loss, acc_correct) = results
    for a, b in zip(full.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    assert acc_loss == pytest.approx(full_loss, rel=1e-12) and acc_correct == full_correct
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), full.parameters()))


def test_micro_batch_size_rules():
    cfg = compose_config(["batch_size=96"])
    assert micro_batch_size(cfg, 48, 2) == 48
    assert micro_batch_size(compose_config(["max_micro_batch_size=20"]), 48, 2) == 16
    assert micro_batch_size(compose_config(["micro_batch_size=12"]), 48, 2) == 12


def test_a_micro_batch_far_below_its_maximum_is_warned_of_with_a_batch_size_that_avoids_it():
    # Each of 2 processes has 101 images, a prime: micro-batches of 1 image, 101 forward passes a step.
    cfg = compose_config(["batch_size=202", "max_micro_batch_size=100"])
    assert micro_batch_size(cfg, 101, 2) == 1
    warning = small_micro_batch_warning(cfg, 101, 1, 2)
    assert warning.startswith("micro-batches of 1 images: each process's 101 images of batch_size=202 have no "
                              "divisor from 50 to max_micro_batch_size=100, so a step runs 101 forward passes")
    assert warning.endswith("batch_size=200 would split into micro-batches of at least 50")
    assert micro_batch_size(compose_config(["max_micro_batch_size=100"]), 100, 2) == 100
    # 102 images in two micro-batches of 51: at least half the maximum, no warning.
    assert micro_batch_size(cfg, 102, 2) == 51 and small_micro_batch_warning(cfg, 102, 51, 2) is None
    assert small_micro_batch_warning(cfg, 96, 96, 2) is None  # one forward pass
    chosen = compose_config(["batch_size=202", "max_micro_batch_size=100", "micro_batch_size=1"])
    assert small_micro_batch_warning(chosen, 101, 1, 2) is None  # asked for


def _read(run_dir):
    return (json.loads((run_dir / "summary.json").read_text()),
            torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"])


def test_two_process_ddp_equals_one_process(tmp_path, cifar_root):
    env = {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # Every process holds out the same images; 101 of them: shares of 51 and 50, summed over the processes.
    overrides = [*TINY, "dataset.holdout_images=101"]
    single = run_cli(overrides, cwd=tmp_path / "one", env_extra=env)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([*TWO_PROCESSES, "-m", "sngm_bench", *overrides], cwd=tmp_path / "two",
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (one_dir,) = (tmp_path / "one" / "outputs" / "smoke").iterdir()
    (two_dir,) = (tmp_path / "two" / "outputs" / "smoke").iterdir()  # both ranks chose one folder
    assert one_dir.name == two_dir.name
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    (summary_one, params_one), (summary_two, params_two) = _read(one_dir), _read(two_dir)
    assert summary_one["world_size"] == 1 and summary_two["world_size"] == 2
    for key in params_one:
        torch.testing.assert_close(params_one[key], params_two[key], rtol=1e-4, atol=1e-5)
    assert summary_two["final_train_loss"] == pytest.approx(summary_one["final_train_loss"], rel=1e-4)
    assert summary_two["final_test_acc"] == pytest.approx(summary_one["final_test_acc"], abs=2e-3)
    assert summary_one["holdout_images"] == summary_two["holdout_images"] == 101
    assert summary_two["final_holdout_acc"] == pytest.approx(summary_one["final_holdout_acc"], abs=0.0101)  # one image


# `python -m sngm_bench` for torchrun, each process leaving a mark from an exit handler, and another from the
# interpreter's teardown (the __del__ of an object that lives until then).
EXIT_MARKS = """
import atexit, os, pathlib, runpy
rank = os.environ["RANK"]
atexit.register(pathlib.Path(f"exit_handler_{rank}").touch)

class TornDown:
    def __del__(self):
        pathlib.Path(f"torn_down_{rank}").touch()

torn_down = TornDown()
runpy.run_module("sngm_bench", run_name="__main__")
"""


def test_torchrun_processes_end_without_the_teardown_in_which_gloo_aborts(tmp_path, cifar_root):
    # A gloo worker thread still freeing the last collective's tensors when Python finalizes aborts its
    # process (SIGABRT): a finished run that torchrun reports failed, as in one full run of this suite.
    script = tmp_path / "exit_marks.py"
    script.write_text(EXIT_MARKS)
    result = run_command([*TWO_PROCESSES, script, *TINY], tmp_path,
                         {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("exit_handler_*")) == ["exit_handler_0", "exit_handler_1"]
    assert not list(tmp_path.glob("torn_down_*"))
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_process_of_a_multi_process_run_that_fails_keeps_its_exit_code_without_the_teardown(tmp_path):
    # A process of rank 1 refusing a bad value, as a SLURM task does (its own log, no torchrun report).
    script = tmp_path / "exit_marks.py"
    script.write_text(EXIT_MARKS)
    result = run_command([sys.executable, script, "experiment=smoke", "batch_size=0"], tmp_path,
                         {"RANK": "1", "WORLD_SIZE": "2"})
    assert result.returncode == 2
    assert result.stderr.strip() == "sngm-bench: error: batch_size=0 must be a positive integer", result.stderr
    assert [p.name for p in tmp_path.glob("exit_handler_*")] == ["exit_handler_1"]
    assert not list(tmp_path.glob("torn_down_*"))


def said_under_torchrun(stderr: str, message: str) -> None:
    """Assert how torchrun's processes told `message`: at most one `sngm-bench: error:` line (rank 0's,
    unless another process ended first and torchrun stopped rank 0 before it printed), and always in
    torchrun's own report, under `traceback :` (not a link to torch's docs)."""
    assert stderr.count("sngm-bench: error: ") <= 1, stderr[-3000:]
    assert f"traceback : {message}" in stderr.split("Root Cause")[-1], stderr[-3000:]


def test_sync_batch_norm_over_cpu_processes_is_one_line(tmp_path, cifar_root):
    # DDP refuses SyncBatchNorm layers off CUDA: a traceback from its constructor, unless we say so first.
    result = subprocess.run([*TWO_PROCESSES, "-m", "sngm_bench", *TINY, "model.batch_norm=true", "sync_batch_norm=true"],
                            cwd=tmp_path, env={**os.environ, "SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said_under_torchrun(result.stderr, "sync_batch_norm=true needs CUDA")
    assert "SyncBatchNorm layers only work with GPU modules" not in result.stderr


def test_two_processes_resumed_record_the_noise_scale_of_the_uninterrupted_run(tmp_path, cifar_root):
    # Each process averages its own small batches: a checkpoint with rank 0's alone loses rank 1's.
    env = {**os.environ, "SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}
    torchrun = [*TWO_PROCESSES, "-m", "sngm_bench", *TINY, "epochs=2", "noise_scale_every=1"]
    starts = {"straight": [[]], "stopped": [["max_minutes=0.0001"], []]}  # the deadline stops it after epoch 1
    noise_scales = {}
    for name, overrides in starts.items():
        (tmp_path / name).mkdir()
        for extra in overrides:
            result = subprocess.run([*torchrun, *extra], cwd=tmp_path / name, env=env, capture_output=True,
                                    text=True, timeout=600)
            assert (result.returncode != 0) == bool(extra), result.stderr[-3000:]
            # Both processes stop at the deadline; rank 0 alone says so, and alone exits as stopped: had
            # rank 1 failed too, torchrun would have stopped rank 0 while it wrote the checkpoint.
            assert result.stderr.count("sngm-bench: stopped at the max_minutes deadline") == len(extra)
            assert "rank      : 1" not in result.stderr, result.stderr[-3000:]
        (run_dir,) = (tmp_path / name / "outputs" / "smoke").iterdir()
        with open(run_dir / "metrics.csv") as f:
            noise_scales[name] = [row["noise_scale"] for row in csv.DictReader(f)]
    resumed_at = json.loads((run_dir / "summary.json").read_text())["resumed_at"]
    assert [(at["epoch"], at["step"]) for at in resumed_at] == [(2, 0)]
    assert all(noise_scales["straight"]) and noise_scales["stopped"] == noise_scales["straight"]


def test_an_interrupted_epochs_sums_carry_over_to_any_number_of_processes():
    # Two processes stopped after 3 steps: loss sums (3 per-process means each), correct counts, non-finite.
    saved = torch.tensor([[6.0, 70.0, 0.0], [9.0, 80.0, 1.0]], dtype=torch.float64)
    assert [carried_totals(saved, rank, 2).tolist() for rank in (0, 1)] == saved.tolist()
    # The epoch's mean loss divides by steps x processes: 4 processes must add 4 means per step.
    assert sum(carried_totals(saved, rank, 4) for rank in range(4)).tolist() == [30.0, 150.0, 1.0]
    assert carried_totals(saved, 0, 1).tolist() == [7.5, 150.0, 1.0]
    # Rank 0's running means over the 3 carried steps are the two processes' (loss 15 / 6, accuracy
    # 150 of 3 steps x 100 images): it divides by its own share of the batch, a quarter of 100.
    loss, correct, nonfinite = carried_totals(saved, 0, 4).tolist()
    assert (loss / 3, correct / (3 * 25), nonfinite > 0) == (2.5, 0.5, True)
    older = saved.sum(0)  # a checkpoint from before the rows: the sum over as many processes as now
    assert carried_totals(older, 0, 2).tolist() == [15.0, 150.0, 1.0]
    assert carried_totals(older, 1, 2).tolist() == [0.0, 0.0, 0.0]


def test_torchrun_refuses_a_sweep_in_one_line(tmp_path):
    result = subprocess.run([*TWO_PROCESSES, "-m", "sngm_bench", "-m", "experiment=smoke", "seed=0,1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said_under_torchrun(result.stderr, "torchrun starts one run; a sweep (-m)")
    assert not (tmp_path / "multirun").exists()


def test_under_torchrun_an_error_is_said_once_and_named_in_torchruns_report(tmp_path):
    result = subprocess.run([*TWO_PROCESSES, "-m", "sngm_bench", "experiment=smoke", "batch_size=0"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said_under_torchrun(result.stderr, "batch_size=0 must be a positive integer")


def test_outside_torchrun_a_process_of_another_rank_says_its_error_itself(tmp_path):
    # As a SLURM task of rank 1 does: its log is its own, and no torchrun report would name the error.
    result = run_cli(["experiment=smoke", "batch_size=0"], cwd=tmp_path, env_extra={"RANK": "1", "WORLD_SIZE": "2"})
    assert result.returncode == 2
    assert result.stderr.strip() == "sngm-bench: error: batch_size=0 must be a positive integer", result.stderr


# `python -m sngm_bench` for torchrun, where the process of rank 1 finds no data (as on a node without a copy).
# Rank 0 goes on until it misses rank 1 in a collective, or torchrun stops it (SIGTERM) first.
RANK_1_WITHOUT_DATA = """
import os, runpy
if os.environ["RANK"] == "1":
    os.environ["SNGM_DATA"] = "nowhere"
{rank_0}
runpy.run_module("sngm_bench", run_name="__main__")
"""
# Rank 0 still loading its data when torchrun stops it: it waits for the signal.
RANK_0_STOPPED_LOADING = """
else:
    import signal
    import sngm_bench.train
    sngm_bench.train.build_data = lambda *args, **kwargs: signal.pause()
"""


@pytest.mark.parametrize("rank_0", ["", RANK_0_STOPPED_LOADING], ids=["rank-0-goes-on", "rank-0-stopped-loading"])
def test_under_torchrun_an_error_of_one_process_only_is_named_in_torchruns_report(rank_0, tmp_path, cifar_root):
    script = tmp_path / "rank_1_without_data.py"
    script.write_text(RANK_1_WITHOUT_DATA.format(rank_0=rank_0))
    result = subprocess.run([*TWO_PROCESSES, str(script), *TINY], cwd=tmp_path,
                            env={**os.environ, "SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said_under_torchrun(result.stderr, "CIFAR-10 not found: no cifar-10-batches-py/ under ")
    assert "Error executing job" not in result.stderr  # Hydra's heading of a traceback from our code
    assert not (tmp_path / "outputs").exists()  # as a single process leaves it: no stub run folder


# `python -m sngm_bench` for torchrun where no process finds the data. Rank 1 ends once rank 0 is in the cleanup
# after its own error (Processes.close), so that torchrun's SIGTERM reaches rank 0 there, as it does when rank 1
# is the quicker to end.
RANK_0_STOPPED_IN_ITS_CLEANUP = """
import os, pathlib, runpy, signal, time
from sngm_bench.distributed import Processes
os.environ["SNGM_DATA"] = "nowhere"
close, cleaning_up = Processes.close, pathlib.Path("rank_0_cleaning_up")

def close_when_rank_0_cleans_up(self):
    if os.environ["RANK"] == "0":
        cleaning_up.touch()
        signal.pause()  # until torchrun's SIGTERM
    while not cleaning_up.exists():
        time.sleep(0.01)
    close(self)

Processes.close = close_when_rank_0_cleans_up
runpy.run_module("sngm_bench", run_name="__main__")
"""


def test_under_torchrun_a_sigterm_during_an_errors_cleanup_leaves_the_error_said(tmp_path):
    script = tmp_path / "rank_0_stopped_in_its_cleanup.py"
    script.write_text(RANK_0_STOPPED_IN_ITS_CLEANUP)
    result = subprocess.run([*TWO_PROCESSES, str(script), *TINY], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "rank_0_cleaning_up").exists() and result.returncode != 0, result.stderr[-3000:]
    assert "sngm-bench: error: CIFAR-10 not found: no cifar-10-batches-py/ under " in result.stderr, result.stderr[-3000:]
    assert "stopped at once" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, cifar_root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    result = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY, "seed=0,1"],
                     cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "multirun" / "smoke").iterdir() if p.name.startswith("batch_size")]
    assert len(runs) == 2
    assert all(json.loads((r / "summary.json").read_text())["status"] == "completed" for r in runs)


def _stand_in(folder, name, script):
    """An executable `name` in `folder` running the shell `script`: SLURM's commands, on a machine without SLURM."""
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_slurm_launcher_needs_sbatch_and_says_so_in_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    sweep = ["-m", "hydra/launcher=slurm", "experiment=smoke", "seed=0,1"]
    result = run_cli(sweep, cwd=tmp_path, env_extra={"PATH": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("sngm-bench: error: hydra/launcher=slurm submits jobs with sbatch")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "multirun").exists()
    # On a login node the sweep goes on to sbatch (a stand-in that keeps the job script and refuses it).
    (tmp_path / "bin").mkdir()
    _stand_in(tmp_path / "bin", "sbatch", f'cp "$1" {tmp_path}/job.sh; exit 1')
    _stand_in(tmp_path / "bin", "srun", "exit 1")
    run_cli(sweep, cwd=tmp_path, env_extra={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    job = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --array=0-1" in job and "submitit.core._submit" in job
