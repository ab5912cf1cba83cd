"""Peak resident memory of loading an honest ResNet-50 ``.pemn`` in every form, against
building the bare model (issue 23: the extra peak must stay within the model's own tensor
bytes).

The files hold today's defaults (``pemn.RP()`` and ``pemn.Mask()``, keep 0.5, seed 0). Each
measurement runs in a fresh process, which reports its peak RSS (VmHWM) after
``create_model("resnet50")`` or ``pemn.load(path, form=...)``; nothing runs a forward.

    python benchmarks/load_rss.py --repeat 3 --out benchmarks/results/load_rss.json
    python benchmarks/load_rss.py --root /tmp/base   # the same cases on another checkout
    python benchmarks/load_rss.py --hostile --out benchmarks/results/load_rss.json

``--hostile`` measures instead the worst file within the default limits: a Mask MLP of
``2**25`` values (every one regenerated from the seed) whose prototype digests are wrong,
loaded in each form in a fresh process: seconds to the refusal and peak RSS over
``import pemn``.

``--root`` measures the pemn of another checkout (e.g. a ``git worktree`` of an older commit):
the child processes import pemn from there instead of the installed editable copy.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("bare", "rp", "mask")
FORMS = ("train", "dense", "packed")

_CHILD = """
import sys
# the editable install's finder would import /work/main's pemn whatever sys.path says
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable")]
sys.path.insert(0, {root!r})
import torch, pemn
from pemn.models import create_model
torch.set_num_threads(1)
what, path = {what!r}, {path!r}
if what == "import":
    model = None
elif what.startswith("hostile:"):
    import time
    start = time.perf_counter()
    try:
        pemn.load(path, form=what[8:])
    except pemn.artifact.ArtifactError as e:
        print(str(e)[:60], file=sys.stderr)
    print(round(time.perf_counter() - start, 2), file=sys.stderr)
    model = None
elif what == "bare":
    model = create_model("resnet50")
elif what.startswith("save:"):
    strategy = pemn.RP() if what == "save:rp" else pemn.Mask()
    pemn.save(pemn.apply_(create_model("resnet50"), strategy, keep_ratio=0.5, seed=0), path)
    model = None
else:
    model = pemn.load(path, form=what)
tensor_bytes = 0 if model is None else sum(
    t.numel() * t.element_size() for t in model.state_dict().values())
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(tensor_bytes, hwm)
"""


def _child(root: Path, what: str, path: str = "") -> tuple[int, int]:
    """(tensor bytes of the model built, peak RSS in bytes) of one fresh process."""
    code = _CHILD.format(root=str(root), what=what, path=path)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    out = run.stdout.split()
    _child.stderr = run.stderr.strip()
    return int(out[0]), int(out[1])


def hostile(root: Path) -> dict:
    """Seconds and extra peak RSS of refusing the worst hostile file within the defaults."""
    sys.path.insert(0, str(root))
    import pemn
    from pemn.artifact import format as fmt
    from pemn.models import create_model

    model = create_model("mlp", in_features=4096, hidden=[8000], num_classes=2)  # 32.8M
    data = pemn.artifact.pack(pemn.apply_(model, pemn.Mask(), keep_ratio=0.01))
    c = fmt.read_container(data)
    c.header["pemn"]["prototype_sha256"] = ["0" * 64] * 2
    base = _child(root, "import")[1]
    results = {"file_bytes": len(data), "import_peak_rss_bytes": base}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/hostile.pemn"
        Path(path).write_bytes(fmt.seal(c.header, bytes(data[c.header_bytes:])))
        for form in FORMS:
            peak = _child(root, f"hostile:{form}", path)[1]
            error, seconds = _child.stderr.splitlines()[-2:]
            results[f"hostile_{form}"] = {"seconds": float(seconds), "error": error,
                                          "extra_peak_rss_bytes": peak - base}
    return results


def measure(root: Path, repeat: int = 1) -> dict:
    def runs(what: str, path: str = "") -> tuple[int, int]:  # RSS is noisy under load
        return min(_child(root, what, path) for _ in range(repeat))  # the least peak

    tensor_bytes, bare = runs("bare")
    results = {"model_tensor_bytes": tensor_bytes, "bare_peak_rss_bytes": bare}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("rp", "mask"):
            path = f"{tmp}/{case}.pemn"
            _child(root, f"save:{case}", path)
            for form in FORMS:
                peak = runs(form, path)[1]
                results[f"{case}_{form}"] = {"peak_rss_bytes": peak, "extra_bytes": peak - bare,
                                             "extra_vs_tensors": round((peak - bare)
                                                                       / tensor_bytes, 3)}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose pemn is measured")
    p.add_argument("--out", type=Path, help="JSON file to write (merged by --label)")
    p.add_argument("--label", default="after")
    p.add_argument("--hostile", action="store_true", help="the worst hostile file instead")
    p.add_argument("--repeat", type=int, default=1, help="processes per case; the least peak")
    args = p.parse_args()
    results = (hostile(args.root.resolve()) if args.hostile
               else measure(args.root.resolve(), args.repeat))
    print(json.dumps(results, indent=1))
    if args.out:
        report = json.loads(args.out.read_text()) if args.out.is_file() else {}
        report[args.label] = {"command": "python " + " ".join(sys.argv), **results}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
