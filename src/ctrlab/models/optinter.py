"""OptInter (Lyu et al., ICDE 2022): per pair of fields, memorize, factorize, or be naïve.

For fields ``e_f`` (original embeddings, width D_o) and every candidate pair p = (i, j):

* memorize:  ``m_p = M_p[cross_id_p]`` (D_c), the embedding of the pair's cross-product value
  (a cross field of the feature map, ``origin="cross"``: :func:`ctrlab.data.derive.with_crosses`);
* factorize: ``f_p = a_i ⊙ a_j`` with ``a`` from a **separate** table A of width D_c;
* naïve:     ``n_p = 0``.

Search (``pair_methods="search"``): ``w_p = softmax(α_p / t)`` over the three, with the temperature
annealed per training step ``t = max(t_min, 1 − τ·step)`` and ``z_p = w_p1·m_p + w_p2·f_p + w_p3·0``.
α is trained with its own Adam (lr ``arch_lr``) on the same batches as the network (one-level).
Fixed (``"memorize"`` / ``"factorize"`` / ``"naive"`` for every pair, or a dict per pair): ``z_p`` is
the chosen term and naïve pairs are dropped from the input.

``h = [flatten(e) ; flatten(z)]`` → MLP (Linear → LayerNorm → ReLU per layer) → Linear → logit.

Retraining the argmax architecture from scratch is the recipe :mod:`ctrlab.recipes.opt_inter`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, MLPBlock
from .base import CTRModel
from .registry import register

METHODS = ("memorize", "factorize", "naive")
"""The candidate interaction methods, in the order of α's columns."""


def pair_key(a: str, b: str) -> str:
    """How a pair is named in ``pair_methods`` dicts and reports: ``"a,b"``."""
    return f"{a},{b}"


@register
class OptInter(CTRModel):
    """OptInter: ``pair_methods`` per pair of fields chosen among memorize / factorize / naïve.

    Candidate pairs: the feature map's cross fields (``crosses: {fields: all}`` on the dataset or
    run config adds one per pair), else every pair of its categorical fields (then only factorize
    and naïve are possible). Cross fields are never embedded as ordinary fields here.

    Hyperparameters (defaults): ``embedding_dim=10`` (D_o), ``interaction_dim=10`` (D_c, the paper's
    comb_embedding_dim), ``pair_methods="search"`` (or ``memorize`` / ``factorize`` / ``naive`` for
    every pair, or ``{"a,b": method}``, pairs not named being naïve), ``hidden_units=(400, 400, 400)``
    (the paper: 5 × 700 on Criteo), ``hidden_activations="relu"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``layer_norm=True`` (the paper's MLP), ``temperature_decay=5e-5`` (τ),
    ``min_temperature=0.01``, ``arch_lr=1e-3`` (α's Adam), ``embedding_regularizer=0.``,
    ``net_regularizer=0.`` (α is never regularized).
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, interaction_dim: int = 10,
                 pair_methods: str | dict[str, str] = "search", hidden_units: Sequence[int] = (400, 400, 400),
                 hidden_activations: str = "relu", net_dropout: float = 0.0, batch_norm: bool = False,
                 layer_norm: bool = True, temperature_decay: float = 5e-5, min_temperature: float = 0.01,
                 arch_lr: float = 1e-3, embedding_regularizer: float | str | None = 0.0,
                 net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        crosses = feature_map.crosses()
        cross_names = set(crosses.values())
        base = [n for n in feature_map.field_names() if n not in cross_names]
        if crosses:
            self.pairs = list(crosses)
        else:
            cats = [f.name for f in feature_map.categorical if f.origin != "cross"]
            self.pairs = [(a, b) for i, a in enumerate(cats) for b in cats[i + 1:]]
        self.methods = _resolve_methods(pair_methods, self.pairs)
        missing = [p for p, m in zip(self.pairs, self.methods) if m in ("search", "memorize") and p not in crosses]
        if missing:
            a, b = missing[0]
            raise ValueError(
                f"OptInter: pair ({a}, {b}) is to be memorized (pair_methods={pair_methods!r}) but the feature map "
                f"has no cross feature of {a!r} and {b!r} ({len(missing)} such pairs); add crosses to the data "
                f"(run config crosses: {{fields: all}}, e.g. --set crosses.fields=all, or a feature with "
                f"cross: [{a}, {b}]), or choose factorize / naive for it")
        self.temperature_decay, self.min_temperature, self.arch_lr = temperature_decay, min_temperature, arch_lr
        # e_f: the original fields (crosses excluded)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim, fields=base)
        # The three groups of pairs, each in pair order: searched, fixed memorized, fixed factorized.
        searched = [i for i, m in enumerate(self.methods) if m == "search"]
        memorized = [i for i, m in enumerate(self.methods) if m in ("search", "memorize")]
        factorized = [i for i, m in enumerate(self.methods) if m in ("search", "factorize")]
        # M: one block of rows per memorized pair's cross vocabulary (one fused table with offsets)
        self.memorized = (FeatureEmbedding(feature_map, interaction_dim, fields=[crosses[self.pairs[i]] for i in memorized],
                                           check_field_dims=False) if memorized else None)
        # A: the factorized pairs' fields, at width D_c (not the original embeddings)
        factor_fields = [n for n in base if any(n in self.pairs[i] for i in factorized)]
        self.factor = (FeatureEmbedding(feature_map, interaction_dim, fields=factor_fields, check_field_dims=False)
                       if factorized else None)
        col = {n: k for k, n in enumerate(self.factor.field_names)} if self.factor is not None else {}
        self.register_buffer("fac_left", torch.tensor([col[self.pairs[i][0]] for i in factorized], dtype=torch.long),
                             persistent=False)
        self.register_buffer("fac_right", torch.tensor([col[self.pairs[i][1]] for i in factorized], dtype=torch.long),
                             persistent=False)

        def positions(chosen: list[int], within: list[int]) -> torch.Tensor:
            return torch.tensor([within.index(i) for i in chosen], dtype=torch.long)

        self.register_buffer("search_mem", positions(searched, memorized), persistent=False)
        self.register_buffer("search_fac", positions(searched, factorized), persistent=False)
        self.register_buffer("fixed_mem", positions([i for i in memorized if self.methods[i] == "memorize"], memorized),
                             persistent=False)
        self.register_buffer("fixed_fac", positions([i for i in factorized if self.methods[i] == "factorize"],
                                                    factorized), persistent=False)
        self.searched = searched
        # α: architecture logits of the searched pairs (uniform start), and the annealing step,
        # saved with the weights so that a resumed search continues the schedule exactly
        self.alpha = nn.Parameter(torch.zeros(len(searched), len(METHODS))) if searched else None
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        kept = sum(m != "naive" for m in self.methods)
        self.mlp = MLPBlock(self.embedding.output_dim + kept * interaction_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm,
                            layer_norm=layer_norm, output_dim=1)

    # ---- the search ---------------------------------------------------------------------------
    def temperature(self, step: int | None = None) -> float:
        """``t = max(t_min, 1 − τ·step)`` at ``step`` (default: the model's current step)."""
        step = int(self.step) if step is None else step
        return max(self.min_temperature, 1.0 - self.temperature_decay * step)

    def pair_weights(self) -> torch.Tensor:
        """``softmax(α / t)`` of the searched pairs, ``(P_searched, 3)`` over :data:`METHODS`."""
        if self.alpha is None:
            return torch.zeros(0, len(METHODS))
        return torch.softmax(self.alpha / self.temperature(), dim=-1)

    def chosen_methods(self) -> dict[str, str]:
        """``"a,b"`` -> method for every pair: the argmax of α for searched pairs, the fixed one otherwise."""
        out = {pair_key(*p): m for p, m in zip(self.pairs, self.methods)}
        if self.alpha is not None:
            for i, k in zip(self.searched, self.alpha.detach().argmax(dim=-1).tolist()):
                out[pair_key(*self.pairs[i])] = METHODS[k]
        return out

    def optimizer_groups(self):
        """α with its own Adam at ``arch_lr`` (the paper's 1e-3), apart from the network's optimizer;
        plus the groups of layers a recipe swapped in (e.g. OptEmbed's thresholds)."""
        if self.alpha is None:
            return super().optimizer_groups()
        return [*super().optimizer_groups(),
                {"name": "architecture", "params": [self.alpha], "optimizer": "adam", "lr": self.arch_lr,
                 "weight_decay": 0.0}]

    def net_parameters(self):
        return [p for p in super().net_parameters() if p is not self.alpha]  # α is not regularized

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters by part: original embeddings, memorized tables, factorization table, MLP, α."""
        def size(m):
            return sum(p.numel() for p in m.parameters()) if m is not None else 0

        return {"original": size(self.embedding), "memorized": size(self.memorized), "factorized": size(self.factor),
                "mlp": size(self.mlp), "architecture": self.alpha.numel() if self.alpha is not None else 0}

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, batch):
        e = self.embedding.forward_flat(batch)                                   # (B, Σ D_o)
        m = self.memorized(batch) if self.memorized is not None else None       # (B, P_m, D_c)
        if self.factor is not None:
            a = self.factor(batch)                                               # (B, F_A, D_c)
            f = a.index_select(1, self.fac_left) * a.index_select(1, self.fac_right)  # (B, P_f, D_c)
        parts = [e]
        if self.alpha is not None:
            w = self.pair_weights().to(e.dtype)                                  # (P_s, 3)
            if self.training and torch.is_grad_enabled():
                self.step += 1  # training steps only: evaluation must not advance the schedule
            z = (w[:, 0:1] * m.index_select(1, self.search_mem)
                 + w[:, 1:2] * f.index_select(1, self.search_fac))               # + w[:, 2:3] · 0
            parts.append(z.flatten(1))
        if len(self.fixed_mem):
            parts.append(m.index_select(1, self.fixed_mem).flatten(1))
        if len(self.fixed_fac):
            parts.append(f.index_select(1, self.fixed_fac).flatten(1))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else e
        return {"logit": self.mlp(h).squeeze(-1)}


def _resolve_methods(pair_methods: str | Mapping[str, str], pairs: list[tuple[str, str]]) -> list[str]:
    """One of ``search`` / :data:`METHODS` per pair, from a name for all or a ``{"a,b": method}`` dict."""
    allowed = ("search", *METHODS)
    if isinstance(pair_methods, str):
        if pair_methods not in allowed:
            raise ValueError(f"OptInter: pair_methods={pair_methods!r}; choose one of {list(allowed)} or a dict "
                             "{'a,b': method}")
        return [pair_methods] * len(pairs)
    keys = {pair_key(*p): i for i, p in enumerate(pairs)}
    keys.update({pair_key(b, a): i for (a, b), i in zip(pairs, range(len(pairs)))})
    methods = ["naive"] * len(pairs)
    for key, method in dict(pair_methods).items():
        if key not in keys:
            raise ValueError(f"OptInter: pair_methods names {key!r}, which is not a candidate pair; pairs are "
                             f"{[pair_key(*p) for p in pairs][:10]}{' ...' if len(pairs) > 10 else ''}")
        if method not in allowed:
            raise ValueError(f"OptInter: pair_methods[{key!r}]={method!r}; choose one of {list(allowed)}")
        methods[keys[key]] = method
    return methods
