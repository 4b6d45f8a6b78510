"""momos.export_onnx: the file holds motif tables plus indices, and onnxruntime computes what PyTorch does."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import momos
from momos.blocks import layout_of
from momos.compact import MosaicWeight, MotifTable
from momos.models import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

S4 = momos.MoMosConfig(block_size=4, capacity=0.01, seed=0)


def mosaic(name, config, image_size=8):
    """A projected model of ``momos.models`` (eval mode) and its scales."""
    torch.manual_seed(0)
    model = build_model(name, channels=3, image_size=image_size, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # large relative errors are no concern here
        stats = momos.project_(model, config)
    return model, stats.scales


def run_onnx(path, x):
    return ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]


def assert_runs_as_pytorch(model, path, x):
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, rtol=0, atol=1e-5)


def initializers(path):
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_an_mlp_is_stored_as_motifs_and_indices_and_runs_at_any_batch(tmp_path):
    model, _ = mosaic("mlp", S4)
    before = copy.deepcopy(model.state_dict())
    path = tmp_path / "mlp.onnx"
    size = momos.export_onnx(model, torch.randn(1, 3, 8, 8), path, S4)
    assert size == path.stat().st_size
    assert_runs_as_pytorch(model, path, torch.randn(5, 3, 8, 8))
    stored = initializers(path)
    # one motif table, and per tensor its int16 indices (k > 256): no dense weight
    assert [n for n in stored if n.endswith("motifs")] == ["1.parametrizations.weight.0.table.motifs"]
    assert all(a.dtype == np.int16 for n, a in stored.items() if n.endswith("indices"))
    assert not any(a.dtype == np.float32 and a.size > 4 * 1024 for n, a in stored.items() if "motifs" not in n)
    dense_bytes = sum(4 * p.numel() for p in model.parameters())
    assert size < dense_bytes / 4
    # the caller's model is neither compacted nor changed
    assert not any(isinstance(m, MosaicWeight) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_small_codebooks_store_uint8_indices(tmp_path):
    config = momos.MoMosConfig(block_size=4, num_motifs=200, seed=0)
    model, _ = mosaic("mlp", config)
    path = tmp_path / "mlp.onnx"
    momos.export_onnx(model, torch.randn(1, 3, 8, 8), path, config)
    indices = [a for n, a in initializers(path).items() if n.endswith("indices")]
    assert indices and all(a.dtype == np.uint8 for a in indices)
    assert_runs_as_pytorch(model, path, torch.randn(2, 3, 8, 8))


def test_packed_indices_of_a_large_codebook_are_stored_unpacked(tmp_path):
    # k = 70,000: 17 bits per index in memory (uint16 plus one packed bit), int32 in the file
    linear = torch.nn.Linear(8, 4)
    indices = torch.tensor([69_999, 0, 40_000, 65_536, 32_768, 12_345, 65_535, 7])
    weight = MosaicWeight(MotifTable(torch.randn(70_000, 4)), indices, layout_of([linear.weight.detach()], 4))
    with torch.no_grad():
        linear.weight.copy_(weight(linear.weight.new_empty(0)))
    parametrize.register_parametrization(linear, "weight", weight)
    path = tmp_path / "large.onnx"
    momos.export_onnx(linear, torch.randn(1, 8), path)
    stored = initializers(path)
    assert stored["parametrizations.weight.0.indices"].dtype == np.int32
    assert "parametrizations.weight.0.high_indices" not in stored
    assert_runs_as_pytorch(linear, path, torch.randn(3, 8))
    assert weight.high_indices is not None   # the caller's compact model keeps its packed indices


def test_a_channel_normalized_resnet20(tmp_path):
    config = momos.MoMosConfig(block_size=4, capacity=0.01, seed=0, normalize="channel")
    model, scales = mosaic("resnet20", config)
    path = tmp_path / "resnet.onnx"
    momos.export_onnx(model, torch.randn(1, 3, 8, 8), path, config, scales=scales)
    assert_runs_as_pytorch(model, path, torch.randn(3, 3, 8, 8))
    exponents = [a for n, a in initializers(path).items() if n.endswith("exponents")]
    assert exponents and all(a.dtype == np.int16 for a in exponents)


def test_a_tiled_vit(tmp_path):
    config = momos.MoMosConfig(block_size=4, capacity=0.01, seed=0, tile_shape=(2, 2))
    model, _ = mosaic("vit", config)
    path = tmp_path / "vit.onnx"
    momos.export_onnx(model, torch.randn(2, 3, 8, 8), path, config)
    for batch in (1, 5):   # the batch dimension stays dynamic: the class token follows x.shape[0]
        assert_runs_as_pytorch(model, path, torch.randn(batch, 3, 8, 8))


def test_a_compact_model_is_exported_as_it_is(tmp_path):
    model, _ = mosaic("mlp", S4)
    compact = momos.compact_(copy.deepcopy(model), S4)
    path = tmp_path / "mlp.onnx"
    momos.export_onnx(compact, torch.randn(1, 3, 8, 8), path)
    assert_runs_as_pytorch(model, path, torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="already compact: export it without a config"):
        momos.export_onnx(compact, torch.randn(1, 3, 8, 8), tmp_path / "again.onnx", S4)
    assert not (tmp_path / "again.onnx").exists()


def test_a_dense_model_needs_its_config(tmp_path):
    model, _ = mosaic("mlp", S4)
    with pytest.raises(ValueError, match="not compact: give the MoMosConfig"):
        momos.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_that_is_no_mosaic_is_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", channels=3, image_size=8, num_classes=10)
    with pytest.raises(ValueError, match="is not a mosaic"):
        momos.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", S4)
    assert not (tmp_path / "m.onnx").exists()
