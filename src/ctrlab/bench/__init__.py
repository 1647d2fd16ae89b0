"""The open benchmark: plans of runs, the SQLite results store, tuning and the report.

``plan`` (what to run) -> ``runner`` (run it, resumable, in parallel) -> ``store`` (every run and
epoch, one SQLite file) -> ``tune`` (Optuna on the same store) and ``report`` (HTML + Markdown).
"""
from .plan import PROTOCOLS, BenchPlan, Grid, HparamSet, Job, expand, load_plan, make_job, run_key
from .runner import JobOutcome, RunPruned, environment, run_job, run_plan
from .store import ResultsStore, StoreError

__all__ = ["JobOutcome", "PROTOCOLS", "RunPruned", "BenchPlan", "Grid", "HparamSet", "Job", "ResultsStore", "StoreError", "environment",
           "expand", "load_plan", "make_job", "run_job", "run_key", "run_plan"]
