"""Processes of one run: a single process, torchrun's, or a SLURM job's (through submitit).

`batch_size` stays global: each of the `world_size` processes trains on its slice of every
global batch and DistributedDataParallel averages the gradients. Only rank 0 writes files.
When one process dies, the others' next collective fails (`Processes.lost_peer`, errors.LostPeer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sngm_bench.config import Device
from sngm_bench.device import resolve_device


@dataclass
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *tensors: torch.Tensor) -> None:
        """In-place sum over all processes."""
        if self.world_size > 1:
            for tensor in tensors:
                dist.all_reduce(tensor)

    def broadcast(self, *tensors: torch.Tensor) -> None:
        """In place: rank 0's values on every process."""
        if self.world_size > 1:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's `tensor`, stacked in rank order, on every process."""
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on one (a host sync; call it rarely)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def lost_peer(self, err: BaseException) -> bool:
        """Whether `err` is a collective failing because another process of the run is gone (it
        crashed, was killed, or ended with an error of its own): gloo reports the closed connection
        as a plain RuntimeError from its transport, torch's own TCP code as a DistNetworkError.
        (A process blocked in an NCCL collective is killed by torchrun instead.)"""
        return self.world_size > 1 and (isinstance(err, dist.DistNetworkError) or
                                        isinstance(err, RuntimeError) and "gloo/transport" in str(err))

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _export_submitit_environment() -> None:
    """Inside a multi-task SLURM job started by submitit, set the variables torchrun would set."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export()


def launched_rank() -> int:
    """This process's rank as torchrun set it, before any setup (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup(choice: Device) -> Processes:
    _export_submitit_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Processes(rank, world_size, device)
