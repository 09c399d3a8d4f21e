"""The gradient noise scale B_simple = tr(Σ) / |G|², measured during training (McCandlish et al.
2018, "An Empirical Model of Large-Batch Training", App. A): the batch size above which more
data parallelism stops paying, to first order.

Σ is the per-example gradient covariance and G the true gradient. The mean gradient of a batch
of B examples has E|G_B|² = |G|² + tr(Σ)/B, so squared norms at two batch sizes B_small < B_big
give unbiased estimates of both:

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each is noisy, so each is kept as an exponential moving average and B_simple is the ratio of
the two averages (the paper's recipe; a mean of ratios would be biased).

Every `noise_scale_every` optimizer steps, `train.train_step` shows the gradient to a probe
twice: after this process's first micro-batch (the small batch, its local gradient: DDP
synchronizes on the last micro-batch only) and after the last (the big batch: the whole global
batch's mean gradient, all-reduced under DDP). A process whose share of the batch is a single
micro-batch splits it in two on these steps only, so BatchNorm sees half-size micro-batches
there; that is why `noise_scale_every` is part of what a run trains. With accumulation the
split is the one training uses anyway and training is unchanged. The averages stay on the
device; they are read, and averaged over processes, once per epoch. A checkpoint keeps each
process's own.
"""

from __future__ import annotations

import torch

from sngm_bench.errors import UserError
from sngm_bench.optim.common import norms

EMA_DECAY = 0.99  # per measurement


class NoiseScale:
    """The running estimate of one run; `probe(step)` is the object `train_step` reports to on a
    measurement step, None on the others (and always when `every` is None: off)."""

    def __init__(self, every: int | None, batch_size: int, local_batch: int, parameters, device: torch.device,
                 decay: float = EMA_DECAY):
        if every is not None and local_batch < 2:
            raise UserError(f"noise_scale_every needs at least 2 images per process; each has {local_batch}")
        self.every, self.batch_size, self.decay = every, batch_size, decay
        self.parameters = list(parameters)
        self.averages = torch.zeros(2, dtype=torch.float64, device=device)  # EMAs of |G|² and tr(Σ)
        self.measurements = 0
        self._small: tuple[int, torch.Tensor] | None = None

    def probe(self, step: int) -> NoiseScale | None:
        """self if optimizer step `step` (counted from 1 over the whole run) is measured."""
        return self if self.every is not None and step % self.every == 0 else None

    @staticmethod
    def micro_batch_size(local_batch: int, micro_batch: int) -> int:
        """The micro-batch size of a measured step: at least two micro-batches per process."""
        return micro_batch if micro_batch < local_batch else (local_batch + 1) // 2

    def _squared_norm(self) -> torch.Tensor:
        return norms([p.grad for p in self.parameters if p.grad is not None]).double().square().sum()

    def small(self, images: int, share: float) -> None:
        """After the first micro-batch of `images` images, whose loss was weighted by `share`."""
        self._small = images, self._squared_norm() / share**2

    def big(self) -> None:
        """After the last micro-batch: the gradient is the mean over the whole global batch."""
        b_small, small = self._small
        b_big, big = self.batch_size, self._squared_norm()
        estimates = torch.stack([(b_big * big - b_small * small) / (b_big - b_small),
                                 (small - big) / (1 / b_small - 1 / b_big)])
        self.averages.lerp_(estimates, 1 - self.decay)
        self.measurements += 1
        self._small = None

    def read(self, procs) -> float | None:
        """B_simple from the averages over all processes (a host sync and, under DDP, a collective:
        every process calls it). None before the first measurement, or while either average is not
        positive: too few measurements to resolve the gradient from the noise."""
        if not self.measurements:
            return None
        averages = self.averages.clone()
        procs.sum(averages)
        squared_gradient, trace = averages.tolist()
        return trace / squared_gradient if squared_gradient > 0 and trace > 0 else None

    def state_dict(self, procs) -> dict:
        """Every process's averages, one row each (a collective under DDP: every process calls it)."""
        return {"averages": procs.gather(self.averages).cpu(), "measurements": self.measurements}

    def load_state_dict(self, state: dict | None, procs) -> None:
        """This process's row when as many processes continue; otherwise each takes the rows' mean,
        so that their sum still weighs every process alike. An older checkpoint's single row goes
        to every process."""
        if state is not None:  # None: a checkpoint written before this run measured anything
            averages = state["averages"]
            if averages.dim() == 2:
                averages = averages[procs.rank] if len(averages) == procs.world_size else averages.mean(0)
            self.averages.copy_(averages)
            self.measurements = state["measurements"]
