"""Tiny real click + conversion samples for multi-task models (ESMM, shared bottom, MMoE):
``ali_ccp_sample`` and ``aliexpress_sample``. Format and pipeline checks only: a few clicks and one
or two conversions per split cannot rank models (docs/results.md says what they allow)."""
from __future__ import annotations

import gzip
from pathlib import Path

from ..schema import DatasetConfig
from .frappe import split_indices
from .registry import DatasetContext, SourceFile, make_config, register_dataset

ALI_CCP_DIR = "small_samples/torch-rechub/examples/ranking/data/ali-ccp/"
ALI_CCP_SOURCES = [
    SourceFile(ALI_CCP_DIR + "ali_ccp_train_sample.csv",
               sha256="1c1d125bcdfca70c8f5ed24f6221acadab3e19b70e0b06b3eb3adb2af7a0f9b5",
               gz_sha256="e6787b3aa50833666027e08a935b42a5fa4c51cef573ab2968e2f9e01d7de129"),
    SourceFile(ALI_CCP_DIR + "ali_ccp_val_sample.csv",
               sha256="1236e1504b76bf7ceb48dbe3d999ae8b49f61fcda2d684578320fd9fc7821104",
               gz_sha256="22dc300094166a384b466a43484c47da9c108bb3d787e4f4fb95da3011864b47"),
    SourceFile(ALI_CCP_DIR + "ali_ccp_test_sample.csv",
               sha256="9764a9b8e53b25f85c00e08a89f65ecfadab100cb0834161bd7ef671b7702a09",
               gz_sha256="7515f32c833b44a69f31fff09edc4e89603783798c4f36005a280dd9dc77ecfe"),
]
ALI_CCP_CATEGORICAL = ("101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,"
                       "109_14,110_14,127_14,150_14").split(",")
ALI_CCP_NUMERIC = "D109_14,D110_14,D127_14,D150_14,D508,D509,D702,D853".split(",")

ALIEXPRESS_DIR = "small_samples/FuxiCTR/data/tiny_mtl/"
ALIEXPRESS_SOURCES = [
    SourceFile(ALIEXPRESS_DIR + "train.csv",
               sha256="6f260d3492b1d262c35aba442a3cd7663d4ab2820a65bad717ad3802d113899d",
               gz_sha256="5655f4d227e439fce8d6eb90ff789e6d73a9a1dcde1156afd647a90b847d2c2c"),
    SourceFile(ALIEXPRESS_DIR + "test.csv",
               sha256="40d83af4118b5bafd317f066bd1a73ea290aa7d1f1b227af4d3aad0e599f15cc",
               gz_sha256="9c36648f07116cd23454feee71ceda3fcbc2a81e411c2bbabb10f2dfa2981462"),
]


@register_dataset("ali_ccp_sample")
def ali_ccp_sample(ctx: DatasetContext) -> DatasetConfig:
    """Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM paper's public set), torch-rechub's
    preprocessed sample: train / val / test = 100 / 50 / 50 rows, labels ``click`` and ``purchase``
    (one purchase per file; 7 / 3 / 4 clicks), 23 categorical feature-field ids (columns ``101`` …
    ``150_14``, features ``f101`` …) and 8 dense ``D*`` columns (numeric, used as they are: the
    sample is already scaled to [0, 1]).

    Source: ``<data_dir>/small_samples/torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_{train,val,
    test}_sample.csv[.gz]`` (``datawhalechina/torch-rechub`` @ ``5a73b2e``), read as they are (sha256
    of the csv bytes in ``ALI_CCP_SOURCES``). Terms: Alibaba Tianchi dataset terms, research use;
    **do not redistribute**."""
    train, valid, test = ctx.find_sources(ALI_CCP_SOURCES)
    feats = [{"name": f"f{c}", "source": c, "kind": "categorical"} for c in ALI_CCP_CATEGORICAL]
    feats += [{"name": c, "kind": "numeric"} for c in ALI_CCP_NUMERIC]
    return make_config(name="ali_ccp_sample", format="csv", root=str(train.parent),
                       files={"train": str(train), "valid": str(valid), "test": str(test)},
                       labels=["click", "purchase"], features=feats)


@register_dataset("aliexpress_sample")
def aliexpress_sample(ctx: DatasetContext, seed: int = 2023, valid_fraction: float = 0.2) -> DatasetConfig:
    """AliExpress search logs (Alibaba), FuxiCTR's ``tiny_mtl`` sample: 100 train rows (3 clicks, 2
    conversions) and 100 test rows (1 conversion); labels ``click`` and ``conversion``; 16 categorical
    and 63 numerical columns (``search_id`` left out: an id of the query, not a feature).
    Split rule: the train file's rows are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(100 * valid_fraction)`` form *valid*, the rest *train* (original order kept; defaults:
    **train 80 / valid 20 / test 100**), written as csv with the header.

    Source: ``<data_dir>/small_samples/FuxiCTR/data/tiny_mtl/{train,test}.csv[.gz]``
    (``reczoo/FuxiCTR`` @ ``0245987``). Terms: Alibaba Tianchi dataset terms, research use; **do not
    redistribute**."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"aliexpress_sample: valid_fraction must be in (0, 1), got {valid_fraction}")
    train_src, test_src = ctx.find_sources(ALIEXPRESS_SOURCES)

    def lines(path: Path) -> list[bytes]:
        data = (gzip.open if path.name.endswith(".gz") else open)(path, "rb").read()
        return [ln for ln in data.replace(b"\r\n", b"\n").split(b"\n") if ln]

    def build(out: Path) -> dict:
        train, test = lines(train_src), lines(test_src)
        keep, hold = split_indices(len(train) - 1, valid_fraction, seed)
        rows = {"train": [train[1 + i] for i in keep], "valid": [train[1 + i] for i in hold], "test": test[1:]}
        for split, body in rows.items():
            (out / f"{split}.csv").write_bytes(b"\n".join([train[0], *body]) + b"\n")
        return {"splits": {s: {"rows": len(b)} for s, b in rows.items()}}

    folder = ctx.prepare({"seed": seed, "valid_fraction": valid_fraction}, build, ALIEXPRESS_SOURCES)
    header = lines(train_src)[0].decode().split(",")
    feats = [{"name": c, "kind": "categorical"} for c in header if c.startswith("categorical_")]
    feats += [{"name": c, "kind": "numeric"} for c in header if c.startswith("numerical_")]
    return make_config(name="aliexpress_sample", format="csv", root=str(folder),
                       files={s: str(folder / f"{s}.csv") for s in ("train", "valid", "test")},
                       labels=["click", "conversion"], features=feats)
