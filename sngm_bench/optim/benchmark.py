"""Optimizer step benchmark: the time of one `step()` of each optimizer on a model's real parameter
set, as a ratio to torch.optim.SGD(momentum=0.9, foreach=True) (and fused=True on CUDA) timed in
the same process on the same parameters.

Each optimizer is built by `build_optimizer` from its config file, so its parameter groups and
hyperparameters are the ones a run uses, except that all of them and the baselines get the same
weight decay (0 by default, like the plain baseline), so that a ratio compares update rules and
not different amounts of work. Steps run round-robin over the optimizers, so a busy, shared
machine slows them alike, and each time is the median over the steps after warm-up. Before each
step a 256 MiB write evicts the caches, as the forward and backward passes do between the steps
of training; otherwise the order within a round would decide who finds its tensors in cache.

With `compile_backend`, SNGM, LARS and LAMB are timed a second time with their step compiled by
torch.compile as `compile_optimizer=true` runs do (rows `sngm+compile`, ...; see
`sngm_bench.optim.compiled`), and, in `warmup_ms`, what compiling it costs once per run. Their
eager steps on CUDA are launch-bound (many multi-tensor kernels, per-tensor ones for LARS and
LAMB), so this is the measurement that decides whether runs should compile the optimizer. As in a
run, every step has a new lr (a schedule's), and a compiled step that compiles again after the
warm-up steps stops the benchmark (torch's `error_on_recompile`) instead of being timed.

On a GPU each row also has `kernel_ms`, the step's kernels' own time (torch's profiler,
`timing.kernel_seconds`), and `kernel_vs_sgd_fused`, its ratio to fused SGD's: what a byte floor
judges, where a launch-bound step's `median_ms` is the host's time to issue its kernels (on an
H200, `host_ms` was 88-98 % of `median_ms`: results/bench/h200-2026-11-28).
"""

from __future__ import annotations

import csv
import platform
import statistics
from typing import Callable

import torch
import torchvision
from torch import nn

from sngm_bench.config import compose_config
from sngm_bench.models.cifar_resnet import CifarResNet
from sngm_bench.optim import build_optimizer
from sngm_bench.timing import kernel_seconds, milliseconds, time_rounds

PARAMETER_SETS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(),  # 25.6 M parameters in 161 tensors
    "resnet20": lambda: CifarResNet(20),  # 0.27 M parameters in 59 tensors
}
OPTIMIZERS = ("msgd", "sngm", "lars", "lamb")
# Rows of an optimizer with other group settings: SNGM without torch's fused SGD kernel, what the kernel saves.
VARIANTS = {"sngm_foreach": ("sngm", {"fused": False})}
COMPILABLE = ("sngm", "lars", "lamb")  # ours; MSGD is torch's fused SGD already
CACHE_EVICTION_BYTES = 256 * 2**20  # more than any CPU's last-level cache or GPU's L2


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def model_with_gradients(name: str, device: torch.device) -> nn.Module:
    """The model's parameters on `device`, each with a fixed random gradient."""
    torch.manual_seed(0)
    model = PARAMETER_SETS[name]().to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def optimizers_to_compare(model: nn.Module, weight_decay: float,
                          compile_backend: str | None = None) -> dict[str, torch.optim.Optimizer]:
    params = list(model.parameters())
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=weight_decay)
    optimizers = {"sgd_foreach": torch.optim.SGD(params, **sgd, foreach=True)}
    if params[0].is_cuda:
        optimizers["sgd_fused"] = torch.optim.SGD(params, **sgd, fused=True)

    def build(name, backend=None):
        cfg = compose_config([f"optimizer={name}", f"optimizer.weight_decay={weight_decay}"]).optimizer
        return build_optimizer(cfg, model, cfg.lr, backend)

    for name in OPTIMIZERS:
        optimizers[name] = build(name)
    for row, (name, settings) in VARIANTS.items():
        optimizers[row] = build(name)
        for group in optimizers[row].param_groups:
            group.update(settings)
    for name in COMPILABLE if compile_backend else ():
        optimizers[f"{name}+compile"] = build(name, compile_backend)
    return optimizers


def step_seconds(optimizers: dict[str, torch.optim.Optimizer], steps: int, warmup: int,
                 device: torch.device) -> dict[str, tuple[float, float, float, float | None]]:
    """Each optimizer's untimed `warmup` steps together (at least one: state allocation, and
    compilation for a compiled step), its median step over the `steps` rounds after them, the
    median time `step()` took to return, before the device finished its work, and on a GPU its
    kernels' time per step (`timing.kernel_seconds`, over `steps` more steps at the last lr, caches
    not evicted), in seconds. Before each timed step its lr is set as a warm-up schedule would set
    it and the caches are evicted."""
    evict = torch.empty(CACHE_EVICTION_BYTES, dtype=torch.uint8, device=device)
    warmup = max(warmup, 1)
    named = list(optimizers.items())
    peak_lrs = [[group["lr"] for group in optimizer.param_groups] for _, optimizer in named]

    def before_step(round_, index):
        for group, peak in zip(named[index][1].param_groups, peak_lrs[index]):
            group["lr"] = peak * (round_ + 1) / (warmup + steps)
        evict.fill_(round_ % 256)

    step_fns = [optimizer.step for _, optimizer in named]
    warmups = time_rounds(device, warmup, step_fns, before_step)
    with torch._dynamo.config.patch(error_on_recompile=True):
        timed = time_rounds(device, steps, step_fns, lambda round_, index: before_step(warmup + round_, index))
        kernels = [kernel_seconds(device, steps, step) for step in step_fns]
    return {name: (sum(warm.done), times.median, statistics.median(times.returned), kernel)
            for (name, _), warm, times, kernel in zip(named, warmups, timed, kernels)}


def bench_optimizers(parameter_sets=tuple(PARAMETER_SETS), steps: int = 50, warmup: int = 5,
                     weight_decay: float = 0.0, device: str | None = None,
                     compile_backend: str | None = None) -> list[dict]:
    """One row per (parameter set, optimizer): median step time and its ratio to each baseline,
    and the warm-up steps' time (state allocation, and compilation for the `+compile` rows)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for set_name in parameter_sets:
        model = model_with_gradients(set_name, device)
        optimizers = optimizers_to_compare(model, weight_decay, compile_backend)
        timed = step_seconds(optimizers, steps, warmup, device)
        baselines = [name for name in timed if name.startswith("sgd_")]
        fused_kernel = timed["sgd_fused"][3] if "sgd_fused" in timed else None
        for name, (warmup_seconds, median, host, kernel) in timed.items():
            rows.append({
                "device": device_name(device), "torch": torch.__version__, "steps": steps, "parameter_set": set_name,
                "parameters": sum(p.numel() for p in model.parameters()), "tensors": len(list(model.parameters())),
                "weight_decay": weight_decay, "optimizer": name, "median_ms": 1e3 * median,
                **{f"vs_{base}": median / timed[base][1] for base in baselines}, "host_ms": 1e3 * host,
                "warmup_ms": 1e3 * warmup_seconds,
                "kernel_ms": milliseconds(kernel),
                "kernel_vs_sgd_fused": kernel / fused_kernel if kernel is not None and fused_kernel else None,
            })
        del model, optimizers
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a text table; a kernel time the profiler did not record (no CUDA activity seen,
    e.g. without CUPTI) shows as n/a."""
    def number(value, width: int, digits: int, unit: str = "") -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width - len(unit)}.{digits}f}{unit}"

    ratios = [key for key in rows[0] if key.startswith("vs_")]
    kernels = rows[0]["kernel_ms"] is not None  # on a GPU
    lines = [f"device: {rows[0]['device']}   torch {rows[0]['torch']}   weight_decay {rows[0]['weight_decay']}   "
             f"median of {rows[0]['steps']} steps",
             f"{'parameters':<24}{'optimizer':<15}{'ms/step':>9}" + "".join(f"{key:>16}" for key in ratios)
             + f"{'host ms':>10}{'warmup ms':>12}" + (f"{'kernel ms':>11}{'kernel vs fused':>17}" if kernels else "")]
    for row in rows:
        where = f"{row['parameter_set']} ({row['parameters'] / 1e6:.2f} M)"
        lines.append(f"{where:<24}{row['optimizer']:<15}{row['median_ms']:>9.3f}"
                     + "".join(f"{row[key]:>15.2f}x" for key in ratios) + f"{row['host_ms']:>10.3f}"
                     + f"{row['warmup_ms']:>12.0f}"
                     + (number(row["kernel_ms"], 11, 3) + number(row["kernel_vs_sgd_fused"], 17, 2, "x")
                        if kernels else ""))
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
