"""Model registry: variant name -> a function that only sets hyperparameters (timm's pattern)."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from typing import Any, Callable, TypeVar

from torch import nn

__all__ = ["DATA_ARGS", "register_model", "register_variant", "create_model", "data_args",
           "list_models"]

# What a dataset can tell a model about its inputs; a run passes those a model accepts.
DATA_ARGS = ("in_channels", "img_size", "in_features", "num_classes")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_Fn = TypeVar("_Fn", bound=Callable[..., nn.Module])


def register_model(fn: _Fn) -> _Fn:
    """Register ``fn`` under ``fn.__name__``; a name registered twice raises ValueError."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered by {_MODELS[name].__module__}")
    _MODELS[name] = fn
    return fn


def register_variant(name: str, cls: type[nn.Module], doc: str, **defaults: Any) -> None:
    """Register ``name``: ``cls(**defaults)``, each default overridable by a keyword."""
    def build(**kwargs: Any) -> nn.Module:
        return cls(**{**defaults, **kwargs})
    build.__name__ = build.__qualname__ = name
    build.__module__ = cls.__module__
    build.__doc__ = doc
    build.__annotations__ = {"return": cls}  # what data_args reads
    register_model(build)


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name in _MODELS:
        return _MODELS[name]
    close = difflib.get_close_matches(name, _MODELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Choose from: {', '.join(list_models())}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build variant ``name`` with constructor overrides ``kwargs`` (``None`` ones dropped: an
    unset CLI flag keeps the default), recorded as ``model.model_args`` so a checkpoint or
    artifact can rebuild it; ValueError for an unknown name or bad arguments."""
    fn = _lookup(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = fn(**kwargs)
    except TypeError as e:  # a wrong keyword is a user mistake, not a crash
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None
    model.model_args = {"name": name, "kwargs": kwargs}
    return model


def data_args(name: str) -> tuple[str, ...]:
    """The :data:`DATA_ARGS` that variant ``name`` accepts, from its signature or, for a variant
    taking ``**kwargs``, from the class it is annotated to return (none found: ``in_channels``
    and ``num_classes``, as every image classifier of the zoo)."""
    fn = _lookup(name)
    params = dict(inspect.signature(fn).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        try:
            cls = typing.get_type_hints(fn).get("return")
        except Exception:  # an annotation that does not resolve: no class to read
            cls = None
        if not isinstance(cls, type):
            return ("in_channels", "num_classes")
        params.update(inspect.signature(cls).parameters)
    return tuple(a for a in DATA_ARGS if a in params)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (e.g. ``"convmixer_*"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))

