"""Streaming preprocessing of a file larger than the memory it is given: peak RSS and time.

    .venv/bin/python benchmarks/streaming_preprocess.py                    # 20M rows -> docs/scaling.md
    .venv/bin/python benchmarks/streaming_preprocess.py --rows 200000 --output none

It writes a raw headerless Criteo TSV of ``--rows`` rows (label, I1-I13 integer counts, C1-C26 hex
strings) from the `synthetic` generator, streamed to disk, then preprocesses it with ctrlab in a fresh
process per mode, with the bench-peers config (13 log-normalised numerics, 26 categoricals, min count 1):

* ``streaming``: ``prepare(streaming=True)``, two passes over blocks of ``--block-rows`` rows;
* ``in-memory`` (with ``--compare``): the default, which reads the whole file.

Reported: rows/s and peak RSS (VmHWM) of each, the file's size, and the vocabulary sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
sys.path.insert(0, str(REPO / "benchmarks" / "peers" / "workers"))
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, publish, run_worker  # noqa: E402

BEGIN, END = markers("streaming-preprocess")


def write_tsv(rows: int, work: Path, log) -> Path:
    import polars as pl

    from ctrlab.data.datasets import get_dataset

    tsv = work / f"criteo_{rows}.tsv"
    if tsv.exists():
        return tsv
    t0 = time.perf_counter()
    cfg = get_dataset("synthetic", rows=int(rows / 0.8) + 1)  # the train split holds >= rows rows
    cols = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    lf = (pl.scan_parquet(cfg.files["train"]).head(rows)
          .select([pl.col("label").cast(pl.Int8)] + [pl.col(f"I{i}").cast(pl.Int64) for i in range(1, 14)]
                  + [pl.format("{}", pl.col(f"C{i}")).alias(f"C{i}") for i in range(1, 27)]).select(cols))
    tmp = tsv.with_suffix(".tmp")
    lf.sink_csv(tmp, separator="\t", include_header=False, null_value="")  # streamed, never whole in memory
    tmp.replace(tsv)
    log(f"[streaming] wrote {tsv} ({rows:,} rows, {tsv.stat().st_size / 2**30:.2f} GiB) in "
        f"{time.perf_counter() - t0:.0f} s")
    return tsv


def worker(args) -> dict:
    from ctrlab_worker import criteo_tsv_config
    from worker_memory import peak_rss_mb

    from ctrlab.data.pipeline import prepare

    perf = json.loads((REPO / "benchmarks" / "peers" / "perf_config.json").read_text())
    dcfg = criteo_tsv_config(Path(args.tsv), perf)
    t0 = time.perf_counter()
    data = prepare(dcfg, cache_dir=Path(args.work) / f"cache-{args.worker}", rebuild=True, log=lambda *a: None,
                   streaming=args.worker == "streaming", block_rows=args.block_rows[0])
    seconds = time.perf_counter() - t0
    rows = len(data.splits["train"])
    vocab = sorted((f.vocab_size for f in data.feature_map.categorical), reverse=True)
    return {"mode": args.worker, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_mb": peak_rss_mb(), "largest_vocabularies": vocab[:3], "total_ids": sum(vocab),
            "encoded_mb": sum(a.nbytes for a in data.splits["train"].arrays.values()) / 2**20}


def render(results: list[dict], args, tsv: Path) -> str:
    lines = [BEGIN, "### Measured: streaming preprocessing", "",
             f"`python benchmarks/streaming_preprocess.py --rows {args.rows} --block-rows "
             f"{' '.join(map(str, args.block_rows))}"
             f"{' --compare' if args.compare else ''}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores). "
             f"A raw Criteo TSV of {results[0]['rows']:,} rows ({tsv.stat().st_size / 2**30:.2f} GiB; "
             f"{results[0]['total_ids']:,} ids over the 26 vocabularies, the largest "
             f"{results[0]['largest_vocabularies'][0]:,}); encoded arrays {results[0]['encoded_mb']:,.0f} MB.", "",
             "| mode | block rows | rows/s | seconds | peak RSS MB |", "|---|---|---|---|---|"]
    for r in results:
        block = f"{r['block_rows']:,}" if r.get("block_rows") else "whole file"
        lines.append(f"| {r['mode']} | {block} | {r['rows_per_s']:,.0f} | {r['seconds']:.0f} | {r['peak_rss_mb']:,.0f} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--block-rows", type=int, nargs="+", default=[1 << 18, 1 << 16],
                    help="block sizes to stream with (one streaming run each)")
    ap.add_argument("--compare", action="store_true", help="also run the in-memory preprocessing")
    ap.add_argument("--work", default=str(REPO / "runs" / "streaming"))
    ap.add_argument("--output", default=str(REPO / "docs" / "scaling.md"),
                    help="markdown file whose streaming section is replaced ('none': print only)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", choices=["streaming", "in-memory"], help=argparse.SUPPRESS)
    ap.add_argument("--tsv", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    log = lambda m: print(m, flush=True)  # noqa: E731
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tsv = write_tsv(args.rows, work, log)
    results = []
    runs = [("streaming", b) for b in args.block_rows] + ([("in-memory", args.block_rows[0])] if args.compare else [])
    for mode, block_rows in runs:
        cmd = [sys.executable, __file__, "--worker", mode, "--tsv", str(tsv), "--work", str(work),
               "--block-rows", str(block_rows)]
        log(f"[streaming] {mode} ...")
        res = run_worker(cmd)
        if res is None:
            return 1
        res["block_rows"] = block_rows if mode == "streaming" else None
        log(f"[streaming] {res}")
        results.append(res)
    publish(render(results, args, tsv), args.output, args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
