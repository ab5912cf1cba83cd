"""A run directory: the one owner of its file names, and whether a config may continue it."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from pemn.config import ConfigError, RunConfig, flatten, from_dict, to_dict
from pemn.fileio import atomic_write

__all__ = ["RunDir", "RunError", "ARTIFACT_SUFFIX", "check_same_config"]

ARTIFACT_SUFFIX = ".pemn"


class RunError(ValueError):
    """A run directory in the wrong state (exists, missing, unfinished, unreadable)."""


def _read_json(path: Path, lines: bool = False):
    """The JSON value (or, with ``lines``, the JSON lines) at ``path``; RunError if unreadable."""
    try:
        text = path.read_text()
        return [json.loads(line) for line in text.splitlines()] if lines else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None


def _write_json(path: Path, value) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


@dataclass(frozen=True)
class RunDir:
    """A run directory: ``config.json`` holds the resolved config (written first),
    ``metrics.jsonl`` one line per epoch, ``checkpoint.pt`` the training state (rewritten
    atomically every epoch), ``summary.json`` the results (written last: the run finished) and
    ``model.pemn`` the packed model (written by ``pemn pack`` or a sweep)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, cfg: RunConfig) -> RunDir:
        """The directory a run of ``cfg`` writes: ``cfg.out_dir / cfg.run_name()``."""
        return cls(Path(cfg.out_dir) / cfg.run_name())

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    summary = property(lambda self: self.path / "summary.json")
    artifact = property(lambda self: self.path / ("model" + ARTIFACT_SUFFIX))
    started = property(lambda self: self.config.is_file())
    finished = property(lambda self: self.summary.is_file())  # summary.json is written last

    def config_dict(self) -> dict:
        """The stored config as JSON values; RunError if missing or unreadable."""
        if not self.started:
            raise RunError(f"{self.path} is not a run directory (no {self.config.name})")
        return _read_json(self.config)

    def read_config(self) -> RunConfig:
        """The stored config (raises RunError as :meth:`config_dict`, ConfigError if invalid)."""
        return from_dict(RunConfig, self.config_dict())

    def write_config(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.config, to_dict(cfg))

    def read_summary(self) -> dict:
        if not self.finished:
            raise RunError(f"{self.path} has not finished (no {self.summary.name})")
        return _read_json(self.summary)

    def write_summary(self, summary: dict) -> None:
        _write_json(self.summary, summary)

    def read_metrics(self) -> list[dict]:
        return _read_json(self.metrics, lines=True) if self.metrics.is_file() else []

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write(self.metrics, "".join(json.dumps(h) + "\n" for h in history).encode())


# Keys that may differ between a run directory and the config that continues it.
_RESUMABLE_KEYS = {"out_dir", "name", "optim.device", "optim.eval_batch_size"}


def check_same_config(cfg: RunConfig, run_dir: RunDir, remedy: str) -> None:
    """Refuse (ConfigError naming the keys, ending with ``remedy``) to continue or reuse a run
    directory made by a different config. Keys on one side only, and fields added since (read
    at today's defaults), do not count."""
    if not run_dir.started:
        return
    recorded = run_dir.config_dict()
    with contextlib.suppress(ValueError, TypeError):  # unreadable (also ConfigError): as written
        recorded = to_dict(from_dict(RunConfig, recorded))
    old, new = flatten(recorded), flatten(to_dict(cfg))
    diff = sorted(k for k in old.keys() & new.keys()
                  if k not in _RESUMABLE_KEYS and old[k] != new[k])
    if diff:
        raise ConfigError(f"{run_dir.path} was made with a different config ({', '.join(diff)}: "
                          f"{[old.get(k) for k in diff]} there, {[new.get(k) for k in diff]} "
                          f"now); {remedy}")
