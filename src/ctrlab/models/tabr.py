"""TabR: a feed-forward network that reads the labels of the training rows nearest to the row it scores."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, get_activation
from ..layers.mlp import ResidualMLPBlock
from ..layers.retrieval import FaissSearch, RowStore, nearest
from .base import CTRModel
from .registry import register


class TabREncoder(nn.Module):
    """``x̃ = blocks(Linear(flatten(E)))`` and the key ``k = W_K([LayerNorm](x̃))``."""

    def __init__(self, feature_map: FeatureMap, embedding_dim: int, d_main: int, d_block: int, n_blocks: int,
                 normalization: bool, activation: str, dropout0: float, dropout1: float):
        super().__init__()
        self.embedding = FeatureEmbedding(feature_map, embedding_dim, mixed_dims=True)
        self.linear = nn.Linear(sum(self.embedding.field_dims), d_main)
        self.blocks = nn.ModuleList([ResidualMLPBlock(d_main, d_block, activation, dropout0, dropout1, prenorm=i > 0)
                                     for i in range(n_blocks)])
        self.normalization = nn.LayerNorm(d_main) if normalization else None
        self.key = nn.Linear(d_main, d_main)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.linear(self.embedding.forward_flat(batch))
        for block in self.blocks:
            x = block(x)
        return x, self.key(x if self.normalization is None else self.normalization(x))


@register
class TabR(CTRModel):
    """TabR (Gorishniy et al., "TabR: Tabular Deep Learning Meets Nearest Neighbors", ICLR 2024).

    Encoder: ``x̃ = E(x)`` (field embeddings, flattened, ``Linear(·, d_main)``, then
    ``encoder_n_blocks`` residual blocks ``x + Dropout(Linear(Dropout(ReLU(Linear([LayerNorm](x))))))``,
    the first without its LayerNorm); key ``k = W_K(x̃)`` (``W_K(LayerNorm(x̃))`` when
    ``mixer_normalization``). Retrieval: the ``context_size`` (m) training rows ("candidates") with the
    largest similarity ``s_i = -||k - k_i||²``; a training row never retrieves itself (it is masked
    out of its own search; the loader gives each train row's index, ``batch["row_index"]``); at
    evaluation every candidate counts. Value of candidate i: ``v_i = W_Y(y_i) + T(k - k_i)`` with
    ``T = Linear(Dropout(ReLU(Linear(·))), bias=False)`` and ``W_Y`` the two-row label embedding
    (``W_Y(y) = w_0 + y·(w_1 - w_0)``: the embedding of class y for 0/1 labels). Context
    ``c = Σ_i softmax(s)_i · v_i`` (dropout ``context_dropout`` on the weights). Prediction
    ``logit = head(blocks(x̃ + c))``: ``predictor_n_blocks`` residual blocks (with LayerNorm), then
    ``Linear(ReLU(LayerNorm(·)), 1)``.

    The candidates are the training split's encoded rows (:meth:`attach_training_data`, called by
    ``ctrlab train`` before training), kept as buffers (a :class:`~ctrlab.layers.retrieval.RowStore`)
    so that ``model.safetensors`` carries them: evaluate, predict, export and serve need no training
    file. A model with no candidates attached has context 0 (encoder and predictor only).

    Cost (the paper's code, ``memory_efficient``): each training step searches with the candidates'
    keys computed without gradients, then encodes only the m chosen rows per query again with
    gradients. The no-gradient keys of all N candidates (one encoder pass over them, O(N)) are
    recomputed every ``candidate_refresh_steps`` training steps; at evaluation they are computed once
    per set of weights (cached until a weight changes) and reused by every batch.

    Hyperparameters (defaults: the paper's "TabR-S default" configuration, with ctrlab's embeddings
    in place of its one-hot inputs):

    * ``embedding_dim=10``: size of each field's embedding (input of the encoder's first Linear);
    * ``d_main=265``: width of x̃, the keys, values and the predictor;
    * ``d_multiplier=2.0``: hidden width of the residual blocks and of T, ``int(d_main·d_multiplier)``;
    * ``encoder_n_blocks=0``, ``predictor_n_blocks=1``: residual blocks before / after retrieval;
    * ``mixer_normalization="auto"``: LayerNorm before W_K (``"auto"``: when ``encoder_n_blocks > 0``);
    * ``activation="relu"``: activation of the blocks, T and the head;
    * ``dropout0=0.389``: dropout inside the blocks and T; ``dropout1=0.0``: after each block;
    * ``context_dropout=0.389``: dropout on the softmax weights of the context;
    * ``context_size=96``: m, neighbours per row (the paper's value);
    * ``use_context_labels=True``: add W_Y(y_i) to the values; False is the paper's ablation
      ("no labels in context"), whose context carries no label information;
    * ``max_candidates=200_000``: most training rows kept as candidates; a larger train split is
      sampled (seeded by the run's seed; the sample is what the run folder stores);
    * ``candidate_refresh_steps=1``: recompute the search keys of all candidates every this many
      training steps (1: every step, as the paper; larger trades search freshness for an
      encoder pass over N rows per step, see docs/models.md for measured times);
    * ``search="exact"``: ``"exact"``: chunked matrix product + top-k in torch (exportable to ONNX);
      ``"faiss"``: a faiss index (:class:`~ctrlab.layers.retrieval.FaissSearch`; TabR's own code uses
      faiss): exact ``IndexFlatL2`` below ``faiss_approximate_above`` candidates, HNSW from there on;
    * ``faiss_approximate_above=100_000``: candidates from which ``search="faiss"`` uses HNSW;
    * ``candidate_chunk_rows=16384``: candidate rows encoded per pass when computing the keys;
    * ``embedding_regularizer=0.``, ``net_regularizer=0.``: as every model (:class:`CTRModel`).
    """

    needs_row_index = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, d_main: int = 265,
                 d_multiplier: float = 2.0, encoder_n_blocks: int = 0, predictor_n_blocks: int = 1,
                 mixer_normalization: bool | str = "auto", activation: str = "relu", dropout0: float = 0.389,
                 dropout1: float = 0.0, context_dropout: float = 0.389, context_size: int = 96,
                 use_context_labels: bool = True, max_candidates: int = 200_000, candidate_refresh_steps: int = 1,
                 search: str = "exact", faiss_approximate_above: int = 100_000, candidate_chunk_rows: int = 16384,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        for name, value, low in (("d_main", d_main, 1), ("encoder_n_blocks", encoder_n_blocks, 0),
                                 ("predictor_n_blocks", predictor_n_blocks, 0), ("context_size", context_size, 1),
                                 ("max_candidates", max_candidates, 1),
                                 ("candidate_refresh_steps", candidate_refresh_steps, 1),
                                 ("faiss_approximate_above", faiss_approximate_above, 1),
                                 ("candidate_chunk_rows", candidate_chunk_rows, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TabR: {name} must be an integer >= {low}, got {value!r}")
        if search not in ("exact", "faiss"):
            raise ValueError(f"TabR: search must be 'exact' or 'faiss', got {search!r}")
        if mixer_normalization == "auto":
            mixer_normalization = encoder_n_blocks > 0
        if not isinstance(mixer_normalization, bool):
            raise ValueError(f"TabR: mixer_normalization must be true, false or 'auto', got {mixer_normalization!r}")
        d_block = int(d_main * d_multiplier)
        if d_block < 1:
            raise ValueError(f"TabR: d_main * d_multiplier must be >= 1, got {d_main} * {d_multiplier}")
        self.context_size = context_size
        self.use_context_labels = bool(use_context_labels)
        self.max_candidates = max_candidates
        self.candidate_refresh_steps = candidate_refresh_steps
        self.search = search
        self.faiss_approximate_above = faiss_approximate_above
        self.candidate_chunk_rows = candidate_chunk_rows

        self.encoder = TabREncoder(feature_map, embedding_dim, d_main, d_block, encoder_n_blocks,
                                   mixer_normalization, activation, dropout0, dropout1)
        self.label_embedding = nn.Parameter(torch.empty(2, d_main).uniform_(-1.0, 1.0))  # TabR's init
        self.T = nn.Sequential(nn.Linear(d_main, d_block), get_activation(activation), nn.Dropout(dropout0),
                               nn.Linear(d_block, d_main, bias=False))
        self.context_dropout = nn.Dropout(context_dropout)
        self.predictor = nn.ModuleList([ResidualMLPBlock(d_main, d_block, activation, dropout0, dropout1, prenorm=True)
                                        for _ in range(predictor_n_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(d_main), get_activation(activation), nn.Linear(d_main, 1))
        self.candidates = RowStore(feature_map)
        # the candidates' search keys: not saved (they follow from the weights and the candidates);
        # a buffer, so that .to(device) moves them and an ONNX export reads them as a constant
        self.register_buffer("search_keys", None, persistent=False)
        self._keys_stamp: tuple | None = None
        self._keys_age = 0  # training steps since the search keys were computed
        self._faiss: FaissSearch | None = None
        self._faiss_keys: torch.Tensor | None = None

    # ---- candidates ---------------------------------------------------------------------------
    def attach_training_data(self, arrays: Mapping[str, Any], seed: int = 0) -> None:
        """Keep the training split's rows (or ``max_candidates`` of them, sampled with ``seed``) as the
        retrieval candidates, with their first label. ``arrays``: the split's encoded arrays (``cat``,
        ``num``, ``seq:<name>``, ``dense:<name>``, ``label``)."""
        self.candidates.fill(arrays, label_column=self.main_label_column, max_rows=self.max_candidates, seed=seed)
        self._drop_keys()

    def _drop_keys(self) -> None:
        self.search_keys = None
        self._keys_stamp = None
        self._faiss = self._faiss_keys = None

    def _stamp(self) -> tuple:
        """What the search keys depend on: the encoder's and the candidates' tensors, by storage and
        in-place version (``.to()``, ``load_state_dict`` and in-place edits change it). Not every
        update does: torch's fused Adam (ctrlab's default) leaves the version as it is, which is why
        training steps refresh by count and the switch to evaluation always recomputes."""
        tensors = [*self.encoder.parameters(), *self.encoder.buffers(), *self.candidates.buffers()]
        return tuple((t.data_ptr(), t._version) for t in tensors)

    @torch.no_grad()
    def _compute_keys(self) -> torch.Tensor:
        was = self.encoder.training
        self.encoder.eval()  # search keys without dropout (deterministic between refreshes)
        try:
            keys = [self.encoder(chunk)[1].float() for chunk in self.candidates.chunks(self.candidate_chunk_rows)]
        finally:
            self.encoder.train(was)
        return torch.cat(keys)

    def candidate_keys(self, refresh: bool = False) -> torch.Tensor:
        """The candidates' search keys (N, d_main), computed without gradients and cached. A training
        step (training mode, gradients on) recomputes them when they are ``candidate_refresh_steps``
        steps old; scoring recomputes them when the weights or candidates were replaced or edited (the
        switch to evaluation mode, :meth:`train` ``(False)``, always does: ``refresh=True``)."""
        step = self.training and torch.is_grad_enabled()
        if step:
            due = self._keys_age >= self.candidate_refresh_steps
        else:
            due = refresh or self._keys_stamp != self._stamp()
        if self.search_keys is None or due:
            with torch.inference_mode(False):  # a normal tensor even when called under inference_mode
                keys = self._compute_keys()
            self._drop_keys()
            self.search_keys = keys
            self._keys_stamp = self._stamp()
            self._keys_age = 0
        if step:
            self._keys_age += 1
        return self.search_keys

    def train(self, mode: bool = True):
        leaving_training = self.training and not mode
        super().train(mode)
        if not mode and self.candidates.num_rows:
            # fresh keys before scoring (an ONNX export then reads them as a constant); after training
            # always, as an optimizer step may not show in the stamp
            self.candidate_keys(refresh=leaving_training)
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_keys()  # new weights or candidates: new keys
        super()._load_from_state_dict(*args, **kwargs)

    def _faiss_index(self, keys: torch.Tensor) -> FaissSearch:
        if self._faiss is None or self._faiss_keys is not keys:
            self._faiss = FaissSearch(keys, self.faiss_approximate_above)
            self._faiss_keys = keys
        return self._faiss

    def context_indices(self, batch: Mapping[str, torch.Tensor], query_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Positions (B, m) in the candidate store of each row's retrieved context, nearest first. In
        training mode a row's own position (from ``batch["row_index"]``) is never among them."""
        if query_keys is None:
            query_keys = self.encoder(batch)[1]
        n = self.candidates.num_rows
        exclude = None
        if self.training:
            if "row_index" not in batch:
                raise ValueError(
                    "TabR in training mode needs each row's index in the train split (batch['row_index']) to leave "
                    "the row out of its own context; ctrlab's trainer asks the loader for it (BatchLoader("
                    "row_index=True)); a custom loop must add it, or call model.eval() to score rows")
            exclude = self.candidates.positions(batch["row_index"])
        m = min(self.context_size, n - (0 if exclude is None else int((exclude >= 0).any())))
        keys = self.candidate_keys()
        queries = query_keys.detach()
        if self.search == "faiss":
            if torch.jit.is_tracing():
                raise ValueError(
                    "TabR with search='faiss' cannot be exported to ONNX: faiss's search is not a graph op, and the "
                    "graph's exact search breaks ties between equal distances (duplicate rows) its own way; export "
                    "with --format torch, or set model_params.search to exact in the run's run_config.yaml (a flat "
                    "index finds the same neighbours up to ties; an HNSW index approximates them)")
            return self._faiss_index(keys).search(queries, m, exclude)
        return nearest(queries, keys, m, exclude)[1]

    # ---- forward -------------------------------------------------------------------------------
    def _context(self, batch: Mapping[str, torch.Tensor], k: torch.Tensor) -> torch.Tensor:
        idx = self.context_indices(batch, k)  # (B, m)
        b, m = idx.shape
        if self.training and torch.is_grad_enabled():
            # the paper's memory-efficient step: only the m chosen rows per query are encoded with gradients
            context_k = self.encoder(self.candidates.take(idx.reshape(-1)))[1].view(b, m, -1)
        else:
            context_k = self.candidate_keys()[idx].to(k.dtype)
        diff = k.unsqueeze(1) - context_k  # (B, m, d)
        weights = self.context_dropout(F.softmax(-diff.pow(2).sum(-1), dim=-1))
        values = self.T(diff)
        if self.use_context_labels:
            y = self.candidates.label[idx].to(values.dtype).unsqueeze(-1)  # (B, m, 1)
            w0, w1 = self.label_embedding[0], self.label_embedding[1]
            values = values + (w0 + y * (w1 - w0))
        return (weights.unsqueeze(-1) * values).sum(1)

    def forward(self, batch):
        x, k = self.encoder(batch)
        if self.candidates.num_rows > (1 if self.training else 0):
            x = x + self._context(batch, k)
        for block in self.predictor:
            x = block(x)
        return {"logit": self.head(x).squeeze(-1)}
