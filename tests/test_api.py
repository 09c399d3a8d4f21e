"""The Python API (`sngm_bench.run`) and the TensorBoard logger, on one real tiny run."""

import shlex
import subprocess
import sys
import types

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sngm_bench
from conftest import run_cli
from sngm_bench.errors import Interrupted, UserError
from sngm_bench.records import read_summary

TINY = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100"]


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, cifar_root):
    """`sngm_bench.run` in a fresh folder, with live TensorBoard curves every 2 steps: (cwd, summary)."""
    cwd = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        summary = sngm_bench.run(api_overrides(cifar_root))
    return cwd, summary


def api_overrides(cifar_root) -> list[str]:
    return [*TINY, f"dataset.root={cifar_root}", "logger=tensorboard", "log_every=2"]


def test_import_is_light():
    probe = "import sys, sngm_bench; print(sorted({'torch', 'hydra', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_returns_the_summary_of_the_run_the_cli_would_make(api_run, cifar_root):
    cwd, summary = api_run
    # The folder the command line names for these overrides (logger, log_every, dataset.root: untrained).
    run_dir = cwd / "outputs" / "smoke" / "batch_size=100,dataset.subset=400,epochs=1,model.width=4"
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert summary == read_summary(run_dir)
    # What trains it again, on the command line, and what started it (not pytest's command line).
    assert summary["command"] == shlex.join(["sngm-bench", *api_overrides(cifar_root)])
    assert summary["launch_command"] == f"sngm_bench.run({api_overrides(cifar_root)!r})"
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    # The recorded command finds the same run finished there.
    result = run_cli(shlex.split(summary["command"])[1:], cwd=cwd, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0 and "already holds a completed run" in result.stderr + result.stdout


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["optimizer=adam"], "unknown optimizer 'adam'"),
    (["seed=0,1"], "is a sweep"),
    (["-m", "seed=0,1"], "-m is a flag of the sngm-bench command, not an override: a sweep runs on the command line"),
])
def test_run_raises_user_errors(tmp_path, monkeypatch, capfd, overrides, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        sngm_bench.run(overrides)
    # As on the command line: no run folder left behind, and the error is the caller's to print.
    assert not (tmp_path / "outputs").exists()
    assert "Error executing job" not in capfd.readouterr().err


def test_run_that_cannot_start_on_its_data_leaves_no_folder(tmp_path, monkeypatch, cifar_root):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="batch_size=1000 exceeds the 400 training images"):
        sngm_bench.run([*TINY[:-1], "batch_size=1000", f"dataset.root={cifar_root}"])
    assert not (tmp_path / "outputs").exists()


def tensorboard_events(cwd) -> EventAccumulator:
    """The TensorBoard events of the one run under cwd/outputs/smoke."""
    (run_dir,) = (cwd / "outputs" / "smoke").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def test_tensorboard_events_hold_the_scalars(api_run):
    cwd, summary = api_run
    (run_dir,) = (cwd / "outputs" / "smoke").iterdir()
    events = tensorboard_events(cwd)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("train/loss", "train/accuracy", "train/lr", "train/images_per_second"):
        assert [step for step, _ in scalars[tag]] == [2, 4]  # every log_every=2 steps of the epoch's 4
    metrics = pd.read_csv(run_dir / "metrics.csv").iloc[-1]
    for column in ("test_acc", "test_loss", "train_loss", "train_acc", "lr"):  # and each epoch's row, at its last step
        assert scalars[f"epoch/{column}"] == [(4, pytest.approx(metrics[column], rel=1e-6))]
    # One process: the running loss at the epoch's last step is the epoch's mean loss.
    assert scalars["train/loss"][-1][1] == pytest.approx(summary["final_train_loss"], rel=1e-6)
    assert all(value > 0 for _, value in scalars["train/images_per_second"])


def test_tensorboard_without_the_extra_is_one_line(tmp_path, cifar_root):
    fake = tmp_path / "fake" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named tensorboard')\n")
    result = run_cli([*TINY, "logger=tensorboard"], cwd=tmp_path,
                     env_extra={"SNGM_DATA": str(cifar_root), "PYTHONPATH": str(fake.parent)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sngm-bench: error: logger=tensorboard needs the tensorboard extra: pip install 'sngm-bench[tensorboard]'"]


def user_optimizer(tmp_path, monkeypatch, module: str) -> list[str]:
    """The overrides that train with `module`.SGD (tmp_path/`module`.py), as a user's optimizer config
    would; the test runs in tmp_path with it importable."""
    (tmp_path / "configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "configs" / "optimizer" / f"{module}.yaml").write_text(f"_target_: {module}.SGD\nlr: 0.1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return [f"hydra.searchpath=[file://{tmp_path / 'configs'}]", f"optimizer={module}"]


def test_tensorboard_shows_each_step_once_after_a_crashed_run_continues(tmp_path, monkeypatch, cifar_root):
    # The crash comes at step 6 of 8, after step 5 was logged; the rerun continues from the checkpoint
    # of step 4 and logs step 5 again: TensorBoard must show the rerun's, once.
    (tmp_path / "crashing.py").write_text(
        "import torch\n"
        "class SGD(torch.optim.SGD):\n"
        "    crash_at = 6\n"
        "    def step(self, closure=None):\n"
        "        self.steps = getattr(self, 'steps', 0) + 1\n"
        "        if self.steps == self.crash_at:\n"
        "            raise RuntimeError('crash')\n"
        "        return super().step(closure)\n")
    args = [*TINY[:-2], "epochs=2", "batch_size=100", f"dataset.root={cifar_root}", "logger=tensorboard",
            "log_every=1", *user_optimizer(tmp_path, monkeypatch, "crashing")]
    with pytest.raises(RuntimeError, match="crash"):
        sngm_bench.run(args)
    import crashing

    monkeypatch.setattr(crashing.SGD, "crash_at", 0)
    assert sngm_bench.run(args)["resumed_at"] == [{"epoch": 2, "step": 0}]
    events = tensorboard_events(tmp_path)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.step for e in events.Scalars("epoch/test_acc")] == [4, 8]


def test_live_images_per_second_after_a_mid_epoch_resume_counts_the_earlier_sessions_time(
        tmp_path, monkeypatch, cifar_root):
    # A clock that advances 1 s per optimizer step only: 20 images per step are 20 images/s, before
    # the stop at step 16 of 20 and after the rerun continues the epoch there.
    (tmp_path / "stopping.py").write_text(
        "import os, signal, torch\n"
        "clock = [0.0]\n"
        "class SGD(torch.optim.SGD):\n"
        "    stop_at = 16\n"
        "    def step(self, closure=None):\n"
        "        clock[0] += 1\n"
        "        self.steps = getattr(self, 'steps', 0) + 1\n"
        "        if self.steps == self.stop_at:\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "        return super().step(closure)\n")
    user_overrides = user_optimizer(tmp_path, monkeypatch, "stopping")
    import stopping

    monkeypatch.setattr("sngm_bench.train.time", types.SimpleNamespace(perf_counter=lambda: stopping.clock[0]))
    args = [*TINY[:-1], "batch_size=20", f"dataset.root={cifar_root}", "logger=tensorboard", "log_every=2",
            *user_overrides]
    with pytest.raises(Interrupted):
        sngm_bench.run(args)
    monkeypatch.setattr(stopping.SGD, "stop_at", 0)
    assert sngm_bench.run(args)["resumed_at"] == [{"epoch": 1, "step": 16}]
    events = tensorboard_events(tmp_path)
    assert [e.value for e in events.Scalars("epoch/images_per_second")] == [20.0]
    live = [(e.step, e.value) for e in events.Scalars("train/images_per_second")]
    assert [step for step, _ in live] == [2, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20]
    assert {value for _, value in live} == {20.0}
