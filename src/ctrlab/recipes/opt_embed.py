"""OptEmbed (Lyu et al., CIKM 2022; spec sheet ``docs/models/OptEmbed.md``): learn which features and how
many embedding dimensions per field a model needs, on any registered model with an embedding table.

Three steps, each on the model's own training path (:class:`~ctrlab.layers.opt_embed.OptEmbedTable`
swapped into its tables through the run config's ``opt_embed``):

1. **Supernet.** The model trains on masked embeddings: the feature mask ``S(||e_x||_1 - t_f)`` with
   learnable per-field thresholds (surrogate gradient), every sample and field drawing a width
   ``k ~ Uniform{1..D}``; loss ``BCE + alpha * sum_f exp(-t_f)``, the thresholds by plain SGD at
   ``threshold_lr`` (the model's ``optimizer_groups`` hook), every other parameter by the run's
   optimizer. Its run folder is ``<output>-supernet``.
2. **Evolutionary search** over per-field widths ``(k_1..k_F)`` with the supernet and its feature mask
   frozen, fitness = validation AUC at those prefix widths (:func:`evolutionary_search`). Every
   mutant and crossover child is a new candidate; parents are never changed (the official code
   mutates them in place, and draws the crossover point from ``[1, D]`` instead of the fields).
3. **Retrain** with both masks fixed (``opt_embed: {mode: fixed, ...}`` in the final run's config),
   from the supernet's initial weights: both runs build the model from the same seed along the same
   path, and the recipe checks that the two initial-weight digests are equal.

Which models: every registered model with a :class:`~ctrlab.layers.embedding.FeatureEmbedding` table
wider than 1 (:func:`~ctrlab.layers.opt_embed.prunable_tables`). LR has none (its only table is the
width-1 first-order weights) and is refused; so is a low-rank (``ctrlab compress``) run. First-order
terms (DeepFM, FM, Wide&Deep, xDeepFM) keep their width-1 weights: the parameters counted are the
pruned tables'.

The orchestration receives the functions that train a run config and load a trained run
(:func:`ctrlab.api.opt_embed` passes the API's own), so this module stays below the API.
"""
from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..layers.opt_embed import OptEmbedTable, fixed_spec, opt_embed_tables, table_report
from ..train.metrics import auc


@dataclass
class OptEmbedOptions:
    """Settings of ``ctrlab optembed`` / :func:`ctrlab.api.opt_embed` (the run's own settings, the model,
    its hyperparameters and the trainer, come from the run config as for ``ctrlab train``)."""

    alpha: float = 1e-2
    """Weight of the threshold penalty ``alpha * sum_f exp(-t_f)`` in the supernet's loss: larger prunes
    more features. 1e-2 was chosen by 4 tuning runs on Frappe / MovieLens-100K with ctrlab's small
    initial embeddings (N(0, 1e-4²)); the official script's 3e-4 was tuned for Xavier-initialised tables."""
    threshold_lr: float = 1e-2
    """Learning rate of the thresholds' plain SGD (their own optimizer, as in the official code)."""
    supernet_epochs: int | None = None
    """Maximum supernet epochs (early stopping on the validation AUC at full width as configured);
    None: the run's ``trainer.epochs``."""
    search_rounds: int = 10
    """Rounds of the evolutionary search (the sheet's T = 30; fewer by default, as every candidate costs a
    pass over the validation split: 10 rounds already settle on Frappe / MovieLens-100K's 7-10 fields)."""
    population: int = 20
    """Random candidates the search starts from."""
    keep_top: int = 10
    """Candidates kept as parents after each round (the sheet's k = 15)."""
    mutants: int = 5
    """Mutated children per round (the sheet's n_m = 10)."""
    crossovers: int = 5
    """Crossover children per round (the sheet's n_c = 10)."""
    mutation_prob: float = 0.1
    """Probability that a mutant redraws each gene (field width) uniformly from 1..D."""
    search_rows: int | None = None
    """Validation rows the search's fitness is measured on (the first ones); None: all."""

    def validate(self, where: str = "optembed") -> None:
        """Raise :class:`~ctrlab.config.ConfigError` naming the first bad option and its valid range."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{where}: {name}={getattr(self, name)!r} {why}")

        for name in ("alpha", "threshold_lr"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise bad(name, "must be a number >= 0")
        if not self.threshold_lr > 0:
            raise bad("threshold_lr", "must be > 0")
        for name in ("search_rounds", "population", "keep_top"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be an integer >= 1")
        for name in ("mutants", "crossovers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise bad(name, "must be an integer >= 0")
        if self.supernet_epochs is not None and not (isinstance(self.supernet_epochs, int) and self.supernet_epochs >= 1):
            raise bad("supernet_epochs", "must be an integer >= 1 or None (the run's trainer.epochs)")
        if self.search_rows is not None and not (isinstance(self.search_rows, int) and self.search_rows >= 2):
            raise bad("search_rows", "must be an integer >= 2 or None (all validation rows)")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise bad("mutation_prob", "must be in [0, 1]")
        if self.keep_top > self.population:
            raise bad("keep_top", f"cannot exceed population ({self.population})")


# ---- evolutionary search --------------------------------------------------------------------
Candidate = tuple[int, ...]


def mutate(parent: Candidate, dims: Sequence[int], prob: float, rng: random.Random) -> Candidate:
    """A new candidate: each gene of ``parent`` redrawn uniformly from ``1..dims[g]`` with probability
    ``prob``, else copied (``parent`` itself is a tuple and stays as it is)."""
    return tuple(rng.randint(1, d) if rng.random() < prob else k for k, d in zip(parent, dims))


def crossover(a: Candidate, b: Candidate, rng: random.Random) -> Candidate:
    """A new candidate: ``a``'s genes before a point drawn from the genes (``1..F-1``), ``b``'s after."""
    if len(a) < 2:
        return tuple(rng.choice((a, b)))
    point = rng.randint(1, len(a) - 1)
    return tuple(a[:point]) + tuple(b[point:])


def evolutionary_search(dims: Sequence[int], fitness: Callable[[Candidate], float], options: OptEmbedOptions,
                        rng: random.Random, log=print) -> tuple[Candidate, float, list[dict[str, Any]]]:
    """The candidate (one width per gene, gene ``g`` in ``1..dims[g]``) of highest ``fitness`` seen:
    ``population`` random candidates, then each of ``search_rounds`` rounds keeps the ``keep_top`` best
    and adds ``mutants`` mutated and ``crossovers`` crossed-over children of them. Each candidate is
    scored once (cached); returns (best, its fitness, one record per round)."""
    scores: dict[Candidate, float] = {}

    def score(c: Candidate) -> float:
        if c not in scores:
            scores[c] = float(fitness(c))
        return scores[c]

    pool = {tuple(rng.randint(1, d) for d in dims) for _ in range(options.population)}
    pool.add(tuple(dims))  # full width: the supernet's own evaluation, a safe reference point
    ranked = sorted(pool, key=lambda c: (-score(c), sum(c)))
    history = []
    for r in range(options.search_rounds):
        parents = ranked[:options.keep_top]
        children = [mutate(rng.choice(parents), dims, options.mutation_prob, rng) for _ in range(options.mutants)]
        children += [crossover(*rng.sample(parents, 2), rng) if len(parents) > 1 else parents[0]
                     for _ in range(options.crossovers)]
        ranked = sorted(set(parents) | set(children), key=lambda c: (-score(c), sum(c)))
        history.append({"round": r + 1, "best": list(ranked[0]), "best_fitness": scores[ranked[0]],
                        "evaluated": len(scores)})
        log(f"[ctrlab] optembed search round {r + 1}/{options.search_rounds}: best valid AUC "
            f"{scores[ranked[0]]:.5f} at widths {list(ranked[0])} ({len(scores)} candidates scored)")
    best = max(scores, key=lambda c: (scores[c], -sum(c)))
    return best, scores[best], history


def supernet_fitness(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]
                     ) -> Callable[[Candidate], float]:
    """Fitness of a candidate: the validation AUC of the frozen supernet (eval mode, its feature mask at
    its learned thresholds) with the candidate's prefix widths; genes in table order then field order."""
    tables = list(opt_embed_tables(model).values())
    if not tables or any(t.mode != "supernet" for t in tables):
        raise ValueError("the search needs a supernet (OptEmbed tables in mode supernet)")
    labels = np.concatenate([b["label"][:, 0].numpy() for b in batches])
    model.eval()

    @torch.no_grad()
    def fitness(candidate: Candidate) -> float:
        start = 0
        for t in tables:
            t.search_widths = torch.tensor(candidate[start:start + t.num_blocks], dtype=torch.long)
            start += t.num_blocks
        try:
            scores = np.concatenate([model(b)["logit"].float().numpy() for b in batches])
        finally:
            for t in tables:
                t.search_widths = None
        return auc(labels, scores)

    return fitness


def search_widths(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], options: OptEmbedOptions,
                  seed: int, log=print) -> dict[str, Any]:
    """Run :func:`evolutionary_search` on a trained supernet; returns per table the widths found and
    the feature mask (kept rows) of its thresholds, with the search's record."""
    tables = opt_embed_tables(model)
    dims = [t.embedding_dim for t in tables.values() for _ in range(t.num_blocks)]
    best, best_auc, history = evolutionary_search(dims, supernet_fitness(model, batches), options,
                                                  random.Random(seed), log)
    widths, start = {}, 0
    for name, t in tables.items():
        widths[name] = list(best[start:start + t.num_blocks])
        start += t.num_blocks
    full_auc = supernet_fitness(model, batches)(tuple(dims))
    return {"widths": widths, "keep": {name: t.kept_rows() for name, t in tables.items()},
            "valid_AUC": best_auc, "valid_AUC_full_width": full_auc, "rounds": history}


# ---- the whole recipe -----------------------------------------------------------------------
TrainRun = Callable[[dict[str, Any]], dict[str, Any]]
"""Train the run a resolved run config (a dict, its ``output`` set) describes; return its metrics."""
LoadSupernet = Callable[[Path, int | None], tuple[nn.Module, list[dict[str, torch.Tensor]]]]
"""A trained run folder -> (its model, weights loaded, and its validation batches: at most ``rows``)."""


def supernet_folder(output: Path) -> Path:
    return output.with_name(output.name + "-supernet")


def run_opt_embed(config: dict[str, Any], output: Path, options: OptEmbedOptions, train_run: TrainRun,
                  load_run: LoadSupernet, log=print) -> dict[str, Any]:
    """Supernet, search and retraining of the resolved run config ``config`` (preset merged, as a run
    folder saves it); the final run goes to ``output``, the supernet to ``<output>-supernet``. Returns
    the final run's metrics, its ``opt_embed`` record completed with the search."""
    options.validate()
    seed = int(config.get("trainer", {}).get("seed", 2021))
    # 1. supernet: never restored to its starting weights (validate_start), whose thresholds are all 0
    supernet_dir = supernet_folder(output)
    supernet_cfg = copy.deepcopy(config)
    supernet_cfg.update(output=str(supernet_dir),
                        opt_embed={"mode": "supernet", "alpha": options.alpha, "threshold_lr": options.threshold_lr})
    supernet_cfg.setdefault("trainer", {})["validate_start"] = False
    if options.supernet_epochs is not None:
        supernet_cfg["trainer"]["epochs"] = options.supernet_epochs
    log(f"[ctrlab] optembed 1/3: supernet (alpha {options.alpha:g}, threshold lr {options.threshold_lr:g}) "
        f"-> {supernet_dir}")
    supernet_metrics = train_run(supernet_cfg)
    # 2. search, on the frozen supernet
    log("[ctrlab] optembed 2/3: evolutionary search over per-field widths (validation AUC)")
    model, batches = load_run(supernet_dir, options.search_rows)
    found = search_widths(model, batches, options, seed, log)
    tables = opt_embed_tables(model)
    searched = {name: table_report(t, found["widths"][name], found["keep"][name]) for name, t in tables.items()}
    # 3. retrain with both masks fixed, from the same initial weights
    final_cfg = copy.deepcopy(config)
    final_cfg.update(output=str(output), opt_embed=fixed_spec(tables, found["widths"], found["keep"]))
    log(f"[ctrlab] optembed 3/3: retraining with the masks fixed -> {output}")
    metrics = train_run(final_cfg)
    start_supernet = supernet_metrics["opt_embed"]["initial_weights_sha256"]
    start_final = metrics["opt_embed"]["initial_weights_sha256"]
    if start_supernet != start_final:
        raise RuntimeError("optembed: the retrained model did not start from the supernet's initial weights "
                           f"(digests {start_supernet[:12]} vs {start_final[:12]}); the model's construction "
                           "is not deterministic for this seed")
    record = {
        **metrics["opt_embed"], "options": asdict(options), "supernet_run": str(supernet_dir),
        "supernet": {k: supernet_metrics[k] for k in ("valid", "test", "epochs", "best_epoch") if k in supernet_metrics},
        "supernet_tables": supernet_metrics["opt_embed"]["tables"], "searched_tables": searched,
        "search": {k: found[k] for k in ("valid_AUC", "valid_AUC_full_width", "rounds")},
        "retrained_from_initial_weights": True,
    }
    metrics["opt_embed"] = record
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def summary_line(metrics: Mapping[str, Any]) -> str:
    """One line: per table the widths and kept features per field, the sparsity and the test AUC."""
    rec = metrics["opt_embed"]
    parts = []
    for name, t in rec["tables"].items():
        fields = ", ".join(f"{f} {k}d/{n}of{m}" for f, k, n, m in
                           zip(t["fields"], t["widths"], t["kept_features"], t["features"]))
        parts.append(f"{name}: {fields}")
    test = metrics.get("test", {}).get("AUC", float("nan"))
    return (f"{'; '.join(parts)}; embedding parameters {rec['embedding_parameters_kept']:,} of "
            f"{rec['embedding_parameters_full']:,} (sparsity {rec['sparsity']:.1%}); test AUC {test:.5f}")


def valid_batches(batches: Iterable[Mapping[str, torch.Tensor]], rows: int | None) -> list[dict[str, torch.Tensor]]:
    """The first ``rows`` rows (None: all) of ``batches``, kept in memory for the search's many passes."""
    out, seen = [], 0
    for b in batches:
        if rows is not None and seen >= rows:
            break
        take = len(b["label"]) if rows is None else min(len(b["label"]), rows - seen)
        out.append({k: v[:take] for k, v in b.items()})
        seen += take
    return out
