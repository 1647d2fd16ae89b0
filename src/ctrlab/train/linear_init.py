"""Start a model's first-order term at an L2 logistic regression fitted on the training data.

Why: on small data a model such as DeepFM (``LR(x) + FM(E) + MLP(E)``) trains its deep part to a
validation optimum within 2-5 epochs, while at the learning rate that keeps the deep part stable its
first-order weights are still far from where logistic regression would put them (ctrlab's ``LR``
model needs ~100 epochs at that rate to match scikit-learn's): the run stops with an unconverged
linear part and can end below a plain logistic regression. Fitting the first-order term first, by
full-batch L-BFGS on the same loss, lets the rest of the model learn what the linear term cannot
(:func:`quiet_output_heads` starts the other terms small, and the trainer's ``validate_start``
keeps the fitted start when no epoch beats it on validation).

The L2 strength is chosen like a user tunes scikit-learn's ``C``: each of :data:`C_GRID` is fitted
on train (mean logloss ``+ l2 / 2 * ||w||²`` with ``l2 = 1 / (C * rows)``, scikit-learn's objective
divided by the row count), and the one that scores best on validation by the trainer's monitored
metric is kept (on frappe_x1_subset cut to 5k rows, logloss picks C=1 at valid AUC 0.8604, AUC
picks C=10 at 0.8635).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..layers.embedding import LinearLogit
from .metrics import evaluate_metrics

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths tried (scikit-learn's ``C``: larger is weaker)."""
MAX_ROWS = 500_000
"""Rows of train used for the fit at most (a prefix in file order: no random state is used)."""


@dataclass
class LinearFit:
    C: float
    l2: float
    """The chosen penalty as a weight on ``||w||² / 2`` beside the mean logloss (``1 / (C * rows)``)."""
    valid_score: float
    """The monitored validation value of the chosen fit (NaN without a valid split)."""
    train_rows: int
    module: str
    """Name of the first-order module that was set."""


def first_order_module(model: torch.nn.Module) -> tuple[str, LinearLogit] | None:
    """The model's one first-order term (``LinearLogit``), or None when it has none or several."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LinearLogit)]
    return found[0] if len(found) == 1 else None


def _fit(module: LinearLogit, intercept: torch.Tensor, batch: dict, y: torch.Tensor, l2: float,
         max_iter: int) -> None:
    params = [p for p in module.weights.parameters() if p.requires_grad] + [intercept]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(module.weights(batch).sum(dim=1).squeeze(-1) + intercept, y)
        loss = loss + (l2 / 2) * sum(p.pow(2).sum() for p in params[:-1])
        loss.backward()
        return loss

    opt.step(closure)


HEAD_STD = 0.05
"""Largest standard deviation (in logits) each other term's output head may add at the start."""


@torch.no_grad()
def quiet_output_heads(model: torch.nn.Module, first_order: str, batch: dict[str, torch.Tensor],
                       max_std: float = HEAD_STD) -> dict[str, float]:
    """Scale down the weights (not the bias) of every one-output ``nn.Linear`` outside the
    first-order module ``first_order`` whose output varies over ``batch`` by more than ``max_std``
    logits, to exactly that. In the models that have a first-order term these are the heads of the
    other terms added to the logit (DeepFM's and Wide&Deep's MLP output, xDeepFM's CIN and MLP
    outputs, AutoInt's attention output). After BatchNorm the last hidden layer is unit-scale and a
    freshly initialised head adds noise with a standard deviation near 1 to the fitted logistic
    regression's logit (frappe_x1_subset cut to 5k rows: validation AUC 0.863 -> 0.858 before the
    first step), which the first epoch spends undoing. Heads that are already quiet (no BatchNorm,
    N(0, 1e-4) embeddings) are left as they are: zeroing those too left DeepFM at a stationary point
    on movielens_100k (train loss flat). Measured in training mode on a copy of the model, without
    moving its BatchNorm statistics or the random state. Returns ``{head name: scale factor}`` of
    the heads scaled."""
    heads = {name: m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == 1
             and not (name == first_order or name.startswith(first_order + "."))}
    outputs: dict[str, torch.Tensor] = {}
    # measured as the first training steps see it (BatchNorm on batch statistics, dropout on), on a
    # copy (the forward pass would move BatchNorm's running statistics) with the RNG state put back
    probe = copy.deepcopy(model).train()
    for name, m in probe.named_modules():
        if name in heads:
            m.register_forward_hook(lambda mod, inp, out, n=name: outputs.__setitem__(n, out.detach()))
    with torch.random.fork_rng(devices=[]):
        probe(batch)
    del probe
    scaled = {}
    for name, m in heads.items():
        if name not in outputs:
            continue
        std = float(outputs[name].double().std())
        if std > max_std:
            m.weight.mul_(max_std / std)
            scaled[name] = max_std / std
    return scaled


def _score(y: np.ndarray, logit: torch.Tensor, monitor: dict[str, float], mode: str) -> tuple[float, float]:
    """``(loss, value)``: the monitored validation value of ``logit`` and the same as a loss (lower is
    better). A monitor with ``gAUC`` (no group ids here) is scored by logloss."""
    prob = torch.sigmoid(logit.double()).numpy()
    if "gAUC" in monitor:
        monitor, mode = {"logloss": 1.0}, "min"
    values = evaluate_metrics(y, prob, list(monitor))
    value = sum(w * values[k] for k, w in monitor.items())
    return (-value if mode == "max" else value), value


def fit_first_order(model: torch.nn.Module, train: dict[str, torch.Tensor],
                    valid: dict[str, torch.Tensor] | None, grid: tuple[float, ...] = C_GRID,
                    monitor: dict[str, float] | None = None, mode: str = "min",
                    max_iter: int = 200) -> LinearFit | None:
    """Set the first-order weights of ``model`` (its one :class:`LinearLogit`) to the L2 logistic
    regression on the ``train`` batch (all rows at once) whose ``C`` in ``grid`` scores best on
    ``valid`` by the trainer's ``monitor`` (weights of ``AUC`` / ``logloss``, ``mode`` max or min;
    default logloss; without ``valid``: ``C = 1``). The term's own bias, if any, is left alone: the
    output bias is set afterwards (``init_output_bias``). Returns None, changing nothing, when the
    model has no single first-order term. Deterministic: no random state is used."""
    monitor = monitor or {"logloss": 1.0}
    found = first_order_module(model)
    if found is None:
        return None
    name, module = found
    rows = int(train["label"].shape[0])
    y = train["label"][:, 0].float()
    dev = next(module.parameters()).device
    start = {k: v.detach().clone() for k, v in module.weights.state_dict().items()}
    with torch.no_grad():
        for p in module.weights.parameters():
            p.zero_()
    intercept = torch.zeros((), device=dev, requires_grad=True)
    with torch.no_grad():
        p = float(y.mean())
        intercept.fill_(math.log(p / (1 - p)) if 0 < p < 1 else 0.0)
    best: tuple[float, float, float, dict] | None = None  # C, loss, monitored value, weights
    choices = grid if valid is not None else (1.0,)
    was_training = module.training
    module.train(False)
    try:
        # strongest penalty first; each fit starts from the previous solution (a warm path)
        for C in sorted(choices):
            l2 = 1.0 / (C * rows)
            _fit(module, intercept, train, y, l2, max_iter)
            loss = value = math.nan
            if valid is not None:
                with torch.no_grad():
                    logit = module.weights(valid).sum(dim=1).squeeze(-1) + intercept
                loss, value = _score(valid["label"][:, 0].numpy(), logit, monitor, mode)
            if best is None or (np.isfinite(loss) and loss < best[1]):
                best = (C, loss, value, {k: v.detach().clone() for k, v in module.weights.state_dict().items()})
    except Exception:
        module.weights.load_state_dict(start)
        raise
    finally:
        module.train(was_training)
    C, _, value, state = best
    module.weights.load_state_dict(state)
    return LinearFit(C=C, l2=1.0 / (C * rows), valid_score=value, train_rows=rows, module=name)
