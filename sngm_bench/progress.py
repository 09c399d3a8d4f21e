"""What a run shows while it trains: a tqdm bar over its steps with the running loss, accuracy,
LR and images/s; log lines printed above the bar, never onto it; a transient bar while the
test set is evaluated.

Reading the loss is a host sync, so the loop reads it only at `readout` steps: every
`log_every` steps, at the end of each epoch, and once early in each epoch (step
`EARLY_READOUT`), so a loss shows within seconds whatever `log_every` is. That is at most one
extra sync per epoch. The same readouts serve the divergence and (under DDP) the stop checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

EARLY_READOUT = 5  # the step of each epoch at which its first loss is read


def is_readout(step: int, log_every: int, steps_per_epoch: int) -> bool:
    return step % log_every == 0 or step in (EARLY_READOUT, steps_per_epoch)


class Progress:
    """The bar of one run (shown on the main process only, and only on a terminal)."""

    def __init__(self, total_steps: int, done: int, enabled: bool):
        self.enabled = enabled
        self._stack = ExitStack()
        self._stack.enter_context(logging_redirect_tqdm())
        self.bar = self._stack.enter_context(tqdm(total=total_steps, initial=done, unit="step", dynamic_ncols=True,
                                                  disable=None if enabled else True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def step(self) -> None:
        self.bar.update()

    def show(self, epoch: int, epochs: int, loss: float, acc: float, lr: float, images_per_second: float) -> None:
        self.bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", lr=f"{lr:.3g}", img_s=f"{images_per_second:.0f}")

    def evaluating(self, batches: Iterable, images: int, batch_size: int) -> Iterator:
        """`batches` (this process's share of `images` test or held-out images), counted on a bar that vanishes
        when done."""
        total = math.ceil(images / batch_size)
        yield from tqdm(batches, total=total, desc="evaluating", unit="batch", leave=False, dynamic_ncols=True,
                        disable=None if self.enabled else True)
