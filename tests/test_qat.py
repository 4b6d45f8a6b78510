import pytest
import torch
from torch import nn

import momos
from momos.qat import FakeQuantize, has_qat
from momos.quantization import fake_quantize, quantize_symmetric


def test_forward_uses_exact_quantized_weights():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.7, -0.2, 0.05], [0.33, 0.0, -0.7]]))
    momos.add_qat_(nn.Sequential(layer), momos.QATConfig(bits=3))
    # q=3: scale = 0.7 / 3; levels round(w / scale)
    scale = 0.7 / 3
    expected = torch.tensor([[3, -1, 0], [1, 0, -3]], dtype=torch.float32) * scale
    assert torch.allclose(layer.weight, expected, atol=1e-7)
    out = layer(torch.eye(3))
    assert torch.allclose(out, expected.t(), atol=1e-7)
    assert torch.equal(layer.parametrizations.weight.original,
                       torch.tensor([[0.7, -0.2, 0.05], [0.33, 0.0, -0.7]]))


def test_straight_through_gradient():
    layer = nn.Linear(4, 1, bias=False)
    momos.add_qat_(layer, momos.QATConfig(bits=2))
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert torch.allclose(grad, x.sum(0, keepdim=True))


def test_exclusions_and_biases():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    model.add_module("norm", nn.LayerNorm(2))
    momos.add_qat_(model, momos.QATConfig(bits=4, exclude=("^1$", "norm")))
    assert isinstance(model[0].parametrizations.weight[0], FakeQuantize)
    assert isinstance(model[3].parametrizations.weight[0], FakeQuantize)
    assert not hasattr(model[1], "parametrizations")
    assert not hasattr(model.norm, "parametrizations")
    assert "bias" in model[0]._parameters  # biases stay full precision


def test_off_at_32_bits_and_once_only():
    model = nn.Linear(3, 3)
    momos.add_qat_(model, momos.QATConfig(bits=32))
    assert not has_qat(model)
    momos.add_qat_(model, momos.QATConfig(bits=8))
    with pytest.raises(ValueError, match="already"):
        momos.add_qat_(model, momos.QATConfig(bits=8))
    momos.remove_qat_(model)
    assert not has_qat(model)


@pytest.mark.parametrize("bits", [1, 0])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        momos.QATConfig(bits=bits)


def test_projection_acts_on_latent_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    momos.add_qat_(model, momos.QATConfig(bits=8))
    names = [n for n, _ in momos.select_parameters(model, momos.MoMosConfig(capacity=0.1))]
    assert "0.parametrizations.weight.original" in names
    stats = momos.project_(model, momos.MoMosConfig(block_size=2, capacity=0.1))
    latent = model[0].parametrizations.weight.original.detach().reshape(-1, 2)
    assert ((latent[:, None] == stats.motifs[None]).all(-1)).any(1).all()


def test_an_all_zero_tensor_has_zero_levels_and_scale():
    levels, scale = quantize_symmetric(torch.zeros(2, 3), 8)
    assert torch.equal(levels, torch.zeros(2, 3, dtype=torch.long)) and scale == 0
    assert torch.equal(fake_quantize(torch.zeros(5), 8), torch.zeros(5))


def test_compile_traces_a_qat_model_as_one_graph():
    """No data-dependent branch in fake quantization: ``torch.compile`` of a ``momos+qat`` model
    would otherwise break its graph at every weight (ResNet-20: 42 breaks, and a compiled
    training step slower than the eager one)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    momos.add_qat_(model, momos.QATConfig(bits=8))
    explained = torch._dynamo.explain(model)(torch.randn(2, 1, 8, 8))
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
