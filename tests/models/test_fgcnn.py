"""FGCNN (sheet: /work/shared/docs/models/FGCNN.md), including its optional training guard."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

import ctrlab.models.fgcnn  # noqa: F401  (registers FGCNN)
from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create, default_hparams

from .synthetic import auc, fit, planted_pairwise, random_batch, take

PRESETS = Path(__file__).resolve().parents[2] / "src" / "ctrlab" / "configs" / "presets" / "frappe_x1"
# FuxiCTR 2.3.9's FGCNN with ctrlab's Frappe preset values on frappe_x1_subset: the "parameters" of
# its runs in benchmarks/peers/results/fuxictr_frappe_x1_subset.json (docs/results.md)
FUXICTR_FRAPPE_PARAMETERS = 1_145_477
SMALL = dict(embedding_dim=8, channels=[6, 8], kernel_heights=5, recombined_channels=3, dnn_hidden_units=[64, 64])


def test_official_defaults():
    hp = default_hparams("FGCNN")
    assert hp["embedding_dim"] == 10 and hp["embedding_regularizer"] == 0.0 and hp["net_regularizer"] == 0.0
    assert hp["channels"] == (14, 16, 18, 20) and hp["conv_batch_norm"] and not hp["share_embedding"]
    assert hp["gate_new_features"] is False  # the published model; the gate is an option


@pytest.fixture(scope="module")
def frappe(data_dir):
    from ctrlab.data.datasets import get_dataset
    from ctrlab.data.pipeline import prepare

    return prepare(get_dataset("frappe_x1_subset", data_dir=data_dir), log=lambda *a: None)


def test_preset_builds_fuxictrs_model_parameter_for_parameter(frappe):
    """issue 14.12: `ctrlab train --model FGCNN` (preset auto) on Frappe trains FuxiCTR's FGCNN (no
    gate), with exactly FuxiCTR's parameter count; the gate is on only in the extra preset."""
    from ctrlab import api

    params, source = api.resolve_model_params(api.load_run_config(None, dataset="frappe_x1_subset", model="FGCNN"))
    assert Path(source).name == "FGCNN.yaml" and "gate_new_features" not in params
    m = create("FGCNN", frappe.feature_map, **params)
    assert m.gate is None and m.count_parameters() == FUXICTR_FRAPPE_PARAMETERS
    gated = yaml.safe_load((PRESETS / "FGCNN-gated.yaml").read_text())
    assert gated == {**yaml.safe_load((PRESETS / "FGCNN.yaml").read_text()), "gate_new_features": True}
    m = create("FGCNN", frappe.feature_map, **gated)
    assert m.gate is not None and m.count_parameters() == FUXICTR_FRAPPE_PARAMETERS + 1


def test_criteo_classifier_input_size():
    """Sheet: F = 39, p = 2, r = 3, 4 layers -> N_new = 114, N = 153, input 11,628 + 153·D."""
    fmap = FeatureMap.from_fields({f"C{i}": 4 for i in range(39)})
    m = create("FGCNN", fmap, embedding_dim=10, channels=[38, 40, 42, 44], kernel_heights=9, pooling_sizes=2,
               recombined_channels=3, dnn_hidden_units=[8])
    assert m.num_features == 153
    assert m.mlp.hidden[0].in_features == 11_628 + 153 * 10
    out = m(random_batch(fmap, batch_size=4))
    assert out["logit"].shape == (4,) and torch.isfinite(out["logit"]).all()


@pytest.mark.parametrize("gate,share", [(True, False), (False, False), (True, True)])
def test_parameter_count(gate, share):
    F, D, C, k, r, H = 5, 4, [3, 4], 3, [2, 1], 16
    fmap = FeatureMap.from_fields({f"f{i}": 6 for i in range(F)})
    m = create("FGCNN", fmap, embedding_dim=D, channels=C, kernel_heights=k, pooling_sizes=2,
               recombined_channels=r, dnn_hidden_units=[H], gate_new_features=gate, share_embedding=share)
    heights = [3, 2]                                 # ceil(5/2), ceil(3/2)
    N = F + heights[0] * r[0] + heights[1] * r[1]    # 5 + 6 + 2 = 13
    emb = (1 if share else 2) * F * 6 * D
    conv = (1 * C[0] * k + C[0]) + (C[0] * C[1] * k + C[1]) + 2 * (C[0] + C[1])  # + BatchNorm γ, β
    rec = sum((c * h * D) * (q * h * D) + q * h * D for c, h, q in zip(C, heights, r))
    mlp_in = N * D + N * (N - 1) // 2
    mlp = mlp_in * H + H + H + 1
    assert m.mlp.hidden[0].in_features == mlp_in == 130
    assert m.count_parameters() == emb + conv + rec + mlp + (1 if gate else 0)
    assert len(m.embedding_parameters()) == (1 if share else 2)


def test_generated_feature_shapes(mixed_map):
    m = create("FGCNN", mixed_map, embedding_dim=4, channels=[3, 5], kernel_heights=3, pooling_sizes=2,
               recombined_channels=[2, 3], dnn_hidden_units=[8])
    F = mixed_map.num_fields  # 8: categorical, numeric, sequences and the dense vector, in map order
    b = random_batch(mixed_map, batch_size=6)
    assert F == 8 and m.generator.heights == [4, 2]
    new = m.new_features(b)
    assert new.shape == (6, 4 * 2 + 2 * 3, 4) and m.num_features == F + 14
    assert m(b)["logit"].shape == (6,)


def _ipnn_from_fgcnn_weights(m, b):
    """An IPNN on E_c whose first MLP layer takes FGCNN's columns for raw features and raw pairs."""
    e = m.embedding(b)
    F, D, N = e.shape[1], e.shape[2], m.num_features
    i, j = torch.triu_indices(N, N, offset=1)
    raw_pairs = torch.nonzero((i < F) & (j < F)).squeeze(1)  # same row-major order as F's pairs
    first = m.mlp.hidden[0]
    W = torch.cat([first.weight[:, :F * D], first.weight[:, N * D + raw_pairs]], dim=1)
    ii, jj = torch.triu_indices(F, F, offset=1)
    x = torch.cat([e.flatten(1), (e[:, ii] * e[:, jj]).sum(-1)], dim=1)
    h = torch.relu(x @ W.T + first.bias)
    for layer in list(m.mlp.hidden)[2:]:
        h = layer(h)
    return m.mlp.out(h).squeeze(-1)


def test_reduces_to_ipnn_at_initialisation_and_with_zero_recombination(cat_map):
    b = random_batch(cat_map, batch_size=16)
    gated = create("FGCNN", cat_map, embedding_dim=4, channels=[3], kernel_heights=3, recombined_channels=2,
                   dnn_hidden_units=[12, 6], gate_new_features=True).eval()
    with torch.no_grad():
        for p in gated.embedding.parameters():
            p.normal_()
    assert torch.equal(gated.new_features(b), torch.zeros_like(gated.new_features(b)))  # α = 0
    torch.testing.assert_close(gated(b)["logit"], _ipnn_from_fgcnn_weights(gated, b))
    # the sheet's version, without the gate: zero recombination -> tanh(0) = 0
    plain = create("FGCNN", cat_map, embedding_dim=4, channels=[3], kernel_heights=3, recombined_channels=2,
                   dnn_hidden_units=[12, 6]).eval()
    assert plain.gate is None
    with torch.no_grad():
        for p in plain.embedding.parameters():
            p.normal_()
        assert plain.new_features(b).abs().sum() > 0
        for rec in plain.generator.recombine:
            rec[0].weight.zero_()
            rec[0].bias.zero_()
    torch.testing.assert_close(plain(b)["logit"], _ipnn_from_fgcnn_weights(plain, b))
    # and the gate scales the generated features
    with torch.no_grad():
        gated.gate.fill_(0.5)
        for p in gated.gen_embedding.parameters():
            p.normal_()
    torch.testing.assert_close(gated.new_features(b), 0.5 * gated.generator(gated.gen_embedding(b)))


def test_planted_interaction_on_adjacent_fields():
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])
    model_auc = auc(fit(create("FGCNN", fmap, **SMALL), train, epochs=2), test)
    assert model_auc > 0.87 and model_auc > bayes - 0.02, f"AUC {model_auc:.4f} (Bayes {bayes:.4f})"


def _first_layer_dead_share(m, batch):
    """Share of first hidden-layer ReLUs that are off for every sample of ``batch``."""
    with torch.no_grad():
        e = torch.cat([m.embedding(batch), m.new_features(batch)], dim=1)
        h = torch.cat([e.flatten(1), m.inner_products(e)], dim=1)
        return float((m.mlp.hidden[0](h).amax(dim=0) <= 0).float().mean())


def test_guard_prevents_the_stuck_at_half_failure():
    """The failure of BARS issue #10, reproduced: 20 fields -> 45 generated features whose
    values and inner products flood the classifier's input (L1 ~2,400 per sample vs ~20 gated)
    while the raw embeddings are ~1e-4; Adam's first steps (lr 1e-2 here, so two short epochs
    show it) push most first-layer ReLUs off for every input and the unguarded model sits at
    AUC ≈ 0.5 (8 of 8 seeds tried; 7 still there after 4 epochs). The gated model starts as an
    IPNN and learns the planted interaction (AUC ≈ 0.9, 8 of 8 seeds)."""
    fmap, batch, _ = planted_pairwise(n=12_000, n_fields=20)
    train, test = take(batch, slice(0, 10_000)), take(batch, slice(10_000, None))
    results, dead = {}, {}
    for gate in (False, True):
        m = create("FGCNN", fmap, gate_new_features=gate, **SMALL)
        assert m.generator.num_new_features == 45
        fit(m, train, epochs=2, lr=1e-2)
        results[gate], dead[gate] = auc(m, test), _first_layer_dead_share(m, test)
    assert results[False] < 0.6 and dead[False] > 0.7, (results, dead)
    assert results[True] > 0.87 and dead[True] < 0.5, (results, dead)


def test_trains_on_real_frappe(frappe):
    """2 epochs on frappe_x1_subset (real data, 10 fields, 46k training rows): valid AUC well above 0.5."""
    data = frappe

    def tensors(split):
        a = data.splits[split].arrays
        return {"cat": torch.from_numpy(np.asarray(a["cat"])).long(),
                "label": torch.from_numpy(np.asarray(a["label"])).float()}

    train, valid = tensors("train"), tensors("valid")
    m = create("FGCNN", data.feature_map, embedding_dim=10, channels=[6, 8], kernel_heights=5,
               recombined_channels=3, dnn_hidden_units=[128, 128])
    fit(m, train, epochs=2, batch_size=2048, lr=3e-3)
    assert auc(m, valid) > 0.88


@pytest.mark.parametrize("gate", [True, False])
def test_state_dict_roundtrip_through_safetensors(mixed_map, gate):
    st = pytest.importorskip("safetensors.torch")
    hp = dict(embedding_dim=4, channels=[3], kernel_heights=3, dnn_hidden_units=[8], gate_new_features=gate)
    a, b = create("FGCNN", mixed_map, **hp), create("FGCNN", mixed_map, **hp)
    b.load_state_dict(st.load(st.save({k: v.contiguous() for k, v in a.state_dict().items()})))
    a.eval()
    b.eval()
    batch = random_batch(mixed_map)
    torch.testing.assert_close(a(batch)["logit"], b(batch)["logit"])


def test_gated_weights_into_the_default_model_name_the_option(mixed_map):
    """A run trained before the default changed has the gate in its weights: say which option rebuilds it."""
    hp = dict(embedding_dim=4, channels=[3], kernel_heights=3, dnn_hidden_units=[8])
    gated = create("FGCNN", mixed_map, gate_new_features=True, **hp).state_dict()
    with pytest.raises(RuntimeError, match="gate_new_features=True"):
        create("FGCNN", mixed_map, **hp).load_state_dict(gated)
