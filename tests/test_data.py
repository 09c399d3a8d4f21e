"""CIFAR-10 from the real files, and the on-device batching and augmentation."""

import shutil

import pytest
import torch

from sngm_bench.config import compose_config
from sngm_bench.data import build_data, cifar10
from sngm_bench.data.subset import balanced_subset
from sngm_bench.data.device_loader import DeviceImages, key_seed, seeded_generator, shuffled_batches
from sngm_bench.errors import UserError


@pytest.fixture(scope="module")
def cifar(full_cifar_root):
    return cifar10.load(full_cifar_root)


def test_real_files_have_the_official_shapes_and_balance(cifar):
    train_x, train_y, test_x, test_y = cifar
    assert train_x.shape == (50_000, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (10_000, 3, 32, 32) and test_x.dtype == torch.uint8
    assert train_y.dtype == torch.int64
    assert torch.bincount(train_y).tolist() == [5000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    # Real photos, not blank: channel means near the published statistics.
    means = train_x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(cifar10.MEAN), atol=0.01)


def test_balanced_subset_is_fixed_and_balanced(cifar):
    labels = cifar[1]
    subset = balanced_subset(labels, 1003)
    assert len(subset) == 1003 == len(set(subset.tolist()))
    counts = torch.bincount(labels[subset]).tolist()
    assert max(counts) - min(counts) <= 1
    assert torch.equal(subset, balanced_subset(labels, 1003))
    with pytest.raises(UserError, match="dataset.subset=5 must be between 10 and 50000"):
        balanced_subset(labels, 5)
    # Unequal classes: a size that would take more of a class than it has is refused, not cut short.
    uneven = torch.tensor([0] * 3 + [1] * 10)
    assert torch.bincount(uneven[balanced_subset(uneven, 6)]).tolist() == [3, 3]
    with pytest.raises(UserError, match="takes 4 images of class 0, which has 3: .* at most 6 images"):
        balanced_subset(uneven, 8)


def image_bytes(images: DeviceImages) -> set[bytes]:
    return {bytes(image) for image in images.images.contiguous().flatten(1).numpy()}


def test_held_out_images_are_a_fixed_class_balanced_split_of_the_subset_never_trained_on(full_cifar_root):
    def data(*overrides, global_seed=0):
        torch.manual_seed(global_seed)  # as a run seeds torch before it builds its data
        cfg = compose_config(["experiment=smoke", "dataset.subset=1000", f"dataset.root={full_cifar_root}", *overrides])
        return build_data(cfg.dataset, torch.device("cpu"))

    whole = data()
    split = data("dataset.holdout_images=205")
    assert whole.holdout is None and len(split.train) == 795 and len(split.holdout) == 205
    counts = torch.bincount(split.holdout.labels).tolist()
    assert max(counts) - min(counts) <= 1
    # Disjoint from what is trained on, and together the subset (every image of it is distinct).
    trained, held_out = image_bytes(split.train), image_bytes(split.holdout)
    assert trained.isdisjoint(held_out) and trained | held_out == image_bytes(whole.train)
    assert len(trained | held_out) == 1000
    # Neither the run's seed nor its optimizer chooses the images: every run of a sweep holds out the same.
    other = data("dataset.holdout_images=205", "seed=3", "optimizer=msgd", global_seed=3)
    assert torch.equal(other.holdout.images, split.holdout.images) and torch.equal(other.train.images,
                                                                                   split.train.images)
    # A sample spread over the files, not the subset's last images.
    assert not torch.equal(split.holdout.images, whole.train.images[-205:])
    for bad in (-1, 1000):
        with pytest.raises(UserError, match=rf"^dataset.holdout_images={bad} must be between 0 and 999, fewer "
                                            "than the 1000 training images$"):
            data(f"dataset.holdout_images={bad}")


def test_corrupted_file_is_rejected_unless_the_check_is_off(full_cifar_root, tmp_path):
    copy = tmp_path / cifar10.FOLDER
    shutil.copytree(full_cifar_root / cifar10.FOLDER, copy)
    with open(copy / "data_batch_3", "r+b") as f:
        f.seek(20_000_000)  # inside the pixel array: the file still unpickles
        f.write(b"\x00" * 64)
    with pytest.raises(UserError, match="data_batch_3 fails its md5 check"):
        cifar10.load(tmp_path)
    assert cifar10.load(tmp_path, verify=False)[0].shape == (50_000, 3, 32, 32)
    (copy / "test_batch").write_bytes((copy / "test_batch").read_bytes()[:1000])
    with pytest.raises(UserError, match="test_batch cannot be read"):
        cifar10.load(tmp_path, verify=False)


def test_a_damaged_checksum_listing_or_a_folder_in_a_files_place_is_one_clear_error(full_cifar_root, tmp_path):
    copy = tmp_path / cifar10.FOLDER
    shutil.copytree(full_cifar_root / cifar10.FOLDER, copy)
    listing = (copy / "md5sums.txt").read_text()
    (copy / "md5sums.txt").write_text(listing + "an edited line\n")  # was a ValueError traceback
    with pytest.raises(UserError, match=r"md5sums.txt line \d+ is not '<md5> <file name>': 'an edited line'"):
        cifar10.load(tmp_path)
    (copy / "md5sums.txt").write_text("".join(line + "\n" for line in listing.splitlines() if "test_batch" not in line))
    with pytest.raises(UserError, match="test_batch has no checksum in .*md5sums.txt"):  # was: "truncated or corrupted"
        cifar10.load(tmp_path)
    (copy / "md5sums.txt").write_text(listing)
    (copy / "test_batch").unlink()
    (copy / "test_batch").mkdir()  # was an IsADirectoryError traceback, checked or not
    for verify in (True, False):
        with pytest.raises(UserError, match="test_batch cannot be read .*Is a directory"):
            cifar10.load(tmp_path, verify=verify)


def test_missing_folder_and_offline_download_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="CIFAR-10 not found.*dataset.download=true"):
        cifar10.load(tmp_path)
    monkeypatch.setattr(cifar10, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens there
    with pytest.raises(UserError, match="could not download CIFAR-10"):
        cifar10.load(tmp_path, download_missing=True)


def test_files_are_official_only_when_the_checksums_they_passed_are_the_official_ones(tmp_path):
    folder = tmp_path / cifar10.FOLDER
    folder.mkdir()
    assert cifar10.is_official(tmp_path, verified=True) is True  # no listing: checked against the official list
    listing = "".join(f"{digest}  {name}\n" for name, digest in cifar10.OFFICIAL_MD5.items())
    (folder / "md5sums.txt").write_text(listing)
    assert cifar10.is_official(tmp_path, verified=True) is True
    (folder / "md5sums.txt").write_text(listing.replace(cifar10.OFFICIAL_MD5["data_batch_2"], "0" * 32))
    assert cifar10.is_official(tmp_path, verified=True) is False  # a rebuilt copy's own list
    assert cifar10.is_official(tmp_path, verified=False) is None


def test_official_checksums_apply_without_a_listing(full_cifar_root, tmp_path):
    assert cifar10.expected_md5(tmp_path) == cifar10.OFFICIAL_MD5
    assert cifar10.expected_md5(full_cifar_root / cifar10.FOLDER)["test_batch"] != cifar10.OFFICIAL_MD5["test_batch"]


def _windows(image, pad=4):
    """Every 32x32 crop of the zero-padded image, flipped and not."""
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    size = image.shape[-1]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + size, dx:dx + size]
            yield crop
            yield crop.flip(-1)


def test_augmentation_only_shifts_and_flips(cifar):
    images = DeviceImages(cifar[0][:64], cifar[1][:64], (0.0,) * 3, (1 / 255,) * 3, "cpu")
    generator = seeded_generator("cpu", 0, 1)
    indices = torch.arange(64)
    x, y = images.augmented_batch(indices, images.random_shifts(64, generator))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, cifar[1][:64])
    shifted = flipped = 0
    for i in range(64):
        crop = x[i].round().to(torch.uint8)
        matches = [k for k, w in enumerate(_windows(cifar[0][i])) if torch.equal(w, crop)]
        assert matches, f"image {i} is not a shifted/flipped copy of the original"
        shifted += all(k // 2 != 40 for k in matches)  # 40: the centred window
        flipped += all(k % 2 == 1 for k in matches)
    assert 10 < flipped < 54 and shifted > 32


def test_shifts_take_every_offset_from_none_to_twice_the_padding_and_flip_half_the_images():
    # Each window of the padded image is a crop: an offset range one short would never shift down or right.
    images = DeviceImages(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), (0.0,) * 3,
                          (1.0,) * 3, "cpu", pad=4)
    dy, dx, flip = images.random_shifts(10_000, seeded_generator("cpu", 0, 1))
    assert dy.unique().tolist() == dx.unique().tolist() == list(range(9))
    assert 0.45 < flip.float().mean() < 0.55


def test_normalization_uses_the_channel_statistics(cifar):
    images = DeviceImages(cifar[0], cifar[1], cifar10.MEAN, cifar10.STD, "cpu")
    x, _ = images.batch(torch.arange(50_000))
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.02)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.02)


def test_epoch_batches_are_full_disjoint_and_reproducible():
    batches = shuffled_batches(1000, 128, seeded_generator("cpu", 3, 7))
    assert [len(b) for b in batches] == [128] * 7
    assert len(set(torch.cat(batches).tolist())) == 896
    again = shuffled_batches(1000, 128, seeded_generator("cpu", 3, 7))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = shuffled_batches(1000, 128, seeded_generator("cpu", 3, 8))
    assert not torch.equal(batches[0], other[0])


def test_keys_that_a_positional_sum_would_merge_get_different_seeds():
    # (seed, epoch, image): ImageNet's image 1,000,003 in epoch 1 and image 0 in epoch 2 once shared draws.
    assert key_seed(0, 1, 1_000_003) != key_seed(0, 2, 0)
    assert key_seed(1, 0) != key_seed(0, 1) and key_seed(1, 2) != key_seed(1, 2, 0)
    seeds = {key_seed(seed, epoch, image) for seed in range(3) for epoch in range(3) for image in range(1000)}
    assert len(seeds) == 9000 and max(seeds) < 2**63 and 0 <= key_seed(2**63 - 1, 5) < 2**63  # the largest seed


def test_train_batches_resume_at_any_step_and_shard_one_global_batch(cifar):
    images = DeviceImages(cifar[0][:500], cifar[1][:500], (0.5,) * 3, (0.25,) * 3, "cpu")
    full = list(images.train_batches(seed=1, epoch=2, batch_size=100, shard=slice(0, 100)))
    assert len(full) == 5 and all(x.shape == (100, 3, 32, 32) for x, _ in full)
    resumed = list(images.train_batches(seed=1, epoch=2, batch_size=100, shard=slice(0, 100), start_step=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], resumed)) and len(resumed) == 2
    halves = [list(images.train_batches(1, 2, 100, slice(r * 50, (r + 1) * 50))) for r in range(2)]
    for step in range(5):  # two processes' shards put together are the one-process batch
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), full[step][0])
    next_epoch = next(images.train_batches(1, 3, 100, slice(0, 100)))
    assert not torch.equal(full[0][1], next_epoch[1])  # reshuffled: other images, not only other crops of them


def test_eval_batches_cover_every_image_once_across_processes(cifar):
    images = DeviceImages(cifar[0][:103], cifar[1][:103], (0.5,) * 3, (0.25,) * 3, "cpu")
    labels = [torch.cat([y for _, y in images.eval_batches(10, rank, 3)]) for rank in range(3)]
    assert torch.equal(torch.cat(labels), cifar[1][:103])
