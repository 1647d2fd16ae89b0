"""ctrlab: click-through-rate prediction — model zoo, data pipeline and BARS-style benchmark."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import ctrlab` stays cheap; ctrlab.train etc. load the API on use
    if name in ("train", "evaluate", "predict", "load_run", "RunConfig"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctrlab' has no attribute {name!r}")
