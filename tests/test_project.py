import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import momos
from momos.blocks import to_blocks


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 4 * 4, 7),
                         nn.ReLU(), nn.Linear(7, 3))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def blocks_of(model, cfg):
    params = [p.detach() for _, p in momos.select_parameters(model, cfg)]
    return to_blocks(params, cfg.block_size, tile_shape=cfg.tile_shape)


def assert_exact_mosaic(model, cfg, stats):
    blocks, layout = blocks_of(model, cfg)
    mask = layout.valid_mask()
    rebuilt = stats.motifs[stats.assignments]
    assert torch.equal(torch.where(mask, rebuilt, 0.0), blocks)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("force_zero", [True, False])
def test_every_block_is_a_motif(scope, force_zero):
    model = make_model()
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, force_zero=force_zero, scope=scope)
    before_blocks, layout = blocks_of(model, cfg)
    if scope == "per_tensor" and force_zero:
        # the 2-block conv bias gets k = 1: only the zero motif, refused
        with pytest.raises(ValueError, match=r"'0\.bias' \(2 blocks\) gets k = 1"):
            momos.project_(model, cfg)
        return
    stats = momos.project_(model, cfg)
    assert_exact_mosaic(model, cfg, stats)
    assert stats.num_blocks == layout.num_blocks
    assert stats.num_weights == layout.num_weights
    assert int(stats.motif_counts.sum()) == stats.num_blocks
    if scope == "global":
        assert stats.num_motifs == max(1, math.floor(0.1 * layout.num_blocks))
        assert len(stats.codebooks) == 1
    else:
        expected = [max(1, math.floor(0.1 * n)) for n in layout.block_counts]
        assert [c.num_motifs for c in stats.codebooks] == expected
        # per-tensor codebooks: each tensor's blocks only use its own motifs
        for c in stats.codebooks:
            a = stats.assignments[c.block_start:c.block_end]
            assert a.min() >= c.motif_start and a.max() < c.motif_end
    if force_zero:
        for motifs in stats.codebook_motifs():
            assert motifs[0].eq(0).all()
    # distortion = squared error over real (unpadded) entries
    mask = layout.valid_mask()
    expected = ((stats.motifs[stats.assignments] - before_blocks)[mask].double() ** 2).sum()
    assert stats.distortion == pytest.approx(float(expected), rel=1e-9)
    assert stats.changed_weights == int(((stats.motifs[stats.assignments] != before_blocks) & mask).sum())


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_tile_shapes_project_to_exact_mosaic(scope):
    model = make_model()
    # no zero motif: the 5-value conv bias is one block, alone in its per-tensor codebook
    cfg = momos.MoMosConfig(block_size=9, tile_shape=(3, 3), capacity=0.2, scope=scope, force_zero=False)
    stats = momos.project_(model, cfg)
    assert_exact_mosaic(model, cfg, stats)
    kernels = model[0].weight.detach().reshape(-1, 9)
    assert ((kernels[:, None] == stats.motifs[None]).all(-1)).any(1).all()  # whole 3x3 kernels are motifs
    with pytest.raises(ValueError, match="tile_shape"):
        momos.MoMosConfig(block_size=4, tile_shape=(3, 3), capacity=0.1)


def test_motifs_are_distinct_blocks_of_the_model():
    model = make_model()
    cfg = momos.MoMosConfig(block_size=2, num_motifs=20, force_zero=False)
    blocks, _ = blocks_of(model, cfg)
    stats = momos.project_(model, cfg)
    assert stats.num_motifs == 20
    matches = (stats.motifs[:, None, :] == blocks[None]).all(-1)
    assert matches.any(1).all()
    picked = matches.float().argmax(1)
    assert len(set(picked.tolist())) == 20


def test_nearest_motif_assignment_matches_brute_force():
    model = make_model()
    cfg = momos.MoMosConfig(block_size=3, capacity=0.05)
    blocks, layout = blocks_of(model, cfg)
    stats = momos.project_(model, cfg)
    mask = layout.valid_mask()
    d = (((blocks[:, None, :] - stats.motifs[None]) * mask[:, None, :]) ** 2).double().sum(-1)
    chosen = d.gather(1, stats.assignments[:, None]).squeeze(1)
    assert torch.allclose(chosen, d.min(1).values, rtol=1e-6, atol=1e-9)


def test_num_motifs_is_clamped_and_capacity_floor():
    assert momos.MoMosConfig(num_motifs=10**9).motifs_for(17) == 17
    assert momos.MoMosConfig(capacity=0.001).motifs_for(17) == 1
    assert momos.MoMosConfig(capacity=0.5).motifs_for(17) == 8


def test_same_seed_bit_identical_different_seed_differs():
    results = []
    for seed in (0, 0, 1):
        model = make_model()
        momos.project_(model, momos.MoMosConfig(block_size=4, capacity=0.05, seed=seed))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_projection_does_not_touch_global_rng():
    model = make_model(seed=5)   # make_model seeds the global RNG itself: build it first
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    momos.project_(model, momos.MoMosConfig(capacity=0.1))
    assert torch.equal(torch.rand(3), expected)   # project_ drew nothing from the global RNG


def test_idempotent_with_same_motifs():
    model = make_model()
    cfg = momos.MoMosConfig(block_size=4, capacity=0.05, scope="per_tensor", force_zero=False)
    stats = momos.project_(model, cfg)
    before = snapshot(model)
    again = momos.project_(model, cfg, motifs=stats.codebook_motifs())
    assert again.changed_weights == 0 and again.distortion == 0
    assert torch.equal(again.assignments, stats.assignments)   # motifs are distinct blocks: no tie to break
    assert_unchanged(model, before)
    assert momos.is_mosaic(model, cfg, stats.codebook_motifs())


def test_include_exclude_select_by_name():
    model = make_model()
    cfg = momos.MoMosConfig(capacity=0.1, exclude=(r"^1\.", r"bias$"))
    names = [n for n, _ in momos.select_parameters(model, cfg)]
    assert names == ["0.weight", "3.weight", "5.weight"]
    before = snapshot(model)
    momos.project_(model, cfg)
    assert torch.equal(model[1].weight, before["1.weight"])
    assert torch.equal(model[0].bias, before["0.bias"])
    only = momos.MoMosConfig(capacity=0.1, include=("weight",), exclude=(r"^1\.",))
    assert [n for n, _ in momos.select_parameters(model, only)] == names


def test_frozen_parameters_are_skipped_unless_included():
    model = make_model()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    momos.project_(model, momos.MoMosConfig(capacity=0.1))
    assert torch.equal(model[0].weight, before)
    cfg = momos.MoMosConfig(capacity=0.1, include=(r"^0\.weight",))
    assert [n for n, _ in momos.select_parameters(model, cfg)] == ["0.weight"]


def test_motif_bits_gives_q_bit_motifs():
    model = make_model()
    cfg = momos.MoMosConfig(block_size=2, capacity=0.1, motif_bits=4)
    stats = momos.project_(model, cfg)
    scale = stats.motifs.abs().max() / 7
    levels = stats.motifs / scale
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert levels.abs().max() <= 7 + 1e-5
    assert_exact_mosaic(model, cfg, stats)


def test_float64_and_half_parameters():
    model = nn.Linear(9, 4).double()
    stats = momos.project_(model, momos.MoMosConfig(capacity=0.3))
    assert model.weight.dtype == torch.float64 and stats.motifs.dtype == torch.float64
    half = nn.Linear(9, 4).to(torch.bfloat16)
    momos.project_(half, momos.MoMosConfig(capacity=0.3, block_size=3))
    blocks, _ = to_blocks([p.detach() for p in half.parameters()], 3)
    assert len(torch.unique(blocks[:-1], dim=0)) <= 4  # tail block of the bias may be a prefix


BAD_CONFIGS = [
    dict(block_size=0, capacity=0.1),
    dict(block_size=4, capacity=0.0),
    dict(block_size=4, capacity=1.5),
    dict(block_size=4, capacity=float("nan")),
    dict(block_size=4, num_motifs=0),
    dict(block_size=4, capacity=0.1, num_motifs=3),
    dict(block_size=4),
    dict(block_size=4, capacity=0.1, motif_bits=1),
    dict(block_size=4, capacity=0.1, scope="layer"),
    dict(block_size=2.5, capacity=0.1),
]


@pytest.mark.parametrize("kwargs", BAD_CONFIGS)
def test_bad_config_raises(kwargs):
    with pytest.raises((ValueError, TypeError)):
        momos.MoMosConfig(**kwargs)


def test_config_error_messages_name_the_problem():
    with pytest.raises(ValueError, match="capacity"):
        momos.MoMosConfig(capacity=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        momos.MoMosConfig(capacity=0.1, num_motifs=2)
    with pytest.raises(ValueError, match="block_size"):
        momos.MoMosConfig(block_size=0, capacity=0.1)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_weights_leave_model_untouched(poison):
    model = make_model()
    with torch.no_grad():
        model[5].weight[0, 0] = poison
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"5\.weight.*NaN or Inf"):
        momos.project_(model, momos.MoMosConfig(capacity=0.1))
    for k, v in before.items():   # the poisoned value included (NaN equals NaN here)
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, equal_nan=True)


def test_non_floating_parameter_raises_and_leaves_model_untouched():
    model = make_model()
    model.register_parameter("steps", nn.Parameter(torch.arange(3), requires_grad=False))
    before = snapshot(model)
    with pytest.raises(TypeError, match="'steps'.*floating"):
        momos.project_(model, momos.MoMosConfig(capacity=0.1, include=("weight", "steps")))
    assert_unchanged(model, before)
    # by default frozen parameters, integer ones included, are not selected
    momos.project_(model, momos.MoMosConfig(capacity=0.1))
    assert torch.equal(model.steps, before["steps"])


def test_no_selected_parameters_raises():
    with pytest.raises(ValueError, match="no parameters selected"):
        momos.project_(nn.ReLU(), momos.MoMosConfig(capacity=0.1))


def test_bad_given_motifs_leave_model_untouched():
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="shape"):
        momos.project_(model, momos.MoMosConfig(block_size=4, capacity=0.1), motifs=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="codebooks"):
        momos.project_(model, momos.MoMosConfig(block_size=4, capacity=0.1, scope="per_tensor"),
                       motifs=torch.zeros(3, 4))
    assert_unchanged(model, before)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4),
       block_size=st.integers(1, 6), capacity=st.floats(0.01, 1.0), force_zero=st.booleans(),
       scope=st.sampled_from(["global", "per_tensor"]), seed=st.integers(0, 1000))
def test_projection_property(shapes, block_size, capacity, force_zero, scope, seed):
    torch.manual_seed(seed)
    model = nn.Module()
    for i, shape in enumerate(shapes):
        model.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape)))
    cfg = momos.MoMosConfig(block_size=block_size, capacity=capacity, force_zero=force_zero,
                            scope=scope, seed=seed)
    before = snapshot(model)
    try:
        stats = momos.project_(model, cfg, warn_relative_error=None)
    except ValueError as error:  # a codebook of only the zero motif, or a tensor turned to zeros
        assert "k = 1" in str(error) or "entirely into zeros" in str(error)
        assert_unchanged(model, before)
        return
    assert_exact_mosaic(model, cfg, stats)
    assert int(stats.motif_counts.sum()) == stats.num_blocks
    for c in stats.codebooks:
        assert c.num_motifs == cfg.motifs_for(c.block_end - c.block_start)
    assert momos.project_(model, cfg, motifs=stats.codebook_motifs()).changed_weights == 0


def test_kmeans_refines_with_the_approximate_search_when_asked(monkeypatch):
    import momos.project as project

    calls = []
    search = project.nearest_motif_approximate

    def counting(*args, **kwargs):
        calls.append(1)
        return search(*args, **kwargs)

    monkeypatch.setattr(project, "nearest_motif_approximate", counting)
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, motif_method="kmeans", kmeans_iterations=3,
                            assignment="approximate")
    momos.project_(make_model(), cfg, keep_nonzero=False, warn_relative_error=None)
    assert len(calls) == 3 + 1  # every Lloyd iteration, then the final assignment


def test_configs_stored_with_the_former_runtime_knobs_still_load():
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1)
    stored = {**cfg.to_dict(), "max_distance_bytes": 2**20, "max_projection_seconds": None}   # version 0.1
    assert momos.MoMosConfig.from_dict(stored) == cfg
    assert "max_distance_bytes" not in cfg.to_dict()
    with pytest.raises(TypeError):
        momos.MoMosConfig.from_dict({**cfg.to_dict(), "no_such_field": 1})


def test_configs_stored_with_the_former_name_of_motif_method_still_load():
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, motif_method="kmeans")
    stored = {k: v for k, v in cfg.to_dict().items() if k != "motif_method"} | {"motifs": "kmeans"}
    assert momos.MoMosConfig.from_dict(stored) == cfg
