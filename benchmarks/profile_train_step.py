"""Where does a ctrlab training step spend its time? torch.profiler over steady-state batches.

    .venv/bin/python benchmarks/profile_train_step.py --model DeepFM --rows 200000 [--batches 20] [--threads 2]
        [--precision bf16] [--sparse]

Uses the performance harness's data (the ``synthetic`` generator) and hyperparameters
(``benchmarks/peers/perf_config.json``) and the trainer's own step (``Trainer.train_epoch``): one
warm-up pass, then a profiled pass. Prints the operators by self CPU time and the share of the
step spent in the optimizer, the embedding lookups and backward, which is what
docs/performance.md cites when a speed target is missed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="DeepFM", choices=["DeepFM", "DCNv2", "FinalMLP"])
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic training rows (vocabularies grow with it)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="trainer.precision")
    ap.add_argument("--sparse", action="store_true", help="trainer.sparse_embeddings")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ctrlab.data.datasets import get_dataset
    from ctrlab.data.loader import BatchLoader, EncodedSplit

    spec = importlib.util.spec_from_file_location("ctrlab_worker", HERE / "peers" / "workers" / "ctrlab_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    perf = json.loads((HERE / "peers" / "perf_config.json").read_text())
    parquet = get_dataset("synthetic", rows=int(args.rows / 0.8) + 1).files["train"]
    cfg = {"model": args.model, "train_parquet": parquet, "threads": args.threads, "_perf": perf,
           "precision": args.precision, "sparse_embeddings": args.sparse}
    data, _ = worker._prepared(cfg)
    model, trainer = worker._build(cfg, data)
    n = args.batches * perf["batch_size"]
    subset = EncodedSplit({k: v[:n] for k, v in data.splits["train"].arrays.items()})
    loader = BatchLoader(subset, perf["batch_size"], shuffle=True, seed=0)
    emb = sum(p.numel() for p in model.embedding_parameters())
    print(f"{args.model}: {model.count_parameters():,} parameters, {emb:,} in embedding tables; "
          f"{args.batches} batches of {perf['batch_size']}, {torch.get_num_threads()} threads, "
          f"precision {args.precision}, sparse embeddings {args.sparse}")
    trainer.train_epoch(loader, epoch=0)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, rows = trainer.train_epoch(loader, epoch=1)
    seconds = time.perf_counter() - t0
    print(f"profiled pass: {rows / seconds:,.0f} samples/s (the profiler itself costs a little)")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print(table)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"optimizer (Adam)": ("adam", "_foreach", "lerp", "addcdiv", "sqrt"),
              "embedding forward/backward": ("embedding",), "matmul (addmm/mm)": ("addmm", "aten::mm", "matmul"),
              "sparse gradients (coalesce/sort)": ("coalesce", "aten::sort")}
    for name, keys in groups.items():
        t = sum(e.self_cpu_time_total for e in events if any(k in e.key.lower() for k in keys))
        print(f"{name:30s} {t / total:6.1%} of self CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
