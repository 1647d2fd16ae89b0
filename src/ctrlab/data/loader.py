"""Batches as slices of contiguous arrays, chosen by a seeded shuffled index.

There is no per-row Python and no collate function: an :class:`EncodedSplit` holds one
contiguous array per input group (``cat`` (N, F) int32, ``num`` (N, F) float32, one array
per sequence / dense vector, ``label`` (N, K) float32), either in memory or memory-mapped
from ``.npy`` files. A batch is a fancy-index (shuffled) or a slice (ordered) of each array,
turned into tensors with ``torch.from_numpy``.

The order of epoch ``e`` depends only on ``(seed, e)``, so the same seed gives the same
batches, and a run resumed at epoch ``e`` sees exactly the batches it would have seen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .cache import temp_name

if TYPE_CHECKING:
    import torch

# Arrays whose integer ids become int64 tensors (embedding / gather indices).
_INDEX_PREFIXES = ("cat", "seq:", "group")


RAGGED_SUFFIX = ".ragged.json"
"""Beside ``<stem>.values.npy`` and ``<stem>.offsets.npy``: a sequence array stored ragged."""


class RaggedArray:
    """A sequence array stored as variable-length rows: ``values`` (flat, every row's real tokens in
    order) and ``offsets`` (N + 1, int64; row ``i`` is ``values[offsets[i]:offsets[i + 1]]``, at most
    ``max_len`` long). Indexing it with a slice or an index array gives the rows **padded** to
    ``(rows, max_len)`` with 0, on the ``padding`` side ("pre": values last), exactly the padded
    array the encoder would have written; so a reader that slices ``split.arrays["seq:..."]`` (the
    loader, OOV counts) works on both. ``np.asarray`` gives the whole padded array."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, max_len: int, padding: str = "pre"):
        if padding not in ("pre", "post"):
            raise ValueError(f"padding must be 'pre' or 'post', got {padding!r}")
        self.values, self.offsets = values, offsets
        self.max_len, self.padding = int(max_len), padding

    @classmethod
    def from_padded(cls, arr: np.ndarray, padding: str = "pre") -> "RaggedArray":
        """From an (N, max_len) padded **id** array (0 = padding; values are the non-zero entries,
        contiguous on the side away from the padding, as the encoders write them). Not for number
        sequences, where 0 can be a value: build those from the encoder's lengths."""
        arr = np.asarray(arr)
        real = arr != 0
        lens = real.sum(axis=1).astype(np.int64)
        return cls(arr[real], np.r_[0, np.cumsum(lens)].astype(np.int64), arr.shape[1], padding)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.max_len)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return len(self) * self.max_len

    @property
    def nbytes(self) -> int:
        """Bytes held (values + offsets), against ``len * max_len * itemsize`` padded."""
        return int(self.values.nbytes + self.offsets.nbytes)

    def _rows(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(flat values, lengths) of the selected rows."""
        offsets = np.asarray(self.offsets)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step == 1:
                lo, hi = int(offsets[start]), int(offsets[max(start, stop)])
                return np.asarray(self.values[lo:hi]), np.diff(offsets[start:max(start, stop) + 1])
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
        lo, lens = offsets[rows], offsets[rows + 1] - offsets[rows]
        flat = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens - lo, lens)
        return np.asarray(self.values[flat]), lens

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows])][0]
        values, lens = self._rows(rows)
        from .encoders import pad_rows

        return pad_rows(values, lens, self.max_len, self.padding, self.values.dtype)

    def take(self, rows) -> "RaggedArray":
        """The selected rows, still ragged (in memory)."""
        values, lens = self._rows(rows)
        return RaggedArray(values, np.r_[0, np.cumsum(lens)].astype(np.int64), self.max_len, self.padding)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)

    # Anything else a reader does with a padded matrix (``==``, ``.sum()``, ``.tolist()``, numpy
    # functions) works on the whole padded array it stands for (materialised for that call).
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(x) if isinstance(x, RaggedArray) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __eq__(self, other):  # noqa: D105
        return np.asarray(self) == (np.asarray(other) if isinstance(other, RaggedArray) else other)

    def __ne__(self, other):  # noqa: D105
        return np.asarray(self) != (np.asarray(other) if isinstance(other, RaggedArray) else other)

    __hash__ = None

    def _binary(ufunc, reflected=False):  # noqa: N805 - a factory used in the class body
        def op(self, other):
            other = np.asarray(other) if isinstance(other, RaggedArray) else other
            return ufunc(other, np.asarray(self)) if reflected else ufunc(np.asarray(self), other)
        return op

    # operators are looked up on the type, not through __getattr__: each one on the padded array
    __lt__, __le__, __gt__, __ge__ = (_binary(np.less), _binary(np.less_equal), _binary(np.greater),
                                      _binary(np.greater_equal))
    __add__, __sub__, __mul__ = _binary(np.add), _binary(np.subtract), _binary(np.multiply)
    __radd__, __rsub__, __rmul__ = _binary(np.add, True), _binary(np.subtract, True), _binary(np.multiply, True)
    __and__, __or__ = _binary(np.bitwise_and), _binary(np.bitwise_or)
    del _binary

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("values", "offsets", "max_len", "padding"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def save(self, folder: Path, stem: str) -> None:
        for part, arr in (("values", self.values), ("offsets", self.offsets)):
            _save_npy(folder / f"{stem}.{part}.npy", arr)
        (folder / f"{stem}{RAGGED_SUFFIX}").write_text(json.dumps({"max_len": self.max_len, "padding": self.padding}))

    @classmethod
    def load(cls, folder: Path, stem: str, mmap: bool = False) -> "RaggedArray":
        meta = json.loads((folder / f"{stem}{RAGGED_SUFFIX}").read_text())
        mode = "r" if mmap else None
        return cls(np.load(folder / f"{stem}.values.npy", mmap_mode=mode),
                   np.load(folder / f"{stem}.offsets.npy", mmap_mode=mode), meta["max_len"], meta["padding"])


RAGGED_WHEN_MEAN_BELOW = 0.5
"""``sequence_storage: auto`` keeps a sequence ragged when its mean row length is below this share of
``max_len`` (the padded matrix would then be more than twice the ragged values + offsets)."""


def choose_storage(arr, storage: str = "auto", padding: str = "pre"):
    """A sequence array as stored: ``padded`` (an (N, max_len) ndarray), ``ragged``
    (:class:`RaggedArray`) or ``auto``: ragged when the mean row length is below
    :data:`RAGGED_WHEN_MEAN_BELOW` of ``max_len``."""
    if storage not in ("auto", "padded", "ragged"):
        raise ValueError(f"sequence_storage must be 'auto', 'padded' or 'ragged', got {storage!r}")
    ragged = arr if isinstance(arr, RaggedArray) else RaggedArray.from_padded(arr, padding)
    if storage == "ragged" or storage == "auto" and len(ragged.values) < RAGGED_WHEN_MEAN_BELOW * ragged.size:
        return ragged
    return arr if not isinstance(arr, RaggedArray) else np.asarray(arr)


def _save_npy(final: Path, arr: np.ndarray) -> None:
    tmp = temp_name(final, ".tmp.npy")  # this writer's own: never another's half-written file
    try:
        with open(tmp, "xb") as fh:
            np.save(fh, np.ascontiguousarray(arr))
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class EncodedSplit:
    """One encoded split: named arrays with the same first dimension."""

    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"encoded arrays have different row counts: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for key, arr in self.arrays.items():
            if isinstance(arr, RaggedArray):
                arr.save(folder, array_file_name(key))
            else:
                _save_npy(folder / (array_file_name(key) + ".npy"), arr)

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = False) -> "EncodedSplit":
        folder = Path(folder)
        arrays = {}
        for path in sorted(folder.glob("*.npy")):
            if path.name.endswith((".tmp.npy", ".values.npy", ".offsets.npy")):
                continue
            arrays[_key_name(path.stem)] = np.load(path, mmap_mode="r" if mmap else None)
        for path in sorted(folder.glob(f"*{RAGGED_SUFFIX}")):  # sequences stored ragged
            stem = path.name[: -len(RAGGED_SUFFIX)]
            arrays[_key_name(stem)] = RaggedArray.load(folder, stem, mmap=mmap)
        if not arrays:
            raise FileNotFoundError(f"no encoded arrays in {folder}")
        return cls(arrays)

    def take(self, rows: np.ndarray | slice) -> "EncodedSplit":
        """The selected rows, in memory (ragged sequences stay ragged)."""
        return EncodedSplit({k: v.take(rows) if isinstance(v, RaggedArray) else np.asarray(v[rows])
                             for k, v in self.arrays.items()})


def array_file_name(key: str) -> str:
    """The .npy file stem of an array key (``seq:history`` -> ``seq__history``)."""
    return key.replace(":", "__")


def _key_name(stem: str) -> str:
    return stem.replace("__", ":", 1)


def to_batch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy arrays -> batch tensors (int ids as int64, everything else float32)."""
    import torch  # here, not at module level: preprocessing (encode + cache) never needs torch (~190 MB)

    batch = {}
    for key, arr in arrays.items():
        is_index = key.startswith(_INDEX_PREFIXES)
        if isinstance(arr, RaggedArray):
            arr = arr[slice(None)]  # padded to (rows, max_len)
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            # An ordered slice of a read-only memory map: torch cannot wrap it safely (writing
            # to the tensor would fault), so copy this batch's rows, converting on the way.
            arr = arr.astype(np.int64 if is_index else np.float32)
        t = torch.from_numpy(arr)
        batch[key] = t.long() if is_index else t.float()
    return batch


class BatchLoader:
    """Iterate over an :class:`EncodedSplit` in batches.

    Args:
        split: the encoded arrays.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: shuffle rows each epoch with a generator seeded by ``(seed, epoch)``.
        seed: base seed of the shuffle.
        drop_last: drop a final incomplete batch.
        shard: ``(rank, world_size)`` to read only this process's share of each epoch's rows
            (rank ``r`` takes rows ``r, r + world_size, ...`` of the epoch's order).
        pad_shards: with ``shard``, repeat the first rows of the epoch's order until the row count
            is a multiple of ``world_size`` (as torch's ``DistributedSampler`` does), so that every
            rank gets ``ceil(N / world_size)`` rows and the same number of batches. Data-parallel
            training needs it: a rank with one batch fewer would leave the others waiting in the
            gradient all-reduce forever. Leave it off for evaluation, where a repeated row would be
            counted twice.
        shuffle_block_rows: bounded shuffle for memory-mapped data larger than memory. The rows are
            cut into blocks of this many consecutive rows; each epoch permutes the blocks, then
            shuffles the rows inside each window of ``shuffle_window_blocks`` consecutive blocks of
            that permutation. Batches then read from a few blocks at a time (page-cache friendly)
            instead of from anywhere in the file. Still seeded by ``(seed, epoch)``. None: a full
            shuffle.
        shuffle_window_blocks: blocks mixed together by the bounded shuffle.
        row_index: add ``batch["row_index"]`` (int64 ``(B,)``): each row's index in ``split``, for
            models that must know which train row they see (TabR leaves a row out of its own
            retrieved context; :attr:`ctrlab.models.CTRModel.needs_row_index`). Off by default, so
            other models' batches are unchanged; the trainer turns it on for models that need it.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int = 4096,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        pad_shards: bool = False,
        shuffle_block_rows: int | None = None,
        shuffle_window_blocks: int = 8,
        row_index: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank, world_size = shard
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.pad_shards = pad_shards
        if shuffle_block_rows is not None and shuffle_block_rows < 1 or shuffle_window_blocks < 1:
            raise ValueError("shuffle_block_rows and shuffle_window_blocks must be >= 1")
        self.shuffle_block_rows = shuffle_block_rows
        self.shuffle_window_blocks = shuffle_window_blocks
        self.row_index = bool(row_index)
        self.epoch = 0

    @property
    def num_rows(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle order the next iteration uses."""
        self.epoch = epoch

    def _rows(self) -> np.ndarray | None:
        n = len(self.split)
        if not self.shuffle and self.world_size == 1:
            return None  # plain slices: zero-copy views
        if not self.shuffle:
            order = np.arange(n)
        elif self.shuffle_block_rows:
            order = self._bounded_order(n)
        else:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        if self.world_size > 1:
            if self.pad_shards and n % self.world_size:
                order = np.resize(order, self._padded_rows())  # repeats the order's first rows
            order = order[self.rank :: self.world_size]
        return order

    def _padded_rows(self) -> int:
        return -(-len(self.split) // self.world_size) * self.world_size

    def _bounded_order(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        size = self.shuffle_block_rows
        blocks = rng.permutation(-(-n // size))
        parts = []
        for w in range(0, len(blocks), self.shuffle_window_blocks):
            rows = np.concatenate([np.arange(b * size, min((b + 1) * size, n))
                                   for b in blocks[w:w + self.shuffle_window_blocks]])
            parts.append(rows[rng.permutation(len(rows))])
        return np.concatenate(parts)

    def __len__(self) -> int:
        n = len(self.split)
        if self.world_size > 1:
            n = len(range(self.rank, self._padded_rows() if self.pad_shards else n, self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = self._rows()
        n = len(self.split) if rows is None else len(rows)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if rows is None:
                part = {k: v[lo:hi] for k, v in self.split.arrays.items()}
            else:
                idx = rows[lo:hi]
                part = {k: v[idx] for k, v in self.split.arrays.items()}
            batch = to_batch(part)
            if self.row_index:
                import torch

                batch["row_index"] = torch.from_numpy(np.arange(lo, hi, dtype=np.int64) if rows is None
                                                      else idx.astype(np.int64))
            yield batch
