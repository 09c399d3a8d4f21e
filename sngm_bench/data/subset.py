"""Fixed, class-balanced parts of a training set: a smaller training set for quick runs
(`dataset.subset=N`) and a held-out split to choose hyperparameters on (`dataset.holdout_images=N`).

Both are functions of the labels alone, never of a run's seed, so every seed, optimizer and
process of a sweep trains on the same images and holds out the same ones."""

from __future__ import annotations

import torch

from sngm_bench.errors import UserError

# The held-out images are drawn by a permutation with this fixed seed, its own generator's, not the
# run's: a sample spread over the files (in case a set's files are ordered), the same for every run.
HOLDOUT_SEED = 0


def balanced_subset(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the first images of each class in file order: `size` images, classes as equal as can be."""
    classes = int(labels.max()) + 1
    if not classes <= size <= len(labels):
        raise UserError(f"dataset.subset={size} must be between {classes} and {len(labels)}")
    return _first_of_each_class(labels, size, torch.arange(len(labels)), f"dataset.subset={size}")


def holdout_split(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices to train on, indices held out) of a training set with `labels`: `size` images held out,
    classes as equal as can be, drawn by a permutation with the fixed HOLDOUT_SEED; both sorted."""
    if not 0 < size < len(labels):
        raise UserError(f"dataset.holdout_images={size} must be between 0 and {len(labels) - 1}, "
                        f"fewer than the {len(labels)} training images")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    held_out = _first_of_each_class(labels, size, order, f"dataset.holdout_images={size}")
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held_out] = False
    return torch.nonzero(kept).flatten(), held_out


def _first_of_each_class(labels: torch.Tensor, size: int, order: torch.Tensor, option: str) -> torch.Tensor:
    """Sorted indices of the first images of each class in `order`: `size` in all, classes as equal as can be;
    a one-line error naming `option` when a class has too few."""
    classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=classes)
    ordered = labels[order]
    picks = []
    for c in range(classes):
        take = size // classes + (1 if c < size % classes else 0)
        if counts[c] < take:  # ImageNet's classes hold 732 to 1,300 training images
            raise UserError(f"{option} takes {take} images of class {c}, which has {int(counts[c])}: "
                            f"a class-balanced part of this set holds at most {int(counts.min()) * classes} images")
        picks.append(order[ordered == c][:take])
    return torch.sort(torch.cat(picks)).values


def training_split(labels: torch.Tensor, subset: int | None, holdout_images: int):
    """(indices to train on, indices held out or None) of a training set with `labels`: the subset first,
    when given, then the held-out images taken from it."""
    keep = torch.arange(len(labels)) if subset is None else balanced_subset(labels, subset)
    if not holdout_images:
        return keep, None
    train, held_out = holdout_split(labels[keep], holdout_images)
    return keep[train], keep[held_out]
