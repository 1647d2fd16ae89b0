"""The SQLite results store: schema, crash safety of committed rows, parallel writers."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from ctrlab.bench.store import ResultsStore, StoreError

META = dict(plan="p", dataset="d", model="DNN", seed=1, hparam_set="preset", protocol="bars",
            config={"model": "DNN"}, run_dir="runs/x", environment={"python": "3.11"})


def record(epoch, auc):
    return {"epoch": epoch, "valid_AUC": auc, "valid_logloss": 0.4, "train_loss": 0.5, "lr": 1e-3,
            "seconds": 1.0, "samples_per_s": 1000.0 * epoch, "best_epoch": epoch}


def test_run_lifecycle_and_epochs(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as s:
        s.start_run("k1", **META)
        assert not s.is_finished("k1") and s.get("k1")["status"] == "running"
        s.record_epoch("k1", record(1, 0.80))
        s.record_epoch("k1", record(1, 0.81))  # a resumed attempt replaces the same epoch
        assert [e["valid_auc"] for e in s.epochs("k1")] == [0.81]
        metrics = {"parameters": 123, "epochs": 2, "train_seconds": 4.0, "seconds_per_epoch": 2.0,
                   "valid": {"AUC": 0.82, "logloss": 0.4}, "test": {"AUC": 0.83, "logloss": 0.41}}
        s.finish_run("k1", metrics, [record(1, 0.81), record(2, 0.82)])
    with ResultsStore(db) as s:  # reopened: everything is on disk
        row = s.get("k1")
        assert row["status"] == "finished" and row["test_auc"] == 0.83 and row["parameters"] == 123
        assert row["best_epoch"] == 2 and row["samples_per_s"] == 1500.0
        assert row["config"] == {"model": "DNN"} and row["metrics"]["valid"]["AUC"] == 0.82
        assert [e["epoch"] for e in s.epochs("k1")] == [1, 2]
        assert [r["key"] for r in s.runs()] == ["k1"]


def test_failed_run_keeps_its_traceback(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as s:
        s.start_run("k", **META)
        s.fail_run("k", "Traceback ... ValueError: boom")
        assert s.get("k")["status"] == "failed" and "boom" in s.get("k")["error"]
        assert s.runs() == [] and len(s.runs(status=None)) == 1


def test_dead_owner_is_not_busy(tmp_path):
    """A 'running' row whose process is gone (a killed bench) may be taken over; a live one may not."""
    with ResultsStore(tmp_path / "r.sqlite") as s:
        s.start_run("k", **META)
        assert not s.owned_by_live_process("k")  # owned by this very process
        s.conn.execute("UPDATE runs SET pid=? WHERE key='k'", (2**22 + 12345,))  # no such pid
        assert not s.owned_by_live_process("k")
        s.conn.execute("UPDATE runs SET pid=1 WHERE key='k'")  # init: alive, not us
        assert s.owned_by_live_process("k")


def test_other_schema_version_is_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ResultsStore(db)


def _writer(db, worker, n):
    with ResultsStore(db) as s:
        for i in range(n):
            key = f"w{worker}-{i}"
            s.start_run(key, **{**META, "seed": i})
            s.record_epoch(key, record(1, 0.5))
            s.finish_run(key, {"parameters": 1, "epochs": 1, "valid": {"AUC": 0.5}, "test": {"AUC": 0.5}},
                         [record(1, 0.5)])


def test_parallel_writers_lose_nothing(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with ResultsStore(db) as s:
        assert len(s.runs()) == 120
        assert s.conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 120


def test_claim_outcomes(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as s:
        assert s.claim_run("k", **META) == "claimed" and s.get("k")["status"] == "running"
        assert s.claim_run("k", **META) == "claimed"  # our own row: taken again
        s.conn.execute("UPDATE runs SET pid=1 WHERE key='k'")  # a live process that is not us
        assert s.claim_run("k", **META) == "busy"
        s.conn.execute("UPDATE runs SET pid=?, status='failed' WHERE key='k'", (2**22 + 12345,))
        assert s.claim_run("k", **META) == "claimed"  # failed runs are retried
        s.finish_run("k", {"parameters": 1, "epochs": 1, "valid": {}, "test": {}}, [])
        assert s.claim_run("k", **META) == "finished"
        assert s.claim_run("k", fresh=True, **META) == "claimed"


def _claimer(db, barrier):
    import os
    import time

    with ResultsStore(db) as s:
        barrier.wait()
        got = s.claim_run("contested", **META)
        time.sleep(2.0)  # stay alive, owning the run, while the others try
    os._exit(0 if got == "claimed" else 3)


def test_only_one_of_racing_processes_claims_a_run(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_claimer, args=(str(db), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(p.exitcode for p in procs) == [0, 3, 3, 3]
