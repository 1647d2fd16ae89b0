import numpy as np
import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create, default_hparams
from ctrlab.models.sdim import SDIM

from .synthetic import auc, fit, random_batch, single_thread, take

ARGS = dict(target_field="item", sequence_field="hist")


def _map(L=12):
    return FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5}, numeric=["price"],
                                  sequences={"hist": (L, "item"), "tags": (3, 9)})


def _model(fmap, **kw):
    torch.manual_seed(0)
    m = create("SDIM", fmap, embedding_dim=4, dnn_hidden_units=[8], **{"short_seq_len": 3, **ARGS, **kw})
    with torch.no_grad():  # trained-like scales (the 1e-4 start hashes and attends almost at random)
        m.embedding.embedding.weight.normal_()
    return m.eval()


def _batch(fmap, n=16, seed=0):
    b = random_batch(fmap, batch_size=n, seed=seed)
    b["cat"] = b["cat"].clamp(min=1)
    b["seq:hist"][:2] = 0  # empty histories
    return b


def test_defaults_and_registration():
    hp = default_hparams("SDIM")
    assert hp["embedding_dim"] == 10 and hp["num_hashes"] == 1 and hp["hash_bits"] == 4
    assert hp["reuse_hash"] is True and hp["l2_norm"] is False and hp["bucket_mean"] is False
    assert hp["short_seq_len"] == 50
    assert hp["attention_dim"] == 64 and hp["num_heads"] == 1 and hp["use_qkvo"] is True
    assert hp["dnn_hidden_units"] == (512, 128, 64) and hp["net_dropout"] == 0 and hp["batch_norm"] is False
    for k in hp:
        assert k in SDIM.__doc__, f"SDIM docstring does not mention {k}"


def test_logit_is_the_mlp_of_the_documented_inputs():
    """E with hist's column replaced by u_long (other sequence mean-pooled), then u_short appended."""
    fmap = _map()
    m = _model(fmap, hash_bits=0)  # τ = 0: u_long is the masked sum of the history
    b = _batch(fmap)
    with torch.no_grad():
        u_long, u_short = m.interests(b)
        ids = b["seq:hist"]
        rows = m.embedding.embedding.weight[ids + m.embedding.cat_offsets[1]] * (ids != 0)[..., None]
        torch.testing.assert_close(u_long[:, 0], rows.sum(1))
        E = m.embedding(b)
        E[:, fmap.field_names().index("hist")] = u_long[:, 0]
        x = torch.cat([E.flatten(1), u_short[:, 0]], dim=1)
        assert m.mlp.hidden[0].in_features == x.shape[1] == (fmap.num_fields + 1) * 4
        torch.testing.assert_close(m(b)["logit"], m.mlp(x)[:, 0])
        assert torch.all(u_long[:2] == 0) and torch.all(u_short[:2] == 0)  # empty histories
    no_short = _model(fmap, short_seq_len=0)
    assert no_short.short_attention is None and no_short.mlp.hidden[0].in_features == fmap.num_fields * 4


def test_short_term_part_sees_only_the_last_real_behaviours():
    fmap = _map()
    m = _model(fmap, hash_bits=0)
    b = _batch(fmap)
    b["seq:hist"][2:] = b["seq:hist"][2:].clamp(min=2)  # full histories
    older = dict(b, **{"seq:hist": b["seq:hist"].clone()})
    older["seq:hist"][2:, 0] = older["seq:hist"][2:, 0] % 9 + 2  # change the oldest behaviour only
    with torch.no_grad():
        (l1, s1), (l2, s2) = m.interests(b), m.interests(older)
    assert torch.equal(s1, s2) and not torch.allclose(l1, l2)
    newest = dict(b, **{"seq:hist": b["seq:hist"].clone()})
    newest["seq:hist"][2:, -1] = newest["seq:hist"][2:, -1] % 9 + 2
    with torch.no_grad():
        assert not torch.allclose(m.interests(newest)[1][2:], s1[2:])


@pytest.mark.parametrize("train_mode", [False, True])
def test_padding_side_and_extra_padding_change_nothing(train_mode):
    fmap = _map()
    m = _model(fmap, num_hashes=4, hash_bits=3)
    m.train(train_mode)  # (no dropout or batch norm here: train mode only switches the SimHash form)
    b = _batch(fmap)
    b["seq:hist"][4:, -5:] = 0  # right-padded rows
    ref = m(b)["logit"]
    ids = b["seq:hist"]
    left = torch.stack([torch.cat([r[r == 0], r[r != 0]]) for r in ids])
    assert not torch.equal(left, ids)
    torch.testing.assert_close(m(dict(b, **{"seq:hist": left}))["logit"], ref)
    longer = torch.cat([torch.zeros(16, 7, dtype=torch.long), ids], 1)
    m2 = _model(_map(L=19), num_hashes=4, hash_bits=3).train(train_mode)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(dict(b, **{"seq:hist": longer}))["logit"], ref)


@pytest.mark.parametrize("kw", [dict(num_hashes=3, hash_bits=4), dict(num_hashes=2, hash_bits=0, l2_norm=True),
                                dict(num_hashes=16, hash_bits=3, short_seq_len=0),
                                dict(num_hashes=4, hash_bits=3, bucket_mean=True)])
def test_forward_with_precomputed_behaviours_equals_forward_without(kw):
    """Two-stage serving: the per-user encodings replace the sequences; at inference with position-
    ordered sums (``ordered_sums``) the logits are equal bit for bit, with the default matrix-product
    direct form (and with autograd on) up to rounding."""
    fmap = _map(L=30)
    m = _model(fmap, **kw)
    b = _batch(fmap)
    enc = m.encode_behaviours(b)
    served = {k: v for k, v in b.items() if k != "seq:hist"} | enc
    with torch.no_grad():
        torch.testing.assert_close(m(served)["logit"], m(b)["logit"], rtol=1e-5, atol=1e-6)
    for sh in m.simhash:
        sh.ordered_sums = True
    assert enc["sdim_tables:hist"].shape == (16, kw["num_hashes"], 2 ** kw["hash_bits"], 4)
    assert ("sdim_short:hist" in enc) == bool(m.short_seq_len)
    served = {k: v for k, v in b.items() if k != "seq:hist"} | enc
    with torch.no_grad():
        assert torch.equal(m(served)["logit"], m(b)["logit"])
    torch.testing.assert_close(m(served)["logit"], m(b)["logit"])
    # candidates scored against stored encodings: another item, the same user rows
    other = dict(served, cat=served["cat"].clone())
    other["cat"][:, 1] = other["cat"][:, 1] % 9 + 2
    with torch.no_grad():
        assert torch.equal(m(other)["logit"], m(dict(b, cat=other["cat"]))["logit"])
    with pytest.raises(ValueError, match=r"neither sequence\(s\) \['hist'\].*sdim_tables:hist"):
        m({k: v for k, v in b.items() if k != "seq:hist"})


def test_grouped_pair_tables():
    fmap = FeatureMap.from_fields({"item": 9, "cate": 5}, sequences={"hist": (20, "item"), "cates": (20, "cate")})
    m = _model(fmap, target_field=[["item", "cate"]], sequence_field=[["hist", "cates"]], num_hashes=2)
    b = random_batch(fmap, batch_size=8)
    enc = m.encode_behaviours(b)
    assert enc["sdim_tables:hist"].shape == (8, 2, 16, 8) and m.simhash[0].dim == 8
    m.simhash[0].ordered_sums = True
    with torch.no_grad():
        served = {"cat": b["cat"]} | enc
        assert torch.equal(m(served)["logit"], m(b)["logit"])


def test_projections_are_saved_and_fixed_at_eval_even_without_reuse_hash():
    fmap = _map()
    m = _model(fmap, reuse_hash=False, num_hashes=2)
    assert "simhash.0.projections" in m.state_dict()
    assert all("projections" not in n for n, _ in m.named_parameters())
    b = _batch(fmap)
    R = m.simhash[0].projections.clone()
    first = m(b)["logit"]
    assert torch.equal(m(b)["logit"], first) and torch.equal(m.simhash[0].projections, R)
    m.train()
    m(b)
    assert not torch.equal(m.simhash[0].projections, R)  # redrawn per training step
    with pytest.raises(ValueError, match="reuse_hash=False"):
        m({k: v for k, v in b.items() if k != "seq:hist"} | m.encode_behaviours(b))
    R2 = m.simhash[0].projections.clone()
    m.eval()
    m(b)
    assert torch.equal(m.simhash[0].projections, R2)
    kept = _model(fmap, num_hashes=2).train()
    R = kept.simhash[0].projections.clone()
    kept(b)
    assert torch.equal(kept.simhash[0].projections, R)
    assert not torch.equal(_model(fmap, num_hashes=2, hash_seed=1).simhash[0].projections, R)


def test_errors_name_the_parameter():
    fmap = _map()
    with pytest.raises(ValueError, match="short_seq_len"):
        create("SDIM", fmap, short_seq_len=-1)
    with pytest.raises(ValueError, match="SDIM target field 'nope' is not a categorical field"):
        create("SDIM", fmap, target_field="nope", sequence_field="hist")
    two = FeatureMap.from_fields({"item": 11, "shop": 6}, sequences={"hist": (4, "item"), "shops": (3, "shop")})
    with pytest.raises(ValueError, match="SDIM: cannot tell.*Set model_params target_field and sequence_field"):
        create("SDIM", two)
    with pytest.raises(ValueError, match="hash_bits"):
        create("SDIM", fmap, hash_bits=40)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create("SDIM", fmap, attention_dim=10, num_heads=3)


# ---- learning: a long-range interest ------------------------------------------------------------
def planted_long_range(n=2000, n_clusters=20, max_len=1000, min_len=100, seed=0):
    """Items are 20 clusters. History: 100-1000 behaviours (pre-padded to 1000) from 2 main clusters
    of the user, with 1-3 behaviours of a third, rare cluster at random positions. Candidate: the
    rare cluster (label 1) or a cluster absent from the history (label 0): a click iff the
    candidate's cluster occurs anywhere in the history, where it is under 3% of the behaviours."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((n, max_len), np.int64)
    cand, y = np.zeros(n, np.int64), np.zeros(n, np.float32)
    for r in range(n):
        main_a, main_b, rare, absent = rng.permutation(n_clusters)[:4]
        length = rng.integers(min_len, max_len + 1)
        items = rng.choice([main_a, main_b], size=length)
        items[rng.choice(length, size=rng.integers(1, 4), replace=False)] = rare
        hist[r, max_len - length:] = items + 2
        y[r] = rng.random() < 0.5
        cand[r] = (rare if y[r] else absent) + 2
    fmap = FeatureMap.from_fields({"item": n_clusters + 2}, sequences={"hist": (max_len, "item")})
    return fmap, {"cat": torch.from_numpy(cand[:, None]), "seq:hist": torch.from_numpy(hist),
                  "label": torch.from_numpy(y)[:, None]}


def test_simhash_finds_a_rare_long_range_interest_mean_pooling_cannot():
    """Measured (seed 0, 3 epochs over 1,600 rows): SDIM (m = 16, τ = 3, L2 per hash as in the
    paper) 0.999; DNN (mean-pooled history) 0.52; DIN (softmax target attention, ReLU unit: 3x
    faster than Dice here) 0.57: it needs more steps than this budget on a 1-in-300 signal
    (8 epochs: 0.56-0.59; Dice units, 3 epochs: 0.52). ~9 s on one thread. Without the L2 norm SDIM stays near 0.53 here:
    the unnormalised sum is dominated by the ~600 main-cluster behaviours' leaks into the bucket."""
    fmap, batch = planted_long_range()
    train, test = take(batch, slice(0, 1600)), take(batch, slice(1600, None))
    aucs = {}
    with single_thread():
        for name, kw in {"SDIM": dict(num_hashes=16, hash_bits=3, l2_norm=True, **ARGS),
                         "DNN": dict(hidden_units=[64, 32]),
                         "DIN": dict(din_target_field="item", din_sequence_field="hist", din_use_softmax=True,
                                     attention_hidden_activations="relu")}.items():
            torch.manual_seed(0)
            net = {"DNN": {}, "DIN": dict(dnn_hidden_units=[64, 32])}.get(name, dict(dnn_hidden_units=[64, 32]))
            m = create(name, fmap, embedding_dim=8, **{**kw, **net})
            aucs[name] = auc(fit(m, train, epochs=3, lr=1e-2, batch_size=64), test)
    print("planted long-range interest AUCs:", {k: round(v, 4) for k, v in aucs.items()})
    assert aucs["SDIM"] > 0.9 and aucs["SDIM"] > aucs["DNN"] + 0.3, aucs
    assert aucs["SDIM"] > aucs["DIN"] - 0.05, aucs
