"""Atomic training checkpoints: a kill at any moment leaves the previous one intact."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or not ours."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` via a temporary file, fsync and rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: one clear sentence
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
