"""The torchrun world (RANK, WORLD_SIZE, LOCAL_RANK): :meth:`World.from_env` reads it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "setup", "teardown"]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The world ``torchrun`` announces (one process when unset); ValueError for a bad one."""
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return cls()
        world = cls(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
        if not 0 <= world.rank < world_size:
            raise ValueError(f"RANK {world.rank} is outside WORLD_SIZE {world_size}")
        return world

    is_main = property(lambda self: self.rank == 0)
    distributed = property(lambda self: self.world_size > 1)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(world: World, device: torch.device) -> None:
    """Join the process group of a multi-process ``world`` (gloo on CPU, nccl on CUDA)."""
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=world.rank, world_size=world.world_size)


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
