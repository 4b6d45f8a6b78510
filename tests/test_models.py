"""The built-in models: sizes, shapes, QAT naming conventions, timm names."""

import pytest
import torch
from torch import nn

from momos.models import MODELS, build_model, check_model_name, optimizer_profile
from momos.qat import QATConfig, quantized_modules


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32)])
def test_forward_shapes(name, channels, size):
    model = build_model(name, channels=channels, image_size=size, num_classes=7)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_mlp_layers():
    model = build_model("mlp", channels=3, image_size=32, num_classes=10)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(256, 3072), (256, 256), (256, 256), (256, 256), (10, 256)]


def test_resnet20_is_the_cifar_resnet():
    model = build_model("resnet20", channels=3, image_size=32, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and count(model) == 269_722           # 19 convolutions + fc = 20 layers
    assert all(m.kernel_size == (3, 3) for m in convs)             # option A: no projection shortcuts


def test_vit_size():
    assert count(build_model("vit", channels=3, image_size=32, num_classes=10)) == 546_186
    with pytest.raises(ValueError, match="divisible"):
        build_model("vit", channels=1, image_size=30, num_classes=10)


@pytest.mark.parametrize("name", MODELS)
def test_qat_leaves_normalization_layers_in_full_precision(name):
    model = build_model(name, channels=3, image_size=32, num_classes=10)
    quantized = [n for n, _ in quantized_modules(model, QATConfig())]
    norms = [n for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    assert quantized and not set(quantized) & set(norms)


def test_timm_models_by_name():
    pytest.importorskip("timm")
    check_model_name("test_vit")
    with pytest.raises(ValueError, match="neither built in"):
        check_model_name("no_such_model")
    torch.manual_seed(0)
    model = build_model("test_vit", channels=1, image_size=28, num_classes=10)   # native 160 px: resized
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        build_model("no_such_model", channels=3, image_size=32, num_classes=10)


def test_optimizer_profiles():
    assert optimizer_profile("resnet20") == "sgd"
    assert optimizer_profile("mlp") == optimizer_profile("vit") == optimizer_profile("vit_tiny_patch16_224") == "adamw"
