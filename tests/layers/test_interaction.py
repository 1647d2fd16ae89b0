import itertools

import torch

from ctrlab.layers import CrossNetV2, FactorizationMachine, InnerProducts


def test_fm_equals_bruteforce_pairwise_sum():
    emb = torch.randn(16, 7, 5, dtype=torch.float64)
    out = FactorizationMachine()(emb)
    brute = sum((emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(7), 2))
    assert out.shape == (16, 1)
    torch.testing.assert_close(out[:, 0], brute, atol=1e-6, rtol=0)


def test_inner_products_order_and_values():
    emb = torch.randn(3, 4, 2)
    ip = InnerProducts(4)
    out = ip(emb)
    assert out.shape == (3, ip.output_dim) == (3, 6)
    expected = torch.stack([(emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(4), 2)], 1)
    torch.testing.assert_close(out, expected)


def test_matrix_cross_matches_recurrence_and_param_count():
    d, L = 6, 3
    net = CrossNetV2(d, L)
    assert sum(p.numel() for p in net.parameters()) == L * (d * d + d)
    x0 = torch.randn(4, d)
    x = x0
    for lin in net.cross:
        x = x0 * (x @ lin.weight.T + lin.bias) + x
    torch.testing.assert_close(net(x0), x)
    # zero weights and biases -> x_L = x0; zero layers -> identity
    for lin in net.cross:
        torch.nn.init.zeros_(lin.weight)
    torch.testing.assert_close(net(x0), x0)
    assert torch.equal(CrossNetV2(d, 0)(x0), x0)


def test_low_rank_mixture_matches_explicit_experts():
    d, L, r, E = 5, 2, 3, 4
    net = CrossNetV2(d, L, low_rank=r, num_experts=E)
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
    assert sum(p.numel() for p in net.parameters()) == L * (E * (2 * d * r + r * r) + d) + E * d
    x0 = torch.randn(3, d)
    x = x0
    for l in range(L):
        g = torch.softmax(x @ net.gate.weight.T, dim=-1)  # (B, E)
        mix = 0
        for e in range(E):
            V, C, U = net.V[l][e], net.C[l][e], net.U[l][e]
            expert = x0 * (torch.tanh(C @ torch.tanh(V.T @ x.T)).T @ U.T + net.bias[l])
            mix = mix + g[:, e:e + 1] * expert
        x = mix + x
    torch.testing.assert_close(net(x0), x)
