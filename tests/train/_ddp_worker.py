"""A 2-rank data-parallel scenario for test_distributed.py, started by torchrun (gloo on loopback):

    python -m torch.distributed.run --standalone --nproc-per-node 2 _ddp_worker.py MODE OUT_DIR

Every rank writes ``OUT_DIR/rank<r>.json``; rank 0 also keeps its run folders under OUT_DIR.

* ``uneven``: 4097 training rows, global batch 4096 (rank shares of 2049 and 2048 rows); trains,
  then evaluates and predicts on 4097 sharded validation rows and (rank 0) on the unsharded rows;
  then fits with shards that are not padded (which must fail on every rank, not hang).
* ``details``: a model with dropout and BatchNorm. Records each rank's first dropout mask and the
  BatchNorm buffers every rank validated with; trains 3 epochs uninterrupted (folder ``whole``),
  and 1 epoch then a resume to 3 in a fresh trainer (folder ``resumed``).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainkit as K  # noqa: E402

from ctrlab.data.loader import BatchLoader  # noqa: E402
from ctrlab.train import TIMING_KEYS, Trainer, evaluate_metrics, seed_everything  # noqa: E402
from ctrlab.train.distributed import DistContext, teardown  # noqa: E402


class BNDropModel(K.TinyModel):
    """TinyModel with BatchNorm before the dropout; records the first dropout mask it draws and the
    BatchNorm running statistics of its latest evaluation-mode forward pass."""

    def __init__(self):
        super().__init__(dim=4, dropout=0.5)
        self.bn = nn.BatchNorm1d(len(K.FIELDS) * 4)
        self.first_mask: list[bool] | None = None
        self.eval_buffers: dict[str, list[float]] | None = None

    def forward(self, batch):
        idx = batch["cat"] + self.offsets
        h = self.bn(self.emb(idx).flatten(1))
        if not self.training:
            self.eval_buffers = {"bn.running_mean": self.bn.running_mean.tolist(),
                                 "bn.running_var": self.bn.running_var.tolist()}
        dropped = self.drop(h)
        if self.training and self.first_mask is None:
            self.first_mask = (dropped == 0).flatten().tolist()
        return {"logit": self.lr(idx).sum((1, 2)) + self.fc(dropped).squeeze(1)}


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def uneven(ctx: DistContext, out: Path) -> dict:
    cfg = K.config(epochs=2, batch_size=4096, eval_batch_size=4096, patience=5)
    seed_everything(0)
    model = K.TinyModel()
    trainer = Trainer(model, cfg, out / "run", dist=ctx)
    train = cfg.make_train_loader(K.make_split(4097, 1), ctx.shard)
    valid_split = K.make_split(4097, 2)
    valid = cfg.make_eval_loader(valid_split, ctx.shard)
    history = trainer.fit(train, valid)
    result = {"steps": len(train), "epochs": len(history), "metrics": trainer.evaluate(valid),
              "predictions": len(trainer.predict(valid))}
    if ctx.is_main:  # the same weights on the unsharded rows, in one process
        whole = cfg.make_eval_loader(valid_split)
        model.eval()
        with torch.no_grad():
            prob = torch.cat([torch.sigmoid(model(b)["logit"].double()) for b in whole]).numpy()
        result["unsharded"] = evaluate_metrics(valid_split.arrays["label"][:, 0], prob, ["AUC", "logloss"])
    # shards that are not padded: a clear error on every rank instead of a hang
    unpadded = BatchLoader(K.make_split(4097, 1), 2048, shuffle=True, shard=ctx.shard)
    try:
        Trainer(K.TinyModel(), cfg, out / "unpadded", dist=ctx).fit(unpadded, valid)
    except ValueError as exc:
        result["unpadded_error"] = str(exc)
    return result


def details(ctx: DistContext, out: Path) -> dict:
    cfg = K.config(epochs=3, patience=5, restore_best=False)
    train = cfg.make_train_loader(K.make_split(1200, 1), ctx.shard)
    valid = cfg.make_eval_loader(K.make_split(400, 2), ctx.shard)

    def fit(run: str, epochs: int, resume: bool, init_seed: int):
        seed_everything(init_seed)
        model = BNDropModel()
        cfg.epochs = epochs
        trainer = Trainer(model, cfg, out / run, dist=ctx)
        return model, trainer.fit(train, valid, resume=resume)

    model, whole = fit("whole", 3, False, 0)
    result = {"first_mask": model.first_mask, "eval_buffers": model.eval_buffers,
              "whole_history": _strip(whole),
              "whole_weights": {k: v.tolist() for k, v in model.state_dict().items()}}
    fit("resumed", 1, False, 0)
    model, resumed = fit("resumed", 3, True, 999)  # everything must come from the checkpoint
    result["resumed_history"] = _strip(resumed)
    result["resumed_weights"] = {k: v.tolist() for k, v in model.state_dict().items()}
    return result


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    # a short collective timeout: a hang becomes an error instead of blocking for 30 minutes
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), "gloo")
    torch.set_num_threads(1)
    try:
        result = {"uneven": uneven, "details": details}[mode](ctx, out)
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(result))
    except BaseException:
        teardown(ctx, finished=False)
        raise
    teardown(ctx)  # the library's own exit path, as ctrlab.train takes it


if __name__ == "__main__":
    main()
