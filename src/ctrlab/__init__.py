"""ctrlab: click-through-rate prediction — model zoo, data pipeline and BARS-style benchmark."""
__version__ = "0.1.0"

_API = ("train", "evaluate", "predict", "load_run", "RunConfig")
"""The API's names on the package (``ctrlab.train(...)``); :mod:`ctrlab.api` binds them when it loads."""


def __getattr__(name):  # lazy: `import ctrlab` stays cheap; ctrlab.train etc. load the API on use
    if name in _API:
        from . import api  # noqa: F401 - binds the names (see the end of api.py)

        return globals()[name]
    raise AttributeError(f"module 'ctrlab' has no attribute {name!r}")
