"""The BARS ``x1`` benchmark splits (Frappe, MovielensLatest, Criteo, Avazu) as published by reczoo.

Each entry reads ``train.csv``, ``valid.csv`` and ``test.csv`` (or the same names + ``.gz``) from
``<data_dir>/<name>/`` and checks them against the md5 sums that reczoo publishes in
``reczoo/Datasets:<Dataset>/<Split>/README.md`` (same values in ``reczoo/BARS`` history,
``datasets/<Dataset>/README.md``). ``download=True`` fetches the published zip from the reczoo
Hugging Face dataset repo (Zenodo mirrors as fall-backs), extracts the three csv files into that
folder, deletes the zip and verifies the csv md5 sums.

Checksums: reczoo publishes md5 sums of the *extracted csv files* only; no checksum of the zip
archives is published, so the archives are verified through their contents. The md5 check is
line-ending tolerant (LF or CRLF): the published Frappe csv files use CRLF (their md5 was reproduced
byte-for-byte from the AFN libsvm files, see ``/work/shared/datasets/frappe_x1/README.md``), while
reczoo's own converters check md5 after reading the file in text mode, which ignores line endings.
Every byte other than line endings is checked.

Terms: these splits are derived from third-party data (Frappe: research use only, no
redistribution without permission, no commercial use, cite Baltrunas et al. 2015; MovieLens: GroupLens
terms, cite Harper & Konstan 2015; Criteo: Kaggle DAC data, treat as non-commercial research data
(Criteo's related 1TB release is CC BY-NC-SA 4.0); Avazu: Kaggle competition rules). **Never
redistribute them**: not in this repository, a package, a wheel, a docs build or a public artefact.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..schema import DatasetConfig
from .fetch import DownloadError, download, extract
from .registry import DatasetContext, SourceFile, make_config, register_dataset

HF = "https://huggingface.co/datasets/reczoo/{split}/resolve/main/{split}.zip"
SPLITS = ("train", "valid", "test")

# name -> published facts (reczoo/Datasets @ 71dc577 README.md of each split)
BARS_X1: dict[str, dict] = {
    "frappe_x1": {
        "split": "Frappe_x1",
        "md5": {
            "train": "ba7306e6c4fc19dd2cd84f2f0596d158",
            "valid": "88d51bf2173505436d3a8f78f2a59da8",
            "test": "3470f6d32713dc5f7715f198ca7c612a",
        },
        "rows": {"train": 202_027, "valid": 57_722, "test": 28_860},
        "urls": [
            HF.format(split="Frappe_x1"),
            "https://zenodo.org/record/5700987/files/Frappe_x1.zip",
            "https://zenodo.org/record/6324454/files/Frappe_x1.zip?download=1",
        ],
        "hint": "Without the train split: if you have only the AFN libsvm valid/test files "
        "(frappe_x1/afn_libsvm/{valid,test}.libsvm[.gz], the layout of the shared datasets folder), use the "
        "dataset 'frappe_x1_subset'.",
    },
    "movielenslatest_x1": {
        "split": "MovielensLatest_x1",
        "md5": {
            "train": "efc8bceeaa0e895d566470fc99f3f271",
            "valid": "e1930223a5026e910ed5a48687de8af1",
            "test": "54e8c6baff2e059fe067fb9b69e692d0",
        },
        "rows": {"train": 1_404_801, "valid": 401_373, "test": 200_686},
        "urls": [
            HF.format(split="MovielensLatest_x1"),
            "https://zenodo.org/record/6324454/files/Movielenslatest_x1.zip?download=1",
        ],
        "hint": None,
    },
    "criteo_x1": {
        "split": "Criteo_x1",
        "md5": {
            "train": "30b89c1c7213013b92df52ec44f52dc5",
            "valid": "f73c71fb3c4f66b6ebdfa032646bea72",
            "test": "2c48b26e84c04a69b948082edae46f8c",
        },
        "rows": {"train": 33_003_326, "valid": 8_250_124, "test": 4_587_167},
        "urls": [HF.format(split="Criteo_x1"), "https://zenodo.org/record/5700987/files/Criteo_x1.zip"],
        "hint": "For a small real Criteo sample use 'criteo_head10k'.",
    },
    "avazu_x1": {
        "split": "Avazu_x1",
        "md5": {
            "train": "f1114a07aea9e996842c71648e0f6395",
            "valid": "d9568f246357d156c4b8030fadb8b623",
            "test": "9e2fe9c48705c9315ae7a0953eb57acf",
        },
        "rows": {"train": 28_300_276, "valid": 4_042_897, "test": 8_085_794},
        "urls": [HF.format(split="Avazu_x1"), "https://zenodo.org/record/5700987/files/Avazu_x1.zip"],
        "hint": "For a small real Avazu sample use 'avazu_head10k'.",
    },
}


def sources_for(name: str) -> list[SourceFile]:
    md5 = BARS_X1[name]["md5"]
    return [SourceFile(f"{name}/{s}.csv", md5=md5[s], line_ending_tolerant=True) for s in SPLITS]


def _download_bars_zip(ctx: DatasetContext, missing: list[SourceFile]) -> None:
    """Fetch the published zip, extract train/valid/test.csv into <data_dir>/<name>/, delete the zip."""
    facts = BARS_X1[ctx.name]
    folder = ctx.data_dir / ctx.name
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{facts['split']}.zip"
    errors = []
    for url in facts["urls"]:
        try:
            download(url, archive)
            break
        except DownloadError as exc:
            errors.append(str(exc))
    else:
        raise DownloadError(
            f"could not download {facts['split']}.zip from any source:\n  " + "\n  ".join(errors)
            + f"\nDownload it by hand and extract train.csv, valid.csv and test.csv into {folder}",
            facts["urls"][0],
        )
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        files = extract(archive, tmp)
        by_name = {}
        for f in files:
            if f.name.lower() in {f"{s}.csv" for s in SPLITS} and "__MACOSX" not in f.parts:
                by_name.setdefault(f.name.lower(), f)
        lacking = [f"{s}.csv" for s in SPLITS if f"{s}.csv" not in by_name]
        if lacking:
            raise DownloadError(
                f"{archive} does not contain {lacking}; it has {[str(f.relative_to(tmp)) for f in files][:20]}",
                facts["urls"][0],
            )
        for s in SPLITS:
            target = folder / f"{s}.csv"
            if not target.exists():
                shutil.move(str(by_name[f"{s}.csv"]), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink(missing_ok=True)


def _bars_config(ctx: DatasetContext, features: list[dict]) -> DatasetConfig:
    facts = BARS_X1[ctx.name]
    paths = ctx.find_sources(sources_for(ctx.name), downloader=_download_bars_zip, hint=facts["hint"])
    return make_config(
        name=ctx.name,
        format="csv",
        files={s: str(p) for s, p in zip(SPLITS, paths)},
        root=str(ctx.data_dir / ctx.name),
        header=True,
        labels=["label"],
        features=features,
    )


FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


@register_dataset("frappe_x1")
def frappe_x1(ctx: DatasetContext) -> DatasetConfig:
    """Frappe_x1 (BARS): context-aware app usage, 10 categorical fields, label = app used in context.

    Source: AFN (Cheng et al., AAAI 2020) preprocessing of the Frappe log (Baltrunas et al. 2015):
    96,203 usage entries of 957 users on 4,082 apps, 2 negatives sampled per positive, 288,609
    rows split at random 7:2:1 (the AFN release, not the paper's 8:1:1). BARS/reczoo converted the
    libsvm files to csv (``idx:1`` -> ``idx``), columns
    ``label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city``.

    Rows: train 202,027 / valid 57,722 / test 28,860.
    Layout: ``<data_dir>/frappe_x1/{train,valid,test}.csv`` (``.csv.gz`` also accepted).
    Download: https://huggingface.co/datasets/reczoo/Frappe_x1/resolve/main/Frappe_x1.zip (mirrors:
    https://zenodo.org/record/5700987/files/Frappe_x1.zip, https://zenodo.org/record/6324454/files/Frappe_x1.zip).
    Checksums (md5 of the csv files, reczoo/Datasets Frappe/Frappe_x1/README.md):
    train ba7306e6c4fc19dd2cd84f2f0596d158, valid 88d51bf2173505436d3a8f78f2a59da8,
    test 3470f6d32713dc5f7715f198ca7c612a. No checksum of the zip is published.
    Features: all 10 fields categorical, min_count 1 (BARS ``min_categr_count: 1``); label ``label``.
    Terms: Frappe data: research use only; cite Baltrunas et al., arXiv:1505.03014 (2015); **may not
    be redistributed without permission**; no commercial use; no de-anonymisation.
    """
    return _bars_config(ctx, [{"name": f, "kind": "categorical", "min_count": 1} for f in FRAPPE_FIELDS])


@register_dataset("movielenslatest_x1")
def movielenslatest_x1(ctx: DatasetContext) -> DatasetConfig:
    """MovielensLatest_x1 (BARS): personalised tag recommendation on MovieLens tagging records.

    Source: AFN's preprocessing (as in NFM/AFM, "ml-tag"): each (user, movie, tag) assignment is a
    positive, with sampled negatives; random 7:2:1 split; csv columns ``label,user_id,item_id,tag_id``.

    Rows: train 1,404,801 / valid 401,373 / test 200,686 (these sum to 2,006,860; the BARS card's
    total says 2,006,859).
    Layout: ``<data_dir>/movielenslatest_x1/{train,valid,test}.csv``.
    Download: https://huggingface.co/datasets/reczoo/MovielensLatest_x1/resolve/main/MovielensLatest_x1.zip
    (mirror: https://zenodo.org/record/6324454/files/Movielenslatest_x1.zip).
    Checksums (md5 of the csv files, reczoo/Datasets MovieLens/MovielensLatest_x1/README.md):
    train efc8bceeaa0e895d566470fc99f3f271, valid e1930223a5026e910ed5a48687de8af1,
    test 54e8c6baff2e059fe067fb9b69e692d0. No checksum of the zip is published.
    Features: user_id, item_id, tag_id categorical, min_count 1; label ``label``.
    Terms: MovieLens (GroupLens): research use, cite Harper & Konstan 2015, no endorsement claims,
    no commercial use without permission. **Do not redistribute.**
    """
    return _bars_config(
        ctx, [{"name": f, "kind": "categorical", "min_count": 1} for f in ["user_id", "item_id", "tag_id"]]
    )


@register_dataset("criteo_x1")
def criteo_x1(ctx: DatasetContext) -> DatasetConfig:
    """Criteo_x1 (BARS): Criteo Display Advertising Challenge (Kaggle 2014), AFN's 7:2:1 random split.

    Source: the labelled Kaggle ``train.txt`` (45,840,617 rows, 7 days), preprocessed by AFN to
    libsvm and converted by reczoo to csv: ``label,I1..I13,C1..C26`` (I* are the AFN-transformed
    numeric values, C* the categorical indices).

    Rows: train 33,003,326 / valid 8,250,124 / test 4,587,167.
    Layout: ``<data_dir>/criteo_x1/{train,valid,test}.csv`` (about 11 GB unzipped).
    Download: https://huggingface.co/datasets/reczoo/Criteo_x1/resolve/main/Criteo_x1.zip (about
    2.9 GB; mirror https://zenodo.org/record/5700987/files/Criteo_x1.zip).
    Checksums (md5 of the csv files, reczoo/Datasets Criteo/Criteo_x1/README.md and
    convert_criteo_x1.py): train 30b89c1c7213013b92df52ec44f52dc5, valid
    f73c71fb3c4f66b6ebdfa032646bea72, test 2c48b26e84c04a69b948082edae46f8c. reczoo publishes no
    checksum for the zip; a third-party audit note seen in a public GitHub repository reports
    sha256 ad87602d1a0c855a234da10f4510ba058990247380e961083f7d60b8bff62608 (2,892,380,492 bytes,
    HF revision 4ecadde5) - informational only, not enforced.
    Features: I1..I13 ``numeric`` with **no normalizer** (as in the BARS dataset_config, e.g.
    DCNv2_criteo_x1 logs: ``type: numeric``, no preprocessing), missing -> 0; C1..C26 categorical,
    min_count 1 (BARS ``min_categr_count: 1``); label ``label``.
    Terms: Kaggle DAC data; no licence text was found for it, Criteo's related 1TB Click Logs are
    CC BY-NC-SA 4.0: treat as non-commercial research data. **Do not redistribute.**
    """
    feats = [{"name": f"I{i}", "kind": "numeric", "normalizer": "none", "fill_value": 0.0} for i in range(1, 14)]
    feats += [{"name": f"C{i}", "kind": "categorical", "min_count": 1} for i in range(1, 27)]
    return _bars_config(ctx, feats)


@register_dataset("avazu_x1")
def avazu_x1(ctx: DatasetContext) -> DatasetConfig:
    """Avazu_x1 (BARS): Avazu mobile-ad CTR (Kaggle 2014), AFN's 7:1:2 random split, 22 anonymised fields.

    Source: the 10 labelled days of Kaggle ``train.csv`` (40,428,967 rows), preprocessed by AFN into
    22 index fields; reczoo csv columns ``label,feat_1..feat_22``.

    Rows: train 28,300,276 / valid 4,042,897 / test 8,085,794.
    Layout: ``<data_dir>/avazu_x1/{train,valid,test}.csv``.
    Download: https://huggingface.co/datasets/reczoo/Avazu_x1/resolve/main/Avazu_x1.zip (mirror
    https://zenodo.org/record/5700987/files/Avazu_x1.zip).
    Checksums (md5 of the csv files, reczoo/Datasets Avazu/Avazu_x1/README.md and
    convert_avazu_x1.py): train f1114a07aea9e996842c71648e0f6395, valid
    d9568f246357d156c4b8030fadb8b623, test 9e2fe9c48705c9315ae7a0953eb57acf. No checksum of the
    zip is published.
    Features: feat_1..feat_22 categorical, min_count 1; label ``label``.
    Terms: Kaggle competition data rules (non-commercial research/education). **Do not redistribute.**
    """
    return _bars_config(
        ctx, [{"name": f"feat_{i}", "kind": "categorical", "min_count": 1} for i in range(1, 23)]
    )
