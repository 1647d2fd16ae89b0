"""Run a bench plan: every job once, resumable, optionally in parallel worker processes.

For each job, in this order:

1. finished in the results store -> skipped (nothing is repeated);
2. another live process owns it (a parallel bench) -> skipped this time;
3. its run folder holds a finished run of the same resolved config whose model still has the same
   number of parameters -> adopted into the store without training (e.g. runs made before the
   store existed);
4. its run folder holds checkpoints of the same config (a bench killed mid-run) -> resumed from
   the last checkpoint; the final numbers equal an uninterrupted run's;
5. otherwise trained from scratch.

Every finished epoch is written to the store as it ends, and the final metrics when the run
ends, so killing the bench at any point loses at most the epoch in progress.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import yaml

from .plan import BenchPlan, Job, expand, run_key
from .store import ResultsStore


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where a run ran: versions, CPU, threads, git commit of the working tree (when in one)."""
    import torch

    from .. import __version__

    cpu = cpu_name()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "ctrlab": __version__,
            "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "git_commit": commit}


class RunPruned(Exception):
    """Raised by an epoch callback to stop a run on purpose (a tuner's pruning decision)."""


@dataclass
class JobOutcome:
    key: str
    label: str
    how: str  # skipped | busy | adopted | resumed | trained | failed | pruned
    test_auc: float | None = None
    epochs: int | None = None
    error: str | None = None


def _label(job: Job) -> str:
    return f"{job.dataset} {job.protocol} {job.model}" + ("" if job.hparam_set == "preset" else f"[{job.hparam_set}]") \
        + f" seed {job.seed}"


def _finished_run_folder(job: Job) -> tuple[bool, bool]:
    """(finished run of the same config and model structure, checkpoints of the same config)."""
    out = Path(job.run_dir)
    saved = out / "run_config.yaml"
    if not saved.is_file():
        return False, False
    # same identity (run_key), so a folder saved before a later option existed still matches
    same = run_key(yaml.safe_load(saved.read_text()) or {}) == job.key
    if not same:
        return False, False
    if (out / "metrics.json").is_file() and (out / "history.json").is_file():
        # the config does not see a change of the model's code: a different parameter count does
        from ..baselines import is_estimator
        from ..data.feature_map import FeatureMap
        from ..models import create

        if is_estimator(job.model):  # a GBDT's saved trees, read back and counted (a damaged model: retrain)
            from ..baselines.run import load_estimator

            try:
                built = load_estimator(out, job.model, job.resolved["model_params"])
            except (OSError, ValueError):
                return False, False
        else:
            built = create(job.model, FeatureMap.load(out / "feature_map.json"), **job.resolved["model_params"])
        if built.count_parameters() == json.loads((out / "metrics.json").read_text())["parameters"]:
            return True, False
        return False, False
    return False, any((out / "checkpoints").glob("*"))


def run_job(job: Job, db: str, fresh: bool = False, callbacks=()) -> JobOutcome:
    """Run (or skip, adopt, resume) one job, recording it in the store at ``db``.

    ``callbacks`` run after every epoch, after the store has the epoch; one that raises
    :class:`RunPruned` stops the run, which is then recorded as ``pruned`` (resumable later).
    """
    from ..api import train

    label = _label(job)
    with ResultsStore(db) as store:
        claim = store.claim_run(job.key, fresh=fresh, plan=job.plan, dataset=job.dataset, model=job.model,
                                seed=job.seed, hparam_set=job.hparam_set, protocol=job.protocol, config=job.resolved,
                                run_dir=job.run_dir, environment=environment())
        if claim == "finished":
            row = store.get(job.key)
            return JobOutcome(job.key, label, "skipped", row["test_auc"], row["epochs"])
        if claim == "busy":
            return JobOutcome(job.key, label, "busy")
        try:
            finished, resumable = (False, False) if fresh else _finished_run_folder(job)
            if finished:
                out = Path(job.run_dir)
                metrics = json.loads((out / "metrics.json").read_text())
                history = json.loads((out / "history.json").read_text())
                how = "adopted"
            else:
                # the plan owns the job's folder: what is there and not resumable (another config, a
                # --fresh rerun) is replaced (run_folder never clears a folder that is not a run).
                # The config as a mapping, not a RunConfig: what the plan sets counts as given, so
                # preset auto never re-derives it (even a value equal to its default).
                res = train(dict(job.config), resume=resumable, overwrite=not resumable, log=lambda *a: None,
                            callbacks=[lambda trainer, record: store.record_epoch(job.key, record), *callbacks])
                metrics, history = res.metrics, res.history
                how = "resumed" if resumable else "trained"
            store.finish_run(job.key, metrics, history)
        except RunPruned as exc:
            store.fail_run(job.key, str(exc) or "pruned", status="pruned")
            return JobOutcome(job.key, label, "pruned", error=str(exc) or "pruned")
        except Exception as exc:  # recorded, reported, and the bench goes on with the next job
            store.fail_run(job.key, "".join(traceback.format_exception(exc)))
            return JobOutcome(job.key, label, "failed", error=f"{type(exc).__name__}: {exc}")
        return JobOutcome(job.key, label, how, metrics["test"]["AUC"] if "test" in metrics else None,
                          metrics.get("epochs"))


def _worker_init() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def run_plan(plan: BenchPlan, fresh: bool = False, log: Callable[[str], None] = print) -> list[JobOutcome]:
    """Run every job of ``plan``; returns their outcomes (failed runs included, not raised)."""
    jobs = expand(plan)
    ResultsStore(plan.db).close()  # create the schema once, before workers race to
    log(f"[bench] plan {plan.name!r}: {len(jobs)} runs, {plan.jobs} worker(s), results in {plan.db}")
    outcomes: list[JobOutcome] = []

    def report(o: JobOutcome) -> None:
        outcomes.append(o)
        what = f"test AUC {o.test_auc:.6f}, {o.epochs} epochs" if o.test_auc is not None else (o.error or "")
        log(f"[bench {len(outcomes)}/{len(jobs)}] {o.label}: {o.how}" + (f" ({what})" if what else ""))

    t0 = time.time()
    if plan.jobs == 1:
        for job in jobs:
            report(run_job(job, plan.db, fresh))
    else:
        # spawn: each worker starts a clean interpreter (no inherited torch thread pools)
        with ProcessPoolExecutor(max_workers=plan.jobs, mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(run_job, job, plan.db, fresh) for job in jobs]
            for fut in as_completed(futures):
                report(fut.result())
    counts = {h: sum(o.how == h for o in outcomes) for h in
              ("trained", "resumed", "adopted", "skipped", "busy", "failed")}
    log(f"[bench] done in {(time.time() - t0) / 60:.1f} min: "
        + ", ".join(f"{n} {h}" for h, n in counts.items() if n))
    for o in outcomes:
        if o.how == "failed":
            log(f"[bench] FAILED {o.label}: {o.error} (traceback in the store: runs.error, key {o.key})")
    return outcomes

