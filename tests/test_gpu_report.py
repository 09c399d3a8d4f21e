"""scripts/gpu_report.py's commit-check and commit-campaign: what a device call brought back lands
in results/ as docs/gpu.md says, on files shaped as gpu_check.sh and gpu_campaign.sh write them."""

import importlib.util
import json
import os
import shutil
import subprocess
import tarfile

import pandas as pd
import pytest

from conftest import ROOT
from sngm_bench import bench

spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "scripts" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)

H100 = "NVIDIA H100 80GB HBM3"
TORCH = "2.11.0+cu130"
RUNS = ROOT / "results" / "cifar10_short_15ep" / "runs"  # committed H200 runs: the templates of the tests' own
BEFORE_EVAL_FIX = "1cef4ef6907b94c62d2ca57b4c1dc4973819586c"  # the first GPU session's code: BatchNorm in training mode


def summary_md(title: str, device=H100, mode="gpu", date="2026-12-01 09:14") -> str:
    """summary.md's opening lines as gpu_lib.sh's write_summary writes them."""
    return (f"# {title}\n\n{date} UTC; device: {device}; torch {TORCH} (CUDA 13.0); Python 3.12.3; commit abc1234; "
            f"mode: {mode}; budget 480 s, used 200 s\n\n| step | status | seconds | limit (s) | command |\n|---|---|---|---|---|\n")


def check_output(folder, device=H100, mode="gpu", date="2026-12-01 09:14", optim_device=H100):
    """A gpu_check.sh output folder: summary, log, one benchmark row of each kind, the training run."""
    folder.mkdir()
    (folder / "summary.md").write_text(summary_md("GPU check (scripts/gpu_check.sh)", device, mode, date))
    (folder / "log.txt").write_text(f"=== bench_optim: ok after 15 s ({date})\n")
    bench.append_row(folder / "bench_train.csv", {"dataset": "imagenet", "model": "resnet50", "batch_size": 100,
                                                  "images_per_second": 2600.0, "device_name": device,
                                                  "torch_version": TORCH})
    for name in ("bench_optim.csv", "bench_optim_compile.csv"):
        pd.DataFrame([{"device": optim_device, "torch": TORCH, "optimizer": "sngm", "median_ms": 0.9}]).to_csv(
            folder / name, index=False)
    (folder / "train_summary.json").write_text(json.dumps({"device_name": device, "torch_version": TORCH}))
    for path in folder.iterdir():
        path.chmod(0o444)  # as the device tool hands them back
    return folder


def test_commit_check_files_a_call_under_its_gpu_and_date(tmp_path):
    folder = gpu_report.commit_check(check_output(tmp_path / "files"), tmp_path / "results")
    assert folder == tmp_path / "results" / "bench" / "h100-2026-12-01"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (tmp_path / "files").iterdir())
    assert all(os.access(path, os.W_OK) for path in folder.iterdir())
    assert pd.read_csv(folder / "bench_train.csv")["images_per_second"].tolist() == [2600.0]


def test_a_later_call_adds_its_rows_and_numbers_its_other_files(tmp_path):
    results = tmp_path / "results"
    gpu_report.commit_check(check_output(tmp_path / "first"), results)
    rerun = check_output(tmp_path / "rerun", date="2026-12-01 09:22")
    (rerun / "pytest.xml").write_text("<testsuites/>")  # a file the first call did not bring
    folder = gpu_report.commit_check(rerun, results)
    assert (folder / "summary_2.md").read_text() == (tmp_path / "rerun" / "summary.md").read_text()
    assert (folder / "log_2.txt").exists() and (folder / "train_summary_2.json").exists()
    assert (folder / "pytest_2.xml").exists() and not (folder / "pytest.xml").exists()  # named by its call
    assert len(pd.read_csv(folder / "bench_train.csv")) == 2 and len(pd.read_csv(folder / "bench_optim.csv")) == 2
    with pytest.raises(gpu_report.CommitError, match="already committed"):
        gpu_report.commit_check(tmp_path / "rerun", results)


@pytest.mark.parametrize("files, message", [
    (dict(mode="dry-run", device="no CUDA device"), "from a dry-run"),
    (dict(optim_device="x86_64 CPU, 1 threads"), "bench_optim.csv records"),
])
def test_commit_check_refuses_what_is_no_measurement_of_that_gpu(tmp_path, files, message):
    with pytest.raises(gpu_report.CommitError, match=message):
        gpu_report.commit_check(check_output(tmp_path / "files", **files), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_device_folder_names():
    assert [gpu_report.device_folder(name) for name in ("NVIDIA H200", H100, "NVIDIA H100 PCIe", "NVIDIA H200 NVL")] \
        == ["h200", "h100", "h100-pcie", "h200-nvl"]


def head_and_templates():
    """This checkout's commit, and the committed run folders that the campaign tests copy."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head, sorted(p.parent for p in RUNS.glob("*/summary.json"))


def copy_run(source, runs, name, **changes):
    """A run folder as the campaign archives it: a committed H200 run's records, with `changes` in its summary."""
    shutil.copytree(source, runs / name)
    summary = json.loads((runs / name / "summary.json").read_text())
    (runs / name / "summary.json").write_text(json.dumps({**summary, **changes}))


def campaign_output(folder, runs):
    """A gpu_campaign.sh output folder whose runs.tar.gz holds `runs` as multirun/cifar10_short_15ep."""
    folder.mkdir()
    (folder / "summary.md").write_text(summary_md("GPU campaign slice (scripts/gpu_campaign.sh)"))
    (folder / "log.txt").write_text("=== sweep 1 (time-boxed): ok after 80 s\n")
    with tarfile.open(folder / "runs.tar.gz", "w:gz") as archive:
        archive.add(runs, "multirun/cifar10_short_15ep")
    return folder


def test_commit_campaign_replaces_runs_evaluated_in_train_mode_and_joins_later_ones(tmp_path):
    head, templates = head_and_templates()
    committed = tmp_path / "results" / "cifar10_short_15ep" / "runs"
    committed.mkdir(parents=True)
    for run in templates[:3]:  # the first session's
        copy_run(run, committed, run.name, git_commit=BEFORE_EVAL_FIX)
    copy_run(templates[3], committed, "seed=1,earlier-campaign", git_commit=head)  # a campaign's, after the fix
    (committed.parent / "campaign_summary.md").write_text("the first campaign's\n")
    swept = tmp_path / "swept"
    swept.mkdir()
    copy_run(templates[0], swept, templates[0].name, git_commit=head)  # the same run, retrained
    copy_run(templates[4], swept, "lr_factor=0.0625", git_commit=head)
    copy_run(templates[5], swept, "lr_factor=0.125", git_commit=head, status="interrupted", final_test_acc=None)
    shutil.copyfile(RUNS / "multirun.yaml", swept / "multirun.yaml")

    runs, added, removed, left_out = gpu_report.commit_campaign(campaign_output(tmp_path / "files", swept),
                                                                tmp_path / "results")
    assert runs == committed
    assert added == sorted([templates[0].name, "lr_factor=0.0625"])
    assert removed == [templates[1].name, templates[2].name]
    assert left_out == ["lr_factor=0.125"]
    assert sorted(p.parent.name for p in runs.glob("*/summary.json")) == sorted(added + ["seed=1,earlier-campaign"])
    assert json.loads((runs / templates[0].name / "summary.json").read_text())["git_commit"] == head
    assert (runs / templates[0].name / ".hydra" / "config.yaml").exists() and (runs / "multirun.yaml").exists()
    # An earlier campaign's run stayed, so its record stays beside this one's.
    assert (committed.parent / "campaign_summary.md").read_text() == "the first campaign's\n"
    assert (committed.parent / "campaign_summary_2.md").read_text().startswith("# GPU campaign slice")


def test_a_campaign_that_replaces_every_run_replaces_their_record(tmp_path):
    head, templates = head_and_templates()
    committed = tmp_path / "results" / "cifar10_short_15ep" / "runs"
    committed.mkdir(parents=True)
    for run in templates:  # all of them the first session's
        copy_run(run, committed, run.name, git_commit=BEFORE_EVAL_FIX)
    (committed.parent / "campaign_log.txt").write_text("the first campaign's\n")
    swept = tmp_path / "swept"
    swept.mkdir()
    copy_run(templates[0], swept, "lr_factor=0.0625", git_commit=head)
    runs, added, removed, _ = gpu_report.commit_campaign(campaign_output(tmp_path / "files", swept),
                                                         tmp_path / "results")
    assert [p.parent.name for p in runs.glob("*/summary.json")] == added == ["lr_factor=0.0625"]
    assert removed == [run.name for run in templates]
    assert (committed.parent / "campaign_log.txt").read_text().startswith("=== sweep 1")
    assert not (committed.parent / "campaign_log_2.txt").exists()
    (tmp_path / "files" / "runs.tar.gz").unlink()  # a call cut before its archives
    with pytest.raises(gpu_report.CommitError, match="no runs.tar.gz"):
        gpu_report.commit_campaign(tmp_path / "files", tmp_path / "results")


def test_compiled_optimizer_rows_are_paired_with_their_eager_step_and_priced(tmp_path):
    # bench_optim --compile's CSV: the baselines and eager steps, then the compiled ones, one process.
    common = {"device": H100, "torch": TORCH, "steps": 50, "parameter_set": "resnet50"}
    rows = pd.DataFrame([{**common, "optimizer": name, "median_ms": ms, "vs_sgd_fused": ms / 0.7, "warmup_ms": warmup}
                         for name, ms, warmup in [("sgd_fused", 0.7, 5.0), ("lars", 1.5, 10.0), ("lamb", 3.3, 10.0),
                                                  ("lars+compile", 1.0, 5010.0), ("lamb+compile", 3.5, 9010.0)]])
    payoff = gpu_report.compile_payoff(rows)
    assert payoff["optimizer"].tolist() == ["lars+compile", "lamb+compile"]
    assert payoff["eager_ms"].tolist() == [1.5, 3.3] and payoff["compiled_ms"].tolist() == [1.0, 3.5]
    assert payoff["vs_sgd_fused"].tolist() == [1.0 / 0.7, 3.5 / 0.7]
    assert payoff["compile_ms"].tolist() == [5000.0, 9000.0]
    assert payoff["break_even_steps"].tolist() == ["10,000", "none"]  # 5000 ms / 0.5 ms saved per step
    rows.to_csv(tmp_path / "bench_optim_compile.csv", index=False)
    assert "| resnet50 | lars+compile | 1.5 | 1 | 1.43 | 5e+03 | 10,000 |" in gpu_report.tables(tmp_path)
