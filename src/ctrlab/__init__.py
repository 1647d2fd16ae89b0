"""ctrlab: click-through-rate prediction — model zoo, data pipeline and BARS-style benchmark."""
import types

__version__ = "0.1.0"

_API = ("train", "evaluate", "predict", "load_run", "RunConfig")
"""The API's names on the package (``ctrlab.train(...)``); :mod:`ctrlab.api` binds them when it loads."""


class _CallableTrainPackage(types.ModuleType):
    """``ctrlab.train`` names both the subpackage (``ctrlab.train.trainer``, ...) and the API's
    ``train`` function: importing the subpackage binds the module to that name, so the module itself
    is made callable as the function (``import ctrlab.train.trainer as t`` keeps working)."""

    def __call__(self, *args, **kwargs):
        from .api import train

        return train(*args, **kwargs)


def __getattr__(name):  # lazy: `import ctrlab` stays cheap; ctrlab.train etc. load the API on use
    if name in _API:
        from . import api  # noqa: F401 - binds the names (see the end of api.py)

        return globals()[name]
    raise AttributeError(f"module 'ctrlab' has no attribute {name!r}")
