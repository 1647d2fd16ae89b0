"""Reusable building blocks of ctrlab models."""
from .embedding import EMBEDDING_INIT_STD, FeatureEmbedding, LinearLogit
from .fusion import MultiHeadBilinearFusion
from .gating import FeatureGating
from .interaction import CrossNetV2, FactorizationMachine, InnerProducts
from .mlp import MLPBlock, get_activation, init_linear
from .sequence import SequencePooling, sequence_mask

__all__ = [
    "EMBEDDING_INIT_STD",
    "CrossNetV2",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FeatureGating",
    "InnerProducts",
    "LinearLogit",
    "MLPBlock",
    "MultiHeadBilinearFusion",
    "SequencePooling",
    "get_activation",
    "init_linear",
    "sequence_mask",
]
