"""The cost estimate: pairs of every search pass, the times it is built from, the warning.

The machine's times are faked here (tests never time); bench/cost.py measures them.
"""

import math
import warnings
from dataclasses import replace

import pytest
import torch

import momos
from momos import cost
from momos.approximate import DEFAULT_KMEANS_ITERATIONS, default_num_cells
from momos.assign import nearest_motif

# fake seconds per block of each calibration search
PER_BLOCK = {"exact": 1e-6, "approximate": 1e-5, "blocks": 1e-7}


@pytest.fixture
def measured(monkeypatch):
    """The keys measured, with every measurement replaced by ``PER_BLOCK`` of its kind."""
    keys = []

    def fake(key, make_search):
        keys.append(key)
        return PER_BLOCK[key[0]]
    monkeypatch.setattr(cost, "_measured", fake)
    return keys


def test_pairs_count_every_search_pass():
    m, k = 100_000, 1000
    exact = momos.MoMosConfig(capacity=0.01)
    assert cost.search_pairs(m, k, exact) == m * k
    assert cost.search_pairs(m, k, replace(exact, motif_method="kmeans", kmeans_iterations=3)) == 4 * m * k
    approximate = replace(exact, assignment="approximate", nprobe=4)
    cells = default_num_cells(k)
    one_pass = m * (cells + 4 * math.ceil(k / cells)) + (DEFAULT_KMEANS_ITERATIONS + 1) * k * cells
    assert cost.search_pairs(m, k, approximate) == one_pass
    # the Lloyd iterations search approximately too
    assert cost.search_pairs(m, k, replace(approximate, motif_method="kmeans", kmeans_iterations=3)) == 4 * one_pass


def test_approximate_needs_fewer_pairs_for_big_codebooks():
    exact = momos.MoMosConfig(capacity=0.01)
    approx = momos.MoMosConfig(capacity=0.01, assignment="approximate", nprobe=8)
    m = 25_000_000
    assert cost.search_pairs(m, 250_000, approx) * 50 < cost.search_pairs(m, 250_000, exact)


def test_the_estimate_uses_the_time_of_the_search_in_use(measured):
    m, k = 100_000, 3000            # timed on 4096 motifs, the nearest power of two
    exact = momos.MoMosConfig(block_size=4, capacity=0.03)
    around = m * PER_BLOCK["blocks"]
    assert cost.estimate([(m, k)], exact).seconds == pytest.approx(m * k * PER_BLOCK["exact"] / 4096 + around)
    approximate = replace(exact, assignment="approximate", nprobe=4)
    per_pair = PER_BLOCK["approximate"] / (64 + 4 * 64)   # 4096 motifs in 64 cells, 4 probed
    assert cost.estimate([(m, k)], approximate).seconds == pytest.approx(
        cost.search_pairs(m, k, approximate) * per_pair + around)
    kmeans = replace(exact, motif_method="kmeans", kmeans_iterations=2)
    assert cost.estimate([(m, k)], kmeans).seconds == pytest.approx(3 * (m * k * PER_BLOCK["exact"] / 4096 + around))
    threads = torch.get_num_threads()
    assert [key[:5] for key in measured] == [("exact", "cpu", 4, threads, 4096), ("blocks", "cpu", 4, threads),
                                            ("approximate", "cpu", 4, threads, 4096), ("blocks", "cpu", 4, threads),
                                            ("exact", "cpu", 4, threads, 4096), ("blocks", "cpu", 4, threads)]


def test_the_largest_codebook_sets_the_shape_timed(measured):
    config = momos.MoMosConfig(block_size=4, capacity=0.01)
    cost.estimate([(1000, 10), (400_000, 4000), (2000, 20)], config)
    assert measured[0][4] == 4096
    cost.estimate([(10_000_000, 100_000)], config)   # the exact search's time per pair is flat in k
    assert measured[2][4] == cost._MAX_EXACT_MOTIFS


def test_each_shape_is_measured_once_per_process_and_thread_count(monkeypatch):
    calls = []
    monkeypatch.setattr(cost, "_seconds", {})
    monkeypatch.setattr(cost, "_median_seconds_per_block", lambda search, s, device: calls.append(s) or 1e-6)
    codebooks, config = [(50_000, 500)], momos.MoMosConfig(block_size=4, capacity=0.01)
    cost.estimate(codebooks, config)
    cost.estimate(codebooks, config)
    assert len(calls) == 2   # the exact search and the work around it
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        cost.estimate(codebooks, config)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 4


def test_calibration_times_what_more_blocks_add(monkeypatch):
    # seconds of each run by its block count, in order: the 64 more blocks seem to add 35 ms
    # at first, but the median of three runs is short, so the blocks double; then the 128
    # more blocks add 240 ms in the median, well above the 110 ms of a 128-block search
    runs = {64: iter([0.010, 0.010, 0.010]), 128: iter([0.045, 0.012, 0.013, 0.110, 0.110, 0.110]),
            256: iter([0.35, 0.36, 0.20])}
    monkeypatch.setattr(cost, "_timed", lambda search, blocks: next(runs[len(blocks)]))
    seconds = cost._median_seconds_per_block(lambda blocks: blocks, 4, torch.device("cpu"))
    assert seconds == pytest.approx(0.24 / 128)


def test_calibration_runs_are_long_and_mostly_work():
    assert cost._long_enough([(0.1, 0.07)])
    assert not cost._long_enough([(0.001, 0.01)])   # too short to time
    assert not cost._long_enough([(0.1, 0.05)])     # the call's fixed cost outweighs the blocks'


def test_the_timed_inverted_file_is_a_valid_one():
    search = cost._approximate_search(64, 4, 8, torch.device("cpu"), 2**20)   # 8 cells, all probed: exact
    blocks = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    motifs = cost._random(64, 4, torch.device("cpu"), seed=1)
    assert torch.equal(search(blocks), nearest_motif(blocks, motifs))


def test_warn_if_slow_warns_only_above_the_limit(measured):
    config = momos.MoMosConfig(block_size=4, capacity=0.01)
    codebooks = [(1_000_000, 10_000)]
    expected = cost.estimate(codebooks, config).seconds
    with pytest.warns(UserWarning, match="more than the limit"):
        assert cost.warn_if_slow(codebooks, config, expected / 2).seconds == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cost.warn_if_slow(codebooks, config, expected * 2).seconds == expected
        measured.clear()
        assert cost.warn_if_slow([(1000, 10)], config, expected) is None   # clearly small: nothing measured
    assert measured == []


def test_cost_estimate_and_warning_of_a_model():
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1)
    model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 7))
    estimate = momos.estimate_cost(model, cfg)
    m = sum(-(-p.numel() // 4) for p in model.parameters())
    assert estimate.pairs == m * cfg.motifs_for(m)
    assert estimate.seconds > 0 and estimate.bytes > m * 4 * 4
    with pytest.warns(UserWarning, match="more than the limit of 1e-09 s"):
        momos.warn_if_slow(model, cfg, limit_seconds=1e-9)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*more than the limit")
        assert momos.warn_if_slow(model, cfg) is None   # default limit (60 s): clearly small, silent
        momos.project_(model, cfg, warn_relative_error=None)   # the transform never times itself
