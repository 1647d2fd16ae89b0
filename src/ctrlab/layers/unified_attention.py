"""SUAN's Unified Attention Block (Lai et al. 2025): causal self-attention with relative-position
and time-gap biases, cross-attention to user-profile embeddings with a squeeze-excitation fusion,
and a SwiGLU feed-forward; plus the sparse (local window + dilated) attention pattern of LightSUAN.

Token layout used throughout: a sequence of ``T`` tokens, oldest first; in SUAN the behaviours
then the candidate as the last token. Each token carries

* ``rank`` (long): the number of real tokens up to and including it (1 = the oldest real one).
  Distances are rank differences, so padding (anywhere, "pre" or "post") never counts as a step,
  and a token's rank depends only on tokens before it (causal);
* ``time`` (float, optional): seconds before the request (>= 0; the candidate 0);
* ``real`` (bool): False at padding. Padding tokens are never keys of another token; each token
  may always attend to itself, so no softmax row is empty (padding tokens' own states are
  finite garbage that nothing reads).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` that also exports to ONNX opsets without an RMSNorm operator (the
    TorchScript exporter has no ``aten::rms_norm`` before opset 23): while tracing it computes
    ``x · rsqrt(mean(x²) + eps) · weight`` itself, the same formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return out * self.weight if self.weight is not None else out
        return super().forward(x)


class _TableGather(torch.autograd.Function):
    """``table[idx]`` whose backward sums the gradient per table entry with one ``bincount``: the
    default backward of an index (``index_put_`` with accumulation) is serial on CPU, and the
    attention biases index a table of ~100 entries with ``B·T·T`` indices (a third of a SUAN
    training step at L = 200 went there)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.size = table.shape[0]
        return table[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        flat = grad.reshape(-1)
        if flat.dtype not in (torch.float32, torch.float64):  # bincount sums float32 / float64 weights
            flat = flat.float()
        summed = torch.bincount(idx.reshape(-1), weights=flat, minlength=ctx.size)
        return summed.to(grad.dtype), None


def table_lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for a 1-d bias table; the fast-backward gather while autograd records (plain
    indexing otherwise, e.g. under ONNX export or inference)."""
    if torch.is_grad_enabled() and table.requires_grad and not torch.jit.is_tracing() \
            and not torch.onnx.is_in_onnx_export():
        return _TableGather.apply(table, idx)
    return table[idx]


def time_buckets(gap: torch.Tensor, num_buckets: int, max_gap: float) -> torch.Tensor:
    """Log-scaled bucket ids of time gaps in seconds: ``min(B − 1, ⌊log(1 + g) / log(1 + max_gap) · (B − 1)⌋)``
    (negative gaps count as 0). With ``B = 128`` and ``max_gap`` one year, a bucket spans a factor
    of about 1.14: 1 s → bucket 5, 1 min → 30, 1 h → 60, 1 day → 78. Computed without gradient
    (ids are not differentiable; the sheet's stop-gradient)."""
    with torch.no_grad():
        scale = (num_buckets - 1) / math.log1p(max_gap)
        ids = torch.floor(torch.log1p(gap.float().clamp(min=0.0)) * scale).long()
        return ids.clamp(0, num_buckets - 1)


def auto_stride(length: int) -> int:
    """LightSUAN's default dilation for ``length`` tokens: ``⌈√length⌉``, so that a query sees
    ``O(window + √L)`` keys and the attended pairs grow as ``O(L·(window + √L))`` (sub-quadratic)."""
    return max(1, math.ceil(math.sqrt(length)))


def sparse_pattern(distance: torch.Tensor, window: int | None, stride: int | None) -> torch.Tensor:
    """Which (query, key) pairs the attention may use, from ``distance = rank_q − rank_k``:
    causal (``distance >= 0``) and, when ``window`` is set, within the local window
    (``distance <= window``: the query itself and the ``window`` most recent real tokens before
    it) or on the dilated grid (``distance % stride == 0``: every ``stride``-th earlier token,
    counted back from the query). ``window=None``: dense (causal only). With ``window >= T − 1``
    every causal pair is in the window, so the pattern equals the dense one."""
    causal = distance >= 0
    if window is None:
        return causal
    if stride is None or stride < 1:
        raise ValueError(f"sparse attention needs a stride >= 1, got {stride}")
    return causal & ((distance <= window) | (torch.remainder(distance, stride) == 0))


def attention_mask(length: int, window: int | None = None, stride: int | None = None) -> torch.Tensor:
    """``(T, T)`` bool: the pattern of a full sequence of ``length`` real tokens (``[q, k]``)."""
    idx = torch.arange(length)
    return sparse_pattern(idx[:, None] - idx[None, :], window, stride)


def attended_pairs(length: int, window: int | None = None, stride: int | None = None) -> int:
    """Number of (query, key) pairs :func:`attention_mask` allows, in O(T) memory: the pattern
    depends only on the distance ``d``, and ``T − d`` pairs have distance ``d``."""
    d = torch.arange(length)
    return int(((length - d) * sparse_pattern(d, window, stride)).sum())


class UnifiedAttentionBlock(nn.Module):
    """One UAB on tokens ``x (B, T, d)``:

    1. ``x̂ = RMSNorm(x)``; multi-head self-attention (``n_heads``, bias-free Q/K/V/O) with logits
       ``q_i·k_j / √d_h + p[min(r_i − r_j, P)] + τ[bucket(|t_i − t_j|)]`` (``p``: one learned bias
       per rank distance up to ``max_distance = P``; ``τ``: one per log-scaled time-gap bucket
       (:func:`time_buckets`), off without times; both shared by the heads, zero-initialised),
       masked to causal ∧ (key is real or key = query) ∧ :func:`sparse_pattern`;
       ``x = RMSNorm(Attn(x̂) + x̂)``;
    2. with a profile ``u (B, P_u, D_u)``: ``c = CrossAttn(x, u)`` (queries from the tokens,
       keys/values the profile embeddings, bias-free, ``n_heads``); squeeze-excitation fusion
       ``s_i = mean_{j ≤ i, real} (x_j + c_j)`` (the sheet's mean over all tokens, made causal: a
       running mean over the real tokens up to ``i``, so the candidate never changes a
       behaviour's state), ``z = ReLU(W_s s_i + b)`` (``d → max(1, d/4)``),
       ``(w₁, w₂) = softmax_branch(W₁ z + b₁, W₂ z + b₂)`` per coordinate,
       ``x = RMSNorm(w₁ ⊙ x + w₂ ⊙ c + x)``; without a profile this step is skipped;
    3. SwiGLU ``x = x + W₃(SiLU(x W₁) ⊙ x W₂)`` (hidden ``ffn_mult·d``, bias-free), plain residual.

    ``forward(x, rank, real, time=None, profile=None, past=None, cache=True, pairs=None) -> (x,
    present)``; ``pairs``: :meth:`pairs_for` of these arguments, computed once for a stack of blocks
    (computed here when None). ``past`` is the
    ``present`` of an earlier call on the tokens before these (keys, values, ranks, times, real
    flags and the fusion's running sum and count), so a prefix is encoded once and later tokens
    attend to it (SUAN's parallel inference); ``past`` may have batch size 1 and broadcast.
    Dropout (``dropout``) on the attention weights and the sub-layers' outputs.

    Cost: with a ``window`` that leaves pairs out (``window < T − 1``) a full-sequence call
    computes the sparse attention directly (:meth:`_sparse_attention`: local blocks plus the
    dilated residue classes, one softmax), in ``O(B·H·T·(window + T/stride))`` memory and time,
    no ``T × T`` tensor; it equals the dense attention with the pattern as a mask (tested) on the
    real tokens. Calls with a ``past`` (a few candidate queries against a cached prefix), dense
    blocks (``window=None``) and windows covering the sequence use the dense masked computation.
    ``sparse_kernel = False`` (an attribute, not a hyperparameter) forces the dense one, for
    reference. The sparse kernel also exports to ONNX (tracing): the sequence length is then a
    constant of the graph (it is ``max_len + 1`` in SUAN), the batch size stays dynamic.
    """

    def __init__(self, dim: int, n_heads: int = 2, profile_dim: int | None = None, max_distance: int = 100,
                 num_time_buckets: int = 128, time_max_gap: float = 3.2e7, use_time_bias: bool = True,
                 window: int | None = None, stride: int | None = None, ffn_mult: int = 3,
                 dropout: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        dim, n_heads = int(dim), int(n_heads)
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"UnifiedAttentionBlock: the token width {dim} must be divisible by n_heads={n_heads}")
        if window is not None and window < 0:
            raise ValueError(f"attention window must be >= 0 (or None for dense attention), got {window}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.max_distance, self.window, self.stride = int(max_distance), window, stride
        self.num_time_buckets, self.time_max_gap = int(num_time_buckets), float(time_max_gap)
        self.norm_in, self.norm_attn = RMSNorm(dim, eps=norm_eps), RMSNorm(dim, eps=norm_eps)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.position_bias = nn.Parameter(torch.zeros(self.max_distance + 1))
        self.time_bias = nn.Parameter(torch.zeros(self.num_time_buckets)) if use_time_bias else None
        self.profile_dim = profile_dim
        if profile_dim is not None:
            self.cross_q = nn.Linear(dim, dim, bias=False)
            self.cross_k = nn.Linear(int(profile_dim), dim, bias=False)
            self.cross_v = nn.Linear(int(profile_dim), dim, bias=False)
            self.cross_o = nn.Linear(dim, dim, bias=False)
            squeeze = max(1, dim // 4)
            self.squeeze = nn.Linear(dim, squeeze)
            self.excite_x, self.excite_c = nn.Linear(squeeze, dim), nn.Linear(squeeze, dim)
            self.norm_fuse = RMSNorm(dim, eps=norm_eps)
        hidden = int(ffn_mult) * dim
        self.ffn_gate, self.ffn_up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.ffn_down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.sparse_kernel = True

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    @torch.no_grad()  # indices: nothing to differentiate
    def pair_index(self, rank_q, rank_k, time_q, time_k, real_k, offset: int = 0) -> torch.Tensor:
        """``(B, Tq, K)`` int64: each (query, key) pair's entry in :meth:`bias_table`, for queries
        at global indices ``offset + i``: ``min(distance, P)·N_τ + bucket(|t_q − t_k|)`` (``N_τ = 1``
        without the time term), and the table's last entry (``-inf``) where the pair is not allowed
        (not causal, a padding key other than the query itself, or outside the sparse pattern).
        It depends on ranks, times and real flags only, so one index serves every block of a stack
        with the same settings (SUAN computes it once per forward, not once per layer)."""
        tq, tk = rank_q.shape[1], rank_k.shape[1]
        distance = rank_q.unsqueeze(2) - rank_k.unsqueeze(1)
        q_idx = torch.arange(tq, device=rank_q.device) + offset
        k_idx = torch.arange(tk, device=rank_q.device)
        causal = k_idx.unsqueeze(0) <= q_idx.unsqueeze(1)  # (Tq, K): slot order, whatever the ranks
        itself = k_idx.unsqueeze(0) == q_idx.unsqueeze(1)
        pattern = sparse_pattern(distance, self.window, self.stride)
        allowed = causal & (real_k.unsqueeze(1) | itself) & (pattern | itself)
        index = distance.clamp(0, self.max_distance)
        if self._uses_time(time_q):
            index = index * self.num_time_buckets + time_buckets(
                (time_q.unsqueeze(2) - time_k.unsqueeze(1)).abs(), self.num_time_buckets, self.time_max_gap)
        return index.masked_fill(~allowed, self._table_size(time_q))

    def pairs_for(self, rank, real, time=None, past: dict | None = None) -> torch.Tensor | None:
        """The :meth:`pair_index` a call ``forward(x, rank, real, time, past=past)`` uses (None
        where it computes the sparse kernel instead): pass it as ``pairs`` to every block of a stack
        that shares these settings and inputs (the ranks, times and flags of ``past`` are the same
        in every layer's cache)."""
        if self.uses_sparse_kernel(rank.shape[1], past):
            return None
        if past is None:
            return self.pair_index(rank, rank, time, time, real)
        b = rank.shape[0]
        rank_k = torch.cat([past["rank"].expand(b, -1), rank], 1)
        real_k = torch.cat([past["real"].expand(b, -1), real], 1)
        time_k = None if time is None else torch.cat([past["time"].expand(b, -1), time], 1)
        return self.pair_index(rank, rank_k, time, time_k, real_k, past["rank"].shape[1])

    def _uses_time(self, time) -> bool:
        return self.time_bias is not None and time is not None

    def _table_size(self, time) -> int:
        return (self.max_distance + 1) * (self.num_time_buckets if self._uses_time(time) else 1)

    def bias_table(self, with_time: bool) -> torch.Tensor:
        """The logit bias of every index of :meth:`pair_index`: ``p[d] + τ[b]`` at ``d·N_τ + b``
        (``p[d]`` alone without times), then ``-inf`` (pairs not allowed). A ``(P + 1)·N_τ``-entry
        table built per call: one gather of ``B·Tq·K`` entries instead of two plus a mask."""
        table = self.position_bias
        if with_time and self.time_bias is not None:
            table = (self.position_bias.unsqueeze(1) + self.time_bias.unsqueeze(0)).flatten()
        return F.pad(table, (0, 1), value=float("-inf"))

    def _pair_bias(self, distance, time_q, time_k) -> torch.Tensor:
        """``p[min(distance, P)] + τ[bucket(|t_q − t_k|)]`` (no time term without times), for
        whatever (broadcastable) set of pairs the arguments describe: the entries of
        :meth:`bias_table` at the index :meth:`pair_index` gives an allowed pair (one gather; the
        sparse kernel masks its pairs itself)."""
        index = distance.clamp(0, self.max_distance)
        with_time = self._uses_time(time_q)
        if with_time:
            gap = (time_q - time_k).abs()
            index = index * self.num_time_buckets + time_buckets(gap, self.num_time_buckets, self.time_max_gap)
        return table_lookup(self.bias_table(with_time), index)

    def uses_sparse_kernel(self, length: int, past: dict | None = None) -> bool:
        """Whether a call on ``length`` tokens computes the sparse attention directly
        (:meth:`_sparse_attention`) rather than as dense attention with a mask: a full-sequence
        call (no ``past``) with a window that leaves some causal pair out (``window < T − 1``),
        and :attr:`sparse_kernel` on. Both give the same attention (up to float rounding)."""
        return self.sparse_kernel and past is None and self.window is not None and self.window < length - 1

    def _sparse_attention(self, q, k, v, rank, time, real) -> torch.Tensor:
        """The attention output ``(B, H, T, d_h)`` of a full sequence under the sparse pattern,
        in ``O(B·H·T·(2(window + 1) + ⌈T/stride⌉))`` memory and time (no ``T × T`` tensor).

        1. The real tokens move to the front of each row, in order (the permutation a stable
           argsort of ``~real`` gives, computed with cumulative sums): there, the distance between
           two real tokens' slots is their rank distance, so the window and the grid are slot
           patterns. The outputs go back to the original slots at the end. A padding token
           attends to itself only (its state, which nothing reads, depends on nothing else: the
           block stays causal slot by slot, padding included; the dense path lets it see earlier
           real tokens).
        2. Local part: slots in blocks of ``w = window + 1``; block ``n``'s queries against the
           keys of blocks ``n − 1`` and ``n`` (``2w`` logits per query), kept where
           ``0 <= i − j <= window``.
        3. Dilated part: the slots of one residue ``i mod stride`` form a ``⌈T/stride⌉``-long
           subsequence; causal attention inside it at grid distances ``g`` with
           ``g·stride > window`` (the nearer ones are in the window: no pair counted twice).
        4. One softmax per query over both parts' logits (``q·k/√d_h`` + the position and
           time-gap biases of those pairs; padding keys masked, each token its own key), dropout,
           and the weighted values of both parts summed.
        """
        if self.stride is None or self.stride < 1:
            raise ValueError(f"sparse attention needs a stride >= 1, got {self.stride}")
        h, t, dh = (int(n) for n in q.shape[1:])  # constants when traced (the length is fixed in a graph)
        window, stride, scale = int(self.window), int(self.stride), math.sqrt(self.head_dim)
        # 1. real tokens first (dest: where each slot goes; src: which slot each place takes)
        real_l = real.long()
        slots = torch.arange(t, device=q.device).expand_as(rank)
        n_real = real_l.sum(1, keepdim=True)
        dest = torch.where(real, torch.cumsum(real_l, 1) - 1, n_real + torch.cumsum(1 - real_l, 1) - 1)
        src = torch.zeros_like(dest).scatter(1, dest, slots)
        by_head = src.unsqueeze(1).unsqueeze(-1).expand(-1, h, -1, dh)
        q, k, v = q.gather(2, by_head), k.gather(2, by_head), v.gather(2, by_head)
        rank, real = rank.gather(1, src), real.gather(1, src)
        time = None if time is None else time.gather(1, src)
        # 2. local: blocks of w = window + 1 slots, keys from the block before and the block itself
        w = window + 1
        nb = -(-t // w)
        tl = nb * w

        def pad(z, front, back):  # zeros (False) along the token axis (dim 1 of (B, T), dim 2 of (B, H, T, d))
            return F.pad(z, (front, back)) if z.dim() == 2 else F.pad(z, (0, 0, front, back))

        def two_blocks(z):  # (B[, H], T[, d]) -> (B[, H], nb, 2w[, d]): block n's keys, slots (n−1)w .. (n+1)w − 1
            zp = pad(z, w, tl - t)
            if z.dim() == 2:
                return torch.cat([zp[:, :tl].reshape(-1, nb, w), zp[:, w:].reshape(-1, nb, w)], 2)
            return torch.cat([zp[:, :, :tl].reshape(-1, h, nb, w, dh), zp[:, :, w:].reshape(-1, h, nb, w, dh)], 3)

        def one_block(z):  # queries: (B, T) -> (B, nb, w)
            return pad(z, 0, tl - t).reshape(-1, nb, w)

        offset = w + torch.arange(w, device=q.device).unsqueeze(1) - torch.arange(2 * w, device=q.device)  # i − j
        band = (offset >= 0) & (offset <= window)
        real_q = one_block(real).unsqueeze(3)
        keep = band & ((two_blocks(real).unsqueeze(2) & real_q) | (offset == 0))  # (B, nb, w, 2w)
        bias = self._pair_bias(one_block(rank).unsqueeze(3) - two_blocks(rank).unsqueeze(2),
                               None if time is None else one_block(time).unsqueeze(3),
                               None if time is None else two_blocks(time).unsqueeze(2))
        bias = bias.masked_fill(~keep, float("-inf"))
        k_loc, v_loc = two_blocks(k), two_blocks(v)
        logits = pad(q, 0, tl - t).reshape(-1, h, nb, w, dh) @ k_loc.transpose(-1, -2) / scale + bias.unsqueeze(1)
        parts = [logits.reshape(-1, h, tl, 2 * w)[:, :, :t]]
        # 3. dilated: residue classes of the stride, grid distances g >= g0 (g·stride > window)
        m = -(-t // stride)
        td, g0 = m * stride, window // stride + 1
        dilated = g0 < m
        if dilated:
            def classes(z):  # (B[, H], T[, d]) -> (B[, H], stride, m[, d]): slot i = g·stride + r at [r, g]
                if z.dim() == 2:
                    return pad(z, 0, td - t).reshape(-1, m, stride).transpose(1, 2)
                return pad(z, 0, td - t).reshape(-1, h, m, stride, dh).transpose(2, 3)

            grid = torch.arange(m, device=q.device)
            grid = grid.unsqueeze(1) - grid  # g_q − g_k
            real_d = classes(real)
            keep = (grid >= g0) & real_d.unsqueeze(2) & real_d.unsqueeze(3)  # (B, stride, m, m)
            rank_d, time_d = classes(rank), None if time is None else classes(time)
            bias = self._pair_bias(rank_d.unsqueeze(3) - rank_d.unsqueeze(2),
                                   None if time is None else time_d.unsqueeze(3),
                                   None if time is None else time_d.unsqueeze(2))
            bias = bias.masked_fill(~keep, float("-inf"))
            v_dil = classes(v)
            logits = classes(q) @ classes(k).transpose(-1, -2) / scale + bias.unsqueeze(1)  # (B, H, stride, m, m)
            parts.append(logits.permute(0, 1, 3, 2, 4).reshape(-1, h, td, m)[:, :, :t])
        # 4. one softmax over both parts
        weights = self.dropout(torch.softmax(torch.cat(parts, -1) if dilated else parts[0], dim=-1))
        att = pad(weights[..., :2 * w], 0, tl - t).reshape(-1, h, nb, w, 2 * w) @ v_loc
        att = att.reshape(-1, h, tl, dh)[:, :, :t]
        if dilated:
            wd = pad(weights[..., 2 * w:], 0, td - t).reshape(-1, h, m, stride, m).transpose(2, 3)
            att = att + (wd @ v_dil).transpose(2, 3).reshape(-1, h, td, dh)[:, :, :t]
        return att.gather(2, dest.unsqueeze(1).unsqueeze(-1).expand(-1, h, -1, dh))  # back to the original slots

    def forward(self, x: torch.Tensor, rank: torch.Tensor, real: torch.Tensor, time: torch.Tensor | None = None,
                profile: torch.Tensor | None = None, past: dict | None = None, cache: bool = True,
                pairs: torch.Tensor | None = None):
        b, tq, _ = x.shape
        if (profile is None) != (self.profile_dim is None):
            raise ValueError("UnifiedAttentionBlock: pass a profile exactly when the block was built with profile_dim")
        # ---- self-attention -----------------------------------------------------------------
        xh = self.norm_in(x)
        q, k, v = self._heads(self.q(xh)), self._heads(self.k(xh)), self._heads(self.v(xh))
        if past is None:
            rank_k, time_k, real_k, offset = rank, time, real, 0
        else:
            offset = past["rank"].shape[1]
            rank_k = torch.cat([past["rank"].expand(b, -1), rank], 1)
            real_k = torch.cat([past["real"].expand(b, -1), real], 1)
            time_k = None if time is None else torch.cat([past["time"].expand(b, -1), time], 1)
        if self.uses_sparse_kernel(tq, past):
            att = self._sparse_attention(q, k, v, rank, time, real)
        else:  # dense attention with the pattern as a mask (also a few queries against a cached prefix)
            if pairs is None:
                pairs = self.pair_index(rank, rank_k, time, time_k, real_k, offset)
            bias = table_lookup(self.bias_table(time is not None), pairs)  # -inf where not allowed
            qs = q / math.sqrt(self.head_dim)  # scaled before the product: (B, H, Tq, d_h), not (B, H, Tq, K)
            scores = qs @ k.transpose(-1, -2)
            if past is not None:  # (1 or B, H, P, d_h) keys broadcast against (B, H, Tq, d_h) queries
                scores = torch.cat([(qs @ past["k"].transpose(-1, -2)).expand(b, -1, -1, -1), scores], -1)
            scores = scores + bias.unsqueeze(1)
            weights = self.dropout(torch.softmax(scores, dim=-1))
            if past is None:
                att = weights @ v
            else:
                p = offset
                att = weights[..., :p] @ past["v"] + weights[..., p:] @ v
        att = self.o(att.transpose(1, 2).reshape(b, tq, self.dim))
        x = self.norm_attn(self.dropout(att) + xh)
        present = {}
        if cache:  # what a later call attends to (not built when scoring candidates from a cache)
            present = {"k": k if past is None else torch.cat([past["k"].expand(b, -1, -1, -1), k], 2),
                       "v": v if past is None else torch.cat([past["v"].expand(b, -1, -1, -1), v], 2),
                       "rank": rank_k, "real": real_k, "time": time_k}
        # ---- cross-attention to the profile and adaptive fusion -----------------------------
        if profile is not None:
            cq = self._heads(self.cross_q(x))
            ck, cv = self._heads(self.cross_k(profile)), self._heads(self.cross_v(profile))
            cw = self.dropout(torch.softmax(cq @ ck.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1))
            c = self.cross_o((cw @ cv).transpose(1, 2).reshape(b, tq, self.dim))
            m = real.unsqueeze(-1).to(x.dtype)
            run_sum, run_count = torch.cumsum((x + c) * m, 1), torch.cumsum(m, 1)
            if past is not None:
                run_sum, run_count = run_sum + past["sum"].unsqueeze(1), run_count + past["count"].unsqueeze(1)
            s = run_sum / run_count.clamp(min=1.0)
            z = F.relu(self.squeeze(s))
            w = torch.softmax(torch.stack([self.excite_x(z), self.excite_c(z)]), dim=0)
            x = self.norm_fuse(w[0] * x + w[1] * c + x)
            if cache:
                present["sum"], present["count"] = run_sum[:, -1], run_count[:, -1]
        # ---- SwiGLU feed-forward ------------------------------------------------------------
        x = x + self.dropout(self.ffn_down(F.silu(self.ffn_gate(x)) * self.ffn_up(x)))
        return x, present
