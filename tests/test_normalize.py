"""Scale-normalized mosaics, the selection preset for pretrained networks, and the refusals of
projections that would silently destroy a tensor."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import momos
from momos import scales
from momos.blocks import to_blocks


def two_scale_model(seed=0):
    """Layers whose weights differ in scale by five orders of magnitude, as in pretrained nets."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight.mul_(1e2)
        model[2].weight.mul_(1e-3)
        model[1].weight.copy_(1 + 0.1 * torch.randn(32))
    return model


def normalized_blocks(model, cfg, stats):
    """The selected tensors divided by their scales, cut as the projection cuts them."""
    params = [p.detach() for _, p in momos.select_parameters(model, cfg)]
    exponents = [scales.exponents_of(s) for s in stats.scales]
    divided = [scales.divide(p, e) for p, e in zip(params, exponents)]
    return to_blocks(divided, cfg.block_size, tile_shape=cfg.tile_shape, per_row=cfg.normalize == "channel")


def test_exponents_round_the_rms_and_leave_zero_rows_at_one():
    t = torch.tensor([[3.0, -3.0], [0.0, 0.0], [0.01, 0.01]])
    assert scales.scale_exponents(t, "channel").tolist() == [2, 0, -7]   # log2 3 = 1.58, log2 0.01 = -6.6
    assert scales.scale_exponents(t, "tensor").shape == ()
    assert scales.scale_exponents(torch.ones(5), "channel").shape == ()  # 1-D: one scale


def test_division_by_power_of_two_scales_is_exact():
    torch.manual_seed(0)
    t = torch.randn(50, 7) * torch.logspace(-6, 6, 50)[:, None]
    e = scales.scale_exponents(t, "channel")
    assert torch.equal(scales.multiply(scales.divide(t, e), e), t)
    assert torch.equal(scales.exponents_of(scales.scales_of(e)), e)
    with pytest.raises(ValueError, match="powers of two"):
        scales.exponents_of(torch.tensor([0.3]))
    with pytest.raises(ValueError, match="2\\*\\*-96"):
        scales.exponents_of(torch.tensor([2.0 ** -100]))


def test_per_row_blocks_never_span_two_rows():
    t = torch.arange(1, 16, dtype=torch.float32).reshape(3, 5)  # 5 values a row, s = 2
    blocks, layout = to_blocks([t], 2, per_row=True)
    assert layout.num_blocks == 9                                # 3 rows x ceil(5 / 2)
    assert blocks[2].tolist() == [5.0, 0.0] and blocks[3].tolist() == [6.0, 7.0]
    assert torch.equal(momos.from_blocks(blocks, layout)[0], t)
    with pytest.raises(ValueError, match="span 2 rows"):
        to_blocks([t], 4, tile_shape=(2, 2), per_row=True)


@pytest.mark.parametrize("normalize", ["tensor", "channel"])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_normalized_projection_is_scales_times_motifs(normalize, scope):
    model = two_scale_model()
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, normalize=normalize, scope=scope, force_zero=False)
    stats = momos.project_(model, cfg)
    for (name, param), scale in zip(momos.select_parameters(model, cfg), stats.scales):
        expected = (len(param),) if normalize == "channel" and param.dim() >= 2 else ()
        assert scale.shape == expected, name
    blocks, layout = normalized_blocks(model, cfg, stats)
    mask = layout.valid_mask()
    assert torch.equal(torch.where(mask, stats.motifs[stats.assignments], 0.0), blocks)
    # projecting again at the same motifs and scales changes nothing
    again = momos.project_(model, cfg, motifs=stats.codebook_motifs(), scales=list(stats.scales))
    assert again.changed_weights == 0
    assert momos.is_mosaic(model, cfg, stats.codebook_motifs(), list(stats.scales))


def test_normalization_serves_tensors_of_different_scales():
    errors = {}
    for normalize in ("none", "channel"):
        model = two_scale_model()
        cfg = momos.MoMosConfig(block_size=4, capacity=0.2, normalize=normalize, parameters="matrices")
        errors[normalize] = momos.project_(model, cfg, warn_relative_error=None).relative_errors
    # one raw codebook, drawn mostly from the 1e2 layer, serves the 1e-3 layer badly;
    # normalized motifs serve both alike
    assert errors["none"]["2.weight"] > 0.75
    assert max(errors["channel"].values()) < 0.6


def test_given_scales_are_checked_and_a_failure_leaves_the_model_untouched():
    model = two_scale_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    stats = momos.project_(copy_of(model), cfg)
    bad = list(stats.scales)
    bad[0] = bad[0] * 0.75
    with pytest.raises(ValueError, match="powers of two"):
        momos.project_(model, cfg, scales=bad)
    with pytest.raises(ValueError, match=r"'0\.weight' hold 1 values; .* has 32"):
        momos.project_(model, cfg, scales=[torch.ones(())] * len(bad))
    with pytest.raises(ValueError, match="normalize='none'"):
        momos.project_(model, momos.MoMosConfig(capacity=0.1), scales=bad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def copy_of(model):
    import copy
    return copy.deepcopy(model)


def test_matrices_preset_selects_tensors_of_two_or_more_dimensions():
    model = two_scale_model()
    names = [n for n, _ in momos.select_parameters(model, momos.MoMosConfig(capacity=0.1, parameters="matrices"))]
    assert names == ["0.weight", "2.weight"]
    with pytest.raises(ValueError, match="parameters must be one of"):
        momos.MoMosConfig(capacity=0.1, parameters="weights")
    with pytest.raises(ValueError, match="normalize must be one of"):
        momos.MoMosConfig(capacity=0.1, normalize="row")


def test_a_codebook_of_only_the_zero_motif_is_refused_before_anything_is_written():
    model = two_scale_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = momos.MoMosConfig(block_size=4, capacity=0.01, scope="per_tensor")  # 128 blocks: k = 1
    with pytest.raises(ValueError, match=r"'0\.weight' \(128 blocks\) gets k = 1.*Raise capacity.*exclude.*global"):
        momos.project_(model, cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a zero tensor alone in its codebook may stay zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.zero_()
    momos.project_(model, momos.MoMosConfig(block_size=4, capacity=0.2, scope="per_tensor"))


def test_a_projection_that_zeroes_a_tensor_is_refused_unless_allowed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight.mul_(1e-6)           # far below every motif the big layer offers but zero
    cfg = momos.MoMosConfig(block_size=4, capacity=0.01, parameters="matrices")
    before = model[1].weight.detach().clone()
    with pytest.raises(ValueError, match=r"'1\.weight' entirely into zeros"):
        momos.project_(model, cfg)
    assert torch.equal(model[1].weight, before)
    stats = momos.project_(model, cfg, keep_nonzero=False, warn_relative_error=None)
    assert stats.relative_errors["1.weight"] == pytest.approx(1.0)
    assert bool((model[1].weight == 0).all())


def test_warning_names_the_worst_tensors_and_stats_carry_relative_errors():
    model = two_scale_model()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = momos.MoMosConfig(block_size=4, capacity=0.05, force_zero=False)
    with pytest.warns(UserWarning, match="relative error") as caught:
        stats = momos.project_(model, cfg)
    worst, error = stats.worst_tensors(1)[0]
    assert f"{worst!r} {error:.2f}" in str(caught[0].message)
    for name, param in model.named_parameters():
        error, norm = float((param.detach() - original[name]).norm()), float(original[name].norm())
        expected = error / norm if norm > 0 else error   # a zero tensor: the absolute error
        assert stats.relative_errors[name] == pytest.approx(expected, rel=1e-5)
    assert stats.worst_tensors(1)[0][0] == max(stats.relative_errors, key=stats.relative_errors.get)
    assert stats.summary()["max_relative_error"] == max(stats.relative_errors.values())


def test_warning_suggests_channel_normalization_only_when_not_used():
    cfg = momos.MoMosConfig(block_size=4, num_motifs=2, force_zero=False)
    with pytest.warns(UserWarning, match="relative error") as plain:
        momos.project_(two_scale_model(), cfg)
    with pytest.warns(UserWarning, match="relative error") as channel:
        momos.project_(two_scale_model(), replace(cfg, normalize="channel"))
    assert "normalize='channel'" in str(plain[0].message)
    assert "normalize='channel'" not in str(channel[0].message)
