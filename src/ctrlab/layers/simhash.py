"""SimHash bucket pooling (SDIM, Cao et al. CIKM 2022): a behaviour sequence pooled by the
behaviours that land in the target's hash bucket, with a two-stage (per-user tables, per-candidate
lookup) form for serving."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

MAX_HASH_BITS = 16
"""Upper bound on ``hash_bits``: a bucket table holds ``2^τ`` vectors per hash function and user."""


class SimHash(nn.Module):
    """Pool ``s (B, L, d)`` (``mask (B, L)``, True = real) by SimHash collisions with ``q (B, d)``.

    ``R ∈ R^{d×m×τ}`` (``m = num_hashes``, ``τ = hash_bits``): fixed N(0, 1) projections drawn from
    ``torch.Generator().manual_seed(seed)``, never trained, stored as the persistent buffer
    ``projections`` (so saved weights and exported graphs carry them). Bits
    ``b_{h,t}(v) = 1[⟨v, R_{:,h,t}⟩ > 0]`` (strictly: 0 maps to bit 0, for target and behaviours
    alike), signature ``sig_h(v) = Σ_t b_{h,t}(v)·2^t ∈ [0, 2^τ)``;
    ``u_h = Σ_j mask_j · 1[sig_h(s_j) = sig_h(q)] · s_j``, optionally divided by the number of
    collided behaviours ``n_h`` (``bucket_mean``: the mean of the bucket, so ``u_h`` keeps the
    behaviours' scale whatever the history length; an empty bucket gives 0), optionally
    ``u_h / ‖u_h‖₂`` (``l2_norm``; a zero ``u_h`` stays 0), and ``u = (1/m) Σ_h u_h``. ``E[u_h] =
    Σ_j mask_j (1 − θ_j/π)^τ s_j`` (θ_j the angle between q and s_j). ``τ = 0``: every behaviour
    collides and ``u`` is the masked sum (with ``bucket_mean``: the masked mean, mean pooling).
    Padding never collides: it is left out by the mask, not by its vector (a zero vector has
    signature 0).

    Two-stage form (SDIM's BSE): :meth:`bucket_tables` ``(B, m, 2^τ, d)`` holds each bucket's sum
    (its mean with ``bucket_mean``; independent of the candidate; computed once per user),
    :meth:`lookup` hashes the candidate and gathers its buckets: O(m·d) per candidate. ``lookup(bucket_tables(s, mask), q)`` equals
    ``forward(q, s, mask)`` bit for bit on CPU when autograd is off (inference, serving): both
    then sum the collided behaviours with the same ``scatter_add`` in position order (the direct
    form into a 2-slot "collided / other" table). While autograd records (training) the direct
    form is one batched matrix product ``1[hit] (B, m, L) @ s`` instead, about 10x faster with its
    backward pass and equal up to float rounding (other summation order). On CUDA ``scatter_add``
    adds with atomics in no fixed order, so there the forms agree to float rounding only.

    Cost: ``O(B·L·d·m·τ)`` for the signatures and ``O(B·L·d·m)`` for the sums (tables: one
    ``scatter_add`` per hash function, no ``(B, L, 2^τ)`` one-hot); memory ``O(B·L·(d + m))``: the
    ``(B·L, m·τ)`` projections are made and consumed a few users at a time (:meth:`collisions`).
    """

    def __init__(self, dim: int, num_hashes: int = 1, hash_bits: int = 4, l2_norm: bool = False, seed: int = 0,
                 bucket_mean: bool = False):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"SimHash: dim must be >= 1, got {dim}")
        if int(num_hashes) < 1:
            raise ValueError(f"num_hashes must be >= 1 (the number of hash functions m), got {num_hashes}")
        if not 0 <= int(hash_bits) <= MAX_HASH_BITS:
            raise ValueError(f"hash_bits must be in [0, {MAX_HASH_BITS}] (bits per signature; a bucket table has "
                             f"2^hash_bits rows per hash), got {hash_bits}")
        self.dim, self.num_hashes, self.hash_bits = int(dim), int(num_hashes), int(hash_bits)
        self.l2_norm, self.bucket_mean = bool(l2_norm), bool(bucket_mean)
        self.ordered_sums = False
        """Inference sums in position order, bit-identical to :meth:`bucket_tables` + :meth:`lookup` (slower)."""
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("projections", torch.randn(self.dim, self.num_hashes, self.hash_bits, generator=g))
        # bits (…, m·τ) @ packing (m·τ, m) = Σ_t bit_{h,t}·2^t: one product instead of a (…, m, τ) multiply + sum
        packing = torch.zeros(self.num_hashes * self.hash_bits, self.num_hashes)
        for h in range(self.num_hashes):
            packing[h * self.hash_bits:(h + 1) * self.hash_bits, h] = 2.0 ** torch.arange(self.hash_bits)
        self.register_buffer("packing", packing, persistent=False)

    @property
    def num_buckets(self) -> int:
        return 2 ** self.hash_bits

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw new projections in place (from torch's global RNG unless ``generator`` is given)."""
        if self.projections.numel():
            self.projections.normal_(generator=generator)

    SIGNATURE_CHUNK_ROWS = 4096
    """Vectors hashed per step: the ``(rows, m·τ)`` projections then stay in the CPU cache between
    the product, the bits and the packing (at L = 1,000 with m·τ = 64, 3-4x faster than one pass
    over the whole ``(B·L, m·τ)`` tensor, which is memory-bound)."""

    @torch.no_grad()  # ids are not differentiable: nothing to record
    def signatures(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` -> int64 ``(..., m)`` bucket ids ``sig_h(v)``."""
        flat = v.reshape(-1, v.shape[-1])
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._pack(torch.matmul(flat, self._weights(v))).long().view(*v.shape[:-1], self.num_hashes)
        out = torch.empty(flat.shape[0], self.num_hashes, dtype=torch.float32, device=v.device)
        for i in range(0, flat.shape[0], self.SIGNATURE_CHUNK_ROWS):
            self._pack(flat[i:i + self.SIGNATURE_CHUNK_ROWS] @ self._weights(v), out=out[i:i + self.SIGNATURE_CHUNK_ROWS])
        return out.long().view(*v.shape[:-1], self.num_hashes)

    @torch.no_grad()
    def collisions(self, query: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hit (B, L, m)`` in ``seq``'s dtype: 1 where behaviour j is real and ``sig_h(s_j) = sig_h(q)``.

        Computed a few users at a time (:data:`SIGNATURE_CHUNK_ROWS` behaviours): each chunk's
        projections, signatures (float32, exact below 2^16) and comparison stay in the CPU cache and
        only ``hit`` is written out; no int64 signature tensor of the sequence's size is made."""
        sig_q = self.signatures(query).to(torch.float32)  # (B, m)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return ((self.signatures(seq) == sig_q.long().unsqueeze(1)) & mask.unsqueeze(-1)).to(seq.dtype)
        B, L, d = seq.shape
        hit = torch.empty(B, L, self.num_hashes, dtype=torch.float32, device=seq.device)
        users = max(1, self.SIGNATURE_CHUNK_ROWS // max(L, 1))
        weights = self._weights(seq)
        for b in range(0, B, users):
            rows = hit[b:b + users]  # (u, L, m), contiguous
            self._pack(seq[b:b + users].reshape(-1, d) @ weights, out=rows.view(-1, self.num_hashes))
            rows.eq_(sig_q[b:b + users].unsqueeze(1)).mul_(mask[b:b + users].unsqueeze(-1))
        return hit.to(seq.dtype)

    def _weights(self, v: torch.Tensor) -> torch.Tensor:
        return self.projections.flatten(1).to(v.dtype)

    def _pack(self, proj: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Projections ``(n, m·τ)`` -> ``(n, m)`` ids as float32 (exact: signatures < 2^16): bit =
        1[proj > 0], computed in place as ``clamp(sign(proj), min=0)`` (two float passes cost less
        than one ``> 0`` into a bool tensor and its conversion back to float), packed by one product
        in float32, never in a lower autocast precision; into ``out`` when given."""
        bits = proj.float().sign_().clamp_(min=0.0)
        with torch.autocast(device_type=bits.device.type, enabled=False):
            return torch.matmul(bits, self.packing) if out is None else torch.matmul(bits, self.packing, out=out)

    @staticmethod
    def _bucket_sums(seq: torch.Tensor, index: torch.Tensor, slots: int) -> torch.Tensor:
        """``out[b, k] = Σ_{j: index[b, j] = k} seq[b, j]`` -> ``(B, slots, d)``, summed in position
        order (CPU), without materialising a one-hot or an index of ``seq``'s size."""
        out = seq.new_zeros(seq.shape[0], slots, seq.shape[-1])
        return out.scatter_add(1, index.unsqueeze(-1).expand_as(seq), seq)

    def _pool(self, u: torch.Tensor) -> torch.Tensor:
        """``(B, m, d)`` per-hash sums -> ``(B, d)``: optional L2 norm per hash, mean over hashes."""
        if self.l2_norm:
            u = F.normalize(u, dim=-1)
        return u.mean(dim=1)

    def forward(self, query: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Direct form: ``q (B, d)``, ``s (B, L, d)``, ``mask (B, L)`` -> ``u (B, d)``."""
        self._check(query, seq, mask)
        hit = self.collisions(query, seq, mask)  # (B, L, m), no autograd: the bucket ids are constants
        recording = torch.is_grad_enabled() and (seq.requires_grad or query.requires_grad)
        if recording or not self.ordered_sums:
            # one batched product (and its transpose in the backward pass), ~10x faster than the
            # position-ordered sums below; equal to them up to float rounding
            u = torch.matmul(hit.transpose(1, 2), seq)  # (B, m, d)
        else:  # summed exactly as bucket_tables sums, so lookup() reproduces it bit for bit
            miss = (hit == 0).long()
            u = torch.stack([self._bucket_sums(seq, miss[..., h], 2)[:, 0]  # slot 0: collided
                             for h in range(self.num_hashes)], dim=1)
        if self.bucket_mean:  # counts summed in float32: exact up to 2^24 behaviours whatever seq's dtype
            u = u / hit.sum(1, dtype=torch.float32).clamp(min=1).unsqueeze(-1).to(u.dtype)
        return self._pool(u)

    def bucket_tables(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-user bucket sums ``T[b, h, k] = Σ_j mask_j · 1[sig_h(s_j) = k] · s_j``:
        ``(B, m, 2^τ, d)``, independent of the candidate."""
        self._check(None, seq, mask)
        sig_s = self.signatures(seq)
        K = self.num_buckets
        index = torch.where(mask.unsqueeze(-1), sig_s, K)  # (B, L, m); slot K: padding
        tables = torch.stack([self._bucket_sums(seq, index[..., h], K + 1)[:, :K] for h in range(self.num_hashes)], 1)
        if self.bucket_mean:  # counts per bucket, the same division forward() makes
            counts = torch.zeros(seq.shape[0], self.num_hashes, K + 1, dtype=torch.long, device=seq.device)
            counts = counts.scatter_add(2, index.transpose(1, 2), torch.ones_like(index.transpose(1, 2)))[..., :K]
            tables = tables / counts.clamp(min=1).unsqueeze(-1).to(tables.dtype)
        return tables

    def lookup(self, tables: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Candidates' interests from precomputed :meth:`bucket_tables`: ``(B, m, 2^τ, d)``,
        ``q (B, d)`` -> ``u (B, d)``, the value :meth:`forward` gives."""
        shape = (self.num_hashes, self.num_buckets, self.dim)
        if tables.dim() != 4 or tuple(tables.shape[1:]) != shape or tables.shape[0] != query.shape[0]:
            raise ValueError(f"SimHash.lookup: tables must be (B, num_hashes, 2^hash_bits, dim) = (B, {shape[0]}, "
                             f"{shape[1]}, {shape[2]}) with B = {query.shape[0]} candidates, got {tuple(tables.shape)}")
        sig_q = self.signatures(query)  # (B, m)
        index = sig_q[:, :, None, None].expand(-1, -1, 1, self.dim)
        return self._pool(tables.gather(2, index).squeeze(2))

    def _check(self, query, seq, mask) -> None:
        if torch.jit.is_tracing():  # shapes are symbolic while exporting
            return
        if seq.dim() != 3 or seq.shape[-1] != self.dim or tuple(mask.shape) != tuple(seq.shape[:2]):
            raise ValueError(f"SimHash: seq must be (B, L, {self.dim}) with mask (B, L), got {tuple(seq.shape)} "
                             f"and {tuple(mask.shape)}")
        if query is not None and (query.dim() != 2 or tuple(query.shape) != (seq.shape[0], self.dim)):
            raise ValueError(f"SimHash: query must be (B, {self.dim}) for B = {seq.shape[0]}, got {tuple(query.shape)}")

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_hashes={self.num_hashes}, hash_bits={self.hash_bits}, l2_norm={self.l2_norm}, "
                f"bucket_mean={self.bucket_mean}")
