"""ctrlab: click-through-rate prediction — model zoo, data pipeline and BARS-style benchmark."""
__version__ = "0.1.0"
