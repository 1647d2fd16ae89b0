"""ctrlab's side of the performance harness (benchmarks/peers/bench_peers.py), one task per process.

    .venv/bin/python benchmarks/peers/workers/ctrlab_worker.py TASK --config '<json>'

Prints progress, then as its last stdout line ``RESULT <json>``. The same protocol, tasks and
hyperparameters (``benchmarks/peers/perf_config.json``) as the FuxiCTR and DeepCTR-Torch workers;
ctrlab is run the way its users run it: ``prepare`` (Polars reader, vocabularies fitted on train,
encoded ``.npy`` cache) then the :class:`~ctrlab.train.Trainer`'s own step and ``BatchLoader``.

Tasks and what is timed:

* ``preprocess`` [tsv, work_dir]: raw headerless Criteo TSV (label, I1..I13, C1..C26) -> the
  encoded cache (fit + encode + write), from the first byte read to the arrays on disk.
* ``train`` [model, train_parquet, warmup_batches, timed_batches, threads]: the parquet is
  prepared first (not timed); a loader over ``timed_batches * batch_size`` training rows runs one
  warm-up epoch, then a second, timed epoch: loader + forward + backward + clipping + Adam step,
  exactly the trainer's loop.
* ``infer`` [model, train_parquet, rows, single_rows]: batch-4096 prediction rows/s (after one
  warm-up pass) and single-row latency p50/p99 (forward on one encoded row, after 10 warm-ups).
* ``auc`` [model, epochs]: ``epochs`` epochs on ``frappe_x1_subset`` with the same
  hyperparameters as the peers (no early stop), test AUC.

Config keys ``precision`` (``fp32`` default, ``bf16``) and ``sparse_embeddings`` (false default)
select ``trainer.precision`` / ``trainer.sparse_embeddings`` for every task: the harness's
``ctrlab-bf16``, ``ctrlab-sparse`` and ``ctrlab-fast`` (both) columns. ``shared_dir``: encoded
data cache reused across workers (train/infer prepare the Parquet once, untimed). ``compile``:
``nn.Module.compile()`` (TorchInductor) on the model, the ``ctrlab-compile`` lever.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker_memory.py, beside this file
from worker_memory import peak_rss_mb  # noqa: E402

HERE = Path(__file__).resolve().parent
PERF_CONFIG = HERE.parent / "perf_config.json"


def model_params(name: str, perf: dict) -> dict:
    """perf_config's shared hyperparameters in ctrlab's names (no dropout, BN or regularisers)."""
    m, d = perf["models"][name], perf["embedding_dim"]
    if name == "DeepFM":
        return {"embedding_dim": d, "hidden_units": m["hidden_units"], "hidden_activations": m["activation"]}
    if name == "DCNv2":
        return {"embedding_dim": d, "model_structure": m["model_structure"], "num_cross_layers": m["num_cross_layers"],
                "hidden_units": m["hidden_units"], "hidden_activations": m["activation"],
                "use_low_rank_mixture": m["low_rank"]}
    if name == "FinalMLP":
        return {"embedding_dim": d, "mlp1_hidden_units": m["mlp1_hidden_units"],
                "mlp2_hidden_units": m["mlp2_hidden_units"], "mlp1_hidden_activations": m["activation"],
                "mlp2_hidden_activations": m["activation"], "use_fs": m["use_fs"],
                "fs_hidden_units": m["fs_hidden_units"], "fs1_context": m["fs1_context"],
                "fs2_context": m["fs2_context"], "num_heads": m["num_heads"]}
    raise SystemExit(f"unknown model {name!r}; perf_config has {sorted(perf['models'])}")


def features(perf: dict) -> list[dict]:
    """The harness's fields as ctrlab features: numerics log-normalised, categoricals min count 1."""
    return ([{"name": c, "kind": "numeric", "normalizer": "log", "fill_value": 0.0} for c in perf["numeric"]]
            + [{"name": c, "kind": "categorical", "min_count": 1} for c in perf["categorical"]])


def criteo_tsv_config(tsv: Path, perf: dict):
    """A ctrlab dataset config for a headerless Criteo TSV (the same file as train, valid, test:
    the task times fitting and encoding once; valid/test reuse is cached by path)."""
    from ctrlab.data.schema import load_dataset_config

    return load_dataset_config({
        "name": "criteo_tsv", "format": "tsv", "header": False,
        "column_names": [perf["label"], *perf["numeric"], *perf["categorical"]],
        "files": {"train": str(tsv)}, "valid_fraction": 0, "labels": [perf["label"]],
        "features": features(perf),
    })


def task_preprocess(cfg: dict, perf: dict) -> dict:
    from ctrlab.data.pipeline import prepare

    dcfg = criteo_tsv_config(Path(cfg["tsv"]), perf)
    t0 = time.perf_counter()
    data = prepare(dcfg, cache_dir=Path(cfg["work_dir"]) / "cache", rebuild=True, log=lambda *a: None)
    seconds = time.perf_counter() - t0
    rows = len(data.splits["train"])
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": peak_rss_mb()}


def _prepared(cfg: dict):
    from ctrlab.data.pipeline import prepare
    from ctrlab.data.schema import load_dataset_config

    perf = cfg["_perf"]
    parquet = Path(cfg["train_parquet"])
    dcfg = load_dataset_config({
        "name": "perf_parquet", "format": "parquet", "files": {"train": str(parquet)}, "valid_fraction": 0, "labels": [perf["label"]],
        "features": features(perf),
    })
    t0 = time.perf_counter()
    cache = Path(cfg["shared_dir"]) / "ctrlab-cache" if cfg.get("shared_dir") else Path(cfg.get("work_dir") or tempfile.mkdtemp()) / "cache"
    data = prepare(dcfg, cache_dir=cache, log=lambda *a: None)  # reused when already encoded
    return data, time.perf_counter() - t0


def _build(cfg: dict, data):
    import torch

    from ctrlab.models import create
    from ctrlab.train import Trainer, TrainerConfig, seed_everything

    perf = cfg["_perf"]
    torch.set_num_threads(int(cfg.get("threads", 2)))
    seed_everything(2023)
    model = create(cfg["model"], data.feature_map, **model_params(cfg["model"], perf))
    if cfg.get("compile"):  # the harness's ctrlab-compile lever: TorchInductor on the whole model
        model.compile()
    tcfg = TrainerConfig(batch_size=perf["batch_size"], lr=perf["lr"], progress=False, device="cpu",
                         num_threads=int(cfg.get("threads", 2)), precision=cfg.get("precision", "fp32"),
                         sparse_embeddings=bool(cfg.get("sparse_embeddings", False)))
    return model, Trainer(model, tcfg, run_dir=Path(cfg.get("work_dir") or tempfile.mkdtemp()) / "run")


def task_train(cfg: dict, perf: dict) -> dict:
    from ctrlab.data.loader import BatchLoader, EncodedSplit

    data, prep = _prepared(cfg)
    model, trainer = _build(cfg, data)
    n = int(cfg.get("timed_batches", 30)) * perf["batch_size"]
    train = data.splits["train"]
    if len(train) < n:
        raise SystemExit(f"{cfg['train_parquet']}: {len(train)} rows, the task needs {n}")
    subset = EncodedSplit({k: v[:n] for k, v in train.arrays.items()})
    loader = BatchLoader(subset, perf["batch_size"], shuffle=True, seed=0)
    trainer.train_epoch(loader, epoch=0)  # warm-up: allocator, kernels, caches
    t0 = time.perf_counter()
    _, rows = trainer.train_epoch(loader, epoch=1)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": rows / seconds, "timed_rows": rows, "seconds": seconds, "prepare_seconds": prep,
            "peak_rss_mb": peak_rss_mb(), "parameters": model.count_parameters()}


def task_infer(cfg: dict, perf: dict) -> dict:
    import numpy as np
    import torch

    from ctrlab.data.loader import BatchLoader, EncodedSplit, to_batch

    data, _ = _prepared(cfg)
    model, trainer = _build(cfg, data)
    model.eval()
    train = data.splits["train"]
    n = min(int(cfg.get("rows", 65536)), len(train))
    subset = EncodedSplit({k: v[:n] for k, v in train.arrays.items()})
    loader = BatchLoader(subset, 4096, shuffle=False)
    trainer.predict(loader)
    t0 = time.perf_counter()
    trainer.predict(loader)
    batch_rps = n / (time.perf_counter() - t0)
    one = to_batch({k: v[:1] for k, v in train.arrays.items()})
    times = []
    with torch.inference_mode():
        for i in range(10 + int(cfg.get("single_rows", 200))):
            t = time.perf_counter()
            torch.sigmoid(trainer._forward(one)["logit"])  # the trainer's forward: honours precision
            if i >= 10:
                times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"rows_per_s": batch_rps, "single_row_ms_p50": float(np.percentile(ms, 50)),
            "single_row_ms_p99": float(np.percentile(ms, 99))}


def task_auc(cfg: dict, perf: dict) -> dict:
    from ctrlab.api import train

    name = cfg["model"]
    params = {k: v for k, v in model_params(name, perf).items()}
    overrides = [f"trainer.epochs={int(cfg.get('epochs', 1))}", "trainer.patience=1000", "trainer.progress=false",
                 f"trainer.precision={cfg.get('precision', 'fp32')}",
                 f"trainer.sparse_embeddings={str(bool(cfg.get('sparse_embeddings', False))).lower()}",
                 f"trainer.num_threads={int(cfg.get('threads', 2))}", "preset=none"]
    res = train(dataset="frappe_x1_subset", model=name, output=str(Path(cfg.get("work_dir") or tempfile.mkdtemp()) / "auc"),
                overrides=overrides + [f"model_params.{k}={json.dumps(v)}" for k, v in params.items()],
                overwrite=True, log=lambda *a: None)  # a scratch folder, reused across models
    return {"test_auc": res.metrics["test"]["AUC"], "epochs": res.metrics["epochs"]}


TASKS = {"preprocess": task_preprocess, "train": task_train, "infer": task_infer, "auc": task_auc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--config", default="{}", help="task settings as JSON")
    args = ap.parse_args()
    cfg = json.loads(args.config)
    perf = json.loads(Path(cfg.get("perf_config", PERF_CONFIG)).read_text())
    cfg["_perf"] = perf
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    result = TASKS[args.task](cfg, perf)
    print("RESULT " + json.dumps({"library": "ctrlab", "task": args.task, "precision": cfg.get("precision", "fp32"),
                                  "sparse_embeddings": bool(cfg.get("sparse_embeddings", False)), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
