"""The protocol of a non-torch estimator (a GBDT, TabDPT): fit on tabular splits, predict probabilities,
save to and load from a run folder.

An estimator reads the same encoded splits as the torch models (:func:`ctrlab.baselines.tabular.tabular_split`
turns an :class:`~ctrlab.data.loader.EncodedSplit` into a :class:`~ctrlab.baselines.tabular.TabularSplit`),
so it sees exactly the train-fitted vocabularies and statistics of the run's ``feature_map.json``.

Hyperparameters: a subclass declares them as a dataclass in ``Params`` (every field with a default and
an attribute docstring, as every ctrlab config: ``ctrlab models -v`` lists them, the docs' options tables
are generated from them, and an unknown name or a wrong type is a :class:`~ctrlab.config.ConfigError`
naming ``model_params.<key>``). ``__init__(**params)`` takes the run's ``model_params``.

Early stopping and per-round records: before :meth:`TabularEstimator.fit` the run sets ``monitor``
(``"AUC"``, larger is better, or ``"logloss"``, smaller is better: the validation metric that stops the
boosting) and ``on_round`` (called with every round's record, ``{"epoch": round, "valid_AUC": ...,
"valid_logloss": ..., ...}``: the bench's results store and the tuner's pruner read them as epochs). An
estimator without rounds ignores both.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..config import ConfigError, from_dict, to_dict
from .tabular import TabularSplit

MONITORS = {"AUC": True, "logloss": False}
"""Early-stopping metrics an estimator understands -> whether larger is better."""


@dataclasses.dataclass
class NoParams:
    """An estimator without hyperparameters."""


class TabularEstimator:
    """Base class of non-torch estimators (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    """The registered name (set by :func:`ctrlab.baselines.register_estimator`)."""
    Params: ClassVar[type] = NoParams
    """The hyperparameters: a dataclass whose fields all have defaults and attribute docstrings."""
    model_files: ClassVar[tuple[str, ...]] = ()
    """Files :meth:`save` writes into the run folder (besides ``estimator.json``)."""

    def __init__(self, **params: Any):
        self.params = from_dict(self.Params, params, where=f"model_params ({self.name or type(self).__name__})")
        self.monitor: str = "AUC"
        self.on_round: Callable[[dict[str, Any]], None] | None = None

    # ---- the protocol ---------------------------------------------------------------------------
    def fit(self, train: TabularSplit, valid: TabularSplit | None, seed: int, threads: int,
            log: Callable[[str], None]) -> dict[str, Any]:
        """Train on ``train``, early-stopping on ``valid`` when given. Returns ``{"rounds": rounds
        trained, "best_round": the round kept (1-based), "history": [per-round records]}``."""
        raise NotImplementedError

    def predict_proba(self, split: TabularSplit) -> np.ndarray:
        """(n,) click probabilities of the rows of ``split``."""
        raise NotImplementedError

    def save(self, run_dir: Path) -> None:
        """Write the fitted model into ``run_dir`` (library text/JSON formats, never pickle)."""
        raise NotImplementedError

    @classmethod
    def load(cls, run_dir: Path, params: dict[str, Any]) -> "TabularEstimator":
        """The estimator :meth:`save` wrote into ``run_dir``; ``params``: the run's ``model_params``."""
        raise NotImplementedError

    def count_parameters(self) -> int:
        """The model's size in the estimator's own unit (a GBDT: its number of tree nodes)."""
        raise NotImplementedError

    # ---- helpers ------------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every hyperparameter with its default (a fresh copy)."""
        return to_dict(cls.Params())

    def param_dict(self) -> dict[str, Any]:
        """The resolved hyperparameters (defaults and ``model_params``) as plain values."""
        return to_dict(self.params)

    def check_monitor(self) -> None:
        if self.monitor not in MONITORS:
            raise ConfigError(f"{self.name}: early-stopping monitor must be one of {sorted(MONITORS)}, "
                              f"got {self.monitor!r}")
