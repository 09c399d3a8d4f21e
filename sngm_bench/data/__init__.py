"""Datasets by config name: `build_data(cfg.dataset, device, channels_last)`."""

from __future__ import annotations

from dataclasses import dataclass

from sngm_bench.data import cifar10
from sngm_bench.data.device_loader import DeviceImages
from sngm_bench.errors import UserError


@dataclass
class Data:
    train: DeviceImages
    test: DeviceImages
    num_classes: int


def build_data(cfg, device, channels_last: bool = False) -> Data:
    if cfg.name == "cifar10":
        train_x, train_y, test_x, test_y = cifar10.load(cfg.root, cfg.download, cfg.verify_checksums)
        if cfg.subset is not None:
            keep = cifar10.balanced_subset(train_y, cfg.subset)
            train_x, train_y = train_x[keep], train_y[keep]
        stats = (cifar10.MEAN, cifar10.STD, device, channels_last)
        return Data(DeviceImages(train_x, train_y, *stats), DeviceImages(test_x, test_y, *stats), cifar10.NUM_CLASSES)
    raise UserError(f"dataset={cfg.name} is not implemented yet; use dataset=cifar10")
