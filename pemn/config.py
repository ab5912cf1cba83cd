"""Run configuration: dataclass defaults, then a TOML recipe, then dotted ``key=value`` overrides.
``mask.strategy`` is a strategy's dict form (``{ name = "rp", ratio = 1e-3 }``, or a bare name);
:func:`flatten` and :func:`unflatten` are the one walker over config keys."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from pemn.fill import FILLS, RP, Strategy, strategy_from_dict, strategy_to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "RunConfig", "ModelConfig", "MaskConfig", "DataConfig", "OptimConfig",
           "load_config", "read_file", "apply_overrides", "to_dict", "from_dict", "flatten",
           "unflatten", "validate", "format_value"]


class ConfigError(ValueError):
    """A bad config file, key or value (the message says which and what is allowed)."""


@dataclass
class ModelConfig:
    name: str = "convmixer_128_d4"
    # passed to create_model, e.g. {"act": "relu"}; {"bn_affine": false}: BN without affine
    kwargs: dict = field(default_factory=dict)


@dataclass
class MaskConfig:
    # { name = "rp", ratio = 1e-3 }; names: dense mask one_layer mp rp sparse quantized binary
    # (pemn.fill.STRATEGIES) and the presets random_prune magnitude_prune (pemn.fill.PRESETS)
    strategy: Strategy = field(default_factory=RP)
    keep_ratio: float = 0.5  # fraction of weights a weight fill's masks keep (not for Sparse etc.)
    seed: int = 0  # random weights, scores and baseline masks


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # or "folder" / "npz": your own images at root
    root: str = ""  # "" = the dataset's default location
    channels: int = 0  # folder: convert to 1 (grey) or 3 (RGB); 0 = the dataset's (folder: 3)
    image_size: int = 0  # folder: resize to this side; 0 = the dataset's (folder: 32)
    val_fraction: float = 0.0  # held out from train; > 0 reports val accuracy (honest model pick)
    crop_padding: int = 2  # random crop with zero padding, pixels
    flip: bool = True  # random horizontal flip
    erase_prob: float = 0.0  # random erasing probability
    randaugment: list = field(default_factory=list)  # [num_ops, magnitude]; needs torchvision
    color_jitter: float = 0.0  # needs torchvision
    limit_train: int = 0  # use only the first N training images (0 = all); for smoke runs


@dataclass
class OptimConfig:
    epochs: int = 4
    batch_size: int = 128  # global batch (split across DDP ranks)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 0.05  # peak learning rate
    score_lr_scale: float = 1.0  # the mask scores' lr is lr * this (a byte-neutral lever)
    schedule: str = "triangular"  # triangular (ConvMixer: 0 -> lr@40% -> lr/20@80% -> 0) | cosine
    warmup_epochs: float = 0.0  # cosine only: linear warm-up
    weight_decay: float = 0.005
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only; edge-popup's CIFAR recipe uses false
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max grad norm, 0 = off
    seed: int = 0  # data order, augmentation and dropout
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16) | off | bf16 | fp16
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 1000


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs"
    name: str = ""  # "" = derived from the config

    def run_name(self) -> str:
        if self.name:
            return self.name
        m = self.mask
        keep = m.strategy.keep_ratio(m.keep_ratio)
        return (f"{self.data.dataset}-{self.model.name}-{m.strategy.tag()}-k{keep:g}"
                f"-e{self.optim.epochs}-s{m.seed}")


def to_dict(cfg) -> dict:
    """A config dataclass as plain JSON values (strategies in their dict form)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Strategy):
            value = strategy_to_dict(value)
        elif dataclasses.is_dataclass(value):
            value = to_dict(value)
        out[f.name] = copy.deepcopy(value)
    return out


def format_value(value: Any, digits: int = 6, sep: str = "") -> str:
    """A value for people and names: ``0.038125``, not ``0.038125000000000006``; ``sep=","``
    groups an int's thousands (``80,128``); a strategy is its label."""
    if isinstance(value, Strategy):
        return value.label()
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    grouped = sep and isinstance(value, int) and not isinstance(value, bool)
    return f"{value:,}".replace(",", sep) if grouped else str(value)


def _strategy(value: Any, key: str, default: Strategy) -> Strategy:
    if isinstance(value, str):  # a bare name: that strategy's defaults
        value = {"name": value}
    elif isinstance(value, dict) and "name" not in value:  # arguments of the default strategy
        value = {**strategy_to_dict(default), **value}
    try:
        return strategy_from_dict(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys: "
                              f"{', '.join(prefix + n for n in names)}")
        typ = hints[key]
        if typ is Strategy:
            kwargs[key] = _strategy(value, full, cls.__dataclass_fields__[key].default_factory())
        elif dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, full + ".")
        else:
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
                raise ConfigError(f"{full} must be {typ.__name__}, got {value!r}")
            kwargs[key] = value
    return cls(**kwargs)


def _is_table(cls, key: str) -> bool:
    """Whether dotted ``key`` is a section or a dict field (merged), not a value (replaced)."""
    for part in key.split("."):
        if cls is dict:
            return False  # an entry of a dict field: a value
        hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False  # unknown keys are values; from_dict names them
        cls = hints[part]
    return cls is dict or dataclasses.is_dataclass(cls)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict -> ``{dotted key: value}``; a strategy table stays whole."""
    out = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and _is_table(RunConfig, full):
            out.update(flatten(value, full + "."))
        else:
            out[full] = copy.deepcopy(value)
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """``{dotted key: value}`` -> a nested dict, shorter keys first (``mask.strategy.ratio``
    changes one argument of a ``mask.strategy`` table in any order); ConfigError for a key
    inside something that is not a table."""
    data: dict = {}
    for key, value in sorted(flat.items(), key=lambda kv: kv[0].count(".")):
        *parents, leaf = key.split(".")
        node = data
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r}: {'.'.join(parents[:i + 1])!r} is a "
                                  f"value ({node!r}), not a table")
        node[leaf] = copy.deepcopy(value)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A nested dict with dotted keys set (``["optim.lr=0.1", "mask.strategy.ratio=1e-2"]``)."""
    flat = flatten(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key = key.strip()
        flat = {k: v for k, v in flat.items() if not k.startswith(key + ".")}
        try:  # a TOML value (0.05, true, "x", [2, 12], {a = 1}) or a bare string
            flat[key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            flat[key] = text.strip()
    return unflatten(flat)


def read_file(path: str | Path) -> dict:
    """A TOML (or ``.json``) file as a dict; a missing or unreadable file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the TOML (or JSON) file at ``path``, then ``overrides``."""
    data = read_file(path) if path else {}
    cfg = from_dict(RunConfig, apply_overrides(data, list(overrides)))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks with messages that say what is allowed."""
    choices = {"optim.optimizer": (cfg.optim.optimizer, ("adamw", "sgd")),
               "optim.schedule": (cfg.optim.schedule, ("triangular", "cosine")),
               "optim.amp": (cfg.optim.amp, ("auto", "off", "bf16", "fp16"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not one of {list(allowed)}")
    m = cfg.mask
    if type(m.strategy) not in FILLS.values() and m.keep_ratio != MaskConfig.keep_ratio:
        raise ConfigError(f"{m.strategy.label()} keeps what its own arguments say; leave "
                          f"mask.keep_ratio out (got {m.keep_ratio})")
    if not 0 < m.keep_ratio <= 1:
        raise ConfigError(f"mask.keep_ratio is the kept fraction, in (0, 1]; got {m.keep_ratio}")
    if cfg.optim.epochs < 1 or cfg.optim.batch_size < 1:
        raise ConfigError("optim.epochs and optim.batch_size must be >= 1")
    if not (cfg.optim.score_lr_scale > 0 and math.isfinite(cfg.optim.score_lr_scale)):
        raise ConfigError(f"optim.score_lr_scale must be > 0, got {cfg.optim.score_lr_scale}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
