"""Make the shared trainer test kit (``_trainkit``) importable, also from subprocesses."""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
