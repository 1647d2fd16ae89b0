"""Run FuxiCTR's models on ctrlab's splits, with the hyperparameters of ctrlab's presets.

Peer comparison for docs/results.md, for every ctrlab model that FuxiCTR also has: the same
train/valid/test files that ctrlab trains on are fed through FuxiCTR's own pipeline
(FeatureProcessor + build_dataset -> parquet, RankDataLoader, BaseModel.fit / evaluate), on CPU.

* ``frappe_x1_subset`` (CSV): the BARS Frappe_x1 tuned hyperparameters (reczoo/BARS
  ranking/ctr/<Model>/<Model>_frappe_x1) for DNN, WideDeep, DeepFM, DCN, DCNv2,
  xDeepFM, IPNN, AutoInt, AutoInt+, FGCNN and FinalMLP.
* ``movielens_100k`` (Parquet, with the ``genres`` and ``history`` sequence fields): DNN and DIN
  with the values of ctrlab's presets ``configs/presets/movielens_100k/``.

Nothing here imports ctrlab: this script runs with the FuxiCTR venv made by setup_fuxictr.sh,
and ctrlab's venv is only called (in a subprocess) to locate the prepared split when --data-dir
is not given.

    benchmarks/peers/setup_fuxictr.sh .peers/FuxiCTR
    .peers/fuxictr-venv/bin/python benchmarks/peers/run_fuxictr.py --fuxictr .peers/FuxiCTR \\
        --dataset frappe_x1_subset          # all its models x seeds 2021-2023

Results go to benchmarks/peers/results/fuxictr_<dataset>.json (``--json``), rewritten after
every run: runs already there for other models/seeds are kept and a re-run (model, seed)
replaces its old entry, so an interrupted sweep loses at most one run and ``--skip-done``
continues it.

Protocol (FuxiCTR's BaseModel, unchanged): Adam lr 1e-3, batch 4096, evaluate on valid after
every epoch, monitor valid AUC (improvement > 1e-6), on a non-improving epoch multiply the LR
by 0.1, stop after 2 non-improving epochs in a row (max 100 epochs), reload the best
checkpoint, then evaluate valid and test (AUC, logloss). embedding_regularizer is FuxiCTR's
L2 penalty reg/2 * ||E||^2 over every embedding table, added to each batch's loss.

The only deviation from BARS' configs is monitor={'AUC': 1, 'logloss': 0} instead of 'AUC':
the monitored value is identical (AUC + 0 * logloss), but FuxiCTR then also computes and logs
the valid logloss of every epoch, which goes into the per-epoch history.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SEEDS = [2021, 2022, 2023]
FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
          "country", "city"]

# ctrlab model name -> (model_zoo sub-directory holding its src/ package (FuxiCTR v2.3.x layout),
# FuxiCTR class name in that package)
MODEL_DIRS = {
    "DNN": ("DNN/DNN_torch", "DNN"),
    "DeepFM": ("DeepFM/DeepFM_torch", "DeepFM"),
    "DCNv2": ("DCNv2", "DCNv2"),
    "FinalMLP": ("FinalMLP", "FinalMLP"),
    "WideDeep": ("WideDeep/WideDeep_torch", "WideDeep"),
    "DCN": ("DCN/DCN_torch", "DCN"),
    "xDeepFM": ("xDeepFM", "xDeepFM"),
    "IPNN": ("PNN", "PNN"),
    "AutoInt": ("AutoInt", "AutoInt"),
    "AutoIntPlus": ("AutoInt", "AutoInt"),
    "FGCNN": ("FGCNN", "FGCNN"),
    "DIN": ("DIN", "DIN"),
}

# Shared by all models: the BARS Frappe_x1 protocol. Per model below: the BARS Frappe_x1 tuned
# configs (DNN_frappe_x1_001_ad0f0fce, DeepFM_frappe_x1_001_4ae3a56e, DCNv2_frappe_x1_007_c207b717,
# FinalMLP_frappe_x1_004_e1ab402f, WideDeep_frappe_x1_030_af559975, DCN_frappe_x1_013_efa58c31,
# xDeepFM_frappe_x1_005_447fa536, PNN_frappe_x1_020_f371a3ab, AutoInt_frappe_x1_005_2b296630,
# AutoInt+ = AutoInt_frappe_x1_006_dba8e61c); FGCNN has no BARS Frappe run: the same values as
# ctrlab's preset src/ctrlab/configs/presets/frappe_x1/FGCNN.yaml. These must stay equal to
# ctrlab's presets in that folder (tests/benchmarks/test_peer_presets.py checks it).
COMMON = {
    "loss": "binary_crossentropy",
    "metrics": ["AUC", "logloss"],
    "task": "binary_classification",
    "optimizer": "adam",
    "learning_rate": 1.0e-3,
    "batch_size": 4096,
    "embedding_dim": 10,
    "embedding_regularizer": 0.05,
    "net_regularizer": 0,
    "epochs": 100,
    "shuffle": True,
    "monitor": {"AUC": 1, "logloss": 0},  # == BARS' monitor 'AUC'; also logs valid logloss
    "monitor_mode": "max",
    "early_stop_patience": 2,
    "reduce_lr_on_plateau": True,
    "save_best_only": True,
    "eval_steps": None,
    "max_gradient_norm": 10.0,
    "gpu": -1,
    "verbose": 0,  # 0: no tqdm bars; FuxiCTR still logs every epoch's metrics
    "debug_mode": False,
    "group_id": None,
    "use_features": None,
    "feature_specs": None,
    "feature_config": None,
    "pickle_feature_encoder": True,
}

FRAPPE_MODEL_PARAMS = {
    "DNN": {
        "hidden_units": [400, 400, 400],
        "hidden_activations": "relu",
        "net_dropout": 0.2,
        "batch_norm": True,
    },
    "DeepFM": {
        "hidden_units": [400, 400, 400],
        "hidden_activations": "relu",
        "net_dropout": 0.2,
        "batch_norm": True,
    },
    "DCNv2": {
        "model_structure": "parallel",
        "use_low_rank_mixture": False,
        "low_rank": 32,
        "num_experts": 4,
        "stacked_dnn_hidden_units": [500, 500, 500],  # unused by the parallel structure
        "parallel_dnn_hidden_units": [400, 400, 400],
        "dnn_activations": "relu",
        "num_cross_layers": 4,
        "net_dropout": 0.4,
        "batch_norm": True,
    },
    "FinalMLP": {
        "mlp1_hidden_units": [400],
        "mlp1_hidden_activations": "relu",
        "mlp1_dropout": 0.4,
        "mlp1_batch_norm": True,
        "mlp2_hidden_units": [100],
        "mlp2_hidden_activations": "relu",
        "mlp2_dropout": 0.4,
        "mlp2_batch_norm": True,
        "use_fs": True,
        "fs_hidden_units": [400],
        "fs1_context": ["user"],
        "fs2_context": ["item"],
        "num_heads": 5,
    },
    "WideDeep": {
        "hidden_units": [400, 400, 400],
        "hidden_activations": "relu",
        "net_dropout": 0.6,
        "batch_norm": True,
        "embedding_regularizer": 0.1,
    },
    "DCN": {
        "dnn_hidden_units": [400, 400, 400],
        "dnn_activations": "relu",
        "num_cross_layers": 3,
        "net_dropout": 0.2,
        "batch_norm": True,
    },
    "xDeepFM": {
        "dnn_hidden_units": [400, 400, 400],
        "dnn_activations": "relu",
        "cin_hidden_units": [64],
        "net_dropout": 0.2,
        "batch_norm": True,
        "embedding_regularizer": 0.1,
    },
    "IPNN": {
        "hidden_units": [400, 400, 400],
        "hidden_activations": "relu",
        "net_dropout": 0.3,
        "batch_norm": False,
        "product_type": "inner",
    },
    "AutoInt": {
        "dnn_hidden_units": [],
        "dnn_activations": "relu",
        "attention_layers": 6,
        "num_heads": 4,
        "attention_dim": 128,
        "net_dropout": 0.0,
        "batch_norm": False,
        "layer_norm": False,
        "use_scale": False,
        "use_wide": False,
        "use_residual": True,
    },
    "AutoIntPlus": {
        "dnn_hidden_units": [400, 400, 400],
        "dnn_activations": "relu",
        "attention_layers": 5,
        "num_heads": 4,
        "attention_dim": 128,
        "net_dropout": 0.1,
        "batch_norm": True,
        "layer_norm": True,
        "use_scale": True,
        "use_wide": False,
        "use_residual": True,
        "embedding_regularizer": 0.1,
    },
    "FGCNN": {
        "share_embedding": False,
        "channels": [14, 16, 18, 20],
        "kernel_heights": [7, 7, 7, 7],
        "pooling_sizes": [2, 2, 2, 2],
        "recombined_channels": [3, 3, 3, 3],
        "conv_activation": "Tanh",
        "conv_batch_norm": True,
        "dnn_hidden_units": [400, 400, 400],
        "dnn_activations": "ReLU",
        "dnn_batch_norm": True,
        "net_dropout": 0.2,
    },
}


# movielens_100k is not a BARS dataset: one hand-picked setting (not tuned), equal to ctrlab's
# presets src/ctrlab/configs/presets/movielens_100k/{DNN,DIN}.yaml (same check as above).
MOVIELENS_COMMON = {"embedding_dim": 16, "embedding_regularizer": 0.01}
MOVIELENS_MODEL_PARAMS = {
    "DNN": {
        "hidden_units": [256, 128],
        "hidden_activations": "relu",
        "net_dropout": 0.1,
        "batch_norm": False,
    },
    "DIN": {
        "din_target_field": "item_id",
        "din_sequence_field": "history",
        "attention_hidden_units": [64],
        "attention_hidden_activations": "Dice",
        "attention_output_activation": None,
        "attention_dropout": 0.0,
        "din_use_softmax": False,
        "dnn_hidden_units": [256, 128],
        "dnn_activations": "ReLU",
        "net_dropout": 0.1,
        "batch_norm": False,
    },
}
# FuxiCTR keeps a sequence field's (batch, length, dim) embedding unless a feature_encoder pools
# it; ctrlab mean-pools every sequence over its real (non-padding) positions, which is
# MaskedAveragePooling. DIN pools `history` itself (target attention), so only DNN pools it here.
MASKED_MEAN = "layers.MaskedAveragePooling()"
MOVIELENS_FEATURES = [
    {"name": ["user_id", "item_id", "age", "gender", "occupation", "zip_prefix", "release_year"],
     "active": True, "dtype": "str", "type": "categorical"},
    {"name": "genres", "active": True, "dtype": "str", "type": "sequence", "splitter": "^",
     "max_len": 6, "padding": "post", "feature_encoder": MASKED_MEAN},
    {"name": "history", "active": True, "dtype": "str", "type": "sequence", "splitter": "^",
     "max_len": 20, "padding": "post", "share_embedding": "item_id",
     "feature_encoder": None},  # FuxiCTR's default for sequences is MaskedAveragePooling
]

# dataset -> how FuxiCTR reads ctrlab's split files and which models / parameters run on it
DATASETS = {
    "frappe_x1_subset": {
        "data_format": "csv",
        "feature_cols": [{"name": FIELDS, "active": True, "dtype": "str", "type": "categorical"}],
        "common": {},
        "model_params": FRAPPE_MODEL_PARAMS,
        "feature_specs": {},
    },
    "movielens_100k": {
        "data_format": "parquet",
        "feature_cols": MOVIELENS_FEATURES,
        "common": MOVIELENS_COMMON,
        "model_params": MOVIELENS_MODEL_PARAMS,
        "feature_specs": {"DNN": [{"name": "history", "feature_encoder": MASKED_MEAN}]},
    },
}


def ctrlab_split_files(ctrlab_python: str, data_dir_env: str | None, dataset: str) -> dict[str, str]:
    """Ask ctrlab (its own venv, a subprocess) where its prepared split files are."""
    code = (
        "import json; from ctrlab.data.datasets import get_dataset; "
        f"c = get_dataset({dataset!r}); print(json.dumps(c.files))"
    )
    env = dict(os.environ, **({"CTRLAB_DATA_DIR": data_dir_env} if data_dir_env else {}))
    out = subprocess.run([ctrlab_python, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    files = json.loads(out.strip().splitlines()[-1])
    return {k: files[k] for k in ("train", "valid", "test")}


def data_digest(files: dict[str, str], feature_cols: list[dict]) -> str:
    """Names FuxiCTR's encoded copy: changes with the file bytes or the feature definitions
    (build_dataset reuses an existing feature_map.json of the same dataset_id)."""
    h = hashlib.sha1()
    for split in ("train", "valid", "test"):
        h.update(Path(files[split]).read_bytes())
    h.update(json.dumps(feature_cols, sort_keys=True).encode())
    return h.hexdigest()[:8]


def load_model_class(fuxictr_root: Path, model: str):
    """Import model_zoo/<dir>/src from the checkout under a unique package name.

    Every model_zoo entry calls its package `src`, so each gets its own module name here.
    """
    zoo_dir, class_name = MODEL_DIRS[model]
    src = fuxictr_root / "model_zoo" / zoo_dir / "src"
    name = f"fuxictr_model_zoo_{zoo_dir.replace('/', '_')}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, src / "__init__.py", submodule_search_locations=[str(src)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[name], class_name)


def quiet_console(verbose: bool) -> None:
    """FuxiCTR's set_logger logs to a per-run file and to stderr; keep stderr to warnings."""
    if not verbose:
        for h in logging.root.handlers:
            if type(h) is logging.StreamHandler:
                h.setLevel(logging.WARNING)


def write_json(path: Path, data: dict) -> None:
    """Write atomically (a killed run never leaves a truncated results file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--fuxictr", required=True, type=Path,
                    help="FuxiCTR source checkout (for model_zoo/) at the installed version's tag")
    ap.add_argument("--dataset", choices=list(DATASETS), default="frappe_x1_subset")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="folder with train/valid/test.<csv|parquet> (default: ask ctrlab for its "
                         "prepared split of --dataset)")
    ap.add_argument("--ctrlab-python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="python of ctrlab's venv, used only to locate the split")
    ap.add_argument("--ctrlab-data-dir",
                    default=os.environ.get("CTRLAB_DATA_DIR"),
                    help="CTRLAB_DATA_DIR for that lookup")
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODEL_DIRS),
                    help="default: every model configured for --dataset")
    ap.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS)
    ap.add_argument("--embedding-regularizer", type=float, default=None,
                    help="override the configured embedding_regularizer, e.g. 0 for the ablation")
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "peers" / "fuxictr",
                    help="FuxiCTR's parquet data, checkpoints and per-run logs go here")
    ap.add_argument("--json", type=Path, default=None,
                    help="results JSON (default benchmarks/peers/results/fuxictr_<dataset>.json); "
                         "its runs of other models/seeds are kept")
    ap.add_argument("--skip-done", action="store_true",
                    help="skip (model, seed) runs already in the JSON with the same parameters")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="DataLoader worker processes (BARS used 3; batch collation only)")
    ap.add_argument("--verbose", action="store_true", help="echo FuxiCTR's log to stderr")
    args = ap.parse_args()
    spec = DATASETS[args.dataset]
    if args.models is None:
        args.models = list(spec["model_params"])
    unknown = [m for m in args.models if m not in spec["model_params"]]
    if unknown:
        ap.error(f"no {args.dataset} configuration for {unknown}; configured: {list(spec['model_params'])}")
    if args.json is None:  # ablations (another embedding_regularizer) never mix into the main file
        tag = "" if args.embedding_regularizer is None else f"_embreg{args.embedding_regularizer:g}"
        args.json = REPO / "benchmarks" / "peers" / "results" / f"fuxictr_{args.dataset}{tag}.json"

    fuxictr_root = args.fuxictr.resolve()
    if not (fuxictr_root / "model_zoo").is_dir():
        ap.error(f"{fuxictr_root} has no model_zoo/ (need a FuxiCTR source checkout)")

    import torch  # noqa: E402  (after arg parsing so --help is fast)
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr.utils import set_logger

    version_py = (fuxictr_root / "fuxictr" / "version.py").read_text()
    ckpt_version = version_py.split("=")[-1].strip(" \"'\n")
    if ckpt_version != fuxictr.__version__:
        ap.error(f"checkout is FuxiCTR {ckpt_version} but the installed package is "
                 f"{fuxictr.__version__}; run setup_fuxictr.sh with this checkout")
    # sklearn 1.4 warns on every log_loss(eps=1e-7) call that FuxiCTR 2.3.x makes
    warnings.filterwarnings("ignore", message="Setting the eps parameter is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)

    if args.data_dir is not None:
        files = {s: str((args.data_dir / f"{s}.{spec['data_format']}").resolve())
                 for s in ("train", "valid", "test")}
    else:
        files = ctrlab_split_files(args.ctrlab_python, args.ctrlab_data_dir, args.dataset)
    for split, path in files.items():
        if not Path(path).is_file():
            ap.error(f"missing {split} split: {path}")

    # ---- FuxiCTR dataset: ctrlab's fields and types, min_categr_count 1, label 'label' ----
    dataset_id = f"{args.dataset}_{data_digest(files, spec['feature_cols'])}"
    data_root = args.work_dir / "data"
    dataset_params = {
        "dataset_id": dataset_id,
        "data_root": str(data_root),
        "data_format": spec["data_format"],
        "train_data": files["train"],
        "valid_data": files["valid"],
        "test_data": files["test"],
        "min_categr_count": 1,
        "feature_cols": spec["feature_cols"],
        "label_col": {"name": "label", "dtype": "float"},
    }
    data_dir = data_root / dataset_id
    # build_dataset skips the work when feature_map.json exists (same file bytes -> same id)
    set_logger({"dataset_id": dataset_id, "model_id": "build_dataset",
                "model_root": str(args.work_dir / "checkpoints")})
    quiet_console(args.verbose)
    feature_encoder = FeatureProcessor(**dataset_params)
    train_data, valid_data, test_data = build_dataset(feature_encoder, **dataset_params)
    split_paths = {"train_data": train_data, "valid_data": valid_data, "test_data": test_data}

    print(f"FuxiCTR {fuxictr.__version__} ({fuxictr_root}), torch {torch.__version__}, "
          f"{args.threads} thread(s); data {dataset_id}: {files['train']} (+ valid/test)",
          flush=True)

    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if old and old.get("dataset_id") != dataset_id:
        ap.error(f"{args.json} holds runs on other data ({old.get('dataset_id')} != {dataset_id}); "
                 "pass another --json or remove it")
    runs = old.get("runs", [])
    t_all = time.time()
    for model_name in args.models:
        model_class = load_model_class(fuxictr_root, model_name)
        for seed in args.seeds:
            params = dict(COMMON)
            params.update(spec["common"])
            params.update(spec["model_params"][model_name])
            params["feature_specs"] = spec["feature_specs"].get(model_name)
            if args.embedding_regularizer is not None:
                params["embedding_regularizer"] = args.embedding_regularizer
            # what defines the run, as it reads back from the JSON
            run_params = json.loads(json.dumps({k: params[k] for k in sorted(params)}, default=str))
            key = (model_name, seed, params["embedding_regularizer"])
            previous = [r for r in runs if (r["model"], r["seed"], r["embedding_regularizer"]) == key]
            if args.skip_done and previous and previous[0].get("params") == run_params:
                print(f"{model_name:9s} seed {seed}: already in {args.json}, skipped", flush=True)
                continue
            params.update(dataset_params)
            params.update(split_paths)
            tag = ("" if args.embedding_regularizer is None
                   else f"_embreg{args.embedding_regularizer:g}")
            params.update({
                "model": MODEL_DIRS[model_name][1],
                "model_id": f"{model_name}{tag}_s{seed}",
                "model_root": str(args.work_dir / "checkpoints"),
                "seed": seed,
                "num_workers": args.num_workers,
            })
            # same order as FuxiCTR's model_zoo run_expid.py
            set_logger(params)
            quiet_console(args.verbose)
            logging.info("Params: " + json.dumps(params, default=str, sort_keys=True))
            seed_everything(seed=seed)
            feature_map = FeatureMap(dataset_id, str(data_dir))
            feature_map.load(str(data_dir / "feature_map.json"), params)
            t0 = time.time()
            model = model_class(feature_map, **params)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            model.count_parameters()

            # Record each epoch's validation metrics and the LR it was trained with, as seen
            # by FuxiCTR's own early-stopping hook (behaviour unchanged).
            history = []
            hook = model.checkpoint_and_earlystop

            def record(logs, *a, _hook=hook, _model=model, _history=history, **kw):
                _history.append({"epoch": _model._epoch_index + 1,
                                 "lr": _model.optimizer.param_groups[0]["lr"],
                                 **{k: float(v) for k, v in logs.items()}})
                return _hook(logs, *a, **kw)

            model.checkpoint_and_earlystop = record

            loader = RankDataLoader(feature_map, stage="train", **params)
            train_gen, valid_gen = loader.make_iterator()
            model.fit(train_gen, validation_data=valid_gen, **params)
            t_fit = time.time() - t0
            logging.info("****** Validation evaluation ******")
            valid = model.evaluate(valid_gen)
            logging.info("******** Test evaluation ********")
            test_gen = RankDataLoader(feature_map, stage="test", **params).make_iterator()
            test = model.evaluate(test_gen)
            seconds = time.time() - t0

            best = max(history, key=lambda r: r["AUC"]) if history else None
            run = {
                "model": model_name,
                "seed": seed,
                "embedding_regularizer": params["embedding_regularizer"],
                "epochs": len(history),
                "best_epoch": best["epoch"] if best else None,
                "parameters": n_params,
                "valid": {k: float(v) for k, v in valid.items()},
                "test": {k: float(v) for k, v in test.items()},
                "seconds": round(seconds, 1),
                "seconds_per_epoch": round(t_fit / max(1, len(history)), 2),
                "history": history,
                "log": str(Path(params["model_root"]) / dataset_id / (params["model_id"] + ".log")),
            }
            run["params"] = run_params
            runs = [r for r in runs if (r["model"], r["seed"], r["embedding_regularizer"]) != key] + [run]
            write_json(args.json, {
                "fuxictr_version": fuxictr.__version__,
                "fuxictr_checkout": str(fuxictr_root),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": args.threads,
                "dataset": args.dataset,
                "data": files,
                "dataset_id": dataset_id,
                "runs": runs,
            })
            print(f"{model_name:9s} seed {seed}: epochs {run['epochs']:3d} "
                  f"(best {run['best_epoch']}) "
                  f"valid AUC {run['valid']['AUC']:.6f} logloss {run['valid']['logloss']:.6f} | "
                  f"test AUC {run['test']['AUC']:.6f} logloss {run['test']['logloss']:.6f} | "
                  f"{seconds:.0f} s", flush=True)

    # ---- summary (every model in the JSON) ----
    print("\n| model | emb reg | seeds | test AUC | test logloss | valid AUC | epochs | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model_name]
        print(f"| {model_name} | {rs[0]['embedding_regularizer']:g} | {len(rs)} | "
              f"{mean_std([r['test']['AUC'] for r in rs])} | "
              f"{mean_std([r['test']['logloss'] for r in rs])} | "
              f"{mean_std([r['valid']['AUC'] for r in rs])} | "
              f"{statistics.mean(r['epochs'] for r in rs):.1f} | "
              f"{statistics.mean(r['seconds_per_epoch'] for r in rs):.2f} |")
    print(f"\ntotal {time.time() - t_all:.0f} s; results in {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
