"""One run from a config (data -> model -> PEMN or a baseline -> train -> summary), the files of
a run directory, and loading a trained model from a run directory, checkpoint or artifact.
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from pemn import fill, stats
from pemn.checkpoint import CheckpointError, load_checkpoint
from pemn.config import ConfigError, ModelConfig, RunConfig, flatten, from_dict, to_dict
from pemn.data import DatasetInfo, dataset_info, load_dataset, split_validation
from pemn.data.loader import AugmentConfig, BatchLoader
from pemn.distributed import World, setup, teardown
from pemn.fileio import atomic_write
from pemn.models import create_model, data_args
from pemn.train import resolve_device, train
from pemn.transform import accepts, apply_

__all__ = ["run", "build_model", "model_from_config", "RunDir", "RunError", "Trained",
           "load_trained", "load_model", "pack_trained", "is_out_of_memory", "memory_text"]

log = logging.getLogger(__name__)
ARTIFACT_SUFFIX = ".pemn"
# What loading a model needs from a checkpoint.
MODEL_KEYS = ("config", "model_args", "model")


class RunError(ValueError):
    """A run directory in the wrong state (exists, missing, unfinished, unreadable)."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None


def _write_json(path: Path, value) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


@dataclass(frozen=True)
class RunDir:
    """A run directory: the one owner of its file names.

    ``config.json`` holds the resolved config (written first), ``metrics.jsonl`` one line per
    epoch, ``checkpoint.pt`` the training state (rewritten atomically every epoch),
    ``summary.json`` the results (written last, so its presence means the run finished) and
    ``model.pemn`` the packed model (written by ``pemn pack`` or a sweep).
    """

    path: Path

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SUMMARY = "summary.json"
    ARTIFACT = "model" + ARTIFACT_SUFFIX

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, cfg: RunConfig) -> RunDir:
        """The directory a run of ``cfg`` writes: ``cfg.out_dir / cfg.run_name()``."""
        return cls(Path(cfg.out_dir) / cfg.run_name())

    config = property(lambda self: self.path / self.CONFIG, doc="The resolved config (JSON).")
    metrics = property(lambda self: self.path / self.METRICS, doc="One JSON line per epoch.")
    checkpoint = property(lambda self: self.path / self.CHECKPOINT, doc="The training state.")
    summary = property(lambda self: self.path / self.SUMMARY, doc="Results of a finished run.")
    artifact = property(lambda self: self.path / self.ARTIFACT, doc="The packed model.")

    @property
    def started(self) -> bool:
        return self.config.is_file()

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    def config_dict(self) -> dict:
        """The stored config as plain JSON values.

        Raises:
            RunError: no config file (not a run directory), or an unreadable one.
        """
        if not self.started:
            raise RunError(f"{self.path} is not a run directory (no {self.CONFIG})")
        return _read_json(self.config)

    def read_config(self) -> RunConfig:
        """The stored config (raises RunError as :meth:`config_dict`, ConfigError if invalid)."""
        return from_dict(RunConfig, self.config_dict())

    def write_config(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.config, to_dict(cfg))

    def read_summary(self) -> dict:
        if not self.finished:
            raise RunError(f"{self.path} has not finished (no {self.SUMMARY})")
        return _read_json(self.summary)

    def write_summary(self, summary: dict) -> None:
        _write_json(self.summary, summary)

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        try:
            return [json.loads(line) for line in self.metrics.read_text().splitlines()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"cannot read {self.metrics}: {e}") from None

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write(self.metrics, "".join(json.dumps(h) + "\n" for h in history).encode())


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is Python or torch (CPU or CUDA) failing to allocate memory."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def memory_text(error: BaseException) -> str:
    """How much an allocation failure asked for, for people."""
    asked = re.search(r"allocate (\d+) bytes", str(error))
    return f"asked for {int(asked[1]) / 1e9:.3g} GB at once" if asked else type(error).__name__


@contextlib.contextmanager
def _enough_memory(error: type[Exception], what: str):
    """Turn an allocation failure while building ``what`` into one clear ``error``."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise error(f"not enough memory to build {what} ({memory_text(e)})") from None


def _describe_model(name, kwargs: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"model {name}({args})"


def build_model(cfg: RunConfig, **given) -> torch.nn.Module:
    """``create_model`` + ``pemn.apply_`` of the configured strategy, given the config's
    keep_ratio and seed where the strategy uses them.

    ``given``: model arguments from the data (:func:`model_kwargs`); ``model.kwargs`` win.
    """
    model = create_model(cfg.model.name, **{**given, **cfg.model.kwargs})
    m = cfg.mask
    args = {k: getattr(m, k) for k in accepts(m.strategy)}
    return apply_(model, m.strategy, **args)


def data_info(cfg: RunConfig) -> DatasetInfo:
    """The metadata of ``cfg``'s dataset (a folder's or an npz's, read from its files)."""
    d = cfg.data
    return dataset_info(d.dataset, d.root or None, channels=d.channels, image_size=d.image_size)


def model_kwargs(cfg: RunConfig, info: DatasetInfo) -> dict:
    """What ``info`` says about the inputs of ``cfg``'s model: the ``pemn.models.DATA_ARGS``
    it accepts (channels, image size, flat input size, classes).

    ``model.kwargs`` win; one the data cannot train (other channels, size or input width, or
    fewer classes than the labels) is refused, and a larger head is logged.

    Raises:
        ConfigError: a model kwarg that conflicts with the data, in one line.
    """
    c, s = info.channels, info.image_size
    said = {"in_channels": c, "img_size": s, "in_features": c * s * s,
            "num_classes": info.num_classes}
    given = {k: said[k] for k in data_args(cfg.model.name)}
    user = cfg.model.kwargs
    differ = sorted(k for k in given.keys() & user.keys() if user[k] != given[k])
    bigger_head = [k for k in differ if k == "num_classes" and isinstance(user[k], int)
                   and user[k] > given[k]]
    bad = [k for k in differ if k not in bigger_head]
    if bad:
        raise ConfigError("; ".join(f"model.kwargs.{k} = {user[k]!r}, but {info.name} gives "
                                    f"{given[k]}" for k in bad) + "; remove it to take the data's")
    if bigger_head:
        log.warning("model.kwargs.num_classes = %s: %d logits beyond %s's %d classes never see "
                    "a label", user["num_classes"], user["num_classes"] - given["num_classes"],
                    info.name, given["num_classes"])
    return given


def model_from_config(cfg: RunConfig, info: DatasetInfo | None = None) -> nn.Module:
    """:func:`build_model` for ``cfg``'s dataset (``info``, default :func:`data_info`): the
    model is given the data's channels, image size and classes (:func:`model_kwargs`).

    Raises:
        RunError: the model does not fit in memory (e.g. a huge ``kernel_size``).
        ConfigError, DatasetError, ValueError: a bad config, dataset or model name, or model
            kwargs that conflict with the data.
    """
    given = model_kwargs(cfg, info or data_info(cfg))
    with _enough_memory(RunError, _describe_model(cfg.model.name, {**given, **cfg.model.kwargs})):
        return build_model(cfg, **given)


def _loaders(cfg: RunConfig, ds, device, world: World):
    d, o = cfg.data, cfg.optim
    val = None
    if d.val_fraction > 0:
        ds, val = split_validation(ds, d.val_fraction, seed=cfg.mask.seed)
    if d.limit_train:
        ds = replace(ds, train_images=ds.train_images[: d.limit_train],
                     train_labels=ds.train_labels[: d.limit_train])
    augment = AugmentConfig(crop_padding=d.crop_padding, flip=d.flip, erase_prob=d.erase_prob,
                            randaugment=tuple(d.randaugment) or None,
                            color_jitter=d.color_jitter)
    if o.batch_size % world.world_size:
        raise ConfigError(f"optim.batch_size {o.batch_size} must be divisible by the "
                          f"{world.world_size} processes")
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=o.channels_last)
    train_loader = BatchLoader(ds.train_images, ds.train_labels, o.batch_size // world.world_size,
                               shuffle=True, augment=augment, seed=o.seed, rank=world.rank,
                               world_size=world.world_size, drop_last=True, **common)
    evals = {"test": BatchLoader(ds.test_images, ds.test_labels, o.eval_batch_size,
                                 shuffle=False, **common)}
    if val is not None:
        evals["val"] = BatchLoader(val[0], val[1], o.eval_batch_size, shuffle=False, **common)
    return train_loader, evals


# Keys that may differ between a run directory and the config that continues it.
_RESUMABLE_KEYS = {"out_dir", "name", "optim.device", "optim.eval_batch_size"}


def check_same_config(cfg: RunConfig, run_dir: RunDir, remedy: str) -> None:
    """Refuse to continue or reuse a run directory that was made by a different config.

    Only keys present on both sides are compared, and the recorded config is read through this
    pemn first (fields it lacks take today's defaults), so a config field or a strategy option
    added to ``pemn`` later does not orphan finished runs.

    Raises:
        ConfigError: the configs differ; the message names the keys and ends with ``remedy``.
    """
    if not run_dir.started:
        return
    recorded = run_dir.config_dict()
    try:
        recorded = to_dict(from_dict(RunConfig, recorded))
    except (ConfigError, ValueError, TypeError):
        pass  # compared as written: any difference is reported below
    old, new = flatten(recorded), flatten(to_dict(cfg))
    diff = sorted(k for k in old.keys() & new.keys()
                  if k not in _RESUMABLE_KEYS and old[k] != new[k])
    if diff:
        raise ConfigError(f"{run_dir.path} was made with a different config ({', '.join(diff)}: "
                          f"{[old.get(k) for k in diff]} there, {[new.get(k) for k in diff]} "
                          f"now); {remedy}")


def _prepare_dir(run_dir: RunDir, cfg: RunConfig, resume: bool, world: World) -> None:
    started = run_dir.started
    world.barrier()  # every rank looks before rank 0 writes, so all ranks agree
    if started and not resume:
        raise RunError(f"run directory {run_dir.path} already exists; pass --resume to continue "
                       f"it or choose another name (name=...)")
    check_same_config(cfg, run_dir, "delete it or choose another name (name=...)")
    if world.is_main and not started:
        run_dir.write_config(cfg)
    world.barrier()


def summarize(cfg: RunConfig, model, history: list[dict], seconds: float) -> dict:
    s = stats(model)
    best = max(history, key=lambda h: h["test_acc"])
    out = {"run": cfg.run_name(), "model": cfg.model.name, "dataset": cfg.data.dataset,
           "strategy": fill.strategy_to_dict(cfg.mask.strategy),
           "keep_ratio": cfg.mask.strategy.keep_ratio(cfg.mask.keep_ratio),
           "seed": cfg.mask.seed, "epochs": cfg.optim.epochs, **s.as_dict(),
           "final_test_acc": history[-1]["test_acc"], "best_test_acc": best["test_acc"],
           "images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
           "wall_s": round(seconds, 1), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.machine()}
    if "val_acc" in history[-1]:
        best_val = max(history, key=lambda h: h["val_acc"])
        out.update(best_val_acc=best_val["val_acc"], test_acc_at_best_val=best_val["test_acc"])
    return out


def _train_run(cfg: RunConfig, run_dir: RunDir, world: World, device: torch.device,
               resume: bool, progress: bool) -> dict:
    t0 = time.perf_counter()
    d = cfg.data
    ds = load_dataset(d.dataset, d.root or None, channels=d.channels, image_size=d.image_size)
    torch.manual_seed(cfg.optim.seed * world.world_size + world.rank)
    model = model_from_config(cfg, ds.info).to(device)
    if cfg.optim.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, evals = _loaders(cfg, ds, device, world)
    if world.is_main:
        log.info("%s: %s on %s, %d train batches/epoch, device %s, %d process(es)",
                 run_dir.path.name, cfg.model.name, ds.name, len(train_loader), device,
                 world.world_size)
    meta = {"config": to_dict(cfg), "model_args": model.model_args}
    history = train(model, train_loader, evals, cfg.optim, run_dir, world, meta,
                    resume=resume, progress=progress)
    summary = summarize(cfg, model, history, time.perf_counter() - t0)
    if world.is_main:
        run_dir.write_summary(summary)
    world.barrier()
    return summary


def run(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train one configuration in ``RunDir.of(cfg)``; returns the summary.

    A finished run is not trained again: its summary is returned.

    Raises:
        RunError: the directory exists and ``resume`` is False, or the model does not fit in
            memory.
        ConfigError, DatasetError, CheckpointError: a bad config, dataset or checkpoint.
    """
    world = World.from_env()
    device = resolve_device(cfg.optim.device, world)
    setup(world, device)
    try:
        run_dir = RunDir.of(cfg)
        _prepare_dir(run_dir, cfg, resume, world)
        if run_dir.finished:
            log.info("%s already finished", run_dir.path)
            return run_dir.read_summary()
        return _train_run(cfg, run_dir, world, device, resume, progress)
    finally:
        teardown(world)


# Loading a trained model
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trained:
    """A model from :func:`load_trained` and what its source records about it.

    Args:
        model: the model, in eval mode.
        dataset: the dataset it was trained on, when the source names it.
        data_root: where that dataset was read from (None: its usual place).
        data_options: the ``channels`` and ``image_size`` it was read at (a folder's images
            are converted to them; 0: as stored).
    """

    model: nn.Module
    dataset: str | None
    data_root: str | None
    data_options: dict = field(default_factory=dict)


def _checkpoint_config(state: dict, path: Path) -> RunConfig:
    try:
        return from_dict(RunConfig, state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this pemn cannot use: "
                              f"{e}") from None


def _rebuild(state: dict, cfg: RunConfig, path: Path) -> nn.Module:
    args = state["model_args"]
    if not (isinstance(args, dict) and isinstance(args.get("name"), str)
            and isinstance(args.get("kwargs"), dict)):
        raise CheckpointError(f"checkpoint {path}: model_args must hold a name and a kwargs "
                              f"dict, got {str(args)[:80]!r}")
    kwargs = args["kwargs"]
    what = f"{_describe_model(args.get('name'), kwargs)} from checkpoint {path}"
    # model_args, not the config's model section, say what was built
    cfg = replace(cfg, model=ModelConfig(name=args.get("name"), kwargs=kwargs))
    with _enough_memory(CheckpointError, what):
        model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {what}: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return model.eval()


def _in_form(model: nn.Module, form: str, device) -> nn.Module:
    """A trained model in one of the artifact forms ("train", "dense", "packed")."""
    if form == "train":
        return model.to(device)
    from pemn.artifact import pack, unpack  # the other forms are the artifact's to build
    return unpack(pack(model), form=form, device=device)


def _from_checkpoint(path: Path, device, form: str) -> Trained:
    state = load_checkpoint(path, keys=MODEL_KEYS)
    cfg = _checkpoint_config(state, path)
    model = _in_form(_rebuild(state, cfg, path), form, device)
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
    """Load a trained model from a run directory, a checkpoint or a ``.pemn`` artifact.

    Args:
        path: a run directory (its checkpoint is read), a checkpoint file, or a file ending in
            ``.pemn``.
        device: where the model goes.
        form: ``"train"`` (PEMN layers with scores), ``"dense"`` or ``"packed"`` (see
            :mod:`pemn.artifact.forms`).

    Returns:
        The model in eval mode with what its source records (:class:`Trained`).

    Raises:
        RunError: nothing at ``path``, or a directory without a checkpoint.
        CheckpointError: an unreadable or incomplete checkpoint, or a model that does not fit
            in memory.
        ArtifactError: a bad artifact or an unknown ``form``.
    """
    path = Path(path)
    if path.is_dir():
        run_dir = RunDir(path)
        if not run_dir.checkpoint.is_file():
            raise RunError(f"{path} is a directory without {RunDir.CHECKPOINT}: not a run "
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
    """Write what :func:`load_trained` loads from ``path`` as a ``.pemn`` file that records
    its dataset (so ``pemn eval`` needs no ``--dataset``).

    Args:
        path: a run directory, checkpoint or artifact.
        out: the file to write; default: the run directory's artifact (for a checkpoint file,
            the directory holding it).
        codec, precision, sign_with: as :func:`pemn.artifact.save`.

    Returns:
        The path written and its size in bytes.

    Raises:
        RunError: the default output is ``path`` itself.
        ArtifactError: a model that cannot be packed (e.g. a pruning baseline).
        CheckpointError, DatasetError: as :func:`load_trained` and the dataset registry.
    """
    from pemn.artifact import save

    path = Path(path)
    out = Path(out) if out else RunDir(path if path.is_dir() else path.parent).artifact
    if out == path:
        raise RunError(f"{path} would be overwritten by its own packed copy; choose another "
                       f"output")
    trained = load_trained(path)
    header = getattr(trained.model, "pemn_header", None)  # an artifact keeps its own record
    dataset = header.dataset if header is not None else trained.dataset and dataset_info(
        trained.dataset, trained.data_root, **trained.data_options)
    return out, save(trained.model, out, codec=codec, dataset=dataset, precision=precision,
                     sign_with=sign_with)
