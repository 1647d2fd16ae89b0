"""The options reference in the docs is generated from the config dataclasses and kept current."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from ctrlab import docs_options
from ctrlab.api import RunConfig
from ctrlab.data.schema import FEATURE_KINDS, DatasetConfig
from ctrlab.serve.config import ServeConfig
from ctrlab.train.trainer import TrainerConfig


def test_docs_are_current():
    """docs/training.md (and serving.md, benchmark.md) hold exactly what the generator writes now."""
    stale = docs_options.stale()
    assert not stale, (f"{sorted(stale)} differ from the config dataclasses' docstrings; "
                       f"run {docs_options.COMMAND} and commit the result")


def test_documented_classes_cover_trainer_dataset_features_and_serve():
    classes = docs_options.documented_classes()
    for cls in (RunConfig, TrainerConfig, DatasetConfig, ServeConfig, *FEATURE_KINDS.values()):
        assert cls in classes


@pytest.mark.parametrize("cls", docs_options.documented_classes(), ids=lambda c: c.__name__)
def test_every_option_has_a_docstring(cls):
    docs = docs_options.attribute_docs(cls)
    missing = [f.name for f in docs_options.config_fields(cls) if not docs.get(f.name, "").strip()]
    assert not missing, (f"{cls.__module__}.{cls.__name__}: fields without an attribute docstring (a string "
                         f"literal on the line under the field): {missing}")


# ---- the generator on a config class of its own ------------------------------------------------
@dataclass
class _Inner:
    """Inner settings."""

    depth: int = 3
    """How deep."""


@dataclass
class _Probe:
    """A probe config.

    Second paragraph, not shown."""

    name: str
    """Required: no default."""
    mode: Literal["fast", "exact"] = "fast"
    """Speed or
    exactness: uses :func:`ctrlab.api.train` and :class:`~ctrlab.config.ConfigError`."""
    limit: int | None = None
    """``None`` = no limit; a | inside."""
    weights: list[float] = field(default_factory=lambda: [0.5, 1e-6])
    """Factory default."""
    inner: _Inner = field(default_factory=_Inner)
    """Nested section."""
    inners: list[_Inner] = field(default_factory=lambda: [_Inner(depth=5)])
    """Nested list."""
    undocumented: bool = True


def _rows(text: str) -> dict[str, list[str]]:
    """Option -> its cells, from the tables of ``text`` (cells split on unescaped pipes)."""
    import re

    out = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            out[cells[0]] = cells
    return out


def test_render_types_defaults_and_docstrings():
    page = docs_options.Page("x.md", "X", [docs_options.Section(_Probe, "Probe", "options-probe", prefix="p.")])
    block = docs_options.render_block(page)
    assert block.startswith(docs_options.BEGIN) and block.endswith(docs_options.END)
    rows = _rows(block)
    assert rows["`p.name`"][1:3] == ["`str`", "required"]
    assert rows["`p.mode`"][1:] == ["`fast \\| exact`", "`fast`", "Speed or exactness: uses `ctrlab.api.train` "
                                    "and `ConfigError`."]
    assert rows["`p.limit`"][1:] == ["`int \\| null`", "`null`", "`None` = no limit; a \\| inside."]
    assert rows["`p.weights`"][1:3] == ["`list[float]`", "`[0.5, 1.0e-06]`"]
    # a nested config class gets a section of its own (discovered from the field type), linked
    assert rows["`p.inner`"][1:3] == ["`mapping` ([_Inner](#options-inner))", "see [below](#options-inner)"]
    assert rows["`p.inners`"][2] == "`[{depth: 5}]`"
    assert "### `p.inner:` (_Inner)" in block and rows["`depth`"][1:] == ["`int`", "`3`", "How deep."]
    assert rows["`p.undocumented`"][3] == ""
    assert "A probe config. (`" in block and "Second paragraph" not in block


def test_attribute_docs_sees_a_missing_docstring():
    docs = docs_options.attribute_docs(_Probe)
    assert docs["mode"].startswith("Speed or\nexactness")
    assert "undocumented" not in docs and "name" in docs
    assert {f.name for f in dataclasses.fields(_Probe)} - set(docs) == {"undocumented"}


def test_update_replaces_only_between_the_markers():
    page = docs_options.Page("x.md", "X", [docs_options.Section(_Inner, "Inner", "options-inner")])
    block = docs_options.render_block(page)
    text = f"# X\n\nprose before\n\n{docs_options.BEGIN}\nold table\n{docs_options.END}\n\nprose after\n"
    new = docs_options.update_text(text, page)
    assert new == f"# X\n\nprose before\n\n{block}\n\nprose after\n"
    assert docs_options.update_text(new, page) == new
    # a missing page is created; a page without markers gets them appended
    assert docs_options.update_text(None, page) == f"# X\n\n{block}\n"
    assert docs_options.update_text("# X\n\nprose\n", page) == f"# X\n\nprose\n\n## Options reference\n\n{block}\n"
    with pytest.raises(ValueError, match="markers"):
        docs_options.update_text(f"# X\n{docs_options.END}\n{docs_options.BEGIN}\n", page)


def test_check_command_fails_on_a_stale_page(tmp_path, capsys):
    """``--check`` names the stale page and the command; a plain run rewrites it, then --check passes."""
    for page in docs_options.pages():
        target = tmp_path / page.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(docs_options.update_text(None, page), encoding="utf-8")
    training = tmp_path / "docs" / "training.md"
    training.write_text(training.read_text().replace("`4096`", "`1024`"), encoding="utf-8")
    assert docs_options.main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/training.md is stale; run `make docs`" in capsys.readouterr().err
    assert docs_options.main(["--root", str(tmp_path)]) == 0
    assert docs_options.main(["--check", "--root", str(tmp_path)]) == 0
    assert "| `trainer.batch_size` | `int` | `4096` |" in training.read_text()
