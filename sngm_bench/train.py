"""The training loop: one run of one (dataset, model, optimizer, schedule, batch size, seed).

Per epoch: train over shuffled, augmented full batches with the LR schedule stepped per
optimizer step, then evaluate on the whole test set. Loss and accuracy accumulate on the device
and are read once per epoch (and every `log_every` steps for the progress bar), so the step
itself never waits for the host.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from sngm_bench import records
from sngm_bench.config import Device, Precision
from sngm_bench.data import build_data
from sngm_bench.data.device_loader import epoch_generator, ordered_batches, shuffled_batches
from sngm_bench.errors import UserError
from sngm_bench.models import build_model
from sngm_bench.optim import build_optimizer
from sngm_bench.schedule import build_scheduler, peak_lr

log = logging.getLogger(__name__)


def resolve_device(choice: Device) -> torch.device:
    if choice is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice is Device.cuda and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(choice.value)


def autocast_context(device: torch.device, precision: Precision):
    if precision is Precision.fp32:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision=bf16 is not supported on {torch.cuda.get_device_name(device)}; use precision=fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_run_config(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express; each failure names the key and the fix."""
    for key in ("batch_size", "epochs", "eval_batch_size", "log_every"):
        if cfg[key] <= 0:
            raise UserError(f"{key}={cfg[key]} must be a positive integer")
    if cfg.optimizer.lr <= 0:
        raise UserError(f"optimizer.lr={cfg.optimizer.lr} must be positive")
    if cfg.seed < 0:
        raise UserError(f"seed={cfg.seed} must be non-negative")


def train_step(forward, optimizer, x, y, autocast):
    """One optimizer step on the batch (x, y); returns the detached loss and logits."""
    with autocast:
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def evaluate(model, images, batch_size: int, autocast) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over `images` (a DeviceImages), read once at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=images.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=images.labels.device)
    with torch.no_grad():
        for indices in ordered_batches(len(images), batch_size, images.labels.device):
            x, y = images.batch(indices)
            with autocast:
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as `cfg` says, writing metrics.csv after each epoch and summary.json at start and end."""
    check_run_config(cfg)
    device = resolve_device(Device(cfg.device))
    precision = Precision(cfg.precision)
    autocast = autocast_context(device, precision)
    torch.manual_seed(cfg.seed)

    data = build_data(cfg.dataset, device, cfg.channels_last)
    if cfg.batch_size > len(data.train):
        raise UserError(f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images")
    steps_per_epoch = len(data.train) // cfg.batch_size
    model = build_model(cfg.model, data.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = peak_lr(cfg.optimizer.lr, cfg.batch_size, cfg.schedule)
    optimizer = build_optimizer(cfg.optimizer, model, lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch, cfg.epochs)
    forward = torch.compile(model) if cfg.compile else model

    summary = {
        "status": "running",
        "seed": cfg.seed,
        "epochs_planned": cfg.epochs,
        "epochs": 0,
        "batch_size": cfg.batch_size,
        "peak_lr": lr,
        "steps_per_epoch": steps_per_epoch,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "parameters": sum(p.numel() for p in model.parameters()),
        **records.environment(device),
    }
    records.write_json(run_dir / records.SUMMARY_FILE, summary)
    log.info("run folder %s", run_dir)
    log.info("%s on %s (%s): %d steps/epoch, peak lr %.4g", cfg.optimizer.name, summary["device_name"],
             device.type, steps_per_epoch, lr)

    rows: list[dict] = []
    start = time.perf_counter()
    progress = tqdm(total=cfg.epochs * steps_per_epoch, unit="step", dynamic_ncols=True, disable=None)
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        generator = epoch_generator(cfg.seed, epoch, device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for step, indices in enumerate(shuffled_batches(len(data.train), cfg.batch_size, generator), 1):
            x, y = data.train.augmented_batch(indices, generator)
            step_lr = optimizer.param_groups[0]["lr"]
            loss, logits = train_step(forward, optimizer, x, y, autocast)
            scheduler.step()
            loss_sum += loss.float()
            correct += (logits.argmax(1) == y).sum()
            progress.update()
            if step % cfg.log_every == 0 or step == steps_per_epoch:
                seen = step * cfg.batch_size
                progress.set_description(f"epoch {epoch}/{cfg.epochs}", refresh=False)
                progress.set_postfix(loss=f"{loss_sum.item() / step:.3f}", acc=f"{correct.item() / seen:.3f}",
                                     lr=f"{step_lr:.3g}", img_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
        train_loss = loss_sum.item() / steps_per_epoch
        train_acc = correct.item() / (steps_per_epoch * cfg.batch_size)
        train_seconds = time.perf_counter() - epoch_start
        test_loss, test_acc = evaluate(forward, data.test, cfg.eval_batch_size, autocast)
        rows.append({
            "epoch": epoch, "lr": step_lr, "train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_acc, "epoch_seconds": time.perf_counter() - epoch_start,
            "images_per_second": steps_per_epoch * cfg.batch_size / train_seconds,
        })
        records.write_metrics(run_dir, rows)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  %.0f img/s", epoch, cfg.epochs,
                 train_loss, train_acc, test_loss, test_acc, rows[-1]["images_per_second"])
    progress.close()

    summary.update({
        "status": "completed",
        "epochs": len(rows),
        "final_test_acc": rows[-1]["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in rows),
        "best_epoch": max(rows, key=lambda r: r["test_acc"])["epoch"],
        "final_train_loss": rows[-1]["train_loss"],
        "wall_seconds": time.perf_counter() - start,
        "images_per_second": sum(r["images_per_second"] for r in rows) / len(rows),
    })
    records.write_json(run_dir / records.SUMMARY_FILE, summary)
    return summary
