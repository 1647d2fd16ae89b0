"""Named datasets -> a ready :class:`~ctrlab.data.schema.DatasetConfig` whose files exist on disk.

Usage::

    from ctrlab.data.datasets import get_dataset, list_datasets
    cfg = get_dataset("frappe_x1_subset")            # looks in CTRLAB_DATA_DIR
    cfg = get_dataset("synthetic", rows=1_000_000, seed=7)
    cfg = get_dataset("frappe_x1", download=True)    # fetch the published BARS zip first

Where things live:

* **Raw data** (read only, never modified): ``data_dir`` argument > environment variable
  ``CTRLAB_DATA_DIR`` > ``~/.ctrlab/data``. Each entry documents the layout it expects below that
  folder. ``download=True`` fetches missing files (where a source URL is known) into it.
* **Derived files** (splits, format conversions, generated data): the *prepared* folder
  ``$CTRLAB_CACHE_DIR/prepared/<name>-<hash>/`` (default cache ``~/.cache/ctrlab``), where
  ``<hash>`` is a short sha256 of the entry's data parameters, the checksums of its source files,
  the entry's build version, the library version and a hash of the code that builds it (the
  entry's module and every module of this package: a changed split rule is a new folder). It is
  built once, in a uniquely named temporary sibling folder that is renamed into place only when
  complete (so an interrupted build never leaves a half-written folder under the final name), and
  reused afterwards; temporary folders of builds that died are removed by the next build
  (:func:`ctrlab.data.cache.remove_abandoned`). ``manifest.json`` in it records the parameters,
  sources, code hash, row counts and the sha256 of every file written.
* **Verification stamps**: source checksums are verified on every call; to avoid re-hashing large
  files, a successful verification is remembered in ``$CTRLAB_CACHE_DIR/verified/`` keyed by the
  file's identity (absolute path, device, inode, size, modification and change times).

Registering a dataset::

    @register_dataset("my_data")
    def my_data(ctx: DatasetContext, seed: int = 0) -> DatasetConfig:
        '''Docstring: source, split rule, row counts, terms, checksums.'''
        (src,) = ctx.find_sources([SourceFile("my_data/train.csv", sha256="...")])
        out = ctx.prepare({"seed": seed}, build=lambda tmp: ...)
        return make_config(name="my_data", ...)

The keyword parameters of the function are the dataset's parameters (``get_dataset(name,
**params)``); unknown parameters are rejected with the list of allowed ones.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import inspect
import json
import os
import sys
import time
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ...config import ConfigError, _convert, from_dict
from ..cache import (
    OWNER_FILE,
    BuildFolder,
    code_fingerprint,
    library_version,
    remove_abandoned,
    stat_identity,
    write_atomic,
)
from ..schema import DatasetConfig
from .fetch import CHUNK, ChecksumError, file_hash

ENV_DATA_DIR = "CTRLAB_DATA_DIR"
ENV_CACHE_DIR = "CTRLAB_CACHE_DIR"
DEFAULT_DATA_DIR = "~/.ctrlab/data"
DEFAULT_CACHE_DIR = "~/.cache/ctrlab"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's source files are not in the data directory. The message lists every path looked
    at and how to fix it (CTRLAB_DATA_DIR, ``data_dir=``, or ``download=True`` / ``--download``)."""

    def __init__(self, message: str, missing: list[Path] | None = None):
        self.missing = list(missing or [])
        super().__init__(message)

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "[Errno ...]" noise
        return self.args[0]


# --------------------------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The raw-data directory and a phrase saying where it came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve(), "from the data_dir argument"
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().resolve(), f"from {ENV_DATA_DIR}"
    return Path(DEFAULT_DATA_DIR).expanduser(), f"default {DEFAULT_DATA_DIR}; {ENV_DATA_DIR} is not set"


def resolve_cache_dir() -> Path:
    """``$CTRLAB_CACHE_DIR`` or ``~/.cache/ctrlab``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser().resolve() if env else Path(DEFAULT_CACHE_DIR).expanduser()


# --------------------------------------------------------------------------------------------
# Source files and their checksums
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One raw file a dataset needs, relative to the data directory, with its published checksums.

    The file may be stored plain or gzip-compressed (``<path>.gz`` is tried first when
    ``allow_gz``). A ``.gz`` copy is accepted if its own bytes match ``gz_sha256`` or its
    decompressed bytes match ``sha256``/``md5``; a plain copy must match ``sha256``/``md5``.
    """

    path: str
    """Path below the data directory, without ``.gz`` (e.g. ``frappe_x1/afn_libsvm/valid.libsvm``)."""
    sha256: str | None = None
    """sha256 of the uncompressed bytes."""
    md5: str | None = None
    """md5 of the uncompressed bytes (BARS publishes md5 sums)."""
    gz_sha256: str | None = None
    """sha256 of the ``.gz`` file as distributed (e.g. in the shared dataset folders)."""
    allow_gz: bool = True
    line_ending_tolerant: bool = False
    """Accept the md5 of the file with its line endings switched between LF and CRLF. BARS csv md5
    sums were taken on files written on different systems and checked by reading them in text mode,
    which ignores line endings; the values in the file are still checked exactly."""
    url: str | None = None
    """Where ``download=True`` fetches the *uncompressed* file from (None: not downloadable alone)."""

    @property
    def checksum_label(self) -> str:
        """The checksum that identifies this source in prepared-folder hashes."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return "unverified"


def _candidates(data_dir: Path, spec: SourceFile) -> list[Path]:
    base = data_dir / spec.path
    return [Path(str(base) + ".gz"), base] if spec.allow_gz else [base]


def _hash_stream(stream, algorithms: Iterable[str]) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algorithms}
    for block in iter(lambda: stream.read(CHUNK), b""):
        for h in hs.values():
            h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def _md5_switched_line_endings(open_fn) -> str:
    """md5 of the file with LF <-> CRLF switched (the ending of the first line decides the direction)."""
    h = hashlib.md5()
    with open_fn() as fh:
        line = fh.readline()
        to_lf = line.endswith(b"\r\n")
        while line:
            if to_lf and line.endswith(b"\r\n"):
                line = line[:-2] + b"\n"
            elif not to_lf and line.endswith(b"\n") and not line.endswith(b"\r\n"):
                line = line[:-1] + b"\r\n"
            h.update(line)
            line = fh.readline()
    return h.hexdigest()


def verify_source(path: Path, spec: SourceFile) -> None:
    """Check ``path`` (plain or .gz) against ``spec``'s checksums; raise :class:`ChecksumError`."""
    is_gz = path.name.endswith(".gz")
    if is_gz and spec.gz_sha256:
        gz_actual = file_hash(path, "sha256")
        if gz_actual == spec.gz_sha256:
            return
    else:
        gz_actual = None
    algos = [a for a, v in (("sha256", spec.sha256), ("md5", spec.md5)) if v]
    if not algos:
        if gz_actual is not None:
            raise ChecksumError(path, "sha256", spec.gz_sha256, gz_actual)
        return

    def open_fn():
        return gzip.open(path, "rb") if is_gz else open(path, "rb")

    try:
        with open_fn() as fh:
            actual = _hash_stream(fh, algos)
    except (OSError, EOFError, zlib.error) as exc:  # corrupt gzip stream
        if not is_gz:
            raise
        expected = spec.gz_sha256 or spec.sha256 or spec.md5
        what = "sha256" if (spec.gz_sha256 or spec.sha256) else "md5"
        shown = f"{gz_actual} (of the .gz file; its content is not a valid gzip stream: {exc})" if gz_actual else (
            f"<not a valid gzip stream: {exc}>"
        )
        raise ChecksumError(path, what, expected, shown) from None
    for algo in algos:
        expected = getattr(spec, algo)
        if actual[algo] == expected:
            continue
        if algo == "md5" and spec.line_ending_tolerant and _md5_switched_line_endings(open_fn) == expected:
            continue
        parts = []
        if gz_actual is not None:
            parts.append(f"{spec.gz_sha256} for the .gz file or ")
        exp = "".join(parts) + f"{expected} for its {'decompressed ' if is_gz else ''}bytes"
        got = (f"{gz_actual} (.gz) and " if gz_actual is not None else "") + actual[algo]
        note = (
            "The file is corrupt, truncated or a different version. Replace it with the published file "
            "(or delete it and pass download=True / --download where the dataset supports it)"
        )
        raise ChecksumError(path, algo, exp, got, note)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetEntry:
    """A registered dataset: its builder function, parameters (with defaults) and docstring."""

    name: str
    builder: Callable[..., DatasetConfig]
    params: dict[str, Any]
    doc: str

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, overwrite: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(ctx: DatasetContext, **params) -> DatasetConfig`` under ``name``."""

    def deco(fn: Callable[..., DatasetConfig]) -> Callable[..., DatasetConfig]:
        if name in _REGISTRY and not overwrite and _REGISTRY[name].builder is not fn:
            raise ConfigError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        _REGISTRY[name] = DatasetEntry(name, fn, params, inspect.getdoc(fn) or "")
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry (builder, default parameters, docstring) for ``name``."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"unknown dataset {name!r}{hint} Registered datasets: {list_datasets()}")
    return _REGISTRY[name]


def get_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = False, **params: Any
) -> DatasetConfig:
    """A ready :class:`DatasetConfig` for a registered dataset, with absolute file paths.

    ``data_dir`` overrides ``CTRLAB_DATA_DIR`` (default ``~/.ctrlab/data``); ``download=True``
    fetches missing source files where the entry knows a URL; ``params`` are the entry's parameters
    (see ``dataset_entry(name).params`` and its docstring).
    """
    entry = dataset_entry(name)
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        raise ConfigError(
            f"dataset {name!r}: unknown parameter(s) {unknown}; allowed parameters (with defaults) are {entry.params}"
        )
    try:
        hints = typing.get_type_hints(entry.builder)
    except Exception:  # noqa: BLE001 - unresolvable annotations: pass values through unchecked
        hints = {}
    params = {k: _convert(v, hints[k], f"dataset {name!r} parameter {k!r}") if k in hints else v for k, v in params.items()}
    ctx = DatasetContext(name=name, data_dir_arg=data_dir, download=download, builder_module=entry.builder.__module__)
    return entry.builder(ctx, **params)


# --------------------------------------------------------------------------------------------
# Context handed to every builder
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetContext:
    """What a dataset builder gets: where raw data and the cache are, and helpers to find, verify,
    download and prepare files."""

    name: str
    data_dir_arg: str | os.PathLike | None = None
    download: bool = False
    cache_dir: Path = field(default_factory=resolve_cache_dir)
    builder_module: str | None = None
    """The module of the entry's builder function: its code is part of the prepared folder's key."""

    @property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir_arg)[0]

    @property
    def data_dir_origin(self) -> str:
        return resolve_data_dir(self.data_dir_arg)[1]

    # ---- sources -----------------------------------------------------------------------------
    def locate(self, spec: SourceFile) -> Path | None:
        for cand in _candidates(self.data_dir, spec):
            if cand.is_file():
                return cand
        return None

    def find_sources(
        self,
        specs: list[SourceFile],
        *,
        downloader: Callable[["DatasetContext", list[SourceFile]], None] | None = None,
        no_download_reason: str | None = None,
        hint: str | None = None,
    ) -> list[Path]:
        """Paths of ``specs`` in the data directory, each verified against its checksums.

        Missing files are downloaded first when ``download=True`` and the entry can download
        (``downloader`` given, or every missing spec has a ``url``); otherwise
        :class:`DatasetNotFoundError` lists every path looked at and how to fix it.
        """
        missing = [s for s in specs if self.locate(s) is None]
        if missing and self.download:
            can = downloader is not None or all(s.url for s in missing)
            if can:
                if downloader is not None:
                    downloader(self, missing)
                else:
                    self._download_plain(missing)
                missing = [s for s in specs if self.locate(s) is None]
        if missing:
            raise DatasetNotFoundError(
                self._missing_message(missing, specs, downloadable=downloader is not None or all(s.url for s in missing),
                                      no_download_reason=no_download_reason, hint=hint),
                [_candidates(self.data_dir, s)[-1] for s in missing],
            )
        paths = []
        for spec in specs:
            path = self.locate(spec)
            assert path is not None
            self._verify_cached(path, spec)
            paths.append(path)
        return paths

    def _download_plain(self, specs: list[SourceFile]) -> None:
        from .fetch import download

        for spec in specs:
            dest = self.data_dir / spec.path
            download(spec.url, dest, sha256=spec.sha256, md5=None if spec.line_ending_tolerant else spec.md5)

    def _missing_message(
        self,
        missing: list[SourceFile],
        specs: list[SourceFile],
        *,
        downloadable: bool,
        no_download_reason: str | None,
        hint: str | None,
    ) -> str:
        data_dir, origin = self.data_dir, self.data_dir_origin
        lines = [f"dataset {self.name!r}: {len(missing)} of {len(specs)} source file(s) not found.",
                 f"Data directory: {data_dir} ({origin}){'' if data_dir.is_dir() else ' - this folder does not exist'}.",
                 "Looked for:"]
        for spec in missing:
            cands = _candidates(data_dir, spec)
            lines.append("  " + "  or  ".join(str(c) for c in cands))
        top = missing[0].path.split("/")[0]
        fix = [
            f"To fix: set {ENV_DATA_DIR} to the folder that contains '{top}/' "
            f"(export {ENV_DATA_DIR}=/path/to/datasets), or pass data_dir=... to get_dataset"
        ]
        if self.download:
            fix.append(f"download=True cannot fetch it: {no_download_reason or 'no download source is known'}")
        elif downloadable:
            fix.append("or pass download=True (CLI: --download) to fetch the published files into the data directory")
        else:
            fix.append(f"(download=True / --download is not available: {no_download_reason or 'no download source is known'})")
        lines.append("; ".join(fix) + ".")
        if hint:
            lines.append(hint)
        return "\n".join(lines)

    def _verify_cached(self, path: Path, spec: SourceFile) -> None:
        key = hashlib.sha256(
            json.dumps([str(path.resolve()), spec.sha256, spec.md5, spec.gz_sha256, spec.line_ending_tolerant]).encode()
        ).hexdigest()[:32]
        stamp = self.cache_dir / "verified" / f"{key}.json"
        want = stat_identity(path)  # any write changes it, even one that puts size and mtime back
        try:
            if json.loads(stamp.read_text()) == want:
                return
        except (OSError, ValueError):
            pass
        verify_source(path, spec)
        try:
            write_atomic(stamp, json.dumps(want))
        except OSError:
            pass  # a read-only cache only costs re-hashing next time

    # ---- prepared folder ---------------------------------------------------------------------
    def prepared_path(self, params: dict[str, Any], sources: list[SourceFile] | dict[str, str], version: int = 1) -> Path:
        key = self._prepare_key(params, sources, version)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return self.cache_dir / "prepared" / f"{self.name}-{digest}"

    def _prepare_key(self, params, sources, version) -> dict[str, Any]:
        if isinstance(sources, dict):
            src = dict(sources)
        else:
            src = {s.path: s.checksum_label for s in sources}
        # The code that builds the folder: this package (registry, download helpers, the entries
        # sharing split rules) and the entry's own module, wherever it is defined.
        code = code_fingerprint(__package__, *([self.builder_module] if self.builder_module else []))
        return {"name": self.name, "version": version, "params": params, "sources": src,
                "library_version": library_version(), "code": code}

    def prepare(
        self,
        params: dict[str, Any],
        build: Callable[[Path], dict[str, Any] | None],
        sources: list[SourceFile] | dict[str, str] = (),
        version: int = 1,
    ) -> Path:
        """The prepared folder for ``params`` + ``sources``; runs ``build(tmp_folder)`` once.

        ``build`` writes its files into the folder it is given and may return extra manifest
        fields (e.g. row counts). The folder is renamed into place atomically when ``build``
        returns; concurrent builders race harmlessly (the loser's copy is discarded).
        """
        final = self.prepared_path(params, sources, version)
        # Folders of builds killed earlier, here or elsewhere; said on stderr (stdout may carry data).
        remove_abandoned(final.parent, log=lambda msg: print(msg, file=sys.stderr))
        if (final / "manifest.json").is_file():
            return final
        with BuildFolder(final) as tmp:
            info = build(tmp) or {}
            files = {}
            for p in sorted(tmp.rglob("*")):
                if p.is_file() and p.name != OWNER_FILE:
                    files[str(p.relative_to(tmp))] = {"bytes": p.stat().st_size, "sha256": file_hash(p)}
            manifest = {
                **self._prepare_key(params, sources, version),
                "folder": final.name,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files,
                **info,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        return final


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a prepared folder."""
    return json.loads((Path(folder) / "manifest.json").read_text())


def make_config(**fields: Any) -> DatasetConfig:
    """Build and validate a DatasetConfig from plain fields (features as dicts)."""
    return from_dict(DatasetConfig, fields, f"dataset {fields.get('name', '?')!r}")
