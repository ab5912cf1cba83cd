"""Training checkpoints: written atomically, so a kill at any moment leaves the previous one."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from pemn.fileio import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, incomplete or not ours."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, keys: Iterable[str] = ()) -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``);
    CheckpointError for no such file, an unreadable or foreign file, or missing ``keys``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: one clear sentence
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                              f"{first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pemn checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(map(repr, missing))} "
                              f"(written by another program or an older pemn)")
    return state
