"""Data-parallel training with torchrun: 2 processes on loopback (gloo) reach the metrics of 1 process
with the same global batch, a killed 2-process run resumes to the numbers of an uninterrupted one,
and each rank's shard of a step is its part of the one-process batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from safetensors.torch import load_file

from ctrlab.data.loader import BatchLoader, EncodedSplit

# No BatchNorm, no dropout: then data parallelism changes nothing but the order of float sums
# (per-rank batch statistics and per-rank dropout masks are the two things DDP changes by design).
ARGS = ["--dataset", "frappe_x1_subset", "--model", "DeepFM", "--epochs", "3",
        "--set", "trainer.progress=false", "--set", "trainer.batch_size=4096",
        "--set", "model_params.batch_norm=false", "--set", "model_params.net_dropout=0"]
TOLERANCE = 2e-4
"""|AUC difference| and |logloss difference| allowed between 2 ranks and 1 process (measured: ~1e-6)."""


def torchrun(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "ctrlab.cli", "train", *ARGS, "--output", str(out), *extra]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "ctrlab.cli", "train", *ARGS, "--output", str(root / "one"),
                          "--set", "trainer.num_threads=1"], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(torchrun(root / "two"), env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    return root, env, two.stdout


def test_two_ranks_match_one_process(runs):
    root, _, stdout = runs
    one, two = _metrics(root / "one"), _metrics(root / "two")
    assert two["world_size"] == 2 and "world_size" not in one and two["epochs"] == one["epochs"] == 3
    for split in ("valid", "test"):
        for metric in ("AUC", "logloss"):
            assert abs(two[split][metric] - one[split][metric]) <= TOLERANCE, (split, metric, one[split], two[split])
    assert two["test"]["AUC"] > 0.85
    # rank 0 alone reports and writes: one log, one set of checkpoints, one summary on stdout
    log = (root / "two" / "train.log").read_text()
    assert log.count("start training") == 1 and log.count("epoch 3/3") == 1
    assert stdout.count("[ctrlab] test:") == 1 and "data-parallel over 2 ranks (gloo)" in stdout
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir()) == [
        "best.safetensors", "last.safetensors", "last_optimizer.safetensors", "last_state.json"]


def test_killed_two_rank_run_resumes_to_the_same_numbers(runs):
    root, env, _ = runs
    killed = root / "killed"
    proc = subprocess.Popen(torchrun(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = killed / "checkpoints" / "last_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch") == 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-epoch 2
    proc.wait()
    assert not (killed / "metrics.json").exists()
    resumed = subprocess.run(torchrun(killed, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in (killed / "train.log").read_text()
    a, b = _metrics(root / "two"), _metrics(killed)
    assert b["epochs"] == 3
    for split in ("valid", "test"):
        assert b[split] == pytest.approx(a[split], abs=1e-9), (split, a[split], b[split])


def test_rank_shards_make_up_the_one_process_batch():
    split = EncodedSplit({"x": np.arange(1003)[:, None], "label": np.zeros((1003, 1), np.float32)})
    whole = BatchLoader(split, 100, shuffle=True, seed=7)
    ranks = [BatchLoader(split, 50, shuffle=True, seed=7, shard=(r, 2)) for r in range(2)]
    for loader in (whole, *ranks):
        loader.set_epoch(3)
    for full, part0, part1 in zip(whole, *ranks):
        got = np.concatenate([part0["x"].numpy(), part1["x"].numpy()]).ravel()
        assert sorted(got.tolist()) == sorted(full["x"].numpy().ravel().tolist())


def test_sparse_embeddings_train_data_parallel(runs):
    """Sparse table gradients are all-reduced by gloo: 2 ranks with SparseAdam == 1 process with it."""
    root, env, _ = runs
    sparse = ["--epochs", "2", "--set", "trainer.sparse_embeddings=true", "--set", "model_params.embedding_regularizer=0"]
    one = subprocess.run([sys.executable, "-m", "ctrlab.cli", "train", *ARGS, *sparse, "--output",
                          str(root / "sparse1"), "--set", "trainer.num_threads=1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(torchrun(root / "sparse2", *sparse), env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a, b = _metrics(root / "sparse1"), _metrics(root / "sparse2")
    assert a["epochs"] == b["epochs"] == 2
    for split in ("valid", "test"):
        for metric in ("AUC", "logloss"):
            assert abs(a[split][metric] - b[split][metric]) <= TOLERANCE, (split, a[split], b[split])


def test_distributed_without_torchrun_is_a_clear_error(monkeypatch):
    from ctrlab.config import ConfigError
    from ctrlab.train.distributed import SINGLE, setup

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup(None) is SINGLE and setup(False) is SINGLE
    with pytest.raises(ConfigError, match="torchrun --standalone --nproc-per-node 2"):
        setup(True)


# ---------------------------------------------------------------------------------------------
# 2-rank scenarios run by _ddp_worker.py (Trainer directly, gloo, 120 s collective timeout)
# ---------------------------------------------------------------------------------------------
WORKER_TIMEOUT = 400
"""Seconds a worker scenario may take before it counts as hung (it takes ~30 s on 2 busy cores)."""


def _worker(mode: str, out: Path) -> list[dict]:
    """Run ``_ddp_worker.py MODE OUT`` on 2 ranks; the ranks' results. A hang fails the test: the
    worker's collectives time out after 120 s and the whole process group is killed after
    WORKER_TIMEOUT seconds."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(ctrlab_src())), str(here)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(here / "_ddp_worker.py"), mode, str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"2-rank scenario {mode!r} hung for {WORKER_TIMEOUT} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def ctrlab_src() -> str:
    import ctrlab

    return str(Path(ctrlab.__file__).resolve().parents[1])


def test_uneven_last_batch_does_not_hang_and_metrics_count_every_row_once(tmp_path):
    """issue 14.4: 4097 rows, global batch 4096 on 2 ranks gave the ranks 2 and 1 steps, and both
    waited in the all-reduce forever. Now the epoch's order is padded so that every rank runs the same
    number of steps, while validation still scores each of the 4097 rows exactly once."""
    ranks = _worker("uneven", tmp_path)
    assert [r["steps"] for r in ranks] == [2, 2] and [r["epochs"] for r in ranks] == [2, 2]
    assert [r["predictions"] for r in ranks] == [4097, 4097]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    for metric, value in ranks[0]["unsharded"].items():  # a duplicated row would move logloss by ~1e-4
        assert ranks[0]["metrics"][metric] == pytest.approx(value, abs=1e-9), metric
    for rank in ranks:
        assert "[2, 1] batches per epoch" in rank["unpadded_error"] and "make_train_loader" in rank["unpadded_error"]


@pytest.fixture(scope="module")
def details(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_details")
    return out, _worker("details", out)


def test_ranks_draw_different_dropout_masks(details):
    """issue 14.10: every rank used the same seed, so every rank dropped the same units."""
    _, ranks = details
    a, b = (np.array(r["first_mask"]) for r in ranks)
    assert a.shape == b.shape and 0.3 < a.mean() < 0.7 and 0.3 < b.mean() < 0.7
    assert (a != b).mean() > 0.3


def test_every_rank_validates_with_the_saved_batch_norm_statistics(details):
    """issue 14.10: without SyncBatchNorm each rank validated with its own running statistics, while
    rank 0's were saved."""
    out, ranks = details
    saved = load_file(str(out / "whole" / "checkpoints" / "last.safetensors"))
    for rank in ranks:
        for name, values in rank["eval_buffers"].items():
            assert values == saved[name].tolist(), name


def test_resumed_run_restores_every_rank_s_rng(details):
    """issue 14.10: resume gave every rank rank 0's RNG state; with per-rank dropout streams a
    resumed 2-rank run now still ends where the uninterrupted one does."""
    _, ranks = details
    for rank in ranks:
        assert rank["resumed_history"] == rank["whole_history"]
        assert rank["resumed_weights"] == rank["whole_weights"]
    assert ranks[0]["whole_weights"] == ranks[1]["whole_weights"]
