"""Ragged (values + offsets) storage of sequence arrays: batches equal those of padded storage exactly
(both padding sides, shuffled and ordered, in memory and memory-mapped), and ``auto`` picks ragged only
where it saves memory."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from ctrlab.data.loader import BatchLoader, EncodedSplit, RaggedArray, choose_storage
from ctrlab.data.oov import oov_rates
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import load_dataset_config

YAML = """
name: rag
format: {fmt}
files: {{train: train.{fmt}, valid: valid.{fmt}, test: test.{fmt}}}
labels: [label]
sequence_storage: {storage}
features:
  - {{name: item, kind: categorical}}
  - {{name: hist, kind: sequence, max_len: 30, share_vocab_with: item, padding: {padding}}}
  - {{name: tags, kind: sequence, max_len: 3, padding: {padding}}}
  - {{name: gap, kind: sequence, values: numbers, max_len: 30, padding: {padding}}}
"""


def _write(folder, padding):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 400), ("valid", 90), ("test", 90)):
        rows = []
        for _ in range(n):
            k = int(rng.geometric(0.15)) - 1  # mostly short, some past max_len
            rows.append({"label": int(rng.random() < 0.3), "item": f"i{rng.integers(40)}",
                         "hist": "^".join(f"i{j}" for j in rng.integers(0, 50 if split == "train" else 70, k)),  # OOV
                         "tags": "^".join(f"t{j}" for j in rng.integers(0, 4, int(rng.integers(2, 4)))),
                         # zeros are real values of a number sequence
                         "gap": "^".join(str(float(g)) for g in rng.integers(0, 3, k))})
        pl.DataFrame(rows).write_csv(folder / f"{split}.csv")
    for storage in ("padded", "ragged", "auto"):
        (folder / f"{storage}.yaml").write_text(YAML.format(fmt="csv", storage=storage, padding=padding))


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_ragged_batches_equal_padded_batches(tmp_path, padding):
    _write(tmp_path / "d", padding)
    log = lambda *a: None  # noqa: E731
    out = {}
    for storage in ("padded", "ragged", "auto"):
        cfg = load_dataset_config(tmp_path / "d" / f"{storage}.yaml")
        out[storage] = prepare(cfg, cache_dir=tmp_path / "c", log=log)
        out[storage + "_mmap"] = prepare(cfg, cache_dir=tmp_path / "c", log=log, mmap=True)
        out[storage + "_stream"] = prepare(cfg, cache_dir=tmp_path / f"s{storage}", log=log, streaming=True,
                                           block_rows=70)
    pad = out["padded"].splits["train"].arrays
    assert isinstance(pad["seq:hist"], np.ndarray)
    for key in ("ragged", "ragged_mmap", "ragged_stream"):
        arrays = out[key].splits["train"].arrays
        assert isinstance(arrays["seq:hist"], RaggedArray) and isinstance(arrays["numseq:gap"], RaggedArray)
    auto = out["auto_stream"].splits["train"].arrays
    # auto: hist and gap are mostly padding (ragged), tags fill >= half of max_len (padded)
    assert isinstance(auto["seq:hist"], RaggedArray) and isinstance(auto["numseq:gap"], RaggedArray)
    assert isinstance(auto["seq:tags"], np.ndarray)
    assert isinstance(out["auto"].splits["train"].arrays["seq:tags"], np.ndarray)
    assert (np.asarray(pad["numseq:gap"])[np.asarray(pad["seq:hist"]) != 0] == 0).any()  # real zero values
    for split in ("train", "valid", "test"):
        ref = out["padded"].splits[split]
        for key, other in out.items():
            if key == "padded":
                continue
            for shuffle in (False, True):
                a = list(BatchLoader(ref, 64, shuffle=shuffle, seed=5))
                b = list(BatchLoader(other.splits[split], 64, shuffle=shuffle, seed=5))
                assert len(a) == len(b)
                for x, y in zip(a, b):
                    assert x.keys() == y.keys()
                    for k in x:
                        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (key, split, shuffle, k)
            assert other.oov_rates[split] == out["padded"].oov_rates[split]
            taken = other.splits[split].take(np.array([5, 1, 3]))
            for k, v in ref.take(np.array([5, 1, 3])).arrays.items():
                np.testing.assert_array_equal(np.asarray(taken.arrays[k]), v)
    assert out["padded"].oov_rates["valid"]["hist"] > 0


def test_ragged_array_indexing_save_load(tmp_path):
    rng = np.random.default_rng(1)
    lens = rng.integers(0, 7, 50)
    for padding in ("pre", "post"):
        vals = rng.integers(2, 100, int(lens.sum())).astype(np.int32)
        r = RaggedArray(vals, np.r_[0, np.cumsum(lens)], 6, padding)
        full = np.asarray(r)
        assert full.shape == (50, 6) and full.dtype == np.int32
        assert np.array_equal((full != 0).sum(1), lens)
        assert np.array_equal(RaggedArray.from_padded(full, padding)[::1], full)
        for rows in (slice(3, 17), slice(None, None, 3), np.array([9, 2, 2, 40]), np.arange(50) % 2 == 0, -1):
            np.testing.assert_array_equal(r[rows], full[rows])
        assert r.nbytes < full.nbytes
        split = EncodedSplit({"seq:h": r, "label": np.zeros((50, 1), np.float32)})
        split.save(tmp_path / padding)
        for mmap in (False, True):
            back = EncodedSplit.load(tmp_path / padding, mmap=mmap).arrays["seq:h"]
            assert isinstance(back, RaggedArray) and back.padding == padding
            np.testing.assert_array_equal(np.asarray(back), full)
    assert isinstance(choose_storage(full, "auto", "post"), np.ndarray) == bool(lens.mean() >= 3)
    with pytest.raises(ValueError, match="sequence_storage"):
        choose_storage(full, "sparse")


def test_operators_act_on_the_padded_array():
    """A reader comparing or combining a sequence array (``(seq > 0).any()``) gets what the padded
    matrix gives, whichever storage the split chose."""
    from ctrlab.data.loader import RaggedArray

    padded = np.array([[0, 0, 3], [0, 4, 5], [0, 0, 0]], dtype=np.int32)
    ragged = RaggedArray(np.array([3, 4, 5], dtype=np.int32), np.array([0, 1, 3, 3]), 3, "pre")
    for op in (lambda a: a > 0, lambda a: a >= 4, lambda a: a < 4, lambda a: a <= 3, lambda a: a + 1,
               lambda a: 2 * a, lambda a: a - 1, lambda a: 10 - a, lambda a: (a > 0) & (a < 5), lambda a: a == 4):
        np.testing.assert_array_equal(op(ragged), op(padded))
    assert (ragged > 0).any() and ragged.max() == 5 and ragged.shape == (3, 3)
