"""Input statistics measured by forward hooks, and the calibration-aware projection."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import momos
from momos.calibration import DAMPING, input_importance


def expected(mean):
    """The importance of per-feature mean squares: damped, then scaled to mean 1."""
    mean = mean.double() + DAMPING * mean.double().mean()
    return mean


def assert_proportional(h, reference):
    reference = reference.double() / reference.double().mean()
    torch.testing.assert_close(h.double(), reference, rtol=1e-5, atol=1e-7)


def test_linear_weighs_each_input_feature_by_its_mean_square():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x = torch.randn(2, 10, 6) * torch.arange(1, 7)
    h, bias = input_importance(layer, ["weight", "bias"], [x[0], x[1]])
    mean = x.reshape(-1, 6).square().mean(0)
    assert_proportional(h, expected(mean).expand(3, 6))
    assert torch.equal(bias, torch.ones(3))  # no input statistics: weight 1
    assert h.mean().item() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), padding=(2, 1), dilation=2),
    dict(kernel_size=3, padding="same", groups=2),
])
def test_conv2d_weighs_each_input_channel_and_kernel_position(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **kwargs)
    x = torch.randn(3, 4, 9, 8) * torch.arange(1, 5).view(1, 4, 1, 1)
    (h,) = input_importance(conv, ["weight"], [x])
    # reference: the unfolded patches a convolution multiplies with its weight
    padding = conv._reversed_padding_repeated_twice if conv.padding == "same" else None
    xp = F.pad(x, padding) if padding is not None else x
    patches = F.unfold(xp, conv.kernel_size, dilation=conv.dilation,
                       padding=0 if padding is not None else conv.padding, stride=conv.stride)
    mean = patches.square().mean(dim=(0, 2)).reshape(4, *conv.kernel_size)
    per_group = 4 // conv.groups
    reference = torch.cat([expected(mean)[g * per_group:(g + 1) * per_group][None].expand(6 // conv.groups, -1, -1, -1)
                           for g in range(conv.groups)])
    assert_proportional(h, reference)


def test_conv1d_and_embedding():
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 7)
    (h,) = input_importance(conv, ["weight"], [x])
    patches = F.unfold(x[:, :, None], (1, 3), padding=(0, 1))
    assert_proportional(h, expected(patches.square().mean(dim=(0, 2)).reshape(2, 3)).expand(3, 2, 3))

    embedding = nn.Embedding(5, 2)
    tokens = torch.tensor([[0, 0, 1, 3], [0, 1, 1, 1]])
    (h,) = input_importance(embedding, ["weight"], [tokens])
    frequency = torch.tensor([3, 4, 0, 1, 0]) / 8
    assert_proportional(h, expected(frequency)[:, None].expand(5, 2))
    assert (h[2] > 0).all()  # an unseen token keeps a little weight (damping)


def test_calibration_changes_nothing_and_accepts_callables_and_mappings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 4)
    hooks = input_importance(model, ["0.weight", "2.weight"], [x])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # BatchNorm statistics untouched: eval mode
    assert model.training and model[1].training
    assert len(model[0]._forward_pre_hooks) == 0
    called = input_importance(model, ["0.weight", "2.weight"], lambda m: m(x))
    for a, b in zip(hooks, called):
        assert torch.equal(a, b)

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 2)

        def forward(self, *, inputs):
            return self.proj(inputs)

    (h,) = input_importance(Keyword(), ["proj.weight"], [{"inputs": x}])
    assert h.shape == (2, 4)


def test_calibration_that_runs_no_layer_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="ran none of the 1 measurable layers"):
        input_importance(model, ["0.weight"], lambda m: None)


def test_calibrated_projection_keeps_the_outputs_closer():
    """Input features of different scales, mixed within blocks: weighing by E[x²] protects the
    features that drive the output, so the projected layer's outputs stay closer (3x here)."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 64, bias=False)
    x = torch.randn(512, 64) * torch.logspace(-1.5, 0.5, 64)[torch.randperm(64)]
    reference = layer(x).detach()
    cfg = momos.MoMosConfig(block_size=4, capacity=0.05, force_zero=False)
    errors = {}
    for name, calibration in (("plain", None), ("calibrated", [x[:256]])):
        projected = copy.deepcopy(layer)
        momos.project_(projected, cfg, calibration=calibration, warn_relative_error=None)
        errors[name] = float((projected(x[256:]) - reference[256:]).square().mean())
    assert errors["calibrated"] < 0.5 * errors["plain"]
    with pytest.raises(ValueError, match="not both"):
        momos.project_(copy.deepcopy(layer), cfg, calibration=[x], importance=[torch.ones(64, 64)])


def test_weighted_assignment_minimizes_the_weighted_distance():
    """Every block takes the motif nearest under Σ h_c (b_c − z_c)² (ties to the lowest index)."""
    torch.manual_seed(1)
    layer = nn.Linear(8, 16, bias=False)
    importance = torch.rand(16, 8) ** 4
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, force_zero=False)
    blocks = layer.weight.detach().reshape(-1, 4).clone()
    stats = momos.project_(layer, cfg, importance=[importance], warn_relative_error=None)
    h = importance.reshape(-1, 4).double()
    distances = (h[:, None] * (blocks.double()[:, None] - stats.motifs.double()[None]) ** 2).sum(-1)
    assert torch.equal(stats.assignments, distances.argmin(dim=1))


def test_projector_calibrates_every_projection():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(64, 16) * torch.logspace(-1.5, 0.5, 16)[torch.randperm(16)]
    cfg = momos.MoMosConfig(block_size=4, capacity=0.3, force_zero=False)
    calibrated, plain = copy.deepcopy(layer), copy.deepcopy(layer)
    projector = momos.Projector(calibrated, cfg, calibration=[x])
    stats = projector.project()
    expected = momos.project_(plain, cfg, calibration=[x], warn_relative_error=None)
    assert torch.equal(stats.assignments, expected.assignments)
    assert not torch.equal(stats.assignments, momos.project_(copy.deepcopy(layer), cfg).assignments)
