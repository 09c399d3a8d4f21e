"""Fixed, class-balanced training subsets for quick runs (`dataset.subset=N`)."""

from __future__ import annotations

import torch

from sngm_bench.errors import UserError


def balanced_subset(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the first images of each class in file order: `size` images, classes as equal as can be."""
    classes = int(labels.max()) + 1
    if not classes <= size <= len(labels):
        raise UserError(f"dataset.subset={size} must be between {classes} and {len(labels)}")
    picks = []
    for c in range(classes):
        take = size // classes + (1 if c < size % classes else 0)
        picks.append(torch.nonzero(labels == c).flatten()[:take])
    return torch.sort(torch.cat(picks)).values
