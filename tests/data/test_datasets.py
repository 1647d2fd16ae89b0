"""Dataset registry: real shared files (read-only), prepared splits in a tmp CTRLAB_CACHE_DIR.

The real data come from ``$CTRLAB_DATA_DIR`` or ``<repo>/../shared/datasets``; tests that need them
skip with the reason when neither exists. Nothing is ever written next to the real data.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ctrlab.config import ConfigError  # noqa: E402
from ctrlab.data.datasets import (  # noqa: E402
    ChecksumError,
    DatasetNotFoundError,
    dataset_entry,
    get_dataset,
    list_datasets,
    register_dataset,
)
from ctrlab.data.datasets.registry import _REGISTRY, SourceFile, read_manifest, verify_source  # noqa: E402
from ctrlab.data.schema import CategoricalSpec, NumericSpec, SequenceSpec, load_dataset_config  # noqa: E402

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
BARS_FRAPPE_TEST_MD5 = "3470f6d32713dc5f7715f198ca7c612a"
BARS_FRAPPE_VALID_MD5 = "88d51bf2173505436d3a8f78f2a59da8"


def _lines(path: str | Path) -> list[bytes]:
    return Path(path).read_bytes().splitlines()


def _md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ---- registry basics ------------------------------------------------------------------------


def test_registry_lists_every_entry_with_a_docstring():
    names = list_datasets()
    expected = {
        "frappe_x1", "movielenslatest_x1", "criteo_x1", "avazu_x1", "frappe_x1_subset", "criteo_head10k",
        "avazu_head10k", "movielens_100k", "movielens_latest_small", "movielens_1m_sample", "taobao_head", "synthetic",
    }
    assert expected <= set(names) and names == sorted(names)
    for name in expected:
        doc = dataset_entry(name).doc.lower()
        assert "terms" in doc or name == "synthetic", name
        assert "rows" in doc, name
        if name != "synthetic":
            assert "redistribut" in doc, name
            assert "sha256" in doc or "md5" in doc, name


def test_unknown_dataset_and_unknown_param_errors():
    with pytest.raises(ConfigError, match="frappe_x1_subset"):
        get_dataset("frappe_x1_subsett")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['sed'\].*seed"):
        get_dataset("synthetic", sed=1)
    with pytest.raises(ConfigError, match="'rows'.*expected an integer"):
        get_dataset("synthetic", rows="many")


def test_register_dataset_decorator(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))

    @register_dataset("_tiny_test_dataset")
    def tiny(ctx, n: int = 3):
        """Tiny. Rows: n."""

        def build(out):
            (out / "train.csv").write_text("label,a\n" + "".join(f"{i % 2},{i}\n" for i in range(n)))
            return {"rows": n}

        folder = ctx.prepare({"n": n}, build)
        from ctrlab.data.datasets.registry import make_config

        return make_config(name="_tiny", files={"train": str(folder / "train.csv")}, root=str(folder),
                           features=[{"name": "a"}])

    try:
        assert "_tiny_test_dataset" in list_datasets()
        cfg = get_dataset("_tiny_test_dataset", n=5)
        assert len(_lines(cfg.files["train"])) == 6
        assert read_manifest(cfg.root)["rows"] == 5
        with pytest.raises(ConfigError, match="already registered"):
            register_dataset("_tiny_test_dataset")(lambda ctx: None)
    finally:
        _REGISTRY.pop("_tiny_test_dataset", None)


def _register_counting_dataset(name: str, builds: list) -> None:
    @register_dataset(name)
    def counting(ctx, n: int = 3):
        """Counts its builds. Rows: n."""

        def build(out):
            builds.append(out)
            (out / "train.csv").write_text("label,a\n" + "".join(f"{i % 2},{i}\n" for i in range(n)))

        folder = ctx.prepare({"n": n}, build)
        from ctrlab.data.datasets.registry import make_config

        return make_config(name=name, files={"train": str(folder / "train.csv")}, root=str(folder),
                           features=[{"name": "a"}])


def test_prepared_folder_rebuilt_when_the_builder_code_changes(tmp_path, monkeypatch):
    """Issue 14.3: prepared folders are keyed on the library version and a hash of the builder's
    code (its module and the registry package), not only on a hand-bumped version number."""
    import ctrlab
    from ctrlab.data.datasets import registry

    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    builds: list = []
    _register_counting_dataset("_counting_dataset", builds)
    try:
        first = get_dataset("_counting_dataset").root
        assert get_dataset("_counting_dataset").root == first and len(builds) == 1
        manifest = read_manifest(first)
        assert manifest["library_version"] == ctrlab.__version__
        assert manifest["code"] == registry.code_fingerprint("ctrlab.data.datasets", __name__)
        monkeypatch.setattr(registry, "code_fingerprint", lambda *modules: "edited split rule")
        edited = get_dataset("_counting_dataset").root
        assert edited != first and len(builds) == 2 and read_manifest(edited)["code"] == "edited split rule"
        monkeypatch.undo()
        monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(ctrlab, "__version__", "99.0.0")
        assert get_dataset("_counting_dataset").root not in (first, edited) and len(builds) == 3
    finally:
        _REGISTRY.pop("_counting_dataset", None)


def test_prepare_removes_abandoned_and_keeps_live_build_folders(tmp_path, monkeypatch, capsys, dead_owner):
    """Issue 14.24: a build folder whose owner process is gone is removed on the next prepare (and
    logged); one owned by a live process is kept. Issue 14.7: each build gets a fresh folder."""
    from ctrlab.data.cache import OWNER_FILE, owner_identity

    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    prepared = tmp_path / "prepared"
    for name, owner in ((".x-1.tmp-gone", dead_owner), (".x-1.tmp-live", owner_identity())):
        (prepared / name).mkdir(parents=True)
        (prepared / name / OWNER_FILE).write_text(json.dumps(owner))
    builds: list = []
    _register_counting_dataset("_counting_dataset", builds)
    try:
        cfg = get_dataset("_counting_dataset")
    finally:
        _REGISTRY.pop("_counting_dataset", None)
    assert "removed abandoned cache build folder" in capsys.readouterr().err
    assert sorted(p.name for p in prepared.iterdir()) == sorted([".x-1.tmp-live", Path(cfg.root).name])
    assert builds[0].parent == prepared and builds[0].name.startswith(f".{Path(cfg.root).name}.tmp-")


# ---- frappe_x1_subset -----------------------------------------------------------------------


def test_frappe_subset_rows_columns_and_bars_identity(env):
    cfg = get_dataset("frappe_x1_subset")
    counts = {s: len(_lines(p)) - 1 for s, p in cfg.files.items()}
    assert counts == {"train": 46_178, "valid": 11_544, "test": 28_860}
    for p in cfg.files.values():
        assert Path(p).is_absolute() and str(env["cache"]) in p
        assert Path(p).read_bytes().startswith(b"label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\r\n")
    # the prepared test file is byte-identical to the published BARS test.csv
    assert _md5(cfg.files["test"]) == BARS_FRAPPE_TEST_MD5
    # train + valid partition the published valid split exactly
    train, valid = _lines(cfg.files["train"])[1:], _lines(cfg.files["valid"])[1:]
    src = gzip.decompress((env["data"] / "frappe_x1/afn_libsvm/valid.libsvm.gz").read_bytes()).decode().splitlines()
    converted = [",".join([p.split(":")[0] for p in ln.split(" ")]).encode() for ln in src]
    assert hashlib.md5(b"\r\n".join([_lines(cfg.files["train"])[0]] + converted) + b"\r\n").hexdigest() == BARS_FRAPPE_VALID_MD5
    assert sorted(train + valid) == sorted(converted)
    # config
    assert cfg.format == "csv" and cfg.header and cfg.labels == ["label"]
    assert [f.name for f in cfg.features] == FRAPPE_FIELDS
    assert all(isinstance(f, CategoricalSpec) for f in cfg.features)
    df = pl.read_csv(cfg.files["valid"], infer_schema=False)
    assert df.columns == ["label"] + FRAPPE_FIELDS and df.height == 11_544
    assert 0.30 < df["label"].cast(pl.Int32).mean() < 0.36
    m = read_manifest(cfg.root)
    assert m["params"] == {"seed": 2023, "valid_fraction": 0.2}
    assert {s: v["rows"] for s, v in m["splits"].items()} == counts


def test_frappe_subset_deterministic_by_seed_and_reused(env):
    a = get_dataset("frappe_x1_subset")
    mtime = Path(a.files["train"]).stat().st_mtime_ns
    b = get_dataset("frappe_x1_subset", seed=2023)
    assert a.files == b.files and Path(b.files["train"]).stat().st_mtime_ns == mtime  # reused, not rebuilt
    c = get_dataset("frappe_x1_subset", seed=7)
    assert c.root != a.root
    assert len(_lines(c.files["train"])) == len(_lines(a.files["train"]))
    assert _md5(c.files["train"]) != _md5(a.files["train"])
    assert _md5(c.files["test"]) == _md5(a.files["test"])
    # rebuilding from scratch with the same seed gives the same bytes
    before = {s: _md5(p) for s, p in a.files.items()}
    shutil.rmtree(a.root)
    d = get_dataset("frappe_x1_subset")
    assert d.root == a.root and {s: _md5(p) for s, p in d.files.items()} == before
    assert read_manifest(d.root)["files"]["train.csv"]["sha256"] == hashlib.sha256(
        Path(d.files["train"]).read_bytes()
    ).hexdigest()
    assert not [p for p in Path(d.root).parent.iterdir() if ".tmp-" in p.name]  # no leftovers


def test_frappe_subset_same_seed_same_bytes_in_fresh_cache(env, tmp_path, monkeypatch):
    a = get_dataset("frappe_x1_subset", seed=11)
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path / "other_cache"))
    b = get_dataset("frappe_x1_subset", seed=11)
    assert a.root != b.root
    for s in ("train", "valid", "test"):
        assert _md5(a.files[s]) == _md5(b.files[s])


def _copy_frappe_sources(shared: Path, dest: Path) -> Path:
    folder = dest / "frappe_x1" / "afn_libsvm"
    folder.mkdir(parents=True)
    for name in ("valid.libsvm.gz", "test.libsvm.gz"):
        shutil.copyfile(shared / "frappe_x1" / "afn_libsvm" / name, folder / name)
        os.chmod(folder / name, 0o644)
    return folder


def test_checksum_failure_on_corrupted_gz_copy(env, tmp_path):
    folder = _copy_frappe_sources(env["data"], tmp_path / "data")
    # an intact copy works (and a recompressed copy too: it is checked on its decompressed bytes)
    raw = gzip.decompress((folder / "test.libsvm.gz").read_bytes())
    (folder / "test.libsvm.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    get_dataset("frappe_x1_subset", data_dir=tmp_path / "data")
    # flip one byte in the middle of the compressed valid file
    target = folder / "valid.libsvm.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        get_dataset("frappe_x1_subset", data_dir=tmp_path / "data")
    msg = str(info.value)
    assert str(target) in msg
    assert "305d4ed6538983d7f51db7e8b756c81aeaf13f9e41df6bd9df35761d634714f0" in msg  # expected (.gz)
    assert hashlib.sha256(bytes(data)).hexdigest() in msg  # actual


def test_checksum_failure_on_corrupted_plain_copy(env, tmp_path):
    folder = _copy_frappe_sources(env["data"], tmp_path / "data")
    raw = bytearray(gzip.decompress((folder / "test.libsvm.gz").read_bytes()))
    (folder / "test.libsvm.gz").unlink()
    raw[1000] = ord("7") if raw[1000] != ord("7") else ord("8")  # a plausible-looking edit
    (folder / "test.libsvm").write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as info:
        get_dataset("frappe_x1_subset", data_dir=tmp_path / "data")
    msg = str(info.value)
    assert str(folder / "test.libsvm") in msg
    assert "20d3d26705874eea94bcc416dc2e266d4558cc5fba25526fd46807d316b16fd7" in msg
    assert hashlib.sha256(bytes(raw)).hexdigest() in msg


def test_missing_data_error_names_paths_and_fixes(env, tmp_path, monkeypatch):
    empty = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("frappe_x1_subset", data_dir=empty)
    msg = str(info.value)
    assert str(empty / "frappe_x1" / "afn_libsvm" / "valid.libsvm.gz") in msg
    assert str(empty / "frappe_x1" / "afn_libsvm" / "test.libsvm") in msg
    assert "CTRLAB_DATA_DIR" in msg and "data_dir argument" in msg and "download=True" in msg and "--download" in msg
    assert isinstance(info.value, FileNotFoundError)

    # the same through the environment variable
    monkeypatch.setenv("CTRLAB_DATA_DIR", str(empty))
    with pytest.raises(DatasetNotFoundError, match="from CTRLAB_DATA_DIR") as info:
        get_dataset("movielens_100k")
    assert str(empty / "movielens_100k" / "u.data") in str(info.value)

    # no argument, no variable: the default folder is named
    monkeypatch.delenv("CTRLAB_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("criteo_head10k")
    msg = str(info.value)
    assert str(tmp_path / "home" / ".ctrlab" / "data" / "criteo_kaggle_head10k" / "train.txt") in msg
    assert "CTRLAB_DATA_DIR is not set" in msg


def test_bars_frappe_x1_points_to_subset_when_train_is_missing(env):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("frappe_x1")
    msg = str(info.value)
    assert str(env["data"] / "frappe_x1" / "train.csv") in msg and "frappe_x1_subset" in msg
    assert "download=True" in msg


def test_bars_x1_md5_check_is_line_ending_tolerant_and_exact(env, tmp_path):
    # Build the published BARS valid.csv (CRLF) from the shared libsvm; it must pass in CRLF and LF
    # form and fail after a one-character edit.
    src = gzip.decompress((env["data"] / "frappe_x1/afn_libsvm/valid.libsvm.gz").read_bytes()).decode().splitlines()
    rows = ["label," + ",".join(FRAPPE_FIELDS)] + [",".join(p.split(":")[0] for p in ln.split(" ")) for ln in src]
    spec = SourceFile("frappe_x1/valid.csv", md5=BARS_FRAPPE_VALID_MD5, line_ending_tolerant=True)
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    lf = tmp_path / "lf.csv"
    lf.write_bytes(("\n".join(rows) + "\n").encode())
    verify_source(crlf, spec)
    verify_source(lf, spec)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(lf.read_bytes().replace(b"\n1,", b"\n0,", 1))
    with pytest.raises(ChecksumError, match=BARS_FRAPPE_VALID_MD5):
        verify_source(bad, spec)
    # the entry rejects a wrong file placed under the expected name
    data = tmp_path / "data" / "frappe_x1"
    data.mkdir(parents=True)
    for s in ("train", "valid", "test"):
        (data / f"{s}.csv").write_bytes(lf.read_bytes())
    with pytest.raises(ChecksumError) as info:
        get_dataset("frappe_x1", data_dir=tmp_path / "data")
    assert str(data / "train.csv") in str(info.value) and "ba7306e6c4fc19dd2cd84f2f0596d158" in str(info.value)


# ---- criteo / avazu heads -------------------------------------------------------------------


def test_criteo_head10k_splits(env):
    cfg = get_dataset("criteo_head10k")
    lines = {s: _lines(p) for s, p in cfg.files.items()}
    assert {s: len(v) for s, v in lines.items()} == {"train": 7_200, "valid": 800, "test": 2_000}
    src_train = gzip.decompress((env["data"] / "criteo_kaggle_head10k/train.txt.gz").read_bytes()).splitlines()
    src_test = gzip.decompress((env["data"] / "criteo_kaggle_head10k/test.txt.gz").read_bytes()).splitlines()
    assert sorted(lines["train"] + lines["valid"]) == sorted(src_train)  # byte-for-byte, nothing lost
    assert set(lines["train"]).isdisjoint(lines["valid"])
    assert lines["test"] == src_test
    assert cfg.format == "tsv" and not cfg.header and cfg.column_names[:2] == ["label", "I1"]
    nums = [f for f in cfg.features if isinstance(f, NumericSpec)]
    cats = [f for f in cfg.features if isinstance(f, CategoricalSpec)]
    assert [f.name for f in nums] == [f"I{i}" for i in range(1, 14)] and all(f.normalizer == "log" for f in nums)
    assert [f.name for f in cats] == [f"C{i}" for i in range(1, 27)] and all(f.min_count == 2 for f in cats)
    df = pl.read_csv(cfg.files["valid"], separator="\t", has_header=False, new_columns=cfg.column_names,
                     infer_schema=False)
    assert df.width == 40 and df.height == 800
    # seed changes the split, not its size; same seed gives the same split
    other = get_dataset("criteo_head10k", seed=1)
    assert len(_lines(other.files["valid"])) == 800 and _lines(other.files["valid"]) != lines["valid"]
    assert _lines(get_dataset("criteo_head10k").files["valid"]) == lines["valid"]
    assert get_dataset("criteo_head10k", min_count=1).root == cfg.root  # encoder option, same files


def test_avazu_head10k_splits(env):
    cfg = get_dataset("avazu_head10k")
    frames = {s: pl.read_csv(p, infer_schema=False) for s, p in cfg.files.items()}
    assert {s: f.height for s, f in frames.items()} == {"train": 8_099, "valid": 900, "test": 1_000}
    for f in frames.values():
        assert "id" not in f.columns and f.columns[:4] == ["click", "hour", "hour_of_day", "weekday"]
        assert f.width == 25  # 24 raw columns - id + hour_of_day + weekday
    assert frames["train"]["hour_of_day"].unique().to_list() == ["00"]
    assert frames["train"]["weekday"].unique().to_list() == ["1"]  # 2014-10-21 was a Tuesday
    assert cfg.labels == ["click"]
    names = [f.name for f in cfg.features]
    assert "id" not in names and "click" not in names and "hour" not in names and "device_ip" in names
    assert int(frames["test"]["click"].cast(pl.Int32).sum()) == 143
    assert int(frames["train"]["click"].cast(pl.Int32).sum()) + int(frames["valid"]["click"].cast(pl.Int32).sum()) == 1_563
    other = get_dataset("avazu_head10k", seed=5)
    assert pl.read_csv(other.files["valid"], infer_schema=False).height == 900
    assert _md5(other.files["valid"]) != _md5(cfg.files["valid"])


# ---- movielens_100k -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml(env):
    cfg = get_dataset("movielens_100k")
    frames = {s: pl.read_parquet(p) for s, p in cfg.files.items()}
    raw = np.array(gzip.decompress((env["data"] / "movielens_100k/u.data.gz").read_bytes()).split(), dtype=np.int64)
    return cfg, frames, raw.reshape(-1, 4)


def test_movielens_rows_and_time_ordered_split(ml):
    cfg, frames, raw = ml
    counts = {s: f.height for s, f in frames.items()}
    assert counts == {"train": 80_003, "valid": 9_997, "test": 10_000}
    assert sum(counts.values()) == 100_000
    assert frames["train"]["timestamp"].max() < frames["valid"]["timestamp"].min()
    assert frames["valid"]["timestamp"].max() < frames["test"]["timestamp"].min()
    total_pos = sum(int(f["label"].sum()) for f in frames.values())
    assert total_pos == 55_375
    # labels agree with the ratings
    rating = {(u, i): r for u, i, r, _ in raw.tolist()}
    f = frames["test"]
    for u, i, y in zip(f["user_id"].to_list()[:2000], f["item_id"].to_list()[:2000], f["label"].to_list()[:2000]):
        assert y == int(rating[(int(u), int(i))] >= 4)
    assert "rating" not in f.columns


def test_movielens_history_never_leaks_the_future(ml):
    """Every item in a row's history was rated (positively) by that user strictly before the row."""
    _, frames, raw = ml
    when = {(u, i): t for u, i, _, t in raw.tolist()}
    liked_by_user: dict[int, list[tuple[int, int]]] = {}
    for u, i, r, t in raw.tolist():
        if r >= 4:
            liked_by_user.setdefault(u, []).append((t, i))
    for v in liked_by_user.values():
        v.sort()
    checked = nonempty = 0
    for f in frames.values():
        for u, t, h in zip(f["user_id"].to_list(), f["timestamp"].to_list(), f["history"].to_list()):
            u = int(u)
            items = [int(x) for x in h.split("^")] if h else []
            for it in items:
                assert when[(u, it)] < t, f"user {u}: history item {it} at {when[(u, it)]} not before {t}"
            # and it is the complete, correctly ordered tail of earlier liked items
            earlier = [i for (ti, i) in liked_by_user.get(u, []) if ti < t]
            assert items == earlier[-20:]
            checked += 1
            nonempty += bool(items)
    assert checked == 100_000 and nonempty > 90_000


def test_movielens_features_and_config(ml):
    cfg, frames, _ = ml
    kinds = {f.name: f for f in cfg.features}
    assert isinstance(kinds["history"], SequenceSpec) and kinds["history"].share_vocab_with == "item_id"
    assert kinds["history"].max_len == 20 and kinds["history"].splitter == "^"
    assert isinstance(kinds["genres"], SequenceSpec) and kinds["genres"].share_vocab_with is None
    assert kinds["genres"].max_len == 6
    for name in ("user_id", "item_id", "age", "gender", "occupation", "zip_prefix", "release_year"):
        assert isinstance(kinds[name], CategoricalSpec)
    assert "timestamp" not in kinds and cfg.group_field == "user_id" and cfg.format == "parquet"
    train = frames["train"]
    n_genres = train["genres"].str.split("^").list.len()
    assert n_genres.min() >= 1 and n_genres.max() <= 6
    assert set(train["age"].unique().to_list()) <= {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert set(train["gender"].unique().to_list()) == {"M", "F"}
    assert train["zip_prefix"].str.len_chars().max() == 1
    assert pq.read_schema(cfg.files["train"]).field("item_id").type == "string"


def test_movielens_all_history_variant(env):
    cfg = get_dataset("movielens_100k", history="all", history_max_len=5)
    f = pl.read_parquet(cfg.files["valid"])
    assert f["history"].str.split("^").list.len().max() == 5
    assert [x.max_len for x in cfg.features if x.name == "history"] == [5]
    with pytest.raises(ValueError, match="history"):
        get_dataset("movielens_100k", history="future")


# ---- synthetic ------------------------------------------------------------------------------


def test_synthetic_deterministic_by_seed(tmp_path, monkeypatch):
    digests = []
    for i, seed in enumerate([3, 3, 4]):
        monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path / f"c{i}"))
        cfg = get_dataset("synthetic", rows=20_000, seed=seed, max_cardinality=5_000_000)
        digests.append({s: _md5(p) for s, p in cfg.files.items()})
    assert digests[0] == digests[1]
    assert all(digests[0][s] != digests[2][s] for s in digests[0])
    m = read_manifest(cfg.root)
    assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 16_000, "valid": 2_000, "test": 2_000}
    assert m["cardinalities"]["C26"] == 5_000_000 and m["cardinalities"]["C1"] == 4


def test_synthetic_shape_label_rate_and_signal(tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    cfg = get_dataset("synthetic", rows=40_000, seed=2023)
    train, test = pl.read_parquet(cfg.files["train"]), pl.read_parquet(cfg.files["test"])
    assert train.height == 32_000 and test.height == 4_000
    assert train.columns == ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rate = train["label"].mean()
    assert 0.15 < rate < 0.45
    assert train["I1"].null_count() == 0 and 0.02 < train["I2"].null_count() / train.height < 0.08
    assert train["C26"].n_unique() > 1_000  # a high-cardinality field
    top = train["C26"].value_counts(sort=True)["count"]
    assert top[0] > 50 * top[len(top) // 2]  # Zipf: a few values dominate

    def pair_auc(a: str, b: str) -> float:
        enc = OneHotEncoder(handle_unknown="ignore")
        xtr = enc.fit_transform(train.select(pl.concat_str([pl.col(a), pl.col(b)], separator="_")).to_numpy())
        xte = enc.transform(test.select(pl.concat_str([pl.col(a), pl.col(b)], separator="_")).to_numpy())
        lr = LogisticRegression(max_iter=500).fit(xtr, train["label"].to_numpy())
        return roc_auc_score(test["label"].to_numpy(), lr.predict_proba(xte)[:, 1])

    planted = pair_auc("C3", "C4")
    unrelated = pair_auc("C5", "C6")
    assert planted > 0.62, planted
    assert abs(unrelated - 0.5) < 0.04, unrelated
    assert planted > unrelated + 0.08

    # the pair is a pure interaction: each of its fields alone carries (almost) no signal
    enc = OneHotEncoder(handle_unknown="ignore")
    lr = LogisticRegression(max_iter=500).fit(enc.fit_transform(train.select("C3").to_numpy()), train["label"].to_numpy())
    alone = roc_auc_score(test["label"].to_numpy(), lr.predict_proba(enc.transform(test.select("C3").to_numpy()))[:, 1])
    assert alone < planted - 0.05


def test_synthetic_prefix_stable_and_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    small = pl.read_parquet(get_dataset("synthetic", rows=1_000, seed=9).files["train"])
    big = pl.read_parquet(get_dataset("synthetic", rows=2_000, seed=9).files["train"])
    assert small.equals(big.head(800))
    with pytest.raises(ValueError, match="rows"):
        get_dataset("synthetic", rows=5)


# ---- every entry that can be built here gives a valid, loadable config ------------------------


@pytest.mark.parametrize("name", ["frappe_x1_subset", "criteo_head10k", "avazu_head10k", "movielens_100k"])
def test_configs_round_trip(env, name):
    cfg = get_dataset(name)
    again = load_dataset_config(cfg.to_dict())
    assert again.files == cfg.files and [f.name for f in again.features] == [f.name for f in cfg.features]
    for split in ("train", "valid", "test"):
        assert cfg.resolve(split).is_file()
    assert (Path(cfg.root) / "manifest.json").is_file()
    assert not str(cfg.root).startswith(str(REPO))  # derived data never lands in the repository
