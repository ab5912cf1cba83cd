"""Model registry: variant name -> constructor function (the timm / DiT pattern).

A variant is a function that only sets hyperparameters and forwards ``**kwargs`` to the model
class; ``@register_model`` files it under the function's own name. The registry drives the CLI
``choices`` and the parametrized tests, so a new size is one decorated two-line function.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from typing import Any, Callable, TypeVar

from torch import nn

__all__ = ["DATA_ARGS", "register_model", "create_model", "data_args", "list_models",
           "model_info"]

# What a dataset can tell a model about its inputs; a run passes those a model accepts.
DATA_ARGS = ("in_channels", "img_size", "in_features", "num_classes")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_Fn = TypeVar("_Fn", bound=Callable[..., nn.Module])


def register_model(fn: _Fn) -> _Fn:
    """Register ``fn`` under ``fn.__name__`` and return it unchanged.

    Raises:
        ValueError: if the name is already registered (two families must not shadow each other).
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered by {_MODELS[name].__module__}")
    _MODELS[name] = fn
    return fn


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name in _MODELS:
        return _MODELS[name]
    close = difflib.get_close_matches(name, _MODELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Choose from: {', '.join(list_models())}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered variant ``name``.

    Keyword arguments that are ``None`` are dropped, so a CLI flag left at its ``None`` default
    never overrides the variant's own default; the others override it.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: constructor overrides, e.g. ``num_classes=100`` or ``in_channels=1``.

    Returns:
        A freshly initialised ``nn.Module`` whose ``model_args`` attribute holds ``name`` and
        the keyword arguments, so it can be rebuilt.

    Raises:
        ValueError: for an unknown name; the message lists the valid names.

    Example:
        >>> model = create_model("convmixer_256_d6", num_classes=10, in_channels=None)
    """
    fn = _lookup(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = fn(**kwargs)
    except TypeError as e:  # a wrong keyword is a user mistake, not a crash
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None
    # Recorded so a checkpoint or artifact can rebuild the architecture (nanoGPT's model_args).
    model.model_args = {"name": name, "kwargs": kwargs}
    return model


def data_args(name: str) -> tuple[str, ...]:
    """The :data:`DATA_ARGS` that variant ``name`` accepts, read from its signature, or, for a
    variant taking ``**kwargs``, from the class it is annotated to return.

    A variant whose class cannot be found is assumed to take ``in_channels`` and
    ``num_classes``, as every image classifier of the zoo does.

    Example:
        >>> data_args("vit_tiny")
        ('in_channels', 'img_size', 'num_classes')
    """
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


def model_info(name: str) -> dict[str, str]:
    """Name, family (the defining module, e.g. ``"convmixer"``) and one-line description."""
    fn = _lookup(name)
    doc = (fn.__doc__ or "").strip()
    return {
        "name": name,
        "family": fn.__module__.rsplit(".", 1)[-1],
        "description": doc.splitlines()[0] if doc else "",
    }
