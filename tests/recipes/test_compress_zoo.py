"""ctrlab compress works on every registered model (issue 16: "a recipe works with every registered
model that has the structure it needs"): AFM at full rank of every compressible linear layer and of
every embedding table reproduces the model's logits, on a map with every kind of field (categorical,
numeric, a shared and an own-vocabulary sequence, a dense vector); a low rank makes it smaller and
still runs; and the rebuilt architecture (apply_low_rank, what load/export/serve use) takes the weights."""
import pytest
import torch
from torch import nn

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers.low_rank import LowRankEmbedding, LowRankLinear, apply_low_rank
from ctrlab.models import create
from ctrlab.models.registry import list_models
from ctrlab.recipes.compress import (collect_output_stats, compress_embedding, compress_linear, embedding_tables,
                                     linear_layers)

MAP = FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5}, numeric=["price", "age"],
                             sequences={"hist": (4, "item"), "tags": (3, 9)}, dense={"img": 6},
                             labels=["click", "conversion"])  # two labels: ESMM needs both, the others read the first


PARAMS = {"DIN": {"din_target_field": "item", "din_sequence_field": "hist"},
          # FGCNN's default MLP (516 -> 4096 -> ...) is slow here, and a layer that widens its input
          # beyond the statistics rows (256) is rewritten exactly only when the rows span its input
          "FGCNN": {"channels": (4, 4), "dnn_hidden_units": (64, 32)},
          # MAP has no cross features, which memorize (and so the search) needs
          "OptInter": {"pair_methods": "factorize"}}
"""Hyperparameters that name this map's fields, or keep a model small."""


def random_batch(fmap: FeatureMap, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids in every field's range, numbers and vectors from N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    batch = {"cat": torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g) for f in fmap.categorical], 1),
             "num": torch.randn(n, len(fmap.numeric), generator=g),
             "label": torch.randint(0, 2, (n, 1), generator=g).float()}
    batch.update({"seq:" + s.name: torch.randint(0, s.vocab_size, (n, s.max_len), generator=g) for s in fmap.sequences})
    batch.update({"dense:" + d.name: torch.randn(n, d.dim, generator=g) for d in fmap.dense})
    return batch


def _spread(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create(name, MAP, **PARAMS.get(name, {}))
    with torch.no_grad():  # outputs that vary (the N(0, 1e-4) start barely does)
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _arrays(batch):
    return {k: v.numpy() for k, v in batch.items()}


@pytest.mark.parametrize("name", list_models())
def test_full_rank_afm_reproduces_every_model_and_low_rank_rebuilds(name):
    torch.set_num_threads(1)
    model = _spread(name)
    train, valid = random_batch(MAP, 256, seed=1), random_batch(MAP, 64, seed=2)
    with torch.no_grad():
        ref = model(valid)["logit"]
    # the layers a prediction runs (training-only heads, e.g. DiffuMIN's contrastive projectors, have no statistics)
    seen = collect_output_stats(model, linear_layers(model), [valid])
    layers = {n: min(m.in_features, m.out_features) for n, m in linear_layers(model).items()
              if m.out_features > 1 and seen[n].count > 0}
    tables = [n for n, t in embedding_tables(model).items() if t.embedding_dim > 1]
    if not layers and not tables:
        pytest.skip(f"{name} has no linear layer with several outputs and no embedding table wider than 1")
    if layers:
        compress_linear(model, layers, "afm", [train])
    for t in tables:
        compress_embedding(model, t, embedding_tables(model)[t].embedding_dim, "afm", _arrays(train))
    with torch.no_grad():
        torch.testing.assert_close(model(valid)["logit"], ref, atol=5e-3, rtol=1e-3)

    small = _spread(name)
    before = small.count_parameters()
    low = {n: 1 for n, m in linear_layers(small).items()
           if m.out_features > 1 and LowRankLinear.parameter_count(m.in_features, m.out_features, 1)
           < m.in_features * m.out_features + m.out_features}
    reports = compress_linear(small, low, "svd") if low else []
    for t in tables:
        compress_embedding(small, t, 1, "svd")
    assert small.count_parameters() < before
    with torch.no_grad():
        assert torch.isfinite(small(valid)["logit"]).all()
    # what a compressed run's config records rebuilds the same architecture, which takes the weights
    rebuilt = apply_low_rank(create(name, MAP, **PARAMS.get(name, {})), {**{r.name: r.rank for r in reports}, **{t: 1 for t in tables}})
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(valid)["logit"], small(valid)["logit"])
    assert sum(isinstance(m, (LowRankLinear, LowRankEmbedding)) for m in rebuilt.modules()) == len(reports) + len(tables)
