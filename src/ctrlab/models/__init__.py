"""Model zoo. ``create("FinalMLP", feature_map, **hparams)`` builds a registered model by name."""
from .base import CTRModel
from .registry import create, default_hparams, get_model_class, list_models, register

# Importing the model modules registers them.
from . import lr, fm, dnn, deepfm, dcnv2, finalmlp, widedeep, dcn, xdeepfm, ipnn, autoint, din, fcn, fgcnn  # noqa: E402,F401

__all__ = ["CTRModel", "create", "default_hparams", "get_model_class", "list_models", "register"]
