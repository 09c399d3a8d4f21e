"""The throughput harness runs the product's step and the reference loop and reports sane
fields (no timing is asserted: speed is measured by the benchmark, not by tests)."""

import inspect
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from sngm_bench import bench, distributed, timing
from sngm_bench.bench import bench_train, flops_per_image, peak_flops, reference_step, step_kinds
from sngm_bench.config import Device, compose_config
from sngm_bench.data.device_loader import DeviceImages
from sngm_bench.errors import UserError
from sngm_bench.models.cifar_resnet import CifarResNet
from sngm_bench.noise_scale import NoiseScale
from sngm_bench.records import temporary_path
from sngm_bench.train import Trainer
from conftest import ROOT, run_command, wait_for


def test_flop_count_of_resnet20_matches_a_hand_count():
    # Forward multiply-accumulates of ResNet-20 (He et al. 2016): 40,551,040 (convolutions + fc).
    # FLOPs = 2 x MACs; backward = 2 x forward, less the input gradient of the stem (no input grad).
    stem_macs = 32 * 32 * 16 * 3 * 9
    expected = 3 * 2 * 40_551_040 - 2 * stem_macs
    assert flops_per_image(CifarResNet(20), (3, 32, 32), torch.device("cpu")) == expected


def test_peak_flops_lookup():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("AMD EPYC", "fp32") is None


def test_peak_flops_of_a_pcie_or_nvl_h100_is_not_the_sxm_one():
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert peak_flops("NVIDIA H100 NVL", "bf16") is None and peak_flops("NVIDIA H200 NVL", "bf16") is None
    assert peak_flops("NVIDIA H200", "bf16") == 989e12


def test_peak_flops_of_fp32_is_the_tf32_one_while_cudnn_convolutions_use_tf32(monkeypatch):
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 494.5e12  # torch's default: TF32 convolutions
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 67e12


def test_bench_reports_the_product_step_and_the_reference(cifar_root, monkeypatch):
    monkeypatch.setenv("SNGM_DATA", str(cifar_root))
    cfg = compose_config(["experiment=smoke", "model.width=4", "dataset.subset=200", "batch_size=32", "device=cpu"])
    result = bench_train(cfg, steps=2, warmup=1, compare_reference=True)
    assert result["model"] == "resnet8" and result["batch_size"] == 32 and result["micro_batch_size"] == 32
    assert result["dataset"] == "cifar10" and result["image_size"] == 32
    assert result["images_per_second"] > 0 and result["reference_images_per_second"] > 0
    assert result["throughput_vs_reference"] > 0 and result["step_ms"] > 0
    # a CPU runs no kernels
    assert result["kernel_ms"] is None and result["reference_kernel_ms"] is None and result["data_kernel_ms"] is None
    assert result["data_fraction_upper_bound"] > 0 and result["optimizer_fraction"] > 0
    assert math.isfinite(result["data_fraction_in_step"]) and result["data_fraction_in_step"] < 1  # noise: may be < 0
    assert math.isclose(result["data_fraction_in_step"] + result["optimizer_fraction"]
                        + result["rest_fraction_estimate"], 1)  # the rest is what the other two leave
    assert result["mfu"] is None and result["peak_memory_gib"] is None  # CPU: no known peak, no CUDA memory
    assert result["gflops_per_image"] > 0 and result["torch_version"] == torch.__version__


@pytest.fixture
def clock(monkeypatch):
    """The benchmarks' clock, advanced only by `charge`: the timings come out exact."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    return clock


def charge(monkeypatch, clock, owner, name: str, seconds: float) -> None:
    """Every call of the method `owner.name` (or, for a generator method, every item it yields)
    advances `clock` by `seconds`; the method still does its work."""
    original = getattr(owner, name)

    if inspect.isgeneratorfunction(original):
        def charged(*args, **kwargs):
            for item in original(*args, **kwargs):
                clock.now += seconds
                yield item
    else:
        def charged(*args, **kwargs):
            clock.now += seconds
            return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, charged)


def test_data_fraction_in_step_is_the_time_the_data_work_adds_to_the_step(cifar_root, monkeypatch, clock):
    # A training step takes 1 s and every batch the data stream yields 3 s more: a product step
    # takes 4 s and a fixed-batch step 1 s.
    charge(monkeypatch, clock, Trainer, "train_batch", 1.0)
    charge(monkeypatch, clock, DeviceImages, "train_batches", 3.0)
    monkeypatch.setenv("SNGM_DATA", str(cifar_root))
    cfg = compose_config(["experiment=smoke", "model.width=4", "dataset.subset=200", "batch_size=32", "device=cpu"])
    result = bench_train(cfg, steps=2, warmup=1)
    assert result["step_ms"] == 4000
    assert result["data_fraction_in_step"] == 3 / 4
    assert result["data_fraction_upper_bound"] == 3 / 4  # next(stream) timed alone: here nothing overlaps it
    assert result["rest_fraction_estimate"] == 1 / 4  # the optimizer's step alone charged nothing


def test_throughput_table_has_a_row_per_measurement_with_its_device_date_and_settings(tmp_path):
    folder = tmp_path / "h100-2026-12-01"
    folder.mkdir()
    common = {"dataset": "cifar10", "model": "resnet20", "device_name": "NVIDIA H100 80GB HBM3",
              "torch_version": "2.11.0"}
    pd.DataFrame([
        {**common, "batch_size": 4096, "precision": "bf16", "channels_last": True, "compile": True,
         "images_per_second": 180123.4, "mfu": 0.0412, "throughput_vs_reference": 0.987},
        {**common, "batch_size": 512, "precision": "fp32", "channels_last": False, "compile": False,
         "images_per_second": 30000.0, "mfu": float("nan"), "throughput_vs_reference": float("nan")},
        {**common, "batch_size": 512, "precision": "fp32", "channels_last": False, "compile": False,
         "optimizer_step_compiled": True, "images_per_second": 31000.0, "mfu": float("nan")},  # a newer column
    ]).to_csv(folder / "bench_train.csv", index=False)
    lines = bench.throughput_table([folder / "bench_train.csv"]).splitlines()
    assert lines[0] == "| device | torch | date | model | batch | settings | images/s | MFU | vs hand-written loop |"
    assert lines[2] == ("| NVIDIA H100 80GB HBM3 | 2.11.0 | 2026-12-01 | ResNet-20 | 4096 | bf16 + channels_last + "
                        "compile | 180,123 | 4.1 % | 0.99 |")
    assert lines[3] == "| NVIDIA H100 80GB HBM3 | 2.11.0 | 2026-12-01 | ResNet-20 | 512 | fp32 | 30,000 | – | – |"
    assert lines[4] == ("| NVIDIA H100 80GB HBM3 | 2.11.0 | 2026-12-01 | ResNet-20 | 512 | fp32 + compiled optimizer | "
                        "31,000 | – | – |")


def test_workers_per_gpu_divides_an_imagenet_steps_images_per_second_without_data_work_by_one_workers(tmp_path):
    folder = tmp_path / "h100-2026-12-01"
    folder.mkdir()
    common = {"model": "resnet50", "device_name": "NVIDIA H100 80GB HBM3", "torch_version": "2.11.0",
              "precision": "bf16", "channels_last": True, "compile": True, "batch_size": 100}
    assert "not measured yet" in bench.workers_per_gpu([])
    pd.DataFrame([
        {**common, "dataset": "imagenet", "image_size": 224, "images_per_second": 2600.0,
         "data_fraction_in_step": 0.012, "data_fraction_upper_bound": 0.41},
        {**common, "dataset": "cifar10", "image_size": 32, "images_per_second": 180000.0,
         "data_fraction_in_step": 0.01, "data_fraction_upper_bound": 0.03},
        {**common, "dataset": "imagenet", "image_size": 224, "images_per_second": 1200.0,
         "data_fraction_in_step": 0.7, "data_fraction_upper_bound": 0.85},
    ]).to_csv(folder / "bench_train.csv", index=False)
    lines = bench.workers_per_gpu([folder / "bench_train.csv"]).splitlines()
    assert "850–900 images/s" in lines[0] and len(lines) == 6  # the sentence, a blank line, the table's four
    # 2600 / (1 - 0.012) = 2632 images/s without data work: 2632 / 900 = 2.9, 2632 / 850 = 3.1
    assert lines[4] == ("| NVIDIA H100 80GB HBM3 | 2026-12-01 | ResNet-50 | 224 px | 100 | bf16 + channels_last + "
                        "compile | 2,600 | 2,632 | 3–4 | 1.2 % | 41.0 % |")
    # A loader that could not keep up: 1200 / (1 - 0.7) = 4000, 4000 / 900 = 4.4 and 4000 / 850 = 4.7, one
    # count, where the measured 1200 images/s would have asked for 2
    assert "| 1,200 | 4,000 | 5 | 70.0 % | 85.0 % |" in lines[5]


def test_appended_rows_keep_each_value_under_its_own_column(tmp_path):
    path = tmp_path / "bench_train.csv"
    bench.append_row(path, {"model": "resnet20", "images_per_second": 100.0, "device_name": "A"})
    bench.append_row(path, {"model": "resnet56", "images_per_second": 50.0, "throughput_vs_reference": 0.9,
                            "device_name": "B"})
    bench.append_row(path, {"model": "resnet8", "device_name": "C", "images_per_second": 10.0})
    rows = pd.read_csv(path)
    assert rows["model"].tolist() == ["resnet20", "resnet56", "resnet8"]
    assert rows["device_name"].tolist() == ["A", "B", "C"]
    assert rows["images_per_second"].tolist() == [100.0, 50.0, 10.0]
    assert rows["throughput_vs_reference"].iloc[1] == 0.9 and rows["throughput_vs_reference"].drop(1).isna().all()


def test_step_kinds_follow_the_noise_scale_cadence():
    def kinds(every):
        return step_kinds(NoiseScale(every, 32, 32, [], torch.device("cpu")))

    assert kinds(None) == [(1, 1.0)] and kinds(1) == [(1, 1.0)]
    assert kinds(4) == [(1, 0.75), (4, 0.25)]  # steps 1-3 unmeasured, step 4 measured


def test_bench_times_a_runs_mean_step_when_one_in_n_measures_the_noise_scale(cifar_root, monkeypatch, clock):
    # A step takes 1 s, its batch 3 s more, a noise-scale measurement 4 s more. With
    # noise_scale_every=4 a run's steps take 4, 4, 4 and 8 s: 5 s on average (not 8 s, nor the
    # median 4 s); the fixed-batch steps 1, 1, 1 and 5 s: 2 s.
    charge(monkeypatch, clock, Trainer, "train_batch", 1.0)
    charge(monkeypatch, clock, DeviceImages, "train_batches", 3.0)
    charge(monkeypatch, clock, NoiseScale, "big", 4.0)
    monkeypatch.setenv("SNGM_DATA", str(cifar_root))
    cfg = compose_config(["experiment=smoke", "model.width=4", "dataset.subset=200", "batch_size=32", "device=cpu",
                          "noise_scale_every=4"])
    result = bench_train(cfg, steps=3, warmup=1)
    assert result["step_ms"] == 5000 and result["noise_scale_every"] == 4
    assert result["data_fraction_in_step"] == 3 / 5


def test_reference_step_accumulates_over_the_products_micro_batches(cifar_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SNGM_DATA", str(cifar_root))
    cfg = compose_config(["experiment=smoke", "model.width=4", "dataset.subset=200", "batch_size=32", "device=cpu",
                          "micro_batch_size=8"])
    trainer = Trainer(cfg, tmp_path, distributed.setup(Device.cpu))
    step = reference_step(cfg, trainer)
    forward_batches = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: forward_batches.append(len(args[0])) if isinstance(module, CifarResNet) else None)
    try:
        step()
    finally:
        hook.remove()
    assert forward_batches == [8, 8, 8, 8]


def test_the_reference_refuses_a_noise_scale_measuring_step_in_one_line(cifar_root, monkeypatch):
    monkeypatch.setenv("SNGM_DATA", str(cifar_root))
    cfg = compose_config(["experiment=smoke", "device=cpu", "noise_scale_every=10"])
    with pytest.raises(UserError, match="noise_scale_every=null") as err:
        bench_train(cfg, steps=1, warmup=1, compare_reference=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["batch_sise=3", "batch_size=0"])
def test_bench_train_script_says_a_bad_override_in_one_line(override):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), "device=cpu", override],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("bench_train: error: ") and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_campaign.sh"])
def test_gpu_scripts_print_their_help_and_take_no_option_for_a_folder(tmp_path, script):
    # PY=false and a 1-second budget: a script that took --help for its OUT_DIR ends at once.
    env = {"PY": "false", "BUDGET_S": "1"}
    shown = run_command(["bash", ROOT / "scripts" / script, "--help"], tmp_path, env, timeout=60)
    assert (shown.returncode, shown.stderr) == (0, "")
    assert f"`bash scripts/{script} OUT_DIR [--dry-run]`" in shown.stdout.splitlines()[0]
    refused = run_command(["bash", ROOT / "scripts" / script, "--dryrun"], tmp_path, env, timeout=60)
    assert refused.returncode == 2 and "usage:" in refused.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode, sizes", [([], "batch_size=8192,512"), (["--dry-run"], "batch_size=400,25")])
def test_a_campaign_grids_batch_sizes_are_scaled_to_the_dry_runs_1000_images(tmp_path, mode, sizes):
    # PY=false and a 1-second budget: every sweep is recorded as skipped, with its command line.
    env = {"PY": "false", "BUDGET_S": "1", "GRIDS": "optimizer=msgd lr_factor=0.5 ; batch_size=8192,512 optimizer=sngm"}
    run_command(["bash", ROOT / "scripts" / "gpu_campaign.sh", tmp_path / "out", *mode], tmp_path, env, timeout=60)
    sweeps = [line for line in (tmp_path / "out" / "summary.md").read_text().splitlines() if line.startswith("Sweep")]
    assert len(sweeps) == 2 and f" {sizes} optimizer=sngm " in sweeps[1], sweeps
    assert f" batch_size={200 if mode else 4096} optimizer=msgd " in sweeps[0], sweeps  # BATCHES, the default


def test_a_campaign_grid_that_sets_a_fixed_setting_overrides_it(tmp_path):
    # Hydra takes a key's last value, so the fixed settings after the grid would win over the grid's.
    env = {"PY": "false", "BUDGET_S": "1",
           "GRIDS": "optimizer=msgd ; optimizer=sngm precision=fp32 channels_last=false compile=false"}
    run_command(["bash", ROOT / "scripts" / "gpu_campaign.sh", tmp_path / "out"], tmp_path, env, timeout=60)
    sweeps = [" ".join(line.split()) for line in (tmp_path / "out" / "summary.md").read_text().splitlines()
              if line.startswith("Sweep")]
    assert sweeps[0].endswith(" optimizer=msgd device=cuda precision=bf16 channels_last=true compile=true`"), sweeps
    assert sweeps[1].endswith(" optimizer=sngm precision=fp32 channels_last=false compile=false device=cuda`"), sweeps


def test_a_campaigns_summary_states_the_budget_it_was_given(tmp_path):
    # PY=false: the sweep and the report fail at once. The packing steps after the time box run until
    # 40 s after it; summary.md still states the time box.
    env = {"PY": "false", "BUDGET_S": "100", "GRIDS": "optimizer=msgd lr_factor=0.5"}
    run_command(["bash", ROOT / "scripts" / "gpu_campaign.sh", tmp_path / "out", "--dry-run"], tmp_path, env, timeout=60)
    assert "; mode: dry-run; budget 100 s, used " in (tmp_path / "out" / "summary.md").read_text()


def test_a_campaigns_runs_archive_leaves_out_what_a_run_killed_mid_write_left(tmp_path):
    # A run folder from an earlier call (CONTINUE_FROM) holds write_atomic's temporary files; PY=false:
    # the sweep and the report fail at once, and the archive step packs that folder as it is.
    run = tmp_path / "earlier" / "multirun" / "cifar10_short_2ep" / "0"
    run.mkdir(parents=True)
    for name in ("summary.json", "checkpoint.pt", "metrics.csv"):
        (run / name).write_text("{}")
        temporary_path(run / name).write_text("half")
    (tmp_path / "continue").mkdir()
    with tarfile.open(tmp_path / "continue" / "runs.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "earlier" / "multirun", "multirun")
    env = {"PY": "false", "BUDGET_S": "100", "CONTINUE_FROM": str(tmp_path / "continue"), "TMPDIR": str(tmp_path)}
    run_command(["bash", ROOT / "scripts" / "gpu_campaign.sh", tmp_path / "out", "--dry-run"], tmp_path, env, timeout=60)
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert names == {"cifar10_short_2ep", "0", "summary.json", "metrics.csv"}


def test_a_campaign_sweep_that_ignores_sigterm_still_leaves_its_runs_within_the_budget(tmp_path):
    # The device call's limit is bootstrap + BUDGET_S + 60 s: the campaign must end by BUDGET_S + 40 s
    # with runs.tar.gz even when a sweep misses its deadline and ignores SIGTERM (a stand-in for Python
    # that writes a run folder, then waits until it is killed). 65 s: the least budget a sweep starts with.
    (tmp_path / "python").write_text("""#!/bin/bash
case $1 in
    -) exit 0 ;;
    -m) mkdir -p multirun/cifar10_short_2ep/0 && echo '{}' > multirun/cifar10_short_2ep/0/summary.json
        trap '' TERM; while :; do sleep 1; done ;;
    *) exit 1 ;;
esac
""")
    (tmp_path / "python").chmod(0o755)
    env = {**os.environ, "PY": str(tmp_path / "python"), "BUDGET_S": "65"}
    begin = time.monotonic()
    done = subprocess.run(["bash", ROOT / "scripts" / "gpu_campaign.sh", tmp_path / "out", "--dry-run"], cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - begin < 65 + 40, done.stdout[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| sweep 1 (time-boxed) | TIMEOUT |" in summary and "| archive runs | ok |" in summary, summary
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as archive:
        assert "multirun/cifar10_short_2ep/0/summary.json" in archive.getnames()


# A stand-in for Python: the probes before the steps end at once (environment() succeeds, `-c "import xdist"`
# fails); every step waits until the test closes its stdin.
WAITING_PY = """#!/bin/sh
case $1 in -) exit 0 ;; -c) exit 1 ;; esac
read -r line
exit 1
"""


@pytest.mark.parametrize("stopped", [False, True], ids=["exits", "stopped-by-SIGTERM"])
@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_campaign.sh"])
def test_gpu_scripts_remove_their_scratch_folder_however_they_end(tmp_path, script, stopped):
    (tmp_path / "python").write_text(WAITING_PY)
    (tmp_path / "python").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PY": str(tmp_path / "python"), "TMPDIR": str(tmp_path / "tmp"), "BUDGET_S": "100"}
    process = subprocess.Popen(["bash", ROOT / "scripts" / script, tmp_path / "out", "--dry-run"], cwd=ROOT, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stopped:  # in its first step, as SLURM's or a device runner's time limit stops it
        log = tmp_path / "out" / "log.txt"
        wait_for(lambda: log.exists() and "=== " in log.read_text(), process, timeout=60)
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)  # closing stdin ends the steps still waiting
    assert process.returncode == (-signal.SIGTERM if stopped else 1), stderr  # bash ends by the signal itself
    assert list((tmp_path / "tmp").iterdir()) == []


def test_gpu_check_stops_pytest_at_its_limit_with_sigint(tmp_path):
    # pytest writes pytest.xml and its summary of the tests that ended on SIGINT, not on SIGTERM: a
    # stand-in for Python records the signal its pytest step gets at the step's limit, the budget's
    # end (a 10 s limit is the shortest a step runs with).
    (tmp_path / "python").write_text("""#!/bin/sh
case $1 in -) exit 0 ;; -c) exit 1 ;; esac
trap 'echo INT >> "$STOPPED_BY"; exit 1' INT
trap 'echo TERM >> "$STOPPED_BY"; exit 1' TERM
read -r line
""")
    (tmp_path / "python").chmod(0o755)
    env = {**os.environ, "PY": str(tmp_path / "python"), "BUDGET_S": "11", "ONLY": "^pytest"}
    stopped_by = tmp_path / "stopped_by"
    process = subprocess.Popen(["bash", ROOT / "scripts" / "gpu_check.sh", tmp_path / "out", "--dry-run"], cwd=ROOT,
                               env={**env, "STOPPED_BY": str(stopped_by)}, stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(stopped_by.exists, process, timeout=120)  # stdin stays open: the step waits until its limit stops it
    process.communicate(timeout=60)  # closing stdin ends the script's later calls of the stand-in
    assert stopped_by.read_text().split() == ["INT"]
    assert "| pytest -m gpu | TIMEOUT |" in (tmp_path / "out" / "summary.md").read_text()
