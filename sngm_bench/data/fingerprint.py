"""Fingerprints of the data under `dataset.root`: recorded when a run starts, so that a continuation
can tell that it finds the data the run trained on (image counts alone miss a changed image).

CIFAR-10: a SHA-256 of each batch file's bytes (185 MB: 0.2 s from the page cache, measured).
ImageNet: its 1.33 M files are too many to read at every start, so each split's fingerprint is a
SHA-256 of its image files' sorted relative paths and sizes: a directory walk and a stat per file
(about 10 microseconds a file from the page cache, measured: some 13 s for ImageNet; docs/data.md).
A file swapped for another of the very same name and size goes unseen (for JPEG photos, rare).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from sngm_bench.data import cifar10

IMAGENET_SPLITS = ("train", "val")


def data_fingerprint(cfg) -> dict[str, str]:
    """{part of the data: hex digest} for the dataset config `cfg`, whose files have been found:
    CIFAR-10's batch files by name, ImageNet's splits (the whole folders, whatever `subset` takes)."""
    root = Path(cfg.root).expanduser().absolute()
    if cfg.name == "cifar10":
        folder = root / cifar10.FOLDER
        return {name: cifar10.file_digest(folder / name, "sha256")[:16]
                for name in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)}
    return {split: _listing_digest(root / split) for split in IMAGENET_SPLITS}


def _listing_digest(folder: Path) -> str:
    """A digest of the relative paths and sizes of the image files under `folder`, found as
    torchvision's ImageFolder finds them (links followed, by extension in any case)."""
    entries = []
    for directory, _, files in os.walk(folder, followlinks=True):
        prefix = os.path.relpath(directory, folder)
        for name in files:
            if name.lower().endswith(IMG_EXTENSIONS):
                entries.append(f"{prefix}/{name}\0{os.stat(os.path.join(directory, name)).st_size}\n")
    entries.sort()
    return hashlib.sha256("".join(entries).encode(errors="surrogateescape")).hexdigest()[:16]
