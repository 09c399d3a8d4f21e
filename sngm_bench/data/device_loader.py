"""Batches of a small image dataset that lives on the training device.

Shuffling, random crop (zero padding) and horizontal flip are a few batched tensor ops per
step: no per-image Python, no DataLoader workers, no host-to-device copies in the loop.
"""

from __future__ import annotations

import hashlib

import torch


class DeviceImages:
    """uint8 NCHW images and int64 labels on `device`, normalized per channel when batched;
    training crops are taken from the images zero-padded by `pad` pixels.

    The images are kept padded (about 1.6 times the memory of a 32 px image at `pad=4`), so that
    a training batch is one gather from them; `images` is the unpadded view."""

    def __init__(self, images, labels, mean, std, device, channels_last: bool = False, pad: int = 4):
        self.pad = pad
        self.padded = torch.nn.functional.pad(images.to(device), (pad,) * 4)
        height, width = self.padded.shape[-2:]
        self.images = self.padded[..., pad:height - pad, pad:width - pad]
        self.labels = labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        return normalize(images_u8, self.mean, self.std, self.memory_format)

    def batch(self, indices: torch.Tensor):
        """Images at `indices` as they are (evaluation)."""
        return self.normalize(self.images[indices]), self.labels[indices]

    def train_batches(self, seed: int, epoch: int, batch_size: int, shard: slice, start_step: int = 0):
        """This process's `shard` of each global batch of an epoch, augmented, from `start_step` on.

        The order depends on (seed, epoch) and each step's augmentation on (seed, epoch, step)
        only, so a run resumed at any step sees exactly the data an uninterrupted one would."""
        device = self.images.device
        batches = shuffled_batches(len(self), batch_size, seeded_generator(device, seed, epoch))
        for step in range(start_step, len(batches)):
            shifts = self.random_shifts(batch_size, seeded_generator(device, seed, epoch, step + 1))
            yield self.augmented_batch(batches[step][shard], [s[shard] for s in shifts])

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        """A contiguous 1/world_size share of the images, in order, without augmentation."""
        share = torch.arange(len(self), device=self.images.device).tensor_split(world_size)[rank]
        for indices in share.split(batch_size):
            yield self.batch(indices)

    def random_shifts(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Per image of a batch of `n`: a vertical and a horizontal shift in [0, 2*pad] and a flip.

        Drawn for a whole global batch at once, so that every rank and every micro-batch slices
        the same draws and the augmentation does not depend on how the batch is split."""
        device, pad = self.images.device, self.pad
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
        flip = torch.rand((n, 1), device=device, generator=generator) < 0.5
        return dy, dx, flip

    def augmented_batch(self, indices: torch.Tensor, shifts: tuple[torch.Tensor, ...]):
        """Images at `indices`, each cropped from its zero-padded copy at its shift and flipped
        where its flag says: one gather from the padded images with per-image row and column
        indices, the column indices reversed for flipped images."""
        dy, dx, flip = shifts
        n, c, height, width = len(indices), *self.images.shape[1:]
        device = self.padded.device
        rows = dy + torch.arange(height, device=device)
        cols = dx + torch.arange(width, device=device)
        cols = torch.where(flip, cols.flip(1), cols)
        crops = self.padded[
            indices.view(n, 1, 1, 1),
            torch.arange(c, device=device).view(1, c, 1, 1),
            rows.view(n, 1, height, 1),
            cols.view(n, 1, 1, width),
        ]
        return self.normalize(crops), self.labels[indices]


def normalize(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, memory_format) -> torch.Tensor:
    """uint8 images to float, per channel (x - mean) / std with mean and std in pixel units."""
    return ((images_u8.float() - mean) / std).contiguous(memory_format=memory_format)


def key_seed(*key: int) -> int:
    """One 63-bit seed that is a function of `key` alone (non-negative parts: seed, epoch, step or
    image): a hash of the parts, so that two keys share a seed only by chance (2**-63 a pair). A
    positional sum such as (seed * p + epoch) * p + image repeats once an index reaches p."""
    data = b"".join(part.to_bytes(8, "little") for part in key)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def seeded_generator(device, *key: int) -> torch.Generator:
    """A generator whose stream is a function of `key` alone (e.g. seed, epoch, step)."""
    return torch.Generator(device=device).manual_seed(key_seed(*key))


def shuffled_batches(num_items: int, batch_size: int, generator: torch.Generator):
    """Index tensors of the full batches of one random permutation; the last partial batch is
    dropped so that every optimizer step sees exactly `batch_size` images."""
    order = torch.randperm(num_items, device=generator.device, generator=generator)
    return list(order[: num_items - num_items % batch_size].split(batch_size))
