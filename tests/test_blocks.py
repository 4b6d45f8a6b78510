import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from momos.blocks import block_dtype, from_blocks, gather_rows, layout_of, to_blocks

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
    patterns = {tuple(cols.tolist()): rows.tolist() for cols, rows in layout.padding_patterns()}
    assert patterns == {(0,): [1], (0, 1, 2): [2]}


def test_blocks_never_span_tensors():
    blocks, _ = to_blocks([torch.full((3,), 1.0), torch.full((3,), 2.0)], 2)
    assert blocks.tolist() == [[1, 1], [1, 0], [2, 2], [2, 0]]


def test_from_blocks_checks_shape():
    _, layout = to_blocks([torch.randn(6)], 3)
    with pytest.raises(ValueError, match="shape"):
        from_blocks(torch.zeros(3, 3), layout)


@settings(max_examples=80, deadline=None)
@given(shapes=shapes, block_size=st.integers(1, 9), tiled=st.booleans())
def test_round_trip_property(shapes, block_size, tiled):
    tile_shape = (block_size, 1) if tiled and block_size % 2 else ((2, block_size // 2) if tiled else None)
    tensors = [torch.randn(shape) for shape in shapes]
    blocks, layout = to_blocks(tensors, block_size, tile_shape=tile_shape)
    assert layout.num_weights == sum(t.numel() for t in tensors)
    mask = layout.valid_mask()
    assert int(mask.sum()) == layout.num_weights
    assert blocks[~mask].eq(0).all()
    assert layout == layout_of(tensors, block_size, tile_shape)
    for t, b in zip(tensors, from_blocks(blocks, layout)):
        assert torch.equal(t, b)
    padded_rows = sorted(r for _, rows in layout.padding_patterns() for r in rows.tolist())
    assert padded_rows == (~mask).any(1).nonzero().flatten().tolist()


def test_tiles_are_spatial_kernels():
    kernel = torch.randn(4, 2, 3, 3)
    blocks, layout = to_blocks([kernel, torch.randn(4)], 9, tile_shape=(3, 3))
    assert layout.block_counts == (8, 1)  # one 3x3 tile per (out, in) pair; the bias is a run
    assert torch.equal(blocks[:8], kernel.reshape(8, 9))
    assert torch.equal(from_blocks(blocks, layout)[0], kernel)


def test_tiles_pad_both_trailing_dimensions():
    weight = torch.arange(1.0, 16.0).reshape(3, 5)
    blocks, layout = to_blocks([weight], 4, tile_shape=(2, 2))
    assert layout.block_counts == (6,)
    assert blocks[0].tolist() == [1, 2, 6, 7]
    assert blocks[2].tolist() == [5, 0, 10, 0]   # right edge
    assert blocks[5].tolist() == [15, 0, 0, 0]   # corner
    patterns = {tuple(c.tolist()): r.tolist() for c, r in layout.padding_patterns()}
    assert patterns == {(0, 2): [2], (0, 1): [3, 4], (0,): [5]}


def test_bad_tile_shape():
    with pytest.raises(ValueError, match="tile shape"):
        layout_of([torch.randn(4, 4)], 4, (3, 3))


def test_block_dtype_promotes_with_a_float32_floor():
    # projection and the file format search and decompose half-precision weights in float32
    assert block_dtype([torch.float16, torch.bfloat16]) == torch.float32
    assert block_dtype([torch.float16, torch.float64]) == torch.float64
    assert block_dtype([]) == torch.float32
    # to_blocks without a dtype keeps the tensors' own promoted dtype
    assert block_dtype([torch.float16], at_least=None) == torch.float16
    assert to_blocks([torch.ones(3, dtype=torch.float16)], 2)[0].dtype == torch.float16


@pytest.mark.parametrize("dtype,s", [(torch.float32, 2), (torch.float32, 4), (torch.float32, 3),
                                     (torch.float16, 4), (torch.float64, 2)])
@pytest.mark.parametrize("index_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_gather_rows_is_indexing_bit_for_bit(dtype, s, index_dtype):
    bits = torch.randint(-2**15, 2**15, (7, s * dtype.itemsize // 2), dtype=torch.int16,
                         generator=torch.Generator().manual_seed(0))
    motifs = bits.view(dtype)   # any bit pattern: NaN payloads, -0.0, subnormals
    indices = torch.tensor([6, 0, 3, 3, 5, 1], dtype=index_dtype)
    got = gather_rows(motifs, indices)
    assert got.dtype == dtype and got.shape == (6, s)
    assert torch.equal(got.view(torch.int16), motifs[indices.long()].view(torch.int16))
