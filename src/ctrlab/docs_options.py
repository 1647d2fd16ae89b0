"""Generate the options reference of the docs from the config dataclasses.

    python -m ctrlab.docs_options            # rewrite the generated blocks (make docs)
    python -m ctrlab.docs_options --check    # exit 1, naming the files, when a block is stale

Every config option is a dataclass field with a default and an attribute docstring (a string
literal on the line under the field). Python drops attribute docstrings at run time, so they are
read from the class source with :mod:`ast`; fields, types and defaults come from the dataclass.
Each documented class becomes a Markdown table (option, type, default as YAML writes it, meaning)
written between ``<!-- options:begin -->`` and ``<!-- options:end -->`` of its page; the text
outside the markers is left as it is. A new field with a docstring needs no change here; a new
config class reachable through a field's type (``trainer: TrainerConfig``, ``list[Grid]``) gets a
section of its own automatically.
"""
from __future__ import annotations

import argparse
import ast
import collections.abc
import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml

BEGIN = "<!-- options:begin -->"
END = "<!-- options:end -->"
COMMAND = "`make docs` (or `python -m ctrlab.docs_options`)"
REPO = Path(__file__).resolve().parents[2]


# ---- reading a dataclass -----------------------------------------------------------------------
def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string literal right under the field), over the
    class and its dataclass bases; cleaned with :func:`inspect.cleandoc`."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == klass.__name__)
        body = node.body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a config file can set (``init`` fields), in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.init]


def type_text(tp: Any) -> str:
    """A readable type: ``int | None``, ``adam | adamw | sgd`` for a Literal, ``list[float]``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["null"] if type(None) in args else []))
    if origin is Literal:
        return " | ".join(yaml_text(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"list[{type_text(args[0])}]" if args and args[0] is not Any else "list"
    if origin is dict:
        return f"dict[{type_text(args[0])}, {type_text(args[1])}]" if args else "dict"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def yaml_text(value: Any) -> str:
    """``value`` as a YAML file would write it, on one line (``null``, ``true``, ``[AUC, logloss]``).
    A config dataclass is written as the mapping of its fields that differ from the class defaults
    (``{}``: all defaults), which is also what a config file needs to build it."""
    value = _plain(value)
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**9, allow_unicode=True)
    text = text.strip()
    if text.endswith("\n..."):  # a lone scalar ends its document explicitly
        text = text[: -len("\n...")].strip()
    return text


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            base = type(value)()
        except TypeError:  # a required field: write them all
            base = None
        return {f.name: _plain(getattr(value, f.name)) for f in config_fields(type(value))
                if base is None or getattr(value, f.name) != getattr(base, f.name)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def markdown_text(doc: str) -> str:
    """A docstring as one Markdown paragraph: reST roles and ````code```` become `code`."""
    def role(m: re.Match) -> str:  # :func:`x.y` -> ``x.y``; :class:`~a.b.C` -> ``C``
        target = m.group(2)
        return f"``{target.split('.')[-1] if m.group(1) else target}``"

    doc = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, doc)
    doc = doc.replace("``", "`")
    return " ".join(doc.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def nested_configs(tp: Any) -> list[type]:
    """Config dataclasses a field of type ``tp`` holds (itself, list items, mapping values)."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for a in get_args(tp) for c in nested_configs(a)]


# ---- sections and pages ------------------------------------------------------------------------
@dataclass
class Section:
    """One config class as one table."""

    cls: type
    title: str
    anchor: str
    intro: str = ""
    """The sentence above the table; default: the first paragraph of the class docstring."""
    prefix: str = ""
    """Written before each option name (``trainer.`` for the ``--set`` key path)."""
    extra: tuple[str, Callable[[dataclasses.Field], str]] | None = None
    """An extra column: its heading and the cell of a field."""


@dataclass
class Page:
    """A docs page and the sections of its generated block."""

    path: str
    title: str
    sections: list[Section] = field(default_factory=list)


def _default_text(f: dataclasses.Field, anchors: dict[type, str]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value) and type(value) in anchors:
        return f"see [below](#{anchors[type(value)]})"
    return _code(yaml_text(value))


def _type_cell(tp: Any, anchors: dict[type, str]) -> str:
    nested = [c for c in nested_configs(tp) if c in anchors]
    text = _code(type_text(tp))
    if nested:
        text += " (" + ", ".join(f"[{c.__name__}](#{anchors[c]})" for c in nested) + ")"
    return text


def render_section(section: Section, anchors: dict[type, str]) -> str:
    cls = section.cls
    docs = attribute_docs(cls)
    hints = typing.get_type_hints(cls)
    head = ["option", "type", "default", "meaning"]
    if section.extra:
        head.insert(1, section.extra[0])
    lines = [f'<a id="{section.anchor}"></a>', "", f"### {section.title}", ""]
    intro = section.intro or markdown_text(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0])
    lines += [f"{intro} (`{cls.__module__}.{cls.__name__}`)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in config_fields(cls):
        row = [_code(section.prefix + f.name), _type_cell(hints[f.name], anchors), _default_text(f, anchors),
               _cell(markdown_text(docs.get(f.name, "")))]
        if section.extra:
            row.insert(1, section.extra[1](f))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def expand(sections: list[Section]) -> list[Section]:
    """``sections`` plus, after each, a section for every config class its fields hold that no
    section documents yet (e.g. a new nested dataclass), depth first."""
    out: list[Section] = []
    seen = {s.cls for s in sections}

    def visit(section: Section) -> None:
        out.append(section)
        hints = typing.get_type_hints(section.cls)
        for f in config_fields(section.cls):
            for cls in nested_configs(hints[f.name]):
                if cls in seen:
                    continue
                seen.add(cls)
                key = f"{section.prefix}{f.name}"
                visit(Section(cls, f"`{key}:` ({cls.__name__})", _anchor(cls)))

    for s in sections:
        visit(s)
    return out


def _anchor(cls: type) -> str:
    name = re.sub(r"[^A-Za-z0-9]", "", cls.__name__)
    return "options-" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def render_block(page: Page) -> str:
    sections = expand(page.sections)
    anchors = {s.cls: s.anchor for s in sections}
    parts = [BEGIN,
             f"<!-- Generated from the config dataclasses' docstrings by {COMMAND}; edit the docstrings, "
             "not this block. -->", ""]
    parts += [render_section(s, anchors) for s in sections]
    return "\n".join(parts) + END


def update_text(text: str | None, page: Page) -> str:
    """``text`` with its generated block replaced (only the text between the markers changes);
    a page without markers gets them appended, a missing page is created."""
    block = render_block(page)
    if not text:
        return f"# {page.title}\n\n{block}\n"
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 and end < 0:
        return text.rstrip("\n") + f"\n\n## Options reference\n\n{block}\n"
    if begin < 0 or end < begin:
        raise ValueError(f"{page.path}: the markers {BEGIN} and {END} must both be there, in that order")
    return text[:begin] + block + text[end + len(END):]


# ---- what is documented where ------------------------------------------------------------------
def _serve_flags() -> Callable[[dataclasses.Field], str]:
    """``ctrlab serve``'s flag of a ServeConfig field (byte sizes are given in MiB)."""
    from .cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = {a.dest: a.option_strings[-1] for a in serve._actions if a.option_strings}

    def cell(f: dataclasses.Field) -> str:
        if f.name in flags:
            return _code(flags[f.name])
        mb = f.name.replace("_bytes", "_mb")
        if mb in flags:
            return f"{_code(flags[mb])} (MiB)"
        return "Python only"

    return cell


def pages() -> list[Page]:
    from .api import RunConfig
    from .bench.plan import BenchPlan
    from .bench.tune import TuneConfig
    from .data.schema import FEATURE_KINDS, DatasetConfig
    from .serve.config import ServeConfig
    from .train.trainer import TrainerConfig

    training = Page("docs/training.md", "Training", [
        Section(RunConfig, "Run config (top level)", "options-run",
                "One training run: which data, which model with which hyperparameters, how to train. Keys of "
                "a run YAML (`ctrlab train --config`), of `--set KEY=VALUE` and keyword arguments of "
                "`ctrlab.train`."),
        Section(TrainerConfig, "Trainer (`trainer:`)", "options-trainer",
                "Optimisation and protocol settings; the defaults are the BARS protocol as FuxiCTR implements "
                "it. Keys under `trainer:`; on the command line `--set trainer.KEY=VALUE`.", prefix="trainer."),
        Section(DatasetConfig, "Dataset YAML (top level)", "options-dataset",
                "Where a dataset's files are, how to parse them, and its features and labels: the keys of a "
                "dataset YAML, used as `dataset: path/to/dataset.yaml` (or `--dataset`); see "
                "[data.md](data.md) for the pipeline."),
    ] + [
        Section(cls, f"Feature kind `{kind}` (items of `features:`)", f"options-feature-{kind.replace('_', '-')}")
        for kind, cls in FEATURE_KINDS.items()
    ])
    serving = Page("docs/serving.md", "Serving", [
        Section(ServeConfig, "`ctrlab serve` options", "options-serve",
                "Command-line flags of `ctrlab serve` and fields of `ServeConfig` in Python; a bad value is "
                "an error naming it.",
                extra=("flag", _serve_flags())),
    ])
    benchmark = Page("docs/benchmark.md", "Benchmark", [
        Section(BenchPlan, "Plan YAML (`ctrlab bench PLAN.yaml`)", "options-plan"),
        Section(TuneConfig, "Search YAML (`ctrlab tune SEARCH.yaml`)", "options-tune"),
    ])
    from .recipes.opt_embed import OptEmbedOptions

    efficiency = Page("docs/efficiency.md", "Smaller models", [
        Section(OptEmbedOptions, "`ctrlab optembed` options", "options-optembed",
                "Settings of the OptEmbed recipe: `options={...}` of `ctrlab.api.opt_embed`, or the flags "
                "`--alpha`, `--threshold-lr`, `--supernet-epochs`, `--search-rounds`, `--search-rows`."),
    ])
    from .baselines.gbdt import LightGBMParams, XGBoostParams

    baselines = Page("docs/baselines.md", "Baselines", [
        Section(LightGBMParams, "LightGBM (`model: LightGBM`)", "options-lightgbm",
                "Hyperparameters of the LightGBM baseline: keys under `model_params:`, on the command line "
                "`--set model_params.KEY=VALUE`.", prefix="model_params."),
        Section(XGBoostParams, "XGBoost (`model: XGBoost`)", "options-xgboost",
                "Hyperparameters of the XGBoost baseline: keys under `model_params:`, on the command line "
                "`--set model_params.KEY=VALUE`.", prefix="model_params."),
    ])
    from .baselines.tabdpt import TabDPTParams

    tabdpt = Page("docs/tabdpt.md", "TabDPT", [
        Section(TabDPTParams, "TabDPT `model_params`", "options-tabdpt",
                "Keys of `model_params` for `model: TabDPT`; the package's own options keep the package's "
                "defaults."),
    ])
    return [training, serving, benchmark, efficiency, baselines, tabdpt]


def documented_classes() -> list[type]:
    """Every config class the docs document (what the docstring test checks)."""
    return [s.cls for p in pages() for s in expand(p.sections)]


def stale(root: Path = REPO) -> dict[str, str]:
    """Page path -> its up-to-date text, for the pages whose file differs from it."""
    out = {}
    for page in pages():
        path = root / page.path
        text = path.read_text(encoding="utf-8") if path.exists() else None
        new = update_text(text, page)
        if new != text:
            out[page.path] = new
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctrlab.docs_options", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report stale pages (exit 1 if any)")
    ap.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    changed = stale(args.root)
    for rel, text in changed.items():
        if args.check:
            print(f"{rel} is stale; run {COMMAND}", file=sys.stderr)
        else:
            (args.root / rel).write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if not changed:
        print("docs are up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
