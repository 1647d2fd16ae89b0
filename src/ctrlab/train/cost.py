"""What a model costs to serve: parameters, FLOPs per row and inference latency (``metrics.json["cost"]``).

:func:`model_cost` measures a trained model on real rows of its data (the run's test split, else valid,
else train; :func:`split_batch_fn`) and returns::

    {"parameters": int,              # model.count_parameters(): trainable weights, embedding tables included
     "flops_per_row": float | None,  # matmul-type FLOPs of one forward pass, per row (see below)
     "latency_ms_1_row": float,      # median milliseconds of one forward pass (predict_proba) on 1 row
     "latency_ms_4096_rows": float,  # median milliseconds of scoring 4096 rows
     "threads": int,                 # torch intra-op threads during the measurement
     "device": str}                  # where it ran ("cpu", "cuda:0"): latencies of two devices do not compare

**FLOPs** come from :class:`torch.utils.flop_counter.FlopCounterMode` over one eval-mode, no-grad
forward pass of :data:`FLOP_ROWS` rows, divided by the rows. PyTorch's counter counts only the
matrix-multiply-type operators: ``mm``/``addmm``/``bmm``/``baddbmm`` (so ``nn.Linear``, ``matmul``,
``einsum``: 2·in·out per row for a Linear, the bias add not counted), convolutions and the fused
attention kernels. Embedding lookups (gathers), element-wise operations (activations, FM's sums and
squares, cross-net Hadamard products, normalisation) and reductions are **not** counted, so a model
built from lookups and element-wise arithmetic only (LR, FM) counts 0. It is the number that
dominates the arithmetic of the MLP-, cross- and attention-based models, not the whole work. None
for a model that is not a ``torch.nn.Module`` (a GBDT baseline) or when the counter fails (logged).

**Latency** is wall-clock time of ``model.predict_proba(batch)`` in eval mode without gradients, in
float32 (the trainer's ``precision`` is not applied), on batches built before the clock starts (so
encoding raw input and copying rows are not included; on a GPU each call is synchronised). Each size
is called once to warm up (allocations, kernel selection), then :data:`MIN_REPEATS` to ``max_repeats``
times, stopping once its share of ``budget_s`` is spent; the median is reported. The 1-row number is
the per-request overhead (Python, dispatch); the 4096-row number the throughput of a full batch. A
model whose data needs fewer rows per call (long sequences: ``FeatureMap.rows_per_call``) scores the
4096 rows as consecutive calls of ``max_rows_per_call`` rows, and the latency is their sum.
Rows shorter than 4096 (a small test split) are repeated to fill the batch.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["FLOP_ROWS", "BATCH_ROWS", "MIN_REPEATS", "model_cost", "split_batch_fn", "measure_run", "describe"]

FLOP_ROWS = 64
"""Rows of the batch whose forward pass the FLOP counter follows (FLOPs per row do not depend on it)."""
BATCH_ROWS = 4096
"""Rows of the large-batch latency (``latency_ms_4096_rows``)."""
MIN_REPEATS = 3
"""Timed calls per size at least, whatever the time budget (after one warm-up call)."""


def split_batch_fn(split, device: torch.device | str = "cpu") -> Callable[[int], dict[str, torch.Tensor]]:
    """``rows -> batch``: the first ``rows`` rows of an :class:`~ctrlab.data.loader.EncodedSplit` (repeated
    when it has fewer) as model inputs on ``device``, without the labels (as a request has none)."""
    from ..data.loader import to_batch

    n = len(split)
    if n == 0:
        raise ValueError("model cost: the split to measure on has no rows")

    def batch(rows: int) -> dict[str, torch.Tensor]:
        idx = np.arange(rows) % n
        arrays = {k: v for k, v in split.take(idx).arrays.items() if k != "label"}
        return {k: v.to(device) for k, v in to_batch(arrays).items()}

    return batch


def _model_device(model) -> torch.device | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return None


def _flops_per_row(model: nn.Module, batch: Any, rows: int, log) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    # the counter's module tracker hooks the inputs that require grad, and fails under no_grad on a
    # parameter passed to a submodule as its input (FinalMLP's gate context): weights off autograd meanwhile
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.predict_proba(batch)
    except Exception as exc:  # a custom operator the counter cannot follow: no count, the run goes on
        log(f"[ctrlab] cost: FLOPs not counted ({type(exc).__name__}: {exc}); flops_per_row is null")
        return None
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return counter.get_total_flops() / rows


def _median_ms(call: Callable[[], Any], sync: Callable[[], None], max_repeats: int, budget_s: float) -> float:
    """Median milliseconds of ``call`` after one warm-up call: at least :data:`MIN_REPEATS` timed
    calls, at most ``max_repeats``, stopping once ``budget_s`` seconds of timed calls are spent."""
    call()
    sync()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < MIN_REPEATS or spent < budget_s):
        t0 = time.perf_counter()
        call()
        sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times) * 1000.0


def model_cost(model, example_batch_fn: Callable[[int], Any], threads: int | None = None, *,
               max_rows_per_call: int = BATCH_ROWS, budget_s: float = 0.2, max_repeats: tuple[int, int] = (25, 10),
               log=print) -> dict[str, Any]:
    """The cost record of ``model`` (see the module docstring): parameters, FLOPs per row, median
    latency of 1 row and of :data:`BATCH_ROWS` rows.

    ``model``: anything with ``count_parameters()`` and ``predict_proba(batch)`` (a
    :class:`~ctrlab.models.base.CTRModel`; FLOPs only for a ``torch.nn.Module``).
    ``example_batch_fn(rows)``: a batch of exactly ``rows`` real rows, as ``predict_proba`` takes it
    (:func:`split_batch_fn` for an encoded split), on the model's device.
    ``threads``: torch intra-op threads for the measurement (restored afterwards); None = torch's
    current setting. ``max_rows_per_call``: rows per ``predict_proba`` call (fewer than 4096 for
    long sequences). ``budget_s``: timed seconds per size after which repeats stop (a quarter for 1
    row, the rest for 4096 rows); ``max_repeats``: the most timed calls (1 row, 4096 rows)."""
    if max_rows_per_call < 1:
        raise ValueError(f"model cost: max_rows_per_call must be >= 1, got {max_rows_per_call}")
    previous_threads = torch.get_num_threads()
    threads = int(threads or previous_threads)
    device = _model_device(model)
    is_module = isinstance(model, nn.Module)
    was_training = model.training if is_module else False
    if device is not None and device.type == "cuda":
        def sync() -> None:
            torch.cuda.synchronize(device)
    else:
        def sync() -> None:
            pass
    if threads != previous_threads:
        torch.set_num_threads(threads)
    try:
        if is_module:
            model.eval()
        flops = None
        if is_module:
            rows = min(FLOP_ROWS, max_rows_per_call)
            flops = _flops_per_row(model, example_batch_fn(rows), rows, log)
        one = example_batch_fn(1)
        chunks = [example_batch_fn(min(max_rows_per_call, BATCH_ROWS - start))
                  for start in range(0, BATCH_ROWS, max_rows_per_call)]

        def predict(batch):
            with torch.no_grad():
                return model.predict_proba(batch)

        def predict_all():
            for chunk in chunks:
                predict(chunk)

        ms_1 = _median_ms(lambda: predict(one), sync, max_repeats[0], budget_s / 4)
        ms_4096 = _median_ms(predict_all, sync, max_repeats[1], budget_s * 3 / 4)
    finally:
        if is_module:
            model.train(was_training)
        if threads != previous_threads:
            torch.set_num_threads(previous_threads)
    return {"parameters": int(model.count_parameters()),
            "flops_per_row": None if flops is None else float(flops),
            "latency_ms_1_row": round(ms_1, 4),
            "latency_ms_4096_rows": round(ms_4096, 4),
            "threads": threads,
            "device": str(device) if device is not None else "cpu"}


def measure_run(model, splits: dict, feature_map, threads: int | None, log=print) -> dict[str, Any]:
    """:func:`model_cost` of a trained run's model on the rows of its test split (else valid, else
    train), on the model's device, 4096 rows in calls of ``feature_map.rows_per_call(4096)`` rows;
    logged in one line. What ``train`` and ``compress`` write as ``metrics.json["cost"]``."""
    name = next((s for s in ("test", "valid", "train") if s in splits and len(splits[s])), None)
    if name is None:
        raise ValueError("model cost: the run has no split with rows to measure on")
    device = _model_device(model) or torch.device("cpu")
    cost = model_cost(model, split_batch_fn(splits[name], device), threads,
                      max_rows_per_call=feature_map.rows_per_call(BATCH_ROWS), log=log)
    log(f"[ctrlab] cost: {describe(cost)} (rows of the {name} split)")
    return cost


def describe(cost: dict[str, Any]) -> str:
    """One line of a cost record: parameters, FLOPs per row, both latencies, threads and device."""
    flops = "FLOPs not counted" if cost.get("flops_per_row") is None else f"{cost['flops_per_row']:,.0f} FLOPs/row"
    return (f"{cost['parameters']:,} parameters, {flops}, {cost['latency_ms_1_row']:.3g} ms for 1 row, "
            f"{cost['latency_ms_4096_rows']:.3g} ms for {BATCH_ROWS} rows ({cost['threads']} thread"
            f"{'s' if cost['threads'] != 1 else ''}, {cost.get('device', 'cpu')})")
