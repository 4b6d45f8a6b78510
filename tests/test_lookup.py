"""momos.lookup: a Linear's product with a mosaic weight from the motifs, and its use in compact models."""

import pytest
import torch
from torch.nn import functional as F

import momos
from momos import lookup
from momos.blocks import layout_of, to_blocks
from momos.compact import MosaicWeight, MotifTable, lookup_pays
from momos.models import MLP
from momos.scales import multiply


def weight_of(motifs, rows, exponents=None):
    """The dense ``(out, n*s)`` weight of ``rows`` ``(out, n)`` indices, times ``2**exponents``."""
    weight = motifs[rows.long()].reshape(rows.shape[0], -1)
    return weight if exponents is None else multiply(weight, exponents)


def bound(x, weight, bias):
    """The float32 summation error bound ``in x eps x (|x| @ |W|^T + |bias|)``, in float64."""
    return x.shape[-1] * torch.finfo(torch.float32).eps * (F.linear(x.double().abs(), weight.double().abs())
                                                           + bias.double().abs())

KERNELS = lookup   # whose numba kernels and PyTorch path the conftest fixture ``path`` runs


@pytest.mark.parametrize("normalize", ["none", "tensor", "channel"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_linear_is_the_dense_product_up_to_summation_order(path, normalize, dtype):
    g = torch.Generator().manual_seed(0)
    out, n, s, k = 37, 6, 4, 200
    motifs = torch.randn(k, s, generator=g)
    rows = torch.randint(0, k, (out, n), generator=g).to(dtype)
    exponents = {"none": None, "tensor": torch.tensor(-3, dtype=torch.int16),
                 "channel": torch.randint(-4, 5, (out,), generator=g).to(torch.int16)}[normalize]
    weight = weight_of(motifs, rows, exponents)
    x, bias = torch.randn(2, 3, n * s, generator=g), torch.randn(out, generator=g)
    y = lookup.linear(x, motifs, rows.T.contiguous(), exponents, bias)
    assert y.shape == (2, 3, out) and y.dtype == torch.float32
    exact = F.linear(x.double(), weight.double(), bias.double())
    assert ((y.double() - exact).abs() <= bound(x, weight, bias)).all()
    assert torch.allclose(y, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_linear_pads_the_last_chunk_of_each_row_with_zeros(path):
    g = torch.Generator().manual_seed(1)
    motifs = torch.randn(9, 4, generator=g)
    rows = torch.randint(0, 9, (5, 3), generator=g)
    weight = weight_of(motifs, rows)[:, :10]   # in = 10: the last block of each row holds 2 values
    x = torch.randn(4, 10, generator=g)
    y = lookup.linear(x, motifs, rows.T.contiguous())
    exact = F.linear(x.double(), weight.double())
    assert ((y.double() - exact).abs() <= bound(x, weight, torch.zeros(5))).all()


def test_linear_sums_in_float64_for_float64_inputs(path):
    g = torch.Generator().manual_seed(2)
    motifs = torch.randn(50, 8, generator=g, dtype=torch.float64)
    rows = torch.randint(0, 50, (16, 4), generator=g)
    x = torch.randn(3, 32, generator=g, dtype=torch.float64)
    y = lookup.linear(x, motifs, rows.T.contiguous())
    assert y.dtype == torch.float64
    assert torch.allclose(y, F.linear(x, weight_of(motifs, rows)), rtol=1e-12, atol=1e-12)


def test_linear_refuses_indices_that_do_not_cover_the_inputs():
    with pytest.raises(ValueError, match="do not cover"):
        lookup.linear(torch.randn(1, 12), torch.randn(5, 4), torch.zeros(4, 7, dtype=torch.uint8))


@pytest.mark.parametrize("shape, tile, per_row, aligned", [
    ((6, 8), None, False, True),     # runs, 8 % 4 == 0
    ((6, 10), None, False, False),   # runs cross rows
    ((6, 10), None, True, True),     # runs cut row by row, padded per row
    ((6, 10), (1, 4), False, True),  # tiles of one row
    ((6, 8), (2, 2), False, False),  # tiles of two rows
    ((2, 3, 4), None, False, False),  # not a matrix
])
def test_row_indices_only_where_every_row_holds_its_own_blocks(shape, tile, per_row, aligned):
    weight = torch.randn(shape)
    blocks, layout = to_blocks([weight], 4, tile_shape=tile, per_row=per_row)
    rows = lookup.row_indices(torch.arange(len(blocks)), layout)
    assert (rows is not None) == aligned
    if aligned:   # row i's blocks, in order, rebuild row i
        assert torch.equal(blocks[rows].reshape(shape[0], -1)[:, :shape[1]], weight)


def compact_mlp(lookup_on: bool, normalize: str = "none"):
    """A projected 32-48-3 MLP (a codebook of 4 motifs) and its compact twin."""
    config = momos.MoMosConfig(block_size=4, num_motifs=4, normalize=normalize, parameters="matrices", seed=0)
    torch.manual_seed(0)
    model = MLP(32, 3, hidden=(48,)).eval()
    stats = momos.project_(model, config, warn_relative_error=None)
    twin = MLP(32, 3, hidden=(48,)).eval()
    twin.load_state_dict(model.state_dict())
    return model, momos.compact_(twin, config, scales=stats.scales, lookup=lookup_on)


@pytest.mark.parametrize("normalize", ["none", "channel"])
def test_compact_lookup_matches_the_dense_mosaic_without_gradients(normalize, monkeypatch):
    if lookup.numba is None:
        pytest.skip("the compact Linear uses the lookup only with numba")
    model, compact = compact_mlp(True, normalize)
    calls = []
    monkeypatch.setattr(lookup, "linear", lambda *a: calls.append(1) or lookup_linear(*a))
    x = torch.randn(1, 32)
    with torch.no_grad():
        y, expected = compact(x), model(x)
    assert len(calls) == 1   # the hidden layer (B x k = 4 <= 48 / 2), not the output layer (out 3)
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-6)


lookup_linear = lookup.linear


def test_compact_lookup_is_not_used_where_gradients_or_batches_need_the_weight(monkeypatch):
    model, compact = compact_mlp(True)
    monkeypatch.setattr(lookup, "linear", lambda *a: pytest.fail("lookup used"))
    x = torch.randn(1, 32)
    assert torch.equal(compact(x), model(x))   # gradients recorded: bit for bit
    with torch.no_grad():
        big = torch.randn(int(momos.compact.LOOKUP_TABLE_RATIO * 48 / 4) + 1, 32)   # B x k > ratio x 48 rows
        assert torch.equal(compact(big), model(big))


def test_compact_without_lookup_and_after_dense_is_bit_identical(monkeypatch):
    monkeypatch.setattr(lookup, "linear", lambda *a: pytest.fail("lookup used"))
    x = torch.randn(1, 32)
    model, compact = compact_mlp(False)
    with torch.no_grad():
        assert torch.equal(compact(x), model(x))
    model, compact = compact_mlp(True)
    momos.dense_(compact)
    assert "forward" not in compact[1].__dict__
    with torch.no_grad():
        assert torch.equal(compact(x), model(x))


def test_lookup_pays_only_for_small_tables():
    out, x = 40, torch.randn(2, 12)
    table = MotifTable(torch.randn(int(momos.compact.LOOKUP_TABLE_RATIO * out / len(x)), 4))
    weight = MosaicWeight(table, torch.zeros(out * 3, dtype=torch.int16), layout_of([torch.empty(out, 12)], 4))
    # B x k = ratio x out
    with torch.no_grad():
        assert lookup_pays(weight, x) == (lookup.numba is not None)
        assert not lookup_pays(weight, torch.randn(len(x) + 1, 12))
        assert not lookup_pays(weight, x.double())
        wide = MosaicWeight(MotifTable(torch.randn(len(table.motifs) + 1, 4)), weight.indices, weight.layout)
        assert not lookup_pays(wide, x)
    assert not lookup_pays(weight, x)   # gradients recorded


def test_compact_lookup_follows_indices_loaded_in_place():
    if lookup.numba is None:
        pytest.skip("the compact Linear uses the lookup only with numba")
    _, compact = compact_mlp(True)
    x = torch.randn(1, 32)
    with torch.no_grad():
        compact(x)   # caches the chunk-major indices
        weight = compact[1].parametrizations.weight[0]
        weight.indices.copy_(weight.indices.flip(0))
        assert torch.allclose(compact(x), F.linear(torch.relu(F.linear(x, compact[1].weight, compact[1].bias)),
                                                   compact[3].weight, compact[3].bias), rtol=1e-5, atol=1e-6)
