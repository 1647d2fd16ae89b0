"""Lower layers never import higher ones: data -> layers -> models -> train / serve / baselines -> api/cli."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "ctrlab"
# package -> ctrlab subpackages/modules it must not import
FORBIDDEN = {
    "data": {"layers", "models", "train", "recipes", "bench", "serve", "api", "cli"},
    "layers": {"models", "train", "recipes", "bench", "serve", "api", "cli"},
    "models": {"train", "recipes", "bench", "serve", "api", "cli"},
    "train": {"recipes", "bench", "serve", "api", "cli"},
    # recipes transform models with the trainer's help; the benchmark, server and API build on them
    "recipes": {"bench", "serve", "api", "cli"},
    # serving needs the data pipeline and the models, never training, the benchmark or the API layer
    "serve": {"train", "bench", "api", "cli"},
    # non-torch baselines read the encoded data and the trainer's metrics and checks; the API runs them
    "baselines": {"recipes", "bench", "serve", "api", "cli"},
}


def _ctrlab_imports(path: Path, source: str | None = None) -> set[str]:
    """Top-level ctrlab subpackages/modules imported by the module at ``path``."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    rel_pkg = path.relative_to(PKG).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                base = list(rel_pkg[: len(rel_pkg) - (node.level - 1)]) if node.level > 1 else list(rel_pkg)
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:
                    found.update(a.name.split(".")[0] for a in node.names)
            elif node.module and node.module.startswith("ctrlab."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ctrlab."):
                    found.add(a.name.split(".")[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    files = sorted((PKG / package).rglob("*.py"))
    assert files, f"no modules in {package}"
    bad = {str(f.relative_to(PKG)): sorted(_ctrlab_imports(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} imports higher layers: {bad}"


def test_checker_sees_a_violation():
    """The import scanner itself works (a check that cannot fail would be worthless)."""
    probe = PKG / "data" / "probe.py"
    src = "from ..models import create\nfrom .schema import DatasetConfig\nimport ctrlab.train.trainer\n"
    assert _ctrlab_imports(probe, src) == {"models", "data", "train"}
