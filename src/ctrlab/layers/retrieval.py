"""Retrieval over training rows: a store of encoded rows kept inside a model, exact k-nearest-neighbour
search in chunks, and a faiss index over the same keys (TabR, :mod:`ctrlab.models.tabr`).

Similarity is the negative squared L2 distance ``-||q - k||²`` throughout (TabR's); the nearest keys
are the most similar ones.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.feature_map import FeatureMap

SEARCH_BLOCK = 1 << 24
"""Similarities computed at once by :func:`nearest` (queries × keys of one chunk, 64 MB in float32):
the keys are cut into chunks of ``SEARCH_BLOCK // queries`` rows (at least 1024), so that memory
does not grow with the number of keys."""


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


class RowStore(nn.Module):
    """Encoded rows kept inside a model as buffers, so that its ``state_dict`` (``model.safetensors``)
    carries them and a loaded run needs no training file.

    One buffer per input array that :class:`~ctrlab.layers.embedding.FeatureEmbedding` reads
    (``cat`` int32, ``num`` float32, ``seq__<name>`` int32, ``dense__<name>`` float32, for the batch
    keys ``cat``, ``num``, ``seq:<name>``, ``dense:<name>``), plus ``label`` (N,) float32 (one label
    column) and ``rows`` (N,) int64: each row's index in the split it was taken from, ascending.
    Ids are kept as int32 (half of int64's bytes) and widened when read. Buffers start with 0 rows;
    :meth:`fill` sets them, and loading a ``state_dict`` resizes them to the rows it holds.
    """

    def __init__(self, feature_map: FeatureMap):
        super().__init__()
        fmap = feature_map
        self._keys: dict[str, str] = {}  # batch key -> buffer name
        self._index_keys: set[str] = set()
        if fmap.categorical:
            self._add("cat", len(fmap.categorical), torch.int32)
        if fmap.numeric:
            self._add("num", len(fmap.numeric), torch.float32)
        for s in fmap.sequences:
            self._add(f"seq:{s.name}", int(s.max_len), torch.int32)
        for d in fmap.dense:
            self._add(f"dense:{d.name}", int(d.dim), torch.float32)
        self.register_buffer("label", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("rows", torch.zeros(0, dtype=torch.int64))

    def _add(self, key: str, width: int, dtype: torch.dtype) -> None:
        name = key.replace(":", "__")
        self._keys[key] = name
        if dtype == torch.int32:
            self._index_keys.add(key)
        self.register_buffer(name, torch.zeros(0, width, dtype=dtype))

    @property
    def batch_keys(self) -> list[str]:
        """The batch keys the store holds (besides the label)."""
        return list(self._keys)

    @property
    def num_rows(self) -> int:
        return int(self.label.shape[0])

    def fill(self, arrays: Mapping[str, Any], label_column: int = 0, max_rows: int | None = None,
             seed: int = 0) -> np.ndarray:
        """Keep the rows of ``arrays`` (a split's encoded arrays: numpy, memory maps, ragged sequences or
        tensors, with ``label`` (N, K)), or, when there are more than ``max_rows``, a sample of
        ``max_rows`` of them drawn by ``numpy.random.default_rng([seed, 19])`` (kept in split order).
        Returns the kept rows' indices in the split."""
        if "label" not in arrays:
            raise ValueError("the training rows have no 'label' array: retrieval needs the rows' labels")
        labels = _as_numpy(arrays["label"])
        n = len(labels)
        missing = [k for k in self._keys if k not in arrays]
        if missing:
            raise ValueError(f"the training rows lack the input array(s) {missing} that the feature map declares "
                             f"(they have {sorted(arrays)}); pass the split encoded with the model's feature map")
        if max_rows is not None and n > max_rows:
            pick = np.sort(np.random.default_rng([seed, 19]).choice(n, size=int(max_rows), replace=False))
        else:
            pick = np.arange(n)
        device = self.label.device
        for key, name in self._keys.items():
            value = arrays[key]
            arr = value[torch.from_numpy(pick)] if isinstance(value, torch.Tensor) else value[pick]
            arr = np.ascontiguousarray(_as_numpy(arr))
            width = getattr(self, name).shape[1]
            if arr.ndim != 2 or len(arr) != len(pick) or arr.shape[1] != width:
                raise ValueError(f"training array {key!r} has shape {arr.shape[1:]} per {len(arr)} rows; the feature "
                                 f"map says {width} columns for {len(pick)} rows: encode the split with the model's "
                                 "feature map")
            dtype = np.int32 if key in self._index_keys else np.float32
            setattr(self, name, torch.from_numpy(arr.astype(dtype, copy=False)).to(device))
        labels = np.asarray(labels)
        labels = labels[:, label_column] if labels.ndim == 2 else labels
        self.label = torch.from_numpy(np.ascontiguousarray(labels[pick], dtype=np.float32)).to(device)
        self.rows = torch.from_numpy(pick.astype(np.int64)).to(device)
        return pick

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored rows at positions ``index`` (1-D, int64) as a batch (ids int64, values float32)."""
        index = index.to(self.label.device)
        return {key: getattr(self, name).index_select(0, index).long() if key in self._index_keys
                else getattr(self, name).index_select(0, index)
                for key, name in self._keys.items()}

    def chunks(self, rows: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every stored row as batches of ``rows`` rows, in order."""
        for start in range(0, self.num_rows, rows):
            yield {key: getattr(self, name)[start:start + rows].long() if key in self._index_keys
                   else getattr(self, name)[start:start + rows]
                   for key, name in self._keys.items()}

    def positions(self, split_rows: torch.Tensor) -> torch.Tensor:
        """Each split row index's position in the store, or -1 where that row is not stored."""
        n = self.num_rows
        split_rows = split_rows.to(self.rows.device).long()
        if n == 0:
            return torch.full_like(split_rows, -1)
        pos = torch.searchsorted(self.rows, split_rows).clamp(max=n - 1)
        return torch.where(self.rows[pos] == split_rows, pos, torch.full_like(pos, -1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved store holds any number of rows: take its row count (the widths must still match)
        for name, buf in list(self._buffers.items()):
            incoming = state_dict.get(prefix + name)
            if (isinstance(incoming, torch.Tensor) and buf is not None and incoming.dim() == buf.dim()
                    and incoming.shape[1:] == buf.shape[1:] and incoming.shape[0] != buf.shape[0]):
                self._buffers[name] = torch.empty(incoming.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def top_k_lowest_index_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores of each row, ties at the cut going to the lowest positions:
    ``(values, positions)``, positions ascending. Duplicate training rows have equal keys, so equal
    similarities are common on real data, and ``topk`` picks among them in no defined order (torch
    and ONNX Runtime differ): this choice is the same in every runtime, so an exported graph
    retrieves what PyTorch does. Eagerly, when no row's best score left out equals its k-th,
    ``topk``'s answer is kept (the same set); the ranking of ties (a cumulative count over the row)
    runs otherwise, and always in a traced graph."""
    c = scores.shape[1]
    v, positions = scores.topk(min(k + 1, c), dim=1)
    cut = v[:, k - 1:k]
    # no tie straddles the cut when the best score left out is below it
    if not torch.jit.is_tracing() and (k == c or not bool((v[:, k] == v[:, k - 1]).any())):
        positions = positions[:, :k].sort(dim=1).values
        return scores.gather(1, positions), positions
    tied = scores == cut
    room = k - (scores > cut).sum(dim=1, keepdim=True)  # how many of the tied scores are kept
    keep = (scores > cut) | (tied & (tied.long().cumsum(dim=1) <= room))
    positions = keep.nonzero()[:, 1].reshape(-1, k)  # row-major: each row's k positions, ascending
    return scores.gather(1, positions), positions


def best_first(values: torch.Tensor) -> torch.Tensor:
    """The permutation (B, k) that orders each row's values from largest to smallest, equal values
    in their order in the row (a rank by pairwise comparison: exact and the same in every runtime,
    unlike an unstable sort; for the k ≤ a few hundred neighbours of a row)."""
    k = values.shape[1]
    pos = torch.arange(k, device=values.device)
    other, this = values.unsqueeze(1), values.unsqueeze(2)  # [b, i, j]: element j against element i
    ahead = (other > this) | ((other == this) & (pos.view(1, 1, k) < pos.view(1, k, 1)))
    rank = ahead.sum(dim=2)  # (B, k): elements ahead of each one, 0..k-1 without repeats
    return torch.zeros_like(rank).scatter(1, rank, pos.expand_as(rank))


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
            chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search: for each query (B, d), the ``k`` keys (N, d) of largest similarity
    ``-||q - key||²``, best first: ``(similarities (B, k), indices (B, k))``; among equal
    similarities the lower key index is taken first (:func:`top_k_lowest_index_ties`).

    ``exclude``: (B,) int64, a key position each query must not retrieve (-1: none), e.g. the query's
    own row. Keys are scanned in chunks (``chunk_rows``, default from :data:`SEARCH_BLOCK`), each
    chunk's top ``k`` merged into the running top ``k``. ``k`` must not exceed the keys available."""
    q = queries.float()
    keys = keys.float()
    b, n = q.shape[0], keys.shape[0]
    if not 1 <= k <= n - (0 if exclude is None else int((exclude >= 0).any())):
        raise ValueError(f"cannot retrieve {k} neighbours from {n} keys" + ("" if exclude is None else " minus the excluded one"))
    chunk = int(chunk_rows or max(1024, SEARCH_BLOCK // max(b, 1)))
    best_s = best_i = None
    for start in range(0, n, chunk):
        block = keys[start:start + chunk]
        # 2 q·key - ||key||² ranks as -||q - key||² (the query's own ||q||² is added to the k best only)
        s = torch.addmm(block.pow(2).sum(-1), q, block.T, beta=-1.0, alpha=2.0)
        if exclude is not None:
            local = exclude - start
            hit = ((local >= 0) & (local < block.shape[0])).nonzero().squeeze(-1)
            if hit.numel():
                s[hit, local[hit]] = float("-inf")
        v, i = top_k_lowest_index_ties(s, min(k, block.shape[0]))
        i = i + start
        if best_s is None:
            best_s, best_i = v, i
        else:  # earlier chunks' indices come first, each part ascending: positions order as indices do
            both = torch.cat([best_s, v], 1)
            v, pick = top_k_lowest_index_ties(both, min(k, both.shape[1]))
            best_s, best_i = v, torch.cat([best_i, i], 1).gather(1, pick)
    order = best_first(best_s)  # best first, equal ones by index (the indices are ascending here)
    return best_s.gather(1, order) - q.pow(2).sum(-1, keepdim=True), best_i.gather(1, order)


class FaissSearch:
    """A faiss index over fixed keys (N, d): exact ``IndexFlatL2`` below ``approximate_above`` keys,
    an HNSW graph (``IndexHNSWFlat``, ``hnsw_m`` links per node) from there on. faiss ranks by the same
    squared L2 distance as :func:`nearest`; the flat index finds the same neighbours (up to ties), HNSW
    an approximation that skips most keys (sub-linear search, but a build of seconds per 100k keys).
    Searches run on the CPU (faiss-cpu), with torch's thread count."""

    def __init__(self, keys: torch.Tensor, approximate_above: int = 100_000, hnsw_m: int = 32):
        import faiss

        self._faiss = faiss
        data = np.ascontiguousarray(keys.detach().float().cpu().numpy())
        n, d = data.shape
        self.approximate = n >= approximate_above
        if self.approximate:
            self.index = faiss.IndexHNSWFlat(d, int(hnsw_m))
        else:
            self.index = faiss.IndexFlatL2(d)
        faiss.omp_set_num_threads(torch.get_num_threads())
        self.index.add(data)
        self.num_keys = n

    def search(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (B, k) of each query's ``k`` nearest keys, best first, without the ``exclude`` (B,)
        position of each query (-1: none): ``k + 1`` are searched and the excluded one (or the last)
        is dropped."""
        if exclude is not None and not bool((exclude >= 0).any()):
            exclude = None  # nothing to leave out
        extra = 0 if exclude is None else 1
        want = k + extra
        if want > self.num_keys:
            raise ValueError(f"cannot retrieve {k} neighbours from {self.num_keys} keys")
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        self._faiss.omp_set_num_threads(torch.get_num_threads())
        if self.approximate:
            self.index.hnsw.efSearch = max(64, 2 * want)
        _, found = self.index.search(q, want)
        idx = torch.from_numpy(found).to(queries.device)
        if (idx < 0).any():  # HNSW found fewer than asked (a sparse graph): never a silent -1 row
            raise RuntimeError(f"faiss returned fewer than {want} neighbours; raise hnsw_m or use search='exact'")
        if exclude is None:
            return idx
        keep = idx != exclude.to(idx.device).unsqueeze(1)
        keep[keep.all(dim=1), -1] = False  # the row was not among them: drop the farthest
        return idx[keep].view(idx.shape[0], k)
