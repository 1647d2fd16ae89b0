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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .cache import temp_name

if TYPE_CHECKING:
    import torch

# Arrays whose integer ids become int64 tensors (embedding / gather indices).
_INDEX_PREFIXES = ("cat", "seq:", "group")


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
            final = folder / (array_file_name(key) + ".npy")
            tmp = temp_name(final, ".tmp.npy")  # this writer's own: never another's half-written file
            try:
                with open(tmp, "xb") as fh:
                    np.save(fh, np.ascontiguousarray(arr))
                tmp.replace(final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = False) -> "EncodedSplit":
        folder = Path(folder)
        arrays = {}
        for path in sorted(folder.glob("*.npy")):
            if path.name.endswith(".tmp.npy"):
                continue
            arrays[_key_name(path.stem)] = np.load(path, mmap_mode="r" if mmap else None)
        if not arrays:
            raise FileNotFoundError(f"no encoded arrays in {folder}")
        return cls(arrays)

    def take(self, rows: np.ndarray | slice) -> "EncodedSplit":
        return EncodedSplit({k: np.asarray(v[rows]) for k, v in self.arrays.items()})


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
            yield to_batch(part)
