"""InfoNCE."""

import pytest
import torch
import torch.nn.functional as F

from ctrlab.layers.contrastive import info_nce


def test_matches_the_formula_by_hand():
    a, p = torch.randn(3, 5), torch.randn(3, 5)
    sim = F.normalize(a, dim=1) @ F.normalize(p, dim=1).T / 0.1
    want = -sum(sim[i, i] - torch.logsumexp(sim[i], 0) for i in range(3)) / 3
    torch.testing.assert_close(info_nce(a, p, 0.1), want)


def test_minimal_for_matched_pairs():
    """Matched (identical, orthogonal) pairs give a near-zero loss; the same vectors mismatched give a large one."""
    a = torch.eye(4, 6)
    matched = info_nce(a, a, 0.05)
    assert matched < 1e-6
    assert info_nce(a, a.roll(1, 0), 0.05) > 10
    x = torch.randn(8, 6)
    assert info_nce(x, x, 0.05) < info_nce(x, torch.randn(8, 6), 0.05)


def test_training_decreases_it():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    p = torch.randn(16, 8, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    first = info_nce(a, p, 0.05).item()
    for _ in range(50):
        loss = info_nce(a, p, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_one_row_has_no_negatives():
    a = torch.randn(1, 4, requires_grad=True)
    loss = info_nce(a, torch.randn(1, 4))
    assert loss.item() == 0
    loss.backward()  # still part of the graph
    assert torch.all(a.grad == 0)
    assert info_nce(torch.randn(2, 4), torch.randn(2, 4)).item() > 0
    with pytest.raises(ValueError, match="one shape"):
        info_nce(torch.randn(2, 4), torch.randn(3, 4))
