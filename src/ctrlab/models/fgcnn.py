"""FGCNN: CNN-generated feature embeddings added to the raw ones, classified by an IPNN."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, InnerProducts, MLPBlock
from ..layers.feature_generation import FeatureGenerationCNN
from .base import CTRModel
from .registry import register


@register
class FGCNN(CTRModel):
    """``New = FeatureGenerationCNN(E_g)`` (B, N_new, D); ``E' = [E_c ; New]`` (B, N, D),
    N = F + N_new; ``logit = MLP([flatten(E') ; <e'_j, e'_k>_{j<k}])`` (IPNN classifier, input
    ``N·D + N(N−1)/2``). ``E_c`` and ``E_g`` are separate tables unless ``share_embedding``.
    Field order (the feature map's) is part of the model: convolutions only mix neighbouring fields.
    The defaults are FuxiCTR's FGCNN, parameter for parameter.

    Option ``gate_new_features=True`` (off by default; not in the paper or FuxiCTR):
    ``New = α · FeatureGenerationCNN(E_g)`` with one learnable scalar ``α`` initialised to 0, so
    training starts from an IPNN on ``E_c`` and phases the generated features in. It avoids the
    stuck-at-AUC-0.5 runs of BARS issue #10; why and the measurements: docs/models.md (FGCNN).

    Hyperparameters (FuxiCTR class defaults, plus the option): ``embedding_dim=10``,
    ``share_embedding=False``, ``channels=(14, 16, 18, 20)``, ``kernel_heights=7``,
    ``pooling_sizes=2``, ``recombined_channels=2`` (these three: one value or one per conv
    layer), ``conv_activation="tanh"``, ``conv_batch_norm=True``,
    ``dnn_hidden_units=(4096, 2048, 1024, 512)``, ``dnn_activations="relu"``,
    ``dnn_batch_norm=False``, ``net_dropout=0.``, ``gate_new_features=False``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``. BARS tuned: Criteo_x4_002 D 10,
    channels [38, 40, 42, 44], kernel 9, recombined 3, DNN [4096, 2048, 1024]; Avazu_x4_002 D 20,
    channels [14, 16, 18, 20], kernel 7, recombined 3, DNN [4096, 2048, 1024, 512].
    Pooling deviation from FuxiCTR: see :class:`FeatureGenerationCNN`.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, share_embedding: bool = False,
                 channels: Sequence[int] = (14, 16, 18, 20), kernel_heights: int | Sequence[int] = 7,
                 pooling_sizes: int | Sequence[int] = 2, recombined_channels: int | Sequence[int] = 2,
                 conv_activation: str = "tanh", conv_batch_norm: bool = True,
                 dnn_hidden_units: Sequence[int] = (4096, 2048, 1024, 512), dnn_activations: str = "relu",
                 dnn_batch_norm: bool = False, net_dropout: float = 0.0, gate_new_features: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.gen_embedding = None if share_embedding else FeatureEmbedding(feature_map, embedding_dim)
        F = self.embedding.num_fields
        self.generator = FeatureGenerationCNN(F, embedding_dim, channels, kernel_heights, pooling_sizes,
                                              recombined_channels, conv_activation, conv_batch_norm)
        self.gate = nn.Parameter(torch.zeros(())) if gate_new_features else None
        self.num_features = N = F + self.generator.num_new_features
        self.inner_products = InnerProducts(N)
        self.mlp = MLPBlock(N * embedding_dim + self.inner_products.output_dim, dnn_hidden_units,
                            activation=dnn_activations, dropout=net_dropout, batch_norm=dnn_batch_norm,
                            output_dim=1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # weights of a gated model (ctrlab's default before issue 14.12) into a model without the gate
        if self.gate is None and prefix + "gate" in state_dict:
            error_msgs.append("these FGCNN weights have the gate α ('gate'): they were trained with "
                              "gate_new_features=True (ctrlab's default before issue 14.12); build the model with "
                              "gate_new_features=True (for a run: add it to model_params in run_config.yaml)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def new_features(self, batch, e_c: torch.Tensor | None = None) -> torch.Tensor:
        """The generated feature embeddings ``[α ·] FeatureGenerationCNN(E_g)``, (B, N_new, D)."""
        if self.gen_embedding is not None:
            e_g = self.gen_embedding(batch)
        else:
            e_g = self.embedding(batch) if e_c is None else e_c
        new = self.generator(e_g)
        return new if self.gate is None else self.gate * new

    def forward(self, batch):
        e_c = self.embedding(batch)
        e = torch.cat([e_c, self.new_features(batch, e_c)], dim=1)
        h = torch.cat([e.flatten(start_dim=1), self.inner_products(e)], dim=1)
        return {"logit": self.mlp(h).squeeze(-1)}
