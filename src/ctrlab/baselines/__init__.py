"""Non-torch baselines (GBDTs, TabDPT) trained and evaluated on the same encoded splits as the torch models.

    ctrlab train --dataset frappe_x1_subset --model LightGBM
    ctrlab bench plan.yaml        # models: [LightGBM, XGBoost, DNN]

An estimator is a :class:`~ctrlab.baselines.base.TabularEstimator` registered by name with
:func:`register_estimator`; ``ctrlab train`` / :func:`ctrlab.train` runs one whenever the run's ``model``
names it (:func:`is_estimator`), with the same run folder, metrics.json schema, results store and
report as a torch model (docs/baselines.md).
"""
from __future__ import annotations

from typing import Any, Callable

from .base import TabularEstimator
from .tabular import TabularSplit, tabular_split

_REGISTRY: dict[str, type[TabularEstimator]] = {}


def register_estimator(name: str) -> Callable[[type[TabularEstimator]], type[TabularEstimator]]:
    """Class decorator: make an estimator creatable by ``name`` (looked up case-insensitively)."""

    def deco(cls: type[TabularEstimator]) -> type[TabularEstimator]:
        if not (isinstance(cls, type) and issubclass(cls, TabularEstimator)):
            raise TypeError(f"register_estimator({name!r}): {cls!r} is not a TabularEstimator subclass")
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"estimator name {name!r} is registered twice ({_REGISTRY[key].__qualname__} and "
                             f"{cls.__qualname__})")
        cls.name = name
        _REGISTRY[key] = cls
        return cls

    return deco


def is_estimator(name: str | None) -> bool:
    """Whether ``name`` is a registered estimator (not a torch model)."""
    return isinstance(name, str) and name.lower() in _REGISTRY


def get_estimator(name: str) -> type[TabularEstimator]:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; estimators: {list_estimators()}") from None


def list_estimators() -> list[str]:
    return sorted(cls.name for cls in _REGISTRY.values())


def estimator_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters of estimator ``name`` with their defaults."""
    return get_estimator(name).defaults()


def check_estimator_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a run's ``model_params``) checked against the estimator's ``Params``: unknown names
    and wrong types raise a ConfigError naming ``model_params.<key>``; returns defaults + params."""
    from ..config import from_dict, to_dict
    from .base import NoParams

    cls = get_estimator(name)
    if cls.Params is NoParams:  # an estimator that checks its own hyperparameters
        return dict(params)
    return to_dict(from_dict(cls.Params, dict(params), where=f"model_params ({cls.name})"))


from . import gbdt  # noqa: E402,F401  (registers LightGBM and XGBoost)
from . import tabdpt  # noqa: E402,F401  (registers TabDPT)

__all__ = ["TabularEstimator", "TabularSplit", "check_estimator_params", "estimator_defaults", "get_estimator",
           "is_estimator", "list_estimators", "register_estimator", "tabular_split"]
