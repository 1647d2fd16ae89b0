"""Placeholder of the i19-gbdt helper's module: the shared contract's TabularSplit."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TabularSplit:
    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    categorical: list[int]
    group: np.ndarray | None
