"""FGCNN feature generation: heights (ceil pooling), output shapes, locality, recombination wiring."""
import math

import pytest
import torch

from ctrlab.layers.feature_generation import FeatureGenerationCNN


def test_criteo_heights_and_new_feature_count():
    """Sheet: F = 39, p = 2, r = 3, 4 layers -> heights 20, 10, 5, 3 -> N_new = 114."""
    gen = FeatureGenerationCNN(39, 4, channels=[3, 4, 5, 6], kernel_heights=9, pooling_sizes=2, recombined_channels=3)
    assert gen.heights == [20, 10, 5, 3]
    assert gen.num_new_per_layer == [60, 30, 15, 9] and gen.num_new_features == 114
    emb = torch.randn(7, 39, 4)
    maps = gen.conv_maps(emb)
    assert [tuple(m.shape) for m in maps] == [(7, 3, 20, 4), (7, 4, 10, 4), (7, 5, 5, 4), (7, 6, 3, 4)]
    new = gen(emb)
    assert new.shape == (7, 114, 4)
    assert new.abs().max() <= 1  # tanh outputs


@pytest.mark.parametrize("F,p,k", [(10, 3, 3), (7, 2, 4), (5, 4, 5), (1, 2, 3)])
def test_ceil_pooling_and_same_padding(F, p, k):
    gen = FeatureGenerationCNN(F, 2, channels=[2, 3], kernel_heights=k, pooling_sizes=p, recombined_channels=[1, 2])
    h1 = math.ceil(F / p)
    h2 = math.ceil(h1 / p)
    assert gen.heights == [h1, h2]
    out = gen(torch.randn(3, F, 2))
    assert out.shape == (3, h1 * 1 + h2 * 2, 2)
    # the convolution alone keeps the field height ("same" padding, even k included)
    conv_only = gen.convs[0][:2]
    assert conv_only(torch.randn(3, 1, F, 2)).shape == (3, 2, F, 2)


def test_kernel_never_mixes_embedding_coordinates_and_is_local():
    F, D, k = 9, 5, 3
    gen = FeatureGenerationCNN(F, D, channels=[4], kernel_heights=k, pooling_sizes=1, recombined_channels=1,
                               batch_norm=False)
    conv = gen.convs[0][1]
    assert conv.kernel_size == (k, 1)
    pad_conv = gen.convs[0][:2]
    x = torch.randn(2, 1, F, D)
    base = pad_conv(x)
    row, reach = 4, (k - 1) // 2
    for f in range(F):
        y = x.clone()
        y[:, 0, f, :] += 1.0
        changed = (pad_conv(y) - base)[:, :, row].abs().amax() > 1e-6
        assert bool(changed) == (abs(f - row) <= reach), f
    # perturbing one embedding coordinate changes that coordinate's column only
    y = x.clone()
    y[:, 0, :, 2] += 1.0
    diff = (pad_conv(y) - base).abs().amax(dim=(0, 1, 2))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0)


def test_next_conv_reads_the_pooled_map_and_recombination_sizes():
    F, D = 8, 3
    gen = FeatureGenerationCNN(F, D, channels=[2, 5], kernel_heights=[3, 3], pooling_sizes=[2, 2],
                               recombined_channels=[4, 1])
    assert gen.convs[1][1].in_channels == 2  # conv 2 reads conv 1's pooled map (2 channels)
    rec1, rec2 = gen.recombine[0][0], gen.recombine[1][0]
    assert (rec1.in_features, rec1.out_features) == (2 * 4 * D, 4 * 4 * D)
    assert (rec2.in_features, rec2.out_features) == (5 * 2 * D, 1 * 2 * D)
    emb = torch.randn(6, F, D)
    maps = gen.conv_maps(emb)
    torch.testing.assert_close(gen.convs[1](maps[0]), maps[1])
    new = gen(emb)
    torch.testing.assert_close(new[:, :16], gen.recombine[0](maps[0].flatten(1)).view(6, 16, D))
    torch.testing.assert_close(new[:, 16:], gen.recombine[1](maps[1].flatten(1)).view(6, 2, D))


def test_argument_validation():
    with pytest.raises(ValueError, match="kernel_heights"):
        FeatureGenerationCNN(5, 2, channels=[2, 3], kernel_heights=[3])
    with pytest.raises(ValueError, match="at least one"):
        FeatureGenerationCNN(5, 2, channels=[])
