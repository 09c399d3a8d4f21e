"""Real training runs through the command line, on real CIFAR-10 (tiny model, small subset)."""

import json
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import TEST_IMAGES_PER_CLASS, TWO_PROCESSES, run_cli, run_command
from sngm_bench.config import compose_config
from sngm_bench.data import build_data
from sngm_bench.models import build_model

TINY = ["experiment=smoke", "model.width=8", "dataset.subset=4000"]
RUN_FILES = ["metrics.csv", "summary.json", ".hydra/config.yaml", "train.log"]


def read_run(run_dir):
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return config, summary, pd.read_csv(run_dir / "metrics.csv")


def test_tiny_run_learns_and_records_everything(tmp_path, cifar_root):
    result = run_cli([*TINY, "epochs=3", "batch_size=100"], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    assert all((run_dir / f).exists() for f in RUN_FILES)
    config, summary, metrics = read_run(run_dir)
    assert config["optimizer"]["name"] == "sngm" and config["batch_size"] == 100
    assert list(metrics.columns) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                                     "epoch_seconds", "images_per_second", "noise_scale", "holdout_loss", "holdout_acc"]
    assert metrics["holdout_acc"].isna().all() and summary["final_holdout_acc"] is None
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["final_test_acc"] == metrics["test_acc"].iloc[-1]
    assert summary["best_test_acc"] == metrics["test_acc"].max()
    assert summary["final_test_acc"] > 0.22  # chance is 0.10 on the class-balanced test images (conftest)
    assert summary["train_images"] == 4000 and summary["holdout_images"] == 0
    assert summary["data_official"] is False  # conftest's test file is cut, with a checksum list of its own
    assert summary["test_images"] == 10 * TEST_IMAGES_PER_CLASS
    # The run's rate is its images over its training seconds, not the mean of its epochs' rates.
    images_per_epoch = summary["steps_per_epoch"] * 100
    train_seconds = (images_per_epoch / metrics["images_per_second"]).sum()
    assert summary["images_per_second"] == pytest.approx(3 * images_per_epoch / train_seconds)
    for key in ("git_commit", "torch_version", "device_name", "seed", "wall_seconds", "peak_lr"):
        assert key in summary
    assert summary["optimizer_step_compiled"] is False


def test_two_by_two_sweep_yields_four_complete_runs(tmp_path, cifar_root):
    # Only the sweep's bookkeeping is checked: 400 images at width 4 (two to four steps a run) serve it.
    result = run_cli(["-m", *TINY, "model.width=4", "dataset.subset=400", "epochs=1", "optimizer=sngm,msgd",
                      "batch_size=100,200"],
                     cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr
    runs = sorted(p for p in (tmp_path / "multirun" / "smoke").iterdir() if p.is_dir())
    assert len(runs) == 4
    seen = set()
    for run_dir in runs:
        config, summary, metrics = read_run(run_dir)
        assert summary["status"] == "completed" and len(metrics) == 1
        assert 0.0 <= summary["final_test_acc"] <= 1.0
        seen.add((config["optimizer"]["name"], config["batch_size"]))
        assert f"optimizer={config['optimizer']['name']}" in run_dir.name  # readable folder names
    assert seen == {("sngm", 100), ("sngm", 200), ("msgd", 100), ("msgd", 200)}


def test_bf16_channels_last_and_compile_paths_train(tmp_path, cifar_root):
    # The fast-path options end to end on CPU (bf16 autocast, channels_last, torch.compile of the
    # model for training and evaluation, and of SNGM's step); their speed is the GPU benchmark's business.
    result = run_cli([*TINY, "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100",
                      "precision=bf16", "channels_last=true", "compile=true", "compile_optimizer=true"],
                     cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    config, summary, metrics = read_run(run_dir)
    assert config["precision"] == "bf16" and config["compile"] and config["channels_last"]
    assert config["compile_optimizer"] and summary["optimizer_step_compiled"]
    assert "sngm (compiled step) on" in (run_dir / "train.log").read_text()
    assert summary["status"] == "completed" and metrics["train_loss"].notna().all()
    assert 0.0 < summary["final_test_acc"] <= 1.0


@pytest.mark.parametrize("launcher", [[sys.executable], TWO_PROCESSES], ids=["one-process", "two-processes"])
def test_test_accuracy_is_the_checkpointed_model_in_inference_mode(tmp_path, cifar_root, launcher):
    # BatchNorm evaluates with its running statistics, which evaluation leaves alone: the recorded test
    # loss and accuracy are those of the checkpoint's model in eval mode, at any evaluation batch size.
    # Under DDP each process's statistics are those of its own shards; all evaluate with rank 0's, the checkpoint's.
    overrides = [*TINY, "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100"]
    result = run_command([*launcher, "-m", "sngm_bench", *overrides, "eval_batch_size=700"], cwd=tmp_path,
                         env_extra={"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "smoke").iterdir()
    _, _, metrics = read_run(run_dir)
    cfg = compose_config([*overrides, f"dataset.root={cifar_root}"])
    model = build_model(cfg.model, 10)
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"])
    test = build_data(cfg.dataset, torch.device("cpu")).test
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in test.eval_batches(2500)])
    assert F.cross_entropy(logits, test.labels).item() == pytest.approx(metrics["test_loss"].iloc[-1], rel=1e-5)
    assert (logits.argmax(1) == test.labels).float().mean().item() == pytest.approx(metrics["test_acc"].iloc[-1],
                                                                                    abs=1.5e-4)  # one image


def test_held_out_images_are_evaluated_each_epoch_recorded_and_fixed_for_the_run_folder(tmp_path, cifar_root):
    # The held-out accuracy is that of the checkpoint's model on the held-out images; continuing the
    # folder's run with another split is refused like any other change of what is trained.
    overrides = [*TINY, "model.width=4", "dataset.subset=400", "dataset.holdout_images=100", "epochs=2",
                 "batch_size=100", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {"SNGM_DATA": str(cifar_root)}
    result = run_cli(overrides, cwd=tmp_path, env_extra=env)
    assert result.returncode == 0, result.stderr[-3000:]
    config, summary, metrics = read_run(tmp_path / "run")
    assert config["dataset"]["holdout_images"] == 100
    assert summary["train_images"] == 300 and summary["holdout_images"] == 100 and summary["steps_per_epoch"] == 3
    assert metrics["holdout_acc"].notna().all() and metrics["holdout_loss"].notna().all() and len(metrics) == 2
    assert summary["final_holdout_acc"] == metrics["holdout_acc"].iloc[-1]
    assert "holdout acc" in (tmp_path / "run" / "train.log").read_text()
    assert f"held-out accuracy {100 * summary['final_holdout_acc']:.2f} %" in result.stdout.strip().splitlines()[-1]
    cfg = compose_config([*overrides[:-1], f"dataset.root={cifar_root}"])
    model = build_model(cfg.model, 10)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    holdout = build_data(cfg.dataset, torch.device("cpu")).holdout
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in holdout.eval_batches(100)])
    assert F.cross_entropy(logits, holdout.labels).item() == pytest.approx(metrics["holdout_loss"].iloc[-1], rel=1e-5)
    assert (logits.argmax(1) == holdout.labels).float().mean().item() == pytest.approx(summary["final_holdout_acc"])
    other = run_cli([*overrides, "dataset.holdout_images=50"], cwd=tmp_path, env_extra=env)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"sngm-bench: error: {tmp_path / 'run'} holds a run trained with dataset.holdout_images=100 (now 50); add "
        "overwrite=true to train it again with the new config, or choose another folder")
