"""The feature map: the one description of encoded inputs shared by training, evaluation,
prediction and serving.

It is written as readable JSON beside the encoded data. It tells a model which fields exist
(and their vocabulary sizes), and tells the encoders how to turn raw values into ids
(``encoders`` holds each fitted vocabulary / normaliser state).

Batches (see :mod:`ctrlab.data.loader`) are dicts of tensors keyed as follows:

* ``"cat"``: int64 ``(B, n_categorical)``, one column per entry of ``categorical`` in order;
  ids are local to each field: 0 = padding, 1 = out-of-vocabulary, 2.. = known values.
* ``"num"``: float32 ``(B, n_numeric)``, normalised values in ``numeric`` order.
* ``"seq:<name>"``: int64 ``(B, max_len)``, ids in the sequence's (possibly shared) vocabulary, 0 = padding.
* ``"numseq:<name>"``: float32 ``(B, max_len)``, a numeric (value) sequence (``values: numbers``, e.g. the
  seconds between each history event and the row), 0 at padding; padded and cut like an id sequence of
  the same ``max_len``, so position ``j`` lines up with position ``j`` of ``seq:<name>`` built from the
  same events. Listed in ``numeric_sequences``, not among the fields a model embeds.
* ``"dense:<name>"``: float32 ``(B, dim)``.
* ``"label"``: float32 ``(B, n_labels)`` in ``labels`` order.
* ``"group"``: int64 ``(B,)`` group ids for gAUC, present when ``group_field`` is set.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .cache import write_atomic


@dataclass
class CategoricalField:
    name: str
    vocab_size: int
    """Number of ids including padding (0) and OOV (1)."""
    embedding_dim: int | None = None
    origin: str = "categorical"
    """``categorical``, ``bucketized`` (a numeric feature cut into buckets) or ``cross`` (the pair
    of the values of the two fields in ``sources``, see :func:`ctrlab.data.derive.with_crosses`)."""
    pretrained_emb: str | None = None
    """Path of pretrained vectors keyed by token (see :mod:`ctrlab.data.pretrained`)."""
    freeze_emb: bool = True
    """With ``pretrained_emb``: the field's rows are not trained."""
    sources: list[str] | None = None
    """A cross field's two categorical fields ``[a, b]``; None for other fields."""


@dataclass
class NumericField:
    name: str
    embedding_dim: int | None = None


@dataclass
class SequenceField:
    name: str
    max_len: int
    vocab_size: int
    shares: str | None = None
    """Name of the categorical field whose vocabulary and embedding rows this sequence uses."""
    embedding_dim: int | None = None
    pretrained_emb: str | None = None
    freeze_emb: bool = True


@dataclass
class NumericSequenceField:
    """A numeric (value) sequence: batch key ``numseq:<name>``, float32 ``(B, max_len)``, 0 at padding.
    Not embedded by :class:`~ctrlab.layers.embedding.FeatureEmbedding` (models that use one read
    it by name, e.g. time gaps aligned with an item history)."""

    name: str
    max_len: int


@dataclass
class DenseField:
    name: str
    dim: int


@dataclass
class FeatureMap:
    dataset: str = "dataset"
    categorical: list[CategoricalField] = field(default_factory=list)
    numeric: list[NumericField] = field(default_factory=list)
    sequences: list[SequenceField] = field(default_factory=list)
    dense: list[DenseField] = field(default_factory=list)
    labels: list[str] = field(default_factory=lambda: ["label"])
    numeric_sequences: list[NumericSequenceField] = field(default_factory=list)
    """Numeric (value) sequences (``values: numbers``): not in :attr:`num_fields` / :meth:`field_names`."""
    group_field: str | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Fitted state per feature name (vocabulary, normaliser statistics, bucket edges)."""
    version: int = 1
    field_order: list[str] | None = None
    """Every field's name in the dataset config's feature order: the order a model's embedding
    stacks the fields in (as FuxiCTR does). None (maps written before it existed, maps built
    with :meth:`from_fields`): grouped by kind, categorical, numeric, sequences, dense."""

    # ---- lookups -------------------------------------------------------------------------
    def rows_per_call(self, most: int = 8192) -> int:
        """Rows per model call when running a model over many rows outside the training loop (parity
        checks, serving, the output-bias start): ``most``, fewer for long sequences, whose attention
        (SUAN's dense self-attention: ``rows·L²`` scores per head and layer) would otherwise need tens
        of GB at L = 1,000: ``2^25 / L²`` rows, at least 1."""
        longest = max([s.max_len for s in self.sequences] + [s.max_len for s in self.numeric_sequences] + [1])
        return max(1, min(most, (1 << 25) // (longest * longest)))

    @property
    def num_fields(self) -> int:
        """Fields a classic model embeds: categorical + numeric + sequences + dense vectors."""
        return len(self.categorical) + len(self.numeric) + len(self.sequences) + len(self.dense)

    def categorical_index(self, name: str) -> int:
        for i, f in enumerate(self.categorical):
            if f.name == name:
                return i
        raise KeyError(f"{name!r} is not a categorical field; fields are {[f.name for f in self.categorical]}")

    def crosses(self) -> dict[tuple[str, str], str]:
        """``(a, b)`` -> the name of the cross field of ``a`` and ``b``, for every cross field."""
        return {tuple(f.sources): f.name for f in self.categorical if f.origin == "cross" and f.sources}

    def field_names(self) -> list[str]:
        """All field names in the order a FeatureEmbedding stacks them: ``field_order`` if set,
        else grouped by kind."""
        by_kind = (
            [f.name for f in self.categorical]
            + [f.name for f in self.numeric]
            + [f.name for f in self.sequences]
            + [f.name for f in self.dense]
        )
        if self.field_order is None:
            return by_kind
        if sorted(self.field_order) != sorted(by_kind):
            raise ValueError(
                f"feature map {self.dataset!r}: field_order {list(self.field_order)} does not list exactly "
                f"its fields {by_kind}; refit the feature map (or remove field_order to stack by kind)"
            )
        return list(self.field_order)

    # ---- construction for tests and synthetic data ----------------------------------------
    @classmethod
    def from_fields(
        cls,
        categorical: dict[str, int] | None = None,
        numeric: list[str] | None = None,
        sequences: dict[str, tuple[int, int | str]] | None = None,
        dense: dict[str, int] | None = None,
        labels: list[str] | None = None,
        dataset: str = "synthetic",
        numeric_sequences: dict[str, int] | None = None,
    ) -> "FeatureMap":
        """Build a map by hand. ``categorical``: name -> vocab size (incl. pad/OOV);
        ``sequences``: name -> (max_len, vocab size or name of a categorical field to share);
        ``numeric_sequences``: name -> max_len."""
        categorical = categorical or {}
        seqs = []
        for name, (max_len, vocab) in (sequences or {}).items():
            if isinstance(vocab, str):
                seqs.append(SequenceField(name, max_len, categorical[vocab], shares=vocab))
            else:
                seqs.append(SequenceField(name, max_len, int(vocab)))
        return cls(
            dataset=dataset,
            categorical=[CategoricalField(n, int(v)) for n, v in categorical.items()],
            numeric=[NumericField(n) for n in (numeric or [])],
            sequences=seqs,
            dense=[DenseField(n, int(d)) for n, d in (dense or {}).items()],
            labels=list(labels or ["label"]),
            numeric_sequences=[NumericSequenceField(n, int(m)) for n, m in (numeric_sequences or {}).items()],
        )

    # ---- JSON I/O ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. The encoder states are shared with the map, not deep-copied: a
        vocabulary can hold millions of entries, and copying them dominated saving."""
        head = {k: v for k, v in asdict(replace(self, encoders={})).items() if k != "encoders"}
        return {**head, "encoders": {k: dict(v) for k, v in self.encoders.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureMap":
        return cls(
            dataset=d.get("dataset", "dataset"),
            categorical=[CategoricalField(**x) for x in d.get("categorical", [])],
            numeric=[NumericField(**x) for x in d.get("numeric", [])],
            sequences=[SequenceField(**x) for x in d.get("sequences", [])],
            dense=[DenseField(**x) for x in d.get("dense", [])],
            labels=list(d.get("labels", ["label"])),
            numeric_sequences=[NumericSequenceField(**x) for x in d.get("numeric_sequences", [])],
            group_field=d.get("group_field"),
            encoders=d.get("encoders", {}),
            version=d.get("version", 1),
            field_order=d.get("field_order"),
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        d = self.to_dict()
        encoders = d.pop("encoders")
        # Readable layout (indented fields, one line per encoder), but each encoder state is dumped
        # compactly: json's C encoder only runs without `indent`, and vocabularies are long lists.
        lines = [f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                 for k, v in encoders.items()]
        text = json.dumps(d, indent=1, ensure_ascii=False)[:-2]  # strip the closing "\n}"
        text += ',\n "encoders": {\n' + ",\n".join(lines) + ("\n" if lines else "") + " }\n}\n"
        write_atomic(path, text)  # under a temporary name of its own, then renamed over `path`

    @classmethod
    def load(cls, path: str | Path) -> "FeatureMap":
        """Read a saved map, checked by :func:`validate_feature_map_dict` (a malformed file raises a
        :class:`~ctrlab.data.errors.DataError` naming the field and key, not a KeyError later)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            from .errors import DataError

            raise DataError(f"not a valid feature map JSON file ({exc})", file=path,
                            fix="train or export the run again (feature_map.json is written by ctrlab)") from None
        validate_feature_map_dict(d, path)
        return cls.from_dict(d)


_FIELD_KINDS = {"categorical": CategoricalField, "numeric": NumericField, "sequences": SequenceField,
                "dense": DenseField, "numeric_sequences": NumericSequenceField}
_ENCODER_KINDS = {"categorical": {"categorical"}, "numeric": {"numeric"}, "sequences": {"sequence"},
                  "dense": {"dense_vector"}, "numeric_sequences": {"sequence"}}


def validate_feature_map_dict(d: Any, path: str | Path | None = None) -> None:
    """Structural checks of a saved feature map: every field entry has its keys, with the right types;
    every field has a fitted encoder state of its kind (vocabulary sizes agreeing with the fields),
    and shared sequences name a categorical field. Raises a DataError naming the field and key."""
    from .errors import DataError

    fix = "train or export the run again (feature_map.json is written by ctrlab and must not be edited)"

    def bad(problem: str):
        return DataError(problem, file=path, fix=fix)

    if not isinstance(d, dict):
        raise bad(f"expected a JSON object, got {type(d).__name__}")
    encoders = d.get("encoders", {})
    if not isinstance(encoders, dict):
        raise bad("'encoders' must be an object of fitted states by feature name")
    names: set[str] = set()
    categorical: set[str] = set()
    for section, cls in _FIELD_KINDS.items():
        entries = d.get(section, [])
        if not isinstance(entries, list):
            raise bad(f"{section!r} must be a list of fields")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        allowed = {f.name for f in dataclasses.fields(cls)}
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
            if not isinstance(entry, dict):
                raise bad(f"{where} must be an object")
            missing, unknown = sorted(required - set(entry)), sorted(set(entry) - allowed)
            if missing or unknown:
                problems = ([f"missing key(s) {missing}"] if missing else []) + (
                    [f"unknown key(s) {unknown}"] if unknown else [])
                raise bad(f"{where}: " + "; ".join(problems))
            for key in ("vocab_size", "max_len", "dim"):
                if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1):
                    raise bad(f"{where}: {key!r} must be a positive integer, got {entry[key]!r}")
            name = entry["name"]
            if not isinstance(name, str) or name in names:
                raise bad(f"{where}: 'name' must be a string naming one field, got {name!r}")
            names.add(name)
            if section == "categorical":
                categorical.add(name)
            if section == "sequences" and entry.get("shares") is not None and entry["shares"] not in categorical:
                raise bad(f"{where}: 'shares' names {entry['shares']!r}, which is not a categorical field")
            if not encoders:
                continue  # a map built by hand (FeatureMap.from_fields) has no encoder states
            state = encoders.get(name)
            if not isinstance(state, dict) or not isinstance(state.get("spec"), dict):
                raise bad(f"{where}: 'encoders' has no fitted state (with a 'spec') for {name!r}")
            kind = state["spec"].get("kind")
            if kind not in _ENCODER_KINDS[section] and not (kind == "numeric" and entry.get("origin") == "bucketized"):
                raise bad(f"encoders[{name!r}]: 'spec.kind' is {kind!r}, the field is in {section!r}")
            vocab = state.get("vocab")
            if vocab is not None and not isinstance(vocab, list):
                raise bad(f"encoders[{name!r}]: 'vocab' must be a list, got {type(vocab).__name__}")
            if section == "categorical" and kind == "categorical" and vocab is not None \
                    and not state["spec"].get("hash_buckets") and entry["vocab_size"] != len(vocab) + 2:
                raise bad(f"{where}: 'vocab_size' {entry['vocab_size']} does not match encoders[{name!r}] "
                          f"(a vocabulary of {len(vocab)} tokens + padding and OOV)")
            values = state["spec"].get("values", "ids") if kind == "sequence" else None
            if values is not None and (values == "numbers") != (section == "numeric_sequences"):
                raise bad(f"encoders[{name!r}]: 'spec.values' is {values!r}, the field is in {section!r}")
            if entry.get("origin") == "bucketized" and not isinstance(state.get("boundaries"), list):
                raise bad(f"encoders[{name!r}]: a bucketized field needs its 'boundaries' list")
    for i, entry in enumerate(d.get("categorical", [])):  # a cross field names two categorical fields
        if entry.get("origin") == "cross":
            sources = entry.get("sources")
            if not (isinstance(sources, list) and len(sources) == 2 and all(s in categorical for s in sources)):
                raise bad(f"categorical[{i}] ({entry['name']!r}): a cross field's 'sources' must name two "
                          f"categorical fields of the map, got {sources!r}")
    labels = d.get("labels", ["label"])
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise bad(f"'labels' must be a non-empty list of column names, got {labels!r}")
