"""Exit 0 when the running Python has pemn and every requirement of pyproject.toml installed at
a version it accepts: the core dependencies, plus those of the extras named on the command line
(e.g. ``test``). scripts/setup.sh runs pip only when this fails, so a venv made before a
requirement was added or re-pinned is brought up to date.
"""
import importlib.metadata
import sys
from pathlib import Path

import tomllib

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement


def missing(requirements: list[str]) -> list[str]:
    """The requirements (PEP 508 strings) that are not met here."""
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(text)
            continue
        if not req.specifier.contains(version, prereleases=True):
            out.append(f"{text} (have {version})")
    return out


def main(extras: list[str]) -> int:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    project = project["project"]
    wanted = ["pemn", *project["dependencies"]]
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    absent = missing(wanted)
    if absent:
        print("needs installing: " + ", ".join(absent), file=sys.stderr)
    return 1 if absent else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
