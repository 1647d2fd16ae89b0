"""Make ``ctrlab`` (src layout) and the shared test kit importable without an installed package."""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SRC = _HERE.parents[1] / "src"

try:
    import ctrlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_SRC))
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
