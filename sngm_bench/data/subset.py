"""Fixed, class-balanced training subsets for quick runs (`dataset.subset=N`)."""

from __future__ import annotations

import torch

from sngm_bench.errors import UserError


def balanced_subset(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the first images of each class in file order: `size` images, classes as equal as can be."""
    classes = int(labels.max()) + 1
    if not classes <= size <= len(labels):
        raise UserError(f"dataset.subset={size} must be between {classes} and {len(labels)}")
    counts = torch.bincount(labels, minlength=classes)
    picks = []
    for c in range(classes):
        take = size // classes + (1 if c < size % classes else 0)
        if counts[c] < take:  # ImageNet's classes hold 732 to 1,300 training images
            raise UserError(f"dataset.subset={size} takes {take} images of class {c}, which has {int(counts[c])}: "
                            f"a class-balanced subset of this set holds at most {int(counts.min()) * classes} images")
        picks.append(torch.nonzero(labels == c).flatten()[:take])
    return torch.sort(torch.cat(picks)).values
