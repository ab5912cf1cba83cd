"""Imports point one way: the dependency rules of docs/DESIGN.md, checked with ``ast``.

Each rule names a module (or package) and the pemn modules it may import; anything else is a
violation, and a module without a rule is one too. Lazy imports inside functions count: a layer
that needs another lazily still depends on it. A package's rule names the package itself when
its files import each other; the root ``pemn`` is its ``__init__`` only.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pemn"

_ARTIFACT_NEEDS = ("pemn.transform", "pemn.fill", "pemn.masking", "pemn.rng", "pemn.fileio",
                   "pemn.models")  # models: only to build a zoo skeleton

# module (or package prefix) -> pemn modules (or prefixes) it may import. Longest prefix wins;
# "pemn" is the package's __init__ only.
ALLOWED = {
    "pemn": ("pemn.artifact", "pemn.competitors", "pemn.fill", "pemn.pranc",
             "pemn.storage", "pemn.transform"),
    # leaves
    "pemn.rng": (),
    "pemn.fileio": (),
    "pemn.masking": (),
    "pemn.distributed": (),
    "pemn.models": ("pemn.models",),
    "pemn.data": ("pemn.data", "pemn.fileio"),
    "pemn.artifact.bitpack": (),
    "pemn.artifact.codec": ("pemn.artifact.bitpack",),
    # the strategy layers, bottom up
    "pemn.fill": ("pemn.rng",),
    "pemn.transform": ("pemn.fill", "pemn.masking", "pemn.rng"),
    "pemn.artifact": ("pemn.artifact", *_ARTIFACT_NEEDS),
    "pemn.competitors": ("pemn.fill", "pemn.masking", "pemn.transform", "pemn.artifact"),
    "pemn.pranc": ("pemn.competitors", "pemn.fill", "pemn.masking", "pemn.transform",
                   "pemn.artifact", "pemn.rng"),
    "pemn.storage": ("pemn.artifact", "pemn.fill", "pemn.transform", "pemn.masking"),
    # training and runs
    "pemn.config": ("pemn.fill",),
    "pemn.checkpoint": ("pemn.fileio",),
    "pemn.train": ("pemn.checkpoint", "pemn.distributed", "pemn.masking", "pemn.config"),
    "pemn.rundir": ("pemn.config", "pemn.fileio"),
    "pemn.run": ("pemn", "pemn.checkpoint", "pemn.config", "pemn.data", "pemn.distributed",
                 "pemn.fill", "pemn.models", "pemn.rundir", "pemn.train", "pemn.transform"),
    "pemn.trained": ("pemn.artifact", "pemn.checkpoint", "pemn.config", "pemn.data", "pemn.run",
                     "pemn.rundir"),
    "pemn.evaluate": ("pemn.data", "pemn.rundir", "pemn.train", "pemn.trained"),
    # the top: experiments use the run layer; only the CLI uses experiments
    "pemn.experiments": ("pemn.experiments", "pemn.run", "pemn.rundir", "pemn.trained",
                         "pemn.artifact", "pemn.storage", "pemn.competitors", "pemn.fill",
                         "pemn.config", "pemn.data", "pemn.distributed", "pemn.fileio"),
    "pemn.cli": ("pemn", "pemn.experiments", "pemn.run", "pemn.rundir", "pemn.trained",
                 "pemn.evaluate", "pemn.artifact", "pemn.storage", "pemn.config",
                 "pemn.distributed"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def _pemn_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pemn"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "pemn":
            # `from pemn import rng` imports the submodule pemn.rng; `from pemn import apply_`
            # imports the package's public API (judged as `pemn`)
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _is_module(sub) else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("<relative>")
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(module: str, rules: dict) -> tuple[str, ...] | None:
    if module == "pemn":
        return rules.get("pemn")
    keys = [k for k in rules if k != "pemn" and _under(module, k)]
    return rules[max(keys, key=len)] if keys else None


def _allowed(target: str, allowed: tuple[str, ...]) -> bool:
    if target == "pemn":  # `from pemn import apply_`: the public API
        return "pemn" in allowed
    return any(_under(target, a) for a in allowed if a != "pemn")


def violations(graph: dict[str, set[str]], rules: dict = ALLOWED) -> list[str]:
    """``module imports target`` for each edge of ``graph`` its rules do not allow."""
    found = []
    for module, targets in sorted(graph.items()):
        allowed = _rule(module, rules)
        if allowed is None:
            found.append(f"{module} has no rule in tests/test_layering.py (add one, and its "
                         f"row in docs/DESIGN.md)")
            continue
        for target in sorted(targets):
            if target == "<relative>":
                if not module.startswith(("pemn.models", "pemn.data")):
                    found.append(f"{module} imports relatively")  # leaves only
            elif not _allowed(target, allowed):
                found.append(f"{module} imports {target}")
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _pemn_imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_imports_point_one_way():
    assert violations(_graph()) == []


def test_every_rule_names_a_module_that_exists():
    named = set(ALLOWED) | {t for targets in ALLOWED.values() for t in targets}
    assert sorted(n for n in named if not _is_module(n)) == []


@pytest.mark.parametrize("module, target", [
    ("pemn.masking", "pemn.experiments.sweep"),  # a leaf reaching up
    ("pemn.fill", "pemn.transform"),  # a cycle: transform imports fill
    ("pemn.artifact.codec", "pemn.artifact.load"),  # a leaf inside a package
    ("pemn.experiments.sweep", "pemn.cli"),
    ("pemn.experiments.plots", "pemn"),  # the public API is not everything's to use
    ("pemn", "pemn.experiments"),  # the root package may not import all of itself
])
def test_a_planted_violation_is_caught(module, target):
    graph = _graph()
    graph[module] = graph[module] | {target}
    assert violations(graph) == [f"{module} imports {target}"]


def test_a_planted_lazy_import_in_a_new_file_is_caught(tmp_path):
    path = tmp_path / "leaf.py"
    path.write_text("def f():\n    from pemn.run import RunDir\n    return RunDir\n")
    graph = {"pemn.rng": _pemn_imports(path), "pemn.newcomer": set()}
    assert violations(graph) == [
        "pemn.newcomer has no rule in tests/test_layering.py (add one, and its row in "
        "docs/DESIGN.md)", "pemn.rng imports pemn.run"]


def test_nothing_imports_the_cli_and_only_the_cli_imports_experiments():
    for module, imports in _graph().items():
        assert not any(_under(t, "pemn.cli") for t in imports), module
        if not _under(module, "pemn.cli") and not _under(module, "pemn.experiments"):
            assert not any(_under(t, "pemn.experiments") for t in imports), module


def test_models_and_data_never_import_masking():
    for path in sorted((ROOT / "models").rglob("*.py")) + sorted((ROOT / "data").rglob("*.py")):
        assert not any("masking" in t or "transform" in t for t in _pemn_imports(path)), path
