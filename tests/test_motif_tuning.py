"""MosaicParameters: the gradient of the motif table is the chain rule through scale x motifs[index]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import momos
from momos.blocks import from_blocks, layout_of
from momos.motif_tuning import MosaicParameters
from momos.scales import exponents_of, multiply


@pytest.mark.parametrize("config", [
    momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel"),
    momos.MoMosConfig(block_size=3, capacity=0.1, force_zero=False),        # padded blocks
    momos.MoMosConfig(block_size=4, capacity=0.5, scope="per_tensor", normalize="tensor", force_zero=False),
    momos.MoMosConfig(block_size=4, num_motifs=6, tile_shape=(2, 2)),
])
def test_routed_gradients_equal_autograd_through_the_motif_table(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Conv1d(1, 1, 1), nn.Linear(10, 3))
    model[2] = nn.Linear(10, 10)
    stats = momos.project_(model, config, warn_relative_error=None, keep_nonzero=False)
    mosaic = MosaicParameters(model, config, stats)
    x = torch.randn(5, 6)
    loss = model(x).square().sum()
    loss.backward()
    mosaic.route_gradients_()

    # the same loss as a function of the motif table, differentiated by autograd
    motifs = stats.motifs.detach().clone().requires_grad_(True)
    params = mosaic.params
    per_row = config.normalize == "channel"
    layout = layout_of([p.detach() for p in params], config.block_size, config.tile_shape, per_row)
    values = from_blocks(motifs[stats.assignments], layout)
    if stats.scales is not None:
        values = [multiply(v, exponents_of(s)) for v, s in zip(values, stats.scales)]
    weights = dict(zip(stats.parameter_names, values))
    out = torch.func.functional_call(model, {**dict(model.named_parameters()), **weights}, (x,))
    out.square().sum().backward()
    expected = motifs.grad.clone()
    if config.force_zero:
        expected[[c.motif_start for c in stats.codebooks]] = 0
    torch.testing.assert_close(mosaic.motifs.grad, expected)
    assert all(p.grad is None for p in params)


def test_writing_the_table_back_makes_an_exact_mosaic_of_the_new_motifs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    config = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    stats = momos.project_(model, config)
    mosaic = MosaicParameters(model, config, stats)
    with torch.no_grad():
        mosaic.motifs.add_(0.25)
    mosaic.write_()
    assert momos.is_mosaic(model, config, mosaic.codebook_motifs(), stats.scales)
    assert not momos.is_mosaic(model, config, stats.codebook_motifs(), stats.scales)
