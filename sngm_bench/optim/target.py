"""Optimizers named by `_target_`: any importable `torch.optim.Optimizer` class, from one YAML file.

A file `configs/optimizer/NAME.yaml` (or in a folder on `hydra.searchpath`) that holds `_target_`
has no schema; its keys split in two. The benchmark's own keys, the fields of
`config.OptimizerConfig` (`lr`, `base_batch_size`, `scaling`, `weight_decay`,
`decay_norm_and_bias`, optionally `name`), are typed here and used as for every optimizer: `lr`
is the peak LR at `base_batch_size`, scaled by the `scaling` rule and scheduled; `weight_decay` goes into the parameter groups, biases and normalization
parameters excluded unless `decay_norm_and_bias`. Every other key is a keyword argument of the
class, checked against its signature before anything is built, so a typo is one line, not a
traceback.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngm_bench.config import OptimizerConfig
from sngm_bench.errors import UserError

TARGET = "_target_"
OWN_KEYS = frozenset(f.name for f in fields(OptimizerConfig))


def is_target(cfg: DictConfig) -> bool:
    """Whether an optimizer config names its class by `_target_` (rather than a built-in `name`)."""
    return TARGET in cfg


@dataclass(frozen=True)
class TargetOptimizer:
    cls: type
    settings: DictConfig  # the benchmark's keys, typed as OptimizerConfig
    kwargs: dict  # the class's keyword arguments

    def build(self, param_groups: list[dict], lr: float):
        try:
            return self.cls(param_groups, lr=lr, **self.kwargs)
        except (TypeError, ValueError, RuntimeError) as err:  # torch.optim refuses arguments with these
            raise UserError(f"optimizer: {self.cls.__name__}: {err}") from None


def _import_class(path: str) -> type:
    import torch

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:  # ValueError: no module part
        raise UserError(f"optimizer._target_={path} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"optimizer._target_={path} is not a torch.optim.Optimizer class")
    return cls


def _takes(cls: type, key: str) -> bool:
    """Whether the constructor of `cls` takes the keyword argument `key` (by name or **kwargs)."""
    parameters = inspect.signature(cls).parameters
    return key != "params" and (key in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                                         for p in parameters.values()))


def _refusal(cls: type, key: str) -> str | None:
    """Why `cls` refuses the keyword argument `key` ("Adam takes no argument 'momentum'; it takes lr,
    betas, ..."), or None if it takes it."""
    if _takes(cls, key):
        return None
    accepted = [name for name in inspect.signature(cls).parameters if name != "params"]
    return f"{cls.__name__} takes no argument '{key}'; it takes {', '.join(accepted)}"


def argument_hint(path: str, key: str) -> str:
    """For `optimizer.<key>`, which the `_target_` file at `path` does not set: how to pass it to
    the class (`+optimizer.<key>=...`), or that the class takes no such argument."""
    try:
        refusal = _refusal(_import_class(path), key)
    except UserError:  # the class cannot be imported: the run says so in its own line
        return ""
    return f"; {refusal}" if refusal else f"; to pass it to {path}, add it with +optimizer.{key}=..."


def _check_kwargs(cls: type, kwargs: dict, weight_decay: float) -> None:
    for key in kwargs:
        if refusal := _refusal(cls, key):
            raise UserError(f"optimizer.{key}: {refusal}")
    if not _takes(cls, "lr"):
        raise UserError(f"optimizer._target_: {cls.__name__} takes no 'lr', which the LR schedule sets")
    if weight_decay and not _takes(cls, "weight_decay"):
        raise UserError(f"optimizer.weight_decay={weight_decay}: {cls.__name__} takes no weight_decay; "
                        "set optimizer.weight_decay=0")


def resolve(cfg: DictConfig) -> TargetOptimizer:
    """The class, typed benchmark keys and checked keyword arguments of a `_target_` optimizer
    config; a UserError names the key at fault."""
    items = OmegaConf.to_container(cfg, resolve=True)
    own = {key: value for key, value in items.items() if key in OWN_KEYS}
    kwargs = {key: value for key, value in items.items() if key not in OWN_KEYS and key != TARGET}
    try:
        settings = OmegaConf.merge(OmegaConf.structured(OptimizerConfig(name=str(items[TARGET]))), own)
    except OmegaConfBaseException as err:
        raise UserError(f"bad value for 'optimizer.{err.key}': {str(err).splitlines()[0]}") from None
    if OmegaConf.is_missing(settings, "lr"):
        raise UserError("optimizer.lr is missing: a _target_ optimizer needs lr, the peak LR at "
                        "optimizer.base_batch_size")
    cls = _import_class(str(items[TARGET]))
    _check_kwargs(cls, kwargs, settings.weight_decay)
    return TargetOptimizer(cls, settings, kwargs)
