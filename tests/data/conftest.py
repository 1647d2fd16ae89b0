"""Fixtures of the data tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def env(data_dir, tmp_path_factory):
    """``CTRLAB_DATA_DIR`` = the real datasets, ``CTRLAB_CACHE_DIR`` = a fresh folder for the module
    (so a module's prepared and encoded datasets are its own); ``{"data", "cache"}``. Skips where the
    datasets are absent (``data_dir``)."""
    cache = tmp_path_factory.mktemp("ctrlab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTRLAB_DATA_DIR", str(data_dir))
        mp.setenv("CTRLAB_CACHE_DIR", str(cache))
        yield {"data": data_dir, "cache": cache}
