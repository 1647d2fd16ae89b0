"""CTRModel's regularizers: FuxiCTR's forms (a number, "l2(x)", "l1(x)", "l1_l2(a, b)")."""
import pytest
import torch

from ctrlab.models import create, get_model_class, list_models
from ctrlab.models.base import parse_regularizer


@pytest.mark.parametrize("value, want", [
    (None, (0.0, 0.0)), (0, (0.0, 0.0)), (0.05, (0.0, 0.05)), ("1.e-2", (0.0, 0.01)),
    ("l2(1.e-2)", (0.0, 0.01)), (" L2( 0.5 ) ", (0.0, 0.5)), ("l1(0.1)", (0.1, 0.0)),
    ("l1_l2(0.1, 0.2)", (0.1, 0.2)),
])
def test_parse_regularizer(value, want):
    assert parse_regularizer(value, "embedding_regularizer") == want


@pytest.mark.parametrize("bad", ["l3(0.1)", "l2(x)", "l1_l2(0.1)", "abc", -0.1, "l2(-1)", True, [0.1]])
def test_bad_regularizer_names_the_parameter(bad):
    with pytest.raises(ValueError, match="net_regularizer"):
        parse_regularizer(bad, "net_regularizer")


def test_string_regularizers_in_create_apply_fuxictrs_penalties(cat_map):
    """Issue 14.15: ``create(..., embedding_regularizer="l2(1.e-2)")`` was a ValueError (float()
    of the string). FuxiCTR's penalty: ``(λ/p)·‖w‖_p^p`` per parameter (L1: ``λ·Σ|w|``, L2:
    ``λ/2·Σw²``), embedding tables for ``embedding_regularizer``, the rest for ``net_regularizer``."""
    m = create("DNN", cat_map, embedding_dim=4, hidden_units=[5],
               embedding_regularizer="l2(1.e-2)", net_regularizer="l1_l2(0.1, 0.2)")
    emb = m.embedding_parameters()
    net = m.net_parameters()
    want = sum(0.01 / 2 * p.pow(2).sum() for p in emb)
    want = want + sum(0.1 * p.abs().sum() + 0.2 / 2 * p.pow(2).sum() for p in net)
    torch.testing.assert_close(m.regularization(), want)
    plain = create("DNN", cat_map, embedding_dim=4, hidden_units=[5], embedding_regularizer=0.01)
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(plain.regularization(), sum(0.01 / 2 * p.pow(2).sum() for p in emb))
    with pytest.raises(ValueError, match="embedding_regularizer"):
        create("DNN", cat_map, embedding_regularizer="l2(oops)")


@pytest.mark.parametrize("name", sorted(set(list_models())))
@pytest.mark.parametrize("base_rate", [0.002, 0.3])
def test_init_output_bias_makes_the_untrained_mean_prediction_the_base_rate(mixed_map, name, base_rate):
    """Issue 15.1: every registered model's output bias can start at the base rate's log-odds (found
    generically, no per-model code), so an untrained model predicts the base rate on average; only
    the output bias changes (DCNv3: its two streams' biases)."""
    from .synthetic import random_batch, with_labels_for

    mixed_map = with_labels_for(get_model_class(name), mixed_map)
    kwargs = {"din_sequence_field": "hist", "din_target_field": "item"} if name.upper() == "DIN" else {}
    if name == "OptInter":  # the map has no cross features, which memorize (and so the search) needs
        kwargs = {"pair_methods": "factorize"}
    m = create(name, mixed_map, **kwargs)
    batch = random_batch(mixed_map, batch_size=64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    changed = m.init_output_bias(batch, base_rate)
    assert m.training  # the mode it was in
    m.eval()
    assert m.predict_proba(batch).double().mean().item() == pytest.approx(base_rate, rel=1e-4)
    after = {k: v.clone() for k, v in m.state_dict().items()}
    m.load_state_dict(before)
    assert abs(m.predict_proba(batch).mean().item() - base_rate) > 0.001  # not already there
    assert [k for k in after if not torch.equal(after[k], before[k])] == changed
    assert len(changed) == (2 if name.upper() in ("DCNV3", "FCN") else 1)


@pytest.mark.parametrize("name", ["LR", "DeepFM", "DCNv2"])
def test_shrink_numeric_init_keeps_large_inputs_from_dominating_the_first_logits(mixed_map, name):
    """Issue 15.1: Xavier-initialised numeric vectors times log-count inputs (~7) gave criteo_head10k's
    untrained DeepFM logits with standard deviation 18; shrunk, the numeric terms start as small as
    the embedding rows' (N(0, 1e-4²)) and each field's vector is divided by its input's RMS."""
    from .synthetic import random_batch

    batch = random_batch(mixed_map, batch_size=256)
    batch["num"] = torch.randn(256, 2) * torch.tensor([7.0, 0.5])  # one large input, one small
    no_num = {**batch, "num": torch.zeros_like(batch["num"])}
    m = create(name, mixed_map)
    m.eval()

    def numeric_part() -> float:  # how far the numeric inputs move the logits
        return (m(batch)["logit"] - m(no_num)["logit"]).abs().mean().item()

    before = numeric_part()
    assert before > 0.5
    tables = [mod.numeric for mod in m.modules() if isinstance(getattr(mod, "numeric", None), torch.nn.Embedding)]
    assert m.shrink_numeric_init([7.0, 0.5]) == 2 * len(tables) > 0  # (DeepFM: its LR part's table too)
    assert numeric_part() < 1e-3 * before
    for table in tables:
        assert table.weight[0].abs().max().item() < 5e-4 / 7 and table.weight[1].abs().max().item() < 5e-4
