"""Optimizers from one YAML file (`_target_`): built with the benchmark's parameter groups, checked
before any run starts, and carried through a real sweep into the report and `sngm_bench.collect`;
and the two baselines shipped that way (adamw, nesterov)."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import sngm_bench
from conftest import run_cli
from sngm_bench import report
from sngm_bench.cli import check_overrides
from sngm_bench.config import compose_config
from sngm_bench.errors import UserError
from sngm_bench.optim import build_optimizer
from sngm_bench.records import read_summary

TINY = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100"]


def user_configs(tmp_path, **files) -> list[str]:
    """A user's config folder with `optimizer/NAME.yaml` files; the override that puts it on the search path."""
    folder = tmp_path / "my_configs" / "optimizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{folder.parent}]"]


def small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_a_two_line_file_is_built_with_the_benchmark_defaults(tmp_path):
    search = user_configs(tmp_path, myadam="_target_: torch.optim.Adam\nlr: 1e-3\n")
    cfg = compose_config([*search, "optimizer=myadam"]).optimizer
    assert cfg.weight_decay == 5e-4 and cfg.decay_norm_and_bias is False  # recorded in the run's config
    optimizer = build_optimizer(cfg, small_model(), lr=0.004)
    assert type(optimizer) is torch.optim.Adam
    # Weights decay; biases and BatchNorm parameters do not, as for the built-in optimizers.
    assert [(g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [(5e-4, 2), (0.0, 4)]
    assert {g["lr"] for g in optimizer.param_groups} == {0.004}


def test_class_arguments_and_benchmark_keys_are_split(tmp_path):
    search = user_configs(tmp_path, amsgrad="_target_: torch.optim.Adam\nlr: 1e-3\nbetas: [0.8, 0.9]\n"
                                            "amsgrad: true\nweight_decay: 0\ndecay_norm_and_bias: true\n")
    cfg = compose_config([*search, "optimizer=amsgrad"]).optimizer
    optimizer = build_optimizer(cfg, small_model(), lr=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0]  # equal settings share one group
    assert optimizer.defaults["amsgrad"] is True and tuple(optimizer.defaults["betas"]) == (0.8, 0.9)


def test_a_class_argument_the_file_lacks_is_pointed_to_its_plus_form(tmp_path):
    search = user_configs(tmp_path, myadam="_target_: torch.optim.Adam\nlr: 1e-3\n")
    with pytest.raises(UserError, match=r"to pass it to torch\.optim\.Adam, add it with \+optimizer\.betas=\.\.\.$"):
        check_overrides([*search, "optimizer=myadam", "optimizer.betas=[0.8,0.9]"], multirun=False)
    check_overrides([*search, "optimizer=myadam", "+optimizer.betas=[0.8,0.9]"], multirun=False)
    # An argument the class does not take is not pointed to its plus form, which would only fail next.
    with pytest.raises(UserError, match=r"'optimizer' has .*; Adam takes no argument 'momentum'; it takes lr, betas"):
        check_overrides([*search, "optimizer=myadam", "optimizer.momentum=0.9"], multirun=False)


def test_shipped_baselines():
    adamw = compose_config(["optimizer=adamw"]).optimizer
    optimizer = build_optimizer(adamw, small_model(), lr=adamw.lr)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == adamw.weight_decay
    nesterov = compose_config(["optimizer=nesterov"]).optimizer
    optimizer = build_optimizer(nesterov, small_model(), lr=nesterov.lr)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize("text, message", [
    ("_target_: torch.optim.Adamm\nlr: 1e-3\n",
     "optimizer._target_=torch.optim.Adamm cannot be imported: module 'torch.optim' has no attribute 'Adamm'"),
    ("_target_: my_missing_package.Opt\nlr: 1e-3\n",
     "optimizer._target_=my_missing_package.Opt cannot be imported: No module named 'my_missing_package'"),
    ("_target_: torch.nn.Linear\nlr: 1e-3\n", "optimizer._target_=torch.nn.Linear is not a torch.optim.Optimizer class"),
    ("_target_: torch.optim.Adam\nlr: 1e-3\nbetaz: [0.9, 0.99]\n",
     "optimizer.betaz: Adam takes no argument 'betaz'; it takes lr, betas, eps, weight_decay"),
    ("_target_: torch.optim.Adam\nbetas: [0.9, 0.99]\n", "optimizer.lr is missing"),
    ("_target_: torch.optim.Adam\nlr: 1e-3\nweight_decay: lots\n", "bad value for 'optimizer.weight_decay'"),
    ("_target_: torch.optim.LBFGS\nlr: 1\n", "LBFGS takes no weight_decay; set optimizer.weight_decay=0"),
])
def test_bad_target_files_fail_in_one_line_before_any_run(tmp_path, text, message):
    search = user_configs(tmp_path, bad=text)
    with pytest.raises(UserError) as err:
        check_overrides([*search, "optimizer=msgd,bad"], multirun=True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_value_the_class_rejects_is_one_line_at_run_time(tmp_path, cifar_root):
    search = user_configs(tmp_path, adam="_target_: torch.optim.Adam\nlr: 1e-3\nbetas: [1.5, 0.9]\n")
    result = run_cli([*TINY, *search, "optimizer=adam"], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sngm-bench: error: optimizer: Adam: Invalid beta parameter at index 0: 1.5"]


def test_arguments_the_class_refuses_together_are_one_line(tmp_path):
    # torch.optim refuses some combinations with a RuntimeError, not a ValueError.
    cfg = compose_config(["optimizer=adamw", "+optimizer.foreach=true", "+optimizer.fused=true"]).optimizer
    with pytest.raises(UserError, match="^optimizer: AdamW: `fused` and `foreach` cannot be `True` together.$"):
        build_optimizer(cfg, small_model(), lr=1e-3)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cifar_root):
    """A 2-run sweep of a YAML-only optimizer from a user's folder, beside msgd: its multirun folder."""
    tmp_path = tmp_path_factory.mktemp("user")
    search = user_configs(tmp_path, myadam="_target_: torch.optim.Adam\nlr: 1e-3\n")
    result = run_cli(["-m", *TINY, *search, "optimizer=myadam,msgd"], cwd=tmp_path,
                     env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr
    return tmp_path / "multirun"


def test_a_yaml_only_optimizer_sweeps_and_gets_its_own_report_row(sweep, tmp_path):
    runs = report.collect_runs([sweep])
    assert sorted(runs["optimizer"]) == ["msgd", "myadam"] and set(runs["status"]) == {"completed"}
    myadam = runs[runs["optimizer"] == "myadam"].iloc[0]
    assert myadam["weight_decay"] == 5e-4 and myadam["peak_lr"] == pytest.approx(1e-3 * 100 / 128)
    report.write_report([sweep], tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "table.csv", index_col=0)
    assert sorted(table.index) == ["msgd", "myadam"]  # a row each, labelled by the config's name


def test_collect_reads_a_sweep_one_row_per_run(sweep):
    runs = sngm_bench.collect(sweep)
    assert len(runs) == 2 and sorted(runs["optimizer"]) == ["msgd", "myadam"]
    assert all(summary["final_test_acc"] == row["final_test_acc"]
               for summary, (_, row) in zip(map(read_summary, map(Path, runs["run_dir"])), runs.iterrows()))
    pd.testing.assert_frame_equal(runs, sngm_bench.collect([str(sweep)]))  # a path, or a list of them
