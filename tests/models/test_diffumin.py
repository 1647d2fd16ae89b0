"""DiffuMIN: errors, determinism, padding, the loss terms, and the planted multi-interest task."""
import time

import numpy as np
import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create, default_hparams
from ctrlab.models.diffumin import DiffuMIN

from .synthetic import auc, fit, random_batch, single_thread, take

SMALL = dict(embedding_dim=8, dnn_hidden_units=[16], short_seq_len=3)


def _batch(fmap, batch_size=16, seed=0):
    """Random ids, real candidates, some empty and some short histories."""
    b = random_batch(fmap, batch_size=batch_size, seed=seed)
    b["cat"] = b["cat"].clamp(min=1)
    b["seq:hist"][:2] = 0
    b["seq:hist"][2, :-1] = 0
    return b


def _spread(model):
    with torch.no_grad():  # trained-like scales: the N(0, 1e-4) embeddings make everything ~0
        model.embedding.embedding.weight.normal_()
    return model


def test_defaults_and_docs():
    hp = default_hparams("DiffuMIN")
    assert hp["num_channels"] == 4 and hp["n_layers"] == 2 and hp["num_heads"] == 2 and hp["dff_factor"] == 3
    assert hp["diffusion_steps"] == 1000 and hp["infer_timesteps"] == 10
    assert hp["beta_start"] == 1e-4 and hp["beta_end"] == 0.02 and hp["temperature"] == 0.05
    assert hp["diffusion_weight"] == 0.01 and hp["contrastive_weight"] == 0.001 and hp["top_k"] == 100
    assert hp["use_diffusion"] is True and hp["use_contrastive"] is True and hp["embedding_dim"] == 10
    for k in hp:
        assert k in DiffuMIN.__doc__, f"DiffuMIN docstring does not mention {k}"


def test_fields_are_inferred_and_bad_settings_are_named(mixed_map):
    m = create("DiffuMIN", mixed_map)  # hist shares item: the pair is found without params
    assert m.targets == ("item",) and m.sequences == ("hist",)
    with pytest.raises(ValueError, match="num_channels=5 > d=4"):
        create("DiffuMIN", mixed_map, embedding_dim=4, num_channels=5, num_heads=1)
    with pytest.raises(ValueError, match="use_contrastive"):
        create("DiffuMIN", mixed_map, use_diffusion=False)
    with pytest.raises(ValueError, match="infer_timesteps"):
        create("DiffuMIN", mixed_map, infer_timesteps=2000)
    with pytest.raises(ValueError, match="num_heads"):
        create("DiffuMIN", mixed_map, num_heads=3)
    two = FeatureMap.from_fields({"item": 11, "cate": 5}, sequences={"hist": (4, "item"), "chist": (4, "cate")})
    with pytest.raises(ValueError, match="one behaviour sequence"):
        create("DiffuMIN", two, target_field=["item", "cate"], sequence_field=["hist", "chist"])
    grouped = create("DiffuMIN", two, target_field=[["item", "cate"]], sequence_field=[["hist", "chist"]],
                     embedding_dim=4)  # a group: d = 2 x 4
    assert grouped.omie.dim == 8
    assert grouped(_batch_two(two))["logit"].shape == (8,)


def _batch_two(fmap):
    b = random_batch(fmap, batch_size=8)
    b["cat"] = b["cat"].clamp(min=1)
    return b


@pytest.mark.parametrize("kw", [{}, {"use_diffusion": False, "use_contrastive": False}])
def test_evaluation_is_deterministic_and_padding_free(mixed_map, kw):
    m = _spread(create("DiffuMIN", mixed_map, **SMALL, **kw))
    b = _batch(mixed_map)
    m.train()
    if kw == {}:  # training generation is stochastic...
        assert not torch.allclose(m(b)["logit"], m(b)["logit"])
    m.eval()  # ...evaluation is not: posterior means, no noise
    ref = m(b)["logit"]
    torch.testing.assert_close(m(b)["logit"], ref, rtol=0, atol=0)
    # more padding, and the other padding side, change nothing
    ids = b["seq:hist"]
    longer = dict(b, **{"seq:hist": torch.cat([torch.zeros(16, 5, dtype=torch.long), ids], 1)})
    torch.testing.assert_close(m(longer)["logit"], ref)
    post = torch.stack([torch.cat([r[r != 0], r[r == 0]]) for r in ids])
    assert not torch.equal(post, ids)
    torch.testing.assert_close(m(dict(b, **{"seq:hist": post}))["logit"], ref)


def test_short_term_summary_reads_the_most_recent_real_behaviours(mixed_map):
    m = _spread(create("DiffuMIN", mixed_map, **dict(SMALL, short_seq_len=2))).eval()
    b = _batch(mixed_map)
    b["seq:hist"][5] = torch.tensor([3, 4, 0, 5])  # "post"-like gap: the 2 most recent are 4 and 5
    t, h, mask = m.behaviours(b)
    ref = m.short_term(t, h, mask)[5]
    old = dict(b, **{"seq:hist": b["seq:hist"].clone()})
    old["seq:hist"][5, 0] = 9  # the oldest behaviour: not among the 2 most recent
    torch.testing.assert_close(m.short_term(*m.behaviours(old))[5], ref)
    new = dict(b, **{"seq:hist": b["seq:hist"].clone()})
    new["seq:hist"][5, 3] = 9
    assert not torch.allclose(m.short_term(*m.behaviours(new))[5], ref)


def test_loss_is_bce_plus_weighted_diffusion_and_contrastive_terms(mixed_map):
    m = create("DiffuMIN", mixed_map, **SMALL, diffusion_weight=0.5, contrastive_weight=0.25).train()
    b = _batch(mixed_map)
    out = m(b)
    assert out["diffusion_loss"] > 0 and out["contrastive_loss"] > 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], b["label"][:, 0])
    torch.testing.assert_close(m.task_loss(b, out), bce + 0.5 * out["diffusion_loss"] + 0.25 * out["contrastive_loss"])
    m.loss(b, out).backward()
    for part in (m.denoiser, m.project_extracted, m.project_generated, m.omie, m.short_blocks):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    assert m.denoiser.out.weight.grad.abs().sum() > 0  # the zero-initialised output layer learns
    m.eval()
    assert set(m(b)) == {"logit"}  # no extra terms at evaluation
    # a batch of one row: no negatives, the contrastive term is 0 and backward still works
    one = take(b, slice(3, 4))
    m.train()
    out = m(one)
    assert out["contrastive_loss"] == 0
    m.loss(one, out).backward()
    omie_only = create("DiffuMIN", mixed_map, **SMALL, use_diffusion=False, use_contrastive=False).train()
    assert set(omie_only(b)) == {"logit"} and not hasattr(omie_only, "denoiser")


def test_state_dict_roundtrip_through_safetensors(mixed_map):
    st = pytest.importorskip("safetensors.torch")
    a, c = (create("DiffuMIN", mixed_map, **SMALL) for _ in range(2))
    c.load_state_dict(st.load(st.save({k: v.contiguous() for k, v in a.state_dict().items()})))
    a.eval(), c.eval()
    b = _batch(mixed_map)
    torch.testing.assert_close(a(b)["logit"], c(b)["logit"])


# ---- planted multi-interest task -------------------------------------------------------------
def planted_multi_interest(n=4000, L=1000, n_cat=12, per_cat=5, seed=0):
    """Each user (row) has 2–3 of 12 latent categories; their history holds L/4..L behaviours drawn
    uniformly from those categories' items (5 items per category, the category never observed);
    the candidate is from one of them (label 1) or from another category (label 0), half and half."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((n, L), dtype=np.int64)
    item, y = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32)
    for i in range(n):
        cats = rng.choice(n_cat, size=rng.integers(2, 4), replace=False)
        length = rng.integers(L // 4, L + 1)
        hist[i, L - length:] = rng.choice(cats, size=length) * per_cat + rng.integers(0, per_cat, size=length) + 2
        y[i] = rng.random() < 0.5
        cand = rng.choice(cats) if y[i] else rng.choice(np.setdiff1d(np.arange(n_cat), cats))
        item[i] = cand * per_cat + rng.integers(0, per_cat) + 2
    fmap = FeatureMap.from_fields({"item": n_cat * per_cat + 2}, sequences={"hist": (L, "item")})
    batch = {"cat": torch.from_numpy(item)[:, None], "seq:hist": torch.from_numpy(hist),
             "label": torch.from_numpy(y)[:, None]}
    return fmap, take(batch, slice(0, 3000)), take(batch, slice(3000, None))


EPOCHS, BATCH = 6, 128


def test_planted_multi_interest_omie_beats_mean_pooling():
    """L = 1000. DNN mean-pools the history; OMIE (λ1 = λ2 = 0, no diffusion, no short-term
    summary) must beat it clearly; so must the full model (DMIG + CMIC on), whose AUC change
    against OMIE only is printed (the measurement the sheet asks for; at commit time OMIE only
    0.913, with DMIG + CMIC 0.909, DNN 0.815)."""
    fmap, train, test = planted_multi_interest()
    runs = {"DNN (mean pooling)": ("DNN", {"hidden_units": [64, 32]}),
            "OMIE only": ("DiffuMIN", {"use_diffusion": False, "use_contrastive": False}),
            "OMIE + DMIG + CMIC": ("DiffuMIN", {})}
    aucs = {}
    with single_thread():
        for label, (name, kw) in runs.items():
            if name == "DiffuMIN":
                kw = {"short_seq_len": 0, "dnn_hidden_units": [64, 32], **kw}
            torch.manual_seed(0)
            start = time.time()
            model = fit(create(name, fmap, embedding_dim=8, **kw), train, epochs=EPOCHS, batch_size=BATCH, lr=1e-2)
            aucs[label] = auc(model, test)
            print(f"{label}: test AUC {aucs[label]:.4f} ({time.time() - start:.1f}s)")
    print(f"DMIG + CMIC change: {aucs['OMIE + DMIG + CMIC'] - aucs['OMIE only']:+.4f}")
    assert aucs["OMIE only"] > aucs["DNN (mean pooling)"] + 0.03
    assert aucs["OMIE + DMIG + CMIC"] > aucs["DNN (mean pooling)"] + 0.03


def test_compress_leaves_the_training_only_projectors(mixed_map):
    """CMIC's projectors never run at prediction time: AFM has no statistics for them, so naming one
    is an error and the default layer choice (skip_unprofitable) keeps it."""
    from ctrlab.recipes.compress import compress_linear

    m = create("DiffuMIN", mixed_map, **SMALL)
    b = _batch(mixed_map, batch_size=64)
    with pytest.raises(ValueError, match="project_extracted.hidden.0"):
        compress_linear(m, {"project_extracted.hidden.0": 2}, "afm", [b])
    reports = compress_linear(m, {"project_extracted.hidden.0": 2, "mlp.hidden.0": 2}, "afm", [b],
                              skip_unprofitable=True)
    assert [r.name for r in reports] == ["mlp.hidden.0"]
