"""Benchmark worker: DeepCTR-Torch 0.3.0, run the way its users run it.

Runs in the peers virtual environment (torch CPU, deepctr-torch 0.3.0, pandas, scikit-learn, pyarrow), never
in ctrlab's, and never imports ctrlab. An orchestrator starts one fresh process per task, interleaved with the
ctrlab and FuxiCTR workers:

    <peers python> benchmarks/peers/workers/deepctr_worker.py TASK --config '<json>'

The worker prints whatever it likes (DeepCTR itself prints the device and "Train on ..." inside ``fit``), then
as its LAST stdout line ``RESULT <one-line json>``. Exit code 0 on success; non-zero with an ``ERROR: ...``
message on stderr on failure. A model DeepCTR-Torch does not have (FinalMLP) is not a failure: the worker says
so and prints ``RESULT {"unsupported": "..."}`` with exit code 0.

"The way users run it" means the DeepCTR-Torch README / ``examples/run_classification_criteo.py`` recipe:

* pandas reads the data; categorical NA -> ``'-1'``, numeric NA -> 0; one sklearn ``LabelEncoder`` per
  categorical field; one ``MinMaxScaler((0, 1))`` over the numeric fields;
* feature columns ``SparseFeat(name, vocabulary_size=max+1, embedding_dim)`` / ``DenseFeat(name, 1)``, the
  same list for the linear and the DNN part, and the model input ``{name: data[name]}``;
* ``model.compile("adam", "binary_crossentropy")`` (DeepCTR's "adam" is ``torch.optim.Adam``, lr 1e-3) and
  ``model.fit`` / ``model.predict``, i.e. DeepCTR's own ``TensorDataset`` + ``DataLoader`` loop.

Hyperparameters come from ``benchmarks/peers/perf_config.json`` (config key ``perf_config``): embedding_dim,
batch_size, lr, field lists, per-model hidden layers. No dropout, no batch norm, no L2 (every ``l2_reg_*``
is 0).

Tasks (config keys; see each function's docstring for what exactly is timed):

* ``preprocess`` [tsv, work_dir]: raw Criteo TSV -> model-ready input dict.
* ``train``  [model, train_parquet, warmup_batches=5, timed_batches=30, threads=2]: ``fit`` throughput.
* ``infer``  [model, train_parquet, rows=65536, single_rows=200]: ``predict`` throughput and 1-row latency.
* ``auc``    [model, train_csv, valid_csv, test_csv, epochs=1, categorical, label, numeric=[]]: test AUC.

Models: DeepFM -> ``deepctr_torch.models.DeepFM``; DCNv2 -> ``deepctr_torch.models.DCN`` with
``cross_parameterization='matrix'`` (DCN-M, the full-rank DCNv2 cross layer x0 * (W xl + b) + xl, cross and
deep towers in parallel on the same embedding input, as perf_config's ``model_structure: parallel``,
``low_rank: false``; ``DCNMix`` is the mixture-of-low-rank-experts variant with tanh, not plain DCNv2);
FinalMLP -> unsupported.

DeepCTR-Torch behaviour that the numbers include, on purpose: ``fit``/``predict`` concatenate the input dict
into one float64 array and iterate a ``TensorDataset`` without ``__getitems__``, so every batch is 4096
single-row index operations plus a collate; each training step calls ``loss.item()`` (a sync) and walks the
(zero-weighted) regularisation list; the loss is ``binary_cross_entropy(reduction='sum')``; DCN, like DeepFM,
adds a linear (wide) logit over all fields, and numerics enter the DNN as raw scalars (``DenseFeat``).

Other optional config keys: ``threads`` (default 2, ``torch.set_num_threads``), ``device`` (default "cpu"),
``seed`` (default 1024, DeepCTR's own default).
"""

import argparse
import json
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker_memory.py, beside this file
from worker_memory import peak_rss_mb as _peak_rss_mb  # noqa: E402

DEFAULT_PERF_CONFIG = Path(__file__).resolve().parents[1] / "perf_config.json"
UNSUPPORTED = {"FinalMLP": "DeepCTR-Torch 0.3.0 has no FinalMLP"}


# ----------------------------------------------------------------------------------------------- setup


def _block_network():
    """DeepCTR-Torch's ``__init__`` starts a thread that asks PyPI for a newer version via ``requests.get``.
    Make every ``requests`` call raise before ``deepctr_torch`` is imported (its ``except`` swallows it)."""
    import requests

    def refuse(*args, **kwargs):
        raise ConnectionError("network access is disabled in the benchmark worker")

    requests.get = refuse
    requests.api.get = refuse
    requests.api.request = refuse
    requests.Session.request = refuse


def _import_deepctr():
    _block_network()
    import deepctr_torch  # noqa: F401  (triggers check_version, which now fails immediately)

    # Let the version-check thread finish (it prints a one-line notice) so it cannot print after RESULT.
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join(timeout=5)
    return deepctr_torch


def _load_perf_config(cfg):
    with open(cfg.get("perf_config", DEFAULT_PERF_CONFIG)) as f:
        return json.load(f)


def _setup_torch(cfg):
    import torch

    torch.set_num_threads(int(cfg.get("threads", 2)))
    return torch


# --------------------------------------------------------------------------------------- the recipe


def deepctr_preprocess(data, sparse, dense, embedding_dim):
    """DeepCTR-Torch's Criteo example, in place on ``data``: fill NA, LabelEncoder per categorical field,
    MinMaxScaler on the numeric fields, then the feature columns and the model input dict."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
    from sklearn.preprocessing import LabelEncoder, MinMaxScaler

    # The example fills with the string '-1' (its categoricals are strings); id columns that came in as
    # numbers get the number -1, so LabelEncoder never sees mixed types.
    data.fillna({c: ("-1" if data[c].dtype == object else -1) for c in sparse}, inplace=True)
    if dense:
        data.fillna({c: 0 for c in dense}, inplace=True)
    for feat in sparse:
        data[feat] = LabelEncoder().fit_transform(data[feat])
    if dense:
        data[dense] = MinMaxScaler(feature_range=(0, 1)).fit_transform(data[dense])

    fixlen_feature_columns = [
        SparseFeat(feat, vocabulary_size=int(data[feat].max()) + 1, embedding_dim=embedding_dim)
        for feat in sparse
    ] + [DenseFeat(feat, 1) for feat in dense]
    linear_feature_columns = fixlen_feature_columns
    dnn_feature_columns = fixlen_feature_columns
    feature_names = get_feature_names(linear_feature_columns + dnn_feature_columns)
    model_input = {name: data[name] for name in feature_names}
    return linear_feature_columns, dnn_feature_columns, model_input


def build_model(name, linear_feature_columns, dnn_feature_columns, perf, cfg):
    """The DeepCTR-Torch class for a perf_config model, without dropout, batch norm or L2.
    Returns (model, class name)."""
    from deepctr_torch.models import DCN, DeepFM

    _check_model(name, perf)
    spec = perf["models"][name]
    common = dict(
        dnn_hidden_units=tuple(spec["hidden_units"]),
        dnn_activation=spec.get("activation", "relu"),
        dnn_dropout=0,
        dnn_use_bn=False,
        l2_reg_linear=0,
        l2_reg_embedding=0,
        l2_reg_dnn=0,
        seed=int(cfg.get("seed", 1024)),
        task="binary",
        device=cfg.get("device", "cpu"),
    )
    if name == "DeepFM":
        return DeepFM(linear_feature_columns, dnn_feature_columns, **common), "deepctr_torch.models.DeepFM"
    # DCNv2
    if spec.get("model_structure", "parallel") != "parallel" or spec.get("low_rank"):
        raise ValueError(
            "DeepCTR-Torch's DCN is parallel and full-rank only; perf_config asks for "
            f"model_structure={spec.get('model_structure')!r}, low_rank={spec.get('low_rank')!r}"
        )
    model = DCN(
        linear_feature_columns,
        dnn_feature_columns,
        cross_num=int(spec.get("num_cross_layers", 3)),
        cross_parameterization="matrix",
        l2_reg_cross=0,
        **common,
    )
    return model, "deepctr_torch.models.DCN(cross_parameterization='matrix')"


def _check_model(name, perf):
    if name not in perf["models"] or name not in ("DeepFM", "DCNv2"):
        raise ValueError(f"unknown model {name!r} (known: DeepFM, DCNv2; unsupported: {sorted(UNSUPPORTED)})")


def compile_model(model, perf):
    """``model.compile("adam", "binary_crossentropy")``; DeepCTR's "adam" is Adam(lr=1e-3), so an explicit
    optimizer is passed only if perf_config asks for another learning rate."""
    import torch

    lr = float(perf.get("lr", 1e-3))
    optimizer = "adam" if lr == 1e-3 else torch.optim.Adam(model.parameters(), lr=lr)
    model.compile(optimizer, "binary_crossentropy", metrics=["binary_crossentropy"])


class _Unsupported(Exception):
    """The task's model is one DeepCTR-Torch 0.3.0 lacks: reported as ``{"unsupported": ...}``."""


def _unsupported(name):
    msg = UNSUPPORTED[name]
    print(f"{msg}: nothing to measure.")
    return {"unsupported": msg}


def _start_model_task(cfg, perf):
    """What every model task does first: stop (``_Unsupported``) on a model DeepCTR-Torch lacks,
    check the model's config, import DeepCTR-Torch (update check blocked), set torch's threads.
    Returns torch."""
    name = cfg["model"]
    if name in UNSUPPORTED:
        raise _Unsupported(name)
    _check_model(name, perf)
    _import_deepctr()
    return _setup_torch(cfg)


def _prepare_parquet(cfg, perf):
    """Read the parquet and run the recipe (untimed by callers except as prepare_seconds)."""
    import pandas as pd

    t0 = time.perf_counter()
    data = pd.read_parquet(cfg["train_parquet"])
    cols = deepctr_preprocess(data, perf["categorical"], perf["numeric"], int(perf["embedding_dim"]))
    return data, cols, time.perf_counter() - t0


def _slice_input(model_input, start, stop):
    return {name: col.iloc[start:stop] for name, col in model_input.items()}


# ---------------------------------------------------------------------------------------------- tasks


def task_preprocess(cfg, perf):
    """Raw Criteo TSV -> DeepCTR model input. Timed: from the start of ``pd.read_csv`` to the model input
    dict and feature columns existing in memory. Nothing is written (``work_dir`` is accepted but unused):
    DeepCTR users feed the in-memory dict straight to ``fit``. A ``.gz`` TSV is decompressed inside the
    timing."""
    import pandas as pd

    _import_deepctr()
    label, dense, sparse = perf["label"], perf["numeric"], perf["categorical"]
    t0 = time.perf_counter()
    # Categoricals are read as strings: a hex column that happens to look numeric stays a string column.
    data = pd.read_csv(cfg["tsv"], sep="\t", header=None, names=[label] + dense + sparse,
                       dtype={c: str for c in sparse})
    _, _, model_input = deepctr_preprocess(data, sparse, dense, int(perf["embedding_dim"]))
    seconds = time.perf_counter() - t0
    rows = len(data)
    print(f"preprocessed {rows} rows into {len(model_input)} model inputs in {seconds:.3f}s")
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": _peak_rss_mb()}


def task_train(cfg, perf):
    """Steady-state ``model.fit`` throughput. The parquet is read and preprocessed in full (so vocabularies
    match the dataset; reported as prepare_seconds), then only the first (warmup_batches + timed_batches) x
    batch_size rows are passed to ``fit(batch_size, epochs=2, verbose=0, shuffle=True, validation_split=0)``.
    Epoch 1 is the warm-up; epoch 2 is timed by a callback from ``on_epoch_begin`` to ``on_epoch_end``: its
    DataLoader (per-sample indexing + collate), forward, loss, ``loss.item()``, backward and Adam step for
    every batch. fit's own setup (np.concatenate of the inputs, building the DataLoader) is not timed."""
    name = cfg["model"]
    torch = _start_model_task(cfg, perf)
    from deepctr_torch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            super().__init__()
            self.begin, self.seconds = {}, {}

        def on_epoch_begin(self, epoch, logs=None):
            self.begin[epoch] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds[epoch] = time.perf_counter() - self.begin[epoch]

    batch_size = int(perf["batch_size"])
    warmup, timed = int(cfg.get("warmup_batches", 5)), int(cfg.get("timed_batches", 30))
    data, (linear_cols, dnn_cols, model_input), prepare_seconds = _prepare_parquet(cfg, perf)
    n = (warmup + timed) * batch_size
    if len(data) < n:
        raise ValueError(f"{cfg['train_parquet']} has {len(data)} rows; need {n}")
    x = _slice_input(model_input, 0, n)
    y = data[[perf["label"]]].values[:n]

    model, model_class = build_model(name, linear_cols, dnn_cols, perf, cfg)
    compile_model(model, perf)
    timer = EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0, shuffle=True, validation_split=0.0,
              callbacks=[timer])
    seconds = timer.seconds[1]
    print(f"{model_class}: warm-up epoch {timer.seconds[0]:.3f}s, timed epoch {seconds:.3f}s "
          f"({n // batch_size} batches of {batch_size}), {torch.get_num_threads()} threads")
    return {
        "samples_per_s": n / seconds,
        "timed_rows": n,
        "seconds": seconds,
        "warmup_epoch_seconds": timer.seconds[0],
        "prepare_seconds": prepare_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_class": model_class,
    }


def task_infer(cfg, perf):
    """``model.predict`` on an untrained model. (a) Batch: ``predict(x, batch_size)`` on ``rows`` rows, one
    untimed warm-up call, then one timed call (includes predict's np.concatenate + DataLoader, as users pay
    it). (b) Single row: ``predict`` on a 1-row input dict, 10 untimed warm-ups, then ``single_rows`` calls
    (successive rows) each timed alone; p50 / p99 in ms."""
    import numpy as np

    name = cfg["model"]
    _start_model_task(cfg, perf)
    batch_size = int(perf["batch_size"])
    rows, single_rows = int(cfg.get("rows", 65536)), int(cfg.get("single_rows", 200))
    data, (linear_cols, dnn_cols, model_input), prepare_seconds = _prepare_parquet(cfg, perf)
    if len(data) < rows:
        raise ValueError(f"{cfg['train_parquet']} has {len(data)} rows; need rows={rows}")
    model, model_class = build_model(name, linear_cols, dnn_cols, perf, cfg)

    x = _slice_input(model_input, 0, rows)
    model.predict(x, batch_size=batch_size)
    t0 = time.perf_counter()
    model.predict(x, batch_size=batch_size)
    batch_seconds = time.perf_counter() - t0

    warm = 10
    singles = [_slice_input(model_input, i, i + 1) for i in range(min(warm + single_rows, len(data)))]
    latencies = []
    for i in range(warm + single_rows):
        one = singles[i % len(singles)]
        t0 = time.perf_counter()
        model.predict(one, batch_size=batch_size)
        if i >= warm:
            latencies.append((time.perf_counter() - t0) * 1000)
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"{model_class}: predict {rows} rows in {batch_seconds:.3f}s; single row p50 {p50:.3f} ms, "
          f"p99 {p99:.3f} ms")
    return {
        "rows_per_s": rows / batch_seconds,
        "rows": rows,
        "seconds": batch_seconds,
        "single_row_ms_p50": float(p50),
        "single_row_ms_p99": float(p99),
        "single_rows": single_rows,
        "prepare_seconds": prepare_seconds,
        "model_class": model_class,
    }


def task_auc(cfg, perf):
    """Fit on train for ``epochs`` epochs (batch_size from perf_config, shuffle, no validation split), then
    ``predict`` valid and test and score them with sklearn's roc_auc_score. As in DeepCTR's example, the
    encoders are fitted on all rows before splitting (train + valid + test concatenated)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    name = cfg["model"]
    _start_model_task(cfg, perf)
    label = cfg.get("label", "label")
    sparse = list(cfg["categorical"])
    dense = list(cfg.get("numeric", []))
    epochs = int(cfg.get("epochs", 1))
    batch_size = int(perf["batch_size"])

    parts = [pd.read_csv(cfg[k]) for k in ("train_csv", "valid_csv", "test_csv")]
    sizes = [len(p) for p in parts]
    data = pd.concat(parts, ignore_index=True)
    linear_cols, dnn_cols, model_input = deepctr_preprocess(data, sparse, dense, int(perf["embedding_dim"]))
    bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    split = [(_slice_input(model_input, a, b), data[label].values[a:b]) for a, b in zip(bounds, bounds[1:])]
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = split

    model, model_class = build_model(name, linear_cols, dnn_cols, perf, cfg)
    compile_model(model, perf)
    t0 = time.perf_counter()
    model.fit(x_train, y_train.reshape(-1, 1), batch_size=batch_size, epochs=epochs, verbose=2,
              shuffle=True, validation_split=0.0)
    fit_seconds = time.perf_counter() - t0
    valid_auc = roc_auc_score(y_valid, model.predict(x_valid, batch_size=batch_size).ravel())
    test_auc = roc_auc_score(y_test, model.predict(x_test, batch_size=batch_size).ravel())
    print(f"{model_class}: {epochs} epoch(s) on {sizes[0]} rows in {fit_seconds:.1f}s; "
          f"valid AUC {valid_auc:.4f}, test AUC {test_auc:.4f}")
    return {
        "test_auc": float(test_auc),
        "valid_auc": float(valid_auc),
        "epochs": epochs,
        "train_rows": sizes[0],
        "fit_seconds": fit_seconds,
        "model_class": model_class,
    }


TASKS = {"preprocess": task_preprocess, "train": task_train, "infer": task_infer, "auc": task_auc}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--config", default="{}", help="task configuration as one JSON object")
    args = parser.parse_args(argv)
    try:
        cfg = json.loads(args.config)
        if not isinstance(cfg, dict):
            raise ValueError("--config must be a JSON object")
        try:
            result = TASKS[args.task](cfg, _load_perf_config(cfg))
        except _Unsupported as exc:
            result = _unsupported(exc.args[0])
    except Exception as exc:  # report, never print a RESULT line
        traceback.print_exc()
        print(f"ERROR: deepctr_worker {args.task} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
