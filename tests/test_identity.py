"""The training identity of a run: one list of untrained keys for folder names, reruns and reports."""

from omegaconf import OmegaConf

from sngm_bench.config import compose_config
from sngm_bench.identity import ADDED_KEYS, UNTRAINED_KEYS, differences, training_config
from conftest import ROOT


def test_folder_names_leave_out_exactly_the_untrained_keys():
    config = OmegaConf.load(ROOT / "configs" / "config.yaml")
    assert list(config.hydra.job.config.override_dirname.exclude_keys) == ["experiment", "sweep", *UNTRAINED_KEYS]


def test_training_config_ignores_paths_and_logging_but_not_what_is_trained():
    base = training_config(compose_config([]))
    watched = training_config(compose_config(["log_every=7", "eval_batch_size=10", "dataset.root=/x", "name=y"]))
    assert differences(base, watched) == []
    changed = training_config(compose_config(["optimizer.lr=0.5", "seed=3"]))
    assert differences(base, changed) == [("optimizer.lr", 0.1, 0.5), ("seed", 0, 3)]
    assert "schedule.decay" in base and base["schedule.decay"] == "poly"  # enums as their names


def with_key(config: dict, dotted_key: str, value=None, remove: bool = False) -> dict:
    """A copy of the nested `config` with `dotted_key` set to `value`, or removed."""
    copy = OmegaConf.create(config)
    *parents, name = dotted_key.split(".")
    node = OmegaConf.select(copy, ".".join(parents)) if parents else copy
    assert name in node
    if remove:
        del node[name]
    else:
        node[name] = value
    return OmegaConf.to_container(copy)


def test_a_config_recorded_before_a_key_existed_trains_what_that_keys_old_value_trains():
    current = OmegaConf.to_container(compose_config([]), resolve=True, enum_to_str=True)
    for key in ADDED_KEYS:
        older = with_key(current, key, remove=True)  # as summary.json held it then
        assert differences(training_config(older), training_config(current)) == []
        current_changed = with_key(current, key, not ADDED_KEYS[key])
        assert differences(training_config(older), training_config(current_changed)) == [
            (key, ADDED_KEYS[key], not ADDED_KEYS[key])]
