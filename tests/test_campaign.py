"""Sweep presets (+sweep=NAME), the lr_factor grid, several runs at once, and the grid-edge flag."""

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import run_cli
from sngm_bench import report
from sngm_bench.cli import check_overrides, sweep_combinations
from sngm_bench.config import CONFIG_MODULE

CIFAR10_GRID = {
    "optimizer": {"sngm", "sngm_layer", "msgd", "lars", "lamb", "adamw", "nesterov"},
    "batch_size": {"128", "512", "2048", "8192", "16384"},
    "lr_factor": {"0.25", "0.5", "1", "2", "4"},
    "seed": {"0"},
}
PRESETS = {
    "cifar10_paper": (CIFAR10_GRID, {"epochs": 200, "model.name": "resnet20", "name": "cifar10_paper"}),
    "cifar10_fast": (CIFAR10_GRID, {"epochs": 6, "model.name": "resnet20", "name": "cifar10_fast"}),
    "imagenet_paper": ({"optimizer": {"sngm", "msgd", "lars", "lamb"}, "batch_size": {"1024", "8192", "32768"},
                        "lr_factor": {"0.5", "1", "2"}, "seed": {"0"}},
                       {"epochs": 90, "model.name": "resnet50", "dataset.name": "imagenet"}),
    "smoke": ({"optimizer": {"sngm", "msgd"}, "batch_size": {"64", "256"}, "lr_factor": {"0.5", "1", "2"},
               "seed": {"0"}}, {"epochs": 1, "model.name": "resnet8", "dataset.subset": 1024}),
}


def grid(overrides):
    """The sweep's runs as a set of {key: value} dicts (the preset's own selector left out)."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        runs = sweep_combinations(overrides)
    return [dict(o.split("=", 1) for o in run if not o.startswith("+sweep=")) for run in runs]


def product_size(axes):
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_its_grid_at_its_protocol(preset):
    axes, protocol = PRESETS[preset]
    runs = grid([f"+sweep={preset}"])
    assert len(runs) == product_size(axes)
    assert {key: {run[key] for run in runs} for key in axes} == axes
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={preset}", *(f"{k}={v}" for k, v in runs[0].items())])
    for key, value in protocol.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_the_command_line_wins_over_the_preset_grid():
    runs = grid(["+sweep=cifar10_paper", "seed=0,1,2", "batch_size=512"])
    assert len(runs) == len(CIFAR10_GRID["optimizer"]) * len(CIFAR10_GRID["lr_factor"]) * 3
    assert {run["batch_size"] for run in runs} == {"512"} and {run["seed"] for run in runs} == {"0", "1", "2"}


def test_a_glob_sweeps_the_options_it_matches_as_hydra_does():
    runs = grid(["+sweep=smoke", "optimizer=glob(l*)", "batch_size=64", "lr_factor=1"])
    assert [run["optimizer"] for run in runs] == ["lamb", "lars"]  # the basic sweeper's order: sorted options
    check_overrides(["optimizer=glob(*,exclude=[s*,l*])"], multirun=True)


def test_every_run_of_the_smoke_preset_composes():
    check_overrides(["+sweep=smoke"], multirun=True)  # as the command line checks every preset before it runs


def test_a_preset_without_multirun_is_refused():
    with pytest.raises(Exception, match="add -m"):
        check_overrides(["+sweep=smoke"], multirun=False)


def test_every_optimizer_gets_the_same_lr_trials_relative_to_its_own_lr():
    runs = grid(["+sweep=cifar10_paper"])
    trials = pd.DataFrame(runs).groupby(["optimizer", "batch_size"])["lr_factor"].agg(frozenset)
    assert trials.nunique() == 1
    factors = sorted(map(float, trials.iloc[0]))
    ratios = {round(b / a, 9) for a, b in zip(factors, factors[1:])}
    assert len(ratios) == 1 and factors[len(factors) // 2] == 1.0  # a log grid centred on the optimizer's own LR


def test_the_smoke_preset_runs_in_two_parallel_jobs_as_it_does_one_at_a_time(tmp_path, cifar_root):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the parallel extra")
    small = ["+sweep=smoke", "dataset.subset=512", "model.width=4", "lr_factor=1"]  # 4 runs
    env = {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}  # one thread per run in both sweeps
    sequential = run_cli(["-m", *small, f"hydra.sweep.dir={tmp_path / 'seq'}"], cwd=tmp_path, env_extra=env)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    parallel = run_cli(["-m", *small, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        f"hydra.sweep.dir={tmp_path / 'par'}"], cwd=tmp_path, env_extra=env)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    folders = sorted(p.parent.name for p in (tmp_path / "seq").glob("*/summary.json"))
    assert len(folders) == 4 and "batch_size=64,dataset.subset=512,lr_factor=1,model.width=4,optimizer=sngm,seed=0" in folders
    assert sorted(p.parent.name for p in (tmp_path / "par").glob("*/summary.json")) == folders
    for folder in folders:
        one, two = (json.loads((tmp_path / s / folder / "summary.json").read_text()) for s in ("seq", "par"))
        assert one["status"] == two["status"] == "completed"
        for key in ("final_test_acc", "best_test_acc", "final_train_loss", "peak_lr", "lr_factor"):
            assert one[key] == two[key], (folder, key)
        timing = ["epoch_seconds", "images_per_second"]
        metrics = [pd.read_csv(tmp_path / s / folder / "metrics.csv").drop(columns=timing) for s in ("seq", "par")]
        pd.testing.assert_frame_equal(*metrics)


def test_a_run_that_fails_in_a_joblib_worker_fails_the_sweep_command(tmp_path, cifar_root):
    # The failure happens in another process than the one that exits: it must still set the exit code.
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the parallel extra")
    sweep_dir = tmp_path / "sweep"
    overrides = ["experiment=smoke", "dataset.subset=512", "model.width=4", "epochs=1"]
    settings = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli(["-m", *overrides, "batch_size=64,0", *settings], cwd=tmp_path,
                     env_extra={"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"})
    (failed,) = sweep_dir.glob("batch_size=0*")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"sngm-bench: error: 1 run(s) of the sweep failed; see summary.json in {failed}")
    failure = json.loads((failed / "summary.json").read_text())
    assert failure["status"] == "failed"
    # The command that runs this combination alone, to run it again once its config is fixed.
    assert failure["command"] == shlex.join(["sngm-bench", "-m", *settings, *overrides, "batch_size=0"])
    (completed,) = sweep_dir.glob("batch_size=64*")
    assert json.loads((completed / "summary.json").read_text())["status"] == "completed"


def write_run(folder: Path, optimizer: str, batch_size: int, lr_factor: float, acc: float):
    """A hand-made run folder: the config keys and summary the report reads."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"optimizer": {"name": optimizer, "lr": 0.1}, "batch_size": batch_size, "seed": 0,
              "lr_factor": lr_factor}
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    summary = {"status": "completed", "final_test_acc": acc, "best_test_acc": acc, "final_train_loss": 1 - acc,
               "peak_lr": 0.1 * lr_factor}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_best_lr_at_the_grid_edge_is_flagged(tmp_path):
    # SNGM at batch 512: best inside the grid; MSGD at 512: best at the largest factor; at 128 one LR only.
    accs = {("sngm", 512): {0.5: 0.60, 1: 0.70, 2: 0.65}, ("msgd", 512): {0.5: 0.50, 1: 0.55, 2: 0.62},
            ("msgd", 128): {1: 0.7}}
    for (optimizer, batch), by_factor in accs.items():
        for factor, acc in by_factor.items():
            write_run(tmp_path / f"{optimizer}-{batch}-{factor}", optimizer, batch, factor, acc)
    markdown = report.write_report([tmp_path], tmp_path / "report", target_acc=0.5)
    table = report.accuracy_table(report.aggregate(report.collect_runs([tmp_path])))
    assert table.loc["sngm", "batch 512"] == "70.00 (1); lr_factor 1"
    assert table.loc["msgd", "batch 512"] == "62.00 (1); lr_factor 2 (grid edge)"
    assert table.loc["msgd", "batch 128"] == "70.00 (1); lr_factor 1"  # one LR: no grid, no edge
    assert "(grid edge): the chosen LR is the smallest or largest tried" in markdown
    cells = pd.read_csv(tmp_path / "report" / "aggregate.csv")
    assert cells.loc[cells["grid_edge"], ["series", "batch_size", "lr_factor"]].values.tolist() == [["msgd", 512, 2.0]]
