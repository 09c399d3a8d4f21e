"""Typed schema of every config group, registered in Hydra's ConfigStore.

Each YAML option in `configs/<group>/` starts from one of these dataclasses (its defaults list
names `/schema/<group>/<kind>`), so a misspelled key or a value of the wrong type fails at
composition time; `sngm_bench.cli` turns that failure into a one-line message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, List, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from sngm_bench.errors import UserError
from sngm_bench.identity import flatten

CONFIG_MODULE = "sngm_bench.configs"
DATA_ROOT = "${oc.env:SNGM_DATA,./data}"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Logger(Enum):
    none = "none"
    tensorboard = "tensorboard"


class Decay(Enum):
    constant = "constant"
    poly = "poly"
    cosine = "cosine"
    step = "step"


class Scaling(Enum):
    none = "none"
    linear = "linear"
    sqrt = "sqrt"


@dataclass
class CIFAR10Config:
    name: str = "cifar10"
    root: str = DATA_ROOT  # holds cifar-10-batches-py/
    download: bool = False
    subset: Optional[int] = None  # class-balanced training subset of this many images
    holdout_images: int = 0  # of the training images (or subset), a fixed class-balanced split not trained on
    verify_checksums: bool = True  # md5 against md5sums.txt beside the files, else the official list


@dataclass
class ImageNetConfig:
    name: str = "imagenet"
    root: str = DATA_ROOT  # holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG
    subset: Optional[int] = None  # class-balanced training subset of this many images
    holdout_images: int = 0  # of the training images (or subset), a fixed class-balanced split not trained on
    image_size: int = 224  # training crop and evaluation center crop, in pixels
    workers: int = 8  # DataLoader worker processes per training process
    prefetch_factor: int = 4  # batches each worker prepares ahead
    gpu_decode: bool = False  # decode JPEGs on the GPU (workers only read the files)


@dataclass
class CifarResNetConfig:
    name: str = "resnet${.depth}"
    depth: int = 20  # 6n+2
    width: int = 16  # channels of the first stage; stages use width, 2*width, 4*width
    batch_norm: bool = True  # false: no normalization layers (batch-independent, for exactness tests)


@dataclass
class TorchvisionResNetConfig:
    name: str = "resnet50"
    arch: str = "resnet50"  # a torchvision ResNet constructor (sngm_bench.models.torchvision_resnets)
    zero_init_residual: bool = False  # zero gamma of each block's last BN (Goyal et al. 2017, Sec. 5.1)


@dataclass
class OptimizerConfig:
    """What every optimizer config has."""

    name: str = MISSING
    lr: float = MISSING  # peak LR at base_batch_size
    # The batch-size scaling rule of lr: each optimizer config states its rule and why.
    base_batch_size: int = 128  # lr is the peak LR at this batch size
    scaling: Scaling = Scaling.linear  # peak LR = lr * lr_factor * scale(batch_size / base_batch_size)
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # false: no weight decay on biases and normalization parameters


# The defaults of the keys every optimizer config has, merged before the optimizer's own file, so a
# `_target_` file (which has no schema) gets them too; a schema's own defaults take precedence.
COMMON_OPTIMIZER_DEFAULTS = {f.name: f.default for f in fields(OptimizerConfig) if f.default is not MISSING}


@dataclass
class MomentumConfig(OptimizerConfig):
    momentum: float = 0.9


@dataclass
class SNGMConfig(MomentumConfig):
    name: str = "sngm"
    eps: float = 1e-12  # floor of the gradient norm, only to keep a zero gradient finite
    weight_decay_mode: str = "l2"  # l2: folded into g before the norm; decoupled: w -= lr*wd*w outside it
    norm: str = "global"  # global: one norm over all parameters (the paper's); layer: one per tensor


@dataclass
class MSGDConfig(MomentumConfig):
    name: str = "msgd"
    nesterov: bool = False


@dataclass
class LARSConfig(MomentumConfig):
    name: str = "lars"
    adapt_norm_and_bias: bool = False  # false: biases and normalization parameters get trust ratio 1
    trust_coefficient: float = 1e-3  # eta in trust = eta*||w|| / (||g|| + wd*||w|| + eps)
    eps: float = 0.0


@dataclass
class LAMBConfig(OptimizerConfig):
    name: str = "lamb"
    weight_decay: float = 0.01
    adapt_norm_and_bias: bool = False  # false: biases and normalization parameters get trust ratio 1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    max_trust_ratio: Optional[float] = None  # clamp of trust = ||w||/||r||; null: none
    max_grad_norm: Optional[float] = None  # global gradient clipping before the moments; null: none


@dataclass
class ScheduleConfig:
    decay: Decay = Decay.poly
    warmup_epochs: float = 5.0
    power: float = 2.0  # poly: (1 - progress) ** power
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of training
    gamma: float = 0.1  # step: LR factor at each milestone


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: ScheduleConfig = MISSING
    name: str = "default"  # names the output folder; experiments set their own
    batch_size: int = 128  # global: images per optimizer step
    epochs: int = 200
    lr_factor: float = 1.0  # multiplies optimizer.lr: one relative LR grid serves every optimizer
    seed: int = 0
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    channels_last: bool = False
    compile: bool = False  # torch.compile of the model
    compile_optimizer: bool = False  # SNGM's, LARS's, LAMB's step compiled too (sngm_bench/optim/compiled.py)
    eval_batch_size: int = 1000
    log_every: int = 50  # steps between host syncs: progress bar, divergence and stop checks
    logger: Logger = Logger.none  # tensorboard: live curves in the run folder (the tensorboard extra)
    # Large batch: batch_size is split over processes (torchrun / SLURM), then into micro-batches.
    micro_batch_size: Optional[int] = None  # images per forward pass per process; null: see below
    max_micro_batch_size: Optional[int] = None  # null micro_batch_size: largest divisor up to this
    sync_batch_norm: bool = False  # BatchNorm statistics over all processes' micro-batches
    noise_scale_every: Optional[int] = None  # steps between gradient-noise-scale measurements; null: off
    # Run folder: a finished run is never trained twice, an unfinished one continues (run_folder.py).
    overwrite: bool = False  # train from scratch, replacing whatever the folder holds
    max_minutes: Optional[float] = None  # stop (like SIGTERM) this long after the command started; sweeps share it


def check_values(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express; each failure names the key and the fix.
    A float that is nan or infinite passes every range check below (nan compares false with
    anything) and would end in a traceback or a run recorded as diverged: no key means either.
    An integer beyond torch's 64 bits (a seed, a batch size) overflows in torch with a traceback."""
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        for number in value if isinstance(value, list) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise UserError(f"{key}={value} must be a finite number")
            if isinstance(number, int) and not -2**63 <= number < 2**63:
                raise UserError(f"{key}={value} is too large: torch takes integers up to 2**63 - 1")
    for key in ("batch_size", "epochs", "eval_batch_size", "log_every"):
        if cfg[key] <= 0:
            raise UserError(f"{key}={cfg[key]} must be a positive integer")
    for key in ("micro_batch_size", "max_micro_batch_size", "noise_scale_every"):
        if cfg[key] is not None and cfg[key] <= 0:
            raise UserError(f"{key}={cfg[key]} must be a positive integer or null")
    if cfg.seed < 0:
        raise UserError(f"seed={cfg.seed} must be non-negative")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise UserError(f"max_minutes={cfg.max_minutes} must be positive or null")
    lr = optimizer_settings(cfg.optimizer).lr
    if lr <= 0:  # the other hyperparameters are checked by the optimizers themselves
        raise UserError(f"optimizer.lr={lr} must be positive")
    if cfg.lr_factor <= 0:
        raise UserError(f"lr_factor={cfg.lr_factor} must be positive")


def keys_outside_schema(config: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of a composed config that its typed schema does not have. A `+key=value` override
    adds such a key without complaint (Hydra opens the config for it), and nothing would read it. A
    `_target_` optimizer's node is untyped: its keys are its class's arguments, checked against the
    class (`sngm_bench.optim.target`). Hydra's own node is not ours to check."""
    schema = OmegaConf.get_type(config)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    outside = []
    for key, value in config.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if known is not None and key not in known:
            outside.append(path)
        elif isinstance(value, DictConfig):
            outside += keys_outside_schema(value, f"{path}.")
    return outside


def optimizer_settings(optimizer: DictConfig) -> DictConfig:
    """The benchmark's own keys of an optimizer config (OptimizerConfig's fields): a built-in's
    config itself; for a `_target_` config, its checked settings (this imports its class)."""
    if "_target_" not in optimizer:
        return optimizer
    from sngm_bench.optim.target import resolve

    return resolve(optimizer).settings


def _or_default(value: Any, default: str) -> str:
    return str(value) if value not in (None, "") else default


def register() -> None:
    """Register the schemas and the `sngm_or` resolver (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, kind, node in [
        ("dataset", "cifar10", CIFAR10Config),
        ("dataset", "imagenet", ImageNetConfig),
        ("model", "cifar_resnet", CifarResNetConfig),
        ("model", "torchvision_resnet", TorchvisionResNetConfig),
        ("optimizer", "sngm", SNGMConfig),
        ("optimizer", "msgd", MSGDConfig),
        ("optimizer", "lars", LARSConfig),
        ("optimizer", "lamb", LAMBConfig),
        ("schedule", "schedule", ScheduleConfig),
    ]:
        store.store(group=f"schema/{group}", name=kind, node=node)
    store.store(group="schema/optimizer", name="common", node=COMMON_OPTIMIZER_DEFAULTS)
    if not OmegaConf.has_resolver("sngm_or"):
        OmegaConf.register_new_resolver("sngm_or", _or_default)


def compose_config(overrides=()) -> DictConfig:
    """The run config for `overrides`, composed as the command line would (for scripts and tests)."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides))


register()
