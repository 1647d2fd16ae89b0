"""QIN and item content vectors measured (issue 18): QIN against DNN, DIN and FinalMLP on
``movielens_latest_small``, each with and without the items' text vectors.

    python benchmarks/qin.py                 # -> docs/results.md (qin-content section), docs/qin.json
    python benchmarks/qin.py --quick --output none --json /tmp/q.json   # a smoke run

Every run is ``ctrlab train`` with ctrlab's defaults (``preset: auto``), seeds 2021, 2022, 2023, test
AUC and logloss. *With vectors*: ``dataset_params.item_text_dim: 32`` adds ``item_text_vec``, the TF-IDF +
truncated SVD vector of each movie's title, genres and tags, fitted on the train split's movies
(docs/data.md, "Item vectors"); DNN, DIN and FinalMLP read it as one more field, QIN as its multimodal
vector of the candidate (``model_params.multimodal_field: item_text_vec``). *Without*: the same split
and fields minus that one. Δ = with − without, Welch SE.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, mean_std_se, publish  # noqa: E402

DATASET = "movielens_latest_small"
MODELS = ["DNN", "DIN", "FinalMLP", "QIN"]
SEEDS = [2021, 2022, 2023]
TEXT_DIM = 32
BEGIN, END = markers("qin-content")


def run_one(model: str, vectors: bool, seed: int, runs: Path, quick: bool) -> dict:
    from ctrlab import api

    overrides = ["trainer.progress=false", f"trainer.seed={seed}"] + (["trainer.epochs=1"] if quick else [])
    if vectors:
        overrides.append(f"dataset_params.item_text_dim={TEXT_DIM}")
        if model == "QIN":
            overrides.append("model_params.multimodal_field=item_text_vec")
    run_dir = runs / model / ("vectors" if vectors else "plain") / f"s{seed}"
    result = api.train(dataset=DATASET, model=model, output=str(run_dir), overrides=overrides, overwrite=True,
                       log=lambda *a: None)
    test = result.metrics["test"]
    return {"model": model, "vectors": vectors, "seed": seed, "auc": test["AUC"], "logloss": test["logloss"],
            "epochs": len(result.history), "warnings": [w["code"] for w in result.metrics.get("warnings", [])]}


def render(rows: list[dict]) -> str:
    lines = [BEGIN, f"## Item content vectors and QIN (`python benchmarks/qin.py`)", "",
             f"`{DATASET}` with defaults (`preset: auto`), seeds {', '.join(map(str, SEEDS))}, test AUC and logloss "
             "mean ± sample std; *with vectors*: the movies' TF-IDF + SVD text vectors (title, genres, tags; "
             f"{TEXT_DIM} values, fitted on the train split's movies) as a field (QIN: its multimodal vector); "
             "Δ AUC = with − without ± Welch SE (module docstring of `benchmarks/qin.py`).", "",
             "| model | n | AUC without | AUC with vectors | Δ AUC ± SE | logloss without | logloss with |",
             "|---|---|---|---|---|---|---|"]
    for model in MODELS:
        plain = [r for r in rows if r["model"] == model and not r["vectors"]]
        vec = [r for r in rows if r["model"] == model and r["vectors"]]
        if not plain and not vec:
            continue

        def fmt(rs, key):
            if not rs:
                return "–"
            m, s, _ = mean_std_se([r[key] for r in rs])
            return f"{m:.4f} ± {s:.4f}"

        delta = "–"
        if plain and vec:
            mp, _, sp = mean_std_se([r["auc"] for r in plain])
            mv, _, sv = mean_std_se([r["auc"] for r in vec])
            d, se = mv - mp, (sp ** 2 + sv ** 2) ** 0.5
            delta = f"{d:+.4f} ± {se:.4f}" + (" (> 2 SE)" if abs(d) > 2 * se and se > 0 else "")
        lines.append(f"| {model} | {len(plain)}/{len(vec)} | {fmt(plain, 'auc')} | {fmt(vec, 'auc')} | {delta} | "
                     f"{fmt(plain, 'logloss')} | {fmt(vec, 'logloss')} |")
    warned = sorted({w for r in rows for w in r["warnings"]})
    lines += ["", f"Run warnings seen: {', '.join(warned) if warned else 'none'} (each run's `metrics.json`).", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--seeds", nargs="*", type=int, default=SEEDS)
    ap.add_argument("--quick", action="store_true", help="1 epoch, one seed: checks the script")
    ap.add_argument("--runs", default=str(REPO / "runs" / "qin"))
    ap.add_argument("--output", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--json", default=str(REPO / "docs" / "qin.json"))
    ap.add_argument("--render-only", action="store_true", help="publish the results already in --json, train nothing")
    args = ap.parse_args(argv)
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.exists() else []
    if not args.render_only:
        seeds = args.seeds[:1] if args.quick else args.seeds
        have = {(r["model"], r["vectors"], r["seed"]) for r in rows}
        for seed in seeds:  # seed-major: an interrupted call leaves every cell at the same n
            for model in args.models:
                for vectors in (False, True):
                    if (model, vectors, seed) in have:
                        continue
                    rows.append(run_one(model, vectors, seed, Path(args.runs), args.quick))
                    path.write_text(json.dumps(rows, indent=1))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    publish(render(rows), args.output, None, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
