"""Dataset registry: named datasets -> a ready :class:`~ctrlab.data.schema.DatasetConfig`.

``get_dataset(name, data_dir=None, download=False, **params)`` finds (or downloads) the raw files,
verifies their published checksums, builds any derived files once into
``$CTRLAB_CACHE_DIR/prepared/<name>-<hash>/`` and returns a config with absolute file paths.
Raw data: ``data_dir`` > ``$CTRLAB_DATA_DIR`` > ``~/.ctrlab/data``. See :mod:`.registry`.

Registered: the BARS splits ``frappe_x1``, ``movielenslatest_x1``, ``criteo_x1``, ``avazu_x1``;
``frappe_x1_subset``, ``criteo_head10k``, ``avazu_head10k``, ``movielens_100k``,
``movielens_latest_small``, ``movielens_1m_sample``, ``taobao_head`` (small real data),
``movielens_latest_long``, ``taobao_long``, ``video_games_long`` (long per-event histories) and
``synthetic`` (generated). Each entry's docstring gives its source, split rule, row counts,
checksums and data terms. The real data may not be redistributed: never commit or ship it.
"""
from .fetch import ChecksumError, DownloadError, download, extract, verify_file
from .registry import (
    DatasetContext,
    DatasetNotFoundError,
    SourceFile,
    dataset_entry,
    get_dataset,
    list_datasets,
    register_dataset,
)

# Importing the entry modules registers their datasets.
from . import bars, frappe, kaggle_heads, long_sequences, movielens, movielens_samples, multitask_samples, selection_bias, synthetic, taobao  # noqa: E402,F401  isort: skip

__all__ = [
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "dataset_entry",
    "DatasetContext",
    "SourceFile",
    "DatasetNotFoundError",
    "ChecksumError",
    "DownloadError",
    "download",
    "extract",
    "verify_file",
]
