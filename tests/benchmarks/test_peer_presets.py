"""The FuxiCTR peer comparison must run FuxiCTR with exactly the hyperparameters of ctrlab's presets.

``benchmarks/peers/run_fuxictr.py`` holds its own copy of every value (it runs in FuxiCTR's venv
and never imports ctrlab), so a preset edited without the peer script (or the reverse) would make
the side-by-side table in docs/results.md compare different models. This test reads both.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from ctrlab.api import _preset_family
from ctrlab.models import default_hparams

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "src" / "ctrlab" / "configs" / "presets"

# ctrlab hyperparameter -> FuxiCTR's names for the same thing (first one present is used)
ALIASES = {
    "hidden_units": ["hidden_units", "dnn_hidden_units", "parallel_dnn_hidden_units"],
    "hidden_activations": ["hidden_activations", "dnn_activations"],
}


def load_peer_script():
    spec = importlib.util.spec_from_file_location("run_fuxictr", REPO / "benchmarks" / "peers" / "run_fuxictr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PEER = load_peer_script()
CASES = [(ds, m) for ds, spec in PEER.DATASETS.items() for m in spec["model_params"]]


def normalize(value):
    """Activation names are case-insensitive in both libraries ("relu" == "ReLU")."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


def peer_params(dataset: str, model: str) -> dict:
    spec = PEER.DATASETS[dataset]
    return {**PEER.COMMON, **spec["common"], **spec["model_params"][model]}


@pytest.mark.parametrize("dataset,model", CASES)
def test_peer_runs_with_the_preset_values(dataset, model):
    preset_file = PRESETS / _preset_family(dataset) / f"{model}.yaml"
    assert preset_file.is_file(), f"the peer script runs {model} on {dataset} but ctrlab ships no {preset_file}"
    preset = yaml.safe_load(preset_file.read_text())
    assert set(preset) <= set(default_hparams(model)), "preset keys must be hyperparameters of the model"
    peer = peer_params(dataset, model)
    for key, ours in preset.items():
        names = [n for n in ALIASES.get(key, [key]) if n in peer]
        assert names, f"{dataset}/{model}: FuxiCTR run sets no value for ctrlab's {key}={ours!r}"
        theirs = peer[names[0]]
        if isinstance(theirs, list) and not isinstance(ours, list):
            ours = [ours] * len(theirs)  # ctrlab takes one kernel height / pool size for all layers
        assert normalize(ours) == normalize(theirs), f"{dataset}/{model}: {key} is {ours!r} here, {theirs!r} in FuxiCTR"


def test_every_preset_model_fuxictr_has_is_compared():
    """A ctrlab preset for a model of FuxiCTR's zoo must be in the peer run (no silent gaps)."""
    for dataset in PEER.DATASETS:
        shipped = {p.stem for p in (PRESETS / _preset_family(dataset)).glob("*.yaml")}
        compared = set(PEER.DATASETS[dataset]["model_params"])
        in_fuxictr = set(PEER.MODEL_DIRS)
        assert shipped & in_fuxictr <= compared, f"{dataset}: {sorted(shipped & in_fuxictr - compared)} not compared"
