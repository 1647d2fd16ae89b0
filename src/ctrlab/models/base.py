"""Base class of every ctrlab model: forward returns outputs, the model owns its loss."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from ..data.feature_map import FeatureMap


_REGULARIZER = re.compile(r"(l1|l2|l1_l2)\((.*)\)")


def parse_regularizer(value: Any, name: str = "regularizer") -> tuple[float, float]:
    """A regularizer as FuxiCTR writes it -> ``(l1, l2)`` weights: a number (an L2 weight, as in
    FuxiCTR), ``None`` (none), or a string ``"l2(x)"``, ``"l1(x)"``, ``"l1_l2(a, b)"`` (or a bare
    number). ``name`` (the hyperparameter) is named in the error for anything else."""
    def weight(text: Any) -> float:
        w = float(text)
        if not math.isfinite(w) or w < 0:
            raise ValueError
        return w

    try:
        if value is None:
            return 0.0, 0.0
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return 0.0, weight(value)
        if isinstance(value, str):
            m = _REGULARIZER.fullmatch(value.strip().lower().replace(" ", ""))
            if m is None:
                return 0.0, weight(value)
            args = m.group(2).split(",")
            if m.group(1) == "l1_l2":
                if len(args) != 2:
                    raise ValueError
                return weight(args[0]), weight(args[1])
            if len(args) == 1:
                return (weight(args[0]), 0.0) if m.group(1) == "l1" else (0.0, weight(args[0]))
    except ValueError:
        pass
    raise ValueError(f"{name}={value!r} is not a regularizer: use a number >= 0 (an L2 weight), null, "
                     "'l2(x)', 'l1(x)' or 'l1_l2(a, b)'")


class CTRModel(nn.Module):
    """A CTR model maps a batch (dict of tensors, see :mod:`ctrlab.data.feature_map`) to outputs.

    ``forward(batch)`` returns a dict with at least ``"logit"`` of shape ``(B,)`` (the main task).
    ``loss(batch, outputs)`` returns the scalar training loss: BCE on the first label plus the
    regularizers, following FuxiCTR's rule ``(lambda / p) * ||param||_p^p`` over whole
    embedding tables (``embedding_regularizer``) and over every other parameter
    (``net_regularizer``). Each takes FuxiCTR's forms (:func:`parse_regularizer`): a number
    (L2 weight), ``"l2(x)"``, ``"l1(x)"`` or ``"l1_l2(a, b)"``; the attributes
    ``embedding_regularizer`` / ``net_regularizer`` hold the L2 weights, ``embedding_l1`` /
    ``net_l1`` the L1 ones. Models with special losses (multi-task, Tri-BCE, distillation)
    override :meth:`task_loss` and keep the regularizer.
    """

    needs_sequence: bool = False
    """True for models that attend a behaviour sequence (DIN, SDIM, SUAN, LightSUAN, DiffuMIN): a dataset without one
    cannot build them (tests and tools skip them there)."""

    min_labels: int = 1
    """Label columns the model needs (ESMM: clicks and conversions); tests and tools give a dataset
    with fewer to the other models only."""

    task_names: list[str] = []
    """A multi-task model's tasks, main task first (see :mod:`ctrlab.models.multitask`): its forward
    also returns ``"task_logits"`` ``(B, T)`` and it defines ``task_targets(batch)``; empty = one task."""

    main_label_column: int = 0
    """The label column the main ``logit`` predicts on every row (run checks compare its logloss with
    that column's base rate): the first; a multi-task model's main task's."""

    derived_tasks: list[str] = []
    """Tasks whose logit is computed from the other tasks' (ESMM's CTCVR = CTR × CVR): they have no
    output bias of their own, so starting biases at base rates (``init_output_bias``) skips them."""

    needs_row_index: bool = False
    """True for models whose training step reads each row's index in the train split (TabR leaves a
    row out of its own retrieved context): the trainer then asks the train loader for it
    (:class:`~ctrlab.data.loader.BatchLoader` ``row_index=True``: ``batch["row_index"]``, int64
    ``(B,)``). Other models' batches do not have it."""

    def __init__(self, feature_map: FeatureMap, embedding_regularizer: float | str | None = 0.0,
                 net_regularizer: float | str | None = 0.0):
        super().__init__()
        self.feature_map = feature_map
        self.embedding_l1, self.embedding_regularizer = parse_regularizer(embedding_regularizer,
                                                                          "embedding_regularizer")
        self.net_l1, self.net_regularizer = parse_regularizer(net_regularizer, "net_regularizer")

    # ---- training data -----------------------------------------------------------------------
    def attach_training_data(self, arrays: Mapping[str, Any], seed: int = 0) -> None:
        """Called by ``ctrlab train`` with the train split's encoded arrays (``cat``, ``num``,
        ``seq:<name>``, ``dense:<name>``, ``label``; numpy arrays, memory maps or tensors) before
        training. Nothing by default; a model that reads training rows at prediction time (TabR's
        retrieval candidates) keeps what it needs in buffers, so that its saved weights carry it and a
        finished run scores without the training file. ``seed``: the run's seed, for any sampling."""

    # ---- parameters ------------------------------------------------------------------------
    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of embedding tables (every nn.Embedding inside the model)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]

    def net_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter, except those a layer trains with an optimizer of its own
        (:meth:`layer_optimizer_groups`: e.g. OptEmbed's thresholds, which their own penalty drives)."""
        emb = {id(p) for p in self.embedding_parameters()}
        emb |= {id(p) for g in self.layer_optimizer_groups() for p in g["params"]}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in emb]

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameters this model trains with an optimizer of their own, taken out of the trainer's
        main one: a list of ``{"name", "params", "optimizer" ("sgd" / "adam" / "adamw"), "lr",
        "weight_decay"}`` (see :func:`ctrlab.train.optim.make_optimizer`). Default: the groups its
        layers declare (:meth:`layer_optimizer_groups`). The regularizers still cover a model's own
        groups unless :meth:`embedding_parameters` / :meth:`net_parameters` leave them out."""
        return self.layer_optimizer_groups()

    def layer_optimizer_groups(self) -> list[dict[str, Any]]:
        """The groups declared by layers inside the model through an ``optimizer_group()`` method
        (a dict as in :meth:`optimizer_groups`, or None): so that a recipe that swaps a layer in
        (:func:`ctrlab.layers.opt_embed.apply_opt_embed`) brings its optimizer with it, on any model."""
        groups = []
        for m in self.modules():
            hook = getattr(m, "optimizer_group", None) if m is not self else None
            group = hook() if callable(hook) else None
            if group:
                groups.append(group)
        return groups

    def layer_penalties(self) -> torch.Tensor | None:
        """The sum of the loss terms layers inside the model add through a ``loss_penalty()`` method
        (a scalar tensor, or None), e.g. OptEmbed's threshold penalty; None when there are none."""
        total = None
        for m in self.modules():
            hook = getattr(m, "loss_penalty", None) if m is not self else None
            term = hook() if callable(hook) else None
            if term is not None:
                total = term if total is None else total + term
        return total

    def regularization(self) -> torch.Tensor:
        reg = torch.zeros((), device=self._device())
        for l1, l2, params in ((self.embedding_l1, self.embedding_regularizer, self.embedding_parameters),
                               (self.net_l1, self.net_regularizer, self.net_parameters)):
            if l1 > 0 or l2 > 0:
                for p in params():
                    if l1 > 0:
                        reg = reg + l1 * p.abs().sum()
                    if l2 > 0:
                        reg = reg + (l2 / 2) * p.pow(2).sum()
        penalty = self.layer_penalties()
        return reg if penalty is None else reg + penalty

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ---- two-stage scoring (per-user state, then candidates) -----------------------------------
    supports_user_state: bool = False
    """True for models whose candidate-independent part can be computed once per user and stored
    (:meth:`encode_user`), then read for each request's candidates (:meth:`score_with_user`): SDIM's
    bucket tables, SUAN's cached behaviour tokens. The server's ``/users`` endpoints use it."""

    def user_state_fields(self) -> list[str]:
        """The features (sequences, number sequences) the per-user state stands for: a request sends
        them once per user and leaves them out of the candidates."""
        return []

    def encode_user(self, batch: dict[str, torch.Tensor]) -> Any:
        """One user's row (a batch of one row; its behaviour sequences are what counts) -> a state
        that :meth:`score_with_user` reads instead of the sequences."""
        raise NotImplementedError(f"{type(self).__name__} has no per-user state (supports_user_state is False)")

    def score_with_user(self, state: Any, candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N,)`` of N candidate rows of one user from the state of :meth:`encode_user`;
        equal to ``forward(rows)["logit"]`` on the rows with that user's sequences in them."""
        raise NotImplementedError(f"{type(self).__name__} has no per-user state (supports_user_state is False)")

    # ---- loss -------------------------------------------------------------------------------
    def task_loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean BCE of the main logit against the first label."""
        return F.binary_cross_entropy_with_logits(outputs["logit"], batch["label"][:, 0])

    def loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task_loss(batch, outputs) + self.regularization()

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def predict_proba(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch)["logit"])

    # ---- output bias ------------------------------------------------------------------------
    @torch.no_grad()
    def init_output_bias(self, batch: dict[str, torch.Tensor], base_rate: float, task: int | None = None) -> list[str]:
        """Shift the model's output bias so that its mean prediction on ``batch`` equals
        ``base_rate`` (about ``log(p / (1 - p))`` for an untrained model, whose other logit terms are
        near 0); returns the names of the parameters moved. Works for any model without per-model
        code: an output bias is a scalar parameter that moves every row's logit by the same amount
        ``c`` per unit. The last one with ``c = 1`` (nearest the output) is moved; a model whose logit
        averages several streams (DCNv3: ``(z_D + z_S) / 2``) has its stream biases moved together.
        ``task``: a multi-task model's task (index into :attr:`task_names`): its logit, matched on the
        rows it is evaluated on (``task_targets``), e.g. ESMM's CVR tower on the clicked rows; a
        task whose logit no single bias moves uniformly (ESMM's CTCVR, a product of two towers)
        raises ValueError. Raises ValueError when the model has no such parameter."""
        if not 0.0 < base_rate < 1.0:
            raise ValueError(f"base_rate must be in (0, 1), got {base_rate}")
        rows = None if task is None else self.task_targets(batch)[1][:, task]

        def task_logit() -> torch.Tensor:
            out = self(batch)
            value = out["logit"] if task is None else out["task_logits"][:, task]
            return (value if rows is None else value[rows]).double()

        was_training = self.training
        self.eval()  # no dropout; batch norm on its running statistics, as at prediction time
        try:
            logit = task_logit()
            found: list[tuple[str, nn.Parameter, float]] = []
            for name, p in self.named_parameters():
                if p.numel() != 1 or not p.requires_grad:
                    continue
                p.add_(1.0)
                moved = task_logit() - logit
                p.sub_(1.0)
                c = moved.mean().item()
                if c > 1e-3 and torch.allclose(moved, torch.full_like(moved, c), atol=1e-4 * max(c, 1.0)):
                    found.append((name, p, c))
            if not found:
                raise ValueError(f"{type(self).__name__} has no scalar output bias to initialise")
            unit = [f for f in found if abs(f[2] - 1.0) < 1e-3]
            chosen = unit[-1:] or found
            per_unit = sum(c for _, _, c in chosen)
            lo, hi = -40.0, 40.0  # the logit shift whose mean sigmoid is base_rate (monotone: bisection)
            for _ in range(80):
                mid = (lo + hi) / 2
                if torch.sigmoid(logit + mid).mean().item() < base_rate:
                    lo = mid
                else:
                    hi = mid
            for _, p, _ in chosen:
                p.add_((lo + hi) / 2 / per_unit)
            return [name for name, _, _ in chosen]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def shrink_numeric_init(self, rms: "torch.Tensor | list[float]", std: float = 1e-4) -> int:
        """Start each numeric field's embedding vector at the embedding rows' scale instead of
        Xavier's: its Xavier-drawn values are scaled to standard deviation ``std`` (the rows'
        N(0, 1e-4²)) and divided by the field's root mean square train value ``rms[j]`` (when above
        1), so that ``x_f * v_f`` starts as small as a categorical field's term, whatever the
        inputs' scale (Xavier's ``2 / (1 + D)`` gives a 1-dimensional LR weight standard deviation 1,
        and log counts of 10 then move the first logits by several units). Call it on an untrained
        model; returns the number of vectors scaled. Works on every
        :class:`~ctrlab.layers.embedding.FeatureEmbedding` inside the model (its ``numeric`` table
        and ``num_cols``)."""
        rms = torch.as_tensor(rms, dtype=torch.float32).clamp(min=1.0)
        scaled = 0
        for m in self.modules():
            table, cols = getattr(m, "numeric", None), getattr(m, "num_cols", None)
            if isinstance(table, nn.Embedding) and isinstance(cols, torch.Tensor) and len(cols):
                xavier = (2.0 / (1 + table.embedding_dim)) ** 0.5
                table.weight.mul_(std / xavier / rms[cols.cpu()].to(table.weight.device).unsqueeze(-1))
                scaled += len(cols)
        return scaled
