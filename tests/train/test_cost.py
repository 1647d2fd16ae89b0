"""metrics.json's "cost" (issue 19): parameters and FLOPs per row against hand counts, the latency
protocol (warm-up, repeats, 4096 rows in calls of at most max_rows_per_call, repeated rows), and a
real run writing it (or not, with measure_cost=false)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from _trainkit import FIELDS, VOCAB, feature_map, make_split
from ctrlab.models import create
from ctrlab.train.cost import BATCH_ROWS, MIN_REPEATS, model_cost, split_batch_fn

KEYS = {"parameters", "flops_per_row", "latency_ms_1_row", "latency_ms_4096_rows", "threads", "device"}


def test_dnn_flops_and_parameters_equal_the_hand_count():
    """DNN on 3 categorical + 1 numeric field, D=4 (MLP input 16), hidden [8, 6], output 1: the counter
    sees the three Linear layers' 2·in·out per row; ReLU, lookups and bias adds are not counted."""
    model = create("DNN", feature_map(), embedding_dim=4, hidden_units=[8, 6])
    cost = model_cost(model, split_batch_fn(make_split(300, 0)), threads=1)
    assert set(cost) == KEYS
    d_in = (len(FIELDS) + 1) * 4
    assert cost["flops_per_row"] == 2 * (d_in * 8 + 8 * 6 + 6 * 1)  # 364
    tables = len(FIELDS) * VOCAB * 4 + 1 * 4  # categorical rows + the numeric field's vector
    mlp = (d_in * 8 + 8) + (8 * 6 + 6) + (6 * 1 + 1)
    assert cost["parameters"] == tables + mlp == 345
    assert cost["threads"] == 1 and cost["device"] == "cpu"
    for key in ("latency_ms_1_row", "latency_ms_4096_rows"):
        assert math.isfinite(cost[key]) and cost[key] > 0


def test_lr_counts_no_flops_lookups_and_sums_are_not_matmuls():
    """LR is lookups and a sum: PyTorch's counter counts nothing (documented), parameters are one
    weight per feature value, one for the numeric field and the bias."""
    cost = model_cost(create("LR", feature_map()), split_batch_fn(make_split(50, 0)), threads=1)
    assert cost["flops_per_row"] == 0.0
    assert cost["parameters"] == len(FIELDS) * VOCAB + 1 + 1


class _PairwiseDots(nn.Module):
    """Field embeddings (B, F, D) -> all inner products by bmm (2·F·F·D per row) -> Linear(F·F, 1)."""

    def __init__(self, fields: int = 3, dim: int = 5):
        super().__init__()
        self.emb = nn.Embedding(fields * VOCAB, dim)
        self.register_buffer("offsets", torch.arange(fields) * VOCAB)
        self.out = nn.Linear(fields * fields, 1)

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def predict_proba(self, batch):
        e = self.emb(batch["cat"] + self.offsets)
        dots = torch.bmm(e, e.transpose(1, 2)).flatten(1)
        return torch.sigmoid(self.out(dots).squeeze(-1) * 2.0)  # the product is element-wise: not counted


def test_bmm_is_counted_per_row():
    model = _PairwiseDots()
    cost = model_cost(model, split_batch_fn(make_split(20, 1)), threads=1)
    assert cost["flops_per_row"] == 2 * 3 * 3 * 5 + 2 * 9 * 1
    assert cost["parameters"] == 3 * VOCAB * 5 + 9 + 1


class _Recorder(nn.Module):
    """Records the rows of every predict_proba call and whether it ran in eval mode without grad."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, bool, bool]] = []

    def count_parameters(self) -> int:
        return 1

    def predict_proba(self, batch):
        self.calls.append((len(batch["cat"]), self.training, torch.is_grad_enabled()))
        return torch.sigmoid(batch["num"][:, 0] * self.w)


def test_latency_protocol_chunks_repeats_and_restores_the_model_and_threads():
    model = _Recorder().train()
    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    cost = model_cost(model, split_batch_fn(make_split(10, 2)), threads=other, max_rows_per_call=1000,
                      max_repeats=(5, 4))
    assert cost["threads"] == other and torch.get_num_threads() == threads  # set for it, then restored
    assert model.training  # back in train mode
    assert cost["flops_per_row"] == 0.0  # an element-wise product only
    assert all(not training and not grad for _, training, grad in model.calls)  # eval mode, no grad
    rows = [n for n, _, _ in model.calls]
    assert rows[0] == 64  # the FLOP count's batch
    singles = [i for i, n in enumerate(rows) if n == 1]
    # warm-up + MIN_REPEATS..5 timed one-row calls, then the 4096 rows as 1000+1000+1000+1000+96, warm-up + 3..4 times
    assert singles == list(range(1, 1 + len(singles))) and MIN_REPEATS + 1 <= len(singles) <= 6
    big = rows[1 + len(singles):]
    assert len(big) % 5 == 0 and MIN_REPEATS + 1 <= len(big) // 5 <= 5
    assert big[:5] == [1000, 1000, 1000, 1000, 96] and sum(big) == BATCH_ROWS * (len(big) // 5)


def test_split_batches_repeat_short_splits_and_leave_out_labels():
    split = make_split(10, 3)
    batch = split_batch_fn(split)(BATCH_ROWS)
    assert "label" not in batch and set(batch) == {"cat", "num"}
    assert batch["cat"].shape == (BATCH_ROWS, len(FIELDS)) and batch["cat"].dtype == torch.int64
    idx = np.arange(BATCH_ROWS) % 10
    assert np.array_equal(batch["cat"].numpy(), split.arrays["cat"][idx])
    assert np.array_equal(batch["num"].numpy(), split.arrays["num"][idx])
    with pytest.raises(ValueError, match="no rows"):
        split_batch_fn(make_split(0, 0))


class _NotTorch:
    """A non-torch estimator (a GBDT baseline's shape): no FLOPs, latency still measured."""

    def count_parameters(self) -> int:
        return 7

    def predict_proba(self, batch):
        return 1 / (1 + np.exp(-np.asarray(batch["num"])[:, 0]))


def test_a_model_that_is_not_a_torch_module_has_no_flops():
    cost = model_cost(_NotTorch(), split_batch_fn(make_split(30, 4)), threads=1)
    assert cost["flops_per_row"] is None and cost["parameters"] == 7
    assert cost["latency_ms_1_row"] > 0 and cost["latency_ms_4096_rows"] > 0


# ---- a real run --------------------------------------------------------------------------------------
RUN = ["trainer.epochs=1", "trainer.progress=false", "trainer.num_threads=1", "model_params.hidden_units=[16]",
       "model_params.embedding_dim=4"]


def test_a_real_run_writes_its_cost_and_the_option_turns_it_off(data_dir, tmp_path):
    """DNN on criteo_head10k (13 numeric + 26 categorical fields): metrics.json's cost has the
    contract's keys, the run's parameter count, and the hand-counted FLOPs of its MLP; so has a
    compressed copy (and its source's, measured beside it); measure_cost=false writes none."""
    from ctrlab.api import compress, train

    lines: list[str] = []
    res = train(dataset="criteo_head10k", model="DNN", output=str(tmp_path / "on"), overrides=RUN, log=lines.append)
    saved = json.loads((res.run_dir / "metrics.json").read_text())
    cost = saved["cost"]
    assert set(cost) == KEYS and cost == res.metrics["cost"]
    assert cost["parameters"] == saved["parameters"]
    assert cost["flops_per_row"] == 2 * (39 * 4 * 16 + 16 * 1)
    assert cost["threads"] == 1 and cost["latency_ms_1_row"] > 0 and cost["latency_ms_4096_rows"] > 0
    assert any(line.startswith("[ctrlab] cost: ") and "rows of the test split" in line for line in lines)

    # a compressed copy measures itself and its source beside it: the hidden layer 156x16 at rank 2
    small = compress(res.run_dir, tmp_path / "small", method="svd", rank=2, log=lambda *a: None).metrics
    assert small["cost"]["flops_per_row"] == 2 * (156 * 2 + 2 * 16 + 16 * 1)
    assert small["cost"]["parameters"] == small["parameters"] < cost["parameters"]
    before = small["compression"]["cost_before"]
    assert before["flops_per_row"] == cost["flops_per_row"] and before["parameters"] == cost["parameters"]

    off = train(dataset="criteo_head10k", model="DNN", output=str(tmp_path / "off"), overrides=RUN,
                measure_cost=False, log=lambda *a: None)
    assert "cost" not in json.loads((off.run_dir / "metrics.json").read_text())
    assert off.metrics["test"] == res.metrics["test"]  # measuring changes nothing that is learned
