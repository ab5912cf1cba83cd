"""The paper's CIFAR-10 test accuracies in % (arXiv 2210.06699, Figs. 3-5; single runs, best over
epochs) by pemn model name and strategy tag (``rp0.001-copy-normal``, ``random_prune-cr0.9``)."""
from __future__ import annotations

__all__ = ["FIG3", "FIG4", "FIG5", "PAPER_CIFAR10", "paper_accuracy"]

# The paper's strategies draw normal values and tile RP in copy order; their tags say so.
_FIG3_COLUMNS = ("dense", "mask-normal", "one_layer-normal", "mp-normal",
                 *(f"rp{r}-copy-normal" for r in ("0.1", "0.01", "0.001", "0.0001", "1e-05")))
_CRS = (0.9, 0.92, 0.94, 0.96)

# Fig. 3: accuracy as the unique values shrink.
FIG3: dict[str, dict[str, float]] = {model: dict(zip(_FIG3_COLUMNS, accs)) for model, accs in {
    "convmixer_256_d6": (94.01, 89.43, 88.93, 88.98, 89.09, 88.96, 88.51, 85.36, 80.20),
    "convmixer_512_d6": (94.64, 91.88, 92.14, 92.04, 92.24, 92.16, 92.03, 90.54, 87.53),
    "convmixer_256_d8": (94.61, 90.50, 90.46, 90.65, 90.64, 90.72, 90.19, 87.73, 82.06),
    "convmixer_512_d8": (95.48, 92.80, 92.73, 93.29, 92.99, 93.09, 92.95, 91.55, 87.25),
    "vit_256_d6": (79.29, 76.48, 75.88, 76.62, 76.91, 76.26, 77.18, 64.39, 66.06),
    "vit_512_d6": (82.97, 80.81, 81.16, 81.45, 81.84, 81.39, 80.99, 78.90, 79.07),
    "vit_256_d8": (82.18, 79.30, 79.86, 79.61, 79.23, 79.81, 79.53, 73.54, 71.38),
    "vit_512_d8": (85.11, 83.62, 83.91, 83.71, 83.71, 83.59, 83.68, 76.21, 79.21),
}.items()}


def _compression(dense: float, random: tuple, minimum: tuple, ours: dict) -> dict[str, float]:
    out = {"dense": dense, **ours}
    out.update({f"random_prune-cr{cr:g}": a for cr, a in zip(_CRS, random)})
    out.update({f"magnitude_prune-cr{cr:g}": a for cr, a in zip(_CRS, minimum)})
    return out


# Fig. 4, CIFAR-10 half. "Ours" = MP, RP 1e-1, RP 1e-2.
FIG4: dict[str, dict[str, float]] = {
    "resnet32": _compression(92.26, (84.07, 83.44, 82.01, 79.36), (84.16, 83.47, 81.25, 79.00),
                             {"mp-normal": 86.29, "rp0.1-copy-normal": 86.65,
                              "rp0.01-copy-normal": 86.41}),
    "resnet56": _compression(92.93, (86.76, 85.64, 84.80, 81.92), (86.95, 86.22, 84.33, 82.36),
                             {"mp-normal": 88.35, "rp0.1-copy-normal": 88.12,
                              "rp0.01-copy-normal": 88.32}),
}

# Fig. 5: ConvMixer dim 256. "Ours" = RP 1e-1, 1e-2, 1e-3.
FIG5: dict[str, dict[str, float]] = {
    "convmixer_256_d6": _compression(94.01, (84.23, 83.16, 81.06, 76.80),
                                     (84.42, 83.35, 80.94, 77.29),
                                     {"rp0.1-copy-normal": 89.09, "rp0.01-copy-normal": 88.96,
                                      "rp0.001-copy-normal": 88.51}),
    "convmixer_256_d8": _compression(94.61, (86.89, 85.43, 83.42, 79.76),
                                     (86.42, 85.06, 83.68, 79.62),
                                     {"rp0.1-copy-normal": 90.64, "rp0.01-copy-normal": 90.72,
                                      "rp0.001-copy-normal": 90.19}),
}

# One lookup table (the figures agree where they meet)
PAPER_CIFAR10 = {model: {**FIG5.get(model, {}), **FIG4.get(model, {}), **FIG3.get(model, {})}
                 for model in {**FIG3, **FIG4, **FIG5}}


def paper_accuracy(dataset: str, model: str, strategy: str) -> float | None:
    """The paper's CIFAR-10 accuracy (%) for a ``pemn`` model name and strategy tag, or None."""
    return PAPER_CIFAR10.get(model, {}).get(strategy) if dataset == "cifar10" else None
