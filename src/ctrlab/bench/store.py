"""The results store: one embedded SQLite file that every bench, tuning and report step shares.

Schema (version 1; created on first open, documented in docs/benchmark.md):

``runs``: one row per training run (a resolved config and a seed).
    ``key``          sha256 of the resolved run config without its output folder: the run's identity
    ``plan``         the plan or tuning study that asked for it
    ``dataset``, ``model``, ``seed``, ``hparam_set``, ``protocol``
    ``config``       the resolved run config (JSON: dataset, model_params with presets merged, trainer)
    ``status``       ``running`` | ``finished`` | ``failed`` | ``pruned`` (stopped by the tuner's pruner)
    ``run_dir``      the run folder (checkpoints, weights, logs)
    ``pid``, ``host`` the process that owns a ``running`` row (a crashed owner is detected by pid)
    ``started_at``, ``finished_at``  Unix seconds
    ``environment``  JSON: python, torch, ctrlab, platform, CPU, threads, git commit
    ``parameters``, ``epochs``, ``best_epoch``, ``train_seconds``, ``seconds_per_epoch``,
    ``samples_per_s`` (mean training throughput over epochs)
    ``valid_auc``, ``valid_logloss``, ``test_auc``, ``test_logloss``
    ``metrics``      JSON: the run's metrics.json (the report reads the calibration metrics, ``cost`` and
                     ``reliability`` from it: no column of their own, so a store written before they
                     existed opens unchanged and shows them as missing)
    ``error``        the exception of a failed run

``epochs``: one row per finished epoch of a run, written as the epoch ends (so a crash loses
    nothing that was trained): ``run_key``, ``epoch``, ``valid_auc``, ``valid_logloss``,
    ``train_loss``, ``lr``, ``seconds``, ``samples_per_s``, ``record`` (JSON: the trainer's full
    per-epoch record).

Writes are single statements in autocommit mode on a WAL-journaled file, so a killed process
leaves every committed row intact and parallel worker processes can write at once (each opens its
own connection; ``busy_timeout`` makes them wait for each other's short write locks). Optuna's
tables (``ctrlab tune``) live in the same file, created by Optuna itself.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    hparam_set TEXT NOT NULL,
    protocol TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'pruned')),
    run_dir TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    started_at REAL,
    finished_at REAL,
    environment TEXT,
    parameters INTEGER,
    epochs INTEGER,
    best_epoch INTEGER,
    train_seconds REAL,
    seconds_per_epoch REAL,
    samples_per_s REAL,
    valid_auc REAL,
    valid_logloss REAL,
    test_auc REAL,
    test_logloss REAL,
    metrics TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_plan ON runs (plan, dataset, model);
CREATE TABLE IF NOT EXISTS epochs (
    run_key TEXT NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    valid_auc REAL,
    valid_logloss REAL,
    train_loss REAL,
    lr REAL,
    seconds REAL,
    samples_per_s REAL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_key, epoch)
);
"""

RUN_COLUMNS = ("key", "plan", "dataset", "model", "seed", "hparam_set", "protocol", "config", "status", "run_dir",
               "pid", "host", "started_at", "finished_at", "environment", "parameters", "epochs", "best_epoch",
               "train_seconds", "seconds_per_epoch", "samples_per_s", "valid_auc", "valid_logloss", "test_auc",
               "test_logloss", "metrics", "error")
_JSON_COLUMNS = ("config", "environment", "metrics")


class StoreError(RuntimeError):
    """The results database cannot be used (wrong schema version, not a ctrlab store)."""


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owned_by_another_live_process(row: sqlite3.Row | None) -> bool:
    """A ``running`` row of a process on this host that is alive and is not this one."""
    return (row is not None and row["status"] == "running" and row["host"] == socket.gethostname()
            and row["pid"] != os.getpid() and _pid_alive(row["pid"]))


class ResultsStore:
    """A connection to the results database at ``path`` (created with its parents if missing)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: results schema version {row[0]}, this ctrlab reads version "
                             f"{SCHEMA_VERSION}; use another --db path or the matching ctrlab version")

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the same file (Optuna's storage)."""
        return f"sqlite:///{self.path.resolve()}"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------
    def start_run(self, key: str, *, plan: str, dataset: str, model: str, seed: int, hparam_set: str,
                  protocol: str, config: Mapping[str, Any], run_dir: str, environment: Mapping[str, Any]) -> None:
        """Mark ``key`` as running in this process (a new row, or an earlier unfinished one taken over)."""
        self.conn.execute(
            "INSERT INTO runs (key, plan, dataset, model, seed, hparam_set, protocol, config, status, run_dir, pid, "
            "host, started_at, environment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET status='running', pid=excluded.pid, host=excluded.host, "
            "started_at=excluded.started_at, environment=excluded.environment, run_dir=excluded.run_dir, "
            "plan=excluded.plan, hparam_set=excluded.hparam_set, protocol=excluded.protocol, error=NULL",
            (key, plan, dataset, model, seed, hparam_set, protocol, json.dumps(config), run_dir, os.getpid(),
             socket.gethostname(), time.time(), json.dumps(environment)),
        )

    def claim_run(self, key: str, *, fresh: bool = False, **meta: Any) -> str:
        """Atomically take ``key`` for this process: ``"finished"`` (nothing to do unless
        ``fresh``), ``"busy"`` (a live process on this host owns it) or ``"claimed"`` (now
        ``running`` here; ``meta`` as for :meth:`start_run`). The check and the write happen in one
        write transaction, so two benches never train the same run at once."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute("SELECT status, pid, host FROM runs WHERE key=?", (key,)).fetchone()
            if row is not None and row["status"] == "finished" and not fresh:
                outcome = "finished"
            elif _owned_by_another_live_process(row):
                outcome = "busy"
            else:
                self.start_run(key, **meta)
                outcome = "claimed"
            self.conn.execute("COMMIT")
            return outcome
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def record_epoch(self, key: str, record: Mapping[str, Any]) -> None:
        """One finished epoch (the trainer's record); replaces the same epoch of an earlier attempt."""
        self.conn.execute(
            "INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, int(record["epoch"]), record.get("valid_AUC"), record.get("valid_logloss"),
             record.get("train_loss"), record.get("lr"), record.get("seconds"), record.get("samples_per_s"),
             json.dumps(record)),
        )

    def finish_run(self, key: str, metrics: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> None:
        """Final metrics (a run's metrics.json) and its full history, in one transaction."""
        history = list(history)
        best = max((h.get("best_epoch") or 0 for h in history), default=None)
        throughput = [h["samples_per_s"] for h in history if h.get("samples_per_s")]
        valid, test = metrics.get("valid", {}), metrics.get("test", {})
        with self.conn:  # BEGIN ... COMMIT
            self.conn.execute("BEGIN")
            for h in history:
                self.record_epoch(key, h)
            self.conn.execute(
                "UPDATE runs SET status='finished', finished_at=?, parameters=?, epochs=?, best_epoch=?, "
                "train_seconds=?, seconds_per_epoch=?, samples_per_s=?, valid_auc=?, valid_logloss=?, test_auc=?, "
                "test_logloss=?, metrics=?, error=NULL WHERE key=?",
                (time.time(), metrics.get("parameters"), metrics.get("epochs"), best, metrics.get("train_seconds"),
                 metrics.get("seconds_per_epoch"), sum(throughput) / len(throughput) if throughput else None,
                 valid.get("AUC"), valid.get("logloss"), test.get("AUC"), test.get("logloss"),
                 json.dumps(metrics), key),
            )

    def fail_run(self, key: str, error: str, status: str = "failed") -> None:
        """Mark ``key`` failed (``error``: the traceback) or ``pruned`` (stopped on purpose by a tuner)."""
        self.conn.execute("UPDATE runs SET status=?, finished_at=?, error=? WHERE key=?",
                          (status, time.time(), error, key))

    # ---- reading ---------------------------------------------------------------------------
    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for c in _JSON_COLUMNS:
            if d.get(c) is not None:
                d[c] = json.loads(d[c])
        return d

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else self._decode(row)

    def is_finished(self, key: str) -> bool:
        row = self.conn.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone()
        return row is not None and row[0] == "finished"

    def owned_by_live_process(self, key: str) -> bool:
        """True when ``key`` is ``running`` in a process on this host that is still alive (another
        worker or bench is training it right now)."""
        row = self.conn.execute("SELECT status, pid, host FROM runs WHERE key=?", (key,)).fetchone()
        return _owned_by_another_live_process(row)

    def runs(self, *, plan: str | None = None, dataset: str | None = None, status: str | None = "finished") -> list[dict]:
        """Runs, optionally filtered, oldest first."""
        where, args = [], []
        for col, val in (("plan", plan), ("dataset", dataset), ("status", status)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_at, key"
        return [self._decode(r) for r in self.conn.execute(sql, args)]

    def epochs(self, key: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM epochs WHERE run_key=? ORDER BY epoch", (key,)).fetchall()
        return [{**dict(r), "record": json.loads(r["record"])} for r in rows]
