"""The README's picture of the idea: blocks, motifs, indices, mosaic."""

import pytest
import torch
from torch import nn

from momos import MoMosConfig, project_
from momos.figures import plot_mosaic

CONFIG = MoMosConfig(block_size=4, num_motifs=4, force_zero=True)


@pytest.fixture
def weight():
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.filterwarnings("ignore:the projection moved")   # four motifs are coarse on purpose
def test_the_panels_show_the_projection(weight):
    figure = plot_mosaic(weight, CONFIG)
    layer = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    stats = project_(layer, CONFIG)                    # the same seed: the same motifs and indices
    original, motifs, index_map, mosaic = figure.axes
    assert torch.equal(torch.as_tensor(original.images[0].get_array()), weight)
    assert torch.equal(torch.as_tensor(motifs.images[0].get_array()), stats.motifs)
    assert [int(text.get_text()) for text in index_map.texts] == stats.assignments.tolist()
    assert torch.equal(torch.as_tensor(mosaic.images[0].get_array()), layer.weight.detach())


def test_only_rows_of_whole_blocks_are_drawn(weight):
    with pytest.raises(ValueError, match="multiple of block_size 4"):
        plot_mosaic(weight[:, :14], CONFIG)
    with pytest.raises(ValueError, match="runs of raw values"):
        plot_mosaic(weight, MoMosConfig(block_size=4, num_motifs=4, tile_shape=(2, 2)))
