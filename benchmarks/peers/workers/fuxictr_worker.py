"""FuxiCTR's side of the performance harness, one task per process.

    /work/peers/fuxictr-venv/bin/python benchmarks/peers/workers/fuxictr_worker.py TASK --config '<json>'

Runs in FuxiCTR's own venv (never ctrlab's; nothing here imports ctrlab). Prints progress, then
as its LAST stdout line ``RESULT <one-line json>``; exit 0 on success, non-zero with a message on
stderr on failure. The same protocol, tasks and hyperparameters (``perf_config.json``: embedding_dim
10, batch 4096, Adam 1e-3, the same hidden layers, no dropout / batch norm / regularisers) as the
ctrlab and DeepCTR-Torch workers.

FuxiCTR (2.3.9) is run the way its users run it: a dataset config (``feature_cols``,
``label_col``, ``min_categr_count``) -> ``FeatureProcessor`` + ``build_dataset`` (fit on train,
transform, write ``<data_root>/<dataset_id>/{train,valid,test}.parquet`` + ``feature_map.json``)
-> ``FeatureMap.load`` -> a model class from the checkout's ``model_zoo/`` (the pip package has
none; config key ``fuxictr``, required, is that checkout) -> ``RankDataLoader`` (FuxiCTR's
``ParquetDataLoader``: the whole split as one float64 numpy matrix, a torch ``DataLoader`` that
indexes it row by row and collates 4096 rows per batch into a dict of per-column tensors) ->
the model's own per-batch step ``BaseModel.train_step`` (zero_grad, forward, BCE loss + the
regularisation term, which is 0 here, backward, clip_grad_norm_(10), Adam step), followed by
``loss.item()`` exactly as ``BaseModel.train_epoch`` does.
The model_zoo import and the shared FuxiCTR settings come from ``../run_fuxictr.py``
(``load_model_class``, ``MODEL_DIRS``, ``COMMON``, the Frappe ``feature_cols``), loaded by path.

Feature definitions (Criteo): I1..I13 ``numeric``, dtype float, nulls filled with 0 (FuxiCTR's
default fill for float), no normalizer -- the BARS Criteo_x1 setting (``criteo_x1_7b681156``:
numeric I1..I13 without normalizer, categorical C1..C26, min_categr_count 1); C1..C26
``categorical``, min_categr_count 1 (dtype str for the raw TSV's hex strings, int for the parquet's
integer ids); label dtype float.

Data loader workers: FuxiCTR's loader default, ``num_workers=1`` (the ``ParquetDataLoader``
signature; one worker process, re-forked at every pass over the data), unless config
``num_workers`` says otherwise (model_zoo's config templates use 3). The value used is in RESULT.

Tasks [config keys] and exactly what is timed (``time.perf_counter``):

* ``preprocess`` [tsv, work_dir, fuxictr]: raw headerless Criteo TSV -> FuxiCTR's model-ready
  parquet. FuxiCTR cannot read it as is (``FeatureProcessor.read_data`` always takes the first
  line as the header and only reads files named ``*.csv``), so a user must first write a copy with
  a header line, named ``.csv`` (tabs kept, dataset config ``sep: "\\t"``). TIMED: that copy +
  ``FeatureProcessor(...)`` + ``build_dataset`` (polars read, fill nulls, fit every tokenizer,
  transform, write train.parquet, feature_map.json, feature_processor.pkl, feature_vocab.json).
  Result: rows, seconds, rows_per_s, peak_rss_mb (this process; its children, reported as
  peak_rss_children_mb and not added: FuxiCTR's Tokenizer fits every categorical column in a
  fresh ProcessPoolExecutor of cpu_count()//2 forked processes).
* ``train`` [model, train_parquet, work_dir, warmup_batches=5, timed_batches=30, threads,
  fuxictr]: build_dataset on the parquet (NOT timed: prepare_seconds), the model from model_zoo,
  the train RankDataLoader (batch 4096, shuffle=True). Iterate the loader calling ``train_step`` +
  ``loss.item()`` per batch; skip ``warmup_batches``; TIMED: the next ``timed_batches`` batches,
  each = fetching the batch from FuxiCTR's loader + its training step. When an epoch runs out
  the loader is started again (a new epoch, as fit() would): ``loader_epochs`` in RESULT > 1 says
  the timed window crossed an epoch boundary (a worker re-fork included).
* ``infer`` [model, train_parquet, work_dir, rows=65536, single_rows=200, fuxictr]: build_dataset
  fits on the parquet and transforms its first ``rows`` rows as the test split (NOT timed); the
  model is untrained, eval mode, no_grad. (a) TIMED: ``model.predict(test_loader)`` (FuxiCTR's
  own batch prediction: its loader with batch 4096, forward, predictions collected to numpy) over
  the ``rows`` rows, after one identical untimed warm-up pass -> rows_per_s. (b) ``model.forward``
  on a one-row batch dict (each column's tensor sliced from a loader batch, i.e. what
  ``get_inputs`` expects), 10 untimed warm-ups then ``single_rows`` timed calls -> p50 / p99 ms.
* ``auc`` [model, train_csv, valid_csv, test_csv, epochs=1, fuxictr; Frappe]: build_dataset on
  the three CSVs (10 categorical fields, as run_fuxictr.py), ``model.fit`` for exactly ``epochs``
  epochs (early_stop_patience 1000, so it never stops early; FuxiCTR's reduce-LR-on-plateau and
  best-epoch reload unchanged, like ctrlab's worker), then ``model.evaluate`` on test -> test_auc.
  Same perf_config hyperparameters as the other tasks (no BARS dropout / batch norm / reg).

Measured as is (FuxiCTR's code, not this worker's): FinalMLP with num_heads 1 spends most of its
step in ``InteractionAggregation``'s backward, which materialises the per-sample broadcast of its
400x400 ``w_xy`` (batch x 400 x 400 floats, ~2.6 GB at batch 4096): it dominates FinalMLP's
train time and peak RSS. The numeric columns reach the model unnormalised (raw counts), so the
training loss is large; throughput does not depend on it.

Common config keys: ``perf_config`` (default ../perf_config.json), ``threads`` (default 2:
``torch.set_num_threads``), ``num_workers`` (default: FuxiCTR's), ``seed`` (default 2023),
``work_dir`` (default: a fresh temporary folder).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker_memory.py, beside this file
from worker_memory import peak_rss_mb  # noqa: E402

HERE = Path(__file__).resolve().parent
PERF_CONFIG = HERE.parent / "perf_config.json"
RUN_FUXICTR = HERE.parent / "run_fuxictr.py"
MODELS = ("DeepFM", "DCNv2", "FinalMLP")


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_rss() -> dict:
    """Peak resident memory in MiB: ``peak_rss_mb`` is this worker process's own (VmHWM), the
    figure compared across libraries; ``peak_rss_children_mb`` is the largest waited-for child
    (FuxiCTR's tokenizer pool, DataLoader workers), reported beside it and not added: a forked
    child's figure includes pages it shares with this process."""
    own = peak_rss_mb()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": own, "peak_rss_self_mb": own, "peak_rss_children_mb": kids}


def load_run_fuxictr():
    """benchmarks/peers/run_fuxictr.py as a module (stdlib imports only at its top level)."""
    spec = importlib.util.spec_from_file_location("ctrlab_peers_run_fuxictr", RUN_FUXICTR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Env:
    """The FuxiCTR checkout, its installed package and the shared settings of one task."""

    def __init__(self, cfg: dict):
        if not cfg.get("fuxictr"):
            raise SystemExit("config key 'fuxictr' (the FuxiCTR source checkout with model_zoo/) is required")
        self.root = Path(cfg["fuxictr"]).resolve()
        if not (self.root / "model_zoo").is_dir():
            raise SystemExit(f"{self.root} has no model_zoo/ (need a FuxiCTR source checkout)")
        self.cfg = cfg
        self.perf = json.loads(Path(cfg.get("perf_config", PERF_CONFIG)).read_text())
        self.threads = int(cfg.get("threads", 2))
        self.seed = int(cfg.get("seed", 2023))
        self.work = Path(cfg.get("work_dir") or tempfile.mkdtemp(prefix="fuxictr_worker_")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.rf = load_run_fuxictr()

        import torch
        import fuxictr

        version_py = (self.root / "fuxictr" / "version.py").read_text()
        ckpt_version = version_py.split("=")[-1].strip(" \"'\n")
        if ckpt_version != fuxictr.__version__:
            raise SystemExit(f"checkout {self.root} is FuxiCTR {ckpt_version} but the installed package "
                             f"is {fuxictr.__version__}")
        # sklearn 1.4 warns on every log_loss(eps=1e-7) call that FuxiCTR 2.3.x makes
        warnings.filterwarnings("ignore", message="Setting the eps parameter is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        torch.set_num_threads(self.threads)
        self.torch, self.fuxictr = torch, fuxictr
        log(f"FuxiCTR {fuxictr.__version__} ({self.root}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), work_dir {self.work}")

    # ---- data ----
    def criteo_feature_cols(self, categorical_dtype: str) -> list[dict]:
        p = self.perf
        return [
            {"name": list(p["numeric"]), "active": True, "dtype": "float", "type": "numeric"},
            {"name": list(p["categorical"]), "active": True, "dtype": categorical_dtype,
             "type": "categorical"},
        ]

    def dataset_params(self, dataset_id: str, data_format: str, feature_cols: list[dict],
                       train: str, valid: str | None = None, test: str | None = None, **extra) -> dict:
        return {
            "dataset_id": dataset_id,
            "data_root": str(self.work / "fuxictr_data"),
            "data_format": data_format,
            "train_data": train,
            "valid_data": valid,
            "test_data": test,
            "min_categr_count": 1,
            "feature_cols": feature_cols,
            "label_col": {"name": self.perf["label"], "dtype": "float"},
            **extra,
        }

    def build(self, dparams: dict) -> tuple[dict, Path]:
        """FeatureProcessor + build_dataset from scratch (an old copy is removed first: FuxiCTR
        skips the work whenever feature_map.json exists). Returns the encoded split paths."""
        from fuxictr.preprocess import FeatureProcessor, build_dataset

        data_dir = Path(dparams["data_root"]) / dparams["dataset_id"]
        shutil.rmtree(data_dir, ignore_errors=True)
        encoder = FeatureProcessor(**dparams)
        splits = dict(zip(("train_data", "valid_data", "test_data"), build_dataset(encoder, **dparams)))
        # build_dataset names a valid split even when there is none; RankDataLoader would open it
        return {k: (v if v and Path(v + ".parquet").is_file() else None) for k, v in splits.items()}, data_dir

    # ---- model ----
    def model_params(self, name: str) -> dict:
        """perf_config's hyperparameters in FuxiCTR's argument names: no dropout, batch norm or
        regularisers."""
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; this worker runs {list(MODELS)}")
        m = self.perf["models"][name]
        if name == "DeepFM":
            return {"hidden_units": m["hidden_units"], "hidden_activations": m["activation"],
                    "net_dropout": 0, "batch_norm": False}
        if name == "DCNv2":
            return {"model_structure": m["model_structure"], "use_low_rank_mixture": bool(m["low_rank"]),
                    "num_cross_layers": m["num_cross_layers"],
                    "parallel_dnn_hidden_units": m["hidden_units"], "stacked_dnn_hidden_units": [],
                    "dnn_activations": m["activation"], "net_dropout": 0, "batch_norm": False}
        return {"mlp1_hidden_units": m["mlp1_hidden_units"], "mlp1_hidden_activations": m["activation"],
                "mlp1_dropout": 0, "mlp1_batch_norm": False,
                "mlp2_hidden_units": m["mlp2_hidden_units"], "mlp2_hidden_activations": m["activation"],
                "mlp2_dropout": 0, "mlp2_batch_norm": False,
                "use_fs": m["use_fs"], "fs_hidden_units": m["fs_hidden_units"],
                "fs1_context": m["fs1_context"], "fs2_context": m["fs2_context"],
                "num_heads": m["num_heads"]}

    def run_params(self, name: str, dparams: dict, splits: dict, **extra) -> dict:
        params = dict(self.rf.COMMON)  # loss, metrics, task, optimizer, clip 10, gpu -1, verbose 0 ...
        params.update({
            "embedding_dim": self.perf["embedding_dim"],
            "batch_size": self.perf["batch_size"],
            "learning_rate": self.perf["lr"],
            "embedding_regularizer": 0,
            "net_regularizer": 0,
        })
        params.update(self.model_params(name))
        params.update(dparams)
        params.update(splits)
        params.update({
            "model": self.rf.MODEL_DIRS[name][1],
            "model_id": f"{name}_perf",
            "model_root": str(self.work / "fuxictr_checkpoints"),
            "seed": self.seed,
        })
        if self.cfg.get("num_workers") is not None:
            params["num_workers"] = int(self.cfg["num_workers"])
        params.update(extra)
        return params

    def model(self, name: str, params: dict, data_dir: Path):
        from fuxictr.features import FeatureMap
        from fuxictr.pytorch.torch_utils import seed_everything

        feature_map = FeatureMap(params["dataset_id"], str(data_dir))
        feature_map.load(str(data_dir / "feature_map.json"), params)
        seed_everything(seed=self.seed)
        model_class = self.rf.load_model_class(self.root, name)
        model = model_class(feature_map, **params)
        os.makedirs(model.model_dir, exist_ok=True)  # fit() saves its best checkpoint there
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return feature_map, model, n_params


def task_preprocess(env: Env) -> dict:
    cfg, perf = env.cfg, env.perf
    tsv = Path(cfg["tsv"]).resolve()
    if not tsv.is_file():
        raise SystemExit(f"no such TSV: {tsv}")
    columns = [perf["label"], *perf["numeric"], *perf["categorical"]]
    csv_path = env.work / "fuxictr_input" / "criteo_train.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    dparams = env.dataset_params("criteo_tsv", "csv", env.criteo_feature_cols("str"), str(csv_path),
                                 sep="\t")
    shutil.rmtree(Path(dparams["data_root"]) / dparams["dataset_id"], ignore_errors=True)
    t0 = time.perf_counter()
    # the conversion a FuxiCTR user needs: the same bytes after a header line, in a *.csv file
    with open(csv_path, "wb") as out, open(tsv, "rb") as src:
        out.write(("\t".join(columns) + "\n").encode())
        shutil.copyfileobj(src, out, 16 << 20)
    t_convert = time.perf_counter() - t0
    splits, data_dir = env.build(dparams)
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(data_dir / "train.parquet").metadata.num_rows
    log(f"preprocess: {rows} rows in {seconds:.2f} s (header+copy {t_convert:.3f} s) -> {data_dir}")
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "convert_seconds": t_convert, **peak_rss(), "output": str(data_dir)}


def _prepare_parquet(env: Env, test: str | None = None) -> tuple[dict, Path, float]:
    parquet = str(Path(env.cfg["train_parquet"]).resolve())
    if not parquet.endswith("parquet"):
        raise SystemExit(f"train_parquet must be a *.parquet file (FuxiCTR's reader): {parquet}")
    dparams = env.dataset_params("perf_parquet" + ("_test" if test else ""), "parquet",
                                 env.criteo_feature_cols("int"), parquet, test=test)
    t0 = time.perf_counter()
    shared = env.cfg.get("shared_dir")
    if shared:  # built once by the first train/infer worker, reused by the next (not timed)
        dparams["data_root"] = str(Path(shared) / "fuxictr_data")
        data_dir = Path(dparams["data_root"]) / dparams["dataset_id"]
        done = data_dir / "splits.json"
        if done.is_file():
            splits = json.loads(done.read_text())
        else:
            splits, data_dir = env.build(dparams)
            done.write_text(json.dumps(splits))
    else:
        splits, data_dir = env.build(dparams)
    prep = time.perf_counter() - t0
    log(f"prepared {parquet} with FuxiCTR in {prep:.2f} s -> {data_dir}")
    return {**dparams, **splits}, data_dir, prep


def task_train(env: Env) -> dict:
    from fuxictr.pytorch.dataloaders import RankDataLoader

    cfg, name = env.cfg, env.cfg["model"]
    warmup, timed = int(cfg.get("warmup_batches", 5)), int(cfg.get("timed_batches", 30))
    dparams, data_dir, prep = _prepare_parquet(env)
    params = env.run_params(name, dparams, {})
    feature_map, model, n_params = env.model(name, params, data_dir)
    train_gen, _ = RankDataLoader(feature_map, stage="train", **params).make_iterator()
    log(f"{name}: {n_params} parameters; train loader {train_gen.num_samples} rows, "
        f"{len(train_gen)} batches/epoch, num_workers {train_gen.num_workers}")
    model._max_gradient_norm = params["max_gradient_norm"]  # what fit() sets before train_epoch
    model.train()
    state = {"it": iter(train_gen), "epochs": 1}
    label = feature_map.labels[0]

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:  # next epoch, as fit() would start it
            state["it"] = iter(train_gen)
            state["epochs"] += 1
            return next(state["it"])

    for _ in range(warmup):
        model.train_step(next_batch()).item()
    rows = 0
    t0 = time.perf_counter()
    for _ in range(timed):
        batch = next_batch()
        rows += batch[label].shape[0]
        loss = model.train_step(batch)
        loss.item()  # BaseModel.train_epoch's per-batch train_loss += loss.item()
    seconds = time.perf_counter() - t0
    epochs = state["epochs"]
    del state["it"]  # shut the DataLoader worker down (and reap it) before reading RUSAGE_CHILDREN
    gc.collect()
    log(f"{name}: {rows} rows in {seconds:.3f} s = {rows / seconds:.0f} samples/s "
        f"(last loss {loss.item():.4f})")
    return {"samples_per_s": rows / seconds, "timed_rows": rows, "seconds": seconds,
            "prepare_seconds": prep, **peak_rss(), "parameters": n_params,
            "warmup_batches": warmup, "timed_batches": timed, "loader_epochs": epochs,
            "num_workers": train_gen.num_workers}


def task_infer(env: Env) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from fuxictr.pytorch.dataloaders import RankDataLoader

    torch = env.torch
    cfg, name = env.cfg, env.cfg["model"]
    parquet = Path(cfg["train_parquet"]).resolve()
    total = pq.ParquetFile(parquet).metadata.num_rows
    n = min(int(cfg.get("rows", 65536)), total)
    head = env.work / "fuxictr_input" / "infer_rows.parquet"
    head.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(parquet).slice(0, n), head)
    dparams, data_dir, prep = _prepare_parquet(env, test=str(head))
    params = env.run_params(name, dparams, {}, batch_size=4096)
    feature_map, model, n_params = env.model(name, params, data_dir)
    test_gen = RankDataLoader(feature_map, stage="test", **params).make_iterator()
    model.eval()
    preds = model.predict(test_gen)  # warm-up pass
    assert len(preds) == n, (len(preds), n)
    t0 = time.perf_counter()
    preds = model.predict(test_gen)
    batch_seconds = time.perf_counter() - t0
    log(f"{name}: predict {n} rows in {batch_seconds:.3f} s = {n / batch_seconds:.0f} rows/s")

    it = iter(test_gen)
    first = next(it)
    del it
    one = {k: v[:1].clone() for k, v in first.items()}
    times = []
    with torch.no_grad():
        for i in range(10 + int(cfg.get("single_rows", 200))):
            t = time.perf_counter()
            model.forward(one)["y_pred"]
            if i >= 10:
                times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    gc.collect()
    return {"rows_per_s": n / batch_seconds, "single_row_ms_p50": float(np.percentile(ms, 50)),
            "single_row_ms_p99": float(np.percentile(ms, 99)), "rows": n, "batch_seconds": batch_seconds,
            "single_rows": len(times), "prepare_seconds": prep, "parameters": n_params, **peak_rss(),
            "num_workers": test_gen.num_workers}


def task_auc(env: Env) -> dict:
    from fuxictr.pytorch.dataloaders import RankDataLoader

    cfg, name = env.cfg, env.cfg["model"]
    epochs = int(cfg.get("epochs", 1))
    files = {s: str(Path(cfg[f"{s}_csv"]).resolve()) for s in ("train", "valid", "test")}
    for split, path in files.items():
        if not Path(path).is_file():
            raise SystemExit(f"missing {split}_csv: {path}")
    feature_cols = env.rf.DATASETS["frappe_x1_subset"]["feature_cols"]
    dparams = env.dataset_params("frappe_perf", "csv", feature_cols, files["train"], files["valid"],
                                 files["test"])
    t0 = time.perf_counter()
    splits, data_dir = env.build(dparams)
    params = env.run_params(name, dparams, splits, epochs=epochs, early_stop_patience=1000)
    feature_map, model, n_params = env.model(name, params, data_dir)
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params).make_iterator()
    model.fit(train_gen, validation_data=valid_gen, **params)
    test_gen = RankDataLoader(feature_map, stage="test", **params).make_iterator()
    test = model.evaluate(test_gen)
    seconds = time.perf_counter() - t0
    done = model._epoch_index + 1
    log(f"{name}: {done} epoch(s), test AUC {test['AUC']:.6f} logloss {test['logloss']:.6f}, "
        f"{seconds:.1f} s")
    return {"test_auc": float(test["AUC"]), "epochs": done, "test_logloss": float(test["logloss"]),
            "seconds": seconds, "parameters": n_params, "num_workers": train_gen.num_workers}


TASKS = {"preprocess": task_preprocess, "train": task_train, "infer": task_infer, "auc": task_auc}
REQUIRED = {"preprocess": ["tsv", "work_dir"], "train": ["model", "train_parquet", "work_dir"],
            "infer": ["model", "train_parquet", "work_dir"],
            "auc": ["model", "train_csv", "valid_csv", "test_csv"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--config", default="{}", help="task settings as JSON")
    args = ap.parse_args()
    try:
        cfg = json.loads(args.config)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config is not valid JSON: {e}")
    missing = [k for k in ["fuxictr", *REQUIRED[args.task]] if cfg.get(k) in (None, "")]
    if missing:
        raise SystemExit(f"task {args.task}: missing config key(s) {missing}")
    if "model" in REQUIRED[args.task] and cfg["model"] not in MODELS:
        raise SystemExit(f"unknown model {cfg['model']!r}; this worker runs {list(MODELS)}")
    for key in ("tsv", "train_parquet", "train_csv", "valid_csv", "test_csv"):
        if key in REQUIRED[args.task] and not Path(cfg[key]).is_file():
            raise SystemExit(f"{key}: no such file: {cfg[key]}")
    env = Env(cfg)
    result = TASKS[args.task](env)
    result = {"library": "fuxictr", "version": env.fuxictr.__version__, "task": args.task,
              **({"model": cfg["model"]} if "model" in cfg else {}), **result,
              "threads": env.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
