"""Large embedding tables: dense Adam against sparse gradients + SparseAdam, memory and samples/s.

    .venv/bin/python benchmarks/large_tables.py                 # 16M synthetic rows -> docs/scaling.md
    .venv/bin/python benchmarks/large_tables.py --rows 200000 --max-cardinality 1000000 --steps 5 --output none

Data: the `synthetic` generator (Criteo-shaped, Zipf ids) with `max_cardinality` possible ids in its
largest field, encoded by ctrlab's streaming pipeline (vocabularies fitted on train), memory-mapped.
With the defaults (16M rows, 40M possible ids, nearly flat Zipf) the largest field has about 11M ids
in its vocabulary, and all 26 fields about 40M.

Each variant trains DeepFM (BARS Criteo-style settings, `embedding_regularizer: 0` for both, since
sparse gradients exclude a whole-table L2 term) for `--steps` timed steps in its own fresh process:

* `dense`: the default, torch's fused Adam over every parameter; every step reads and writes every
  table row (gradient, two moments, weight).
* `sparse`: `trainer.sparse_embeddings: true`; table gradients hold only the looked-up rows and
  SparseAdam updates only those, Adam the rest.

Reported per variant: samples/s over the timed steps, the bytes of the tables, their gradients and
the optimizer state (from the tensors themselves), and the process's peak RSS (VmHWM; it includes the
feature map's vocabularies and the memory-mapped data pages the batches touched, the same for both
variants). The data are prepared first, in a process of their own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, publish, run_worker  # noqa: E402

BEGIN, END = markers("large-tables")
VARIANTS = {"dense": [], "sparse": ["trainer.sparse_embeddings=true"]}


def _overrides(args) -> list[str]:
    return [f"dataset_params.rows={args.rows}", f"dataset_params.max_cardinality={args.max_cardinality}",
            f"dataset_params.zipf_a={args.zipf_a}", f"trainer.batch_size={args.batch_size}",
            "trainer.progress=false", "model_params.embedding_regularizer=0", "mmap=true", "streaming=true"]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _FirstBatches:
    """The first ``n`` batches of a loader (after ``skip``), as the trainer iterates them."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n
        self.num_rows = n * loader.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def worker(args) -> dict:
    """One variant, in this (fresh) process."""
    import torch

    from ctrlab import api
    from ctrlab.data.pipeline import prepare
    from ctrlab.models import create
    from ctrlab.train import Trainer, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = api.load_run_config(None, dataset="synthetic", model="DeepFM",
                              overrides=_overrides(args) + VARIANTS.get(args.worker, []))
    t0 = time.perf_counter()
    data = prepare(api.dataset_config(cfg), mmap=True, log=lambda *a: None, streaming=cfg.streaming,
                   rebuild=args.worker == "prepare")  # measured afresh; the variants reuse it
    if args.worker == "prepare":  # its own process, so that the variants' peaks measure training alone
        return {"variant": "prepare", "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
                "train_rows": len(data.splits["train"])}
    fmap = data.feature_map
    params, _ = api.resolve_model_params(cfg)
    seed_everything(cfg.trainer.seed)
    model = create("DeepFM", fmap, **params)
    trainer = Trainer(model, cfg.trainer, Path(args.work) / args.worker)
    loader = cfg.trainer.make_train_loader(data.splits["train"])
    trainer.train_epoch(_FirstBatches(loader, args.warmup), epoch=0)
    t0 = time.perf_counter()
    _, rows = trainer.train_epoch(_FirstBatches(loader, args.steps), epoch=1)
    seconds = time.perf_counter() - t0
    tables = model.embedding_parameters()
    table_bytes = sum(p.numel() * p.element_size() for p in tables)
    grad_bytes = sum(p.grad._values().numel() * p.grad.element_size() if p.grad is not None and p.grad.is_sparse
                     else (p.grad.numel() * p.grad.element_size() if p.grad is not None else 0) for p in tables)
    opt = trainer.optimizer
    state_bytes = 0
    for o in getattr(opt, "optimizers", [opt]):
        for st in o.state.values():
            state_bytes += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    largest = max(fmap.categorical, key=lambda f: f.vocab_size)
    return {"variant": args.worker, "samples_per_s": rows / seconds, "timed_steps": args.steps, "rows": rows,
            "table_rows": sum(p.shape[0] for p in tables), "largest_field": largest.name,
            "largest_field_ids": largest.vocab_size, "table_mb": table_bytes / 2**20,
            "grad_mb_last_step": grad_bytes / 2**20, "optimizer_state_mb": state_bytes / 2**20,
            "peak_rss_mb": _peak_rss_mb(), "train_rows": len(data.splits["train"]),
            "threads": torch.get_num_threads(), "optimizer": type(opt).__name__}


def render(results: list[dict], args, prepared: dict) -> str:
    first = results[0]
    by = {r["variant"]: r for r in results}
    lines = [BEGIN, "### Measured: dense Adam vs sparse gradients + SparseAdam", "",
             f"`python benchmarks/large_tables.py --rows {args.rows} --max-cardinality {args.max_cardinality} "
             f"--zipf-a {args.zipf_a} --steps {args.steps}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
             f"{first['threads']} threads). DeepFM, batch {args.batch_size}, {first['train_rows']:,} train rows; "
             f"{first['table_rows']:,} rows over all embedding tables, the largest field ({first['largest_field']}) "
             f"with {first['largest_field_ids']:,} ids.", "",
             "| variant | samples/s | tables MB | table gradients MB (last step) | optimizer state MB | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} ({r['optimizer']}) | {r['samples_per_s']:,.0f} | {r['table_mb']:,.0f} | "
                     f"{r['grad_mb_last_step']:,.1f} | {r['optimizer_state_mb']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    lines += ["", f"Preparing the data (generation and streaming preprocessing, cached for both variants, in its own "
              f"process) took {prepared['seconds']:.0f} s with a peak RSS of {prepared['peak_rss_mb']:,.0f} MB "
              "(it grows with the vocabularies, here about 40M ids)."]
    if "dense" in by and "sparse" in by:
        d, s = by["dense"], by["sparse"]
        lines += ["", f"Sparse / dense: {s['samples_per_s'] / d['samples_per_s']:.1f}× the samples/s, "
                  f"{s['peak_rss_mb'] / d['peak_rss_mb']:.2f}× the peak RSS."]
    lines += ["", END]
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16_000_000)
    ap.add_argument("--max-cardinality", type=int, default=40_000_000)
    ap.add_argument("--zipf-a", type=float, default=0.05, help="Zipf exponent of the ids (near 0: nearly uniform, the most distinct ids)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", default=str(REPO / "runs" / "large_tables"))
    ap.add_argument("--output", default=str(REPO / "docs" / "scaling.md"),
                    help="markdown file whose large-tables section is replaced ('none': print only)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", choices=["prepare", *VARIANTS], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = []
    for variant in ["prepare", *VARIANTS]:
        cmd = [sys.executable, __file__, "--worker", variant] + [
            a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--worker")]
        print(f"[large-tables] {variant}: {' '.join(cmd[2:])}", flush=True)
        res = run_worker(cmd)
        if res is None:
            return 1
        print(f"[large-tables] {res}", flush=True)
        results.append(res)
    publish(render(results[1:], args, results[0]), args.output, args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
