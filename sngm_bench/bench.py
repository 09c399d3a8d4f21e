"""Training-throughput benchmark: images/s of the real training step, and the share of the
step spent in the data pipeline (batch gather + augmentation), on the current device.

The pixels are random (throughput does not depend on them), so no dataset is needed.
"""

from __future__ import annotations

import itertools
import time

import torch
from omegaconf import DictConfig

from sngm_bench.config import Device, Precision
from sngm_bench.data.device_loader import DeviceImages, epoch_generator, shuffled_batches
from sngm_bench.models import build_model
from sngm_bench.optim import build_optimizer
from sngm_bench.records import environment
from sngm_bench.schedule import peak_lr
from sngm_bench.train import autocast_context, resolve_device, train_step

CIFAR_SHAPE = (3, 32, 32)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn, repeats: int) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def bench_train(cfg: DictConfig, steps: int = 20, warmup: int = 5, num_images: int = 50_000) -> dict:
    """Mean time of `steps` training steps after `warmup` untimed ones (which also absorb
    `torch.compile`), and of as many data-pipeline calls alone."""
    device = resolve_device(Device(cfg.device))
    autocast = autocast_context(device, Precision(cfg.precision))
    torch.manual_seed(cfg.seed)
    num_images = max(num_images, cfg.batch_size)
    images = torch.randint(0, 256, (num_images, *CIFAR_SHAPE), dtype=torch.uint8)
    labels = torch.randint(0, 10, (num_images,))
    data = DeviceImages(images, labels, (0.5,) * 3, (0.25,) * 3, device, cfg.channels_last)
    model = build_model(cfg.model, 10).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model, peak_lr(cfg.optimizer.lr, cfg.batch_size, cfg.schedule))
    forward = torch.compile(model) if cfg.compile else model
    model.train()
    generator = epoch_generator(cfg.seed, 0, device)
    batches = itertools.cycle(shuffled_batches(num_images, cfg.batch_size, generator))

    def next_batch():
        return data.augmented_batch(next(batches), generator)

    def full_step():
        train_step(forward, optimizer, *next_batch(), autocast)

    _timed(device, full_step, warmup)
    step_seconds = _timed(device, full_step, steps)
    data_seconds = _timed(device, next_batch, steps)
    env = environment(device)
    return {
        "model": cfg.model.name, "optimizer": cfg.optimizer.name, "batch_size": cfg.batch_size,
        "precision": Precision(cfg.precision).value, "channels_last": cfg.channels_last, "compile": cfg.compile,
        "images_per_second": cfg.batch_size / step_seconds, "step_ms": 1000 * step_seconds,
        "data_fraction": data_seconds / step_seconds,
        "device_name": env["device_name"], "torch_version": env["torch_version"],
    }
