"""CTRModel's regularizers: FuxiCTR's forms (a number, "l2(x)", "l1(x)", "l1_l2(a, b)")."""
import pytest
import torch

from ctrlab.models import create
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
