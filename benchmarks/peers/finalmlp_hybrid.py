"""Bisection for issue 14.11: ctrlab's FinalMLP network trained by FuxiCTR's own loop.

Runs ``run_fuxictr.py`` (in the FuxiCTR venv, with ctrlab's ``src`` on ``PYTHONPATH``) with its
FinalMLP class replaced by a FuxiCTR ``BaseModel`` that wraps ctrlab's ``FinalMLP`` (ctrlab's
layers, initialisation and ``regularization()``), so everything else is FuxiCTR's: data loader and
shuffle, Adam (not fused), ``binary_cross_entropy`` on the sigmoid, gradient clipping, plateau LR
decay, early stopping, checkpoint restore and metrics::

    PYTHONPATH=src .peers/fuxictr-venv/bin/python benchmarks/peers/finalmlp_hybrid.py \\
        --fuxictr .peers/FuxiCTR --models FinalMLP --seeds 2021 2022 \\
        --json runs/fidelity/hybrid.json --work-dir runs/fidelity/fuxictr-work

(any ``run_fuxictr.py`` option; ``--json`` is required so the real results file is never touched).
Its test AUC lands near FuxiCTR's if the gap comes from ctrlab's training loop, data order or
optimizer, and near ctrlab's if it comes from the network, its initialisation or its regularizer.
FuxiCTR ids (0 = padding, 1..n = known values, n + 1 = OOV) become ctrlab ids (0 = padding,
1 = OOV, 2.. = known values); which row a known value gets does not matter (rows start i.i.d.).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# hyperparameters ctrlab's FinalMLP takes from run_fuxictr's parameters (= the frappe_x1 preset)
CTRLAB_KEYS = ("embedding_dim", "mlp1_hidden_units", "mlp1_hidden_activations", "mlp1_dropout",
               "mlp1_batch_norm", "mlp2_hidden_units", "mlp2_hidden_activations", "mlp2_dropout",
               "mlp2_batch_norm", "use_fs", "fs_hidden_units", "fs1_context", "fs2_context", "num_heads",
               "embedding_regularizer", "net_regularizer")


def ctrlab_feature_map_path(ctrlab_python: str, dataset: str) -> Path:
    """ctrlab's encoded feature map of ``dataset``, asked of ctrlab's own venv (as run_fuxictr.py does)."""
    out = subprocess.run(
        [ctrlab_python, "-c", "import json; from ctrlab.api import dataset_config, load_run_config; "
         "from ctrlab.data.pipeline import prepare; "
         f"print(prepare(dataset_config(load_run_config(None, [], dataset={dataset!r})), log=lambda *a: None).path)"],
        check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1]) / "feature_map.json"


def main() -> int:
    if "--json" not in sys.argv:
        sys.exit("pass --json PATH (a results file of its own)")
    import torch
    from fuxictr.pytorch.models import BaseModel

    from ctrlab.data.feature_map import FeatureMap as CtrlabFeatureMap
    from ctrlab.models import create

    spec = importlib.util.spec_from_file_location("run_fuxictr", HERE / "run_fuxictr.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    argv = sys.argv[1:]
    ctrlab_python = (argv[argv.index("--ctrlab-python") + 1] if "--ctrlab-python" in argv
                     else str(rf.REPO / ".venv" / "bin" / "python"))
    cmap = CtrlabFeatureMap.load(ctrlab_feature_map_path(ctrlab_python, "frappe_x1_subset"))

    class CtrlabFinalMLP(BaseModel):
        def __init__(self, feature_map, model_id="FinalMLP", gpu=-1, learning_rate=1e-3,
                     embedding_regularizer=None, net_regularizer=None, **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, embedding_regularizer=embedding_regularizer,
                             net_regularizer=net_regularizer, **kwargs)
            hp = {k: kwargs[k] for k in CTRLAB_KEYS if k in kwargs}
            hp.update(embedding_regularizer=embedding_regularizer or 0.0, net_regularizer=net_regularizer or 0.0)
            self.net = create("FinalMLP", cmap, **hp)  # ctrlab's init, from the seeded global torch RNG
            self.fields = [(c.name, int(c.vocab_size)) for c in cmap.categorical]
            for name, size in self.fields:
                if feature_map.features[name]["vocab_size"] != size:
                    raise SystemExit(f"vocabulary of {name} differs: FuxiCTR "
                                     f"{feature_map.features[name]['vocab_size']}, ctrlab {size}")
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.model_to_device()

        def regularization_loss(self):
            return self.net.regularization()  # ctrlab's: (lambda / 2) * sum of squares of every table

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            cols = []
            for name, size in self.fields:
                f = X[name].long()
                cols.append(torch.where(f == size - 1, torch.ones_like(f), torch.where(f == 0, f, f + 1)))
            logit = self.net({"cat": torch.stack(cols, dim=1)})["logit"]
            return {"y_pred": torch.sigmoid(logit).view(-1, 1)}

    original = rf.load_model_class
    rf.load_model_class = lambda root, model: CtrlabFinalMLP if model == "FinalMLP" else original(root, model)
    return rf.main()


if __name__ == "__main__":
    sys.exit(main())
