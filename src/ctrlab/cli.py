"""Command line: a thin layer over :mod:`ctrlab.api`.

    ctrlab train --dataset frappe_x1_subset --model FinalMLP [--config F] [--set key=value ...]
    ctrlab evaluate RUN [--json] [--uncalibrated]
    ctrlab calibrate RUN --method platt|isotonic
    ctrlab predict RUN --input raw.csv --output scores.csv [--keep-columns id,ts]
    ctrlab export RUN [--format onnx|torch] [--output DIR]
    ctrlab optembed --dataset D --model M --output RUN [--alpha A] [--set key=value ...]
    ctrlab distill --dataset D --teacher FinalMLP --student DNN --output RUN [--weight L] [--loss bce|mse]
    ctrlab serve ARTIFACT [--host 127.0.0.1] [--port 8000]
    ctrlab compress RUN --output DIR --rank K | ctrlab optinter --dataset D --output DIR
    ctrlab bench PLAN.yaml [--jobs N] [--db F]          (or --from-fuxictr CONFIG --expid ID)
    ctrlab tune SEARCH.yaml [--trials N] [--minutes M]
    ctrlab report [--db F] [--output DIR]
    ctrlab datasets | ctrlab models
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.6f}" for k, v in metrics.items() if isinstance(v, float))


def cmd_train(args) -> int:
    from .api import train

    overrides = list(args.set or [])
    kwargs = {"dataset": args.dataset, "model": args.model, "output": args.output, "preset": args.preset}
    if args.download:
        overrides.append("download=true")
    if args.seed is not None:
        overrides.append(f"trainer.seed={args.seed}")
    if args.epochs is not None:
        overrides.append(f"trainer.epochs={args.epochs}")
    result = train(args.config, overrides=overrides, resume=args.resume, overwrite=args.overwrite,
                   distributed=True if args.distributed else None, **kwargs)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports
    m = result.metrics
    rounds = m.get("estimator")  # a non-torch baseline: boosting rounds and tree nodes
    print(f"[ctrlab] {m['model']} on {m['dataset']} (seed {m['seed']}, {m['epochs']} {'rounds' if rounds else 'epochs'}, "
          f"{m['parameters']:,} {rounds['parameters_unit'] if rounds else 'parameters'})")
    for split in ("valid", "test"):
        if split in m:
            print(f"[ctrlab] {split}: {_fmt(m[split])}")
    print(f"[ctrlab] run folder: {result.run_dir.resolve()}")
    print(f"[ctrlab] report: {(result.run_dir / 'metrics.json').resolve()}")
    if m.get("warnings"):  # printed above with their fixes; say so where the eye lands last
        codes = ", ".join(dict.fromkeys(w["code"] for w in m["warnings"]))
        print(f"[ctrlab] WARNING: {len(m['warnings'])} warning(s) about this run ({codes}); see above or metrics.json")
    return 0


_METRIC_NOTES = {
    "AUC": "ROC AUC (higher is better)",
    "logloss": "binary cross-entropy (lower is better)",
    "NE": "normalized entropy: logloss / logloss of the base rate (< 1 beats it)",
    "calibration": "mean prediction / observed positive rate (1 = calibrated)",
    "ECE": "expected calibration error, 10 bins (lower is better)",
    "gAUC": "AUC per group, weighted by group size",
    "gAUC_mean": "AUC per group, plain mean over groups",
    "MRR": "mean reciprocal rank of a group's best-ranked positive",
    "nDCG@5": "nDCG of the top 5 per group",
    "nDCG@10": "nDCG of the top 10 per group",
}


def metrics_table(res: dict[str, dict[str, float]]) -> str:
    """``{split: {metric: value}}`` as a text table: a row per metric, a column per split, then what
    the metric means (a multi-task model's ``<task>_<metric>`` rows after the main task's)."""
    from .train.metrics import task_metric

    splits = list(res)
    names = list(dict.fromkeys(k for m in res.values() for k in m))
    width = max([len("metric"), *map(len, names)])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>10}" for s in splits)]
    for name in names:
        cells = "  ".join(f"{res[s][name]:>10.6f}" if isinstance(res[s].get(name), float) else f"{'-':>10}"
                          for s in splits)
        try:
            note = _METRIC_NOTES.get(task_metric(name)[1], "")
        except ValueError:
            note = ""
        lines.append(f"{name:<{width}}  {cells}  {note}".rstrip())
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .api import evaluate
    from .serve.calibration import load_calibration

    res = evaluate(args.run, tuple(args.splits), calibrated=not args.uncalibrated)
    cal = None if args.uncalibrated else load_calibration(args.run)
    print(f"[ctrlab] {args.run}" + (f" (calibrated: {cal.method}, fitted on the valid split; --uncalibrated for the "
                                    "model's own probabilities)" if cal else "") + ":")
    print(metrics_table(res))
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_calibrate(args) -> int:
    from .api import calibrate

    record = calibrate(args.run, args.method)
    columns = {}
    for split in record["before"]:
        columns[split] = record["before"][split]
        columns[f"{split}+cal"] = record["after"][split]
    print(metrics_table(columns))
    print(f"[ctrlab] columns +cal: calibrated. Wrote {record['file']} into {args.run}: predict, evaluate, export and "
          "serve apply it (metrics.json: 'calibration')")
    return 0


def cmd_predict(args) -> int:
    from .api import predict

    keep = [c.strip() for c in args.keep_columns.split(",") if c.strip()] if args.keep_columns else None
    probs = predict(args.run, args.input, args.output, input_format=args.format, keep_columns=keep)
    print(f"[ctrlab] wrote {len(probs):,} probabilities to {args.output}")
    return 0


def cmd_export(args) -> int:
    from .serve.artifact import export_run

    out = export_run(args.run, args.output, format=args.format, opset=args.opset, overwrite=args.overwrite)
    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest.get("parity")
    print(f"[ctrlab] exported {manifest['model']['name']} ({args.format}) to {out.resolve()}")
    if parity:
        print(f"[ctrlab] parity ONNX Runtime vs PyTorch: max |dp| = {parity['max_abs_diff']:.2e} on {parity['rows']:,} rows")
    print(f"[ctrlab] serve it: ctrlab serve {out}")
    return 0


def cmd_compress(args) -> int:
    from .api import compress

    layers = [c.strip() for c in args.layers.split(",") if c.strip()] if args.layers else None
    res = compress(args.run, args.output, method=args.method, rank=args.rank, keep=args.keep, layers=layers,
                   rows=args.rows, embedding_rank=args.embedding_rank if args.embedding_keep is None else args.embedding_keep,
                   finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, overwrite=args.overwrite)
    print(json.dumps({k: res.metrics[k] for k in ("valid", "test", "parameters") if k in res.metrics}))
    print(f"[ctrlab] compressed run: {res.run_dir} (export it: ctrlab export {res.run_dir})")
    return 0


def _recipe_overrides(args) -> list[str]:
    """A recipe command's --set list with its --seed / --epochs shortcuts."""
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"trainer.seed={args.seed}")
    if args.epochs is not None:
        overrides.append(f"trainer.epochs={args.epochs}")
    return overrides


def cmd_optinter(args) -> int:
    from .api import opt_inter

    overrides = _recipe_overrides(args)
    if args.cross_min_count is not None:
        overrides.append(f"crosses.min_count={args.cross_min_count}")
    kwargs = {"dataset": args.dataset, "model": args.model, "preset": args.preset}
    res = opt_inter(args.config, overrides=overrides, output=args.output, search_epochs=args.search_epochs,
                    overwrite=args.overwrite, **kwargs)
    report = res.metrics["optinter"]
    for pair, method in report["chosen"].items():
        print(f"[ctrlab] pair {pair}: {method}")
    print(json.dumps({"counts": report["counts"], "parameters": report["parameters"],
                      "parameters_all_memorize": report["parameters_fixed"]["all_memorize"],
                      "parameters_all_factorize": report["parameters_fixed"]["all_factorize"],
                      **{k: res.metrics[k] for k in ("valid", "test") if k in res.metrics}}))
    print(f"[ctrlab] retrained run: {res.run_dir} (search phase in {res.run_dir / 'search'}; "
          f"export it: ctrlab export {res.run_dir})")
    return 0


def cmd_optembed(args) -> int:
    from .api import opt_embed

    overrides = _recipe_overrides(args)
    options = {k: v for k, v in {"alpha": args.alpha, "threshold_lr": args.threshold_lr,
                                 "supernet_epochs": args.supernet_epochs, "search_rounds": args.search_rounds,
                                 "search_rows": args.search_rows}.items() if v is not None}
    res = opt_embed(args.config, output=args.output, options=options, overrides=overrides, overwrite=args.overwrite,
                    dataset=args.dataset, model=args.model, preset=args.preset)
    rec = res.metrics["opt_embed"]
    print(json.dumps({"test": res.metrics.get("test"), "sparsity": rec["sparsity"],
                      "embedding_parameters_kept": rec["embedding_parameters_kept"],
                      "embedding_parameters_full": rec["embedding_parameters_full"],
                      "tables": {n: {k: t[k] for k in ("fields", "widths", "kept_features", "features")}
                                 for n, t in rec["tables"].items()}}))
    print(f"[ctrlab] OptEmbed run: {res.run_dir} (supernet: {rec['supernet_run']}; export it: ctrlab export {res.run_dir})")
    return 0


def _params_arg(text: str | None, flag: str) -> dict | None:
    """A --*-params value: a YAML/JSON mapping inline, or the path of a YAML/JSON file holding one."""
    if text is None:
        return None
    import yaml

    from .config import ConfigError

    path = os.path.expanduser(text)
    try:
        value = yaml.safe_load(open(path, encoding="utf-8").read() if os.path.isfile(path) else text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: {text!r} is neither a YAML/JSON mapping nor a file holding one ({exc})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: {text!r} is not a mapping of hyperparameters; write e.g. "
                          "'{hidden_units: [64, 64], embedding_dim: 8}' or a YAML file's path")
    return value


def cmd_distill(args) -> int:
    from .api import distill

    overrides = _recipe_overrides(args)
    res = distill(args.config, teacher=args.teacher, teacher_params=_params_arg(args.teacher_params, "--teacher-params"),
                  weight=args.weight, loss=args.loss, temperature=args.temperature, output=args.output,
                  overrides=overrides, resume=args.resume, overwrite=args.overwrite, dataset=args.dataset,
                  model=args.student, model_params=_params_arg(args.student_params, "--student-params"),
                  preset=args.preset)
    rec = res.metrics["distill"]
    print(json.dumps({"student": {"model": res.metrics["model"], "parameters": res.metrics["parameters"],
                                  **{s: res.metrics[s] for s in ("valid", "test") if s in res.metrics}},
                      "teacher": {"model": rec["teacher"], "parameters": rec["teacher_parameters"],
                                  **{s: rec[s] for s in ("valid", "test") if s in rec}},
                      "weight": rec["weight"], "loss": rec["loss"], "temperature": rec["temperature"]}))
    print(f"[ctrlab] student run: {res.run_dir} (teacher: {res.run_dir / rec['teacher_run']}; export it: "
          f"ctrlab export {res.run_dir})")
    return 0


def cmd_serve(args) -> int:
    from .serve.config import ServeConfig
    from .serve.server import serve

    cfg = ServeConfig(host=args.host, port=args.port, backend=args.backend, threads=args.threads,
                      max_body_bytes=int(args.max_body_mb * (1 << 20)), max_request_rows=args.max_request_rows,
                      max_batch_rows=args.max_batch_rows,
                      interleave_rows=args.interleave_rows, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                      access_log=args.access_log, max_rows_in_flight=args.max_rows_in_flight,
                      max_body_bytes_in_flight=int(args.max_body_mb_in_flight * (1 << 20)), api_docs=args.api_docs,
                      max_users=args.max_users)
    try:
        serve(args.artifact, cfg)
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: uvicorn has shut down cleanly and re-raises it
        print("ctrlab serve: stopped", file=sys.stderr)
        return 130
    return 0


def cmd_bench(args) -> int:
    from .bench import load_plan, run_plan

    if args.from_fuxictr:
        from .bench.fuxictr import plan_from_fuxictr

        if args.plan:
            raise ValueError("give either PLAN.yaml or --from-fuxictr, not both")
        plan = plan_from_fuxictr(args.from_fuxictr, args.expid, dataset_config=args.dataset_config,
                                 dataset=args.dataset, seeds=args.seeds, db=args.db, jobs=args.jobs)
    elif args.plan:
        plan = load_plan(args.plan, jobs=args.jobs, db=args.db)
    else:
        raise ValueError("give a plan YAML (see benchmarks/plans/) or --from-fuxictr MODEL_CONFIG --expid ID")
    if args.dry_run:
        from .bench import expand

        for job in expand(plan):
            print(f"{job.key}  {job.dataset} {job.protocol} {job.model} [{job.hparam_set}] seed {job.seed} -> {job.run_dir}")
        return 0
    outcomes = run_plan(plan, fresh=args.fresh)
    print(f"[ctrlab] results store: {plan.db}  (report: ctrlab report --db {plan.db})")
    return 1 if any(o.how == "failed" for o in outcomes) else 0


def cmd_tune(args) -> int:
    from .bench.tune import load_tune_config, tune

    cfg = load_tune_config(args.config, trials=args.trials, minutes=args.minutes, db=args.db)
    res = tune(cfg)
    print(f"[ctrlab] best {cfg.model} on {cfg.dataset}: mean valid AUC {res.best_value:.6f}; {res.best_params}")
    print(f"[ctrlab] study {cfg.name!r} in {cfg.db} (rerun the same command to continue it)")
    return 0


def cmd_report(args) -> int:
    from .bench.report import build_report

    files = build_report(args.db, args.output, plan=args.plan, title=args.title)
    print(f"[ctrlab] report: {files.html.resolve()}")
    print(f"[ctrlab] summary: {files.markdown.resolve()} ({len(files.plots)} plots in {files.html.parent / 'plots'})")
    return 0


def cmd_datasets(args) -> int:
    from .data.datasets import list_datasets

    for name in list_datasets():
        print(name)
    return 0


def cmd_models(args) -> int:
    from .baselines import estimator_defaults, list_estimators
    from .models import default_hparams, list_models

    for name in list_models():
        print(name if not args.verbose else f"{name}: {default_hparams(name)}")
    for name in list_estimators():  # non-torch baselines (docs/baselines.md): train, evaluate, predict, bench
        print(name if not args.verbose else f"{name} (non-torch baseline): {estimator_defaults(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrlab", description="CTR prediction: train, evaluate, predict.")
    p.add_argument("--import", dest="plugins", action="append", metavar="MODULE",
                   help="import a module or .py file that registers models of your own (repeatable; before the "
                        "command: ctrlab --import my_models.py train ...); also CTRLAB_PLUGINS=a,b and entry "
                        "points in the group ctrlab.models. See docs/adding_a_model.md")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate a model on a dataset")
    t.add_argument("--dataset", help="registered dataset name or dataset YAML (default frappe_x1_subset)")
    t.add_argument("--model", help="registered model name (default FinalMLP)")
    t.add_argument("--config", help="run config YAML (dataset, model, model_params, trainer, ...)")
    t.add_argument("--preset", help="hyperparameter preset: auto (BARS-tuned when shipped, the default), none, or a YAML")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. trainer.lr=1e-3")
    t.add_argument("--output", help="run folder (default: a new runs/<dataset>/<model>-<time>-s<seed>-<hex>); "
                   "a folder that already holds a run is refused unless --resume or --overwrite")
    t.add_argument("--seed", type=int, help="shortcut for --set trainer.seed=N")
    t.add_argument("--epochs", type=int, help="shortcut for --set trainer.epochs=N")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint, with its saved config; only "
                        "--epochs and where/how it runs (device, threads, progress, data/cache folders) may change")
    t.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --output and train anew (never clears a folder that is not a run)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training under torchrun (also automatic whenever torchrun started the "
                        "process): torchrun --standalone --nproc-per-node N -m ctrlab.cli train ...")
    t.add_argument("--download", action="store_true",
                   help="fetch a registered public dataset (checksums verified) when it is not in CTRLAB_DATA_DIR")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a finished run")
    e.add_argument("run", help="run folder")
    e.add_argument("--splits", nargs="+", default=["valid", "test"])
    e.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    e.add_argument("--uncalibrated", action="store_true",
                   help="evaluate the model's own probabilities, not those of the run's calibration.json")
    e.set_defaults(func=cmd_evaluate)

    ca = sub.add_parser("calibrate", help="fit a post-hoc calibration (Platt or isotonic) of a finished run on its "
                                          "validation predictions; predict, evaluate, export and serve apply it")
    ca.add_argument("run", help="run folder")
    ca.add_argument("--method", choices=["platt", "isotonic"], default="platt",
                    help="platt: sigmoid(a*logit(p)+b), keeps the ranking; isotonic: a monotone step map "
                         "(default %(default)s)")
    ca.set_defaults(func=cmd_calibrate)

    pr = sub.add_parser("predict", help="score a raw file through the run's saved preprocessing")
    pr.add_argument("run", help="run folder")
    pr.add_argument("--input", required=True, help="raw file in the training data's format")
    pr.add_argument("--output", required=True, help="CSV to write (the --keep-columns, then probability)")
    pr.add_argument("--keep-columns", metavar="A,B", help="input columns to copy into the output before probability, "
                    "row-aligned (e.g. --keep-columns id,ts)")
    pr.add_argument("--format", help="input format if it differs from the training data's (csv, tsv, parquet, ...)")
    pr.set_defaults(func=cmd_predict)

    from .serve.config import ServeConfig

    sc = ServeConfig()
    ex = sub.add_parser("export", help="export a finished run to a self-contained artifact folder (ONNX or safetensors)")
    ex.add_argument("run", help="run folder")
    ex.add_argument("--format", choices=["onnx", "torch"], default="onnx",
                    help="onnx (ONNX Runtime; default) or torch (safetensors weights, model rebuilt by name)")
    ex.add_argument("--output", help="artifact folder (default RUN/export-FORMAT)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default %(default)s)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace an existing artifact folder (one with a manifest.json; never a run or other folder)")
    ex.set_defaults(func=cmd_export)

    co = sub.add_parser("compress", help="low-rank compression of a finished run's linear layers into a new run "
                                         "(AFM from output statistics, or weight SVD)")
    co.add_argument("run", help="run folder")
    co.add_argument("--output", required=True, help="new run folder for the compressed model")
    co.add_argument("--method", choices=["afm", "svd"], default="afm",
                    help="afm: from the layers' output statistics on train rows (default); svd: of the weights")
    size = co.add_mutually_exclusive_group()
    size.add_argument("--rank", type=int, help="rank of every compressed layer")
    size.add_argument("--keep", type=float, help="afm: per layer, the smallest rank keeping this share of output variance")
    co.add_argument("--layers", help="comma-separated nn.Linear layer names (default: every one the rank makes smaller)")
    table = co.add_mutually_exclusive_group()
    table.add_argument("--embedding-rank", type=int,
                       help="also store the embedding tables at this rank (per field: codes and a decoder)")
    table.add_argument("--embedding-keep", type=float,
                       help="afm: store the embedding tables at the smallest rank keeping this share of every "
                            "field's lookup-weighted variance")
    co.add_argument("--finetune-epochs", type=int, default=0,
                    help="then fine-tune up to this many epochs (kept only if better on valid; default 0: none)")
    co.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default: a tenth of the run's trainer.lr)")
    co.add_argument("--rows", type=int, default=100_000, help="train rows for afm's statistics (default %(default)s)")
    co.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    co.set_defaults(func=cmd_compress)

    oi = sub.add_parser("optinter", help="OptInter: search memorize / factorize / naive per pair of fields, then "
                                         "retrain the chosen architecture into a new run")
    oi.add_argument("--output", required=True, help="run folder of the retrained model (the search goes to OUTPUT/search)")
    oi.add_argument("--dataset", help="registered dataset name or dataset YAML (default frappe_x1_subset)")
    oi.add_argument("--model", help="an OptInter model (default OptInter)")
    oi.add_argument("--config", help="run config YAML (dataset, model_params, trainer, crosses, ...)")
    oi.add_argument("--preset", help="hyperparameter preset: auto (default), none, or a YAML")
    oi.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config key, e.g. crosses.min_count=10 or model_params.interaction_dim=8")
    oi.add_argument("--seed", type=int, help="shortcut for --set trainer.seed=N")
    oi.add_argument("--epochs", type=int, help="shortcut for --set trainer.epochs=N (both phases)")
    oi.add_argument("--search-epochs", type=int, default=1,
                    help="epochs of the search phase (default %(default)s: one pass, α steps on rows new to the network)")
    oi.add_argument("--cross-min-count", type=int,
                    help="pairs seen fewer times in train share their cross feature's OOV id (shortcut for "
                         "--set crosses.min_count=N; default 1: every train pair)")
    oi.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    oi.set_defaults(func=cmd_optinter)

    oe = sub.add_parser("optembed", help="OptEmbed: prune features and choose per-field embedding widths (supernet, "
                                         "evolutionary search, retraining with the masks fixed) into a new run")
    oe.add_argument("--dataset", help="registered dataset name or dataset YAML (default frappe_x1_subset)")
    oe.add_argument("--model", help="registered model name with an embedding table (default FinalMLP)")
    oe.add_argument("--config", help="run config YAML, as for ctrlab train")
    oe.add_argument("--preset", help="hyperparameter preset, as for ctrlab train (default auto)")
    oe.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a run config key")
    oe.add_argument("--output", required=True, help="folder of the final (retrained) run; the supernet goes to OUTPUT-supernet")
    oe.add_argument("--seed", type=int, help="shortcut for --set trainer.seed=N")
    oe.add_argument("--epochs", type=int, help="shortcut for --set trainer.epochs=N (supernet and retraining)")
    oe.add_argument("--alpha", type=float, help="threshold penalty weight (default 1e-2; larger prunes more)")
    oe.add_argument("--threshold-lr", type=float, help="the thresholds' SGD learning rate (default 1e-2)")
    oe.add_argument("--supernet-epochs", type=int, help="maximum supernet epochs (default: trainer.epochs)")
    oe.add_argument("--search-rounds", type=int, help="evolutionary search rounds (default 10)")
    oe.add_argument("--search-rows", type=int, help="validation rows the search scores widths on (default all)")
    oe.add_argument("--overwrite", action="store_true", help="replace runs already in OUTPUT and OUTPUT-supernet")
    oe.set_defaults(func=cmd_optembed)

    ds = sub.add_parser("distill", help="online distillation: a teacher and a student trained together on the same "
                                        "batches, the student's loss adding lambda * distill(student, teacher); "
                                        "the run is the student's")
    ds.add_argument("--dataset", help="registered dataset name or dataset YAML (default frappe_x1_subset)")
    ds.add_argument("--teacher", help="registered model name of the teacher (or distill.teacher in --config)")
    ds.add_argument("--student", help="registered model name of the student, the run's model (default FinalMLP)")
    ds.add_argument("--teacher-params", help="the teacher's hyperparameters: a YAML/JSON mapping or a file holding one")
    ds.add_argument("--student-params", help="the student's hyperparameters (model_params): a YAML/JSON mapping or a file")
    ds.add_argument("--weight", type=float, help="lambda, the distillation term's weight (default 1; 0: none)")
    ds.add_argument("--loss", choices=["bce", "mse"],
                    help="distillation term: bce (default), T^2 * BCE of the student's probability against the "
                         "teacher's detached one; mse, of the logits")
    ds.add_argument("--temperature", type=float, help="T of the bce term (default 1)")
    ds.add_argument("--config", help="run config YAML, as for ctrlab train (its distill: section is overridden by the flags)")
    ds.add_argument("--preset", help="hyperparameter preset of both models: auto (default), none, or a YAML")
    ds.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a run config key")
    ds.add_argument("--output", required=True, help="the student's run folder (the teacher's run goes to OUTPUT/teacher)")
    ds.add_argument("--seed", type=int, help="shortcut for --set trainer.seed=N")
    ds.add_argument("--epochs", type=int, help="shortcut for --set trainer.epochs=N")
    ds.add_argument("--resume", action="store_true", help="continue an interrupted distilled run in --output exactly")
    ds.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    ds.set_defaults(func=cmd_distill)

    sv = sub.add_parser("serve", help="serve an exported artifact over HTTP (POST /predict, GET /health, /metadata)")
    sv.add_argument("artifact", help="artifact folder from ctrlab export")
    sv.add_argument("--host", default=sc.host, help="address to bind (default %(default)s: loopback only)")
    sv.add_argument("--port", type=int, default=sc.port, help="TCP port (default %(default)s)")
    sv.add_argument("--backend", choices=["auto", "onnx", "torch"], default=sc.backend,
                    help="model runtime (default auto: ONNX Runtime when the artifact has model.onnx)")
    sv.add_argument("--threads", type=int, help="intra-op threads of the model runtime (default: one per core)")
    sv.add_argument("--max-body-mb", type=float, default=sc.max_body_bytes / (1 << 20),
                    help="largest request body in MiB; larger gets 413 (default %(default)s)")
    sv.add_argument("--max-users", type=int, default=sc.max_users,
                    help="most per-user states of the two-stage /users endpoints, least recently used dropped "
                         "(default %(default)s)")
    sv.add_argument("--max-request-rows", type=int, default=sc.max_request_rows,
                    help="most records per request; more gets 413 (default %(default)s)")
    sv.add_argument("--max-batch-rows", type=int, default=sc.max_batch_rows,
                    help="most rows per micro-batched model call (default %(default)s)")
    sv.add_argument("--interleave-rows", type=int, default=sc.interleave_rows,
                    help="most rows per model call while small requests arrive: large requests are then "
                         "scored in these shorter slices, for the small ones' latency (default %(default)s)")
    sv.add_argument("--max-wait-ms", type=float, default=sc.max_wait_ms,
                    help="longest wait for concurrent requests to join a batch (default %(default)s)")
    sv.add_argument("--queue-size", type=int, default=sc.queue_size,
                    help="requests that may wait for the model before 503 (default %(default)s)")
    sv.add_argument("--max-rows-in-flight", type=int, default=sc.max_rows_in_flight,
                    help="most rows held for scoring at once; bounds memory (default %(default)s)")
    sv.add_argument("--max-body-mb-in-flight", type=float, default=sc.max_body_bytes_in_flight / (1 << 20),
                    help="most MiB of large request bodies held at once; bounds memory (default %(default)s)")
    sv.add_argument("--api-docs", action="store_true", help="serve /docs, /redoc and /openapi.json (off by default)")
    sv.add_argument("--access-log", action="store_true", help="log every request")
    sv.set_defaults(func=cmd_serve)

    b = sub.add_parser("bench", help="run a plan of models x datasets x seeds (resumable), results into SQLite")
    b.add_argument("plan", nargs="?", help="plan YAML (see benchmarks/plans/)")
    b.add_argument("--jobs", type=int, help="parallel worker processes (overrides the plan's)")
    b.add_argument("--db", help="results store path (overrides the plan's)")
    b.add_argument("--fresh", action="store_true", help="retrain runs that are already finished")
    b.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    b.add_argument("--from-fuxictr", metavar="MODEL_CONFIG",
                   help="a FuxiCTR/BARS model_config.yaml (or its folder) to rerun in ctrlab")
    b.add_argument("--expid", help="experiment id in the FuxiCTR model config")
    b.add_argument("--dataset-config", help="FuxiCTR dataset_config.yaml (default: beside the model config)")
    b.add_argument("--dataset", help="run on this ctrlab dataset instead of the config's dataset_id")
    b.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's seed)")
    b.set_defaults(func=cmd_bench)

    tu = sub.add_parser("tune", help="hyperparameter search with Optuna (TPE + median pruning), resumable")
    tu.add_argument("config", help="search YAML: dataset, model, space, budget (see benchmarks/plans/)")
    tu.add_argument("--trials", type=int, help="budget: finished trials in the study (overrides the YAML)")
    tu.add_argument("--minutes", type=float, help="budget: minutes for this invocation (overrides the YAML)")
    tu.add_argument("--db", help="results store path (overrides the YAML)")
    tu.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="HTML + Markdown report (leaderboards, BARS numbers, plots) from the results store")
    rp.add_argument("--db", default="runs/bench/results.sqlite", help="results store (default %(default)s)")
    rp.add_argument("--output", default="runs/bench/report", help="folder for report.html, report.md, plots/")
    rp.add_argument("--plan", help="only the runs of this plan: a plan YAML (exactly its runs) or a plan name "
                    "(default: every finished run, tuning trials aside)")
    rp.add_argument("--title", default="ctrlab benchmark report")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("datasets", help="list registered datasets")
    d.set_defaults(func=cmd_datasets)
    m = sub.add_parser("models", help="list registered models (torch models, then the non-torch baselines)")
    m.add_argument("-v", "--verbose", action="store_true", help="show default hyperparameters")
    m.set_defaults(func=cmd_models)
    return p


def _leave_torchrun_rank() -> None:
    """End a torchrun rank whose command finished cleanly (its run written, the process group left)
    with ``os._exit(0)`` after flushing the logs and streams. Ending through the interpreter's
    finalisation instead, a gloo rank now and then still holds a joinable worker thread when the C++
    runtime destroys it and aborts ("terminate called without an active exception", exit -6): torchrun
    then reports a failure for a run that completed (seen in CI after ``distributed.teardown``'s barrier
    had made it rare)."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Known errors print one ``ctrlab: error:`` line (no traceback; set
    ``CTRLAB_DEBUG=1`` for it): exit code 2 for bad input (config, data, run folder, artifact),
    1 for what went wrong while running (unreadable checkpoint or weights, the disk)."""
    args = build_parser().parse_args(argv)
    from safetensors import SafetensorError

    from .bench.store import StoreError
    from .config import ConfigError
    from .data.errors import DataError
    from .serve.artifact import ArtifactError
    from .train.trainer import CheckpointError

    try:
        if args.plugins:
            from .models import add_plugins

            add_plugins(args.plugins)  # also into CTRLAB_PLUGINS, for worker processes
        code = args.func(args)
        if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _leave_torchrun_rank()
        return code
    except (ConfigError, DataError, StoreError, ArtifactError, FileNotFoundError, ValueError,
            CheckpointError, SafetensorError, OSError) as exc:
        if os.environ.get("CTRLAB_DEBUG"):
            raise
        # ConfigError, DataError, ArtifactError, RunFolderError are ValueErrors
        bad_input = isinstance(exc, (ValueError, FileNotFoundError, StoreError))
        what = "" if bad_input or isinstance(exc, CheckpointError) else f"{type(exc).__name__}: "
        print(f"ctrlab: error: {what}{exc}".replace("\n", " "), file=sys.stderr)
        print("ctrlab: (set CTRLAB_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2 if bad_input else 1


if __name__ == "__main__":
    sys.exit(main())
