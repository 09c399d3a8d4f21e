"""The ImageNet pipeline on real ImageNet photos (../shared/data/imagenet-sample: 10 classes,
20 train + 10 val JPEGs each, some grayscale)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, encode_png, read_file

import sngm_bench
from sngm_bench.config import compose_config
from sngm_bench.data import build_data
from sngm_bench.data.device_loader import key_seed
from sngm_bench.data.imagenet import MEAN, STD, UnreadableImage, decode_batch, find_images, seeded_transform
from sngm_bench.errors import Interrupted, UserError
from conftest import IMAGENET_SAMPLE as SAMPLE, run_cli, run_command, wait_for

pytestmark = pytest.mark.skipif(SAMPLE is None, reason="needs the real ImageNet sample (../shared/data/imagenet-sample)")


def data(*overrides):
    cfg = compose_config(["dataset=imagenet", f"dataset.root={SAMPLE}", "dataset.workers=2", *overrides])
    return build_data(cfg.dataset, torch.device("cpu"))


def test_files_and_labels_follow_the_class_folders():
    paths, labels, classes = find_images(SAMPLE, "train")
    assert len(classes) == 10 and classes == sorted(classes) and len(paths) == 200
    assert all(p.parent.name == classes[label] for p, label in zip(paths, labels.tolist()))
    assert torch.bincount(labels).tolist() == [20] * 10


def test_eval_batches_are_normalized_center_crops_with_the_right_labels():
    val = data("dataset.image_size=96").test
    batches = list(val.eval_batches(32))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (100, 3, 96, 96) and x.dtype == torch.float32
    assert torch.equal(y, val.labels)  # in file order, each image with its folder's class
    # ImageNet statistics applied: per-channel means of real photos near 0, spreads near 1.
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.5 and 0.6 < x.std() < 1.4
    assert torch.equal(x, torch.cat([b[0] for b in val.eval_batches(32)]))  # evaluation is deterministic
    pixels = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_held_out_training_images_are_a_split_of_train_evaluated_like_val():
    whole = data("dataset.image_size=64", "dataset.subset=150").train
    split = data("dataset.image_size=64", "dataset.subset=150", "dataset.holdout_images=30")
    assert split.holdout is not None and len(split.train) == 120 and len(split.holdout) == 30
    assert torch.bincount(split.holdout.labels).tolist() == [3] * 10
    trained, held_out = set(split.train.files.paths), set(split.holdout.files.paths)
    assert trained.isdisjoint(held_out) and trained | held_out == set(whole.files.paths)
    assert all(path.parts[-3] == "train" for path in held_out)
    x, y = next(split.holdout.eval_batches(30))  # center crops, in order: evaluation's, not training's
    assert x.shape == (30, 3, 64, 64) and torch.equal(y, split.holdout.labels)
    assert torch.equal(x, next(split.holdout.eval_batches(30))[0])


def test_grayscale_photos_become_three_channels():
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    gray = [m["path"] for m in manifest if m["mode"] == "L" and m["path"].startswith("val/")]
    val = data("dataset.image_size=64").test
    index = [str(p.relative_to(SAMPLE)) for p in val.files.paths].index(gray[0])
    image, _ = val.files[(index, None)]
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_training_batches_are_random_crops_sharded_by_process():
    train = data("dataset.image_size=64").train
    first = list(train.train_batches(seed=0, epoch=1, batch_size=50, shard=slice(0, 50)))
    assert len(first) == 4 and all(x.shape == (50, 3, 64, 64) for x, _ in first)
    assert len(torch.cat([y for _, y in first])) == 200
    second = list(train.train_batches(seed=0, epoch=2, batch_size=50, shard=slice(0, 50)))
    assert not torch.equal(first[0][1], second[0][1])  # a new order each epoch
    resumed = list(train.train_batches(seed=0, epoch=2, batch_size=50, shard=slice(0, 50), start_step=3))
    assert len(resumed) == 1 and torch.equal(resumed[0][1], second[3][1])


def test_training_crops_depend_on_seed_epoch_and_image_alone():
    # One global batch of 50, whole in one process (2 workers) or split over two processes (0 and 1
    # workers), and again from a resume at step 2: the same crops and flips, image for image.
    def batches(shard, workers, start_step=0):
        train = data("dataset.image_size=48", f"dataset.workers={workers}").train
        return list(train.train_batches(seed=0, epoch=1, batch_size=50, shard=shard, start_step=start_step))

    whole = batches(slice(0, 50), 2)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, batches(slice(0, 25), 0), batches(slice(25, 50), 1), strict=True):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    for (x, y), (xr, yr) in zip(whole[2:], batches(slice(0, 50), 2, start_step=2), strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    files = data("dataset.image_size=48").train.files  # image 0 in epochs 1, 1 and 2 of seed 0
    crops = [files[(0, key_seed(0, epoch, 0))][0] for epoch in (1, 1, 2)]
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])
    # With no workers the transforms run in the training process, whose own random state they leave alone.
    state = torch.get_rng_state()
    draws = [seeded_transform(lambda image: image + torch.rand(()), torch.zeros(()), seed) for seed in (7, 7, 8)]
    assert draws[0] == draws[1] != draws[2] and torch.equal(state, torch.get_rng_state())


def test_augmentation_seeds_the_cpu_generator_only(monkeypatch):
    # torch.manual_seed reseeds every GPU's generator too, which fork_rng(devices=[]) does not restore:
    # on a GPU, with no workers or gpu_decode, whatever the training draws there restarted at each image.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    seeded_transform(lambda image: image + torch.rand(()), torch.zeros(()), 7)
    assert seeded == []


def test_reading_batches_leaves_the_training_random_state_alone():
    # DataLoader draws its workers' base seed from the global generator unless given its own: at
    # each epoch without workers, once with persistent ones. Whatever a model or optimizer draws
    # from it would then change with a resume (the checkpoint restores that generator) or workers.
    for workers in (0, 2):
        loaded = data("dataset.image_size=8", "dataset.subset=20", f"dataset.workers={workers}")
        state = torch.get_rng_state()
        for epoch in (1, 2):
            assert len(list(loaded.train.train_batches(seed=0, epoch=epoch, batch_size=10, shard=slice(0, 10)))) == 2
            assert len(list(loaded.test.eval_batches(100))) == 1
        assert torch.equal(state, torch.get_rng_state()), f"dataset.workers={workers}"


def test_gpu_decode_path_run_on_the_cpu_gives_the_workers_batches():
    # dataset.gpu_decode's code path (bytes from the workers, decoded and augmented in the training
    # process) with the CPU as its device: the same seeded crops as decoding in the workers.
    # With one tensor per file from the workers this hung on a broken queue ("Bad file descriptor").
    def batches(gpu_decode):
        loaded = data("dataset.image_size=48")
        for split in (loaded.train, loaded.test):
            split.gpu_decode, split.files.decode = gpu_decode, not gpu_decode
        return [*loaded.train.train_batches(seed=0, epoch=1, batch_size=50, shard=slice(0, 50)),
                *loaded.test.eval_batches(40)]

    for (x, y), (xg, yg) in zip(batches(False), batches(True), strict=True):
        assert torch.equal(x, xg) and torch.equal(y, yg)


def test_files_that_are_not_jpeg_decode_on_the_cpu_instead():
    # ImageNet's train set holds a PNG under a .JPEG name; a batch with one decodes the rest as JPEGs.
    jpeg = read_file(str(find_images(SAMPLE, "train")[0][0]))
    png = encode_png(decode_image(jpeg, mode=ImageReadMode.RGB))
    decoded = decode_batch([jpeg, png, jpeg], torch.device("cpu"), [Path("a.JPEG"), Path("b.JPEG"), Path("c.JPEG")])
    assert len(decoded) == 3 and all(image.shape == decoded[0].shape and image.shape[0] == 3 for image in decoded)
    assert torch.equal(decoded[0], decoded[2]) and torch.equal(decoded[1], decode_image(png))


def test_with_gpu_decode_a_truncated_photo_is_an_error_naming_it(tmp_path):
    # dataset.gpu_decode's code path with the CPU as its device: the files reach the training process as bytes.
    root = tmp_path / "imagenet"
    shutil.copytree(SAMPLE, root)
    photo = sorted((root / "train").rglob("*.JPEG"))[0]
    photo.write_bytes(photo.read_bytes()[:2000])
    cfg = compose_config(["dataset=imagenet", f"dataset.root={root}", "dataset.workers=2", "dataset.image_size=8"])
    train = build_data(cfg.dataset, torch.device("cpu")).train
    train.gpu_decode, train.files.decode = True, False
    with pytest.raises(UnreadableImage) as raised:
        list(train.train_batches(seed=0, epoch=1, batch_size=200, shard=slice(0, 200)))
    assert str(raised.value) == f"ImageNet image {photo} cannot be read (Image is incomplete or truncated); " \
        "replace it with a good copy"


def test_the_fingerprint_covers_the_image_files_the_dataset_reads_and_only_those(tmp_path):
    # An image beside the class folders is no part of the dataset (ImageFolder reads class folders only):
    # a continuation must not be refused for it. A class folder's image of another size is.
    root = tmp_path / "imagenet"
    shutil.copytree(SAMPLE, root)

    def fingerprint():
        return data(f"dataset.root={root}", "dataset.workers=0").fingerprint

    recorded = fingerprint()
    shutil.copyfile(next((root / "train").rglob("*.JPEG")), root / "train" / "stray.JPEG")
    assert fingerprint() == recorded
    with open(next((root / "val").rglob("*.JPEG")), "ab") as photo:
        photo.write(b"\0")
    changed = fingerprint()
    assert changed["train"] == recorded["train"] and changed["val"] != recorded["val"]


def test_wrong_layout_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"no train/ under .*expected .*/train/<wnid>/\*\.JPEG"):
        find_images(tmp_path, "train")
    shutil.copytree(SAMPLE / "train", tmp_path / "train")
    shutil.copytree(SAMPLE / "val", tmp_path / "val")
    shutil.rmtree(tmp_path / "val" / "n01440764")
    with pytest.raises(UserError, match="other class folders than train/"):
        data(f"dataset.root={tmp_path}")


@pytest.mark.parametrize("override, message", [
    ("dataset.image_size=4", "dataset.image_size=4 must be at least 8"),
    ("dataset.workers=-1", "dataset.workers=-1 must be 0 or more"),
    ("dataset.prefetch_factor=0", "dataset.prefetch_factor=0 must be at least 1"),
])
def test_loader_settings_out_of_range_are_clear_errors_before_training(override, message):
    with pytest.raises(UserError, match=message):
        data(override)


def test_resnet50_trains_two_steps_at_low_resolution(tmp_path):
    result = run_cli(["dataset=imagenet", "model=resnet50", f"dataset.root={SAMPLE}", "dataset.image_size=64",
                      "dataset.workers=2", "batch_size=100", "epochs=1", "eval_batch_size=50"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "default").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_per_epoch"] == 2
    assert summary["train_images"] == 200 and summary["test_images"] == 100
    assert summary["parameters"] == 23_528_522  # torchvision's ResNet-50 with a 10-class head
    assert (run_dir / "metrics.csv").read_text().count("\n") == 2


def test_a_truncated_photo_is_one_line_naming_it_and_recorded(tmp_path):
    # Read in a DataLoader worker, whose error torch raises again with the worker's traceback in its text.
    root = tmp_path / "imagenet"
    shutil.copytree(SAMPLE, root)
    photo = sorted((root / "train").rglob("*.JPEG"))[0]
    photo.write_bytes(photo.read_bytes()[:2000])
    result = run_cli(["dataset=imagenet", "model=resnet50", "model.arch=resnet18", f"dataset.root={root}",
                      "dataset.image_size=8", "dataset.workers=2", "batch_size=50", "epochs=1", "hydra.run.dir=run"],
                     cwd=tmp_path)
    message = f"ImageNet image {photo} cannot be read (Image is incomplete or truncated); replace it with a good copy"
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"sngm-bench: error: {message}"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].endswith(message)


def test_wrong_layout_from_the_command_line(tmp_path):
    result = run_cli(["dataset=imagenet", f"dataset.root={tmp_path}", "epochs=1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sngm-bench: error: ImageNet layout not found: no train/ under {tmp_path}; expected {tmp_path}/train/"
        "<wnid>/*.JPEG (train/ and val/ class folders under dataset.root)"]



# SGD that adds noise to every update, drawn from the global torch RNG (as a Langevin-type method
# does): the random state a checkpoint saves and restores, so a resume stays exact for it too.
NOISY_SGD = '''
import torch


class NoisySGD(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(torch.randn_like(p), alpha=1e-3)
'''


def test_resumed_mid_epoch_and_at_an_epoch_end_with_workers_it_trains_what_an_uninterrupted_run_does(
        tmp_path, monkeypatch):
    # The stopped run: a deadline at its first step stops it at (1, 1), mid-epoch; continued with the
    # same deadline, at its next step, the epoch's last, so at (2, 0); then it runs to the end. It
    # reads with 2 workers, the uninterrupted run with none (dataset.workers does not change what is
    # trained). Weights bit for bit: the loader must leave the random state of the training alone.
    (tmp_path / "noisy.py").write_text(NOISY_SGD)
    (tmp_path / "my_configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_configs" / "optimizer" / "noisy.yaml").write_text("_target_: noisy.NoisySGD\nlr: 0.05\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]", "optimizer=noisy", "dataset=imagenet",
            f"dataset.root={SAMPLE}", "dataset.subset=40", "dataset.image_size=16", "model=resnet50",
            "model.arch=resnet18", "batch_size=20", "epochs=2", "eval_batch_size=100"]
    sngm_bench.run([*args, "dataset.workers=0", "hydra.run.dir=straight"])
    stopped = [*args, "dataset.workers=2", "hydra.run.dir=stopped"]
    for _ in range(2):
        with pytest.raises(Interrupted):
            sngm_bench.run([*stopped, "max_minutes=1e-6"])
    summary = sngm_bench.run(stopped)
    assert [(entry["epoch"], entry["step"]) for entry in summary["resumed_at"]] == [(1, 1), (2, 0)]
    final, reference = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"]
                        for run in ("stopped", "straight"))
    assert [key for key in reference if not torch.equal(final[key], reference[key])] == []


def test_a_run_is_not_continued_on_other_data(tmp_path, monkeypatch):
    # dataset.root is where the data lives, not what is trained: a copy with a file swapped for another
    # or with files missing must not continue the run (other images, other steps per epoch) under its record.
    root = tmp_path / "imagenet"
    shutil.copytree(SAMPLE, root)
    monkeypatch.chdir(tmp_path)
    args = ["dataset=imagenet", f"dataset.root={root}", "dataset.image_size=8", "dataset.workers=0", "model=resnet50",
            "model.arch=resnet18", "batch_size=50", "epochs=1", "eval_batch_size=100", "hydra.run.dir=run"]
    with pytest.raises(Interrupted):
        sngm_bench.run([*args, "max_minutes=1e-6"])
    stopped = json.loads((tmp_path / "run" / "summary.json").read_text())
    photos = sorted((root / "train").rglob("*.JPEG"))
    shutil.copyfile(photos[1], photos[0])  # as many images, one of them another photo
    with pytest.raises(UserError, match=r"run trained on other data: data_fingerprint\.train='\w+' \(now '\w+'\); "
                                        "set dataset.root"):
        sngm_bench.run(args)
    for path in photos[:10]:
        path.unlink()
    with pytest.raises(UserError, match=r"run trained on other data: train_images=200 \(now 190\), data_fingerprint"):
        sngm_bench.run(args)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == stopped


def test_sigterm_to_the_whole_process_group_stops_a_run_with_workers_at_a_checkpoint(tmp_path):
    # SLURM's preemption and `timeout` signal every process of the job, the DataLoader workers too: they must
    # leave the stop to the training process, which saves its checkpoint and says so in one line.
    args = ["dataset=imagenet", f"dataset.root={SAMPLE}", "dataset.image_size=16", "dataset.workers=2",
            "model=resnet50", "model.arch=resnet18", "batch_size=20", "epochs=4", "eval_batch_size=100",
            "hydra.run.dir=run"]
    process = subprocess.Popen([sys.executable, "-m", "sngm_bench", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # stderr: its one line
    metrics = tmp_path / "run" / "metrics.csv"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 1, process, 300)  # epoch 1 written
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        f"sngm-bench: stopped by SIGTERM; checkpoint saved in {tmp_path / 'run'}, run the same command again "
        "to continue"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (summary["status"], summary["interrupted_by"], summary["interrupted_epoch"]) == \
        ("interrupted", "SIGTERM", state["epoch"]) and state["epoch"] >= 2


# A script that ends with an ImageNet loader's workers alive, forked inside the stop handling, as a run's
# can be when the interpreter exits: multiprocessing then ends them with its SIGTERM.
EXIT_WITH_WORKERS_ALIVE = f"""
import torch
from sngm_bench.config import compose_config
from sngm_bench.data import build_data
from sngm_bench.stop import StopRequest

cfg = compose_config(["dataset=imagenet", "dataset.root={SAMPLE}", "dataset.workers=2", "dataset.image_size=16"])
data = build_data(cfg.dataset, torch.device("cpu"))
with StopRequest():
    batches = data.train.train_batches(0, 1, 20, slice(0, 20))
    next(batches)
"""


def test_workers_still_end_at_their_parents_sigterm_when_the_interpreter_exits(tmp_path):
    assert run_command([sys.executable, "-c", EXIT_WITH_WORKERS_ALIVE], tmp_path, timeout=120).returncode == 0
