"""Datasets by config name: `build_data(cfg.dataset, device, channels_last)`."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from sngm_bench.data import cifar10
from sngm_bench.data.device_loader import DeviceImages
from sngm_bench.data.fingerprint import cifar10_fingerprint
from sngm_bench.data.subset import training_split
from sngm_bench.errors import UserError


@dataclass
class Data:
    """Training, test and held-out images behind one interface: `train_batches`, `eval_batches`, `len`,
    `image_shape` (`DeviceImages` for CIFAR-10, `imagenet.ImageFolderImages` for ImageNet). `holdout`:
    training images kept out of training (`dataset.holdout_images`), evaluated like the test set;
    None without them. `fingerprint`: of the files they were read from (`sngm_bench.data.fingerprint`).
    `official`: whether those files are the dataset's official release (`cifar10.is_official`); None
    where that is not known (not checked, or ImageNet, which has no official checksums here)."""

    train: Any
    test: Any
    num_classes: int
    fingerprint: dict[str, str]
    holdout: Any = None
    official: bool | None = None

    def evaluated(self) -> dict[str, Any]:
        """The sets evaluated after every epoch, by the name of their metrics (`test_acc`, `holdout_acc`)."""
        return {"test": self.test} | ({} if self.holdout is None else {"holdout": self.holdout})


def build_data(cfg, device, channels_last: bool = False) -> Data:
    if cfg.name == "cifar10":
        images, labels, test_x, test_y = cifar10.load(cfg.root, cfg.download, cfg.verify_checksums)
        train, held_out = training_split(labels, cfg.subset, cfg.holdout_images)
        stats = (cifar10.MEAN, cifar10.STD, device, channels_last)
        holdout = None if held_out is None else DeviceImages(images[held_out], labels[held_out], *stats)
        return Data(DeviceImages(images[train], labels[train], *stats), DeviceImages(test_x, test_y, *stats),
                    cifar10.NUM_CLASSES, cifar10_fingerprint(cfg.root), holdout,
                    cifar10.is_official(cfg.root, cfg.verify_checksums))
    if cfg.name == "imagenet":
        from sngm_bench.data import imagenet  # torchvision: seconds of start-up a CIFAR-10 run does without

        return Data(*imagenet.load(cfg, device, channels_last))
    raise UserError(f"dataset={cfg.name} has no loader")
