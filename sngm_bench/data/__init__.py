"""Datasets by config name: `build_data(cfg.dataset, device, channels_last)`."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from sngm_bench.data import cifar10, imagenet
from sngm_bench.data.device_loader import DeviceImages
from sngm_bench.data.fingerprint import data_fingerprint
from sngm_bench.data.subset import balanced_subset
from sngm_bench.errors import UserError


@dataclass
class Data:
    """Training and test images behind one interface: `train_batches`, `eval_batches`, `len`,
    `image_shape` (`DeviceImages` for CIFAR-10, `imagenet.ImageFolderImages` for ImageNet), and
    the fingerprint of the files they were read from (`data_fingerprint`)."""

    train: Any
    test: Any
    num_classes: int
    fingerprint: dict[str, str]


def build_data(cfg, device, channels_last: bool = False) -> Data:
    if cfg.name == "cifar10":
        train_x, train_y, test_x, test_y = cifar10.load(cfg.root, cfg.download, cfg.verify_checksums)
        if cfg.subset is not None:
            keep = balanced_subset(train_y, cfg.subset)
            train_x, train_y = train_x[keep], train_y[keep]
        stats = (cifar10.MEAN, cifar10.STD, device, channels_last)
        return Data(DeviceImages(train_x, train_y, *stats), DeviceImages(test_x, test_y, *stats), cifar10.NUM_CLASSES,
                    data_fingerprint(cfg))
    if cfg.name == "imagenet":
        return Data(*imagenet.load(cfg, device, channels_last), data_fingerprint(cfg))
    raise UserError(f"dataset={cfg.name} has no loader")
