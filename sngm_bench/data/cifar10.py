"""CIFAR-10 read from torchvision's `cifar-10-batches-py` files into uint8 tensors.

The whole set is a few hundred MB at most, so it lives on the training device; batching and
augmentation happen there too (see `sngm_bench.data.device_loader`).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from sngm_bench.errors import UserError

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
# Checksums of the official release (torchvision.datasets.CIFAR10 uses the same list).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# Per-channel statistics of the training set, in [0, 1] units.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10


def expected_md5(folder: Path) -> dict[str, str]:
    """Checksums from `md5sums.txt` beside the files when present (rebuilt copies), else official."""
    listing = folder / "md5sums.txt"
    if not listing.exists():
        return OFFICIAL_MD5
    sums = {}
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if line.strip():
            try:
                digest, name = line.split()
            except ValueError:
                raise UserError(f"{listing} line {number} is not '<md5> <file name>': {line.strip()!r}; fix it, "
                                "or set dataset.verify_checksums=false to skip the check") from None
            sums[name.lstrip("*")] = digest
    return sums


def batches_folder(root: str | Path) -> Path:
    """The `cifar-10-batches-py` folder under `dataset.root` (`~` expanded, made absolute)."""
    return Path(root).expanduser().absolute() / FOLDER


def is_official(root: str | Path, verified: bool) -> bool | None:
    """Whether the files under `root` that `load` read are the official release: true when the
    checksums they passed are the official ones, false when they are another list's (an
    `md5sums.txt` beside a rebuilt or altered copy), None when they were not checked."""
    if not verified:
        return None
    sums = expected_md5(batches_folder(root))
    return all(sums.get(name) == OFFICIAL_MD5[name] for name in (*TRAIN_FILES, *TEST_FILES))


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes by hashlib's `algorithm`, read in 4 MiB chunks (Python 3.10
    lacks hashlib.file_digest): its md5 checked here, its fingerprint (`sngm_bench.data.fingerprint`)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(root: Path) -> None:
    """Fetch and unpack the official archive into `root`; a one-line error when offline."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(URL, str(root), md5=ARCHIVE_MD5)
    except Exception as err:  # urllib raises several types; all mean the same to the user
        raise UserError(
            f"could not download CIFAR-10 from {URL} ({type(err).__name__}: {err}); "
            f"put cifar-10-batches-py under {root} by hand or set dataset.root / SNGM_DATA"
        ) from err


def _check_md5(path: Path, sums: dict[str, str]) -> None:
    skip = "or set dataset.verify_checksums=false to skip the check"
    if path.name not in sums:
        raise UserError(f"CIFAR-10 file {path} has no checksum in {path.parent / 'md5sums.txt'}; add its md5 there, "
                        f"{skip}")
    try:
        digest = file_digest(path, "md5")
    except OSError as err:  # a folder in its place, no permission, a failing disk
        raise UserError(f"CIFAR-10 file {path} cannot be read ({err.strerror or err})") from None
    if digest != sums[path.name]:
        raise UserError(f"CIFAR-10 file {path} fails its md5 check (truncated or corrupted); re-download it, {skip}")


def _read_batches(folder: Path, names: list[str], sums: dict[str, str], verify: bool):
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise UserError(f"CIFAR-10 file {path} is missing; rebuild or re-download the dataset")
        if verify:
            _check_md5(path, sums)
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        except Exception as err:
            raise UserError(f"CIFAR-10 file {path} cannot be read ({type(err).__name__}: {err})") from err
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load(root: str | Path, download_missing: bool = False, verify: bool = True):
    """Return (train_images, train_labels, test_images, test_labels): uint8 NCHW and int64 tensors."""
    folder = batches_folder(root)
    root = folder.parent
    if not folder.is_dir():
        if not download_missing:
            raise UserError(
                f"CIFAR-10 not found: no {FOLDER}/ under {root}; set dataset.root (or SNGM_DATA) "
                "to the folder that holds it, or add dataset.download=true"
            )
        download(root)
    sums = expected_md5(folder)
    train = _read_batches(folder, TRAIN_FILES, sums, verify)
    test = _read_batches(folder, TEST_FILES, sums, verify)
    return (*train, *test)
