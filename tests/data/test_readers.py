"""Readers: csv/tsv (header or column_names, gzip), Parquet (list columns), libSVM, libFM,
and the DataErrors raised for bad input (file, line, column and a fix)."""
from __future__ import annotations

import gzip

import numpy as np
import polars as pl
import pytest

from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import prepare, raw_columns
from ctrlab.data.readers import LINE, read_split
from ctrlab.data.schema import OOV_ID, load_dataset_config

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


def cfg_of(**kw):
    kw.setdefault("features", [])
    return load_dataset_config(kw)


def quiet(*_a, **_k):
    pass


# ---- csv / tsv ---------------------------------------------------------------------------------
def test_csv_with_header_gz_real_criteo(data_dir):
    path = data_dir / "small_samples/DeepCTR/examples/criteo_sample.txt.gz"
    cfg = cfg_of(features=[{"name": "C1"}, {"name": "I3", "kind": "numeric"}])
    # ask for columns out of file order: the frame must follow the request, not the file
    df = read_split(cfg, path, ["C1", "I3", "label"])
    assert df.columns == ["C1", "I3", "label", LINE]
    assert df.height == 200
    # numeric features are parsed by the reader; other cells stay text (the encoders convert them)
    assert df.dtypes[:3] == [pl.String, pl.Float64, pl.String]
    assert df.row(0) == ("05db9164", 260.0, "0", 2)  # first data row is line 2 (after the header)
    assert df[LINE].to_list() == list(range(2, 202))
    assert df.row(199)[2:] == ("0", 201)


def test_csv_without_header_uses_column_names(write):
    path = write("nohead.csv", "1,a,0.5\n0,b,\n1,a,2\n")
    cfg = cfg_of(header=False, column_names=["click", "user", "x"], labels=["click"])
    df = read_split(cfg, path, ["x", "user", "click"])
    assert df.to_dict(as_series=False) == {
        "x": ["0.5", None, "2"],
        "user": ["a", "b", "a"],
        "click": ["1", "0", "1"],
        LINE: [1, 2, 3],  # no header: the first row is line 1
    }


def test_tsv_header_and_headerless_gz_crlf(write, tmp_path):
    body = "1\tu1\t3^4\r\n0\tu2\t\r\n"
    gz = tmp_path / "x.tsv.gz"
    gz.write_bytes(gzip.compress(body.encode()))
    cfg = cfg_of(format="tsv", header=False, column_names=["label", "user", "hist"])
    assert cfg.separator == "\t"
    df = read_split(cfg, gz, ["user", "hist", "label"])
    assert df.to_dict(as_series=False) == {
        "user": ["u1", "u2"], "hist": ["3^4", None], "label": ["1", "0"], LINE: [1, 2]
    }
    with_header = write("h.tsv", "label\tuser\thist\r\n" + body)
    df2 = read_split(cfg_of(format="tsv"), with_header, ["user", "hist", "label"])
    assert df2.drop(LINE).equals(df.drop(LINE)) and df2[LINE].to_list() == [2, 3]


def test_column_names_must_match_field_count(write, check_error):
    path = write("nohead.csv", "1,a,0.5\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(header=False, column_names=["label", "user"]), path, ["user"])
    check_error(ei.value, path, 1, None, "make column_names match")
    assert "line 1 has 3 fields but column_names lists 2" in str(ei.value)


# ---- parquet -----------------------------------------------------------------------------------
def test_parquet_with_list_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame(
        {
            "label": [1, 0, 1],
            "item": ["i1", "i2", "i3"],
            "hist": [[3, 4], [], None],
            "vec": [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]],
            "unused": [9, 9, 9],
        },
        schema_overrides={"hist": pl.List(pl.Int64), "vec": pl.List(pl.Float32)},
    ).write_parquet(path)
    df = read_split(cfg_of(format="parquet"), path, ["vec", "hist", "item", "label"])
    assert df.columns == ["vec", "hist", "item", "label", LINE]
    assert df.schema["hist"] == pl.List(pl.Int64) and df.schema["vec"] == pl.List(pl.Float32)
    assert df["hist"].to_list() == [[3, 4], [], None]
    assert df["vec"].to_list() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    assert df[LINE].to_list() == [1, 2, 3]  # Parquet has no lines: 1-based row numbers
    with pytest.raises(DataError, match=r"column\(s\) \['nope'\] not found"):
        read_split(cfg_of(format="parquet"), path, ["nope"])


# ---- libSVM ------------------------------------------------------------------------------------
def test_libsvm_frappe_real_file(data_dir):
    path = data_dir / "frappe_x1/afn_libsvm/test.libsvm.gz"
    cfg = cfg_of(format="libsvm", column_names=["label"] + FRAPPE_FIELDS, features=[{"name": f} for f in FRAPPE_FIELDS])
    df = read_split(cfg, path, raw_columns(cfg) + ["city:value"])
    assert df.height == 28_860
    assert df.columns == FRAPPE_FIELDS + ["label", "city:value", LINE]
    # line 1: "0 204:1 4798:1 5041:1 5046:1 5053:1 5055:1 5058:1 5060:1 5073:1 5183:1"
    assert df.row(0) == ("204", "4798", "5041", "5046", "5053", "5055", "5058", "5060", "5073", "5183", "0", "1", 1)
    assert df[LINE][-1] == 28_860
    assert (df["label"] == "1").sum() == 9_536  # the dataset card's positive count
    # positional fields: each column holds that field's global index range (see the card)
    user = df["user"].cast(pl.Int64)
    city = df["city"].cast(pl.Int64)
    assert user.min() >= 0 and user.max() <= 956 and city.min() >= 5149 and city.max() <= 5381


def test_libsvm_default_names_and_minus_one_label(data_dir):
    """The NFM copy of the same rows uses -1/1 labels and CRLF; read positionally it equals the AFN copy."""
    afn = read_split(cfg_of(format="libsvm"), data_dir / "frappe_x1/afn_libsvm/test.libsvm.gz", ["label", "f0", "f9"])
    nfm = read_split(cfg_of(format="libsvm"), data_dir / "frappe_x1/nfm_libfm/frappe.test.libfm.gz", ["label", "f0", "f9"])
    assert nfm.height == 28_860
    assert nfm.equals(afn)


def test_libsvm_ragged_rows_point_to_libfm(write, check_error):
    path = write("r.libsvm", "1 1:1 7:1\n0 2:1\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libsvm"), path, ["f0", "label"])
    check_error(ei.value, path, 2, None, "use format: libfm")


# ---- libFM -------------------------------------------------------------------------------------
LIBFM = (
    "1 0:10:1 1:20:1 2:30:0.5\n"
    "-1 2:31:1.5 0:11:1\n"  # field 1 (item) missing; tokens out of field order
    "\n"  # blank lines are skipped but still counted
    "1 0:10:1 1:21:1 2:30:1\n"
    "0\n"  # every field missing
)


def test_libfm_fields_and_missing_field(write):
    path = write("x.libfm", LIBFM)
    cfg = cfg_of(format="libfm", column_names=["click", "user", "item", "ctx"], labels=["click"])
    df = read_split(cfg, path, ["user", "item", "ctx", "ctx:value", "click"])
    assert df.to_dict(as_series=False) == {
        "user": ["10", "11", "10", None],
        "item": ["20", None, "21", None],  # a missing field is null
        "ctx": ["30", "31", "30", None],
        "ctx:value": ["0.5", "1.5", "1", None],
        "click": ["1", "0", "1", "0"],  # -1 means 0
        LINE: [1, 2, 4, 5],
    }


def test_libfm_keeps_line_order_on_large_files(tmp_path):
    rng = np.random.default_rng(0)
    n = 30_000
    idx = rng.integers(0, 1000, size=(n, 3))
    lines = [
        f"{i % 2} 0:{a}:1 " + ("" if i % 5 == 0 else f"1:{b}:1 ") + f"2:{c}:1"
        for i, (a, b, c) in enumerate(idx.tolist())
    ]
    path = tmp_path / "big.libfm"
    path.write_text("\n".join(lines) + "\n")
    df = read_split(cfg_of(format="libfm"), path, ["f0", "f1", "f2", "label"])
    assert df[LINE].to_list() == list(range(1, n + 1))
    assert df["f0"].cast(pl.Int64).to_list() == idx[:, 0].tolist()
    assert df["f2"].cast(pl.Int64).to_list() == idx[:, 2].tolist()
    f1 = df["f1"].to_list()
    assert f1[0] is None and f1[1] == str(idx[1, 1]) and sum(v is None for v in f1) == n // 5


def test_libfm_missing_field_encodes_as_oov(tmp_path):
    """Decision: a field missing from a libFM line is the empty string for the categorical
    encoder. Train has no missing item, so a missing item in test is OOV (id 1). If train has
    missing items, the empty string is an ordinary (fitted) value."""
    (tmp_path / "train.libfm").write_text("1 0:10:1 1:20:1\n0 0:11:1 1:21:1\n1 0:10:1 1:20:1\n")
    (tmp_path / "test.libfm").write_text("1 0:10:1\n0 0:12:1 1:21:1\n")
    cfg = cfg_of(
        format="libfm",
        root=str(tmp_path),
        files={"train": "train.libfm", "test": "test.libfm"},
        valid_fraction=0,
        column_names=["label", "user", "item"],
        features=[{"name": "user"}, {"name": "item"}],
    )
    data = prepare(cfg, tmp_path / "cache", log=quiet)
    assert data.feature_map.encoders["item"]["vocab"] == ["20", "21"]
    assert data.splits["test"].arrays["cat"].tolist() == [[2, OOV_ID], [OOV_ID, 3]]

    (tmp_path / "train.libfm").write_text("1 0:10:1\n0 0:11:1 1:21:1\n1 0:10:1\n")  # item missing twice
    data = prepare(cfg, tmp_path / "cache", log=quiet)
    assert data.feature_map.encoders["item"]["vocab"] == ["", "21"]
    assert data.splits["test"].arrays["cat"][:, 1].tolist() == [2, 3]  # missing == the fitted '' id


def test_libfm_duplicate_field_in_line(write, check_error):
    path = write("d.libfm", "1 0:1:1 1:2:1\n0 0:1:1 0:3:1\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libfm"), path, ["f0", "label"])
    check_error(ei.value, path, 2, None, "keep one token per field")


def test_libfm_file_read_as_libfm_when_it_is_libsvm(data_dir, check_error):
    path = data_dir / "frappe_x1/nfm_libfm/frappe.test.libfm.gz"  # named .libfm, but index:value tokens
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libfm"), path, ["f0", "label"])
    msg = check_error(ei.value, path, 1, None, "use format: libsvm")
    assert "malformed token '204:1'" in msg


# ---- bad input: every message names file, line, column and a fix -------------------------------
def test_bad_missing_column(write, check_error):
    path = write("t.csv", "label,user,price\n1,a,3\n")
    cfg = cfg_of(features=[{"name": "user"}, {"name": "item"}])
    with pytest.raises(DataError) as ei:
        read_split(cfg, path, raw_columns(cfg))
    msg = check_error(ei.value, path, 1, "item", "fix the feature's name/source")
    assert "column(s) ['item'] not found; the file has ['label', 'user', 'price']" in msg


def test_bad_libsvm_token(write, check_error):
    path = write("t.libsvm", "1 0:1 7:1 9:1\n0 1:1 8:1 9:1\n1 2:1 3:x 9:1\n")
    cfg = cfg_of(format="libsvm", column_names=["label", "user", "item", "ctx"])
    with pytest.raises(DataError) as ei:
        read_split(cfg, path, ["user", "item", "label"])
    msg = check_error(ei.value, path, 3, "item", "fix the token (index:value)")
    assert "malformed token '3:x'" in msg and "index:value (libSVM)" in msg


def test_bad_libsvm_token_that_looks_libfm(write, check_error):
    path = write("t.libsvm", "1 0:5:1 1:7:1\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libsvm"), path, ["f0", "label"])
    check_error(ei.value, path, 1, "f0", "use format: libfm")


def test_bad_libfm_token(write, check_error):
    path = write("t.libfm", "1 0:1:1 1:7:1\n\n0 0:2:1 1:7:x\n")
    cfg = cfg_of(format="libfm", column_names=["label", "user", "item"])
    with pytest.raises(DataError) as ei:
        read_split(cfg, path, ["user", "item", "label"])
    msg = check_error(ei.value, path, 3, "item", "fix the token")
    assert "malformed token '1:7:x'" in msg and "field:index:value (libFM)" in msg


def test_bad_text_in_numeric_column(tmp_path, check_error):
    path = tmp_path / "train.csv"
    path.write_text("label,user,price\n1,a,3.5\n0,b,\n1,c,abc\n0,d,1e3\n")
    cfg = cfg_of(files={"train": str(path)}, valid_fraction=0, features=[{"name": "user"}, {"name": "price", "kind": "numeric"}])
    with pytest.raises(DataError) as ei:
        prepare(cfg, tmp_path / "cache", log=quiet)
    msg = check_error(ei.value, path, 4, "price", "declare 'price' as kind: categorical")
    assert "value 'abc' is not a number" in msg


def test_bad_label_outside_0_1(tmp_path, check_error):
    path = tmp_path / "train.csv"
    path.write_text("label,user\n1,a\n0,b\n2,c\n")
    cfg = cfg_of(files={"train": str(path)}, valid_fraction=0, features=[{"name": "user"}])
    with pytest.raises(DataError) as ei:
        prepare(cfg, tmp_path / "cache", log=quiet)
    msg = check_error(ei.value, path, 4, "label", "binarise the label")
    assert "label '2' is not 0 or 1" in msg


@pytest.mark.parametrize("fmt", ["csv", "tsv", "libsvm", "libfm"])
def test_bad_empty_file(write, check_error, fmt):
    path = write(f"empty.{fmt}", b"")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format=fmt), path, ["label"])
    msg = check_error(ei.value, path, 1, None, "point the config at a file with data rows")
    assert "is empty (0 bytes)" in msg


def test_bad_header_only_file(write, check_error):
    path = write("head.csv", "label,user\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(features=[{"name": "user"}]), path, ["user", "label"])
    msg = check_error(ei.value, path, 2, None, "add data rows")
    assert "has a header but no data rows" in msg


def test_bad_duplicate_header_names(write, check_error):
    path = write("dup.csv", "label,user,price,user\n1,a,1,b\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(features=[{"name": "price"}]), path, ["price", "label"])
    msg = check_error(ei.value, path, 1, "user", "rename one of the columns")
    assert "duplicate column name 'user' at positions 2 and 4" in msg


def test_bad_missing_file(tmp_path):
    cfg = cfg_of(files={"train": str(tmp_path / "nope.csv")}, valid_fraction=0)
    with pytest.raises(DataError, match=r"nope\.csv.*does not exist\. Fix: check files/root"):
        prepare(cfg, tmp_path / "cache", log=quiet)


def test_bad_line_with_label_only(write, check_error):
    path = write("t.libsvm", "1 0:1 7:1\n0\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libsvm"), path, ["f0", "label"])
    msg = check_error(ei.value, path, 2, None, "use format: libfm")
    assert "line has 0 index:value tokens but line 1 has 2" in msg


def test_headerless_tsv_numeric_columns_parsed_by_the_reader(tmp_path):
    """Headerless files get Polars' column_<i> names internally: the Float64 override must still
    land on the numeric features (and only them), requested out of file order."""
    path = tmp_path / "t.tsv"
    path.write_text("1\t3\tab\t\n0\t-2.5\tcd\t7\n")
    cfg = cfg_of(format="tsv", header=False, column_names=["label", "x", "c", "y"],
                 features=[{"name": "c"}, {"name": "y", "kind": "numeric"}, {"name": "x", "kind": "numeric"}])
    df = read_split(cfg, path, ["y", "c", "x", "label"])
    assert df.dtypes[:4] == [pl.Float64, pl.String, pl.Float64, pl.String]
    assert df["y"].to_list() == [None, 7.0] and df["x"].to_list() == [3.0, -2.5]
    # a column that also feeds a categorical feature keeps its text ("3", not "3.0")
    cfg = cfg_of(format="tsv", header=False, column_names=["label", "x", "c", "y"],
                 features=[{"name": "x", "kind": "numeric"}, {"name": "x_id", "source": "x"}])
    assert read_split(cfg, path, ["x", "label"])["x"].to_list() == ["3", "-2.5"]


# ---- issue 14.19 / 14.20: one CSV parser for header and rows; malformed rows are errors --------
@pytest.mark.parametrize("streaming", [False, True])
def test_quoted_comma_in_header_keeps_columns_aligned(tmp_path, streaming):
    """`label,"city, state",item,hour`: the header is split by the CSV parser, so `item` is the
    third column, not the fourth (a naive split made `item` read the `hour` column)."""
    path = tmp_path / "train.csv"
    path.write_text('label,"city, state",item,hour\n1,"Austin, TX",i1,7\n0,"Reno, NV",i2,8\n')
    cfg = cfg_of(files={"train": str(path)}, valid_fraction=0,
                 features=[{"name": "item"}, {"name": "hour", "kind": "numeric"}, {"name": "city, state"}])
    prepared = prepare(cfg, tmp_path / "cache", log=quiet, streaming=streaming)
    item = prepared.feature_map.encoders["item"]["vocab"]
    assert sorted(item) == ["i1", "i2"]
    assert prepared.splits["train"].arrays["num"][:, 0].tolist() == [7.0, 8.0]
    assert sorted(prepared.feature_map.encoders["city, state"]["vocab"]) == ["Austin, TX", "Reno, NV"]


def test_quoted_comma_in_headerless_first_line(write):
    path = write("nohead.csv", '1,"a, b",3\n0,c,4\n')
    cfg = cfg_of(header=False, column_names=["label", "user", "n"])
    assert read_split(cfg, path, ["user", "n"])["n"].to_list() == ["3", "4"]


def blocks_of(cfg, path, columns, block_rows=2):
    from ctrlab.data.streaming import iter_blocks

    return pl.concat(list(iter_blocks(cfg, path, columns, block_rows=block_rows)))


@pytest.mark.parametrize("reader", ["memory", "streaming"])
def test_row_with_too_few_fields_is_an_error(write, check_error, reader):
    path = write("t.csv", "label,user,price\n1,a,3\n0,b\n1,c,4\n")
    cfg = cfg_of(features=[{"name": "user"}, {"name": "price", "kind": "numeric"}])
    with pytest.raises(DataError) as ei:
        (read_split if reader == "memory" else blocks_of)(cfg, path, ["user", "price", "label"])
    msg = check_error(ei.value, path, 3, "price", "add the missing fields")
    assert "line has 2 fields but the header has 3" in msg


@pytest.mark.parametrize("reader", ["memory", "streaming"])
def test_row_with_too_many_fields_is_an_error(write, check_error, reader):
    path = write("t.csv", "label,user,price\n1,a,3\n0,b,4\n1,c,4,5\n")
    cfg = cfg_of(features=[{"name": "user"}, {"name": "price", "kind": "numeric"}])
    with pytest.raises(DataError) as ei:
        (read_split if reader == "memory" else blocks_of)(cfg, path, ["user", "label"])
    msg = check_error(ei.value, path, 4, None, "quote fields that contain the separator")
    assert "line has 4 fields but the header has 3" in msg


@pytest.mark.parametrize("reader", ["memory", "streaming"])
def test_blank_lines_are_not_rows_and_lines_stay_right(write, reader):
    """A trailing blank line used to add a row (100 rows in, 101 scores out of `ctrlab predict`)."""
    rows = [f"{i % 2},u{i}\n" for i in range(100)]
    path = write("t.csv", "label,user\n" + "".join(rows[:4]) + "\n" + "".join(rows[4:]) + "\n")
    df = (read_split if reader == "memory" else blocks_of)(cfg_of(features=[{"name": "user"}]), path,
                                                            ["user", "label"])
    assert df.height == 100
    assert df["user"].to_list() == [f"u{i}" for i in range(100)]
    lines = df[LINE].to_list()
    assert lines[:6] == [2, 3, 4, 5, 7, 8] and lines[-1] == 102  # line 6 is blank


@pytest.mark.parametrize("streaming", [False, True])
def test_line_numbers_stay_right_after_quoted_newlines(tmp_path, check_error, streaming):
    path = tmp_path / "train.csv"
    path.write_text('label,note,price\n1,"two\nlines",3\n0,"three\nlines\nhere",4\n1,plain,oops\n')
    cfg = cfg_of(files={"train": str(path)}, valid_fraction=0, features=[{"name": "note"}, {"name": "price", "kind": "numeric"}])
    with pytest.raises(DataError) as ei:
        prepare(cfg, tmp_path / "cache", log=quiet, streaming=streaming, block_rows=1)
    check_error(ei.value, path, 7, "price", "declare 'price' as kind: categorical")


@pytest.mark.parametrize("reader", ["memory", "streaming"])
@pytest.mark.parametrize("header", [True, False])
def test_utf8_bom_is_not_part_of_the_first_name_or_cell(write, reader, header):
    text = ("label,user\n" if header else "") + "1,a\n0,b\n"
    path = write("bom.csv", b"\xef\xbb\xbf" + text.encode())
    cfg = cfg_of(features=[{"name": "user"}], header=header, column_names=None if header else ["label", "user"])
    df = (read_split if reader == "memory" else blocks_of)(cfg, path, ["label", "user"])
    assert df["label"].to_list() == ["1", "0"] and df[LINE].to_list() == ([2, 3] if header else [1, 2])


@pytest.mark.parametrize("reader", ["memory", "streaming"])
def test_non_utf8_bytes_name_the_line(write, check_error, reader):
    path = write("latin1.csv", "label,user\n1,a\n0,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as ei:
        (read_split if reader == "memory" else blocks_of)(cfg_of(features=[{"name": "user"}]), path,
                                                          ["user", "label"])
    msg = check_error(ei.value, path, 3, "user", "save the file as UTF-8")
    assert "not valid UTF-8" in msg


def test_unclosed_quote_names_its_line(write, check_error):
    path = write("stray.csv", 'label,u,n\n1,a,3\n1,5"x,3\n0,b,4\n')
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(features=[{"name": "u"}]), path, ["u", "n", "label"])
    check_error(ei.value, path, 3, None, "double the quotes inside it")


@pytest.mark.parametrize("columns", [["a"], ["a", "b", "c", "label"]])
def test_field_counts_checked_whatever_columns_are_read(write, check_error, columns):
    """Reading one of four columns (per-line field counts) or all of them (a byte count, Polars
    failing on long rows) finds the same short row; blank lines are skipped either way."""
    path = write("t.csv", "label,a,b,c\n1,x,y,z\n\n0,x,y,z\n1,x,y\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(), path, columns)
    check_error(ei.value, path, 5, "c", "add the missing fields")
    ok = write("ok.csv", "label,a,b,c\n1,x,y,z\n\n0,x,y,z\n")
    assert read_split(cfg_of(), ok, columns)[LINE].to_list() == [2, 4]


def test_libsvm_non_utf8_bytes_name_the_line(write, check_error):
    path = write("t.libsvm", b"1 0:1 7:1\n0 0:\xff 7:1\n")
    with pytest.raises(DataError) as ei:
        read_split(cfg_of(format="libsvm"), path, ["label", "f0"])
    check_error(ei.value, path, 2, None, "save the file as UTF-8")
