import pytest
import torch

from ctrlab.layers import SequencePooling, sequence_mask


def _data():
    ids = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0], [7, 0, 2, 0]])
    emb = torch.randn(3, 4, 2)
    return ids, emb, sequence_mask(ids)


def test_mask_is_nonzero_ids():
    ids, _, mask = _data()
    assert mask.tolist() == [[True, True, False, False], [False] * 4, [True, False, True, False]]


def test_mean_ignores_padding_and_empty_is_zero():
    ids, emb, mask = _data()
    out = SequencePooling("mean")(emb, mask)
    torch.testing.assert_close(out[0], (emb[0, 0] + emb[0, 1]) / 2)
    torch.testing.assert_close(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], (emb[2, 0] + emb[2, 2]) / 2)
    # changing padded positions changes nothing
    emb2 = emb.clone()
    emb2[~mask] = 1e3
    torch.testing.assert_close(SequencePooling("mean")(emb2, mask), out)


def test_sum_and_max():
    ids, emb, mask = _data()
    torch.testing.assert_close(SequencePooling("sum")(emb, mask)[2], emb[2, 0] + emb[2, 2])
    emb2 = emb.clone()
    emb2[~mask] = 1e3  # padding must never win the max
    out = SequencePooling("max")(emb2, mask)
    torch.testing.assert_close(out[0], torch.maximum(emb[0, 0], emb[0, 1]))
    torch.testing.assert_close(out[1], torch.zeros(2))


def test_unknown_mode():
    with pytest.raises(ValueError, match="median"):
        SequencePooling("median")
