"""Shared fixtures for the trainer tests: synthetic encoded data and tiny models.

Also used by the subprocess resume test (it imports this module in a fresh interpreter).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.loader import BatchLoader, EncodedSplit
from ctrlab.models.base import CTRModel
from ctrlab.train import Trainer, TrainerConfig, seed_everything

VOCAB = 12
FIELDS = ("a", "b", "c")


def make_split(n: int, seed: int, n_groups: int = 0) -> EncodedSplit:
    """Rows whose click probability follows a fixed logistic model of 3 categorical fields."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(2, VOCAB, size=(n, len(FIELDS))).astype(np.int32)
    true_w = np.random.default_rng(99).normal(0, 1.0, size=(len(FIELDS), VOCAB))
    logit = true_w[np.arange(len(FIELDS)), cat].sum(1) - 0.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
    arrays = {
        "cat": cat,
        "num": rng.normal(size=(n, 1)).astype(np.float32),
        "label": label,
    }
    if n_groups:
        arrays["group"] = rng.integers(0, n_groups, size=n).astype(np.int64)
    return EncodedSplit(arrays)


def feature_map() -> FeatureMap:
    return FeatureMap.from_fields(categorical={f: VOCAB for f in FIELDS}, numeric=["x"])


class TinyModel(CTRModel):
    """Logistic regression + a dropout'ed linear layer over field embeddings (uses the torch RNG)."""

    def __init__(self, dim: int = 4, dropout: float = 0.3, net_regularizer: float = 1e-4):
        super().__init__(feature_map(), embedding_regularizer=1e-5, net_regularizer=net_regularizer)
        n = len(FIELDS)
        self.register_buffer("offsets", torch.arange(n) * VOCAB, persistent=False)
        self.lr = nn.Embedding(n * VOCAB, 1)
        self.emb = nn.Embedding(n * VOCAB, dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n * dim, 1)

    def forward(self, batch):
        idx = batch["cat"] + self.offsets
        deep = self.fc(self.drop(self.emb(idx).flatten(1))).squeeze(1)
        return {"logit": self.lr(idx).sum((1, 2)) + deep}


class ScriptedModel(TinyModel):
    """Trains like TinyModel, but validation scores are scripted: logit = q * (2y - 1) + noise.

    The validation AUC is therefore a strictly increasing function of ``quality`` alone, so a
    test can force improvements and plateaus epoch by epoch.
    """

    quality: float = 1.0

    def forward(self, batch):
        out = super().forward(batch)
        if self.training:
            return out
        y = batch["label"][:, 0]
        return {"logit": self.quality * (2 * y - 1) + batch["num"][:, 0] + 0 * out["logit"]}


def loaders(cfg: TrainerConfig, n_groups: int = 0):
    train = cfg.make_train_loader(make_split(1200, 1, n_groups))
    valid = cfg.make_eval_loader(make_split(400, 2, n_groups))
    test = cfg.make_eval_loader(make_split(400, 3, n_groups))
    return train, valid, test


def config(**over) -> TrainerConfig:
    base = dict(epochs=7, batch_size=128, eval_batch_size=200, lr=0.05, patience=2, seed=7,
                device="cpu", progress=False)
    base.update(over)
    return TrainerConfig(**base)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(run_dir, cfg: TrainerConfig | None = None, resume: bool = False, callbacks=(), init_seed: int = 0):
    """Seed, build TinyModel, fit; returns (trainer, history, test metrics)."""
    cfg = cfg or config()
    seed_everything(init_seed)
    model = TinyModel()
    trainer = Trainer(model, cfg, run_dir, callbacks=callbacks)
    train, valid, test = loaders(cfg)
    history = trainer.fit(train, valid, resume=resume)
    return trainer, history, trainer.evaluate(test)


def _main() -> None:
    """``python _trainkit.py RUN_DIR OUT_DIR [KILL_AFTER_EPOCH]``: train (resuming when possible),
    optionally SIGKILL itself right after the given epoch's checkpoint is written."""
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else None

    def killer(trainer, record):
        if record["epoch"] == kill_after:
            if hasattr(signal, "SIGKILL"):
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(17)

    trainer, history, metrics = run(run_dir, resume=True, callbacks=[killer], init_seed=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out_dir / "final.safetensors"))
    (out_dir / "result.json").write_text(json.dumps({"history": history, "metrics": metrics}))


if __name__ == "__main__":
    _main()
