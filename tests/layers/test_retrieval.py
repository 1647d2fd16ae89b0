"""Retrieval layers (TabR's): exact chunked k-NN against brute force, ties to the lowest index, faiss
flat == exact, HNSW close to it, the row store's dtypes; the residual block."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers.mlp import ResidualMLPBlock
from ctrlab.layers.retrieval import FaissSearch, RowStore, nearest

MIXED = FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5}, numeric=["price", "age"],
                               sequences={"hist": (4, "item"), "tags": (3, 9)}, dense={"img": 6})


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Encoded rows of MIXED as a split holds them (ids int32, values float32)."""
    rng = np.random.default_rng(seed)
    return {"cat": np.stack([rng.integers(0, f.vocab_size, n) for f in MIXED.categorical], 1).astype(np.int32),
            "num": rng.normal(size=(n, 2)).astype(np.float32),
            "seq:hist": rng.integers(0, 11, (n, 4)).astype(np.int32), "seq:tags": rng.integers(0, 9, (n, 3)).astype(np.int32),
            "dense:img": rng.normal(size=(n, 6)).astype(np.float32), "label": rng.integers(0, 2, (n, 1)).astype(np.float32)}


def test_nearest_is_brute_force_top_k_with_exclusion_over_chunks():
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(500, 6, generator=g), torch.randn(40, 6, generator=g)
    exclude = torch.randint(-1, 500, (40,), generator=g)
    dist = torch.cdist(queries, keys).pow(2)
    dist[torch.arange(40)[exclude >= 0], exclude[exclude >= 0]] = float("inf")
    want = dist.topk(7, largest=False)
    for chunk in (None, 64, 7):  # one chunk, several, chunks smaller than k
        sims, idx = nearest(queries, keys, 7, exclude, chunk_rows=chunk)
        torch.testing.assert_close(idx, want.indices, rtol=0, atol=0)
        torch.testing.assert_close(sims, -want.values, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot retrieve 500 neighbours"):
        nearest(queries, keys, 500, exclude)


def test_ties_at_the_cut_go_to_the_lowest_indices():
    """Duplicate rows have equal keys: of equal similarities at the k-th place, the lowest key indices
    are taken (one rule in torch and in an exported graph), in every chunking."""
    g = torch.Generator().manual_seed(3)
    distinct = torch.randn(20, 4, generator=g)
    keys = distinct[torch.randint(0, 20, (300,), generator=g)]  # each key ~15 times
    queries = torch.randn(30, 4, generator=g)
    dist = torch.cdist(queries, keys).pow(2)
    for chunk in (None, 50, 7):
        sims, idx = nearest(queries, keys, 10, chunk_rows=chunk)
        for q in range(30):  # brute force: by distance, then by index
            order = sorted(range(300), key=lambda j: (round(dist[q, j].item(), 4), j))[:10]
            assert idx[q].tolist() == order, (chunk, q)


def test_faiss_hnsw_index_is_a_close_approximation():
    g = torch.Generator().manual_seed(2)
    keys, queries = torch.randn(4000, 16, generator=g), torch.randn(64, 16, generator=g)
    index = FaissSearch(keys, approximate_above=1000)
    assert index.approximate
    found, exact = index.search(queries, 10), nearest(queries, keys, 10)[1]
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, recall


def test_row_store_keeps_ids_narrow_and_reads_them_as_int64():
    store = RowStore(MIXED)
    arrays = _rows(30, seed=2)
    store.fill(arrays)
    assert store.cat.dtype == torch.int32 and store.seq__hist.dtype == torch.int32
    batch = store.take(torch.tensor([3, 0, 3]))
    assert batch["cat"].dtype == torch.int64 and batch["num"].dtype == torch.float32
    np.testing.assert_array_equal(batch["cat"].numpy(), arrays["cat"][[3, 0, 3]])
    np.testing.assert_array_equal(batch["seq:tags"].numpy(), arrays["seq:tags"][[3, 0, 3]])


def test_faiss_flat_index_finds_the_exact_neighbours():
    g = torch.Generator().manual_seed(1)
    keys, queries = torch.randn(3000, 16, generator=g), torch.randn(64, 16, generator=g)
    exclude = torch.randint(-1, 3000, (64,), generator=g)
    index = FaissSearch(keys, approximate_above=10_000)
    assert not index.approximate
    for ex in (None, exclude, torch.full((64,), -1)):
        torch.testing.assert_close(index.search(queries, 12, ex), nearest(queries, keys, 12, ex)[1], rtol=0, atol=0)
    assert index.search(queries, 3000, torch.full((64,), -1)).shape == (64, 3000)  # nothing to leave out


def test_residual_block_is_x_plus_the_two_layer_map():
    block = ResidualMLPBlock(6, 10, "relu", dropout0=0.0, dropout1=0.0, prenorm=True).eval()
    x = torch.randn(5, 6)
    h = torch.relu(block.up(torch.nn.functional.layer_norm(x, (6,), block.norm.weight, block.norm.bias)))
    torch.testing.assert_close(block(x), x + block.down(h))
    plain = ResidualMLPBlock(6, 10, prenorm=False)
    assert plain.norm is None and sum(p.numel() for p in plain.parameters()) == 6 * 10 + 10 + 10 * 6 + 6
