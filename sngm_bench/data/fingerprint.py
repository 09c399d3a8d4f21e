"""Fingerprints of the data under `dataset.root`: recorded when a run starts, so that a continuation
can tell that it finds the data the run trained on (image counts alone miss a changed image).

CIFAR-10: a SHA-256 of each batch file's bytes (185 MB: 0.2 s from the page cache, measured).
ImageNet: its 1.33 M files are too many to read at every start, so each split's fingerprint is a
SHA-256 of its image files' sorted relative paths and sizes: a stat per file of the list the
dataset builds anyway, with no directory walk of its own (docs/data.md has the times). A file
swapped for another of the very same name and size goes unseen (for JPEG photos, rare).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sngm_bench.data import cifar10


def cifar10_fingerprint(root: str) -> dict[str, str]:
    """{batch file name: hex digest} of CIFAR-10 under `dataset.root`, whose files have been found."""
    folder = cifar10.batches_folder(root)
    return {name: cifar10.file_digest(folder / name, "sha256")[:16]
            for name in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)}


def listing_digest(folder: Path, paths: list[Path]) -> str:
    """A digest of the paths relative to `folder` and the sizes of the image files `paths` under it:
    all of a split's, as the dataset found them (torchvision's ImageFolder), whatever `subset` takes."""
    start = len(str(folder)) + 1  # the paths are `folder` joined with the file's own: its relative path follows
    entries = sorted(f"{path[start:]}\0{os.stat(path).st_size}\n" for path in map(str, paths))
    return hashlib.sha256("".join(entries).encode(errors="surrogateescape")).hexdigest()[:16]
