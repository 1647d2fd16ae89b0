"""Data pipeline: schema -> readers -> encoders (feature map) -> encoded cache -> loader."""
from .feature_map import FeatureMap
from .schema import DatasetConfig, load_dataset_config

__all__ = ["FeatureMap", "DatasetConfig", "load_dataset_config"]
