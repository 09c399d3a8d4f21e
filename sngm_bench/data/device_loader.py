"""Batches of a small image dataset that lives on the training device.

Shuffling, random crop (zero padding) and horizontal flip are a few batched tensor ops per
step: no per-image Python, no DataLoader workers, no host-to-device copies in the loop.
"""

from __future__ import annotations

import torch

_EPOCH_SEED_STRIDE = 1_000_003


class DeviceImages:
    """uint8 NCHW images and int64 labels on `device`, normalized per channel when batched."""

    def __init__(self, images, labels, mean, std, device, channels_last: bool = False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = (images_u8.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def batch(self, indices: torch.Tensor):
        """Images at `indices` as they are (evaluation)."""
        return self.normalize(self.images[indices]), self.labels[indices]

    def augmented_batch(self, indices: torch.Tensor, generator: torch.Generator, pad: int = 4):
        """Images at `indices`, each shifted by up to `pad` pixels and flipped with probability 1/2.

        The crop and the flip are one gather from the zero-padded batch: per image, the row and
        column indices of its 32x32 window, with the column indices reversed for flipped images.
        """
        images = torch.nn.functional.pad(self.images[indices], (pad, pad, pad, pad))
        n, c, height, width = images.shape[0], images.shape[1], images.shape[2] - 2 * pad, images.shape[3] - 2 * pad
        device = images.device
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        flip = torch.rand((n, 1), device=device, generator=generator) < 0.5
        rows = dy + torch.arange(height, device=device)
        cols = dx + torch.arange(width, device=device)
        cols = torch.where(flip, cols.flip(1), cols)
        crops = images[
            torch.arange(n, device=device).view(n, 1, 1, 1),
            torch.arange(c, device=device).view(1, c, 1, 1),
            rows.view(n, 1, height, 1),
            cols.view(n, 1, 1, width),
        ]
        return self.normalize(crops), self.labels[indices]


def epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    """The random stream of one epoch (order and augmentation), a function of (seed, epoch) only,
    so a resumed run sees exactly the data an uninterrupted one would."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * _EPOCH_SEED_STRIDE + epoch)
    return generator


def shuffled_batches(num_items: int, batch_size: int, generator: torch.Generator):
    """Index tensors of the full batches of one random permutation; the last partial batch is
    dropped so that every optimizer step sees exactly `batch_size` images."""
    order = torch.randperm(num_items, device=generator.device, generator=generator)
    return list(order[: num_items - num_items % batch_size].split(batch_size))


def ordered_batches(num_items: int, batch_size: int, device):
    return list(torch.arange(num_items, device=device).split(batch_size))
