"""Check that ctrlab's FinalMLP computes what FuxiCTR's FinalMLP computes, to float32 rounding.

Two steps, one per venv (this file imports neither library at the top):

    # 1. FuxiCTR venv (after run_fuxictr.py has built frappe_x1_subset under --work-dir):
    .peers/fuxictr-venv/bin/python benchmarks/peers/finalmlp_equivalence.py dump \\
        --fuxictr .peers/FuxiCTR --work-dir runs/peers/fuxictr --out runs/peers/finalmlp_fuxictr.pt
    # 2. ctrlab venv:
    .venv/bin/python benchmarks/peers/finalmlp_equivalence.py compare runs/peers/finalmlp_fuxictr.pt

Step 1 builds FuxiCTR's FinalMLP with the BARS Frappe_x1 parameters of run_fuxictr.py, gives its
BatchNorm layers random statistics and affine parameters (so they matter), takes one test batch,
scales the embeddings to O(0.1) (at init they are ~1e-4, which would make every layer look
linear), and saves the weights, the inputs of the network after the embedding lookup (flattened
embeddings, the two gate contexts), the logit, the BCE loss and every gradient. Step 2 loads
those weights into ctrlab's FinalMLP (gates, both MLPs, the bilinear fusion), runs the same
inputs forward and backward, and prints the largest differences; it exits 1 when the logit or
any gradient differs by more than 1e-5 (relative). The embedding lookup itself is not compared
(different vocabularies); it is the same FeatureEmbedding that DNN, DeepFM and DCNv2 use.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5


def dump(args) -> int:
    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    spec = importlib.util.spec_from_file_location("run_fuxictr", HERE / "run_fuxictr.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    torch.set_num_threads(1)
    # the newest FuxiCTR build of frappe_x1_subset (run_fuxictr.py --dataset frappe_x1_subset made it)
    built = sorted((args.work_dir / "data").glob("frappe_x1_subset_*/feature_map.json"), key=lambda f: f.stat().st_mtime)
    if not built:
        sys.exit(f"no FuxiCTR frappe_x1_subset build under {args.work_dir}/data "
                 "(run run_fuxictr.py --dataset frappe_x1_subset --work-dir ... first)")
    data_dir = built[-1].parent
    dataset_id = data_dir.name
    params = {**rf.COMMON, **rf.FRAPPE_MODEL_PARAMS["FinalMLP"], "model_root": str(args.work_dir / "checkpoints"),
              "model_id": "FinalMLP_equivalence", "dataset_id": dataset_id, "data_root": str(data_dir.parent),
              "train_data": str(data_dir / "train"), "valid_data": str(data_dir / "valid"),
              "test_data": str(data_dir / "test"), "data_format": "parquet", "seed": 1, "num_workers": 0}
    seed_everything(1)
    feature_map = FeatureMap(dataset_id, str(data_dir))
    feature_map.load(str(built[-1]), params)
    model = rf.load_model_class(args.fuxictr.resolve(), "FinalMLP")(feature_map, **params)
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    model.eval()
    batch = next(iter(RankDataLoader(feature_map, stage="test", **params).make_iterator()))
    X, y_true = model.get_inputs(batch), model.get_labels(batch)
    fs = model.fs_module
    flat = (model.embedding_layer(X).flatten(start_dim=1) * 1000).detach().requires_grad_(True)
    c1 = (fs.fs1_ctx_emb(X).flatten(start_dim=1) * 1000).detach()
    c2 = (fs.fs2_ctx_emb(X).flatten(start_dim=1) * 1000).detach()
    # FuxiCTR's FinalMLP.forward after the embedding lookup (fs gates -> two MLPs -> fusion)
    logit = model.fusion_module(model.mlp1(flat * fs.fs1_gate(c1) * 2), model.mlp2(flat * fs.fs2_gate(c2) * 2))
    loss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logit), y_true)
    loss.backward()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "flat": flat.detach(), "c1": c1, "c2": c2, "y_true": y_true,
                "logit": logit.detach(), "loss": loss.item(), "flat_grad": flat.grad,
                "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}, args.out)
    print(f"wrote {args.out} (FuxiCTR FinalMLP on {dataset_id}, batch of {len(y_true)}, loss {loss.item():.6f})")
    return 0


def compare(args) -> int:
    import torch

    from ctrlab.api import dataset_config, load_run_config, resolve_model_params
    from ctrlab.data.pipeline import prepare
    from ctrlab.models import create

    torch.set_num_threads(1)
    ref = torch.load(args.dump)
    cfg = load_run_config(None, [], dataset="frappe_x1_subset", model="FinalMLP")
    params, _ = resolve_model_params(cfg)
    model = create("FinalMLP", prepare(dataset_config(cfg), log=lambda *a: None).feature_map, **params).eval()
    pairs = [(model.mlp1, "mlp1."), (model.mlp2, "mlp2."),
             (model.gate1.mlp, "fs_module.fs1_gate."), (model.gate2.mlp, "fs_module.fs2_gate.")]
    for module, prefix in pairs:  # same layers in the same order: copy by position, shapes checked
        theirs = [v for k, v in ref["state"].items() if k.startswith(prefix)]
        ours = list(module.state_dict())
        assert len(ours) == len(theirs), f"{prefix}: {len(ours)} tensors here, {len(theirs)} in FuxiCTR"
        module.load_state_dict(dict(zip(ours, theirs)))
    fusion, s = model.fusion, ref["state"]
    fusion.w1.load_state_dict({"weight": s["fusion_module.w_x.weight"], "bias": s["fusion_module.w_x.bias"]})
    fusion.w2.load_state_dict({"weight": s["fusion_module.w_y.weight"], "bias": s["fusion_module.w_y.bias"]})
    fusion.W.data.copy_(s["fusion_module.w_xy"].view(fusion.num_heads, fusion.h1, fusion.h2))

    flat = ref["flat"].clone().requires_grad_(True)
    h1 = flat * model.gate1.mlp(ref["c1"]).sigmoid() * 2  # FeatureGating.gate after the context lookup
    h2 = flat * model.gate2.mlp(ref["c2"]).sigmoid() * 2
    logit = fusion(model.mlp1(h1), model.mlp2(h2))
    torch.nn.functional.binary_cross_entropy_with_logits(logit, ref["y_true"]).backward()

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    rows = [("logit", rel(logit.detach(), ref["logit"])), ("d loss / d embeddings", rel(flat.grad, ref["flat_grad"])),
            ("d loss / d W (bilinear)", rel(fusion.W.grad.reshape(-1), ref["grads"]["fusion_module.w_xy"].reshape(-1)))]
    for module, prefix in pairs:
        theirs = [v for k, v in ref["grads"].items() if k.startswith(prefix)]
        rows += [(f"d loss / d {prefix}{name}", rel(p.grad, g)) for (name, p), g in zip(module.named_parameters(), theirs)]
    for name, value in rows:
        print(f"{name:45s} relative difference {value:.1e}")
    worst = max(v for _, v in rows)
    print(f"largest relative difference {worst:.1e}: " + ("equivalent" if worst <= TOLERANCE else "DIFFERENT"))
    return 0 if worst <= TOLERANCE else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump", help="in the FuxiCTR venv")
    d.add_argument("--fuxictr", type=Path, required=True, help="FuxiCTR checkout (model_zoo/)")
    d.add_argument("--work-dir", type=Path, default=HERE.parents[1] / "runs" / "peers" / "fuxictr")
    d.add_argument("--out", type=Path, default=HERE.parents[1] / "runs" / "peers" / "finalmlp_fuxictr.pt")
    c = sub.add_parser("compare", help="in ctrlab's venv")
    c.add_argument("dump", type=Path, nargs="?", default=HERE.parents[1] / "runs" / "peers" / "finalmlp_fuxictr.pt")
    args = ap.parse_args()
    return dump(args) if args.step == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
