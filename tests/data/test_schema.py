"""Dataset config: YAML -> typed dataclasses, and ConfigErrors that name the key and the choices."""
from __future__ import annotations

import textwrap

import pytest

from ctrlab.config import ConfigError
from ctrlab.data.schema import (
    CategoricalSpec,
    DatasetConfig,
    DenseVectorSpec,
    NumericSpec,
    SequenceSpec,
    column_of,
    load_dataset_config,
)

GOOD_YAML = """\
name: taobao_tiny
format: tsv
files: {train: train.tsv, test: /abs/test.tsv}
labels: [clk]
group_field: userid
features:
  - {name: userid}
  - {name: item, source: adgroup_id, min_count: 2}
  - {name: price, kind: numeric, normalizer: log, fill_value: -1}
  - {name: age, kind: numeric, bucketize: [18, 30, 50]}
  - {name: history, kind: sequence, source: click_sequence, splitter: "^", max_len: 5,
     padding: post, share_vocab_with: item}
  - {name: img, kind: dense_vector, dim: 4, splitter: ";"}
"""


def _yaml(tmp_path, text: str):
    path = tmp_path / "ds.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_to_dataclasses(tmp_path):
    path = _yaml(tmp_path, GOOD_YAML)
    cfg = load_dataset_config(path)
    assert isinstance(cfg, DatasetConfig)
    assert (cfg.name, cfg.format, cfg.labels, cfg.group_field) == ("taobao_tiny", "tsv", ["clk"], "userid")
    assert cfg.separator == "\t"  # tsv default
    assert cfg.root == str(tmp_path.resolve())  # relative files resolve next to the YAML
    assert cfg.resolve("train") == tmp_path.resolve() / "train.tsv"
    assert str(cfg.resolve("test")) == "/abs/test.tsv"

    user, item, price, age, hist, img = cfg.features
    assert user == CategoricalSpec(name="userid")
    assert isinstance(item, CategoricalSpec) and item.min_count == 2 and column_of(item) == "adgroup_id"
    assert isinstance(price, NumericSpec) and price.normalizer == "log" and price.fill_value == -1.0
    assert isinstance(price.fill_value, float) and not price.is_bucketized
    assert isinstance(age, NumericSpec) and age.bucketize == [18.0, 30.0, 50.0] and age.is_bucketized
    assert isinstance(hist, SequenceSpec)
    assert (hist.splitter, hist.max_len, hist.padding, hist.truncating) == ("^", 5, "post", "pre")
    assert hist.share_vocab_with == "item" and column_of(hist) == "click_sequence"
    assert isinstance(img, DenseVectorSpec) and (img.dim, img.splitter) == (4, ";")
    # the dict form round-trips
    again = load_dataset_config(cfg.to_dict())
    assert again.features == cfg.features


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    path = _yaml(tmp_path, "features:\n  - {name: a, kind: categorical, min_cnt: 3}\n")
    with pytest.raises(ConfigError) as ei:
        load_dataset_config(path)
    msg = str(ei.value)
    assert "features[0]" in msg and "unknown key(s) ['min_cnt']" in msg
    assert "allowed keys are" in msg and "'min_count'" in msg and "'hash_buckets'" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['label'\].*allowed keys are .*'labels'"):
        load_dataset_config(_yaml(tmp_path, "label: [click]\n"))


def test_bad_kind_lists_allowed_kinds(tmp_path):
    path = _yaml(tmp_path, "features:\n  - {name: a}\n  - {name: b, kind: embedding}\n")
    with pytest.raises(ConfigError) as ei:
        load_dataset_config(path)
    msg = str(ei.value)
    assert "features[1].kind" in msg and "'embedding' is not allowed" in msg
    assert "['categorical', 'numeric', 'sequence', 'dense_vector']" in msg


@pytest.mark.parametrize(
    "feature, key, bad, allowed",
    [
        ("{name: x, kind: numeric, normalizer: foo}", "normalizer", "'foo'", "['none', 'standard', 'minmax', 'log']"),
        ("{name: s, kind: sequence, padding: left}", "padding", "'left'", "['pre', 'post']"),
        ("{name: s, kind: sequence, truncating: middle}", "truncating", "'middle'", "['pre', 'post']"),
    ],
)
def test_bad_literal_names_key_and_choices(tmp_path, feature, key, bad, allowed):
    with pytest.raises(ConfigError) as ei:
        load_dataset_config(_yaml(tmp_path, f"features:\n  - {feature}\n"))
    msg = str(ei.value)
    assert f"features[0].{key}: {bad} is not allowed; choose one of {allowed}" in msg


def test_bad_format_literal(tmp_path):
    with pytest.raises(ConfigError, match=r"format: 'xlsx' is not allowed; choose one of \['csv', 'tsv', 'parquet', 'libsvm', 'libfm'\]"):
        load_dataset_config(_yaml(tmp_path, "format: xlsx\n"))


def test_share_vocab_with_non_categorical(tmp_path):
    text = """\
    features:
      - {name: item}
      - {name: price, kind: numeric}
      - {name: hist, kind: sequence, share_vocab_with: price}
    """
    with pytest.raises(ConfigError) as ei:
        load_dataset_config(_yaml(tmp_path, text))
    msg = str(ei.value)
    assert "share_vocab_with" in msg and "hist" in msg
    assert "'price' is not a categorical feature; choose one of ['item']" in msg


def test_share_vocab_with_unknown_feature():
    with pytest.raises(ConfigError, match=r"'nope' is not a categorical feature; choose one of \['a', 'b'\]"):
        load_dataset_config(
            {"features": [{"name": "a"}, {"name": "b"}, {"name": "h", "kind": "sequence", "share_vocab_with": "nope"}]}
        )


@pytest.mark.parametrize(
    "feature, message",
    [
        ({"name": "x", "kind": "numeric", "bucketize": [1, 3, 2]}, "bucketize: boundaries must be sorted ascending"),
        ({"name": "x", "kind": "numeric", "bucketize": [1], "n_buckets": 4}, "not both"),
        ({"name": "x", "kind": "numeric", "n_buckets": 1}, "n_buckets: must be >= 2, got 1"),
        ({"name": "x", "min_count": 0}, "min_count: must be >= 1, got 0"),
        ({"name": "s", "kind": "sequence", "max_len": 0}, "max_len: must be >= 1, got 0"),
        ({"name": "v", "kind": "dense_vector"}, "dim"),  # required
        ({"name": "x", "kind": "numeric", "fill_value": "abc"}, "fill_value: expected a number, got 'abc'"),
    ],
)
def test_value_checks(feature, message):
    with pytest.raises(ConfigError) as ei:
        load_dataset_config({"features": [feature]})
    assert message in str(ei.value)


def test_duplicate_feature_names_and_empty_labels():
    with pytest.raises(ConfigError, match=r"duplicate feature names \['a'\]"):
        load_dataset_config({"features": [{"name": "a"}, {"name": "a", "kind": "numeric"}]})
    with pytest.raises(ConfigError, match="at least one label column"):
        load_dataset_config({"labels": [], "features": [{"name": "a"}]})


def test_resolve_unknown_split():
    cfg = load_dataset_config({"files": {"train": "t.csv"}})
    with pytest.raises(ConfigError, match=r"no 'valid' split; it has \['train'\]"):
        cfg.resolve("valid")
