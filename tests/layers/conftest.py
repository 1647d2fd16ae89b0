import sys
from pathlib import Path

import pytest
import torch

try:  # the package may not be installed in the test environment; fall back to the src layout
    import ctrlab  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
