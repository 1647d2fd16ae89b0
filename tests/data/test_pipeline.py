"""prepare(): fit on train, encode every split, cache keyed by config + sources; encode_frame."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ctrlab.data import pipeline
from ctrlab.data.cache import BuildFolder
from ctrlab.data.errors import DataError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.loader import BatchLoader
from ctrlab.data.pipeline import cache_key, encode_frame, prepare, raw_columns
from ctrlab.data.readers import LINE, read_split
from ctrlab.data.schema import OOV_ID, load_dataset_config


class Log(list):
    def __call__(self, msg):
        self.append(msg)


def parquet_dataset(tmp_path):
    """Train/test Parquet files with a list<int> sequence and a list<float> vector."""
    train = pl.DataFrame(
        {
            "click": [True, False, True, False, True, False],
            "buy": [1, 0, 0, 0, 1, 0],
            "item": [10, 11, 10, 12, 10, 11],
            "user": ["u1", "u2", "u3", "u1", "u2", "u3"],
            "price": [1.0, 2.0, None, 4.0, 5.0, 6.0],
            "hist": [[11, 12], [10], [], [10, 11, 12, 13], None, [12]],
            "vec": [[0.1, 0.2, 0.3], [1, 2, 3], [0, 0, 0], [4, 5, 6], [7, 8, 9], [1, 1, 1]],
        },
        schema_overrides={"hist": pl.List(pl.Int64), "vec": pl.List(pl.Float64)},
    )
    test = pl.DataFrame(
        {
            "click": [True, False],
            "buy": [0, 1],
            "item": [12, 99],
            "user": ["u9", "u1"],
            "price": [3.0, 8.0],
            "hist": [[99, 10], [12, 11, 10]],
            "vec": [[9, 9, 9], [0.5, 0.5, 0.5]],
        },
        schema_overrides={"hist": pl.List(pl.Int64), "vec": pl.List(pl.Float64)},
    )
    train.write_parquet(tmp_path / "train.parquet")
    test.write_parquet(tmp_path / "test.parquet")
    cfg = load_dataset_config(
        {
            "name": "pq",
            "format": "parquet",
            "root": str(tmp_path),
            "files": {"train": "train.parquet", "test": "test.parquet"},
            "valid_fraction": 0,
            "labels": ["click", "buy"],
            "group_field": "user",
            "features": [
                {"name": "item"},
                {"name": "user", "hash_buckets": 50},
                {"name": "price", "kind": "numeric", "normalizer": "minmax"},
                {"name": "price_b", "source": "price", "kind": "numeric", "bucketize": [2.5, 5.5]},
                {"name": "hist", "kind": "sequence", "max_len": 3, "share_vocab_with": "item"},
                {"name": "vec", "kind": "dense_vector", "dim": 3},
            ],
        }
    )
    return cfg, train, test


def test_parquet_sequence_and_dense_end_to_end(tmp_path):
    cfg, train, test = parquet_dataset(tmp_path)
    data = prepare(cfg, tmp_path / "cache", log=Log())
    fmap = data.feature_map
    assert [(f.name, f.vocab_size, f.origin) for f in fmap.categorical] == [
        ("item", 6, "categorical"), ("user", 52, "categorical"), ("price_b", 5, "bucketized")
    ]
    assert [f.name for f in fmap.numeric] == ["price"]
    assert [(f.name, f.max_len, f.vocab_size, f.shares) for f in fmap.sequences] == [("hist", 3, 6, "item")]
    assert [(f.name, f.dim) for f in fmap.dense] == [("vec", 3)]
    # the shared vocabulary counts the item column and the histories: 10 x5, 11 x4, 12 x4, 13 x1 (history only)
    assert fmap.encoders["item"]["vocab"] == ["10", "11", "12", "13"]

    batches = list(BatchLoader(data.splits["train"], batch_size=4))
    assert [len(b["label"]) for b in batches] == [4, 2]
    b = batches[0]
    assert set(b) == {"cat", "num", "seq:hist", "dense:vec", "label", "group"}
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in b.items()}
    assert shapes == {
        "cat": ((4, 3), torch.int64),
        "num": ((4, 1), torch.float32),
        "seq:hist": ((4, 3), torch.int64),
        "dense:vec": ((4, 3), torch.float32),
        "label": ((4, 2), torch.float32),
        "group": ((4,), torch.int64),
    }
    item_id = {"10": 2, "11": 3, "12": 4}
    assert b["cat"][:, 0].tolist() == [2, 3, 2, 4]
    assert b["seq:hist"].tolist() == [[0, 3, 4], [0, 0, 2], [0, 0, 0], [3, 4, 5]]  # latest 3 kept
    # price 1, 2, missing (-> fill 0), 4 in buckets (-inf, 2.5) [2.5, 5.5) [5.5, inf) -> ids 2, 3, 4
    assert b["cat"][:, 2].tolist() == [2, 2, 2, 3]
    assert data.splits["train"].arrays["cat"][:, 2].tolist() == [2, 2, 2, 3, 3, 4]
    torch.testing.assert_close(b["num"][:, 0], torch.tensor([1, 2, 0, 4]) / 6.0)  # minmax over train [0, 6]
    torch.testing.assert_close(b["dense:vec"][1], torch.tensor([1.0, 2.0, 3.0]))
    assert b["label"].tolist() == [[1, 1], [0, 0], [1, 0], [0, 0]]
    assert b["group"].tolist() == [1, 2, 3, 1]

    t = next(iter(BatchLoader(data.splits["test"], batch_size=8)))
    assert t["cat"][:, 0].tolist() == [item_id["12"], OOV_ID]  # 99 never seen in train
    assert t["seq:hist"].tolist() == [[0, OOV_ID, 2], [4, 3, 2]]  # 99 is only in the test split: OOV
    assert t["label"].tolist() == [[1, 0], [0, 1]]


def test_minmax_uses_filled_train_values(tmp_path):
    cfg, train, _ = parquet_dataset(tmp_path)
    data = prepare(cfg, tmp_path / "cache", log=Log())
    stats = data.feature_map.encoders["price"]["stats"]
    assert (stats["min"], stats["max"]) == (0.0, 6.0)  # the missing price is filled with 0.0 first
    np.testing.assert_allclose(data.splits["train"].arrays["num"][:, 0], np.array([1, 2, 0, 4, 5, 6]) / 6, rtol=1e-6)
    np.testing.assert_allclose(data.splits["test"].arrays["num"][:, 0], np.array([3, 8]) / 6, rtol=1e-6)


def test_csv_text_sequence_and_dense_vector(tmp_path):
    (tmp_path / "train.csv").write_text(
        "label,item,hist,emb\n"
        "1,a,b^c,0.1 0.2\n"
        "0,b,a,1 2\n"
        "1,a,,3 4\n"
    )
    cfg = load_dataset_config(
        {
            "root": str(tmp_path),
            "files": {"train": "train.csv"},
            "valid_fraction": 0,
            "features": [
                {"name": "item"},
                {"name": "hist", "kind": "sequence", "max_len": 2, "padding": "post", "share_vocab_with": "item"},
                {"name": "emb", "kind": "dense_vector", "dim": 2},
            ],
        }
    )
    data = prepare(cfg, tmp_path / "cache", log=Log())
    arrays = data.splits["train"].arrays
    assert sorted(arrays) == ["cat", "dense:emb", "label", "num", "seq:hist"]
    assert arrays["num"].shape == (3, 0)
    assert arrays["cat"][:, 0].tolist() == [2, 3, 2]  # a, b
    assert arrays["seq:hist"].tolist() == [[3, 4], [2, 0], [0, 0]]  # c is only in a history: a real id
    np.testing.assert_allclose(arrays["dense:emb"], [[0.1, 0.2], [1, 2], [3, 4]], rtol=1e-6)
    assert arrays["dense:emb"].dtype == np.float32 and arrays["seq:hist"].dtype == np.int32


def test_real_taobao_csv_with_click_sequence(data_dir, tmp_path):
    base = data_dir / "small_samples/FuxiCTR/data/tiny_csv"
    cfg = load_dataset_config(
        {
            "name": "taobao_tiny",
            "root": str(base),
            "files": {"train": "train_sample.csv.gz", "test": "test_sample.csv.gz"},
            "valid_fraction": 0,
            "labels": ["clk"],
            "features": [
                {"name": "userid"},
                {"name": "adgroup_id"},
                {"name": "price", "kind": "numeric", "normalizer": "log"},
                {"name": "pvalue_level", "kind": "numeric", "n_buckets": 3},
                {"name": "click_sequence", "kind": "sequence", "max_len": 5, "share_vocab_with": "adgroup_id"},
            ],
        }
    )
    data = prepare(cfg, tmp_path / "cache", log=Log())
    assert {s: len(x) for s, x in data.splits.items()} == {"train": 100, "test": 100}
    tr = data.splits["train"].arrays
    assert tr["label"].sum() == 4  # 4 clicks in train
    assert tr["seq:click_sequence"].shape == (100, 5)
    # first row: price 3.9 -> log1p(3.9); click_sequence 170301^573514
    assert tr["num"][0, 0] == pytest.approx(np.log1p(3.9), rel=1e-6)
    vocab = data.feature_map.encoders["adgroup_id"]["vocab"]
    assert tr["seq:click_sequence"][0].tolist() == [0, 0, 0, 2 + vocab.index("170301"), 2 + vocab.index("573514")]
    assert (tr["seq:click_sequence"] == 0).all(axis=1).sum() == 75  # 75 empty histories


def test_frappe_libsvm_end_to_end_oov_counts(data_dir, tmp_path):
    fields = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
    cfg = load_dataset_config(
        {
            "name": "frappe",
            "format": "libsvm",
            "root": str(data_dir / "frappe_x1/afn_libsvm"),
            "files": {"train": "valid.libsvm.gz", "test": "test.libsvm.gz"},
            "valid_fraction": 0,
            "column_names": ["label"] + fields,
            "features": [{"name": f} for f in fields],
        }
    )
    data = prepare(cfg, tmp_path / "cache", log=Log())
    assert {s: len(x) for s, x in data.splits.items()} == {"train": 57_722, "test": 28_860}
    assert data.splits["test"].arrays["label"].sum() == 9_536
    # independent check: test rows whose user / city index never occurs in the fitted split are OOV
    tr = read_split(cfg, cfg.resolve("train"), fields)
    te = read_split(cfg, cfg.resolve("test"), fields)
    cat = data.splits["test"].arrays["cat"]
    for j, f in enumerate(fields):
        seen = set(tr[f].to_list())
        expected_oov = sum(v not in seen for v in te[f].to_list())
        assert (cat[:, j] == OOV_ID).sum() == expected_oov, f
        assert data.feature_map.categorical[j].vocab_size == 2 + len(seen)
    assert [f.vocab_size for f in data.feature_map.categorical][2:8] == [9, 9, 4, 5, 4, 11]  # 7,7,2,3,2,9 values


# ---- cache -------------------------------------------------------------------------------------
def small_csv(tmp_path, **extra):
    (tmp_path / "train.csv").write_text("label,a,x\n1,p,1\n0,q,2\n1,p,3\n")
    (tmp_path / "test.csv").write_text("label,a,x\n0,q,5\n1,r,\n")
    return load_dataset_config(
        {
            "name": "small",
            "root": str(tmp_path),
            "files": {"train": "train.csv", "test": "test.csv"},
            "valid_fraction": 0,
            "features": [{"name": "a"}, {"name": "x", "kind": "numeric", "normalizer": "standard"}],
            **extra,
        }
    )


def test_cache_reused_when_unchanged(tmp_path, monkeypatch):
    cfg = small_csv(tmp_path)
    log = Log()
    first = prepare(cfg, tmp_path / "cache", log=log)
    assert first.reused is False and any("encoding dataset 'small'" in m for m in log)
    assert first.path.parent == tmp_path / "cache" / "encoded" and first.path.name.startswith("small-")

    def boom(*a, **k):
        raise AssertionError("re-encoded although nothing changed")

    monkeypatch.setattr(pipeline, "read_split", boom)
    monkeypatch.setattr(pipeline, "encode_frame", boom)
    log2 = Log()
    again = prepare(small_csv(tmp_path), tmp_path / "cache", log=log2)  # same config, rewritten identical files
    assert again.reused is True and again.path == first.path
    assert log2 and all("OOV rate" in m for m in log2)  # only the cached OOV rates are reported
    for split in ("train", "test"):
        for k, v in first.splits[split].arrays.items():
            np.testing.assert_array_equal(again.splits[split].arrays[k], v)
    assert again.feature_map.to_dict() == first.feature_map.to_dict()


def test_cache_rebuilt_when_config_changes(tmp_path):
    first = prepare(small_csv(tmp_path), tmp_path / "cache", log=Log())
    changed = small_csv(tmp_path, features=[{"name": "a"}, {"name": "x", "kind": "numeric", "normalizer": "minmax"}])
    second = prepare(changed, tmp_path / "cache", log=Log())
    assert second.reused is False and second.path != first.path
    assert second.splits["train"].arrays["num"][:, 0].tolist() == [0.0, 0.5, 1.0]
    # the old entry is still valid for the old config
    assert prepare(small_csv(tmp_path), tmp_path / "cache", log=Log()).reused is True
    forced = prepare(small_csv(tmp_path), tmp_path / "cache", rebuild=True, log=Log())
    assert forced.reused is False and forced.path == first.path


def test_cache_rebuilt_when_a_source_file_changes(tmp_path):
    cfg = small_csv(tmp_path)
    first = prepare(cfg, tmp_path / "cache", log=Log())
    # same size, different bytes: the content digest catches it
    text = (tmp_path / "test.csv").read_text()
    (tmp_path / "test.csv").write_text(text.replace("0,q,5", "0,p,5"))
    second = prepare(cfg, tmp_path / "cache", log=Log())
    assert second.reused is False and second.path != first.path
    assert second.splits["test"].arrays["cat"][0, 0] == 2  # p
    # appended row
    with open(tmp_path / "train.csv", "a") as fh:
        fh.write("0,r,4\n")
    third = prepare(cfg, tmp_path / "cache", log=Log())
    assert third.reused is False and third.path not in (first.path, second.path)
    assert len(third.splits["train"]) == 4 and third.feature_map.encoders["a"]["vocab"] == ["p", "q", "r"]
    assert json.loads((third.path / "manifest.json").read_text())["rows"] == {"train": 4, "test": 2}


def test_fingerprint_covers_the_tail_of_1_to_2_mib_files(tmp_path):
    """An edit past the first MiB of a 1.5 MiB file (same size) must change the cache key."""
    path = tmp_path / "train.csv"
    rows = "".join(f"{i % 2},v{i % 97}\n" for i in range(200_000))
    assert 1 << 20 < len(rows) < 2 << 20
    path.write_text("label,a\n" + rows)
    cfg = load_dataset_config({"files": {"train": str(path)}, "features": [{"name": "a"}]})
    key = cache_key(cfg, {"train": path})
    assert cache_key(cfg, {"train": path}) == key
    path.write_text("label,a\n" + rows[:-6] + "1,v99\n")  # last line changed, size unchanged
    assert path.stat().st_size == len(rows) + 8
    assert cache_key(cfg, {"train": path}) != key


def flip_file(path, labels):
    """A > 2 MiB csv whose rows differ only in their label."""
    path.write_text("label,a,x\n" + "".join(f"{int(y)},v{i % 97},{i % 1000}\n" for i, y in enumerate(labels)))


def test_cache_rebuilt_after_same_size_edit_in_the_middle_of_a_big_file(tmp_path):
    """Issue 14.2: labels flipped mid-file in a > 2 MiB csv, size kept and the old mtime put back,
    must not reuse the cache built from the old labels."""
    path = tmp_path / "train.csv"
    labels = np.arange(400_000) % 3 == 0
    flip_file(path, labels)
    before, st = path.read_bytes(), path.stat()
    assert st.st_size > 2 << 20
    cfg = load_dataset_config({"name": "big", "root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
                               "valid_fraction": 0, "features": [{"name": "a"}, {"name": "x"}]})
    first = prepare(cfg, tmp_path / "cache", log=Log())
    assert first.splits["train"].arrays["label"].sum() == labels.sum()

    flipped = labels.copy()
    flipped[140_000:260_000] ^= True
    flip_file(path, flipped)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.read_bytes()
    changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert changed[0] > 1 << 20 and changed[-1] < st.st_size - (1 << 20)  # neither head nor tail MiB
    second = prepare(cfg, tmp_path / "cache", log=Log())
    assert second.reused is False and second.path != first.path
    assert second.splits["train"].arrays["label"].sum() == flipped.sum() != labels.sum()


def test_cache_key_covers_the_library_version_and_the_encoding_code(tmp_path, monkeypatch):
    """Issue 14.3: a change to the code that encodes (or to the library version) rebuilds the cache."""
    import ctrlab

    cfg = small_csv(tmp_path)
    first = prepare(cfg, tmp_path / "cache", log=Log())
    real = pipeline.code_fingerprint
    assert real("ctrlab.data") == real("ctrlab.data")  # deterministic
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda *modules: "edited encoders")
    edited = prepare(cfg, tmp_path / "cache", log=Log())
    assert edited.reused is False and edited.path != first.path
    manifest = json.loads((edited.path / "manifest.json").read_text())
    assert manifest["code"] == "edited encoders" and manifest["library_version"] == ctrlab.__version__
    monkeypatch.setattr(pipeline, "code_fingerprint", real)
    assert prepare(cfg, tmp_path / "cache", log=Log()).path == first.path
    monkeypatch.setattr(ctrlab, "__version__", "99.0.0")
    upgraded = prepare(cfg, tmp_path / "cache", log=Log())
    assert upgraded.reused is False and upgraded.path not in (first.path, edited.path)


@pytest.mark.parametrize("streaming", [False, True])
def test_prepare_with_train_not_the_first_split(tmp_path, streaming):
    """Issue 14.6: yaml.safe_dump sorts keys, so `files` often comes as {test, train, valid}."""
    small_csv(tmp_path)
    (tmp_path / "valid.csv").write_text("label,a,x\n1,q,4\n")
    spec = {"name": "small", "root": str(tmp_path), "features": [{"name": "a"}, {"name": "x", "kind": "numeric"}]}
    ordered = load_dataset_config({**spec, "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}})
    shuffled = load_dataset_config({**spec, "files": {"valid": "valid.csv", "test": "test.csv", "train": "train.csv"}})
    want = prepare(ordered, tmp_path / "cache_a", log=Log(), streaming=streaming)
    got = prepare(shuffled, tmp_path / "cache_b", log=Log(), streaming=streaming)
    assert {s: len(v) for s, v in got.splits.items()} == {"valid": 1, "test": 2, "train": 3}
    assert got.feature_map.to_dict() == want.feature_map.to_dict()
    for split in ("train", "valid", "test"):
        for k, v in want.splits[split].arrays.items():
            np.testing.assert_array_equal(got.splits[split].arrays[k], v, err_msg=f"{split}/{k}")


def test_build_leaves_another_containers_same_pid_folder_alone(tmp_path):
    """Issue 14.7: build folders were named <folder>.tmp<pid> and deleted first; a build with the
    same pid in another container sharing the cache lost its work."""
    cfg = small_csv(tmp_path)
    key = cache_key(cfg, {s: cfg.resolve(s) for s in cfg.files})
    theirs = tmp_path / "cache" / "encoded" / f"small-{key}.tmp{os.getpid()}"
    (theirs / "train").mkdir(parents=True)
    (theirs / "train" / "cat.npy").write_bytes(b"another container's half-written array")
    data = prepare(cfg, tmp_path / "cache", log=Log())
    assert data.path.name == f"small-{key}" and (data.path / "manifest.json").is_file()
    assert (theirs / "train" / "cat.npy").read_bytes() == b"another container's half-written array"


def _prepare_code(tmp_path, cache, after: str) -> str:
    """A script that prepares small_csv(tmp_path) into ``cache``; ``after``: code run on each log line."""
    return (
        "import os, signal, sys\n"
        "from ctrlab.data.pipeline import prepare\n"
        "from ctrlab.data.schema import load_dataset_config\n"
        f"cfg = load_dataset_config({{'name': 'small', 'root': {str(tmp_path)!r},\n"
        "    'files': {'train': 'train.csv', 'test': 'test.csv'}, 'valid_fraction': 0,\n"
        "    'features': [{'name': 'a'}, {'name': 'x', 'kind': 'numeric', 'normalizer': 'standard'}]})\n"
        "def log(msg):\n"
        f"    {after}\n"
        f"print(prepare(cfg, {str(cache)!r}, log=log).path)\n"
    )


def _run(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, **kw)


def test_build_killed_midway_is_cleaned_up_by_the_next_prepare(tmp_path):
    """Issue 14.24 (and the SIGKILL guarantee): a build killed mid-way leaves its temporary folder;
    the next prepare builds the cache and removes that folder, saying so."""
    cfg = small_csv(tmp_path)
    encoded = tmp_path / "cache" / "encoded"
    proc = _run(_prepare_code(tmp_path, tmp_path / "cache",
                              "if 'rows from' in msg: os.kill(os.getpid(), signal.SIGKILL)"))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (left,) = [p for p in encoded.iterdir() if ".tmp" in p.name]
    assert not (encoded / left.name.split(".tmp")[0].lstrip(".")).exists()  # nothing published
    log = Log()
    data = prepare(cfg, tmp_path / "cache", log=log)
    assert data.reused is False and len(data.splits["train"]) == 3
    assert sorted(p.name for p in encoded.iterdir()) == [data.path.name]
    assert any("removed abandoned" in m and left.name in m for m in log), log


def test_prepare_keeps_live_and_recent_build_folders(tmp_path):
    """Issue 14.24: clean-up never touches a folder a live build may be writing: one owned by a
    running process, or an unmarked one written to recently."""
    cfg = small_csv(tmp_path)
    encoded = tmp_path / "cache" / "encoded"
    recent = encoded / "small-0123456789abcdef.tmp4242"  # the old naming, no owner marker
    recent.mkdir(parents=True)
    with BuildFolder(encoded / "other-0123456789abcdef") as live:
        (live / "x.npy").write_bytes(b"in progress")
        prepare(cfg, tmp_path / "cache", log=Log())
        assert (live / "x.npy").read_bytes() == b"in progress" and recent.is_dir()
    assert (encoded / "other-0123456789abcdef" / "x.npy").is_file() and not live.exists()


def test_failed_build_leaves_no_folder(tmp_path):
    """A build that raises (bad value in the test split, after train was written) leaves neither a
    cache nor its temporary folder."""
    cfg = small_csv(tmp_path)
    (tmp_path / "test.csv").write_text("label,a,x\n0,q,abc\n")
    with pytest.raises(DataError, match="abc"):
        prepare(cfg, tmp_path / "cache", log=Log())
    assert list((tmp_path / "cache" / "encoded").iterdir()) == []


def test_concurrent_builds_publish_one_complete_cache(tmp_path):
    """Two processes building the same cache at once: both get the same complete folder, and
    neither's temporary folder is left behind."""
    small_csv(tmp_path)
    code = _prepare_code(tmp_path, tmp_path / "cache", "pass")
    procs = [_run(code) for _ in range(2)]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert [p.returncode for p in procs] == [0, 0] and len(paths) == 1
    encoded = tmp_path / "cache" / "encoded"
    assert [p.name for p in encoded.iterdir()] == [Path(paths.pop()).name]
    assert json.loads((encoded / next(encoded.iterdir()).name / "manifest.json").read_text())["rows"] == {
        "train": 3, "test": 2}


def test_feature_map_json_is_readable(tmp_path):
    data = prepare(small_csv(tmp_path, group_field="a"), tmp_path / "cache", log=Log())
    raw = json.loads((data.path / "feature_map.json").read_text(encoding="utf-8"))
    assert raw["dataset"] == "small" and raw["labels"] == ["label"] and raw["group_field"] == "a"
    assert raw["categorical"] == [{"name": "a", "vocab_size": 4, "embedding_dim": None, "origin": "categorical",
                                   "pretrained_emb": None, "freeze_emb": True, "sources": None}]
    assert raw["numeric"] == [{"name": "x", "embedding_dim": None}]
    assert raw["encoders"]["a"]["vocab"] == ["p", "q"]
    assert raw["encoders"]["x"]["stats"]["mean"] == pytest.approx(2.0)
    assert raw["encoders"]["x"]["spec"]["normalizer"] == "standard"
    assert FeatureMap.load(data.path / "feature_map.json").to_dict() == data.feature_map.to_dict()
    assert json.loads((data.path / "dataset_config.json").read_text())["name"] == "small"
    manifest = json.loads((data.path / "manifest.json").read_text())
    assert manifest["rows"] == {"train": 3, "test": 2} and data.path.name.endswith(manifest["key"])
    assert sorted(p.name for p in (data.path / "train").iterdir()) == ["cat.npy", "group.npy", "label.npy", "num.npy"]


def test_encode_frame_reproduces_cached_encoding(tmp_path):
    cfg, train, test = parquet_dataset(tmp_path)
    data = prepare(cfg, tmp_path / "cache", log=Log())
    # the same raw rows read again
    df = read_split(cfg, cfg.resolve("test"), raw_columns(cfg))
    again = encode_frame(df, data.feature_map)
    for k, v in data.splits["test"].arrays.items():
        np.testing.assert_array_equal(again.arrays[k], v, err_msg=k)
    # new raw rows built by hand (no __line__), as at serving time, without labels
    rows = train.slice(2, 3).drop("click", "buy")
    served = encode_frame(rows, data.feature_map, with_labels=False)
    assert "label" not in served.arrays
    cached = data.splits["train"].take(slice(2, 5))
    for k in ("cat", "num", "seq:hist", "dense:vec"):
        np.testing.assert_array_equal(served.arrays[k], cached.arrays[k], err_msg=k)


def test_encode_frame_error_without_line_column_reports_row(tmp_path, check_error):
    data = prepare(small_csv(tmp_path), tmp_path / "cache", log=Log())
    rows = pl.DataFrame({"a": ["p", "q"], "x": ["1", "oops"], "label": ["1", "0"]})
    with pytest.raises(DataError) as ei:
        encode_frame(rows, data.feature_map, path=tmp_path / "request.json")
    check_error(ei.value, tmp_path / "request.json", 2, "x", "declare 'x' as kind: categorical")


def test_gz_and_plain_give_same_cache_content(tmp_path):
    cfg = small_csv(tmp_path)
    plain = prepare(cfg, tmp_path / "cache", log=Log())
    for name in ("train.csv", "test.csv"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    gz = prepare(small_csv(tmp_path, files={"train": "train.csv.gz", "test": "test.csv.gz"}), tmp_path / "cache", log=Log())
    assert gz.path != plain.path
    for split in ("train", "test"):
        for k, v in plain.splits[split].arrays.items():
            np.testing.assert_array_equal(gz.splits[split].arrays[k], v)


# ---- issue 14.9 / 14.20: non-finite numbers are errors unless the feature opts in to fill -------
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "NaN", "1e309", "-Infinity"])
def test_non_finite_number_is_an_error(tmp_path, check_error, streaming, bad):
    (tmp_path / "train.csv").write_text(f"label,user,price\n1,a,3\n0,b,{bad}\n1,c,\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
                               "features": [{"name": "user"}, {"name": "price", "kind": "numeric"}]})
    with pytest.raises(DataError) as ei:
        prepare(cfg, tmp_path / "cache", log=lambda *a: None, streaming=streaming)
    msg = check_error(ei.value, tmp_path / "train.csv", 3, "price", "non_finite: fill")
    assert "is not a finite number" in msg


@pytest.mark.parametrize("streaming", [False, True])
def test_non_finite_fill_is_an_explicit_option(tmp_path, streaming):
    (tmp_path / "train.csv").write_text("label,user,price\n1,a,3\n0,b,inf\n1,c,\n0,d,1e309\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0, "features": [
        {"name": "user"}, {"name": "price", "kind": "numeric", "fill_value": -1.0, "non_finite": "fill"}]})
    data = prepare(cfg, tmp_path / "cache", log=lambda *a: None, streaming=streaming)
    assert data.splits["train"].arrays["num"][:, 0].tolist() == [3.0, -1.0, -1.0, -1.0]


def test_non_finite_in_a_dense_vector_is_an_error(tmp_path, check_error):
    (tmp_path / "train.csv").write_text("label,vec\n1,1 2\n0,3 inf\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
                               "features": [{"name": "vec", "kind": "dense_vector", "dim": 2}]})
    with pytest.raises(DataError) as ei:
        prepare(cfg, tmp_path / "cache", log=lambda *a: None)
    check_error(ei.value, tmp_path / "train.csv", 3, "vec", "write finite numbers only")


def test_large_integers_under_normalizer_none_warn(tmp_path):
    """float32 (the model's input) cannot hold 1693526401: it would silently become 1693526400."""
    from ctrlab.data.errors import DataWarning

    (tmp_path / "train.csv").write_text("label,ts,small\n1,1693526401,1\n0,1693526402,2\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0, "features": [
        {"name": "ts", "kind": "numeric"}, {"name": "small", "kind": "numeric"},
        {"name": "ts_std", "source": "ts", "kind": "numeric", "normalizer": "standard"}]})
    for streaming in (False, True):
        with pytest.warns(DataWarning, match=r"'ts'.*1693526401 is stored as 1693526400.*normalizer") as rec:
            prepare(cfg, tmp_path / f"cache{streaming}", log=lambda *a: None, streaming=streaming)
        assert len(rec) == 1  # only ts: small values and a normalised copy are exact enough


# ---- issue 14.5: whole-number floats are the integer's token; OOV rates reported -----------------
def int_and_float_parquet(tmp_path):
    """Train written from an Int64 column, valid from a Float64 one (as pandas makes whenever a
    value is missing): the same items must get the same ids."""
    pl.DataFrame({"label": [1, 0, 1, 0], "item": [10, 11, 10, 12],
                  "hist": [[10, 11], [12], [], [10]]}).write_parquet(tmp_path / "train.parquet")
    pl.DataFrame({"label": [1, 0, 1], "item": [10.0, None, 12.0], "hist": [[10.0, 11.0], [12.0], None]},
                 schema_overrides={"item": pl.Float64, "hist": pl.List(pl.Float64)}).write_parquet(
        tmp_path / "valid.parquet")
    return load_dataset_config({"name": "dtypes", "format": "parquet", "root": str(tmp_path),
                                "files": {"train": "train.parquet", "valid": "valid.parquet"},
                                "features": [{"name": "item"},
                                             {"name": "hist", "kind": "sequence", "max_len": 2,
                                              "share_vocab_with": "item"}]})


@pytest.mark.parametrize("streaming", [False, True])
def test_float_column_of_whole_numbers_is_not_oov(tmp_path, streaming):
    cfg = int_and_float_parquet(tmp_path)
    data = prepare(cfg, tmp_path / "cache", log=lambda *a: None, streaming=streaming)
    vocab = data.feature_map.encoders["item"]["vocab"]
    ids = {tok: i + 2 for i, tok in enumerate(vocab)}
    assert data.splits["valid"].arrays["cat"][:, 0].tolist() == [ids["10"], OOV_ID, ids["12"]]
    assert data.splits["valid"].arrays["seq:hist"].tolist() == [[ids["10"], ids["11"]], [0, ids["12"]], [0, 0]]


def test_oov_rates_are_logged_and_a_high_rate_warns(tmp_path):
    """Every split's rate is logged; a split where almost no value is known (>= 90%, and 25 points
    above train) warns; 80% (cold start is often that high) is logged only."""
    import warnings

    from ctrlab.data.errors import DataWarning

    (tmp_path / "train.csv").write_text("label,user,city\n" + "".join(f"{i % 2},u{i % 4},c{i % 3}\n" for i in range(12)))
    (tmp_path / "valid.csv").write_text("label,user,city\n" + "".join(
        f"{i % 2},{i}.0,{'c1' if i < 2 else f'new{i}'}\n" for i in range(10)))
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv", "valid": "valid.csv"},
                               "features": [{"name": "user"}, {"name": "city"}]})
    log = Log()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(cfg, tmp_path / "cache", log=log)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "valid split, field 'user': 100.0% of rows" in messages[0], messages
    assert "(train 0.0%)" in messages[0]
    assert any("valid OOV rate: user 100.0%, city 80.0%" in line for line in log), log
    assert any("train OOV rate: user 0.0%, city 0.0%" in line for line in log), log
    assert any(line.startswith("[ctrlab] WARNING: valid split, field 'user'") for line in log), log
    manifest = json.loads((next((tmp_path / "cache" / "encoded").iterdir()) / "manifest.json").read_text())
    assert manifest["oov_rates"]["valid"] == {"user": 1.0, "city": 0.8}
    log2 = Log()
    with pytest.warns(DataWarning, match=r"'user'"):  # a reused cache still reports them
        again = prepare(cfg, tmp_path / "cache", log=log2)
    assert again.reused and again.oov_rates == manifest["oov_rates"]
    assert any("valid OOV rate: user 100.0%" in line for line in log2), log2


def test_feature_map_keeps_the_configs_field_order(tmp_path):
    """Issue 14.13: the fitted map records the dataset config's feature order (what a model's
    embedding stacks), not the kind-grouped order; a bucketized numeric stays in its place."""
    cfg, train, test = parquet_dataset(tmp_path)
    cfg.features = [cfg.features[i] for i in (2, 0, 4, 3, 5, 1)]  # price, item, hist, price_b, vec, user
    fmap = pipeline.fit_feature_map(cfg, train)
    assert fmap.field_names() == ["price", "item", "hist", "price_b", "vec", "user"]
    assert FeatureMap.from_dict(json.loads(json.dumps(fmap.to_dict()))).field_names() == fmap.field_names()
