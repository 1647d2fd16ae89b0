import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create, default_hparams
from ctrlab.models.suan import SUAN, LightSUAN

from .synthetic import auc, fit, random_batch, single_thread, take

L = 6


def _with_times(fmap: FeatureMap, name: str, max_len: int) -> FeatureMap:
    """A numeric sequence on the map (the interface of the numeric-sequence feature map:
    ``numeric_sequences`` entries with ``name`` and ``max_len``)."""
    fmap.numeric_sequences = [SimpleNamespace(name=name, max_len=max_len)]
    return fmap


@pytest.fixture
def seq_map() -> FeatureMap:
    fmap = FeatureMap.from_fields({"user": 7, "item": 11, "cate": 5, "ctx": 4}, numeric=["price"],
                                  sequences={"hist": (L, "item"), "cate_hist": (L, "cate"), "tags": (3, 9)})
    return _with_times(fmap, "gap", L)


def _batch(fmap, n=5, seed=0):
    b = random_batch(fmap, batch_size=n, seed=seed)
    b["cat"] = b["cat"].clamp(min=2)
    real = torch.ones(n, L, dtype=torch.bool)
    real[0, :2] = False  # row 0: two padding positions
    real[1, :L - 1] = False  # row 1: one behaviour
    b["seq:hist"] = torch.where(real, b["seq:hist"].clamp(min=2), 0)
    b["seq:cate_hist"] = torch.where(real, b["seq:cate_hist"].clamp(min=2), 0)
    gaps = torch.sort(torch.rand(n, L, generator=torch.Generator().manual_seed(seed)) * 1e5, 1, descending=True).values
    b["numseq:gap"] = gaps * real
    return b


def _spread(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _model(name, fmap, **kw):
    torch.manual_seed(0)
    return _spread(create(name, fmap, dnn_hidden_units=[16], time_field="gap", **kw))


def test_defaults_and_registration():
    for cls in (SUAN, LightSUAN):
        hp = default_hparams(cls.__name__)
        assert hp["embedding_dim"] == 10 and hp["n_layers"] == 2 and hp["n_heads"] == 2
        assert hp["num_time_buckets"] == 128 and hp["attention_dropout"] == 0
        assert hp["dnn_hidden_units"] == (1024, 512, 256) and hp["dnn_activations"] == "Dice"
        assert hp["time_field"] is None and hp["target_field"] is None
        for k in hp:
            assert k in cls.__doc__, f"{cls.__name__} docstring does not mention {k}"
    assert default_hparams("SUAN")["attention_window"] is None
    assert default_hparams("LightSUAN")["attention_window"] == 16


def test_fields_are_inferred_as_one_group(seq_map):
    m = create("SUAN", seq_map, dnn_hidden_units=[8])
    assert (m.targets, m.sequences) == (("item", "cate"), ("hist", "cate_hist"))
    assert m.profile == ["user", "ctx"] and m.token_dim == 20
    m = create("SUAN", seq_map, dnn_hidden_units=[8], target_field="item", sequence_field="hist",
               side_field="cate_hist", embedding_dim=4)
    assert m.token_dim == 8 and m.profile == ["user", "cate", "ctx"]
    m(_batch(seq_map))


def test_bad_settings_are_named(seq_map):
    with pytest.raises(ValueError, match="time_field"):
        create("SUAN", seq_map, time_field="nope")
    with pytest.raises(ValueError, match="n_heads"):
        create("SUAN", seq_map, n_heads=3)
    with pytest.raises(ValueError, match="side_field"):
        create("SUAN", seq_map, target_field="item", sequence_field="hist", side_field="tags")
    m = create("SUAN", seq_map, dnn_hidden_units=[8])
    with pytest.raises(ValueError, match="one user"):
        m.encode_history(_batch(seq_map))


@pytest.mark.parametrize("name", ["SUAN", "LightSUAN"])
def test_causality(seq_map, name):
    """Changing the candidate changes no behaviour token; changing behaviour j changes no earlier one."""
    m = _model(name, seq_map, attention_window=2) if name == "LightSUAN" else _model(name, seq_map)
    b = _batch(seq_map)
    with torch.no_grad():
        states = m.token_states(b)
        other = dict(b, cat=b["cat"].clone())  # another candidate: item and category ids moved by one
        other["cat"][:, 1] = (b["cat"][:, 1] - 1) % 9 + 2
        other["cat"][:, 2] = (b["cat"][:, 2] - 1) % 3 + 2
        s2 = m.token_states(other)
        torch.testing.assert_close(s2[:, :L], states[:, :L], rtol=0, atol=1e-6)
        assert (s2[:, L] - states[:, L]).abs().max() > 1e-3
        for j in (3, L - 1):
            changed = dict(b, **{"seq:hist": b["seq:hist"].clone()})
            changed["seq:hist"][2:, j] = (b["seq:hist"][2:, j] - 1) % 9 + 2  # rows 2+ have no padding
            s3 = m.token_states(changed)
            torch.testing.assert_close(s3[:, :j], states[:, :j], rtol=0, atol=1e-6)
            assert (s3[2:, j] - states[2:, j]).abs().max() > 1e-3


@pytest.mark.parametrize("name, kw", [("SUAN", {}), ("LightSUAN", {"attention_window": 2}),
                                      ("SUAN", {"time_field": None})])
def test_parallel_inference_equals_independent_forwards(seq_map, name, kw):
    """N candidates of one user scored from one encoding of the history == N full forwards."""
    torch.manual_seed(0)
    m = _spread(create(name, seq_map, dnn_hidden_units=[16], **{"time_field": "gap", **kw}))
    b = _batch(seq_map, n=8, seed=3)
    for user in (0, 1, 2):  # padded, a single behaviour, full
        row = take(b, slice(user, user + 1))
        rows = {k: v.expand(8, *v.shape[1:]).clone() for k, v in row.items()}
        rows["cat"][:, 1:3] = b["cat"][:, 1:3]  # 8 different candidates (item, category)
        with torch.no_grad():
            want = torch.stack([m(take(rows, slice(i, i + 1)))["logit"][0] for i in range(8)])
            cache = m.encode_history(row)
            no_history = {k: v for k, v in rows.items() if k not in ("seq:hist", "seq:cate_hist", "numseq:gap")}
            got = m.score_candidates(cache, no_history)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert want.std() > 1e-3  # the candidates do score differently


def test_padding_side_does_not_matter(seq_map):
    m = _model("SUAN", seq_map)
    pre = _batch(seq_map)
    post = dict(pre)
    for key in ("seq:hist", "seq:cate_hist", "numseq:gap"):  # move padding to the end, keep the order
        rows = []
        for r in pre[key]:
            keep = pre["seq:hist"][len(rows)] != 0
            rows.append(torch.cat([r[keep], torch.zeros_like(r[~keep])]))
        post[key] = torch.stack(rows)
    with torch.no_grad():
        torch.testing.assert_close(m(post)["logit"], m(pre)["logit"], rtol=0, atol=1e-5)


def test_lightsuan_with_a_full_window_is_suan_and_a_narrow_one_is_not(seq_map):
    dense = _model("SUAN", seq_map)
    b = _batch(seq_map)
    for window, same in ((L, True), (1, False)):
        light = create("LightSUAN", seq_map, dnn_hidden_units=[16], time_field="gap",
                       attention_window=window, attention_stride=L + 5).eval()
        light.load_state_dict(dense.state_dict())
        with torch.no_grad():
            a, c = light(b)["logit"], dense(b)["logit"]
        assert torch.equal(a, c) == same


def _planted(n=2500, length=40, n_cats=8, k=5, short=3600.0, seed=0):
    """Click iff the candidate's category is among the categories of the last k behaviours that
    happened less than ``short`` seconds before the request. Half the sessions end recently
    (newest event 0-30 min ago), half long ago (2 h - 3 days); events go back by exponential gaps
    (mean 10 min); half the candidates come from the last k behaviours, half at random."""
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, n_cats, size=(n, length))
    lens = rng.integers(length // 2, length + 1, size=n)
    real = np.arange(length)[None, :] >= (length - lens)[:, None]
    newest = np.where(rng.random(n) < 0.5, rng.uniform(0, 1800, n), rng.uniform(7200, 3 * 86400, n))
    inter = rng.exponential(600.0, size=(n, length))
    after = np.cumsum(inter[:, ::-1], 1)[:, ::-1] - inter  # sum of the gaps between j and the newest event
    gaps = np.where(real, newest[:, None] + after, 0.0)  # oldest first; the newest event `newest` s ago
    recent = real & (np.arange(length)[None, :] >= length - k) & (gaps < short)
    cand = np.where(rng.random(n) < 0.5, cats[np.arange(n), length - 1 - rng.integers(0, k, size=n)],
                    rng.integers(0, n_cats, size=n))
    y = (recent & (cats == cand[:, None])).any(1).astype(np.float32)
    fmap = FeatureMap.from_fields({"user": 50, "cate": n_cats + 2}, sequences={"cate_hist": (length, "cate")})
    fmap = _with_times(fmap, "gap", length)
    batch = {"cat": torch.from_numpy(np.stack([rng.integers(2, 50, n), cand + 2], 1)).long(),
             "seq:cate_hist": torch.from_numpy(np.where(real, cats + 2, 0)).long(),
             "numseq:gap": torch.from_numpy(gaps).float(), "label": torch.from_numpy(y)[:, None]}
    return fmap, batch


def test_planted_recency_interest_needs_attention_and_the_time_bias():
    """SUAN (time gaps through the time-gap bias only) finds "the candidate's category among the
    recent behaviours"; mean pooling (DNN) cannot, nor SUAN without the time bias (the time
    embedding is off in both SUANs, so the bias is the only way time gaps reach the model; with the
    time embedding on, it carries the same gap to the candidate and the bias adds little here)."""
    fmap, batch = _planted()
    train, test = take(batch, slice(0, 2000)), take(batch, slice(2000, None))
    assert 0.25 < float(batch["label"].mean()) < 0.5
    common = dict(embedding_dim=8, dnn_hidden_units=[64], time_field="gap", use_time_embedding=False)
    result = {}
    with single_thread():
        for label, name, kw in [("DNN (mean pooling)", "DNN", dict(embedding_dim=8, hidden_units=[64])),
                                ("SUAN", "SUAN", common),
                                ("SUAN without time bias", "SUAN", dict(common, use_time_bias=False))]:
            torch.manual_seed(0)
            start = time.time()
            model = fit(create(name, fmap, **kw), train, epochs=6, lr=1e-2, batch_size=64)
            result[label] = auc(model, test)
            print(f"{label}: test AUC {result[label]:.4f} ({time.time() - start:.1f} s)")
    assert result["SUAN"] > 0.8
    assert result["SUAN"] > result["DNN (mean pooling)"] + 0.15
    assert result["SUAN"] > result["SUAN without time bias"] + 0.15
