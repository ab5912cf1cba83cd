"""Storage accounting: the paper's P, U and compression ratio (arXiv 2210.06699, Eq. 10: one
mask bit per masked weight plus 32 bits per unique value, BN left out), and the real bytes of
a file by component and in each storage reading (docs/METHOD.md, sections 3 and 6).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

from torch import nn

from pemn.artifact import describe, pack
from pemn.artifact.header import FLOAT_DTYPES
from pemn.artifact.pack import unmasked_hint
from pemn.artifact.weights import csr_num_bytes
from pemn.fill import mask_size, strategy_to_dict
from pemn.masking import GAIN, SUFFIXES

__all__ = ["Stats", "stats", "paper_compression_ratio", "paper_bytes", "mask_entropy_bytes",
           "bitmask_fp32_bytes", "size_report", "format_size_table", "storage_readings"]


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
    mask_bits: int  # 1 bit per masked weight (on its seeded support, with ``pruned``)
    num_other_params: int  # trainable or unmasked values outside the masks (BN, biases, ...)

    def as_dict(self) -> dict:
        return asdict(self)


def stats(model: nn.Module) -> Stats:
    """P, U, the paper's CR and sizes of a model prepared by ``pemn.apply_`` (else ValueError)."""
    spec = getattr(model, "pemn_spec", None)
    if spec is None:
        raise ValueError("model has no PEMN spec; call pemn.apply_(model, strategy) first")
    num_masked = sum(t.numel for t in spec.tensors)
    num_unique = spec.strategy.num_stored(spec.tensors, spec.keep_ratio)
    has_mask = spec.strategy.stores_mask
    cr = paper_compression_ratio(num_masked, num_unique) if has_mask else 0.0
    bits = sum(mask_size(t.numel, getattr(spec.strategy, "pruned", 0.0)) for t in spec.tensors)
    owned = {n + s for n in [*(t.name for t in spec.tensors), *spec.ties]  # w, its aliases
             for s in ("", *SUFFIXES)}  # and their parts
    other = sum(t.numel() for n, t in model.state_dict().items()
                if t.is_floating_point() and n not in owned)
    return Stats(num_masked, num_unique, cr, 4 * num_masked, bits if has_mask else 0, other)


def paper_bytes(num_masked: int, num_unique: int) -> int:
    """The paper's storage: ``ceil(P/8) + 4U``."""
    return -(-num_masked // 8) + 4 * num_unique


def mask_entropy_bytes(numel: int, num_kept: int) -> float:
    """``n H(k/n) / 8``: the entropy bound of an exact-k mask in bytes."""
    if num_kept in (0, numel):
        return 0.0
    p = num_kept / numel
    return numel * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


def bitmask_fp32_bytes(shape, nnz: int) -> int:
    """A 1-bit mask over all values + fp32 kept values + int32 row offsets (compressed-tensors)."""
    return -(-math.prod(shape) // 8) + 4 * nnz + 4 * shape[0]


def _baselines(masks, others_fp32: int, others_fp16: int) -> dict[str, int]:
    """The masked tensors stored the usual ways; the other tensors in fp32 (fp16 with fp16)."""
    num_masked = sum(m["numel"] for m in masks)
    return {
        "fp32_dense": 4 * num_masked + others_fp32,
        "fp16_dense": 2 * num_masked + others_fp16,
        "csr": sum(csr_num_bytes(m["shape"], m["num_kept"]) for m in masks) + others_fp32,
        # the paper's count (Sec. 4.3): p (1 - r) fp32 values + 2 p (1 - r) int32 positions
        "csr_paper": sum(12 * m["num_kept"] for m in masks) + others_fp32,
        "bitmask_fp32": sum(bitmask_fp32_bytes(m["shape"], m["num_kept"]) for m in masks)
        + others_fp32,
    }


def size_report(source) -> dict:
    """Bytes per component of an artifact (a path, bytes, or a model packed as ``save`` would),
    P, U, compression ratios and baselines: a JSON-serialisable dict (docs/METHOD.md, section
    3); ``pemn.artifact.ArtifactError`` for an invalid artifact or an unpackable model."""
    info = describe(source)
    header, masks = info["header"], info["masks"] + info["encoded"]
    masked_names = {m["name"] for m in masks}
    # an encoded tensor's gain is its family's stored values (PRANC's alpha), not a model tensor
    family = {m["name"] + GAIN for m in info["encoded"]}
    others = [o for o in info["others"] if o["name"] not in masked_names | family]  # Dense weights
    family_bytes = sum(o["num_bytes"] for o in info["others"] if o["name"] in family)
    num_masked, num_unique = sum(m["numel"] for m in masks), info["num_unique"]
    norm = sum(o["num_bytes"] for o in info["others"] if o["is_norm"])
    kinds = info["kind_bytes"]
    sizes = {"header": info["header_bytes"], "masks": kinds["mask"],
             "prototype": kinds["prototype"], "norm": norm,
             "other": kinds["raw"] - norm - family_bytes,
             **({"weights": kinds["weight"] + family_bytes} if info["encoded"] else {}),
             "signature": info["file_bytes"] - info["header_bytes"] - sum(kinds.values()),
             "total": info["file_bytes"]}
    # the same tensors in fp32 / fp16, whatever precision the file stores them in; a folded
    # BatchNorm also had its running mean and variance (and an int64 counter)
    floats = [(math.prod(o["shape"]), o["num_bytes"], o["dtype"] in FLOAT_DTYPES)
              for o in others]
    folded = sum(math.prod(o["shape"]) for o in others if o["name"].rpartition(".")[0]
                 in header.folded_norms and o["name"].endswith(".weight"))

    def others_in(width: int) -> int:  # the folded norms' mean, variance and int64 counter
        return (sum(width * n if f else b for n, b, f in floats) + 2 * width * folded
                + 8 * len(header.folded_norms))

    others_fp32 = others_in(4)
    no_mask = not info["strategy"].stores_mask  # Dense, Quantized, Binary
    codecs = dict(Counter(m["codec"] for m in info["masks"]))
    encodings = dict(Counter(e["encoding"] for e in info["encoded"]))
    return {
        "architecture": header.model["name"] if header.model else "(not a zoo model)",
        "strategy": strategy_to_dict(info["strategy"]),  # as this pemn reads the header
        "keep_ratio": header.keep_ratio, "num_masked": num_masked, "num_unique": num_unique,
        "num_masked_tensors": len(masks), "mask_codecs": codecs, "weight_encodings": encodings,
        "bytes": sizes,
        "mask_bitmap_bytes": sum(-(-m.get("mask_size", m["numel"]) // 8) for m in masks)
        if not no_mask else 0,
        "mask_entropy_bytes": sum(mask_entropy_bytes(m.get("mask_size", m["numel"]),
                                                     m["num_kept"]) for m in masks),
        "paper_bytes": paper_bytes(num_masked, num_unique),
        "paper_compression_ratio": 0.0 if no_mask else paper_compression_ratio(num_masked,
                                                                               num_unique),
        "dense_fp32_bytes": 4 * num_masked,
        "model_fp32_bytes": 4 * num_masked + others_fp32,
        "file_compression_ratio": 0.0 if no_mask and not info["encoded"]
        else 1 - sizes["total"] / (4 * num_masked),
        "model_compression_ratio": 1 - sizes["total"] / (4 * num_masked + others_fp32),
        "baselines": _baselines(masks, others_fp32, others_in(2)),
        "folded_norms": len(header.folded_norms), "signed_by": info["signed_by"],
        "norm_int8": sum(o["is_norm"] and o["encoding"] != "raw" for o in info["others"]),
        "unmasked_hint": unmasked_hint(info),
    }


def format_size_table(report: dict) -> str:
    """A fixed-width, human-readable table of a :func:`size_report` (for ``pemn size``)."""
    b, total = report["bytes"], report["bytes"]["total"]
    codecs = ", ".join(f"{n} x{c}" for n, c in report["mask_codecs"].items()) or "none"
    encodings = ", ".join(f"{n} x{c}" for n, c in report.get("weight_encodings", {}).items())
    strategy = report["strategy"]
    args = ", ".join(f"{k}={v}" for k, v in strategy.items() if k != "name")
    rows = [
        f"{report['architecture']}  {strategy['name']}({args})  "
        f"keep_ratio={report['keep_ratio']}  P={report['num_masked']:,}  "
        f"U={report['num_unique']:,}",
        "",
        f"{'component':<40}{'bytes':>14}{'% of file':>11}",
    ]
    norm = "norm layers (folded affine" if report["folded_norms"] else \
        "norm layers (affine + running stats"
    norm += ", int8)" if report.get("norm_int8") else ")"
    parts = [("header (preamble + zlib JSON)", b["header"]), (f"masks ({codecs})", b["masks"]),
             (f"trained weights ({encodings})", b.get("weights", 0)),
             ("prototype values", b["prototype"]), (norm, b["norm"]),
             ("other tensors (biases, unmasked, ...)", b["other"]),
             ("signature (ed25519)", b["signature"]), ("total on disk", total)]
    rows += [f"  {name:<38}{n:>14,}{100 * n / total:>10.2f}%" for name, n in parts
             if n or not name.startswith(("signature", "trained"))]
    if report.get("unmasked_hint"):  # where the bytes go, when masks are not most of them
        rows.append(f"  {report['unmasked_hint']}")
    rows.append(f"  signed by ed25519 key {report['signed_by']} (check it with "
                "pemn.load(..., verify_key=KEY))" if report["signed_by"] else "  not signed")
    rows += [
        "",
        f"  {'mask entropy bound sum n*H(k/n)/8':<38}{report['mask_entropy_bytes']:>14,.0f}",
        f"  {'paper accounting ceil(P/8) + 4U':<38}{report['paper_bytes']:>14,}",
        "",
        f"{'compression ratio':<40}{'':>14}{'%':>11}",
    ]
    ratios = [("paper: 1 - (P + 32U) / 32P (no BN)", "paper_compression_ratio"),
              ("file vs masked weights in fp32 (4P)", "file_compression_ratio"),
              ("file vs whole model in fp32", "model_compression_ratio")]
    rows += [f"  {name:<38}{'':>14}{100 * report[key]:>10.3f}%" for name, key in ratios]
    rows += ["", f"{'same network, same keep ratio':<40}{'bytes':>14}{'x file':>11}"]
    names = {"fp32_dense": "fp32 dense", "fp16_dense": "fp16 dense",
             "csr": "CSR (csr-f32 encoding)", "csr_paper": "CSR, paper's 3p(1-r) x 32 bit",
             "bitmask_fp32": "bitmask + fp32 values"}
    rows += [f"  {names[k]:<38}{v:>14,}{v / total:>10.2f}x"
             for k, v in report["baselines"].items()]
    rows.append(f"  {'this artifact':<38}{total:>14,}{1:>10.2f}x")
    return "\n".join(rows)


def storage_readings(model: nn.Module, precision: str = "exact", **save_args) -> dict[str, int]:
    """Real bytes of ``model`` packed as ``pemn.save(model, path, precision, **save_args)``
    would: ``total``, and for a ``Sparse`` model the readings ``mask_fp32``, ``bitmap_fp32``,
    ``csr`` and ``values_only`` (docs/METHOD.md, section 6)."""
    data = pack(model, precision=precision, **save_args)
    out = {"total": len(data)}
    encoded = describe(data)["encoded"]
    if any(e["num_kept"] < e["numel"] or e["encoding"].endswith("+f32") for e in encoded):
        out.update(mask_fp32=len(data),
                   bitmap_fp32=len(pack(model, precision=precision, codec="bits", **save_args)),
                   csr=len(pack(model, precision=precision, sparse_format="csr", **save_args)),
                   values_only=len(data) - sum(e["num_bytes"] - 4 * e["num_kept"] for e in encoded))
    return out
