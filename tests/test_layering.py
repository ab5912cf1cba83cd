"""Imports point one way: the dependency rules of docs/DESIGN.md, checked with ``ast``.

Each rule names a module (or package) and the pemn modules it may import; anything else is a
violation. Lazy imports inside functions count too: a layer that needs another lazily still
depends on it.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pemn"

# module prefix -> pemn modules (prefixes) it may import. Longest prefix wins.
ALLOWED = {
    "pemn.rng": (),
    "pemn.fileio": (),
    "pemn.models": ("pemn.models",),
    "pemn.data": ("pemn.data", "pemn.fileio"),
    "pemn.masking": (),
    "pemn.fill": ("pemn.rng",),
    "pemn.transform": ("pemn.fill", "pemn.rng", "pemn.masking"),
    "pemn.artifact.bitpack": (),
    "pemn.artifact.codec": ("pemn.artifact.bitpack", "pemn.config"),
    "pemn.artifact": ("pemn.artifact", "pemn.transform", "pemn.fill", "pemn.rng",
                      "pemn.masking", "pemn.models", "pemn.fileio"),
    "pemn.baselines": ("pemn.masking", "pemn.transform", "pemn.fill"),
    "pemn.competitors": ("pemn.masking", "pemn.transform", "pemn.fill", "pemn.artifact"),
    "pemn.storage": ("pemn.artifact", "pemn.fill", "pemn.transform", "pemn.masking",
                     "pemn.baselines"),
    "pemn.checkpoint": ("pemn.fileio",),
    "pemn.distributed": (),
    "pemn.config": ("pemn.fill", "pemn.baselines", "pemn.strategies"),
    "pemn.train": ("pemn.checkpoint", "pemn.distributed", "pemn.fileio", "pemn.masking",
                   "pemn.config"),
    "pemn.evaluate": ("pemn.artifact", "pemn.checkpoint", "pemn.data", "pemn.distributed",
                      "pemn.models", "pemn.run", "pemn.train", "pemn.transform", "pemn.config",
                      "pemn.baselines", "pemn.fill"),
    "pemn.run": ("pemn.artifact", "pemn.baselines", "pemn.competitors", "pemn.checkpoint",
                 "pemn.config", "pemn.data", "pemn.distributed", "pemn.evaluate", "pemn.fileio", "pemn.fill",
                 "pemn.models", "pemn.storage", "pemn.train", "pemn.transform", "pemn"),
    "pemn.experiments": ("pemn",),  # public names only; everything but the CLI
    "pemn.cli": ("pemn",),
    "pemn": ("pemn.artifact", "pemn.baselines", "pemn.competitors", "pemn.fill",
             "pemn.storage", "pemn.transform"),  # __init__
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


def _rule(module: str) -> tuple[str, ...]:
    key = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)
    return ALLOWED[key]


def _allowed(target: str, allowed: tuple[str, ...], module: str) -> bool:
    if target == module or target.startswith(module + "."):
        return True
    if target == "pemn":  # `from pemn import x`: judged by the submodule named
        return "pemn" in allowed
    return any(target == a or target.startswith(a + ".") for a in allowed)


def test_imports_point_one_way():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        allowed = _rule(module)
        for target in sorted(_pemn_imports(path)):
            if target == "<relative>" and module.startswith(("pemn.models", "pemn.data")):
                continue  # leaf packages import their own files relatively
            if not _allowed(target, allowed, module):
                violations.append(f"{module} imports {target}")
    assert violations == []


def test_nothing_imports_the_cli_and_only_the_cli_imports_experiments():
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        imports = _pemn_imports(path)
        assert not any(t.startswith("pemn.cli") for t in imports), module
        if not module.startswith(("pemn.cli", "pemn.experiments")):
            assert not any(t.startswith("pemn.experiments") for t in imports), module


def test_models_and_data_never_import_masking():
    for path in sorted((ROOT / "models").rglob("*.py")) + sorted((ROOT / "data").rglob("*.py")):
        assert not any("masking" in t or "transform" in t for t in _pemn_imports(path)), path
