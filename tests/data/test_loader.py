"""BatchLoader: seeded, epoch-dependent shuffles; every row once per epoch; batches are slices
of the encoded arrays; memory-mapped == in-memory; (rank, world) shards partition the rows."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ctrlab.data.loader import BatchLoader, EncodedSplit

N = 1003


def make_split(n: int = N) -> EncodedSplit:
    """Arrays whose first ``cat`` column is the row number, so every batch row can be traced."""
    rng = np.random.default_rng(7)
    rows = np.arange(n)
    return EncodedSplit(
        {
            "cat": np.stack([rows, rng.integers(2, 50, n)], axis=1).astype(np.int32),
            "num": rng.normal(size=(n, 3)).astype(np.float32),
            "seq:hist": rng.integers(0, 9, size=(n, 5)).astype(np.int32),
            "dense:img": rng.normal(size=(n, 4)).astype(np.float32),
            "label": rng.integers(0, 2, size=(n, 2)).astype(np.float32),
            "group": (rows // 10).astype(np.int64),
        }
    )


def row_ids(loader) -> list[np.ndarray]:
    return [b["cat"][:, 0].numpy() for b in loader]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


def test_batches_are_slices_with_contract_dtypes():
    split = make_split()
    loader = BatchLoader(split, batch_size=100)
    assert len(loader) == 11 and loader.num_rows == N
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [100] * 10 + [3]
    for i, b in enumerate(batches):
        lo, hi = i * 100, min((i + 1) * 100, N)
        assert {k: v.dtype for k, v in b.items()} == {
            "cat": torch.int64, "num": torch.float32, "seq:hist": torch.int64,
            "dense:img": torch.float32, "label": torch.float32, "group": torch.int64,
        }
        for k, arr in split.arrays.items():
            np.testing.assert_array_equal(b[k].numpy(), arr[lo:hi], err_msg=k)


def test_shuffled_batches_are_row_gathers():
    split = make_split()
    for b in BatchLoader(split, batch_size=64, shuffle=True, seed=3):
        rows = b["cat"][:, 0].numpy()
        for k, arr in split.arrays.items():
            np.testing.assert_array_equal(b[k].numpy(), arr[rows], err_msg=k)


def test_same_seed_same_batches_and_resume():
    split = make_split()
    a = BatchLoader(split, batch_size=128, shuffle=True, seed=11)
    b = BatchLoader(split, batch_size=128, shuffle=True, seed=11)
    assert_batches_equal(list(a), list(b))
    assert_batches_equal(list(a), list(a))  # re-iterating the same epoch repeats it
    a.set_epoch(4)
    epoch4 = list(a)
    resumed = BatchLoader(split, batch_size=128, shuffle=True, seed=11)
    resumed.set_epoch(4)  # a run resumed at epoch 4 sees exactly epoch 4's batches
    assert_batches_equal(epoch4, list(resumed))


def test_different_epoch_or_seed_changes_order():
    split = make_split()
    loader = BatchLoader(split, batch_size=N, shuffle=True, seed=0)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        orders.append(np.concatenate(row_ids(loader)))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    other_seed = np.concatenate(row_ids(BatchLoader(split, batch_size=N, shuffle=True, seed=1)))
    assert not np.array_equal(orders[0], other_seed)
    assert not np.array_equal(orders[0], np.arange(N))  # it is actually shuffled


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 100, N, 5000])
def test_every_row_exactly_once_per_epoch(shuffle, batch_size):
    loader = BatchLoader(make_split(), batch_size=batch_size, shuffle=shuffle, seed=5)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        ids = np.concatenate(row_ids(loader))
        assert len(ids) == N and np.array_equal(np.sort(ids), np.arange(N))


def test_drop_last():
    loader = BatchLoader(make_split(), batch_size=100, shuffle=True, drop_last=True)
    ids = row_ids(loader)
    assert len(loader) == 10 and [len(x) for x in ids] == [100] * 10
    flat = np.concatenate(ids)
    assert len(np.unique(flat)) == 1000


@pytest.mark.parametrize("shuffle", [False, True])
def test_mmap_gives_identical_batches(tmp_path, shuffle):
    split = make_split()
    split.save(tmp_path / "train")
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [
        "cat.npy", "dense__img.npy", "group.npy", "label.npy", "num.npy", "seq__hist.npy"
    ]
    in_mem = EncodedSplit.load(tmp_path / "train")
    mapped = EncodedSplit.load(tmp_path / "train", mmap=True)
    assert isinstance(mapped.arrays["num"], np.memmap) and not isinstance(in_mem.arrays["num"], np.memmap)
    assert sorted(mapped.arrays) == sorted(split.arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        a = list(BatchLoader(in_mem, batch_size=300, shuffle=shuffle, seed=2))
        b = list(BatchLoader(mapped, batch_size=300, shuffle=shuffle, seed=2))
    assert_batches_equal(a, b)
    assert_batches_equal(a, list(BatchLoader(split, batch_size=300, shuffle=shuffle, seed=2)))
    # batch tensors from a read-only memory map are safe to modify in place
    before = np.array(mapped.arrays["num"][:300])
    b[0]["num"].add_(1.0)
    b[0]["dense:img"].mul_(2.0)
    np.testing.assert_array_equal(np.asarray(mapped.arrays["num"][:300]), before)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_partition_the_rows(shuffle):
    split = make_split()
    world = 3
    parts = []
    for rank in range(world):
        loader = BatchLoader(split, batch_size=50, shuffle=shuffle, seed=9, shard=(rank, world))
        loader.set_epoch(2)
        ids = row_ids(loader)
        assert len(loader) == len(ids)
        parts.append(np.concatenate(ids))
    assert [len(p) for p in parts] == [335, 334, 334]
    flat = np.concatenate(parts)
    assert len(flat) == N and np.array_equal(np.sort(flat), np.arange(N))  # disjoint and complete
    if shuffle:  # the shards follow the same (seed, epoch) order as the unsharded loader
        full = BatchLoader(split, batch_size=N, shuffle=True, seed=9)
        full.set_epoch(2)
        order = np.concatenate(row_ids(full))
        for rank in range(world):
            np.testing.assert_array_equal(parts[rank], order[rank::world])


@pytest.mark.parametrize("shuffle_block_rows", [None, 100])
def test_padded_shards_give_every_rank_the_same_number_of_batches(shuffle_block_rows):
    """issue 14.4: the training shards repeat the epoch's first rows (DistributedSampler's padding), so
    that no rank runs a step fewer than another (data-parallel training would hang in the all-reduce)."""
    world = 3
    parts = []
    for rank in range(world):
        loader = BatchLoader(make_split(), batch_size=67, shuffle=True, seed=9, shard=(rank, world), pad_shards=True,
                             shuffle_block_rows=shuffle_block_rows)
        loader.set_epoch(2)
        ids = row_ids(loader)
        assert len(loader) == len(ids) == 5  # 335 rows each: 5 batches of 67
        parts.append(np.concatenate(ids))
    assert [len(p) for p in parts] == [335, 335, 335]
    full = BatchLoader(make_split(), batch_size=N, shuffle=True, seed=9, shuffle_block_rows=shuffle_block_rows)
    full.set_epoch(2)
    order = np.concatenate(row_ids(full))
    padded = np.concatenate([order, order[:2]])  # 1003 -> 1005 rows: the first 2 rows of the order again
    for rank in range(world):
        np.testing.assert_array_equal(parts[rank], padded[rank::world])
    unpadded = [len(BatchLoader(make_split(), 67, shard=(r, world), pad_shards=True)) for r in range(world)]
    assert unpadded == [5, 5, 5]


@pytest.mark.parametrize("shard", [(3, 3), (-1, 2), (0, 0)])
def test_bad_shard_rejected(shard):
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        BatchLoader(make_split(), shard=shard)


def test_split_checks():
    with pytest.raises(ValueError, match="different row counts"):
        EncodedSplit({"cat": np.zeros((3, 1)), "label": np.zeros((4, 1))})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchLoader(make_split(), batch_size=0)
    taken = make_split().take(np.array([5, 1]))
    assert taken.arrays["cat"][:, 0].tolist() == [5, 1] and len(taken) == 2


def test_bounded_shuffle_is_a_seeded_permutation_that_reads_few_blocks_at_a_time():
    """shuffle_block_rows: each epoch is a permutation, the same for the same (seed, epoch), different
    across epochs, and every window of the order draws from at most shuffle_window_blocks blocks."""
    n, size, window = 10_007, 100, 4
    split = EncodedSplit({"x": np.arange(n)[:, None], "label": np.zeros((n, 1), np.float32)})

    def order(epoch, seed=3, shard=(0, 1)):
        loader = BatchLoader(split, 128, shuffle=True, seed=seed, shuffle_block_rows=size,
                             shuffle_window_blocks=window, shard=shard)
        loader.set_epoch(epoch)
        return np.concatenate([b["x"].numpy().ravel() for b in loader])

    first = order(0)
    assert sorted(first.tolist()) == list(range(n))
    assert np.array_equal(first, order(0)) and not np.array_equal(first, order(1))
    assert not np.array_equal(first, order(0, seed=4))
    # windows are whole blocks; before the short last block they are aligned to size * window rows
    short = int(np.argmax(first == n - 1)) // (size * window) * (size * window)
    span = size * window
    assert short >= 3 * span  # (with this seed) the check below covers several windows
    for start in range(0, short, span):
        assert len(np.unique(first[start:start + span] // size)) == window
    assert not np.array_equal(first, np.arange(n))  # rows are mixed inside the windows
    # data-parallel ranks split the same bounded order
    parts = [order(0, shard=(r, 2)) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))


def test_save_never_touches_another_writers_temporary_file(tmp_path):
    """Issue 14.7: the temporary name of each array is unique to this writer (it was <name>.tmp.npy,
    which a second writer of the same folder overwrote and renamed away)."""
    theirs = tmp_path / "cat.tmp.npy"
    theirs.write_bytes(b"another writer's half-written array")
    split = make_split(20)
    split.save(tmp_path)
    assert theirs.read_bytes() == b"another writer's half-written array"
    back = EncodedSplit.load(tmp_path)
    assert sorted(back.arrays) == sorted(split.arrays)
    for k, v in split.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp.npy")) == ["cat.tmp.npy"]


@pytest.mark.parametrize("shuffle, shard", [(False, (0, 1)), (True, (0, 1)), (True, (1, 3))])
def test_row_index_names_each_batch_rows_position_in_the_split(shuffle, shard):
    """``row_index=True`` (TabR's self-exclusion) adds each row's index in the split; without it the
    batches have no such key (other models' batches are unchanged)."""
    split = make_split()
    plain = BatchLoader(split, batch_size=64, shuffle=shuffle, seed=3, shard=shard, pad_shards=True)
    loader = BatchLoader(split, batch_size=64, shuffle=shuffle, seed=3, shard=shard, pad_shards=True, row_index=True)
    assert all("row_index" not in b for b in plain)
    seen = []
    for b, p in zip(loader, plain):
        assert b["row_index"].dtype == torch.int64
        # the first cat column is the row number: the index points at the very row in the batch
        np.testing.assert_array_equal(b["row_index"].numpy(), b["cat"][:, 0].numpy())
        assert_batches_equal([{k: v for k, v in b.items() if k != "row_index"}], [p])
        seen.append(b["row_index"].numpy())
    assert len(np.concatenate(seen)) == sum(len(b["label"]) for b in plain)
