"""Non-torch estimators (placeholder of the i19-gbdt helper's module: the registry of the shared
contract, so that the TabDPT adapter can be tested on its own branch)."""
from __future__ import annotations

ESTIMATORS: dict[str, type] = {}


def register_estimator(name: str):
    def deco(cls):
        ESTIMATORS[name] = cls
        return cls

    return deco


from . import tabdpt  # noqa: E402,F401
