"""Storage accounting: the paper's compression ratio (PEMN.md §5.2) and sizes in bytes.

The paper counts 1 bit of mask per masked weight plus 32 bits per unique stored value, and
leaves BN and everything else out: ``CR = 1 - (P + 32 U) / (32 P)``. Real bytes on disk, with
BN and headers, come from the artifact (``pemn size``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from pemn.fill import Dense
from pemn.masking import num_kept

__all__ = ["Stats", "stats", "paper_compression_ratio"]


def paper_compression_ratio(num_masked: int, num_unique: int) -> float:
    """``1 - (P + 32 U) / (32 P)``: 1-bit mask + fp32 unique values vs fp32 weights."""
    return 1.0 - (num_masked + 32 * num_unique) / (32 * num_masked)


@dataclass(frozen=True)
class Stats:
    """Counts of a PEMN model. P = masked weights, U = unique stored random values."""

    num_masked: int  # P
    num_unique: int  # U
    compression_ratio: float  # the paper's CR, a fraction (0.9538 = 95.38 %)
    dense_fp32_bytes: int  # the masked weights stored as dense fp32
    mask_bits: int  # 1 bit per masked weight
    num_other_params: int  # trainable or unmasked values outside the masks (BN, biases, ...)

    def as_dict(self) -> dict:
        return asdict(self)


def stats(model: nn.Module) -> Stats:
    """P, U, the paper's CR and sizes of a model prepared by :func:`pemn.apply_`.

    Raises:
        ValueError: if ``pemn.apply_`` was not called on ``model``.
    """
    spec = getattr(model, "pemn_spec", None)
    if spec is None:
        raise ValueError("model has no PEMN spec; call pemn.apply_(model, strategy) first")
    num_masked = sum(t.numel for t in spec.tensors)
    dense = isinstance(spec.strategy, Dense)
    if getattr(spec.strategy, "is_baseline", False):  # trained kept values are all stored
        num_unique = sum(num_kept(t.numel, spec.keep_ratio) for t in spec.tensors)
    else:
        num_unique = num_masked if dense else spec.plan.num_unique
    cr = 0.0 if dense else paper_compression_ratio(num_masked, num_unique)
    masked_names = {t.name for t in spec.tensors}
    other = sum(t.numel() for n, t in model.state_dict().items()
                if not n.endswith(("_fixed", "_scores", "_orig", "_mask")) and n not in masked_names
                and t.is_floating_point())
    return Stats(num_masked, num_unique, cr, 4 * num_masked,
                 0 if dense else num_masked, other)
