"""What a run trains: its config less the keys that only say where data lives, how the run is
watched or how its folder is handled.

Two configs with the same training config train the same run, so this one definition decides
both whether a rerun may continue a folder's run (`sngm_bench.run_folder`) and which run
folders the report counts as one run (`sngm_bench.report`). The same keys stay out of run-folder
names (`hydra.job.config.override_dirname.exclude_keys` in configs/config.yaml; a test keeps the
two lists equal).
"""

from __future__ import annotations

from typing import Any

# Config keys (and whole subtrees) that do not change what is trained.
UNTRAINED_KEYS = (
    "name",  # names the output folder only
    "device",  # where it computes; the hardware of every session is in summary.json
    "dataset.root", "dataset.download", "dataset.verify_checksums",  # where the data is and how it is checked
    "dataset.workers", "dataset.prefetch_factor", "dataset.gpu_decode",  # how the data is loaded
    "eval_batch_size", "log_every", "logger",  # how the run is evaluated and watched
    "overwrite", "max_minutes",  # what to do with the folder, when to stop for now
)


# Trained keys added after runs had been recorded, each with the value every run before it trained
# with: a config without the key reads as having that value, so that an older run folder is still
# continued or skipped by the same command, and counted as the same run by the report.
ADDED_KEYS = {
    "compile_optimizer": False,  # 2026-11-27
    "dataset.holdout_images": 0,  # 2026-11-28
}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def is_trained_key(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in UNTRAINED_KEYS)


def training_config(config) -> dict[str, Any]:
    """The flat `key: value` map of what `config` (a resolved DictConfig or plain dict) trains."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    return {**ADDED_KEYS, **{key: value for key, value in flatten(config).items() if is_trained_key(key)}}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key whose value differs; a missing key reads as None."""
    return [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]
