"""Synthetic data and a tiny Adam training loop for model tests (no dependency on ctrlab.train)."""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ctrlab.data.feature_map import FeatureMap


@contextlib.contextmanager
def single_thread():
    """Torch on one intra-op thread, restored afterwards: the training tests run small batches,
    where a second thread costs more than it gives (5-10x slower on a busy 2-core machine). Also
    the ``one_thread`` fixture of tests/conftest.py."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def planted_pairwise(n: int = 20_000, n_fields: int = 6, cardinality: int = 10, seed: int = 0):
    """FinalMLP-sheet task: label ~ Bernoulli(0.9 if (x1 + x2) mod 2 == 0 else 0.1).

    Returns ``(feature_map, batch, p)``; ``p`` is the true click probability (Bayes scores).
    Values v ∈ [0, cardinality) are encoded as ids v + 2 (0 = pad, 1 = OOV).
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cardinality, size=(n, n_fields))
    p = np.where((x[:, 0] + x[:, 1]) % 2 == 0, 0.9, 0.1)
    y = (rng.random(n) < p).astype(np.float32)
    fmap = FeatureMap.from_fields({f"f{i}": cardinality + 2 for i in range(n_fields)})
    batch = {"cat": torch.from_numpy(x + 2).long(), "label": torch.from_numpy(y)[:, None]}
    return fmap, batch, p


def random_batch(fmap: FeatureMap, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch following the Batch contract of ``fmap`` (all id ranges valid)."""
    g = torch.Generator().manual_seed(seed)
    b: dict[str, torch.Tensor] = {}
    if fmap.categorical:
        b["cat"] = torch.stack([torch.randint(0, f.vocab_size, (batch_size,), generator=g)
                                for f in fmap.categorical], dim=1)
    if fmap.numeric:
        b["num"] = torch.randn(batch_size, len(fmap.numeric), generator=g)
    for s in fmap.sequences:
        b["seq:" + s.name] = torch.randint(0, s.vocab_size, (batch_size, s.max_len), generator=g)
    for d in fmap.dense:
        b["dense:" + d.name] = torch.randn(batch_size, d.dim, generator=g)
    b["label"] = torch.randint(0, 2, (batch_size, len(fmap.labels)), generator=g).float()
    return b


def take(batch: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in batch.items()}


def fit(model, batch, epochs: int = 4, batch_size: int = 256, lr: float = 3e-3, seed: int = 0):
    """Plain Adam loop over ``model.loss``."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = batch["label"].shape[0]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            mb = take(batch, perm[i:i + batch_size])
            loss = model.loss(mb, model(mb))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def auc(model, batch) -> float:
    with torch.no_grad():
        scores = model(batch)["logit"].numpy()
    return float(roc_auc_score(batch["label"][:, 0].numpy(), scores))


def planted_third_order(n: int = 20_000, n_fields: int = 6, cardinality: int = 10, seed: int = 0):
    """label ~ Bernoulli(0.9 if (x1 + x2 + x3) mod 2 == 0 else 0.1): any one or two of the three
    fields are independent of the label (pairwise terms carry no signal); Bayes AUC 0.9.
    Same encoding as :func:`planted_pairwise` (ids v + 2)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cardinality, size=(n, n_fields))
    p = np.where((x[:, 0] + x[:, 1] + x[:, 2]) % 2 == 0, 0.9, 0.1)
    y = (rng.random(n) < p).astype(np.float32)
    fmap = FeatureMap.from_fields({f"f{i}": cardinality + 2 for i in range(n_fields)})
    return fmap, {"cat": torch.from_numpy(x + 2).long(), "label": torch.from_numpy(y)[:, None]}


def fit_until(model, train, valid, target: float, max_epochs: int, lr: float):
    """Adam (one optimizer throughout) for up to ``max_epochs``; stops once validation AUC > target."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = train["label"].shape[0]
    for _ in range(max_epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, 256):
            mb = take(train, perm[i:i + 256])
            loss = model.loss(mb, model(mb))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        if auc(model, valid) > target:
            break
    return model


def with_labels_for(model_cls, fmap: FeatureMap) -> FeatureMap:
    """``fmap``, with a second label column ``conversion`` when ``model_cls`` needs two (ESMM's
    clicks and conversions); :func:`random_batch` then draws both."""
    if model_cls.min_labels <= len(fmap.labels):
        return fmap
    out = copy.deepcopy(fmap)
    out.labels = list(fmap.labels) + [f"label_{i}" for i in range(len(fmap.labels), model_cls.min_labels)]
    return out
