from functools import partial

import pytest
import torch
from torch import nn

import momos
from momos.approximate import nearest_motif_approximate
from momos.assign import nearest_motif
from momos.motifs import refine_motifs_kmeans, sample_motifs


def clustered_blocks(seed=0, centers=6, per=50, s=4):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, s, generator=g) * 3
    return (means[:, None, :] + 0.05 * torch.randn(centers, per, s, generator=g)).reshape(-1, s)


def distortion(blocks, motifs):
    return ((blocks[:, None] - motifs[None]) ** 2).sum(-1).min(1).values.sum()


def test_sample_motifs_distinct_and_zero_first():
    blocks = torch.arange(40.0).reshape(10, 4)
    motifs = sample_motifs(blocks, 4, torch.Generator().manual_seed(0), force_zero=True)
    assert motifs[0].eq(0).all()
    assert len(torch.unique(motifs[1:], dim=0)) == 3
    with pytest.raises(ValueError, match="cannot draw"):
        sample_motifs(blocks, 11, torch.Generator())


def test_kmeans_lowers_distortion_and_keeps_zero():
    blocks = clustered_blocks()
    start = sample_motifs(blocks, 7, torch.Generator().manual_seed(1), force_zero=True)
    refined = refine_motifs_kmeans(blocks, start, 10, fixed_zero=True)
    assert refined[0].eq(0).all()
    assert distortion(blocks, refined) < distortion(blocks, start)
    assert torch.equal(start, sample_motifs(blocks, 7, torch.Generator().manual_seed(1)))  # input untouched


def test_kmeans_reseeds_empty_clusters():
    blocks = clustered_blocks(centers=3, per=30)
    start = torch.stack([blocks[0], blocks[0] + 100.0, blocks[40], blocks[80]])  # motif 1 serves nobody
    refined = refine_motifs_kmeans(blocks, start, 1)
    counts = torch.bincount(((blocks[:, None] - refined[None]) ** 2).sum(-1).argmin(1), minlength=4)
    assert (refined[1] - 100.0).abs().max() > 50  # moved off the empty spot onto a real block
    assert counts[1] > 0


def test_kmeans_ignores_padding_and_uses_importance():
    blocks = torch.tensor([[1.0, 5.0], [3.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    motifs = refine_motifs_kmeans(blocks, torch.tensor([[2.0, 2.0]]), 1, valid_mask=mask)
    assert torch.allclose(motifs, torch.tensor([[2.0, 5.0]]))
    weighted = refine_motifs_kmeans(blocks, torch.tensor([[2.0, 2.0]]), 1,
                                    importance=torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    assert torch.allclose(weighted, torch.tensor([[1.5, 2.5]]))


def model_and_blocks(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("method", ["kmeans", "persistent"])
def test_kmeans_projection_is_exact_mosaic_with_lower_distortion(method):
    sampled = momos.project_(model_and_blocks(), momos.MoMosConfig(block_size=2, capacity=0.02))
    model = model_and_blocks()
    cfg = momos.MoMosConfig(block_size=2, capacity=0.02, motif_method=method, kmeans_iterations=5)
    stats = momos.project_(model, cfg)
    assert stats.num_motifs == sampled.num_motifs
    assert stats.distortion < sampled.distortion
    assert stats.motifs[0].eq(0).all()
    assert momos.is_mosaic(model, cfg, stats.codebook_motifs())


def test_persistent_refines_previous_codebook():
    model = model_and_blocks()
    cfg = momos.MoMosConfig(block_size=2, capacity=0.02, motif_method="persistent", kmeans_iterations=0)
    projector = momos.Projector(model, cfg)
    first = projector.epoch_end()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.001 * torch.randn_like(p))
    second = projector.epoch_end()
    assert torch.equal(first.motifs, second.motifs)  # zero iterations: the codebook is kept as is


def test_capacity_annealing_schedule():
    model = model_and_blocks()
    cfg = momos.MoMosConfig(block_size=2, capacity=0.01)
    projector = momos.Projector(model, cfg, anneal_from=0.16, anneal_epochs=4)
    ks = [projector.epoch_end().num_motifs for _ in range(6)]
    m = projector.last.num_blocks
    assert ks == [int(c * m) for c in (0.16, 0.08, 0.04, 0.02, 0.01, 0.01)]
    with pytest.raises(ValueError, match="anneal_from"):
        momos.Projector(model, cfg, anneal_from=0.001, anneal_epochs=2)
    with pytest.raises(ValueError, match="num_motifs"):
        momos.Projector(model, momos.MoMosConfig(num_motifs=3), anneal_from=0.5, anneal_epochs=2)
    with pytest.raises(ValueError, match="needs anneal_from"):
        momos.Projector(model, cfg, anneal_epochs=2)


def test_bad_importance_leaves_model_untouched():
    model = model_and_blocks()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = momos.MoMosConfig(block_size=2, capacity=0.05, motif_method="kmeans")
    with pytest.raises(ValueError, match="importance"):
        momos.project_(model, cfg, importance=[torch.ones(3)])
    with pytest.raises(ValueError, match="non-negative"):
        momos.project_(model, cfg, importance=[-torch.ones_like(p) for p in model.parameters()])
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def weighted_distortion(blocks, motifs, weights):
    """sum over blocks of the weighted distance to the nearest motif: the weighted k-means objective."""
    return (weights[:, None] * (blocks[:, None] - motifs[None]) ** 2).sum(-1).min(1).values.sum()


def weighted_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = clustered_blocks(seed, centers=8, per=40).double()
    blocks += 0.5 * torch.randn(blocks.shape, generator=g, dtype=torch.float64)
    weights = torch.rand(blocks.shape, generator=g, dtype=torch.float64) ** 4 * 10
    return blocks, weights


def test_weighted_kmeans_assigns_by_weighted_distance():
    """One Lloyd round: weighted-nearest assignment, then the weighted mean per coordinate."""
    blocks, weights = weighted_case(1)
    start = blocks[:12].clone()
    assign = ((blocks[:, None] - start[None]) ** 2 * weights[:, None]).sum(-1).argmin(1)
    assert not torch.equal(assign, ((blocks[:, None] - start[None]) ** 2).sum(-1).argmin(1))
    expected = torch.stack([(weights[assign == j] * blocks[assign == j]).sum(0) / weights[assign == j].sum(0)
                            for j in range(12)])
    refined = refine_motifs_kmeans(blocks, start, 1, importance=weights)
    assert torch.allclose(refined, expected, rtol=1e-12, atol=0)


def test_weighted_kmeans_lowers_the_weighted_objective_and_keeps_zero():
    blocks, weights = weighted_case(2)
    motifs = sample_motifs(blocks, 9, torch.Generator().manual_seed(3), force_zero=True)
    objective = [weighted_distortion(blocks, motifs, weights)]
    for _ in range(6):
        motifs = refine_motifs_kmeans(blocks, motifs, 1, importance=weights, fixed_zero=True)
        assert motifs[0].eq(0).all()
        objective.append(weighted_distortion(blocks, motifs, weights))
    assert all(b <= a * (1 + 1e-12) for a, b in zip(objective, objective[1:]))
    assert objective[-1] < 0.9 * objective[0]


def test_weighted_kmeans_search_ignores_padding():
    # block 1's second value is padding: by its real value 3 it belongs to motif 1
    # (counting the padding, to motif 0)
    blocks = torch.tensor([[0.0, 0.0], [3.0, 100.0], [3.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    start = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    refined = refine_motifs_kmeans(blocks, start, 1, valid_mask=mask, importance=torch.ones(3, 2))
    assert torch.equal(refined, torch.tensor([[0.0, 0.0], [3.0, 0.0]]))


def test_kmeans_uses_the_given_search():
    blocks, weights = weighted_case(4)
    start = blocks[:10].clone()
    calls = []

    def search(b, z, *, weights):
        calls.append(weights)
        return nearest_motif(b, z, weights=weights)
    refined = refine_motifs_kmeans(blocks, start, 3, importance=weights, search=search)
    assert len(calls) == 3 and all(torch.equal(w, weights) for w in calls)
    assert torch.equal(refined, refine_motifs_kmeans(blocks, start, 3, importance=weights))
    calls.clear()
    refine_motifs_kmeans(blocks, start, 2, search=search)
    assert calls == [None, None]  # without importance the search stays unweighted

    def first_motif(b, z, *, weights):
        return torch.zeros(len(b), dtype=torch.long)
    only = refine_motifs_kmeans(blocks, start, 1, search=first_motif)
    worst = ((blocks - start[0]) ** 2).sum(1).topk(9).indices
    assert torch.allclose(only[0], blocks.mean(0)) and torch.equal(only[1:], blocks[worst])  # re-seeded


def test_kmeans_with_the_approximate_search():
    blocks, weights = weighted_case(5)
    start = blocks[:16].clone()
    search = partial(nearest_motif_approximate, nprobe=2)
    refined = refine_motifs_kmeans(blocks, start, 4, importance=weights, search=search)
    assert weighted_distortion(blocks, refined, weights) < weighted_distortion(blocks, start, weights)
