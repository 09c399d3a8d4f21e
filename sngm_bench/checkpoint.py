"""Checkpoints: everything a run needs to continue exactly where it stopped.

Written at the end of every epoch and when the run is interrupted (then mid-epoch), to a
temporary file renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, state: dict) -> None:
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(run_dir: Path, device: torch.device) -> dict | None:
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=False)  # our own file: RNG states are not tensors
