"""Training-throughput benchmark of the product's own step, against a hand-written reference.

`bench_train` times `Trainer.train_batch` — the exact step `sngm-bench` runs: batch gather and
augmentation on the device, forward, backward, optimizer, schedule, device-side metrics — and
splits it into data / optimizer / the rest. The data share is measured two ways: alone
(`data_fraction_upper_bound`: in a real step its small kernels are launched asynchronously and
overlap the rest) and as the time it adds to the step (`data_fraction_in_step`: the step against
the same step on one fixed batch). The rest (forward, backward and the step's small work) is what
the other two leave (`rest_fraction_estimate`). With `compare_reference`, it times in the
same process a minimal loop on the same model, batch, micro-batches and flags whose data already
sits on the device as a ready float batch and whose optimizer is torch's fused (CUDA) or foreach
(CPU) SGD, and reports the product's throughput as a fraction of it. FLOPs per image come from
`torch.utils.flop_counter`, so model FLOP utilization is reported where the peak is known. On a
GPU, `kernel_ms` (and `reference_kernel_ms`) is the step's kernels' own time (torch's profiler,
`timing.kernel_seconds`): a step much longer than its kernels is bound by issuing them, and where
the product's step is slower than the reference's, the two kernel times say whether it does more
GPU work or takes longer to issue it. `data_kernel_ms`, the data work's own kernels, says the same
of the data share: the time it adds to the step against the GPU time it needs.
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from sngm_bench import distributed
from sngm_bench.config import Device, Precision, optimizer_settings
from sngm_bench.errors import UserError
from sngm_bench.models import build_model
from sngm_bench.noise_scale import NoiseScale
from sngm_bench.records import environment
from sngm_bench.timing import kernel_seconds, median_seconds, milliseconds
from sngm_bench.train import Trainer

# Dense peak FLOP/s by precision (NVIDIA's data sheets, their figures "with sparsity" halved) of the
# first of these names found in torch's device name. A PCIe H100 has fewer SMs and lower clocks than
# an SXM one ("NVIDIA H100 80GB HBM3"); the NVL cards, whose peaks are not checked here, get none
# (no MFU) rather than the SXM card's.
PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756.5e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {}), ("H200 NVL", {}),
    ("H100", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)


def flops_per_image(model: torch.nn.Module, image_shape, device, batch: int = 8) -> float:
    """Forward + backward FLOPs of one image, counted by torch (matmuls and convolutions)."""
    x = torch.randn(batch, *image_shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def peak_flops(device_name: str, precision: str) -> float | None:
    """The GPU's peak for a run in `precision`; an fp32 run's convolutions (nearly all its FLOPs) run
    on the TF32 tensor cores while cuDNN allows it, as torch does by default."""
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    return next((peaks.get(precision) for gpu, peaks in PEAK_FLOPS if gpu in device_name), None)


def reference_step(cfg: DictConfig, trainer: Trainer):
    """A minimal hand-written training step on a fresh copy of the model: data ready on the device,
    in the product's micro-batches (gradient accumulation), so that both do the same work."""
    device = trainer.procs.device
    model = build_model(cfg.model, trainer.data.num_classes).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                fused=device.type == "cuda", foreach=device.type != "cuda")
    forward = torch.compile(model) if cfg.compile else model
    x = torch.randn(trainer.local_batch, *trainer.data.train.image_shape, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, trainer.data.num_classes, (trainer.local_batch,), device=device)
    chunks = list(zip(x.split(trainer.micro_batch), y.split(trainer.micro_batch)))
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        for xm, ym in chunks:
            with trainer.autocast:
                loss = F.cross_entropy(forward(xm), ym)
            (loss / len(chunks) if len(chunks) > 1 else loss).backward()
        optimizer.step()

    return step


def step_kinds(noise_scale: NoiseScale) -> list[tuple[int, float]]:
    """The kinds of training step a run takes, as (the first global step of the kind, its share of
    all steps): over one period of `noise_scale_every`, the steps that measure the noise scale and
    the others; one kind when every step or none measures it."""
    period = noise_scale.every or 1
    kinds: dict[bool, list[int]] = {}
    for step in range(1, period + 1):
        kinds.setdefault(noise_scale.probe(step) is not None, []).append(step)
    return [(steps[0], len(steps) / period) for steps in kinds.values()]


def bench_train(cfg: DictConfig, steps: int = 50, warmup: int = 10, compare_reference: bool = False) -> dict:
    """Median step time of the product's step (and its parts, and the reference's) on this device.

    torch.compile's caches are cleared first, so each call compiles for its own batch size as a
    fresh run would: otherwise a second batch size in one process recompiles the model with a
    symbolic batch dimension (automatic dynamic shapes), whose kernels a real run never uses.

    `data_fraction_upper_bound` is `next(stream)` timed alone over the step time: an upper bound
    on the data work's cost. `data_fraction_in_step` is (step − fixed-batch step) / step, where
    the fixed-batch step trains on one batch taken before timing, so it does no data work; the
    two are timed in alternation. It is not clamped: a slightly negative value is noise and means
    "not measurable at this precision". With a DataLoader (ImageNet) the interleaved fixed-batch
    steps give the workers extra time, so a loader that cannot keep up shows in
    `data_fraction_upper_bound`. `optimizer_fraction` is `optimizer.step()` timed alone, an
    estimate (in a step its launches can overlap the backward pass's kernels; alone, its tensors
    may still be in cache). `rest_fraction_estimate` = 1 − `data_fraction_in_step` −
    `optimizer_fraction`: forward, backward, loss and metrics, schedule and any noise-scale
    measurement, by difference, so the three add up to the step; not clamped either.

    With `noise_scale_every=N`, one step in N also measures the gradient noise scale: each kind of
    step (`step_kinds`) is timed, and the step time is a run's mean step, their medians weighted
    by their shares. The reference does not measure it, so `compare_reference` refuses it."""
    if compare_reference and cfg.noise_scale_every is not None:
        raise UserError("the hand-written reference step does not measure the gradient noise scale, so its ratio "
                        "would not compare the same work: set noise_scale_every=null, or time without the reference")
    torch._dynamo.reset()
    procs = distributed.setup(Device(cfg.device))
    device = procs.device
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(cfg, Path(scratch), procs)
    data = trainer.data.train
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    trainer.model.train()

    def batches():
        for epoch in itertools.count(1):
            yield from data.train_batches(cfg.seed, epoch, cfg.batch_size, trainer.shard())

    stream = batches()  # one stream: a DataLoader-backed dataset cannot serve two at once

    kinds = step_kinds(trainer.noise_scale)

    def at_step(global_step: int, step):
        def call():
            trainer.step = global_step  # in epoch 1: the global step NoiseScale.probe is asked about
            step()
        return call

    def product_step():
        trainer.train_batch(*next(stream), totals)

    def data_only():
        next(stream)

    product_steps = [at_step(global_step, product_step) for global_step, _ in kinds]
    for _ in range(warmup):  # also absorbs torch.compile, for every kind of step
        for step in product_steps:
            step()
    fixed_x, fixed_y = next(stream)

    def fixed_batch_step():
        trainer.train_batch(fixed_x, fixed_y, totals)

    def run_mean(medians):
        return sum(share * seconds for (_, share), seconds in zip(kinds, medians))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    medians = median_seconds(device, steps, *product_steps,
                             *[at_step(global_step, fixed_batch_step) for global_step, _ in kinds])
    step_seconds, fixed_batch_seconds = run_mean(medians[:len(kinds)]), run_mean(medians[len(kinds):])
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    (data_seconds,) = median_seconds(device, steps, data_only)
    (optimizer_seconds,) = median_seconds(device, steps, trainer.optimizer.step)
    kernels = [kernel_seconds(device, steps, step) for step in product_steps]
    kernel_step_seconds = run_mean(kernels) if None not in kernels else None
    data_kernel_seconds = kernel_seconds(device, steps, data_only)

    env = environment(device)
    precision = Precision(cfg.precision).value
    flops = flops_per_image(build_model(cfg.model, trainer.data.num_classes).to(device), data.image_shape, device)
    achieved = flops * cfg.batch_size / step_seconds
    peak = peak_flops(env["device_name"], precision)
    result = {
        "dataset": cfg.dataset.name, "image_size": data.image_shape[-1],
        "model": cfg.model.name, "optimizer": optimizer_settings(cfg.optimizer).name, "batch_size": cfg.batch_size,
        "micro_batch_size": trainer.micro_batch, "noise_scale_every": cfg.noise_scale_every, "precision": precision,
        "channels_last": cfg.channels_last, "compile": cfg.compile,
        "optimizer_step_compiled": trainer.summary["optimizer_step_compiled"],
        "images_per_second": cfg.batch_size / step_seconds, "step_ms": 1000 * step_seconds,
        "data_fraction_upper_bound": data_seconds / step_seconds,
        "data_fraction_in_step": (step_seconds - fixed_batch_seconds) / step_seconds,
        "optimizer_fraction": optimizer_seconds / step_seconds,
        "rest_fraction_estimate": (fixed_batch_seconds - optimizer_seconds) / step_seconds,
        "peak_memory_gib": peak_memory / 2**30 if peak_memory is not None else None,
        "gflops_per_image": flops / 1e9, "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "kernel_ms": milliseconds(kernel_step_seconds),
        "data_kernel_ms": milliseconds(data_kernel_seconds),
    }
    if compare_reference:
        reference = reference_step(cfg, trainer)
        for _ in range(warmup):
            reference()
        (reference_seconds,) = median_seconds(device, steps, reference)
        result["reference_images_per_second"] = cfg.batch_size / reference_seconds
        result["throughput_vs_reference"] = reference_seconds / step_seconds
        result["reference_kernel_ms"] = milliseconds(kernel_seconds(device, steps, reference))
    result.update(device_name=env["device_name"], torch_version=env["torch_version"])
    procs.close()
    return result


def append_row(csv_file: Path, row: dict) -> None:
    """Adds `row` to the CSV file (created if absent). The file is rewritten with the union of the
    columns when the row has other keys than its header (e.g. one run with `compare_reference`,
    one without, or a CSV written by an older version), so no value lands under another's name."""
    frame = pd.DataFrame([row])
    if Path(csv_file).exists():
        frame = pd.concat([pd.read_csv(csv_file), frame], ignore_index=True)
    frame.to_csv(csv_file, index=False)


# Training images/s that one DataLoader worker prepares from the ImageNet sample's 224x224 JPEGs (one
# core of a 2-core AMD EPYC virtual machine; docs/data.md): the divisor of the "workers per GPU" figure.
IMAGES_PER_WORKER = (850, 900)


def measured_rows(csv_files: list[Path]):
    """Every row of `bench_train.csv` files as `scripts/gpu_report.py commit-check` commits them, in
    `results/bench/<device>-<YYYY-MM-DD>/`, with the date from the folder's name."""
    for path in csv_files:
        date = re.search(r"\d{4}-\d{2}-\d{2}$", Path(path).parent.name)
        for row in pd.read_csv(path).itertuples():
            yield date.group() if date else "", row


def model_label(model: str) -> str:
    """`resnet20` -> `ResNet-20`, as the README's tables name models."""
    return model.replace("resnet", "ResNet-")


def settings(row) -> str:
    """`bf16 + channels_last + compile`: the precision and the speed flags a row was measured with."""
    compiled_step = getattr(row, "optimizer_step_compiled", False)  # older CSVs lack the column
    flags = [name for name, on in (("channels_last", row.channels_last), ("compile", row.compile),
                                   ("compiled optimizer", pd.notna(compiled_step) and compiled_step)) if on]
    return " + ".join([row.precision, *flags])


def throughput_table(csv_files: list[Path]) -> str:
    """The README's GPU throughput table: every measured row (see `measured_rows`; the device and
    torch version come from the rows)."""
    from sngm_bench.report import to_markdown

    rows = []
    for date, row in measured_rows(csv_files):
        rows.append({
            "device": row.device_name, "torch": row.torch_version, "date": date,
            "model": model_label(row.model), "batch": row.batch_size,
            "settings": settings(row), "images/s": f"{row.images_per_second:,.0f}",
            "MFU": f"{100 * row.mfu:.1f} %" if pd.notna(row.mfu) else "–",
            "vs hand-written loop": f"{row.throughput_vs_reference:.2f}"
            if pd.notna(getattr(row, "throughput_vs_reference", None)) else "–",
        })
    return to_markdown(pd.DataFrame(rows).set_index("device"))


def workers_per_gpu(csv_files: list[Path]) -> str:
    """The README's "workers per GPU" figure: for each measured ImageNet row, the images/s of its
    training step without the data work (the step on one fixed batch: images/s over 1 −
    `data_fraction_in_step`) over one worker's `IMAGES_PER_WORKER`. A row whose loader could not keep
    up measured the loader's images/s, not the GPU's (the ImageNet sample has 200 training images,
    so its loader restarts every second step; docs/gpu.md), and would understate the need.
    The row's data shares are shown to judge the loader by."""
    from sngm_bench.report import to_markdown

    low, high = IMAGES_PER_WORKER
    rows = []
    for date, row in measured_rows(csv_files):
        if row.dataset != "imagenet":
            continue
        without_data = row.images_per_second / (1 - row.data_fraction_in_step)
        rows.append({
            "device": row.device_name, "date": date, "model": model_label(row.model),
            "image size": f"{row.image_size} px", "batch": row.batch_size, "settings": settings(row),
            "training images/s": f"{row.images_per_second:,.0f}",
            "without data work": f"{without_data:,.0f}",
            "workers per GPU": "–".join(dict.fromkeys(str(math.ceil(without_data / per_worker))
                                                      for per_worker in (high, low))),
            "data share in the step": f"{100 * row.data_fraction_in_step:.1f} %",
            "data share, upper bound": f"{100 * row.data_fraction_upper_bound:.1f} %",
        })
    if not rows:
        return ("How many ImageNet data-loading workers one GPU needs is not measured yet: no committed "
                "`bench_train.csv` has an ImageNet row.\n")
    return (f"ImageNet data-loading workers one GPU needs: the images/s of its training step without the data "
            f"work (the step on one fixed batch) over the {low}–{high} images/s one worker prepares "
            f"([data.md](docs/data.md)). Where the data share in the step is large, the measured training "
            f"images/s are the loader's, not the GPU's.\n\n"
            + to_markdown(pd.DataFrame(rows).set_index("device")))
