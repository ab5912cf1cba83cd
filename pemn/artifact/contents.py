"""What an artifact holds, component by component, without building its values (``describe``);
which tensors belong to norm layers, by the type of the module that owns them."""
from __future__ import annotations

from torch import nn

from pemn.artifact.format import read_container
from pemn.artifact.forms import rebuilder, tensor_specs
from pemn.artifact.header import KINDS, Header
from pemn.artifact.load import guarded, zoo_skeleton
from pemn.artifact.pack import pack
from pemn.artifact.weights import TrainedWeights
from pemn.fill import Dense, TensorSpec, mask_size, plan_fill, strategy_from_dict

__all__ = ["describe", "norm_names"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def norm_names(model: nn.Module) -> set[str]:
    """Names of the tensors of ``model``'s norm layers, by module type."""
    return {f"{fqn}.{k}" if fqn else k for fqn, m in model.named_modules()
            if isinstance(m, _NORM_TYPES) for k in m.state_dict()}


def _num_unique(header: Header, strategy) -> int:
    """U: a fill's unique values, or the values a trained-weight file stores (PRANC: its k)."""
    if rebuilder(strategy) is not None:
        return strategy.num_stored([TensorSpec(e.name, e.shape) for e in header.encoded])
    if isinstance(strategy, TrainedWeights):
        return sum(e.num_kept for e in header.encoded)
    if isinstance(strategy, Dense):
        return 0
    return plan_fill(strategy, tensor_specs(header)).num_unique


def _describe(data: bytes, model: nn.Module | None) -> dict:
    container = read_container(data)
    header = container.table
    strategy = strategy_from_dict(header.strategy)
    if model is None and header.model is not None:
        model = zoo_skeleton(header)  # checked against the file
    norms = set() if model is None else norm_names(model)
    return {
        "header": header, "strategy": strategy, "format_version": container.version,
        "file_bytes": len(data), "header_bytes": container.header_bytes,
        "kind_bytes": {kind: sum(e.length for e in header.of_kind(kind)) for kind in KINDS},
        "masks": [{"name": m.name, "shape": m.shape, "numel": m.numel, "num_kept": m.num_kept,
                   "codec": m.encoding, "num_bytes": m.length,
                   "mask_size": mask_size(m.numel, getattr(strategy, "pruned", 0.0))}
                  for m in header.masked],
        "others": [{"name": t.name, "dtype": t.dtype, "shape": t.shape, "encoding": t.encoding,
                    "num_bytes": t.length, "is_norm": t.name in norms} for t in header.raw],
        "encoded": [{"name": e.name, "shape": e.shape, "numel": e.numel,
                     "num_kept": e.num_kept, "encoding": e.encoding, "num_bytes": e.length}
                    for e in header.encoded],
        "num_unique": _num_unique(header, strategy),
        "signed_by": container.signature.public_key.hex() if container.signature else None,
    }


def describe(source, model: nn.Module | None = None) -> dict:
    """What an artifact (a path, bytes, or a PEMN model, packed first) holds, component by
    component, without building its values; the keys: docs/FORMAT.md, "Reading a file".
    ``model``: the architecture of a file that names no zoo model, so that its norm layers
    are known (not filled or changed)."""
    if isinstance(source, nn.Module):
        source, model = pack(source), source
    return guarded(source, lambda data: _describe(data, model))
