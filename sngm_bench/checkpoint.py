"""Checkpoints: everything a run needs to continue exactly where it stopped.

Written at the end of every epoch and when the run is interrupted (then mid-epoch). The new
checkpoint goes to a temporary file; only once it is complete is the current one kept as
`checkpoint.prev.pt` (a hard link) and the new one renamed over `checkpoint.pt`, so that
`checkpoint.pt` is a complete checkpoint at every instant. A reader that finds the newest
unreadable (a damaged disk) falls back to the previous one. torch is imported inside the
functions, so that readers of run folders (the report) do not pay for it.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np

from sngm_bench import records
from sngm_bench.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
CHECKPOINT_FILES = (CHECKPOINT_FILE, PREVIOUS_FILE)  # newest first


def capture_rng() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """The generators as `capture_rng` found them. torch takes a generator's state, a GPU's too,
    only as a CPU byte tensor, and `load` puts every tensor of a checkpoint on the run's device."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([gpu_state.cpu() for gpu_state in state["cuda"]])


def restore(run_dir: Path, state: dict, **parts) -> None:
    """Load each of `parts` (model=..., optimizer=...: anything with `load_state_dict`) from the
    checkpoint `state` of `run_dir`; a UserError when one does not fit: the checkpoint was copied
    from another run, or written by a version of sngm-bench whose model or optimizer differ."""
    for name, part in parts.items():
        try:
            part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as err:
            reason = str(err).strip().splitlines()[-1].strip().rstrip(".") if str(err).strip() else type(err).__name__
            raise UserError(f"the checkpoint in {run_dir} does not fit this run's {name} ({reason}): it comes from "
                            "another run or another version of sngm-bench; add overwrite=true to train the run again "
                            "from the start") from None


def exists(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in CHECKPOINT_FILES)


def save(run_dir: Path, state: dict) -> None:
    """Write `state` as the newest checkpoint; the one it replaces is kept as the previous one.
    A failed write (a full disk) raises OSError naming the checkpoint, and leaves no temporary
    file and both earlier checkpoints intact."""
    import torch

    buffer = io.BytesIO()  # serialized first, so that a failed write is a plain OSError
    torch.save(state, buffer)
    records.write_atomic(run_dir / CHECKPOINT_FILE, buffer.getbuffer(), keep=PREVIOUS_FILE)


def load(run_dir: Path, device) -> dict | None:
    """The newest readable checkpoint (with a warning when it is not the newest), None when the
    folder has none; a UserError when none of them can be read."""
    import torch

    problems = []
    for name in CHECKPOINT_FILES:
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=device, weights_only=False)  # ours: NumPy's RNG state is no tensor
        except Exception as err:  # a truncated or damaged file fails in zipfile, pickle or torch
            problems.append(f"{name}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
            continue
        if problems:
            log.warning("unreadable %s; continuing from %s (epoch %d, step %d)", problems[0],
                        name, state["epoch"], state["step"])
        return state
    if problems:
        raise UserError(f"no readable checkpoint in {run_dir} ({'; '.join(problems)}); "
                        "add overwrite=true to train the run again from the start")
    return None
