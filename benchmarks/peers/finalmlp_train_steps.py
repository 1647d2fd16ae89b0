"""Issue 14.11: FuxiCTR's and ctrlab's FinalMLP take the same training steps from the same weights.

Run in the FuxiCTR venv with ctrlab's sources on PYTHONPATH (after run_fuxictr.py built
frappe_x1_subset under runs/fidelity/fuxictr-work, or pass --work-dir):

    PYTHONPATH=src .peers/fuxictr-venv/bin/python benchmarks/peers/finalmlp_train_steps.py \\
        --ctrlab-map ~/.cache/ctrlab/encoded/frappe_x1_subset-<hash>/feature_map.json

Builds FuxiCTR's FinalMLP (seed 2021, BARS Frappe_x1 parameters), copies every weight into
ctrlab's FinalMLP (embedding rows mapped FuxiCTR id -> ctrlab id, padding rows zero), then runs
36 training steps on the same batches in both: FuxiCTR's own ``train_step`` (BCE on the sigmoid +
its regularizer, clipping at 10, Adam) and the same recipe on ctrlab's model (with ctrlab's
``regularization()``), with the torch seed reset before each step so both draw the same dropout
masks. It prints both losses and the relative parameter differences: equal to float32 rounding
after the first steps (1e-7), then drifting apart as rounding differences grow (training is chaotic).
"""
import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
CTRLAB_KEYS = ("embedding_dim", "mlp1_hidden_units", "mlp1_hidden_activations", "mlp1_dropout", "mlp1_batch_norm",
               "mlp2_hidden_units", "mlp2_hidden_activations", "mlp2_dropout", "mlp2_batch_norm", "use_fs",
               "fs_hidden_units", "fs1_context", "fs2_context", "num_heads", "embedding_regularizer")
REPORT_AT = (1, 2, 5, 12, 24, 36)


def ctrlab_id(f, size: int):
    """FuxiCTR id (0 pad, 1..n values, n+1 OOV) -> ctrlab id (0 pad, 1 OOV, 2.. values)."""
    import torch

    return torch.where(f == size - 1, torch.ones_like(f), torch.where(f == 0, f, f + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctrlab-map", required=True, help="ctrlab's encoded feature_map.json of frappe_x1_subset")
    ap.add_argument("--work-dir", default="runs/fidelity/fuxictr-work", help="run_fuxictr.py's --work-dir")
    ap.add_argument("--fuxictr", default=".peers/FuxiCTR", help="FuxiCTR checkout (model_zoo/)")
    args = ap.parse_args()

    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    from ctrlab.data.feature_map import FeatureMap as CtrlabFeatureMap
    from ctrlab.models import create

    spec = importlib.util.spec_from_file_location("run_fuxictr", HERE / "run_fuxictr.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    torch.set_num_threads(1)
    built = sorted((Path(args.work_dir) / "data").glob("frappe_x1_subset_*/feature_map.json"))[-1]
    dd = built.parent
    params = {**rf.COMMON, **rf.FRAPPE_MODEL_PARAMS["FinalMLP"], "model_root": str(Path(args.work_dir) / "checkpoints"),
              "model_id": "FinalMLP_train_steps", "dataset_id": dd.name, "data_root": str(dd.parent),
              "train_data": str(dd / "train"), "valid_data": str(dd / "valid"), "test_data": str(dd / "test"),
              "data_format": "parquet", "seed": 2021, "num_workers": 0}
    seed_everything(2021)
    fm = FeatureMap(dd.name, str(dd))
    fm.load(str(built), params)
    fx = rf.load_model_class(Path(args.fuxictr).resolve(), "FinalMLP")(fm, **params)
    fx._max_gradient_norm = 10.0  # what fit() sets before train_step
    cl = create("FinalMLP", CtrlabFeatureMap.load(args.ctrlab_map), **{k: params[k] for k in CTRLAB_KEYS})
    fields = [(c.name, int(c.vocab_size)) for c in cl.feature_map.categorical]

    with torch.no_grad():  # FuxiCTR's weights into ctrlab's model
        def copy_table(table, emb_dict, names):
            offset = 0
            for name, size in fields:
                if name in names:
                    table.weight[offset + ctrlab_id(torch.arange(size), size)] = emb_dict.embedding_layers[name].weight
                    offset += size

        copy_table(cl.embedding.embedding, fx.embedding_layer.embedding_layer, [n for n, _ in fields])
        copy_table(cl.gate1.context_embedding.embedding, fx.fs_module.fs1_ctx_emb.embedding_layer, ["user"])
        copy_table(cl.gate2.context_embedding.embedding, fx.fs_module.fs2_ctx_emb.embedding_layer, ["item"])
        state = fx.state_dict()
        for module, prefix in [(cl.mlp1, "mlp1."), (cl.mlp2, "mlp2."), (cl.gate1.mlp, "fs_module.fs1_gate."),
                               (cl.gate2.mlp, "fs_module.fs2_gate.")]:
            theirs = [v for k, v in state.items() if k.startswith(prefix)]
            module.load_state_dict(dict(zip(list(module.state_dict()), theirs)))
        cl.fusion.w1.load_state_dict({"weight": state["fusion_module.w_x.weight"], "bias": state["fusion_module.w_x.bias"]})
        cl.fusion.w2.load_state_dict({"weight": state["fusion_module.w_y.weight"], "bias": state["fusion_module.w_y.bias"]})
        cl.fusion.W.copy_(state["fusion_module.w_xy"].view(cl.fusion.num_heads, cl.fusion.h1, cl.fusion.h2))
    opt = torch.optim.Adam(cl.parameters(), lr=params["learning_rate"])

    def rel(a, b) -> float:
        return ((a - b).norm() / b.norm()).item()

    def report(step: int) -> None:
        with torch.no_grad():
            theirs, ours, offset = [], [], 0
            for name, size in fields:
                theirs.append(fx.embedding_layer.embedding_layer.embedding_layers[name].weight)
                ours.append(cl.embedding.embedding.weight[offset + ctrlab_id(torch.arange(size), size)])
                offset += size
            bn_f, bn_c = fx.mlp1.mlp[1], cl.mlp1.hidden[1]
            d = {"main embedding": rel(torch.cat(ours), torch.cat(theirs)),
                 "fusion W": rel(cl.fusion.W, fx.fusion_module.w_xy.view_as(cl.fusion.W)),
                 "mlp1 first weight": rel(cl.mlp1.hidden[0].weight, fx.mlp1.mlp[0].weight),
                 "bn1 running_var": rel(bn_c.running_var, bn_f.running_var),
                 # ~0 (the Linear bias before BN has a zero gradient, up to rounding): absolute
                 "bn1 running_mean max |diff|": (bn_c.running_mean - bn_f.running_mean).abs().max().item()}
        print(step, {k: f"{v:.1e}" for k, v in d.items()}, flush=True)

    fx.train()
    cl.train()
    train_gen, _ = RankDataLoader(fm, stage="train", **params).make_iterator()
    batches = list(train_gen)
    report(0)
    for step, batch in enumerate(batches * 3, 1):
        torch.manual_seed(1000 + step)  # the same dropout masks in both (same layers, same order)
        loss_f = fx.train_step(batch).item()
        torch.manual_seed(1000 + step)
        opt.zero_grad()
        X = fx.get_inputs(batch)
        ids = torch.stack([ctrlab_id(X[name].long(), size) for name, size in fields], dim=1)
        prob = torch.sigmoid(cl({"cat": ids})["logit"]).view(-1, 1)
        loss = torch.nn.functional.binary_cross_entropy(prob, fx.get_labels(batch)) + cl.regularization()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cl.parameters(), 10.0)
        opt.step()
        if step in REPORT_AT:
            print(f"loss FuxiCTR {loss_f:.7f} ctrlab {loss.item():.7f}", end="  ")
            report(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
