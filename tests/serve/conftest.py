"""Trained, exported runs shared by the serving tests: FinalMLP on real Frappe (categorical only),
DIN on real MovieLens 100K (sequences: own and shared vocabularies), and a DNN on a small
generated CSV that has every feature kind (numeric, bucketized, sequence, dense vector)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrlab import api
from ctrlab.serve.artifact import export_run

QUIET = ["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=4096"]


def _train_and_export(tmp: Path, log=lambda *a: None, **kwargs) -> tuple[Path, Path]:
    run = tmp / "run"
    api.train(output=str(run), overrides=QUIET, log=log, **kwargs)
    return run, export_run(run, tmp / "artifact")


@pytest.fixture(scope="session")
def frappe_export(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, artifact folder) of FinalMLP (BARS preset) trained one epoch on frappe_x1_subset."""
    return _train_and_export(tmp_path_factory.mktemp("frappe"), dataset="frappe_x1_subset", model="FinalMLP")


@pytest.fixture(scope="session")
def movielens_export(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, artifact folder) of DIN trained one epoch on movielens_100k."""
    return _train_and_export(tmp_path_factory.mktemp("movielens"), dataset="movielens_100k", model="DIN")


MIXED_YAML = """
name: mixed
format: csv
files: {train: train.csv, valid: valid.csv, test: test.csv}
labels: [label]
features:
  - {name: user, kind: categorical}
  - {name: item, kind: categorical}
  - {name: price, kind: numeric, normalizer: standard, fill_value: 1.0}
  - {name: price_bucket, source: price, kind: numeric, bucketize: [1.0, 5.0]}
  - {name: hist, kind: sequence, splitter: "^", max_len: 4, share_vocab_with: item}
  - {name: tags, kind: sequence, splitter: "|", max_len: 3}
  - {name: emb, kind: dense_vector, dim: 3, splitter: " "}
"""


def write_mixed_dataset(folder: Path, rows: int = 600, seed: int = 0) -> Path:
    """A CSV dataset with every feature kind; the label depends on item and price."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = [f"i{k}" for k in range(12)]
    tags = ["red", "blue", "green", "big", "small"]
    for split, n in (("train", rows), ("valid", rows // 4), ("test", rows // 4)):
        lines = ["label,user,item,price,hist,tags,emb"]
        for _ in range(n):
            item = items[rng.integers(len(items))]
            price = "" if rng.random() < 0.05 else f"{rng.gamma(2.0, 2.0):.3f}"
            hist = "^".join(items[j] for j in rng.integers(0, len(items), rng.integers(0, 6)))
            tag = "|".join(tags[j] for j in rng.integers(0, len(tags), rng.integers(0, 3)))
            emb = " ".join(f"{v:.4f}" for v in rng.normal(size=3))
            label = int((int(item[1:]) % 3 == 0) ^ (rng.random() < 0.1))
            lines.append(f"{label},u{rng.integers(30)},{item},{price},{hist},{tag},{emb}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (folder / "mixed.yaml").write_text(MIXED_YAML)
    return folder / "mixed.yaml"


@pytest.fixture(scope="session")
def mixed_export(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, artifact folder) of a DNN trained one epoch on the generated every-kind dataset."""
    tmp = tmp_path_factory.mktemp("mixed")
    config = write_mixed_dataset(tmp / "data")
    return _train_and_export(tmp, dataset=str(config), model="DNN", preset="none")
