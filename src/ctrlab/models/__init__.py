"""Model zoo. ``create("FinalMLP", feature_map, **hparams)`` builds a registered model by name;
models from outside ctrlab register through an entry point or ``CTRLAB_PLUGINS`` (see
:mod:`ctrlab.models.registry` and docs/adding_a_model.md)."""
from .base import CTRModel
from .registry import (
    ENTRY_POINT_GROUP,
    PLUGINS_ENV,
    Hyperparameters,
    PluginError,
    add_plugins,
    check_hparams,
    create,
    default_hparams,
    get_model_class,
    hyperparameters,
    import_plugins,
    list_models,
    register,
)

# Importing the model modules registers them.
from . import lr, fm, dnn, deepfm, dcnv2, finalmlp, widedeep, dcn, xdeepfm, ipnn, autoint, din, fcn, fgcnn, optinter, sdim, suan, diffumin, qin, shared_bottom, mmoe, esmm, tabr  # noqa: E402,F401

__all__ = ["CTRModel", "ENTRY_POINT_GROUP", "Hyperparameters", "PLUGINS_ENV", "PluginError", "add_plugins", "check_hparams",
           "create", "default_hparams", "get_model_class", "hyperparameters", "import_plugins", "list_models",
           "register"]
