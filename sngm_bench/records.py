"""Run records: the plain files (CSV, JSON) that say what a run did and what produced it.

Every file is written to a temporary name and renamed into place, so a reader (or a killed
run) never sees half a file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import sngm_bench
from sngm_bench import invocation

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "images_per_second",
    "noise_scale",  # B_simple (sngm_bench.noise_scale); empty when not measured
    "holdout_loss", "holdout_acc",  # on the held-out training images (dataset.holdout_images); empty without
]


def temporary_path(path: Path) -> Path:
    """Where `write_atomic` writes `path` until it is complete; one found later is a killed writer's."""
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path, data: str | bytes, keep: str | None = None) -> None:
    """Write `data` to `path` through a temporary file, renamed into place once complete, so that
    `path` is whole at every instant, a kill included. The file it replaces is kept as `keep` when
    given (`_keep_as`). A failed write (a full disk) removes the temporary files and raises OSError
    naming `path`."""
    tmp = temporary_path(path)
    try:
        with _synced(tmp, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
        if keep is not None:
            _keep_as(path, path.with_name(keep))
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            err.filename = str(path)
        raise
    os.replace(tmp, path)


@contextmanager
def _synced(path: Path, mode: str):
    """`path` opened for writing; its data is on disk (fsync) once the block ends, so that renaming
    it into place cannot leave an empty or partial file after a crash."""
    with open(path, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _keep_as(path: Path, kept: Path) -> None:
    """Make `kept` a copy of `path`, if there is one, without moving `path` away: a hard link (or,
    on a file system without them, a copy as durable as `write_atomic`'s file) to a temporary name,
    renamed over `kept`."""
    if not path.exists():
        return
    staged = temporary_path(kept)
    staged.unlink(missing_ok=True)  # a killed writer's: os.link does not overwrite
    try:
        try:
            os.link(path, staged)
        except OSError:  # no hard links here (some network and FUSE file systems)
            with open(path, "rb") as source, _synced(staged, "wb") as copy:
                shutil.copyfileobj(source, copy)
        os.replace(staged, kept)
    finally:  # left by a failure, or by a rename that did nothing: `kept` was a link to `path` already
        staged.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_summary(run_dir: Path) -> dict:
    """The run's summary.json; ValueError when it is no JSON object (a file another program wrote),
    which every reader would otherwise trip over as it looks a key up."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    if not isinstance(summary, dict):
        raise ValueError(f"{SUMMARY_FILE} holds no JSON object")
    return summary


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json, or {} where there is none yet or it cannot be read."""
    try:
        return load_summary(run_dir)
    except (OSError, ValueError):
        return {}


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """The whole per-epoch table, rewritten after each epoch (it is small); None is written empty."""
    def text(value) -> str:
        return "" if value is None else repr(value) if isinstance(value, float) else str(value)

    lines = [",".join(METRIC_COLUMNS)]
    for row in rows:
        lines.append(",".join(text(row.get(c)) for c in METRIC_COLUMNS))
    write_atomic(run_dir / METRICS_FILE, "\n".join(lines) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / METRICS_FILE) as f:
        return [{k: (int(v) if k == "epoch" else float(v) if v else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


PACKAGE = Path(sngm_bench.__file__).resolve().parent


def _git(*args: str) -> str | None:
    """git's output, run in the package's folder; None where git fails or is missing. Bytes that are
    not UTF-8 (a Latin-1 source file in a diff) are kept as surrogates, which encode back to them."""
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE), *args], capture_output=True, text=True,
                             encoding="utf-8", errors="surrogateescape", timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """The commit of the repository that tracks sngm_bench's own files ("unknown" for an installed
    package, even one below another repository, such as a virtual environment inside a project),
    whether the code differs from it, and a hash of how.

    Differing code: a tracked file anywhere in the repository changed, or a file inside the package
    that git neither tracks nor ignores (a new module not yet added); Python's bytecode caches and
    untracked files elsewhere (run folders, notes) do not count. The hash covers the diff and those
    files' names and contents, so that sessions with other changes record other hashes."""
    commit = _git("rev-parse", "HEAD") if _git("ls-files", "--error-unmatch", "__init__.py") else None
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": None, "git_diff_hash": None}
    diff = _git("diff", "HEAD") or ""
    untracked = sorted(filter(None, (_git("ls-files", "-z", "--others", "--exclude-standard", "-x", "__pycache__/")
                                     or "").split("\0")))
    if not (diff or untracked):
        return {"git_commit": commit, "git_dirty": False, "git_diff_hash": None}
    digest = hashlib.sha256(diff.encode(errors="surrogateescape"))
    for name in untracked:
        try:
            content = (PACKAGE / name).read_bytes()
        except OSError:  # gone since git listed it, or unreadable: its name still counts
            content = b""
        digest.update(b"\0" + name.encode(errors="surrogateescape") + b"\0" + content)
    return {"git_commit": commit, "git_dirty": True, "git_diff_hash": digest.hexdigest()[:16]}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# What one session of a run trained on: the summary's values are those of the session that started
# the run, and each later session's `resumed_at` entry lists those of its own that differ.
SESSION_KEYS = ("world_size", "micro_batch_size", "bn_batch_size", "git_commit", "git_dirty", "git_diff_hash",
                "sngm_bench_version", "torch_version", "cuda_version", "python_version", "device", "device_name",
                "device_count", "cpu_threads", "hostname", "command", "launch_command")


def session(summary: dict) -> dict:
    """The SESSION_KEYS of a summary; None for a key added after it was recorded (`launch_command`)."""
    return {key: summary.get(key) for key in SESSION_KEYS}


def environment(device) -> dict:
    """Code version, hardware and commands (`invocation`) of a run on the torch.device `device`:
    what a reader needs to know where a number came from. (torch is imported here, so that readers
    of run files, like the report, do not pay for it.)"""
    import torch

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        **code_version(),
        "sngm_bench_version": sngm_bench.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": device_name,
        "device_count": torch.cuda.device_count() if device.type == "cuda" else 1,
        "cpu_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        **invocation.commands(),
    }
