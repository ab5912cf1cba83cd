"""Train the main job's config and print the steps where a layer's top-k boundary is a tie.

There (|s| of the k-th and (k+1)-th largest equal) which score is kept depends on the
tie-breaking rule: ``torch.topk``'s choice before, the lower position now (pemn.masking). This
is why the main job's trajectory changed after step 741 (docs/RESULTS.md, the main job).

    python benchmarks/boundary_ties.py      # stops at the third tie; about 4 minutes here
"""
import sys

from pemn import masking
from pemn import run as R
from pemn.cli import main
from pemn.transform import masked_tensors

step = {"n": 0, "ties": 0}


def hook(model, inputs):
    if not model.training:
        return
    step["n"] += 1
    for fqn, m, name in masked_tensors(model):
        s = getattr(m, name + "_scores").detach().abs().flatten()
        k = masking.num_kept(s.numel(), m._pemn_keep_ratio)
        if k >= s.numel():
            continue
        v = s.topk(k + 1).values
        if v[k - 1] == v[k]:
            step["ties"] += 1
            print(f"tie at the boundary: step {step['n']} layer {fqn}.{name} value "
                  f"{v[k].item()!r}", flush=True)
            if step["ties"] >= 3:
                sys.exit(0)


_orig = R.build_model


def build(*a, **kw):
    model = _orig(*a, **kw)
    model.register_forward_pre_hook(hook)
    return model


R.build_model = build
# The main job as it was then: the paper's RP (copy order, normal values), not today's defaults.
sys.exit(main(["train", "configs/fmnist_convmixer.toml", "out_dir=runs", "name=boundary_ties",
               'mask.strategy={name="rp", ratio=1e-3, order="copy", values="normal"}']))
