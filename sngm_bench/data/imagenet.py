"""ImageNet (ILSVRC-2012) from an ImageFolder tree: `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`.

Too large to keep on the device, so JPEGs are read and decoded by DataLoader worker processes
(or, with `gpu_decode`, decoded on the GPU from the bytes the workers read) and batches are
copied from pinned memory. Training: RandomResizedCrop + horizontal flip; evaluation: resize to
256/224 of the crop size, then a center crop (He et al. 2016; Goyal et al. 2017). The loaders
offer the same interface as `DeviceImages`, so the training loop does not know which it has.

As for CIFAR-10, a training image's crop and flip are a function of (seed, epoch, image) alone:
the same whatever the number of processes or workers, and again after a resume.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2

from sngm_bench.data.device_loader import key_seed, normalize, seeded_generator, shuffled_batches
from sngm_bench.data.fingerprint import listing_digest
from sngm_bench.data.subset import training_split
from sngm_bench.errors import UserError
from sngm_bench.stop import leave_stops_to_the_training_process

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def find_images(root: Path, split: str, classes: list[str] | None = None):
    """(paths, labels, classes) of `root/split/<class>/<image>`; a one-line error naming the
    expected layout when it is not there. `classes` (from train/) fixes the label order."""
    folder = root / split
    expected = f"expected {folder}/<wnid>/*.JPEG (train/ and val/ class folders under dataset.root)"
    if not folder.is_dir():
        raise UserError(f"ImageNet layout not found: no {split}/ under {root}; {expected}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise UserError(f"ImageNet layout not found: {folder} has no class folders; {expected}")
    if classes is not None and found != classes:
        raise UserError(f"{folder} has other class folders than train/ ({len(found)} vs {len(classes)}); {expected}")
    try:
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(found)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without images
        raise UserError(f"ImageNet layout incomplete: {err}; {expected}") from None
    return [Path(p) for p, _ in samples], torch.tensor([label for _, label in samples]), found


def seeded_transform(transform, image: torch.Tensor, seed: int | None) -> torch.Tensor:
    """`transform(image)` with its random draws taken from a generator seeded with `seed` (None:
    a deterministic transform), leaving the process's own random state as it was. Only the CPU
    generator, which torchvision's transforms draw from, is seeded: torch.manual_seed would reseed
    every GPU's too, for good, in the training process (no workers, or `gpu_decode`)."""
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return transform(image)


class UnreadableImage(UserError):
    """An image file that cannot be read or decoded (truncated, not an image). Raised in a DataLoader
    worker, it reaches the training process rebuilt by torch from its text, the worker's traceback
    included (torch.utils.data's ExceptionWrapper); `ImageFolderImages` raises it again as one line."""

    @classmethod
    def of(cls, path: Path, err: RuntimeError) -> UnreadableImage:
        """The error for `path`, from torchvision's on reading or decoding it."""
        reason = str(err).strip().splitlines()[0].rpartition(", ")[2]  # less decode_jpeg's source location
        return cls(f"ImageNet image {path} cannot be read ({reason}); replace it with a good copy")


class ImageFiles(Dataset):
    """Item (i, seed) as image i, a uint8 CHW tensor, after `transform` drawn from `seed`, or as its
    raw file bytes, `seed` and `i` (GPU decoding: the transform runs after decoding, on the GPU)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, transform, decode: bool = True):
        self.paths, self.labels, self.transform, self.decode = paths, labels, transform, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int | None]):
        i, seed = item
        try:
            data = read_file(str(self.paths[i]))
            if not self.decode:
                return data, self.labels[i], seed, i
            image = decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as err:  # torchvision's, for a file it cannot read or decode
            raise UnreadableImage.of(self.paths[i], err) from None
        return seeded_transform(self.transform, image, seed), self.labels[i]


def decode_batch(files: list[torch.Tensor], device: torch.device, paths: list[Path]) -> list[torch.Tensor]:
    """The RGB images of the bytes of the JPEG files `paths`, decoded on `device` in one call (nvJPEG
    on a GPU). A file it cannot decode (ImageNet's train set has a PNG and CMYK JPEGs among its .JPEG
    files) is decoded on the CPU instead, so one odd file does not end the run; one the CPU cannot
    decode either is an UnreadableImage."""
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [decode_one(data, device, path) for data, path in zip(files, paths, strict=True)]


def decode_one(data: torch.Tensor, device: torch.device, path: Path) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        try:
            return decode_image(data, mode=ImageReadMode.RGB).to(device)
        except RuntimeError as err:
            raise UnreadableImage.of(path, err) from None


def _raw_collate(items):
    """A batch of file bytes as ONE tensor and the files' lengths: a worker sends each tensor of a
    batch through its own shared-memory file descriptor, and with one per file the queue broke
    ("Bad file descriptor") and the training process waited on it forever."""
    files, labels, seeds, indices = zip(*items)
    return torch.cat(files), torch.tensor([len(data) for data in files]), torch.stack(labels), list(seeds), indices


class GlobalBatchSampler(Sampler):
    """This process's `shard` of each global batch of an epoch: the same global batches on every
    process (what DistributedSampler with drop_last gives, split by contiguous slices), from
    `start_step` on, so a run resumed mid-epoch skips the batches it has trained on."""

    def __init__(self, num_items: int, batch_size: int, shard: slice, seed: int):
        self.num_items, self.batch_size, self.shard, self.seed = num_items, batch_size, shard, seed
        self.epoch, self.start_step = 1, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.num_items // self.batch_size - self.start_step

    def __iter__(self):
        """Items (image, the seed of its augmentation this epoch)."""
        batches = shuffled_batches(self.num_items, self.batch_size, seeded_generator("cpu", self.seed, self.epoch))
        for batch in batches[self.start_step:]:
            yield [(i, key_seed(self.seed, self.epoch, i)) for i in batch[self.shard].tolist()]


class ImageFolderImages:
    """One split of an ImageFolder tree behind a DataLoader, with `DeviceImages`'s interface."""

    def __init__(self, paths, labels, cfg, device, channels_last: bool, train: bool):
        size = cfg.image_size
        transform = (v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]) if train
                     else v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]))
        self.gpu_decode = cfg.gpu_decode and device.type == "cuda"
        self.transform = transform
        self.files = ImageFiles(paths, labels, transform, decode=not self.gpu_decode)
        self.labels, self.cfg, self.device = labels, cfg, device
        self.image_shape = (3, size, size)
        self.mean = torch.tensor(MEAN, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loader, self.sampler = None, None

    def __len__(self) -> int:
        return len(self.files)

    def _loader(self, batch_sampler) -> DataLoader:
        """A DataLoader with a generator of its own: it draws its workers' base seed (unused: every
        augmentation is seeded per image) at each iteration without workers and once with persistent
        ones, by default from the global generator, whose stream the checkpoint restores; drawn from
        it, a resume or another number of workers would shift what a model or optimizer draws."""
        workers = self.cfg.workers
        return DataLoader(self.files, batch_sampler=batch_sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
                          collate_fn=_raw_collate if self.gpu_decode else None, generator=torch.Generator(),
                          worker_init_fn=leave_stops_to_the_training_process)

    def _on_device(self, *batch):
        if self.gpu_decode:  # bytes -> decoded and transformed on the GPU, one image at a time
            files, lengths, labels, seeds, indices = batch
            decoded = decode_batch(list(files.split(lengths.tolist())), self.device,
                                   [self.files.paths[i] for i in indices])
            images = torch.stack([seeded_transform(self.transform, image, seed) for image, seed in zip(decoded, seeds)])
        else:
            images, labels = batch
        images = images.to(self.device, non_blocking=True)
        return normalize(images, self.mean, self.std, self.memory_format), labels.to(self.device, non_blocking=True)

    def train_batches(self, seed: int, epoch: int, batch_size: int, shard: slice, start_step: int = 0):
        """This process's `shard` of each global batch of an epoch, from `start_step` on."""
        if self.loader is None:  # one loader for the whole run: its workers persist across epochs
            self.sampler = GlobalBatchSampler(len(self), batch_size, shard, seed)
            self.loader = self._loader(self.sampler)
        self.sampler.set_epoch(epoch, start_step)
        yield from self._batches()

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        """A contiguous 1/world_size share of the images, in order."""
        if self.loader is None:
            share = torch.arange(len(self)).tensor_split(world_size)[rank]
            self.loader = self._loader([[(i, None) for i in part.tolist()] for part in share.split(batch_size)])
        yield from self._batches()

    def _batches(self):
        """The loader's batches, on the device."""
        try:
            for batch in self.loader:
                yield self._on_device(*batch)
        except UnreadableImage as err:  # from a worker, its text ends in "UnreadableImage: <the message>"
            raise UnreadableImage(str(err).rstrip().rpartition(f"{UnreadableImage.__name__}: ")[2]) from None


def load(cfg, device, channels_last: bool):
    """(train, val, number of classes, fingerprint, held-out training images or None) for `dataset=imagenet`:
    the fields of `sngm_bench.data.Data`. The held-out images are evaluated as the validation images are
    (resize and center crop); the fingerprint is of every image file of train/ and val/."""
    root = Path(cfg.root).expanduser().absolute()
    if cfg.image_size < 8:
        raise UserError(f"dataset.image_size={cfg.image_size} must be at least 8")
    if cfg.workers < 0:
        raise UserError(f"dataset.workers={cfg.workers} must be 0 or more")
    if cfg.prefetch_factor < 1:  # torch's DataLoader refuses it with workers, only once the first epoch starts
        raise UserError(f"dataset.prefetch_factor={cfg.prefetch_factor} must be at least 1")
    train_paths, train_labels, classes = find_images(root, "train")
    val_paths, val_labels, _ = find_images(root, "val", classes)
    train, held_out = training_split(train_labels, cfg.subset, cfg.holdout_images)

    def images(indices: torch.Tensor, training: bool) -> ImageFolderImages:
        return ImageFolderImages([train_paths[i] for i in indices.tolist()], train_labels[indices], cfg, device,
                                 channels_last, train=training)

    val = ImageFolderImages(val_paths, val_labels, cfg, device, channels_last, train=False)
    fingerprint = {"train": listing_digest(root / "train", train_paths), "val": listing_digest(root / "val", val_paths)}
    return images(train, True), val, len(classes), fingerprint, None if held_out is None else images(held_out, False)
