"""The small post-LN transformer block: masked keys have no influence."""
import pytest
import torch

from ctrlab.layers.transformer import MultiHeadAttention, TransformerBlock


def test_attention_matches_torch_scaled_dot_product():
    att = MultiHeadAttention(8, 2)
    q, m = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    split = lambda x: x.view(3, -1, 2, 4).transpose(1, 2)  # noqa: E731
    ref = torch.nn.functional.scaled_dot_product_attention(split(att.W_q(q)), split(att.W_k(m)), split(att.W_v(m)),
                                                           attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(att(q, m, mask), att.W_o(ref.transpose(1, 2).reshape(3, 4, 8)))


def test_masked_tokens_do_not_change_the_real_ones():
    block = TransformerBlock(8, 2, dff=3).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    out = block(x, mask)
    y = x.clone()
    y[~mask] = 100.0
    torch.testing.assert_close(block(y, mask)[mask], out[mask])


def test_cross_attention_needs_a_condition():
    block = TransformerBlock(8, 2, cross=True)
    assert block(torch.randn(2, 3, 8), condition=torch.randn(2, 4, 8)).shape == (2, 3, 8)
    with pytest.raises(ValueError, match="condition"):
        block(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(8, 3)
