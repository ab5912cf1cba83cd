"""Mutation check: do the tests notice a broken core?

Each mutation is a small, realistic mistake (a file, its exact old text, the new text). For
each one this script copies the repository to a temporary folder, applies the mutation there
(never here), runs the test files that should notice it with this checkout's Python, and
records whether a test failed ("caught") or all passed ("survived"). The goal is no survivor.

    python scripts/mutate.py                       # every mutation; a table on stdout
    python scripts/mutate.py --only argmin cosine  # some of them (names or name prefixes)
    python scripts/mutate.py --markdown benchmarks/results/mutations.md
    python scripts/mutate.py --list

A mutation whose old text is not found exactly once stops the script before anything runs:
the code moved, so the mutation must be written again against it. The unmutated tests run
first; if they fail, nothing is measured.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the tests need: the package, the tests and their fixtures, and the files they read.
COPIED = ("pemn", "tests", "scripts", "configs", "docs", "benchmarks", "pyproject.toml",
          "README.md")
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    """``edits``: (old, new) pairs applied to ``file``; ``tests``: pytest node ids."""

    name: str
    breaks: str
    file: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]


def _m(name: str, breaks: str, file: str, tests: str, *edits: tuple[str, str]) -> Mutation:
    """``tests``: words like ``masking`` (tests/test_masking.py) or ``train::test_x`` (one
    test of it), fast and sharp ones first: ``-x`` stops at the first failure."""
    ids = []
    for word in tests.split():
        module, _, test = word.partition("::")
        ids.append(f"tests/test_{module}.py" + (f"::{test}" if test else ""))
    return Mutation(name, breaks, file, edits, tuple(ids))


MUTATIONS = [
    # the seven mutations that survived the first probe (issue 24)
    _m("permutation-stream", "the default RP order (every file's values)", "pemn/fill.py",
       "fixtures known_answers fill levers",
       ("_PERMUTATION_STREAM = 2**32", "_PERMUTATION_STREAM = 2**32 + 1")),
    _m("int4-nibbles", "the int4 file format (nibble order, both ways)",
       "pemn/artifact/weights.py", "fixtures known_answers competitors",
       ("codes = nibbles[0::2] | (nibbles[1::2] << 4)",
        "codes = (nibbles[0::2] << 4) | nibbles[1::2]"),
       ("if n % 2 and raw[-1] >> 4:", "if n % 2 and raw[-1] & 0xF:"),
       ("np.stack([raw & 0xF, raw >> 4], axis=1)", "np.stack([raw >> 4, raw & 0xF], axis=1)")),
    _m("paper-bytes-floor", "the paper's byte accounting (mask bytes rounded down; "
       "formula_bytes is gone: every run is priced by its file)", "pemn/storage.py",
       "known_answers fill",
       ("return -(-num_masked // 8) + 4 * num_unique", "return num_masked // 8 + 4 * num_unique")),
    _m("entropy-bound-/4", "pemn size's entropy bound", "pemn/storage.py",
       "known_answers artifact cli",
       ("(1 - p) * math.log2(1 - p)) / 8", "(1 - p) * math.log2(1 - p)) / 4")),
    _m("idx-ndim-unchecked", "a 1-D IDX file read as images", "pemn/data/idx.py", "data",
       ("if magic[2] != _UBYTE or magic[3] != ndim:", "if magic[2] != _UBYTE:")),
    _m("cosine-linear", "the cosine learning-rate schedule", "pemn/train.py",
       "train::test_cosine_schedule_between_the_knots train::test_cosine_schedule_with_warmup",
       ("return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))",
        "return cfg.lr * (1 - min(progress, 1.0))")),
    _m("argmin", "every accuracy the project reports", "pemn/train.py",
       "known_answers train::test_cpu_eval_keeps_activations_small",
       ("(model(xs).argmax(1) == ys)", "(model(xs).argmin(1) == ys)")),
    # more of the core
    _m("ste-no-sign", "the straight-through gradient (sign of the scores dropped)",
       "pemn/masking.py", "masking",
       ("torch.sign(scores).mul_(fixed).mul_(grad)", "fixed * grad")),
    _m("topk-ties-reversed", "top-k tie order (higher positions first)", "pemn/masking.py",
       "masking",
       ("out[band[values == v][: need", "out[band[values == v].flip(0)[: need")),
    _m("num-kept-floor", "the kept count (kept count rounded down)", "pemn/masking.py",
       "masking",
       ("return numel - int((1.0 - keep_ratio) * numel)", "return int(keep_ratio * numel)")),
    _m("triangular-peak", "the triangular schedule (peak at 50 % instead of 40 %)",
       "pemn/train.py",
       "train::test_triangular_schedule_between_the_knots train::test_triangular_schedule_knots",
       ("[0, e * 2 // 5, e * 4 // 5, e] if e >= 5 else [0, 0.4 * e,",
        "[0, e // 2, e * 4 // 5, e] if e >= 5 else [0, 0.5 * e,")),
    _m("kaiming-gain-1", "the random values' std (sqrt(1 / fan_in))", "pemn/fill.py",
       "known_answers fixtures fill any_model",
       ("return math.sqrt(2.0 / self.effective_fan_in)",
        "return math.sqrt(1.0 / self.effective_fan_in)")),
    _m("mask-one-stream", "Mask's values (every layer draws stream 0)", "pemn/fill.py",
       "fill fixtures levers",
       ("protos = tuple(Prototype(i, s.numel", "protos = tuple(Prototype(0, s.numel")),
    _m("largest-tie-last", "MP/RP's prototype (the last of equally large layers wins)",
       "pemn/fill.py", "fill fixtures levers",
       ("key=lambda i: (specs[i].numel, -i))", "key=lambda i: (specs[i].numel, i))")),
    _m("stream-salt", "the generator (its stream constant, off by one)", "pemn/rng.py",
       "rng fixtures",
       ("_STREAM_SALT = 0x632BE59BD9B4E019", "_STREAM_SALT = 0x632BE59BD9B4E01A")),
    # ln 2 one ulp low survives: it moves a float32 draw about once in 10**9 (equivalent)
    _m("ln2-short", "the generator (ln 2 typed as 0.693147)", "pemn/rng.py", "rng fixtures",
       ("_LN2 = 0.6931471805599453", "_LN2 = 0.693147")),
    _m("conv1d-fan-in", "GPT-2 Conv1D fan_in (out instead of in)", "pemn/transform.py",
       "any_model",
       ("fan_in=lambda shape: shape[0])", "fan_in=lambda shape: shape[1])")),
    _m("sign-of-zero", "the sign encoding of w = 0 (a 0 bit instead of 1)",
       "pemn/artifact/weights.py", "known_answers fixtures",
       ("pack_bits(signs.cpu())", "pack_bits(signs.cpu() & (latent != 0).cpu())")),
    _m("paper-cr-16", "the paper's compression ratio (16 bits per value)", "pemn/storage.py",
       "known_answers fill",
       ("(num_masked + 32 * num_unique) / (32 * num_masked)",
        "(num_masked + 16 * num_unique) / (32 * num_masked)")),
    _m("bit-order-big", "the 1-bit mask format (most significant bit first, both ways)",
       "pemn/artifact/bitpack.py", "known_answers codec fixtures",
       ('np.packbits(flat, bitorder="little")', 'np.packbits(flat, bitorder="big")'),
       ('np.unpackbits(packed, count=n, bitorder="little")',
        'np.unpackbits(packed, count=n, bitorder="big")')),
    _m("extra-tensor-unchecked", "the header's tensor list (a skeleton tensor the file lacks "
       "is left at its init)", "pemn/artifact/load.py", "any_model artifact",
       ("        if name not in expected:\n            raise",
        "        if name not in expected:\n            continue\n            raise")),
    _m("plot-no-std", "the plots' error bars (always 0)", "pemn/experiments/plots.py", "plots",
       ("std=statistics.stdev(v) if len(v) > 1 else 0.0,", "std=0.0,")),
]


def _copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def _env(copy: Path) -> dict:
    # no bytecode caches: a mutated file and its original can share a size and an mtime second
    return {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1"}


def _check_import(copy: Path) -> None:
    """The tests must import the copy, not this checkout (an editable install could win)."""
    out = subprocess.run([sys.executable, "-c", "import pemn; print(pemn.__file__)"], cwd=copy,
                         env=_env(copy), capture_output=True, text=True, check=True).stdout
    if not Path(out.strip()).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"mutate: pemn imports from {out.strip()}, not from the copy {copy}")


def _mutated(m: Mutation, text: str) -> str:
    for old, new in m.edits:
        if text.count(old) != 1:
            sys.exit(f"mutate: {m.name}: the old text occurs {text.count(old)} times in "
                     f"{m.file}, not once; write the mutation again against the code:\n  {old}")
        text = text.replace(old, new)
    return text


def _pytest(copy: Path, tests: tuple[str, ...], first: bool = True) -> tuple[int, str, float]:
    """(exit code, the first failure and how many failed, or the summary line, seconds).
    ``first``: stop at the first failure (``-x``)."""
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-rf", "-p",
           "no:cacheprovider", *(["-x"] if first else []), *tests]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s", time.perf_counter() - t0
    lines = r.stdout.strip().splitlines()
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith("FAILED ")]
    errors = [ln for ln in lines if ln.startswith("ERROR ")]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln)),
                   lines[-1] if lines else r.stderr.strip()[-200:])
    detail = failed[0] if failed else errors[0] if errors else summary.strip("= ")
    if len(failed) > 1:
        detail += f" and {len(failed) - 1} more"
    return r.returncode, detail, time.perf_counter() - t0


def _union(mutations: list[Mutation]) -> tuple[str, ...]:
    """Every test id of ``mutations`` once; a test whose whole file is listed goes."""
    ids = dict.fromkeys(t for m in mutations for t in m.tests)
    return tuple(t for t in ids if "::" not in t or t.partition("::")[0] not in ids)


def _short(test_id: str) -> str:
    return test_id.removeprefix("tests/test_").replace(".py", "")


def run(mutations: list[Mutation], first: bool = True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pemn-mutate-") as tmp:
        copy = Path(tmp)
        _copy_repo(copy)
        _check_import(copy)
        originals = {m.file: (copy / m.file).read_text() for m in mutations}
        mutated = {m.name: _mutated(m, originals[m.file]) for m in mutations}  # all, first
        code, detail, seconds = _pytest(copy, _union(mutations))
        print(f"unmutated: {detail} ({seconds:.0f} s)", flush=True)
        if code != 0:
            sys.exit(f"mutate: the tests fail without a mutation ({detail}); fix that first")
        for m in mutations:
            path = copy / m.file
            path.write_text(mutated[m.name])
            try:
                code, detail, seconds = _pytest(copy, m.tests, first)
            finally:
                path.write_text(originals[m.file])
            # pytest exits 1 when a test failed; 2-5 (interrupted, usage, nothing collected)
            # and a timeout say nothing about the mutation
            result = {0: "survived", 1: "caught"}.get(code, f"error (exit {code})")
            rows.append({"mutation": m, "result": result, "detail": detail, "seconds": seconds})
            print(f"{m.name:<22} {result:<9} {seconds:5.0f} s  {detail}", flush=True)
    return rows


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip() or "(not a git checkout)"


def markdown(rows: list[dict], command: str, first: bool = True) -> str:
    count = {k: sum(r["result"] == k for r in rows) for k in ("caught", "survived")}
    out = ["# Mutation check", "",
           f"{count['caught']} of {len(rows)} mutations caught, {count['survived']} survived. "
           "Each mutation was applied alone to a temporary copy of the repository, and only "
           "the listed tests were run" + (" (`-x`: the first failure ends the run)." if first
                                          else ", all of them."), "",
           f"Made with `{command}` on commit {_commit()}.", "",
           "| mutation | what it breaks | file | result | first failure (or the passed count) | "
           "tests run | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["mutation"]
        result = r["result"] if r["result"] == "caught" else f"**{r['result']}**"
        out.append(f"| `{m.name}` | {m.breaks} | `{m.file}` | {result} | "
                   f"`{_short(r['detail'])}` | {', '.join(map(_short, m.tests))} | "
                   f"{r['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="mutations whose name starts so")
    p.add_argument("--markdown", type=Path, help="also write the table here")
    p.add_argument("--list", action="store_true", help="list the mutations and stop")
    p.add_argument("--all-failures", action="store_true",
                   help="run every listed test (no -x) and count the failures")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name.startswith(tuple(args.only))]
    if not chosen:
        p.error(f"no mutation starts with {args.only}; see --list")
    if args.list:  # and check that every mutation still applies to this checkout
        for m in chosen:
            _mutated(m, (ROOT / m.file).read_text())
            print(f"{m.name:<22} {m.file:<28} {m.breaks}")
        return 0
    rows = run(chosen, first=not args.all_failures)
    if args.markdown:
        command = "python scripts/mutate.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, command.strip(), not args.all_failures))
    return 0 if all(r["result"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
