"""Reusable building blocks of ctrlab models."""
from .attention import MultiHeadSelfAttention
from .embedding import EMBEDDING_INIT_STD, FeatureEmbedding, LinearLogit
from .fusion import MultiHeadBilinearFusion
from .gating import FeatureGating
from .interaction import CIN, CrossNet, CrossNetV2, FactorizationMachine, InnerProducts
from .mixture import MixtureOfExperts
from .mlp import MLPBlock, get_activation, init_linear
from .quadratic import QuadraticLayer, QuadraticNetwork
from .sequence import SequencePooling, sequence_mask
from .sparse_target_attention import ReLUTargetAttention

__all__ = [
    "EMBEDDING_INIT_STD",
    "CIN",
    "CrossNet",
    "CrossNetV2",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FeatureGating",
    "InnerProducts",
    "LinearLogit",
    "MixtureOfExperts",
    "MLPBlock",
    "MultiHeadBilinearFusion",
    "MultiHeadSelfAttention",
    "QuadraticLayer",
    "QuadraticNetwork",
    "ReLUTargetAttention",
    "SequencePooling",
    "get_activation",
    "init_linear",
    "sequence_mask",
]
