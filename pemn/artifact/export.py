"""Export a PEMN model as a plain dense model that loads without pemn (safetensors or ONNX):
the weights it computes with, baked into a copy, so the logits do not change."""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from pemn.artifact.header import ArtifactError
from pemn.artifact.load import load
from pemn.artifact.pack import unique_tensors
from pemn.transform import materialize_

__all__ = ["export", "EXPORT_FORMATS", "default_input_shape"]

EXPORT_FORMATS = ("safetensors", "onnx")


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """``(1, *input_shape)`` of the header's dataset if it fits the first layer (else
    ArtifactError); without one, ``(1, C, S, S)`` for a first Conv2d (``S``: ``img_size``
    kwarg, else 28 for one channel, 32 otherwise) or ``(1, in_features)`` for a Linear."""
    header = getattr(model, "pemn_header", None)
    shape = (header.dataset or {}).get("input_shape") if header is not None else None
    kwargs = getattr(model, "model_args", {}).get("kwargs", {})
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if shape is not None:
        if isinstance(first, nn.Conv2d) and (len(shape) != 3 or shape[0] != first.in_channels) \
                or isinstance(first, nn.Linear) and math.prod(shape) != first.in_features:
            raise ArtifactError(f"the header's input_shape {shape} does not fit the model's "
                                f"first layer {first}")
        return (1, *shape)
    if isinstance(first, nn.Conv2d):
        size = kwargs.get("img_size") or getattr(model, "img_size", None) or (
            28 if first.in_channels == 1 else 32)
        return (1, first.in_channels, size, size)
    if isinstance(first, nn.Linear):
        return (1, first.in_features)
    raise ArtifactError("cannot derive the input shape of this model; pass "
                        "example_input_shape=(1, C, H, W)")


def _export_safetensors(model: nn.Module, out_path: Path) -> None:
    from safetensors.torch import save_file

    # save_file refuses tensors that share memory (tied weights): store each once, as
    # safetensors' own save_model does, and name the ties in the metadata.
    entries, ties = unique_tensors(model.state_dict(keep_vars=True).items())
    metadata = {"format": "pt"}
    if ties:
        metadata["pemn.ties"] = json.dumps(dict(ties), sort_keys=True)
    header = getattr(model, "pemn_header", None)  # a loaded artifact's
    args = getattr(model, "model_args", None) or getattr(header, "model", None)
    if args:
        metadata.update({"pemn.architecture": args["name"],
                         "pemn.kwargs": json.dumps(args["kwargs"], sort_keys=True)})
    save_file({k: v.detach().contiguous() for k, v in entries}, str(out_path),
              metadata=metadata)


def _export_onnx(model: nn.Module, out_path: Path, shape: tuple[int, ...]) -> None:
    example = torch.zeros(shape)
    # dynamo=False: the TorchScript exporter needs no onnxscript; the warnings that torch
    # deprecates it and traces shape checks (true for the fixed image size) are silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(out_path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                 "logits": {0: "batch"}},
                          dynamo=False)


def export(source, out_path: str | os.PathLike, format: str = "safetensors",
           example_input_shape: tuple[int, ...] | None = None,
           model: nn.Module | None = None) -> int:
    """Write a plain dense model that loads without pemn; returns the file's size in bytes.

    Args:
        source: an artifact path, or a PEMN model (copied, not modified).
        format: ``"safetensors"`` (the ``state_dict``; metadata ``pemn.architecture`` and
            ``pemn.kwargs`` rebuild it with ``create_model``) or ``"onnx"`` (its input shape:
            ``example_input_shape``, default :func:`default_input_shape`; batch dynamic).
        model: for an artifact of a model outside the zoo, its skeleton (as ``pemn.load``).
    """
    if format not in EXPORT_FORMATS:
        raise ArtifactError(f"unknown export format {format!r}; use one of {EXPORT_FORMATS}")
    if isinstance(source, nn.Module):  # a dense copy; the model itself is not touched
        model = materialize_(copy.deepcopy(source)).eval()
    else:
        model = load(source, model=model, form="dense")
    out_path = Path(out_path)
    if format == "safetensors":
        _export_safetensors(model, out_path)
    else:
        _export_onnx(model, out_path, tuple(example_input_shape or default_input_shape(model)))
    return out_path.stat().st_size
