import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from momos.blocks import from_blocks, layout_of, to_blocks

shapes = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple), min_size=1, max_size=5)


def test_round_trip_odd_shapes_with_padding():
    tensors = [torch.randn(3, 2, 3, 3), torch.randn(5), torch.tensor(1.5), torch.randn(7, 1)]
    blocks, layout = to_blocks(tensors, 4)
    assert blocks.shape == (layout.num_blocks, 4)
    assert layout.block_counts == (14, 2, 1, 2)
    back = from_blocks(blocks, layout)
    for t, b in zip(tensors, back):
        assert b.shape == t.shape
        assert torch.equal(b, t)


def test_padding_is_zero_and_masked():
    blocks, layout = to_blocks([torch.ones(5), torch.ones(3)], 4)
    mask = layout.valid_mask()
    assert blocks[~mask].eq(0).all()
    assert blocks[mask].eq(1).all()
    assert mask.sum() == 8
    assert layout.padded_blocks() == [(1, 1), (2, 3)]


def test_blocks_never_span_tensors():
    blocks, _ = to_blocks([torch.full((3,), 1.0), torch.full((3,), 2.0)], 2)
    assert blocks.tolist() == [[1, 1], [1, 0], [2, 2], [2, 0]]


def test_from_blocks_checks_shape():
    _, layout = to_blocks([torch.randn(6)], 3)
    with pytest.raises(ValueError, match="shape"):
        from_blocks(torch.zeros(3, 3), layout)


@settings(max_examples=60, deadline=None)
@given(shapes=shapes, block_size=st.integers(1, 9))
def test_round_trip_property(shapes, block_size):
    tensors = [torch.randn(shape) for shape in shapes]
    blocks, layout = to_blocks(tensors, block_size)
    assert layout.num_weights == sum(t.numel() for t in tensors)
    assert int(layout.valid_mask().sum()) == layout.num_weights
    assert layout == layout_of(tensors, block_size)
    for t, b in zip(tensors, from_blocks(blocks, layout)):
        assert torch.equal(t, b)
