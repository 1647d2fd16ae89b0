"""Models registered by name, created with ``ctrlab.models.create(name, feature_map, **hparams)``."""
from __future__ import annotations

import inspect
from typing import Callable

from ..data.feature_map import FeatureMap

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a model creatable by its class name (case-insensitive)."""
    key = cls.__name__.lower()
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"model name {cls.__name__!r} is registered twice")
    _REGISTRY[key] = cls
    return cls


def list_models() -> list[str]:
    return sorted(cls.__name__ for cls in _REGISTRY.values())


def get_model_class(name: str) -> type:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {list_models()}") from None


def default_hparams(name: str) -> dict:
    """The documented defaults of a model's hyperparameters (its __init__ keyword defaults)."""
    sig = inspect.signature(get_model_class(name).__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "feature_map") and p.default is not inspect.Parameter.empty
    }


def create(name: str, feature_map: FeatureMap, **hparams):
    """Instantiate model ``name``; unknown hyperparameters raise a clear error."""
    cls = get_model_class(name)
    allowed = default_hparams(name)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"{cls.__name__} has no hyperparameter(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(feature_map, **hparams)
