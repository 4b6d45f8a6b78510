"""The nearest-motif search: exact on every backend, ties to the lowest index, and the
approximate inverted file."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import momos
from momos import approximate, assign, kernels
from momos.approximate import build_inverted_file, nearest_motif_approximate
from momos.assign import nearest_motif, nearest_motif_ignoring_padding

needs_numba = pytest.mark.skipif(kernels.numba is None, reason="numba is not installed")


@pytest.fixture(params=["kernel", "torch"])
def backend(request, monkeypatch):
    """Run a test once with the compiled kernel and once with the PyTorch path."""
    if request.param == "kernel":
        if kernels.numba is None:
            pytest.skip("numba is not installed")
    else:
        monkeypatch.setattr(kernels, "numba", None)
    return request.param


def brute_force(blocks, motifs):
    """Float64 distances summed left to right, first minimum: the definition, written plainly."""
    b, z = blocks.double(), motifs.double()
    dist = torch.zeros(len(b), len(z), dtype=torch.float64)
    for c in range(b.shape[1]):
        dist += (b[:, None, c] - z[None, :, c]) ** 2
    return dist.argmin(dim=1), dist


def random_case(m, k, s, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(m, s, generator=g, dtype=dtype) * 0.05
    motifs = torch.cat([torch.zeros(1, s, dtype=dtype), blocks[torch.randperm(m, generator=g)[:k - 1]]])
    return blocks, motifs


@pytest.mark.parametrize("s", [1, 2, 4, 9])
def test_matches_brute_force(backend, s):
    blocks, motifs = random_case(3000, 150, s)
    expected, dist = brute_force(blocks, motifs)
    got = nearest_motif(blocks, motifs)
    assert torch.equal(got, expected)
    # and against torch's own float64 distances: any difference may only be an exact tie
    other = ((blocks.double()[:, None] - motifs.double()[None]) ** 2).sum(-1)
    assert torch.equal(other.gather(1, got[:, None]).squeeze(1), other.min(1).values)


def test_known_answer(backend):
    motifs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-3.0, -3.0]])
    blocks = torch.tensor([[0.1, 0.1], [0.9, 0.2], [0.2, 1.8], [-2.0, -2.5], [0.6, 0.0], [10.0, 10.0]])
    assert nearest_motif(blocks, motifs).tolist() == [0, 1, 2, 3, 1, 2]


def test_ties_go_to_the_lowest_index(backend):
    motifs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    blocks = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, -0.25], [3.0, 0.0]])
    # (0,0) is exactly motif 4 (and its copy 5); (0.5,0.5) is equidistant from 0, 2, 3, 4, 5
    assert nearest_motif(blocks, motifs).tolist() == [4, 0, 0, 4, 0]


# 2,000-byte tiles (thousands of them) take half a minute on the PyTorch path: the slow suite;
# 20,000 still splits the distances into hundreds of tiles in the default run.
@pytest.mark.parametrize("max_bytes", [pytest.param(2000, marks=pytest.mark.slow), 20_000, 4 * 2**20])
def test_lattice_data_full_of_exact_ties(backend, max_bytes):
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(-3, 4, (4000, 4), generator=g).float() * 0.125
    motifs = torch.randint(-3, 4, (300, 4), generator=g).float() * 0.125
    expected = brute_force(blocks, motifs)[0]
    assert torch.equal(nearest_motif(blocks, motifs, max_distance_bytes=max_bytes), expected)


def test_float64_inputs(backend):
    blocks, motifs = random_case(2000, 100, 4, dtype=torch.float64)
    assert torch.equal(nearest_motif(blocks, motifs), brute_force(blocks, motifs)[0])


@pytest.mark.parametrize("max_bytes", [1, 3000, 10**5, 10**6])
def test_tiles_split_blocks_and_motifs(max_bytes, monkeypatch):
    monkeypatch.setattr(kernels, "numba", None)  # only the PyTorch path holds distance tiles
    blocks, motifs = random_case(300, 70, 3, seed=2) if max_bytes < 10**5 else random_case(1500, 700, 3, seed=2)
    got = nearest_motif(blocks, motifs, max_distance_bytes=max_bytes)
    assert torch.equal(got, brute_force(blocks, motifs)[0])


def test_near_ties_are_ranked_exactly(monkeypatch):
    """Motifs one float32 ulp apart: the certified PyTorch path must not guess."""
    monkeypatch.setattr(kernels, "numba", None)
    base = torch.randn(200, 4) + 3
    motifs = torch.cat([base, torch.nextafter(base, torch.full_like(base, 10.0))])
    blocks = torch.cat([base, motifs[200:], (base + motifs[200:]) / 2])
    expected = brute_force(blocks, motifs)[0]
    assert torch.equal(nearest_motif(blocks, motifs), expected)
    assert torch.equal(nearest_motif(blocks, motifs)[:400], torch.arange(400))


@needs_numba
def test_kernel_equals_torch_path(monkeypatch):
    blocks, motifs = random_case(5000, 400, 4, seed=3)
    motifs = torch.cat([motifs, motifs[:50]])  # duplicates too
    kernel = nearest_motif(blocks, motifs)
    monkeypatch.setattr(kernels, "numba", None)
    assert torch.equal(kernel, nearest_motif(blocks, motifs))


def test_padding_is_ignored(backend):
    motifs = torch.tensor([[1.0, 5.0], [1.1, 0.0], [9.0, 9.0]])
    blocks = torch.tensor([[1.0, 0.0], [1.0, 0.0], [9.0, 8.0]])
    # block 1 holds padding in column 1: compared on column 0 only, motif 0 is exact
    patterns = [(torch.tensor([0]), torch.tensor([1]))]
    assert nearest_motif(blocks, motifs).tolist() == [1, 1, 2]
    assert nearest_motif_ignoring_padding(blocks, motifs, patterns).tolist() == [1, 0, 2]
    calls = []

    def search(b, z):
        calls.append(len(b))
        return nearest_motif(b, z)
    assert nearest_motif_ignoring_padding(blocks, motifs, patterns, search=search).tolist() == [1, 0, 2]
    assert calls == [3]


def test_bad_input():
    with pytest.raises(ValueError, match="values"):
        nearest_motif(torch.zeros(3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no motifs"):
        nearest_motif(torch.zeros(3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="NaN"):
        nearest_motif(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="floating"):
        nearest_motif(torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    assert nearest_motif(torch.zeros(0, 4), torch.zeros(2, 4)).shape == (0,)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 300), k=st.integers(1, 60), s=st.sampled_from([1, 2, 3, 4]),
       seed=st.integers(0, 2**16), lattice=st.booleans())
def test_property_matches_brute_force(m, k, s, seed, lattice):
    g = torch.Generator().manual_seed(seed)
    blocks, motifs = torch.randn(m, s, generator=g), torch.randn(k, s, generator=g)
    if lattice:  # many exact ties
        blocks, motifs = blocks.round(), motifs.round()
    expected = brute_force(blocks, motifs)[0]
    assert torch.equal(nearest_motif(blocks, motifs), expected)
    if m:
        assert torch.equal(assign._nearest_certified(blocks, motifs, 512), expected)


@needs_numba
def test_nearest_few_kernel():
    blocks, points = random_case(1000, 40, 4, seed=4)
    _, dist = brute_force(blocks, points)
    got = kernels.nearest_few(blocks, points, 5)
    expected = torch.sort(dist, dim=1, stable=True).indices[:, :5]
    assert torch.equal(got, expected)


def test_approximate_probing_every_cell_is_exact(backend):
    blocks, motifs = random_case(4000, 400, 4, seed=5)
    motifs = torch.cat([motifs, motifs[:20]])
    ivf = build_inverted_file(motifs, 12)
    got = nearest_motif_approximate(blocks, motifs, nprobe=ivf.num_cells, inverted_file=ivf)
    assert torch.equal(got, nearest_motif(blocks, motifs))


def test_inverted_file_groups_every_motif_once():
    _, motifs = random_case(2000, 300, 2, seed=6)
    ivf = build_inverted_file(motifs)
    assert ivf.num_cells == approximate.default_num_cells(300)
    assert torch.equal(ivf.motif_order.sort().values, torch.arange(300))
    assert ivf.cell_starts[0] == 0 and ivf.cell_starts[-1] == 300
    assert (ivf.cell_starts.diff() > 0).all()
    again = build_inverted_file(motifs)
    assert torch.equal(again.centroids, ivf.centroids)  # deterministic


def test_approximate_recall_on_clustered_data():
    g = torch.Generator().manual_seed(7)
    centers = torch.randn(30, 4, generator=g) * 3
    blocks = centers[torch.randint(0, 30, (20000,), generator=g)] + 0.3 * torch.randn(20000, 4, generator=g)
    motifs = blocks[torch.randperm(20000, generator=g)[:900]]
    exact = nearest_motif(blocks, motifs)
    got = nearest_motif_approximate(blocks, motifs, nprobe=4)
    assert (got == exact).float().mean() >= 0.95
    exact_error = assign.squared_distances(blocks, motifs[exact]).sum()
    got_error = assign.squared_distances(blocks, motifs[got]).sum()
    assert got_error <= 1.02 * exact_error


def test_approximate_rejects_bad_nprobe():
    blocks, motifs = random_case(100, 10, 2)
    with pytest.raises(ValueError, match="nprobe"):
        nearest_motif_approximate(blocks, motifs, nprobe=0)
    with pytest.raises(ValueError, match="nprobe"):
        momos.MoMosConfig(capacity=0.1, assignment="approximate", nprobe=0)
    with pytest.raises(ValueError, match="assignment"):
        momos.MoMosConfig(capacity=0.1, assignment="fast")
    with pytest.raises(ValueError, match="time limit"):
        momos.warn_if_slow(mlp(), momos.MoMosConfig(capacity=0.1), limit_seconds=0)


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 7))


def test_project_approximate_gives_a_mosaic():
    model = mlp()
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, assignment="approximate", nprobe=2)
    stats = momos.project_(model, cfg)
    exact = momos.project_(mlp(), momos.MoMosConfig(block_size=4, capacity=0.1))
    assert torch.equal(stats.motifs, exact.motifs)
    assert momos.is_mosaic(model, cfg, stats.motifs)
    assert stats.distortion >= exact.distortion
    assert stats.distortion <= 1.5 * exact.distortion


@needs_numba
def test_approximate_is_the_same_on_every_backend(monkeypatch):
    blocks, motifs = random_case(3000, 300, 4, seed=8)
    kernel = nearest_motif_approximate(blocks, motifs, nprobe=2)
    monkeypatch.setattr(kernels, "numba", None)
    assert torch.equal(kernel, nearest_motif_approximate(blocks, motifs, nprobe=2))


@needs_numba
def test_kernels_leave_torch_thread_count_alone():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blocks, motifs = random_case(500, 50, 4)
        nearest_motif(blocks, motifs)
        nearest_motif_approximate(blocks, motifs, nprobe=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- importance-weighted search ---------------------------------------------------------

def weighted_brute_force(blocks, motifs, weights):
    """The weighted definition, written plainly: sum_c h_c * (e * e) in float64, left to right,
    then the first minimum."""
    b, z, h = blocks.double(), motifs.double(), weights.double()
    dist = torch.zeros(len(b), len(z), dtype=torch.float64)
    for c in range(b.shape[1]):
        e = b[:, None, c] - z[None, :, c]
        dist += h[:, None, c] * (e * e)
    return dist.argmin(dim=1), dist


def weighted_case(m, k, s, seed=0, dtype=torch.float32):
    """Random blocks, motifs with duplicates, weights with zero entries and all-zero rows."""
    blocks, motifs = random_case(m, k, s, seed=seed, dtype=dtype)
    motifs = torch.cat([motifs, motifs[:k // 10]])
    g = torch.Generator().manual_seed(seed + 100)
    weights = torch.rand(m, s, generator=g, dtype=dtype) * 3
    weights[torch.rand(m, s, generator=g) < 0.2] = 0
    weights[::17] = 0
    return blocks, motifs, weights


@pytest.mark.parametrize("s", [1, 2, 4, 9])
def test_weighted_matches_brute_force(backend, s):
    blocks, motifs, weights = weighted_case(3000, 150, s, seed=s)
    expected, dist = weighted_brute_force(blocks, motifs, weights)
    got = nearest_motif(blocks, motifs, weights=weights)
    assert torch.equal(got, expected)
    assert not torch.equal(expected, brute_force(blocks, motifs)[0])  # the weights matter here


def test_weighted_wide_blocks_take_the_torch_path():
    blocks, motifs, weights = weighted_case(1000, 80, kernels.MAX_BLOCK_SIZE + 4, seed=9)
    assert torch.equal(nearest_motif(blocks, motifs, weights=weights),
                       weighted_brute_force(blocks, motifs, weights)[0])


# 2,000-byte tiles (thousands of them) take half a minute on the PyTorch path: the slow suite;
# 20,000 still splits the distances into hundreds of tiles in the default run.
@pytest.mark.parametrize("max_bytes", [pytest.param(2000, marks=pytest.mark.slow), 20_000, 4 * 2**20])
def test_weighted_lattice_data_full_of_exact_ties(backend, max_bytes):
    g = torch.Generator().manual_seed(11)
    blocks = torch.randint(-3, 4, (1500, 4), generator=g).float() * 0.125
    motifs = torch.randint(-3, 4, (150, 4), generator=g).float() * 0.125
    weights = torch.randint(0, 3, (1500, 4), generator=g).float() * 0.5
    expected, dist = weighted_brute_force(blocks, motifs, weights)
    assert (dist == dist.min(1, keepdim=True).values).sum(1).gt(1).float().mean() > 0.5  # mostly ties
    assert torch.equal(nearest_motif(blocks, motifs, weights=weights, max_distance_bytes=max_bytes), expected)


def test_weighted_ties_go_to_the_lowest_index(backend):
    motifs = torch.tensor([[5.0, 0.0], [1.0, 3.0], [1.0, 0.0], [1.0, 3.0], [0.0, 0.0]])
    blocks = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 7.0], [0.5, 1.0]])
    weights = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [4.0, 0.0]])
    # row 0 ignores column 1: motifs 1, 2, 3 tie at 0; row 2 weighs nothing: all tie;
    # row 3: 4 * 0.5^2 = 1 for motifs 1, 2, 3 and 4
    assert nearest_motif(blocks, motifs, weights=weights).tolist() == [1, 2, 0, 1]


def test_weighted_near_ties_are_ranked_exactly(monkeypatch):
    """Motifs one float32 ulp apart: the certified weighted path must not guess."""
    monkeypatch.setattr(kernels, "numba", None)
    g = torch.Generator().manual_seed(12)
    base = torch.randn(300, 4, generator=g) + 3
    motifs = torch.cat([base, torch.nextafter(base, torch.full_like(base, 10.0))])
    blocks = torch.cat([base, motifs[300:], (base + motifs[300:]) / 2])
    weights = torch.rand(len(blocks), 4, generator=g) + 0.5
    expected = weighted_brute_force(blocks, motifs, weights)[0]
    got = nearest_motif(blocks, motifs, weights=weights)
    assert torch.equal(got, expected)
    assert torch.equal(got[:600], torch.arange(600))


@pytest.mark.parametrize("weighted", [False, True])
def test_duplicate_motifs_need_no_exact_ranking(monkeypatch, weighted):
    """Copies of a motif tie exactly; the torch path collapses them rather than re-ranking."""
    blocks, motifs, weights = weighted_case(2000, 100, 4, seed=20)
    weights[::17] = 1  # no all-zero rows, which tie everywhere
    motifs = torch.cat([motifs, motifs, motifs])
    ranked = []
    rank_exactly = assign._rank_exactly
    monkeypatch.setattr(assign, "_rank_exactly",
                        lambda b, *args: ranked.append(len(b)) or rank_exactly(b, *args))
    if weighted:
        got = assign._nearest_certified(blocks, motifs, 4 * 2**20, weights)
        expected = weighted_brute_force(blocks, motifs, weights)[0]
    else:
        got = assign._nearest_certified(blocks, motifs, 4 * 2**20)
        expected = brute_force(blocks, motifs)[0]
    assert sum(ranked) < 20
    assert torch.equal(got, expected)


@needs_numba
def test_weighted_kernel_equals_torch_path(monkeypatch):
    blocks, motifs, weights = weighted_case(5000, 400, 4, seed=13)
    kernel = nearest_motif(blocks, motifs, weights=weights)
    monkeypatch.setattr(kernels, "numba", None)
    assert torch.equal(kernel, nearest_motif(blocks, motifs, weights=weights))


def test_weighted_float64_and_mixed_precision(backend):
    blocks, motifs, weights = weighted_case(2000, 100, 4, seed=14, dtype=torch.float64)
    weights = weights + 1e-9  # not representable in float32: must not be rounded to it
    expected = weighted_brute_force(blocks, motifs, weights)[0]
    assert torch.equal(nearest_motif(blocks, motifs, weights=weights), expected)
    blocks, motifs = blocks.float(), motifs.float()  # float64 weights for float32 blocks
    assert torch.equal(nearest_motif(blocks, motifs, weights=weights),
                       weighted_brute_force(blocks, motifs, weights)[0])


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 200), k=st.integers(1, 40), s=st.sampled_from([1, 2, 3, 4]),
       seed=st.integers(0, 2**16), lattice=st.booleans())
def test_property_weighted_matches_brute_force(m, k, s, seed, lattice):
    g = torch.Generator().manual_seed(seed)
    blocks, motifs = torch.randn(m, s, generator=g), torch.randn(k, s, generator=g)
    weights = torch.rand(m, s, generator=g)
    if lattice:  # many exact ties
        blocks, motifs, weights = blocks.round(), motifs.round(), (weights * 2).round()
    expected = weighted_brute_force(blocks, motifs, weights)[0]
    assert torch.equal(nearest_motif(blocks, motifs, weights=weights), expected)
    if m:
        assert torch.equal(assign._nearest_certified(blocks, motifs, 512, weights), expected)


def test_weights_are_validated():
    blocks, motifs = torch.zeros(3, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="shape"):
        nearest_motif(blocks, motifs, weights=torch.ones(3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        nearest_motif(blocks, motifs, weights=-torch.ones(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        nearest_motif(blocks, motifs, weights=torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        nearest_motif(blocks, motifs, weights=torch.full((3, 4), float("inf")))
    with pytest.raises(TypeError, match="floating"):
        nearest_motif(blocks, motifs, weights=torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative"):
        nearest_motif_approximate(blocks, motifs, nprobe=1, weights=-torch.ones(3, 4))


def test_weighted_padding_weighs_nothing(backend):
    blocks, motifs, weights = weighted_case(600, 60, 4, seed=15)
    rows = torch.arange(5, 600, 7)
    patterns = [(torch.tensor([0, 1]), rows[::2]), (torch.tensor([0]), rows[1::2])]
    before = weights.clone()
    got = nearest_motif_ignoring_padding(blocks, motifs, patterns, weights=weights)
    assert torch.equal(weights, before)  # the caller's weights are not modified
    expected = weighted_brute_force(blocks, motifs, weights)[0]
    for columns, padded in patterns:
        expected[padded] = weighted_brute_force(blocks[padded][:, columns], motifs[:, columns],
                                                weights[padded][:, columns])[0]
    assert torch.equal(got, expected)
    calls = []

    def search(b, z, *, weights):
        calls.append(weights)
        return nearest_motif(b, z, weights=weights)
    assert torch.equal(nearest_motif_ignoring_padding(blocks, motifs, patterns, weights=weights,
                                                      search=search), expected)
    assert len(calls) == 1 and calls[0][rows[::2], 2:].eq(0).all() and calls[0][rows[1::2], 1:].eq(0).all()


@needs_numba
def test_weighted_nearest_few_kernel():
    blocks, points, weights = weighted_case(1000, 40, 4, seed=16)
    _, dist = weighted_brute_force(blocks, points, weights)
    expected = torch.sort(dist, dim=1, stable=True).indices[:, :5]
    assert torch.equal(kernels.nearest_few(blocks, points, 5, weights), expected)


def test_weighted_cells_are_probed_by_weighted_distance(backend):
    blocks, centroids, weights = weighted_case(1000, 40, 4, seed=17)
    _, dist = weighted_brute_force(blocks, centroids, weights)
    expected = torch.sort(dist, dim=1, stable=True).indices[:, :5]
    assert torch.equal(approximate._nearest_cells(blocks, weights, centroids, 5, 3000), expected)


def test_weighted_approximate_probing_every_cell_is_exact(backend):
    blocks, motifs, weights = weighted_case(4000, 400, 4, seed=18)
    ivf = build_inverted_file(motifs, 12)
    got = nearest_motif_approximate(blocks, motifs, nprobe=ivf.num_cells, inverted_file=ivf, weights=weights)
    assert torch.equal(got, weighted_brute_force(blocks, motifs, weights)[0])


@needs_numba
def test_weighted_approximate_is_the_same_on_every_backend(monkeypatch):
    blocks, motifs, weights = weighted_case(3000, 300, 4, seed=19)
    kernel = nearest_motif_approximate(blocks, motifs, nprobe=2, weights=weights)
    assert not torch.equal(kernel, nearest_motif_approximate(blocks, motifs, nprobe=2))
    monkeypatch.setattr(kernels, "numba", None)
    assert torch.equal(kernel, nearest_motif_approximate(blocks, motifs, nprobe=2, weights=weights))
