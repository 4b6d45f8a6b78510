"""momos.packing: block indices in the bits their codebook needs, and the rows they select."""

import pytest
import torch

from momos import packing
from momos.packing import IndexFormat, gather, index_dtype, index_format, pack, unpack

BOUNDARIES = [1, 2, 256, 257, 512, 513, 1024, 1025, 4096, 4097, 2 ** 15 + 1, 2 ** 16, 2 ** 16 + 1,
              251_781, 2 ** 20 + 1, 2 ** 24, 2 ** 24 + 1]

KERNELS = packing   # whose numba kernels and PyTorch path the conftest fixture ``path`` runs


def test_formats_follow_the_table_of_the_module():
    assert [index_format(k) for k in (1, 256, 257, 1025, 4096, 4097, 2 ** 16, 2 ** 16 + 1, 251_781, 2 ** 24,
                                      2 ** 24 + 1, 2 ** 31 + 1)] == [
        IndexFormat(torch.uint8, 0), IndexFormat(torch.uint8, 0), IndexFormat(torch.uint8, 1),
        IndexFormat(torch.uint8, 4), IndexFormat(torch.uint8, 4), IndexFormat(torch.uint16, 0),
        IndexFormat(torch.uint16, 0), IndexFormat(torch.uint16, 1), IndexFormat(torch.uint16, 2),
        IndexFormat(torch.uint16, 8), IndexFormat(torch.int32, 0), IndexFormat(torch.int64, 0)]
    assert index_format(251_781).bits == 18
    with pytest.raises(ValueError, match="at least one motif"):
        index_format(0)


@pytest.mark.parametrize("k", BOUNDARIES)
@pytest.mark.parametrize("m", [1, 7, 8, 1001])
def test_pack_then_unpack_gives_the_indices_back(k, m):
    indices = torch.randint(k, (m,), generator=torch.Generator().manual_seed(k))
    indices[0] = k - 1   # the largest index uses every bit
    low, high = pack(indices, k)
    fmt = index_format(k)
    assert low.dtype == fmt.dtype and len(low) == m
    assert (high is None) == (fmt.high_bits == 0)
    if high is not None:
        assert high.dtype == torch.uint8 and len(high) == -(-m * fmt.high_bits // 8)
    assert torch.equal(unpack(low, high, k), indices)


@pytest.mark.parametrize("k", [3, 300, 4096, 40_000, 70_000, 251_781])
@pytest.mark.parametrize("s,dtype", [(4, torch.float32), (2, torch.float32), (3, torch.float32),
                                     (2, torch.float64), (8, torch.float32)])
def test_gather_selects_the_rows_bit_for_bit(path, k, s, dtype):
    generator = torch.Generator().manual_seed(0)
    motifs = torch.randn(k, s, generator=generator, dtype=dtype)
    motifs[0, 0] = float("nan")   # copied, not computed: every bit survives, NaN payloads too
    indices = torch.randint(k, (777,), generator=generator)
    indices[:2] = torch.tensor([0, k - 1])
    got = gather(motifs, *pack(indices, k))
    assert got.dtype == dtype and got.shape == (777, s)
    assert torch.equal(got.view(torch.uint8), motifs[indices].view(torch.uint8))


def test_gather_reads_plain_indices_of_any_dtype(path):
    motifs = torch.randn(40_000, 4)
    indices = torch.tensor([0, 39_999, 32_767, 32_768, 5])
    for dtype in (torch.uint16, torch.int32, torch.int64):
        assert torch.equal(gather(motifs, indices.to(dtype), None), motifs[indices])


def test_eighteen_bits_cost_a_little_over_half_of_an_int32():
    low, high = pack(torch.zeros(1000, dtype=torch.long), 251_781)
    assert low.numel() * low.element_size() + high.numel() == 2250


def test_index_dtype_is_the_smallest_that_holds_k_unpacked():
    assert [index_dtype(k) for k in (1, 256, 257, 2 ** 15, 2 ** 15 + 1)] == \
        [torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32]
