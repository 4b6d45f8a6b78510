"""momos.compact_ / momos.dense_: a mosaic held as motif tables plus block indices."""

import shutil
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import momos
from momos.compact import MosaicWeight, resident_bytes
from momos.models import MLP, build_model
from momos.qat import fake_quantized


class Tagger(nn.Module):
    """Embedding -> Conv1d -> Linear.  tokens (B, T) -> (B, T, classes)."""

    def __init__(self, vocabulary: int = 50, dim: int = 12, channels: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.conv = nn.Conv1d(dim, channels, 3, padding=1)
        self.head = nn.Linear(channels, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(self.embed(tokens).transpose(1, 2)))
        return self.head(x.transpose(1, 2))


class TiedLM(nn.Module):
    """Embedding and output layer share one weight.  tokens (B, T) -> (B, T, vocabulary)."""

    def __init__(self, vocabulary: int = 40, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.head = nn.Linear(dim, vocabulary, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


def mosaic(model: nn.Module, config: momos.MoMosConfig):
    """``model`` projected (in eval mode) and its scales."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # large relative errors are no concern here
        stats = momos.project_(model.eval(), config)
    return model, stats.scales


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def compact_tensors(model: nn.Module) -> list[MosaicWeight]:
    return [m for m in model.modules() if isinstance(m, MosaicWeight)]


def images(size: int) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))


TOKENS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))

# (model, config, input): runs and tiles, every normalization, both scopes
CASES = {
    "mlp": (lambda: build_model("mlp", channels=3, image_size=16, num_classes=10),
            momos.MoMosConfig(block_size=4, capacity=0.01, seed=0), images(16)),
    "resnet20-tiles-channel": (lambda: build_model("resnet20", channels=3, image_size=8, num_classes=10),
                               momos.MoMosConfig(block_size=9, tile_shape=(3, 3), capacity=0.01, normalize="channel",
                                                 exclude=("fc",), seed=0), images(8)),
    "vit-tensor": (lambda: build_model("vit", channels=3, image_size=8, num_classes=10),
                   momos.MoMosConfig(block_size=4, capacity=0.01, normalize="tensor", seed=0), images(8)),
    "embedding-channel-per-tensor": (Tagger, momos.MoMosConfig(block_size=4, capacity=0.3, normalize="channel",
                                                               scope="per_tensor", parameters="matrices", seed=0),
                                     TOKENS),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(a projected model, its compact copy, the config, the scales, an input)."""
    torch.manual_seed(0)
    build, config, x = CASES[request.param]
    model, scales = mosaic(build(), config)
    compact = build().eval()
    compact.load_state_dict(model.state_dict())
    momos.compact_(compact, config, scales=scales)
    return model, compact, config, scales, x


def test_outputs_are_bit_identical_to_the_dense_mosaic(case):
    model, compact, _, _, x = case
    assert compact_tensors(compact)
    assert torch.equal(outputs(compact, x), outputs(model, x))
    assert torch.equal(compact(x), model(x))
    try:   # inference mode: only when no weight requires grad (matmul's kernel choice depends on it)
        for m in (model, compact):
            m.requires_grad_(False)
        with torch.inference_mode():
            assert torch.equal(compact(x), model(x))
    finally:
        for m in (model, compact):
            m.requires_grad_(True)


def test_no_dense_mosaic_weight_is_resident(case):
    model, compact, config, _, _ = case
    names = [name for name, _ in momos.select_parameters(model, config)]
    assert all(p.numel() == 0 for name, p in compact.named_parameters() if name.endswith(".original"))
    assert sum(p.numel() for p in compact.parameters()) == \
        sum(p.numel() for name, p in model.named_parameters() if name not in names)


def test_dense_restores_the_mosaic_as_plain_parameters(case):
    model, compact, config, scales, _ = case
    momos.dense_(compact)
    try:
        assert not any(parametrize.is_parametrized(m) for m in compact.modules())
        assert list(compact.state_dict()) == list(model.state_dict())   # in the same order
        assert all(torch.equal(compact.state_dict()[name], t) for name, t in model.state_dict().items())
    finally:
        momos.compact_(compact, config, scales=scales)


def test_one_motif_table_per_codebook_shared_by_its_tensors(case):
    _, compact, config, _, _ = case
    tables = {id(w.table) for w in compact_tensors(compact)}
    assert len(tables) == (1 if config.scope == "global" else len(compact_tensors(compact)))
    motif_buffers = [b for name, b in compact.named_buffers() if name.endswith("motifs")]
    assert len(motif_buffers) == len(tables)   # named_buffers counts a shared tensor once


def test_mlp_resident_bytes_are_at_most_a_sixth_of_dense_float32():
    torch.manual_seed(0)
    model, _ = mosaic(MLP(3 * 32 * 32, 10), momos.MoMosConfig(block_size=4, capacity=0.01, seed=0))
    dense = resident_bytes(model)
    momos.compact_(model, momos.MoMosConfig(block_size=4, capacity=0.01, seed=0))
    # k = 2,466: 12 bits per block, a uint8 low byte plus 4 packed bits
    assert {(w.indices.dtype, w.high_indices.dtype) for w in compact_tensors(model)} == {(torch.uint8, torch.uint8)}
    assert resident_bytes(model) <= dense / 6


def test_state_dict_round_trips_between_compact_models_of_one_config():
    config = momos.MoMosConfig(block_size=4, capacity=0.3, normalize="tensor", seed=0)
    torch.manual_seed(0)
    source, scales = mosaic(Tagger(), config)
    reference = outputs(source, TOKENS)
    momos.compact_(source, config, scales=scales)
    target = Tagger().eval()   # another mosaic: zeros, one motif used, scales 1
    for param in target.parameters():
        nn.init.zeros_(param)
    momos.compact_(target, config, scales=[torch.ones(()) for _ in target.parameters()])
    target.load_state_dict(source.state_dict())
    assert torch.equal(outputs(target, TOKENS), reference)
    assert any(name.endswith(".0.indices") for name in source.state_dict())


def test_a_model_that_is_not_a_mosaic_is_refused_untouched():
    config = momos.MoMosConfig(block_size=4, capacity=0.05, parameters="matrices", seed=0)
    torch.manual_seed(0)
    model, _ = mosaic(MLP(20, 3, hidden=(32,)), config)
    nn.init.normal_(model[3].weight)   # 24 new blocks where the codebook allows k = 9 motifs
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"parameter '3\.weight' is not a mosaic"):
        momos.compact_(model, config)
    assert not parametrize.is_parametrized(model[1])
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], t) for name, t in before.items())


def test_compacting_twice_is_refused():
    config = momos.MoMosConfig(block_size=4, capacity=0.3, seed=0)
    model, _ = mosaic(Tagger(), config)
    momos.compact_(model, config)
    with pytest.raises(ValueError, match="already compact"):
        momos.compact_(model, config)


def test_a_compact_weight_refuses_a_new_value():
    config = momos.MoMosConfig(block_size=4, capacity=0.3, seed=0)
    model, _ = mosaic(Tagger(), config)
    momos.compact_(model, config)
    model.head.weight = model.head.weight.detach().clone()   # its own value is accepted
    with pytest.raises(ValueError, match="dense_"):
        model.head.weight = torch.zeros_like(model.head.weight)


def test_a_weight_refuses_indices_of_another_number_of_blocks():
    layout = momos.blocks.layout_of([torch.empty(3, 8)], 4)   # 6 blocks
    with pytest.raises(ValueError, match="5 block indices for a weight of 6 blocks"):
        MosaicWeight(momos.compact.MotifTable(torch.randn(2, 4)), torch.zeros(5, dtype=torch.long), layout)


def test_tied_weights_stay_tied_and_compact():
    config = momos.MoMosConfig(block_size=4, capacity=0.3, seed=0)
    torch.manual_seed(0)
    model, _ = mosaic(TiedLM(), config)
    tokens = torch.randint(0, 40, (2, 5))
    reference = outputs(model, tokens)
    momos.compact_(model, config)
    assert model.embed.parametrizations.weight[0] is model.head.parametrizations.weight[0]
    assert torch.equal(outputs(model, tokens), reference)
    momos.dense_(model)
    assert model.head.weight is model.embed.weight
    assert torch.equal(outputs(model, tokens), reference)


def test_fake_quantization_is_applied_to_the_rebuilt_weight():
    config = momos.MoMosConfig(block_size=4, capacity=0.1, seed=0)
    torch.manual_seed(0)
    model = momos.add_qat_(MLP(20, 3, hidden=(32, 32)), momos.QATConfig(bits=4))
    model, _ = mosaic(model, config)
    latent = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.randn(5, 20)
    reference = outputs(model, x)
    momos.compact_(model, config)
    assert [type(p).__name__ for p in model[1].parametrizations.weight] == ["MosaicWeight", "FakeQuantize"]
    assert torch.equal(outputs(model, x), reference)
    momos.dense_(model)
    assert fake_quantized(model) == {"1.weight": 4, "3.weight": 4, "5.weight": 4}
    assert all(torch.equal(model.state_dict()[name], t) for name, t in latent.items())


def test_moving_the_model_keeps_the_table_shared():
    config = momos.MoMosConfig(block_size=4, capacity=0.3, normalize="channel", seed=0)
    torch.manual_seed(0)
    model, scales = mosaic(Tagger(), config)
    reference = outputs(model.double(), TOKENS)
    momos.compact_(model.float(), config, scales=scales).double()
    assert len({id(w.table.motifs) for w in compact_tensors(model)}) == 1
    assert torch.equal(outputs(model, TOKENS), reference)


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs():
    if not torch._dynamo.is_dynamo_supported() or not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile is unavailable here (no dynamo, or no C++ compiler for inductor)")
    build, config, x = CASES["mlp"]
    torch.manual_seed(0)
    model, _ = mosaic(build(), config)
    reference = outputs(model, x)
    compiled = torch.compile(momos.compact_(model, config), fullgraph=True)
    assert torch.equal(outputs(compiled, x), reference)
    assert torch.equal(compiled(x).detach(), reference)   # with gradients too


def test_load_compact_holds_the_files_mosaic_as_tables_and_indices(case, tmp_path):
    model, _, config, scales, x = case
    path = tmp_path / "model.momos"
    momos.save(model, path, config, scales=scales)
    build = CASES[next(name for name, c in CASES.items() if c[1] == config)][0]
    loaded = momos.load(path, build().eval().requires_grad_(False), compact=True)   # selection need not match
    assert len(compact_tensors(loaded)) == len(compact_tensors(case[1]))
    dense = momos.load(path, build().eval().requires_grad_(False))   # the same flags: the same matmul kernels
    assert torch.equal(outputs(loaded, x), outputs(dense, x))
    with pytest.raises(ValueError, match="needs the model"):
        momos.load(path, compact=True)


def test_load_compact_builds_no_dense_mosaic_and_fills_a_model_on_the_meta_device(case, tmp_path, monkeypatch):
    model, _, config, scales, x = case
    path = tmp_path / "model.momos"
    momos.save(model, path, config, scales=scales)
    build = CASES[next(name for name, c in CASES.items() if c[1] == config)][0]
    dense = momos.load(path, build().eval().requires_grad_(False))
    with torch.device("meta"):
        meta_dense, meta_compact = build().eval(), build().eval()
    assert torch.equal(outputs(momos.load(path, meta_dense.requires_grad_(False)), x), outputs(dense, x))

    def no_rebuild(mosaic):
        raise AssertionError("the compact load rebuilt the dense mosaic")

    monkeypatch.setattr(momos.fileformat.codec, "rebuild", no_rebuild)
    loaded = momos.load(path, meta_compact.requires_grad_(False), compact=True)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert torch.equal(outputs(loaded, x), outputs(dense, x))


def test_load_compact_keeps_tied_weights_tied(tmp_path):
    config = momos.MoMosConfig(block_size=4, capacity=0.3, seed=0)
    torch.manual_seed(0)
    model, _ = mosaic(TiedLM(), config)
    momos.save(model, tmp_path / "tied.momos", config)
    loaded = momos.load(tmp_path / "tied.momos", TiedLM().eval(), compact=True)
    assert loaded.embed.parametrizations.weight[0] is loaded.head.parametrizations.weight[0]
    tokens = torch.randint(0, 40, (2, 5))
    assert torch.equal(outputs(loaded, tokens), outputs(model, tokens))


def test_load_compact_refuses_a_file_that_does_not_fit_and_leaves_the_model(tmp_path):
    config = momos.MoMosConfig(block_size=4, capacity=0.3, seed=0)
    torch.manual_seed(0)
    model, _ = mosaic(MLP(20, 3, hidden=(32,)), config)
    momos.save(model, tmp_path / "mlp.momos", config)
    other = MLP(20, 3, hidden=(16,))
    before = {name: t.clone() for name, t in other.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit the model"):
        momos.load(tmp_path / "mlp.momos", other, compact=True)
    assert not compact_tensors(other)
    assert all(torch.equal(before[name], t) for name, t in other.state_dict().items())


@pytest.mark.parametrize("on_meta", [False, True])
def test_load_compact_of_a_quantized_file_keeps_the_fake_quantization_and_builds_no_dense_mosaic(
        tmp_path, monkeypatch, on_meta):
    config = momos.MoMosConfig(block_size=4, capacity=0.1, seed=0, exclude=(r"^5\.",))   # 5.weight: quantized, plain
    qat = momos.QATConfig(bits=4)
    torch.manual_seed(0)
    model, _ = mosaic(momos.add_qat_(MLP(20, 3, hidden=(32, 32)), qat), config)
    momos.save(model, tmp_path / "qat.momos", config)
    x = torch.randn(5, 20)

    def no_rebuild(mosaic):
        raise AssertionError("the compact load rebuilt the dense mosaic")

    monkeypatch.setattr(momos.fileformat.codec, "rebuild", no_rebuild)
    with torch.device("meta" if on_meta else "cpu"):
        target = momos.add_qat_(MLP(20, 3, hidden=(32, 32)), qat)
    loaded = momos.load(tmp_path / "qat.momos", target, compact=True)
    assert [type(p).__name__ for p in loaded[1].parametrizations.weight] == ["MosaicWeight", "FakeQuantize"]
    assert [type(p).__name__ for p in loaded[5].parametrizations.weight] == ["FakeQuantize"]
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_load_compact_of_a_quantized_file_needs_its_fake_quantization_and_leaves_the_model(tmp_path):
    config = momos.MoMosConfig(block_size=4, capacity=0.1, seed=0)
    torch.manual_seed(0)
    model, _ = mosaic(momos.add_qat_(MLP(20, 3, hidden=(32, 32)), momos.QATConfig(bits=4)), config)
    momos.save(model, tmp_path / "qat.momos", config)
    for target in (MLP(20, 3, hidden=(32, 32)), momos.add_qat_(MLP(20, 3, hidden=(32, 32)), momos.QATConfig(bits=6))):
        before = {name: t.clone() for name, t in target.state_dict().items()}
        with pytest.raises(ValueError, match="quantiz"):
            momos.load(tmp_path / "qat.momos", target, compact=True)
        assert not compact_tensors(target)
        assert all(torch.equal(before[name], t) for name, t in target.state_dict().items())
