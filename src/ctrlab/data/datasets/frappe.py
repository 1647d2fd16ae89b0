"""``frappe_x1_subset``: a Frappe_x1 benchmark that runs without the (unavailable) train split."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from ...config import ConfigError
from ..schema import DatasetConfig
from .bars import BARS_X1, FRAPPE_FIELDS
from .fetch import ChecksumError
from .registry import DatasetContext, SourceFile, make_config, register_dataset

AFN_RAW = "https://raw.githubusercontent.com/WeiyuCheng/AFN-AAAI-20/25d7bd995bd0a3c71f562b3d332a0628c3b30d28/data/frappe/"

FRAPPE_SOURCES = [
    SourceFile(
        "frappe_x1/afn_libsvm/valid.libsvm",
        sha256="fc9de537bfb9aacca043730cfa7e7878c3a8b49781bbe66a35dd27d6bad7bd29",
        gz_sha256="305d4ed6538983d7f51db7e8b756c81aeaf13f9e41df6bd9df35761d634714f0",
        url=AFN_RAW + "valid.libsvm",
    ),
    SourceFile(
        "frappe_x1/afn_libsvm/test.libsvm",
        sha256="20d3d26705874eea94bcc416dc2e266d4558cc5fba25526fd46807d316b16fd7",
        gz_sha256="dede0ba906c5fc754d54b4c7c66807786b62c1e13c915afeffd85e679bc3be96",
        url=AFN_RAW + "test.libsvm",
    ),
]
HEADER = ",".join(["label"] + FRAPPE_FIELDS)
EOL = "\r\n"  # the published BARS csv files use CRLF; with it the converted files match BARS md5 exactly


def libsvm_to_bars_rows(path: Path) -> list[str]:
    """AFN libsvm lines (``label idx:1 ... idx:1``) -> BARS csv rows (``label,idx,...,idx``)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="ascii", newline="") as fh:
        text = fh.read()
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        parts = line.split(" ")
        if len(parts) != 1 + len(FRAPPE_FIELDS):
            raise ValueError(f"{path}, line {i}: expected label + {len(FRAPPE_FIELDS)} tokens, got {len(parts)}")
        rows.append(",".join([parts[0]] + [p.split(":", 1)[0] for p in parts[1:]]))
    return rows


def _csv_bytes(rows: list[str]) -> bytes:
    return (EOL.join([HEADER] + rows) + EOL).encode("ascii")


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``: (kept, held out), each in ascending (original) order.

    ``round(n * holdout_fraction)`` rows are held out, chosen by ``numpy.random.default_rng(seed)
    .permutation(n)``.
    """
    n_hold = int(round(n * holdout_fraction))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def subsample_indices(n: int, rows: int, seed: int) -> np.ndarray:
    """``rows`` of ``range(n)`` chosen by ``numpy.random.default_rng([seed, 1]).permutation(n)[:rows]``
    (a stream of its own, apart from :func:`split_indices`'), in ascending (original) order."""
    return np.sort(np.random.default_rng([seed, 1]).permutation(n)[:rows])


@register_dataset("frappe_x1_subset")
def frappe_x1_subset(
    ctx: DatasetContext, seed: int = 2023, valid_fraction: float = 0.2, train_rows: int | None = None
) -> DatasetConfig:
    """Frappe_x1 without its train split: train/valid from the published valid split, test as published.

    Why: the BARS Frappe_x1 train split (202,027 rows) is not available here; the published valid
    and test splits are (AFN libsvm, byte-identical to the release).

    Source files: ``<data_dir>/frappe_x1/afn_libsvm/valid.libsvm[.gz]`` and ``test.libsvm[.gz]``
    (the layout of the shared dataset folder), from ``WeiyuCheng/AFN-AAAI-20`` @ ``25d7bd99``
    ``data/frappe/{valid,test}.libsvm``. ``download=True`` fetches the plain files from
    raw.githubusercontent.com at that commit.
    Checksums (from the dataset card): valid.libsvm sha256
    fc9de537bfb9aacca043730cfa7e7878c3a8b49781bbe66a35dd27d6bad7bd29 (.gz
    305d4ed6538983d7f51db7e8b756c81aeaf13f9e41df6bd9df35761d634714f0); test.libsvm sha256
    20d3d26705874eea94bcc416dc2e266d4558cc5fba25526fd46807d316b16fd7 (.gz
    dede0ba906c5fc754d54b4c7c66807786b62c1e13c915afeffd85e679bc3be96). After conversion the full
    valid and test csv (CRLF) must match the BARS md5 sums 88d51bf2173505436d3a8f78f2a59da8 and
    3470f6d32713dc5f7715f198ca7c612a; the prepared ``test.csv`` is byte-identical to BARS ``test.csv``.

    Conversion: BARS' ``convert_frappe_x1.py`` rule: header
    ``label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city``, each ``idx:1``
    -> ``idx``, CRLF line endings.
    Split rule: the 57,722 published valid rows are permuted with ``numpy.random.default_rng(seed)``;
    the first ``round(57,722 * valid_fraction)`` indices form *valid*, the rest *train*; both keep
    the original row order. Rows (seed 2023, valid_fraction 0.2): **train 46,178 / valid 11,544 /
    test 28,860** (the published test split, unchanged).
    ``train_rows`` (default None: all): keep only that many train rows, chosen by
    ``numpy.random.default_rng([seed, 1]).permutation(46,178)[:train_rows]`` in their original
    order (for small-data comparisons, e.g. ``train_rows=5000``); valid and test are unchanged.
    Features: all 10 fields categorical (min_count 1, as BARS); label ``label``.
    Numbers on it are **not** comparable with the BARS leaderboard (less training data).
    Terms: Frappe data: research use only; cite Baltrunas et al., arXiv:1505.03014 (2015); **may not
    be redistributed without permission**; no commercial use; no de-anonymisation. The prepared
    files live in the user's cache, never in the repository.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"frappe_x1_subset: valid_fraction must be in (0, 1), got {valid_fraction}")
    if train_rows is not None and train_rows < 1:
        raise ConfigError(f"frappe_x1_subset: train_rows must be >= 1 (or unset for all rows), got {train_rows}")
    valid_src, test_src = ctx.find_sources(
        FRAPPE_SOURCES,
        hint="These are AFN's data/frappe/{valid,test}.libsvm (WeiyuCheng/AFN-AAAI-20), plain or gzipped.",
    )
    md5 = BARS_X1["frappe_x1"]["md5"]

    def build(out: Path) -> dict:
        valid_rows = libsvm_to_bars_rows(valid_src)
        test_rows = libsvm_to_bars_rows(test_src)
        for split, rows, src in (("valid", valid_rows, valid_src), ("test", test_rows, test_src)):
            got = hashlib.md5(_csv_bytes(rows)).hexdigest()
            if got != md5[split]:
                raise ChecksumError(
                    src, "md5", f"{md5[split]} (BARS {split}.csv)", got,
                    "the libsvm -> csv conversion does not reproduce the published BARS file",
                )
        keep, hold = split_indices(len(valid_rows), valid_fraction, seed)
        if train_rows is not None:
            if train_rows > len(keep):
                raise ConfigError(
                    f"frappe_x1_subset: train_rows={train_rows:,} is more than the {len(keep):,} train rows "
                    f"(valid_fraction {valid_fraction}); leave train_rows unset for all of them"
                )
            keep = keep[subsample_indices(len(keep), train_rows, seed)]
        parts = {
            "train": [valid_rows[i] for i in keep],
            "valid": [valid_rows[i] for i in hold],
            "test": test_rows,
        }
        counts = {}
        for split, rows in parts.items():
            (out / f"{split}.csv").write_bytes(_csv_bytes(rows))
            counts[split] = {"rows": len(rows), "positives": sum(r[0] == "1" for r in rows)}
        return {"splits": counts}

    params = {"seed": seed, "valid_fraction": valid_fraction}
    if train_rows is not None:  # unset keeps the key (and the folder) of the full split
        params["train_rows"] = train_rows
    folder = ctx.prepare(params, build, FRAPPE_SOURCES)
    return make_config(
        name="frappe_x1_subset",
        format="csv",
        files={s: str(folder / f"{s}.csv") for s in ("train", "valid", "test")},
        root=str(folder),
        header=True,
        labels=["label"],
        features=[{"name": f, "kind": "categorical", "min_count": 1} for f in FRAPPE_FIELDS],
    )
