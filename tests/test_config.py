"""Config composition over every group option, and the one-line errors for bad overrides."""

import itertools

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sngm_bench.cli import check_overrides
from sngm_bench.config import CONFIG_MODULE, compose_config
from sngm_bench.errors import UserError
from conftest import ROOT, run_cli

CONFIGS = ROOT / "configs"


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_groups_hold_the_promised_options():
    assert options("dataset") == ["cifar10", "imagenet"]
    assert options("model") == ["resnet110", "resnet20", "resnet32", "resnet44", "resnet50", "resnet56"]
    assert {"sngm", "msgd"} <= set(options("optimizer"))
    assert options("schedule") == ["constant", "cosine", "poly", "step"]
    assert {"smoke", "paper_cifar10"} <= set(options("experiment"))


def compose_all(combinations):
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for overrides in combinations:
            cfg = compose("config", overrides=overrides)
            OmegaConf.resolve(cfg)  # every interpolation resolves
            yield overrides, cfg


def every_pair(groups: list[str]) -> list[list[str]]:
    """Overrides choosing one option of each group such that every two options of two groups meet in
    some combination (a covering array, built greedily): a clash between two groups' options, an
    interpolation one makes into a key the other lacks, shows up in a few dozen composes where the
    full product takes hundreds (Hydra composes a few a second)."""
    def pairs(combination):
        return set(itertools.combinations(combination, 2))

    choices = [[f"{group}={option}" for option in options(group)] for group in groups]
    product = [list(combination) for combination in itertools.product(*choices)]
    uncovered = set().union(*map(pairs, product))
    chosen = []
    while uncovered:
        best = max(product, key=lambda combination: len(pairs(combination) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def test_every_two_group_options_compose_and_resolve_together():
    groups = ["dataset", "model", "optimizer", "schedule"]
    combinations = every_pair(groups)
    assert len(combinations) < 2 * len(options("model")) * len(options("optimizer"))  # far fewer than the product
    variants = {"sngm_layer": "sngm"}  # option -> the optimizer it configures
    for overrides, cfg in compose_all(combinations):
        dataset, optimizer, schedule = (o.split("=")[1] for o in (overrides[0], overrides[2], overrides[3]))
        assert [cfg.dataset.name, cfg.optimizer.name, cfg.schedule.decay.value] == [
            dataset, variants.get(optimizer, optimizer), schedule]
        assert cfg.optimizer.lr > 0 and cfg.batch_size > 0 and cfg.epochs > 0


def test_every_experiment_composes_with_every_optimizer_and_every_schedule():
    # An experiment pins its model; the other groups stay free.
    names = {cfg.name for _, cfg in compose_all(every_pair(["experiment", "optimizer", "schedule"]))}
    assert names == set(options("experiment"))


def test_model_names_follow_depth():
    assert compose_config(["model=resnet56"]).model.name == "resnet56"
    assert compose_config(["model.depth=8"]).model.name == "resnet8"


def test_data_root_defaults_to_env(monkeypatch):
    monkeypatch.setenv("SNGM_DATA", "/some/where")
    assert compose_config().dataset.root == "/some/where"
    monkeypatch.delenv("SNGM_DATA")
    assert compose_config().dataset.root == "./data"


@pytest.mark.parametrize("overrides, multirun, expected", [
    (["batch_size=abc"], False, "bad value for 'batch_size': Value 'abc' of type 'str' could not be converted to Integer"),
    (["optimizer=adam"], False, "unknown optimizer 'adam': choose one of "),
    (["optimizer.lrr=1"], False, "unknown key 'optimizer.lrr': 'optimizer' has "),
    (["lrr=1"], False, "unknown key 'lrr': the top level has batch_size"),
    (["device=gpu"], False, "bad value for 'device': Invalid value 'gpu', expected one of [auto, cpu, cuda]"),
    (["precision=fp16"], False, "expected one of [fp32, bf16]"),
    (["schedule=linear"], False, "unknown schedule 'linear': choose one of constant, cosine, poly, step"),
    (["schedule.decay=exp"], False, "expected one of [constant, poly, cosine, step]"),
    (["model=vgg"], False, "unknown model 'vgg'"),
    (["optimizer=sngm,msgd"], False, "is a sweep: add -m"),
    (["batch_size=[1,"], False, "cannot parse the override batch_size=[1,: no viable alternative"),
    (["smoke"], False, "cannot parse the override smoke: an override is key=value or group=option"),  # no '='
    (["dataset.root=~/data"], False,
     """cannot parse the override dataset.root=~/data: a value with characters such as ~, # or = goes in quotes: """
     """'dataset.root="~/data"'"""),
    (["seed=1", "hydra.run.dir=out/a=b"], False, """cannot parse the override hydra.run.dir=out/a=b: """
                                                 """a value with characters such as ~, # or = goes in quotes: 'hydra.run.dir="out/a=b"'"""),
    (["-m", "optimizer=sngm,msgd", "optimizer.nesterov=true"], True,
     "unknown key 'optimizer.nesterov'"),
    (["optimizer.momentun=0.5"], False, "; did you mean 'optimizer.momentum'?"),
    (["lr=0.5"], False, "; did you mean 'optimizer.lr'?"),
    (["optimzer=sngm"], False, "; did you mean 'optimizer'?"),  # a top-level key, not a key named like it
    (["experimnt=smoke"], False, "; did you mean 'experiment'?"),  # a group that is no key of the config
    (["optimizer=msdg"], False, "choose one of adamw, lamb, lars, msgd, nesterov, sngm, sngm_layer; did you mean 'msgd'?"),
    # `+` adds a key Hydra would otherwise refuse, and nothing reads it: the typed schema refuses it instead.
    (["+optimizer.lrr=0.1"], False, "unknown key 'optimizer.lrr': 'optimizer' has "),
    (["+epoch=3"], False, "unknown key 'epoch': the top level has batch_size"),
    # Keys added beside it are no keys the config has: the list leaves them out.
    (["+optimizer.lrr=0.1", "+optimizer.zzz=1"], False, "weight_decay_mode; did you mean 'optimizer.lr'?"),
    (["+epoch=3", "+zzz=1"], False, "sync_batch_norm; did you mean 'epochs'?"),
    (["-m", "optimizer=msgd,lamb", "++schedule.powr=1"], True, "; did you mean 'schedule.power'?"),
    (["-m", "sweep=smoke"], True, "add it with +sweep=smoke"),  # a preset is added, not overridden
    (["hydra.searchpath=[file://no_such_folder]", "optimizer=myadam"], False,
     "hydra.searchpath: no config folder no_such_folder (a relative path is read from the working directory, "),
    # Resolved before any run starts, as the run resolves it: else a traceback in the run.
    (["dataset.root=${oc.env:SNGM_NO_SUCH_VARIABLE}"], False,
     "bad value for 'dataset.root': KeyError raised while resolving interpolation: \"Environment variable "
     "'SNGM_NO_SUCH_VARIABLE' not found\""),
    # Every experiment (and name) has its sweep folder, where the sweep keeps its lists of started and failed runs.
    (["-m", "optimizer=glob(zzz*)"], True, "the sweep optimizer=glob(zzz*) has no runs: a range or a glob(...) "),
    (["-m", "experiment=smoke,paper_cifar10"], True, "the sweep's runs would go to 2 sweep folders ("),
    # In one folder, experiments that share their other overrides would share run folders.
    (["-m", "hydra.sweep.dir=gathered", "experiment=smoke,paper_cifar10"], True,
     "train differently but share the run folder "),
    (["schedule.decay=step", f"schedule.milestones=[{','.join(f'{i / 1000:.3f}' for i in range(1, 60))}]"], False,
     "bytes, more than a file system allows (255): name the folder yourself with hydra.run.dir=..."),
])
def test_bad_overrides_name_key_and_allowed_values(overrides, multirun, expected):
    overrides = [o for o in overrides if o != "-m"]
    with pytest.raises(UserError) as err:
        check_overrides(overrides, multirun)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    if "'optimizer' has" in expected:
        assert "lr, momentum" in str(err.value)


def test_good_sweep_passes():
    check_overrides(["optimizer=sngm,msgd", "batch_size=128,1024", "seed=range(2)"], multirun=True)
    check_overrides(["+sweep=smoke"], multirun=True)
    check_overrides(["+sweep=smoke"], multirun=False, printing=True)  # --cfg job: a preset's config, printed
    for subdir in ("${hydra.job.num}", "${hydra.job.id}", "at_${now:%H%M%S}"):  # folders named by the user's own scheme
        check_overrides([f"hydra.sweep.subdir={subdir}", "seed=0,1"], multirun=True)
    check_overrides(["optimizer=adamw", "+optimizer.amsgrad=true"], multirun=False)  # a `_target_` class's argument


@pytest.mark.parametrize("args", [["batch_size=abc"], ["optimizer=adam"], ["optimizer.lrr=1"]])
def test_command_line_prints_one_line_and_exits_2(args, tmp_path):
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("sngm-bench: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, message", [
    (["epochs=1", "-m", "optimizer=sngm,msgd"], "optimizer=sngm,msgd: overrides on both sides of an option; put the "
                                                "options (-m, --cfg job, ...) first, then every override"),
    (["--cfg", "jobb"], "argument --cfg/-c: invalid choice: 'jobb' (choose from 'job', 'hydra', 'all')"),
    (["--epochs", "1"], "unknown option --epochs; sngm-bench --help lists the options"),
])
def test_options_argparse_refuses_are_one_line_and_leave_no_folder(args, message, tmp_path):
    # Hydra's own report of these printed its whole usage (9 lines), after the sweep folder was made.
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"sngm-bench: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_value_errors_found_at_run_time_are_one_line_too(tmp_path, cifar_root):
    result = run_cli(["batch_size=0", f"dataset.root={cifar_root}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sngm-bench: error: batch_size=0 must be a positive integer"]
    result = run_cli([f"dataset.root={tmp_path / 'nowhere'}", "epochs=1"], cwd=tmp_path)
    assert result.returncode == 2
    assert "CIFAR-10 not found" in result.stderr and "dataset.download=true" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_the_tools_own(tmp_path):
    """--help describes the tool, lists the groups a user picks (not schema/*), examples and results."""
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("sngm-bench: train ResNets") and "powered by Hydra" not in out
    for group in ["dataset", "experiment", "model", "optimizer", "schedule"]:
        options = sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))
        assert f"  {group}: {', '.join(options)}\n" in out
    assert "schema" not in out
    examples = [line for line in out.splitlines() if line.startswith("  sngm-bench ")]
    assert len(examples) == 5
    assert "multirun/<name>/<overrides>" in out and "sweep_smoke for +sweep=smoke" in out and "sngm-bench-report" in out
    assert not (tmp_path / "outputs").exists()


def test_version_names_sngm_bench_torch_and_hydra(tmp_path):
    from importlib import metadata

    result = run_cli(["--version"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == (f"sngm-bench {metadata.version('sngm-bench')} (torch "
                                     f"{metadata.version('torch')}, hydra-core {metadata.version('hydra-core')})")
