"""Shared fixtures. Tests use the real CIFAR-10 files: SNGM_DATA, or ~/.cache/sngm-bench/data,
built from ../shared/data on first use when that folder is there; training tests evaluate on a
class-balanced tenth of the real test set (`cifar_root`)."""

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

# pytest-xdist runs one test process per core (at most 4). Each of them, and every training process a
# test starts, gets its share of the cores as threads: torch's default, a thread per core in every
# process, puts several threads on each core, and OpenMP's threads spin while they wait for each
# other. Two tiny runs side by side on 2 cores took 10.2-12.4 s with one thread each, 12.8-17.4 s
# and once 50.4 s with two.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import numpy as np  # noqa: E402 (after the thread count, which numpy reads as it is imported)
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT.parent / "shared" / "data" / "build_cifar10.py"
# `python -m sngm_bench` as torchrun starts it in two processes (gloo on a CPU): prefix of its arguments.
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Test images of each class in the CIFAR-10 that the training tests use (`cifar_root`): 1,000 in all.
TEST_IMAGES_PER_CLASS = 100
# Real ImageNet photos: ../shared/data/imagenet-sample here, .device/imagenet-sample on the GPU machine.
IMAGENET_SAMPLE = next((p for p in (ROOT.parent / "shared" / "data" / "imagenet-sample",
                                    ROOT / ".device" / "imagenet-sample") if p.is_dir()), None)


@pytest.fixture(scope="session")
def full_cifar_root() -> Path:
    """The real CIFAR-10: found, built from ../shared/data, or downloaded, in that order."""
    from sngm_bench.data import cifar10
    from sngm_bench.errors import UserError

    root = Path(os.environ.get("SNGM_DATA", "~/.cache/sngm-bench/data")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's workers each run this fixture: one builds or downloads, the others wait for it.
    with open(root / ".tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / cifar10.FOLDER / "test_batch").exists() and BUILD_SCRIPT.exists():
            subprocess.run([sys.executable, str(BUILD_SCRIPT), str(root)], check=True)
        try:
            cifar10.load(root, download_missing=True, verify=False)
        except UserError as err:
            pytest.fail(f"the tests need the real CIFAR-10: {err}")
    return root


@pytest.fixture(scope="session")
def cifar_root(full_cifar_root, tmp_path_factory) -> Path:
    """What the training tests train on: the real CIFAR-10's training files, and a real test set of
    TEST_IMAGES_PER_CLASS images of each class (the first ones of the official test set, as
    `dataset.subset` picks training images). A test run trains a few steps, then evaluates every
    test image at each epoch: a tenth of the images, a tenth of that time. The checksum listing
    covers the smaller file, so the data are checked as a user's are."""
    import torch

    from sngm_bench.data import cifar10
    from sngm_bench.data.subset import balanced_subset

    source = full_cifar_root / cifar10.FOLDER
    folder = tmp_path_factory.mktemp("cifar10_small_test") / cifar10.FOLDER
    folder.mkdir()
    for name in [*cifar10.TRAIN_FILES, "batches.meta"]:
        (folder / name).symlink_to(source / name)
    with open(source / "test_batch", "rb") as f:
        test = pickle.load(f, encoding="latin1")
    kept = balanced_subset(torch.as_tensor(test["labels"]), TEST_IMAGES_PER_CLASS * cifar10.NUM_CLASSES).numpy()
    for key, value in test.items():  # the images ("data"), their labels and file names; the batch's label stays
        if isinstance(value, np.ndarray):
            test[key] = value[kept]
        elif isinstance(value, list):
            test[key] = [value[i] for i in kept]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f)
    sums = {**cifar10.expected_md5(source), "test_batch": cifar10.file_digest(folder / "test_batch", "md5")}
    listed = [*cifar10.TRAIN_FILES, "test_batch"]
    (folder / "md5sums.txt").write_text("".join(f"{sums[name]}  {name}\n" for name in listed))
    return folder.parent


def run_command(command, cwd, env_extra=None, timeout=600):
    """`command` in `cwd` with its output captured as text; returns the CompletedProcess. One that
    runs past `timeout` seconds fails the test with the end of its output, so a hang is diagnosed."""
    try:
        return subprocess.run([str(part) for part in command], cwd=cwd, env={**os.environ, **(env_extra or {})},
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        parts = [raw.decode(errors="replace") if isinstance(raw, bytes) else raw  # bytes, whatever `text` says
                 for raw in (err.stdout, err.stderr) if raw]
        output = "\n".join(part[-3000:] for part in parts)
    pytest.fail(f"{' '.join(map(str, command))} ran past {timeout} s and was killed; its output ended:\n{output}")


def wait_for(predicate, process, timeout=600):
    """Poll `predicate` (an event: a file written, a row recorded) while `process` runs; fail if the
    process ends first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def run_cli(args, cwd, env_extra=None, timeout=600):
    """`python -m sngm_bench ARGS` in `cwd` (see run_command)."""
    return run_command([sys.executable, "-m", "sngm_bench", *args], cwd, env_extra, timeout)


def cifar_copy(cifar_root: Path, root: Path) -> Path:
    """A copy of CIFAR-10 under `root` (a dataset.root): links to `cifar_root`'s files, but for a
    file of its own in place of data_batch_1, returned for a test to change (`change_one_image`)."""
    from sngm_bench.data import cifar10

    folder, original = root / cifar10.FOLDER, cifar_root / cifar10.FOLDER
    folder.mkdir(parents=True)
    for source in original.iterdir():
        (folder / source.name).symlink_to(source)
    batch = folder / "data_batch_1"
    batch.unlink()
    shutil.copyfile(original / batch.name, batch)
    return batch


def change_one_image(batch: Path) -> None:
    """Invert one byte of one image of the CIFAR-10 batch file `batch`: as many images, as many bytes."""
    data = bytearray(batch.read_bytes())
    image = pickle.loads(bytes(data), encoding="latin1")["data"][7].tobytes()
    data[data.index(image)] ^= 0xFF
    batch.write_bytes(data)


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """An existing folder in which nothing can be created: made immutable (chattr +i) for root, to whom
    permissions do not apply, else without write permission; skipped where neither holds."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)
