"""The benchmark report: a static HTML page and a Markdown summary, read from the results store.

    ctrlab report --db runs/bench/results.sqlite --output runs/bench/report

writes ``report.html`` (self-contained: tables, inline SVG plots, a few lines of inline script to
sort tables; no network access needed to open it), ``report.md`` and the plots as SVG files
beside them. Contents per dataset: a leaderboard (mean ± sample std over seeds of test AUC,
logloss, normalized entropy, calibration ratio and ECE; parameters, FLOPs per row, inference
latency of 1 and 4096 rows, seconds per epoch, training throughput) beside the published BARS
numbers for the same split (``published/bars.csv``, each row with its source), AUC vs parameters,
AUC vs throughput, the learning curves and a reliability diagram of the test predictions; then the
tuning studies, the protocol, the selection rule and the environment the runs ran in.

The calibration and cost numbers are read from each run's metrics.json (the store's ``metrics``
column): a run recorded before they existed shows "–" in their columns and no reliability line.

Runs are grouped into one leaderboard row when their resolved configs are equal except for the
seed (and run folder / thread count): a row is one experiment repeated over seeds.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .plan import PROTOCOLS
from .store import ResultsStore
from .tune import SELECTION_RULE

# ctrlab dataset -> (published split, whether the numbers are comparable: same train data)
PUBLISHED_SPLITS: dict[str, tuple[str, bool]] = {
    "frappe_x1": ("Frappe_x1", True),
    "frappe_x1_subset": ("Frappe_x1", False),  # 23% of the BARS train rows: orientation only
    "movielenslatest_x1": ("MovielensLatest_x1", True),
    "criteo_x1": ("Criteo_x1", True),
    "avazu_x1": ("Avazu_x1", True),
}
LEADERBOARD_RULE = ("rows ranked by mean test AUC over seeds; a row is one resolved config repeated over "
                    "seeds; ± is the sample standard deviation over seeds; Δ vs #1 (p): the gap to the top row "
                    "and Welch's t-test p-value over the seeds (p > 0.05: not distinguishable from the top row "
                    "with these seeds)")

COST_RULE = ("Calibration = mean prediction / observed click rate (1 is calibrated), ECE over 10 bins, NE = "
             "logloss / the base rate's entropy (below 1 beats predicting the base rate). FLOPs/row counts "
             "matrix multiplies only (torch's FlopCounterMode: lookups and element-wise operations are not "
             "counted); latency: the median milliseconds of one predict_proba call after a warm-up, mean over "
             "seeds.")


def load_published() -> dict[str, dict[str, dict[str, Any]]]:
    """Published numbers shipped with ctrlab: split -> model -> {auc, logloss, source}."""
    text = (resources.files("ctrlab") / "bench" / "published" / "bars.csv").read_text()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out.setdefault(row["split"], {})[row["model"]] = {
            "auc": float(row["auc"]), "logloss": float(row["logloss"]), "source": row["source"]}
    return out


def _group_key(run: dict[str, Any]) -> str:
    cfg = json.loads(json.dumps(run["config"]))
    cfg.pop("output", None)
    cfg.pop("measure_cost", None)  # what is measured after training, not the experiment
    trainer = cfg.get("trainer", {})
    for k in ("seed", "num_threads", "progress"):
        trainer.pop(k, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


@dataclass
class Row:
    """One leaderboard row: an experiment over its seeds."""

    dataset: str
    model: str
    hparam_set: str
    protocol: str
    group: str
    runs: list[dict[str, Any]]
    curves: list[list[float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.model + ("" if self.hparam_set == "preset" else f" [{self.hparam_set}]") + \
            ("" if self.protocol == "bars" else f" ({self.protocol})")

    def stat(self, col: str) -> tuple[float, float] | None:
        xs = [r[col] for r in self.runs if r.get(col) is not None]
        return _mean_std(xs) if xs else None

    def metric(self, section: str, name: str) -> tuple[float, float] | None:
        """Mean ± sample std over the seeds of ``metrics.json[section][name]`` (``("test", "NE")``,
        ``("cost", "latency_ms_1_row")``); None when no run has it (a run from before it existed)."""
        xs = [v for r in self.runs if isinstance(v := ((r.get("metrics") or {}).get(section) or {}).get(name),
                                                     (int, float)) and v == v]
        return _mean_std(xs) if xs else None

    def reliability(self, split: str = "test") -> tuple[list[float], list[float], list[int]] | None:
        """The seeds' reliability diagrams of ``split`` pooled bin by bin: per non-empty bin the
        count-weighted mean prediction and observed click rate over all seeds' rows (what one diagram
        of their predictions concatenated shows) and the rows; None when no run recorded one."""
        diagrams = [d for r in self.runs
                    if isinstance(d := ((r.get("metrics") or {}).get("reliability") or {}).get(split), dict)]
        if not diagrams:
            return None
        bins = len(diagrams[0]["count"])
        if any(len(d["count"]) != bins for d in diagrams):
            raise ValueError(f"{self.label}: the seeds' {split} reliability diagrams have different bin counts "
                             f"{sorted({len(d['count']) for d in diagrams})}; they cannot be pooled")
        pred, rate, rows = [], [], []
        for b in range(bins):
            n = sum(d["count"][b] for d in diagrams if d["count"][b])
            if not n:
                continue
            pred.append(sum(d["count"][b] * d["mean_prediction"][b] for d in diagrams if d["count"][b]) / n)
            rate.append(sum(d["count"][b] * d["observed_rate"][b] for d in diagrams if d["count"][b]) / n)
            rows.append(n)
        return pred, rate, rows

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for r in self.runs)


def select_runs(store: ResultsStore, plan: str | None = None) -> list[dict[str, Any]]:
    """Finished runs: all of them; those of a plan YAML (exactly its runs, by key, whichever plan
    first trained them); or those labelled with a plan name."""
    if plan and plan.endswith((".yaml", ".yml")) and Path(plan).is_file():
        from .plan import expand, load_plan

        keys = {job.key for job in expand(load_plan(plan))}
        return [r for r in store.runs() if r["key"] in keys]
    return store.runs(plan=plan)


def leaderboard(store: ResultsStore, plan: str | None = None, include_tuning: bool = False) -> dict[str, list[Row]]:
    """Finished runs (see :func:`select_runs`) grouped into rows, per dataset, best mean test AUC first."""
    groups: dict[tuple, Row] = {}
    for r in select_runs(store, plan):
        if r["plan"].startswith("tune:") and not include_tuning:
            continue
        key = (r["dataset"], _group_key(r))
        row = groups.setdefault(key, Row(r["dataset"], r["model"], r["hparam_set"], r["protocol"], key[1], []))
        row.runs.append(r)
        row.curves.append([e["valid_auc"] for e in store.epochs(r["key"])])
    out: dict[str, list[Row]] = {}
    for row in groups.values():
        out.setdefault(row.dataset, []).append(row)
    for rows in out.values():
        rows.sort(key=lambda row: -(row.stat("test_auc") or (float("-inf"), 0))[0])
        labels = [row.label for row in rows]
        for row in rows:  # same label, different configs: tell them apart by config hash
            if labels.count(row.label) > 1:
                row.hparam_set = f"{row.hparam_set}#{row.group}"
    return dict(sorted(out.items()))


# ---- plots -----------------------------------------------------------------------------------
def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _plots(dataset: str, rows: list[Row]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "ctrlab", "font.size": 9})
    plots: dict[str, str] = {}
    pts = [(row, row.stat("test_auc"), row.stat("parameters"), row.stat("samples_per_s")) for row in rows]
    for name, idx, xlabel in (("auc_vs_parameters", 2, "parameters"),
                              ("auc_vs_throughput", 3, "training throughput (samples/s, 1 thread)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for row, auc, *xs in pts:
            x = xs[idx - 2]
            if auc is None or x is None:
                continue
            ax.errorbar(x[0], auc[0], yerr=auc[1], fmt="o", capsize=3)
            ax.annotate(row.label, (x[0], auc[0]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(f"{dataset}: test AUC vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        plots[name] = _svg(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, row in enumerate(rows[:12]):  # the best 12 rows: more lines are unreadable
        longest = max(len(c) for c in row.curves)
        mean = [statistics.mean([c[e] for c in row.curves if len(c) > e]) for e in range(longest)]
        # 10 colours in the default cycle: the lines after them are dashed so no two look alike
        ax.plot(range(1, longest + 1), mean, label=row.label, linewidth=1.2, linestyle="-" if i < 10 else "--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC (mean over the seeds still training)")
    ax.set_title(f"{dataset}: learning curves")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7, ncol=2)
    plots["learning_curves"] = _svg(fig)
    plt.close(fig)
    curves = [(i, row, d) for i, row in enumerate(rows[:12]) if (d := row.reliability("test")) is not None]
    if curves:  # runs recorded before metrics.json had "reliability" draw none
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        top = max(max(max(pred), max(rate)) for _, _, (pred, rate, _) in curves)
        top = min(1.02, top * 1.05) or 1.0  # rates reach 1: a margin keeps their points inside the frame
        ax.plot([0, top], [0, top], color="0.6", linestyle=":", linewidth=1, label="perfectly calibrated")
        for i, row, (pred, rate, _) in curves:
            ax.plot(pred, rate, marker="o", markersize=3, label=row.label, linewidth=1.2,
                    linestyle="-" if i < 10 else "--")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("mean predicted click probability (bin)")
        ax.set_ylabel("observed click rate (bin)")
        ax.set_title(f"{dataset}: reliability (test, seeds pooled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        plots["reliability"] = _svg(fig)
        plt.close(fig)
    return plots


# ---- tables ----------------------------------------------------------------------------------
def _fmt(stat: tuple[float, float] | None, digits: int = 4) -> str:
    return "–" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _versus_best(row: Row, best: Row) -> str:
    """Δ mean test AUC to the top row and Welch's t-test p-value over the two rows' seeds: whether
    the gap is larger than the seed noise (BARS ranks single runs, whose spread can exceed the gaps)."""
    if row is best:
        return "–"
    a = [r["test_auc"] for r in row.runs if r.get("test_auc") is not None]
    b = [r["test_auc"] for r in best.runs if r.get("test_auc") is not None]
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{diff:+.4f}"
    from scipy.stats import ttest_ind

    p = ttest_ind(a, b, equal_var=False).pvalue
    return f"{diff:+.4f} ({p:.2g})" if p == p else f"{diff:+.4f}"  # NaN when both spreads are 0


def table_rows(dataset: str, rows: list[Row], published: dict) -> tuple[list[str], list[list[str]], str | None]:
    """(header, cells, note) of one dataset's leaderboard."""
    split, comparable = PUBLISHED_SPLITS.get(dataset, (None, False))
    pub = published.get(split, {}) if split else {}
    header = ["#", "model", "seeds", "test AUC", "Δ vs #1 (p)", "test logloss", "test NE", "test calibration",
              "test ECE", "valid AUC", "epochs", "parameters", "FLOPs/row", "latency 1 row (ms)",
              "latency 4096 rows (ms)", "s/epoch", "samples/s"]
    if pub:
        header.append(f"BARS {split} AUC / logloss" + ("" if comparable else " (full train, not comparable)"))
    cells = []
    for i, row in enumerate(rows, 1):
        params = row.stat("parameters")
        spe, sps = row.stat("seconds_per_epoch"), row.stat("samples_per_s")
        flops, ms_1, ms_4096 = (row.metric("cost", k) for k in ("flops_per_row", "latency_ms_1_row",
                                                                 "latency_ms_4096_rows"))
        c = [str(i), row.label, str(len(row.runs)), _fmt(row.stat("test_auc")), _versus_best(row, rows[0]),
             _fmt(row.stat("test_logloss")), _fmt(row.metric("test", "NE")), _fmt(row.metric("test", "calibration")),
             _fmt(row.metric("test", "ECE")),
             _fmt(row.stat("valid_auc")), _fmt(row.stat("epochs"), 1), f"{params[0]:,.0f}" if params else "–",
             f"{flops[0]:,.0f}" if flops else "–", f"{ms_1[0]:.3f}" if ms_1 else "–",
             f"{ms_4096[0]:.2f}" if ms_4096 else "–",
             f"{spe[0]:.2f}" if spe else "–", f"{sps[0]:,.0f}" if sps else "–"]
        if pub:
            p = pub.get(row.model)
            c.append(f"{p['auc']:.4f} / {p['logloss']:.4f}" if p else "–")
        cells.append(c)
    notes = []
    if pub:
        sources = sorted({pub[r.model]["source"] for r in rows if r.model in pub})
        notes.append(f"Published numbers: {', '.join(sources) or 'none for these models'} (single seed-2021 runs on the "
                     f"{split} split{'' if comparable else '; this dataset trains on a subset of it, so they are shown for orientation only'}).")
    measured = sorted({(c["threads"], c.get("device", "cpu")) for row in rows for r in row.runs
                       if isinstance(c := (r.get("metrics") or {}).get("cost"), dict) and "threads" in c})
    if measured:
        notes.append(COST_RULE + " Measured with " + ", ".join(
            f"{t} thread{'s' if t != 1 else ''} on {d}" for t, d in measured) + ".")
    return header, cells, " ".join(notes) or None


def _md_table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def _html_table(header: list[str], cells: list[list[str]], cls: str = "leaderboard") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _tuning(store: ResultsStore) -> list[dict[str, Any]]:
    """One summary per Optuna study in the store (none when no study was run)."""
    try:
        import optuna
        from optuna.trial import TrialState
    except ImportError:  # pragma: no cover - optuna is a dependency
        return []
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "studies" not in tables:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for summary in optuna.get_all_study_summaries(storage=store.url):
        study = optuna.load_study(study_name=summary.study_name, storage=store.url)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value) if done else None
        out.append({"study": summary.study_name, "trials": len(trials), "complete": len(done),
                    "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                    "failed": sum(t.state == TrialState.FAIL for t in trials),
                    "best_trial": best.number if best else None, "best_value": best.value if best else None,
                    "best_test_auc": best.user_attrs.get("test_auc_mean") if best else None,
                    "best_params": best.params if best else {}})
    return out


def _environments(store: ResultsStore, plan: str | None) -> list[tuple[str, int]]:
    envs: dict[str, int] = {}
    for r in select_runs(store, plan):
        e = r.get("environment") or {}
        text = (f"ctrlab {e.get('ctrlab')} (commit {e.get('git_commit') or 'unknown'}), torch {e.get('torch')}, "
                f"Python {e.get('python')}, {e.get('cpu')} ({e.get('cores')} cores), CUDA {e.get('cuda')}")
        envs[text] = envs.get(text, 0) + 1
    return sorted(envs.items(), key=lambda kv: -kv[1])


def _protocols_text() -> list[str]:
    return [f"{name}: " + (", ".join(f"{k}={v}" for k, v in o.items()) if o else
                           "BARS as FuxiCTR runs it: early stop on validation AUC with patience 2, "
                           "LR ×0.1 on every plateau epoch, best weights restored, then test")
            for name, o in PROTOCOLS.items()]


# ---- the report ------------------------------------------------------------------------------
@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    plots: list[Path]


def build_report(db: str | Path, output: str | Path, plan: str | None = None,
                 title: str = "ctrlab benchmark report") -> ReportFiles:
    """Write report.html, report.md and the plots for the finished runs in ``db`` (one plan or all)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    if not Path(db).is_file():
        raise FileNotFoundError(f"{db}: no results store here (run `ctrlab bench PLAN.yaml` first, or pass --db)")
    output = Path(output)
    (output / "plots").mkdir(parents=True, exist_ok=True)
    published = load_published()
    with ResultsStore(db) as store:
        boards = leaderboard(store, plan)
        tuning = _tuning(store)
        envs = _environments(store, plan)
    if not boards and not tuning:
        raise ValueError(f"{db}: no finished runs{f' of plan {plan!r}' if plan else ''} to report "
                         "(run `ctrlab bench PLAN.yaml` first)")
    sections, md, plot_files = [], [f"# {title}", ""], []
    md += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{db}`"
           + (f" (plan `{plan}`)" if plan else "") + ".", ""]
    for dataset, rows in boards.items():
        header, cells, note = table_rows(dataset, rows, published)
        plots = _plots(dataset, rows)
        for name, svg in plots.items():
            path = output / "plots" / f"{dataset}_{name}.svg"
            path.write_text(svg)
            plot_files.append(path)
        sections.append({"dataset": dataset, "table": _html_table(header, cells), "note": note,
                         "runs": sum(len(r.runs) for r in rows), "plots": plots})
        md += [f"## {dataset}", "", _md_table(header, cells), ""] + ([note, ""] if note else [])
        md += [f"![{n}](plots/{dataset}_{n}.svg)" for n in plots] + [""]
    tuning_table = None
    if tuning:
        header = ["study", "trials", "complete", "pruned", "failed", "best trial", "best mean valid AUC",
                  "its test AUC", "best parameters"]
        cells = [[t["study"], str(t["trials"]), str(t["complete"]), str(t["pruned"]), str(t["failed"]),
                  str(t["best_trial"]), f"{t['best_value']:.6f}" if t["best_value"] is not None else "–",
                  f"{t['best_test_auc']:.6f}" if t["best_test_auc"] is not None else "–",
                  json.dumps(t["best_params"])] for t in tuning]
        tuning_table = _html_table(header, cells, "tuning")
        md += ["## Tuning", "", _md_table(header, cells), "", f"Selection rule: {SELECTION_RULE}.", ""]
    md += ["## Protocol and environment", "", f"* Leaderboard: {LEADERBOARD_RULE}.",
           f"* Tuning selection rule: {SELECTION_RULE}."]
    md += [f"* Protocol {p}." for p in _protocols_text()]
    md += [f"* {n} runs: {e}" for e, n in envs]
    env = Environment(loader=PackageLoader("ctrlab", "bench/templates"), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=title, generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), db=str(db), plan=plan,
        sections=sections, tuning_table=tuning_table, selection_rule=SELECTION_RULE,
        leaderboard_rule=LEADERBOARD_RULE, protocols=_protocols_text(), environments=envs)
    (output / "report.html").write_text(page)
    (output / "report.md").write_text("\n".join(md) + "\n")
    return ReportFiles(output / "report.html", output / "report.md", plot_files)
