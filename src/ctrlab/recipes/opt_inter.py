"""OptInter's two phases (spec sheet ``OptInter.md``): search, then retrain the argmax architecture.

1. **Search**: the model with ``pair_methods="search"`` (annealed softmax over memorize / factorize /
   naïve per pair, α by its own Adam) is trained like any run into ``OUTPUT/search``.
2. **Argmax**: each searched pair takes ``argmax α_p`` (:meth:`~ctrlab.models.optinter.OptInter.chosen_methods`).
3. **Retrain**: a fresh model with that fixed choice (``pair_methods={"a,b": method}``; naïve pairs
   dropped) is trained from scratch (the paper does not reuse search weights) into ``OUTPUT``, a
   normal run folder: ``evaluate``, ``export`` and ``serve`` take it as they take any run.

The cross-product features memorize needs come through the data pipeline (``crosses`` on the run
config; :func:`ctrlab.data.derive.with_crosses`); when neither the run nor the dataset sets any,
every pair of categorical fields is crossed with :class:`~ctrlab.data.schema.CrossesConfig`'s defaults.

This module does not import the API layer: :func:`ctrlab.api.opt_inter` hands it ``train`` and
``load_run``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import ConfigError
from ..data.schema import CrossesConfig
from ..models import get_model_class
from ..models.optinter import METHODS, OptInter
from ..run_folder import claim

SEARCH_DIR = "search"
"""The search run's folder inside the retrained run's (listed in :data:`ctrlab.run_folder.RUN_FILES`)."""


def check_model(model: str) -> None:
    """The recipe needs a model with OptInter's per-pair search (OptInter or a subclass)."""
    cls = get_model_class(model)
    if not issubclass(cls, OptInter):
        raise ConfigError(f"optinter: model {model!r} has no per-pair interaction search; the recipe runs OptInter "
                          "(or a registered subclass of it): set model=OptInter")


def architecture_report(search_model: OptInter, retrained: OptInter, feature_map,
                        model_params: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json records: the method chosen per pair (with the search's final softmax
    weights), how many pairs took each method, and parameter counts of the retrained model beside
    the all-memorize / all-factorize / all-naïve architectures on the same feature map."""
    chosen = search_model.chosen_methods()
    weights = search_model.pair_weights().detach().tolist()
    searched = {key: dict(zip(METHODS, (round(w, 6) for w in ws)))
                for key, ws in zip([k for k, m in zip(chosen, search_model.methods) if m == "search"], weights)}
    hparams = {k: getattr(retrained, k) for k in ("temperature_decay", "min_temperature", "arch_lr")}
    fixed = {}
    for method in METHODS:
        fixed[f"all_{method}"] = type(retrained)(feature_map, **{**model_params, "pair_methods": method}).count_parameters()
    return {
        "chosen": chosen,
        "counts": dict(Counter(chosen.values())),
        "search_weights": searched,
        "search_steps": int(search_model.step),
        "search_temperature": search_model.temperature(),
        "parameters": retrained.count_parameters(),
        "parameter_breakdown": retrained.parameter_breakdown(),
        "parameters_search_model": search_model.count_parameters(),
        "parameters_fixed": fixed,
        "schedule": hparams,
    }


def run(cfg, output: str | Path, train: Callable, load_run: Callable, search_epochs: int | None = 1,
        overwrite: bool = False, log=print):
    """Search into ``OUTPUT/search``, take the argmax per pair, retrain into ``OUTPUT``; returns the
    retrained run's result with the architecture report in its metrics (and metrics.json).

    ``search_epochs``: 1 by default. In one pass every batch is new to the network when α steps on it,
    so the one-level gradient (network and α on the same batch, as the paper) measures how a method
    does on unseen rows; over later epochs memorized rows fit their training rows and memorize looks
    better than it generalises. None: the run's ``trainer.epochs`` with its early stopping (the
    best epoch's α is used)."""
    check_model(cfg.model)
    if search_epochs is not None and search_epochs < 1:
        raise ConfigError(f"optinter: search_epochs must be >= 1, got {search_epochs}")
    out = Path(output)
    claim(out, overwrite=overwrite, log=log).release()  # refuse or clear what is there, before an hour of search
    if cfg.crosses is None:
        cfg = dataclasses.replace(cfg, crosses=CrossesConfig())
    # The search trains beside OUTPUT (a retrain's claim clears a folder without weights) and moves in at the end.
    staging = out.parent / f".{out.name}.{SEARCH_DIR}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    trainer = cfg.trainer if search_epochs is None else dataclasses.replace(cfg.trainer, epochs=search_epochs)
    search_cfg = dataclasses.replace(cfg, output=str(staging), trainer=trainer,
                                     model_params={**cfg.model_params, "pair_methods": "search"})
    log(f"[ctrlab] optinter: search phase ({trainer.epochs} epoch(s) at most) -> {out / SEARCH_DIR}")
    try:
        search = train(search_cfg, log=log)
        search_model, fmap, _, _ = load_run(search.run_dir)
        chosen = search_model.chosen_methods()
        log("[ctrlab] optinter: chosen " + ", ".join(f"{m} {n}" for m, n in sorted(Counter(chosen.values()).items()))
            + f" of {len(chosen)} pairs; retraining from scratch -> {out}")
        final_cfg = dataclasses.replace(cfg, output=str(out), model_params={**cfg.model_params, "pair_methods": chosen})
        result = train(final_cfg, log=log)
        target = out / SEARCH_DIR
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a search without its retrained run is not kept
        raise
    saved = yaml.safe_load((target / "run_config.yaml").read_text())
    (target / "run_config.yaml").write_text("# OptInter search phase (moved into the retrained run's folder).\n"
                                           + yaml.safe_dump({**saved, "output": str(target)}, sort_keys=False))
    retrained, _, _, run_cfg = load_run(out)
    report = architecture_report(search_model, retrained, fmap, run_cfg.model_params)
    report["search_run"] = SEARCH_DIR
    report["search_metrics"] = {s: search.metrics[s] for s in ("valid", "test") if s in search.metrics}
    metrics = {**result.metrics, "optinter": report}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"[ctrlab] optinter: {report['parameters']:,} parameters (all-memorize "
        f"{report['parameters_fixed']['all_memorize']:,}, all-factorize {report['parameters_fixed']['all_factorize']:,})"
        + "".join(f"; {s} AUC {m.get('AUC', float('nan')):.5f}" for s, m in metrics.items()
                  if s in ("valid", "test") and isinstance(m, dict)))
    return dataclasses.replace(result, metrics=metrics)
