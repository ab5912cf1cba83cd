"""Which of many sweep processes trains a run: claim files with a heartbeat (docs/SWEEPS.md)."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

__all__ = ["Claim", "try_claim", "STALE_AFTER"]

log = logging.getLogger(__name__)
STALE_AFTER = 300.0  # seconds without a heartbeat before another host takes a run over
_PREFIX = "claim."


def _generations(run_dir: Path) -> list[tuple[int, Path]]:
    names = (p for p in run_dir.glob(_PREFIX + "*") if p.name[len(_PREFIX):].isdigit())
    return sorted((int(p.name[len(_PREFIX):]), p) for p in names)


def _gone(owner) -> bool:
    """Whether the claim's owner was a process of this host that no longer exists."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() \
            or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        pass
    return False


def _stale(path: Path, stale_after: float) -> bool:
    try:
        age, text = time.time() - path.stat().st_mtime, path.read_text()
    except FileNotFoundError:
        return False  # released just now: the next look finds the run's result
    try:  # empty while its creator has not written it yet: then the age alone decides
        return age > stale_after or _gone(json.loads(text))
    except ValueError:
        return age > stale_after


class Claim:
    """A run held by this process: a heartbeat thread runs until :meth:`release`."""

    def __init__(self, path: Path, fd: int, stale_after: float):
        self.path, self._fd, self._stop = path, fd, threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(stale_after / 10,),
                                        name=f"heartbeat {path.parent.name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the run is still ours: nobody took it over after a long silence."""
        try:
            here, ours = os.stat(self.path), os.fstat(self._fd)
        except FileNotFoundError:
            return False
        newest = [path for _, path in _generations(self.path.parent)][-1:]
        return newest == [self.path] and (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    def _beat(self, every: float) -> None:
        warned = False
        while not self._stop.wait(every):
            try:  # through the descriptor: a claim taken over is another file, never touched
                os.utime(self._fd)
            except OSError as e:
                log.warning("%s: heartbeat failed: %s", self.path, e)
            if not warned and not self.held():
                warned = True
                log.warning("%s: taken over by another process (no heartbeat for too long); "
                            "this one finishes the run but records nothing", self.path.parent)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.held():
            self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(run_dir: Path, stale_after: float = STALE_AFTER) -> Claim | None:
    """Claim ``run_dir`` (taking over a stale claim), or None while a live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    found = _generations(run_dir)
    if found and not _stale(found[-1][1], stale_after):
        return None
    path = run_dir / f"{_PREFIX}{found[-1][0] + 1 if found else 0}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None  # another process claimed it first
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    for _, old in found:
        log.info("%s: taking over the stale %s", run_dir.name, old.name)
        old.unlink(missing_ok=True)
    return Claim(path, fd, stale_after)
