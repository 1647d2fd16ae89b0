"""TabR's per-step cost, measured: what a training step spends on the candidates' search keys (one
encoder pass over every candidate, without gradients), on the exact search (torch, chunked) and on
the rest of the step (the m context rows per query encoded with gradients, values, backward), and
what a faiss index costs instead (flat: exact; HNSW: approximate, its build and its recall).

    python benchmarks/tabr_cost.py                    # 100k candidates, 10 fields, TabR defaults
    python benchmarks/tabr_cost.py --rows 20000 --repeats 2   # a quick run

Synthetic rows (10 categorical fields, 1,000 ids each); times are medians over ``--repeats`` on
this machine's threads (``torch.get_num_threads()``), printed as one JSON object. The numbers quoted
in docs/models.md (TabR) come from this script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="training rows (all kept as candidates)")
    parser.add_argument("--batch", type=int, default=512, help="rows per training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-main", type=int, default=265)
    parser.add_argument("--context", type=int, default=96)
    args = parser.parse_args()

    from ctrlab.data.feature_map import FeatureMap
    from ctrlab.layers.retrieval import FaissSearch, nearest
    from ctrlab.models import create

    fields, vocab = 10, 1000
    fmap = FeatureMap.from_fields({f"f{i}": vocab + 2 for i in range(fields)})
    rng = np.random.default_rng(0)
    arrays = {"cat": rng.integers(2, vocab + 2, (args.rows, fields)).astype(np.int32),
              "label": (rng.random((args.rows, 1)) < 0.3).astype(np.float32)}
    torch.manual_seed(0)
    model = create("TabR", fmap, d_main=args.d_main, context_size=args.context)
    with torch.no_grad():  # trained-like embedding scales: keys that differ from row to row
        for t in model.embedding_parameters():
            t.normal_(0.0, 0.3)
    model.attach_training_data(arrays)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch_rows = rng.choice(args.rows, args.batch, replace=False)
    batch = {"cat": torch.from_numpy(arrays["cat"][batch_rows]).long(),
             "label": torch.from_numpy(arrays["label"][batch_rows]),
             "row_index": torch.from_numpy(batch_rows.astype(np.int64))}
    model.train()

    keys = model._compute_keys()
    queries = model.encoder(batch)[1].detach()
    exclude = model.candidates.positions(batch["row_index"])

    def step():
        loss = model.loss(batch, model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up (allocations)
    out = {"rows": args.rows, "batch": args.batch, "d_main": args.d_main, "context_size": args.context,
           "threads": torch.get_num_threads(),
           "keys_all_candidates_s": _median_seconds(model._compute_keys, args.repeats),
           "exact_search_s": _median_seconds(lambda: nearest(queries, keys, args.context, exclude), args.repeats),
           "train_step_s": _median_seconds(step, args.repeats)}
    model.candidate_refresh_steps = 10**9  # the same step with the keys kept (no refresh)
    step()
    out["train_step_without_key_refresh_s"] = _median_seconds(step, args.repeats)

    flat = FaissSearch(keys, approximate_above=args.rows + 1)
    out["faiss_flat_build_s"] = _median_seconds(lambda: FaissSearch(keys, approximate_above=args.rows + 1), 1)
    out["faiss_flat_search_s"] = _median_seconds(lambda: flat.search(queries, args.context, exclude), args.repeats)
    t0 = time.perf_counter()
    hnsw = FaissSearch(keys, approximate_above=1)
    out["faiss_hnsw_build_s"] = time.perf_counter() - t0
    out["faiss_hnsw_search_s"] = _median_seconds(lambda: hnsw.search(queries, args.context, exclude), args.repeats)
    exact = nearest(queries, keys, args.context, exclude)[1]
    approx = hnsw.search(queries, args.context, exclude)
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    out["faiss_hnsw_recall"] = float(np.mean(hits) / args.context)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
