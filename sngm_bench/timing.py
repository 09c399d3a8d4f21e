"""The step timer of the benchmarks (`bench.bench_train`, `optim.benchmark`): alternatives called
in turn, each call between device synchronizations.

Interleaved rounds let a slowly varying machine (a shared CPU, a GPU's clocks) slow every
alternative alike, where timing one after another would credit the drift to whichever ran last.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA runs asynchronously; a CPU has none queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Times:
    """One alternative's seconds, one entry per round."""

    done: list[float] = field(default_factory=list)  # from the call until the device finished its work
    returned: list[float] = field(default_factory=list)  # from the call until it returned to Python

    @property
    def median(self) -> float:
        return statistics.median(self.done)


def time_rounds(device: torch.device, rounds: int, fns: Sequence[Callable[[], object]],
                before_call: Callable[[int, int], object] | None = None) -> list[Times]:
    """The times of each of `fns` over `rounds` rounds that call every one of them once, in turn.

    `before_call(round, index)`, if given, runs untimed before each call (e.g. to evict caches).
    On a GPU, `returned` close to `done` means the call is bound by issuing its kernels rather than
    by the kernels themselves; on a CPU the two are the same."""
    times = [Times() for _ in fns]
    for round_ in range(rounds):
        for index, (fn, fn_times) in enumerate(zip(fns, times)):
            if before_call is not None:
                before_call(round_, index)
            synchronize(device)
            start = time.perf_counter()
            fn()
            fn_times.returned.append(time.perf_counter() - start)
            synchronize(device)
            fn_times.done.append(time.perf_counter() - start)
    return times


def median_seconds(device: torch.device, rounds: int, *fns: Callable[[], object]) -> list[float]:
    """The median seconds of each of `fns`, timed in `rounds` interleaved rounds."""
    return [times.median for times in time_rounds(device, rounds, fns)]


def milliseconds(seconds: float | None) -> float | None:
    """`seconds` in milliseconds, or None where it was not measured (a kernel time on a CPU)."""
    return 1000 * seconds if seconds is not None else None


def kernel_seconds(device: torch.device, rounds: int, fn: Callable[[], object]) -> float | None:
    """The device's own time per call of `fn`: the durations of the kernels (and copies) it runs,
    summed over `rounds` calls by torch's profiler as its tables' "Self CUDA time total", divided
    by `rounds`; None on a CPU. Beside the call's time (`time_rounds`) it splits a step's cost
    into the kernels' work and the host's time to issue them: a step whose kernels take much less
    than the step is bound by their launches, so its kernels' time is what a byte floor judges."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(rounds):
            fn()
        synchronize(device)
    busy_us = sum(event.self_device_time_total for event in profiler.key_averages()
                  if event.device_type == DeviceType.CUDA and not event.is_user_annotation)
    return busy_us / 1e6 / rounds
