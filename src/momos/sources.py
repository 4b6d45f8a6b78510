"""Where pretrained models come from: one string names a model and its weights.

    source = load_source("runs/007")                                  # a `momos train` run folder
    source = load_source("model.safetensors", model_name="resnet20", dataset="cifar10")
    source = load_source("hf:./my-bert")                              # a local Hugging Face folder
    source = load_source("timm:resnet18", weights="resnet18.safetensors")
    source = load_source("torchvision:resnet18", weights="resnet18.pth")

Nothing is downloaded: Hugging Face folders are read with ``local_files_only``, timm and
torchvision models are built without weights and filled from ``weights``. Weight files are read
with safetensors or ``torch.load(weights_only=True)``, never with pickle.

A :class:`Source` carries the model in eval mode, and what feeding it takes: a tokenizer for
text models, an ``adapt`` function that turns a data set's images into the model's inputs
(channels repeated, resized to the model's native resolution).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .data import INFOS

KINDS = ("run", "checkpoint", "hf", "timm", "torchvision")
CHECKPOINTS = ("init", "best", "final")


class SourceError(ValueError):
    """A model source that cannot be loaded; the message names it and what is wrong."""


@dataclass
class Source:
    """A loaded model and what feeding it takes.

    Attributes:
        model: the model, in eval mode, with the source's weights.
        kind: one of :data:`KINDS`.
        name: the source as given (for records).
        dataset: the data set the model was trained on, when the source says (run folders).
        train_config: a run folder's ``TrainConfig`` (None otherwise).
        tokenizer: a Hugging Face tokenizer of a text model (None otherwise).
        adapt: images ``(B, C, H, W)`` of a momos data set -> the model's inputs.
    """

    model: nn.Module
    kind: str
    name: str
    dataset: str | None = None
    train_config: object | None = None
    tokenizer: object | None = None
    adapt: Callable[[torch.Tensor], torch.Tensor] | None = None

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.adapt is None else self.adapt(images)


def load_source(spec: str | os.PathLike, *, model_name: str | None = None, weights: str | os.PathLike | None = None,
                dataset: str | None = None, checkpoint: str = "final", num_classes: int | None = None,
                channels: int | None = None, image_size: int | None = None) -> Source:
    """Load the model that ``spec`` names.

    Args:
        spec: a run folder (or one of its ``init/best/final.safetensors``); a ``.safetensors``
            state dict (with ``model_name`` and ``dataset``); ``hf:PATH``; ``timm:NAME`` or
            ``torchvision:NAME`` (with ``weights``).
        model_name: a ``momos train`` model name (``mlp``, ``resnet20``, ``vit``, a timm name)
            for a bare state dict.
        weights: the weight file of a timm or torchvision model (safetensors, or a PyTorch
            state dict file read with ``weights_only=True``).
        dataset: the data set that fixes a state dict model's input shape and classes.
        checkpoint: which checkpoint of a run folder.
        num_classes: classes of a timm or torchvision model's head (default: the library's).
        channels: input channels of a timm model (default: the library's, 3).
        image_size: resize images to this size for a timm, torchvision or Hugging Face image
            model (default: the model's native size where it has one).

    Raises:
        SourceError: the source cannot be loaded (the message names it).
    """
    spec = str(spec)
    kind, _, rest = spec.partition(":")
    loaders = {"hf": _hugging_face, "timm": _timm, "torchvision": _torchvision}
    try:
        if kind in loaders and rest:
            options = {"channels": channels} if kind == "timm" else {}
            source = loaders[kind](rest, weights=weights, num_classes=num_classes, image_size=image_size, **options)
        else:
            source = _local(Path(spec), model_name=model_name, dataset=dataset, checkpoint=checkpoint)
    except SourceError as error:
        raise SourceError(f"cannot load {spec}: {error}") from None
    source.name = spec
    source.model.eval()
    return source


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: safetensors, or a PyTorch file read with ``weights_only``."""
    if not path.is_file():
        raise SourceError(f"{path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader error means "not a weight file"
        raise SourceError(f"{path} is not a readable weight file: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]   # a training checkpoint's weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_weights_(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch names the first differences."""
    expected = model.state_dict()
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [f"{n} {tuple(state[n].shape)} != {tuple(t.shape)}" for n, t in expected.items()
             if n in state and state[n].shape != t.shape]
    if missing or unexpected or wrong:
        raise SourceError(f"{origin} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                          f"different shapes {wrong[:3]}")
    model.load_state_dict(state)


# --- momos runs and checkpoints ----------------------------------------------------------------

def _local(path: Path, *, model_name, dataset, checkpoint) -> Source:
    if checkpoint not in CHECKPOINTS:
        raise SourceError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if path.is_file() and path.stem in CHECKPOINTS and (path.parent / "results.json").is_file():
        path, checkpoint = path.parent, path.stem
    if path.is_dir():
        return _run(path, checkpoint)
    if not path.exists():
        raise SourceError("no such file or folder (a model source is a run folder, a .safetensors file, "
                          "hf:PATH, timm:NAME or torchvision:NAME)")
    return _checkpoint(path, model_name, dataset)


def _run(run_dir: Path, checkpoint: str) -> Source:
    from .runfolder import RESULTS, load_model
    from .trainconfig import TrainConfig

    if not (run_dir / RESULTS).is_file():
        raise SourceError(f"{run_dir} is not a run folder (no {RESULTS})")
    if not (run_dir / f"{checkpoint}.safetensors").is_file():
        raise SourceError(f"the run has no {checkpoint}.safetensors (unfinished? try checkpoint best)")
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / RESULTS).read_text())["config"])
        model = load_model(run_dir, checkpoint)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise SourceError(str(error)) from None
    return Source(model, "run", str(run_dir), dataset=config.dataset, train_config=config)


def _checkpoint(path: Path, model_name: str | None, dataset: str | None) -> Source:
    from .models import model_for_dataset

    if model_name is None or dataset is None:
        raise SourceError("a bare state dict needs the model name and the data set that fix its shapes "
                          "(--model NAME --dataset NAME)")
    if dataset not in INFOS:
        raise SourceError(f"unknown dataset {dataset!r}; choose one of {', '.join(INFOS)}")
    try:
        model = model_for_dataset(model_name, INFOS[dataset])
    except ValueError as error:
        raise SourceError(str(error)) from None
    load_weights_(model, read_state_dict(path), path.name)
    return Source(model, "checkpoint", str(path), dataset=dataset)


# --- other libraries ---------------------------------------------------------------------------

def _hugging_face(path: str, *, weights, num_classes, image_size) -> Source:
    if weights is not None:
        raise SourceError("a Hugging Face folder holds its own weights; drop weights")
    try:
        import transformers
    except ImportError:
        raise SourceError("hf: sources need transformers (pip install 'momos[transformers]')") from None
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder} is not a Hugging Face model folder (no config.json); "
                          "nothing is downloaded, save the model there first")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    architectures = " ".join(config.architectures or [])
    if "ForSequenceClassification" in architectures:
        auto = transformers.AutoModelForSequenceClassification
    elif "ForImageClassification" in architectures:
        auto = transformers.AutoModelForImageClassification
    else:
        auto = transformers.AutoModel
    try:
        model = auto.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise SourceError(str(error).splitlines()[0]) from None
    tokenizer = None
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    adapt = None
    if hasattr(config, "num_channels") and hasattr(config, "image_size"):
        adapt = image_adapter(config.num_channels, image_size or config.image_size)
    return Source(model, "hf", path, tokenizer=tokenizer, adapt=adapt)


def _timm(name: str, *, weights, num_classes, image_size, channels=None) -> Source:
    try:
        import timm
    except ImportError:
        raise SourceError("timm: sources need timm (pip install 'momos[timm]')") from None
    if not timm.is_model(name):
        raise SourceError(f"{name!r} is not a timm model (see timm.list_models())")
    options = {k: v for k, v in (("num_classes", num_classes), ("in_chans", channels)) if v is not None}
    model = timm.create_model(name, pretrained=False, **options)
    _fill(model, weights, "timm")
    native = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return Source(model, "timm", name, adapt=image_adapter(native[0], image_size or native[1]))


def _torchvision(name: str, *, weights, num_classes, image_size) -> Source:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    except ValueError:
        raise SourceError(f"{name!r} is not a torchvision model (see torchvision.models.list_models())") from None
    _fill(model, weights, "torchvision")
    # torchvision's convnets pool adaptively and take any size; resize only when asked.
    return Source(model, "torchvision", name, adapt=image_adapter(3, image_size))


def _fill(model: nn.Module, weights, library: str) -> None:
    if weights is None:
        raise SourceError(f"{library}: sources need a weight file (--weights FILE); nothing is downloaded")
    path = Path(weights)
    load_weights_(model, read_state_dict(path), path.name)


def image_adapter(channels: int, size: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images ``(B, C, H, W)`` -> ``(B, channels, size, size)``: gray repeated, bilinear resize."""

    def adapt(images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != channels:
            if images.shape[1] != 1:
                raise ValueError(f"the model takes {channels}-channel images, the data has {images.shape[1]}")
            images = images.expand(-1, channels, -1, -1)
        if size is not None and images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return images

    return adapt
