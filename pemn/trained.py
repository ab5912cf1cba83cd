"""Loading a trained run, checkpoint or artifact (``load_trained``), and packing it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pemn.checkpoint import CheckpointError, load_checkpoint
from pemn.config import ConfigError, RunConfig, from_dict
from pemn.data import dataset_info
from pemn.run import model_from_checkpoint
from pemn.rundir import ARTIFACT_SUFFIX, RunDir, RunError

__all__ = ["Trained", "load_trained", "load_model", "pack_trained"]

MODEL_KEYS = ("config", "model_args", "model")  # what loading a model needs from a checkpoint


@dataclass(frozen=True)
class Trained:
    """A model (in eval mode) from :func:`load_trained`, its dataset, root (None: the usual
    place) and ``channels``/``image_size`` options (0: as stored), as its source records."""

    model: nn.Module
    dataset: str | None
    data_root: str | None
    data_options: dict = field(default_factory=dict)


def _from_checkpoint(path: Path, device, form: str) -> Trained:
    state = load_checkpoint(path, keys=MODEL_KEYS)
    try:
        cfg = from_dict(RunConfig, state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this pemn cannot use: "
                              f"{e}") from None
    model = model_from_checkpoint(state, cfg, path)
    if form == "train":
        model = model.to(device)
    else:  # the other forms are the artifact's to build
        from pemn.artifact import pack, unpack
        model = unpack(pack(model), form=form, device=device)
    d = cfg.data
    return Trained(model, d.dataset, d.root or None,
                   {"channels": d.channels, "image_size": d.image_size})


def _from_artifact(path: Path, device, form: str) -> Trained:
    from pemn.artifact import load
    model = load(path, form=form, device=device)
    dataset = model.pemn_header.dataset or {}
    shape = dataset.get("input_shape") or ()  # validated with the header (dataset_entry)
    image = {"channels": shape[0], "image_size": shape[2]} if len(shape) == 3 else {}
    return Trained(model, dataset.get("name"), None, image)


def load_trained(path: str | Path, *, device: str | torch.device = "cpu",
                 form: str = "train") -> Trained:
    """Load a trained model from a run directory (its checkpoint), a checkpoint or a ``.pemn``
    file, in ``form`` ``"train"``, ``"dense"`` or ``"packed"`` (:mod:`pemn.artifact.forms`).
    RunError: nothing at ``path``, or a directory without a checkpoint; CheckpointError,
    ArtifactError: a bad checkpoint or artifact, or too little memory."""
    path = Path(path)
    if path.is_dir():
        run_dir = RunDir(path)
        if not run_dir.checkpoint.is_file():
            raise RunError(f"{path} is a directory without {run_dir.checkpoint.name}: not a run "
                           f"directory, or its first epoch has not finished")
        path = run_dir.checkpoint
    elif not path.exists():
        raise RunError(f"{path}: no run directory, checkpoint or artifact there")
    if path.suffix == ARTIFACT_SUFFIX:
        return _from_artifact(path, device, form)
    return _from_checkpoint(path, device, form)


def load_model(path: str | Path, *, device: str | torch.device = "cpu",
               form: str = "train") -> nn.Module:
    """The model of :func:`load_trained` alone (same arguments and errors)."""
    return load_trained(path, device=device, form=form).model


def pack_trained(path: str | Path, out: str | Path | None = None, *, codec: str = "auto",
                 precision: str = "exact", sign_with=None) -> tuple[Path, int]:
    """Write what :func:`load_trained` loads from ``path`` as a ``.pemn`` file that records its
    dataset (default: the run directory's artifact; the options as :func:`pemn.artifact.save`);
    return the path and its size in bytes. RunError if the output would be ``path`` itself."""
    from pemn.artifact import save

    path = Path(path)
    out = Path(out) if out else RunDir(path if path.is_dir() else path.parent).artifact
    if out == path:
        raise RunError(f"{path} would be overwritten by its own packed copy; choose another output")
    trained = load_trained(path)
    header = getattr(trained.model, "pemn_header", None)  # an artifact keeps its own record
    dataset = header.dataset if header is not None else trained.dataset and dataset_info(
        trained.dataset, trained.data_root, **trained.data_options)
    return out, save(trained.model, out, codec=codec, dataset=dataset, precision=precision,
                     sign_with=sign_with)
