"""The paper's models, built with random weights and no downloads.

    model = build_model("resnet20", channels=3, image_size=32, num_classes=10)

- ``mlp``: flatten -> 256 -> 256 -> 256 -> 256 -> classes, ReLU.
- ``resnet20``: the CIFAR ResNet-20 of He et al. (2016), option-A (parameter-free) shortcuts,
  about 0.27M parameters at 3 input channels.
- ``vit``: a small Vision Transformer: patch 4, width 128, 4 layers of 4 heads, MLP 256, a class
  token and learned position embeddings; about 0.55M parameters at 32x32x3.
- any other name is looked up in ``timm`` (optional dependency), e.g. ``vit_tiny_patch16_224``;
  inputs are resized to the model's native resolution when it differs from the data.

Normalization layers are named ``bn*`` (ResNet) and ``norm*`` (ViT) so that QAT's default
exclusion leaves them in full precision.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("mlp", "resnet20", "vit")


def build_model(name: str, *, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """A freshly initialized model (draws from the global torch RNG).

    Raises:
        ValueError: unknown name (neither built in nor a timm model), or timm is not installed.
    """
    if name == "mlp":
        return MLP(channels * image_size * image_size, num_classes)
    if name == "resnet20":
        return ResNet20(channels, num_classes)
    if name == "vit":
        return ViT(channels, image_size, num_classes)
    return timm_model(name, channels=channels, image_size=image_size, num_classes=num_classes)


def model_for_dataset(name: str, info) -> nn.Module:
    """:func:`build_model` shaped for a data set: its channels, image size and classes
    (``info``: a :class:`momos.data.DatasetInfo`)."""
    channels, image_size, _ = info.shape
    return build_model(name, channels=channels, image_size=image_size, num_classes=info.num_classes)


def check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` is built in or a timm model (with timm installed)."""
    if name in MODELS:
        return
    try:
        import timm
    except ImportError:
        raise ValueError(f"unknown model {name!r}: built-in models are {', '.join(MODELS)}; "
                         f"other names need timm (pip install 'momos[timm]')") from None
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: neither built in ({', '.join(MODELS)}) "
                         f"nor a timm model (see timm.list_models())")


def is_known_model(name: str) -> bool:
    """Built in, or a timm model name when timm is installed."""
    try:
        check_model_name(name)
    except ValueError:
        return False
    return True


def optimizer_profile(name: str) -> str:
    """The paper's optimizer family for a model: ``"sgd"`` for ResNets, ``"adamw"`` otherwise."""
    return "sgd" if "resnet" in name else "adamw"


class MLP(nn.Sequential):
    """flatten -> ``hidden`` ReLU layers -> classes.  x: (B, C, H, W) -> (B, classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256, 256, 256)):
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


# --- ResNet-20 -----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the shortcut subsamples and zero-pads channels (option A)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """3 stages of 3 basic blocks (16, 32, 64 channels), global average pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, width = [], 16
        for channels, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                stages.append(BasicBlock(width, channels, stride if i == 0 else 1))
                width = channels
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# --- small ViT -----------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)          # (B, heads, N, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm attention and MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, position embeddings, pre-norm blocks, linear head on the class token."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, *, patch: int = 4,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_dim: int = 256) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"the ViT needs an image size divisible by its patch size {patch}, got {image_size}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                 # (B, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# --- timm ----------------------------------------------------------------------------------------

class Resized(nn.Module):
    """Bilinear resize to ``size`` before ``model`` (timm models at their native resolution)."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))


def timm_model(name: str, *, channels: int, image_size: int, num_classes: int) -> nn.Module:
    check_model_name(name)
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
    native = tuple(model.pretrained_cfg.get("input_size", (channels, image_size, image_size))[1:])
    return model if native == (image_size, image_size) else Resized(model, native)
