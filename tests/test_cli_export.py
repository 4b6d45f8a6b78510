"""``momos export`` and ``momos inspect`` of normalized mosaics: checkpoints that record their
scales, checkpoints projected on the way, and a normalized ``momos train`` run."""

import copy
import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import momos
from momos.cli import main
from momos.fileformat import load, read_scales
from momos.fileformat.tables import same_bits
from momos.runfolder import SCALE_EXPONENTS, checkpoint_scales, scale_metadata

CHANNEL = ["--block-size", "4", "--capacity", "0.1", "--normalize", "channel"]


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))


def projected(model, cfg):
    model = copy.deepcopy(model)
    stats = momos.project_(model, cfg, warn_relative_error=None)
    return model, stats


def write_checkpoint(path, model, cfg=None, stats=None):
    """A safetensors state dict; with ``stats``, recording their scales as a normalized run does."""
    metadata = None
    if stats is not None:
        metadata = scale_metadata([name for name, _ in momos.select_parameters(model, cfg)], stats.scales)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


def assert_same_tensors(got, expected):
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert same_bits(got[name], tensor), name


def test_export_and_inspect_a_normalized_checkpoint(tmp_path, capsys):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    model, stats = projected(small_model(), cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, stats)
    out = tmp_path / "m.momos"
    assert main(["export", str(ckpt), "-o", str(out), *CHANNEL]) == 0
    assert_same_tensors(load(out), model.state_dict())
    stored = read_scales(out)
    for name, table in zip(stats.parameter_names, stats.scales):
        assert torch.equal(stored[name], table), name
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 2 and report["normalize"] == "channel"
    assert report["scale_bytes"] == report["num_scales"] == 5 + 1 + 7 + 1  # conv rows, bias, linear rows, bias
    assert report["mosaic_bits_per_weight"] == pytest.approx(
        8 * (report["motif_bytes"] + report["index_bytes"] + 14) / report["mosaic_weights"])
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "normalize        channel: 14 power-of-two scales" in text and "| scales 14 |" in text


def test_a_normalized_export_needs_recorded_scales_or_project(tmp_path, capsys):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    model, _ = projected(small_model(), cfg)
    bare = write_checkpoint(tmp_path / "bare.safetensors", model)
    out = tmp_path / "m.momos"
    assert main(["export", str(bare), "-o", str(out), *CHANNEL]) == 2
    assert "records no scales" in capsys.readouterr().err and not out.exists()
    # --project measures fresh scales: the file holds that projection of the checkpoint
    assert main(["export", str(bare), "-o", str(out), *CHANNEL, "--project"]) == 0
    again, stats = projected(momos.fileformat.module_of_state_dict(load_file(bare)), cfg)
    assert_same_tensors(load(out), again.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(read_scales(out).values(), stats.scales))


def test_export_projects_any_checkpoint_with_normalize_channel(tmp_path):
    model = small_model(seed=3)  # freshly initialized: not a mosaic
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model)
    out = tmp_path / "m.momos"
    assert main(["export", str(ckpt), "-o", str(out), *CHANNEL]) == 2
    assert main(["export", str(ckpt), "-o", str(out), *CHANNEL, "--project"]) == 0
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    expected, _ = projected(momos.fileformat.module_of_state_dict(load_file(ckpt)), cfg)
    assert_same_tensors(load(out), expected.state_dict())
    assert not torch.equal(load(out)["2.weight"], model[2].weight.detach())


def test_export_refuses_recorded_scales_that_do_not_fit(tmp_path, capsys):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    model, stats = projected(small_model(), cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, stats)
    out = tmp_path / "m.momos"
    tensor_mode = ["--block-size", "4", "--capacity", "0.1", "--normalize", "tensor"]
    assert main(["export", str(ckpt), "-o", str(out), *tensor_mode]) == 2
    assert "do not fit" in capsys.readouterr().err and not out.exists()
    # with --project, scales that do not fit give way to the projection's own
    assert main(["export", str(ckpt), "-o", str(out), *tensor_mode, "--project"]) == 0
    assert load(out).keys() == model.state_dict().keys()
    broken = tmp_path / "broken.safetensors"
    save_file(model.state_dict(), str(broken), metadata={SCALE_EXPONENTS: '{"0.weight": [1.5]}'})
    assert main(["export", str(broken), "-o", str(tmp_path / "b.momos"), *CHANNEL]) == 2
    assert "malformed scale_exponents" in capsys.readouterr().err


def test_checkpoint_scales_round_trip(tmp_path):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="tensor")
    model, stats = projected(small_model(), cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, stats)
    recorded = checkpoint_scales(ckpt)
    assert list(recorded) == list(stats.parameter_names)
    for name, table in zip(stats.parameter_names, stats.scales):
        assert torch.equal(recorded[name].reshape(table.shape), table)
    assert checkpoint_scales(write_checkpoint(tmp_path / "bare.safetensors", model)) is None
    for bad in ('{"a": [97]}', '{"a": [true]}', '[1]', 'not json'):
        save_file(model.state_dict(), str(tmp_path / "bad.safetensors"), metadata={SCALE_EXPONENTS: bad})
        with pytest.raises(ValueError, match="malformed"):
            checkpoint_scales(tmp_path / "bad.safetensors")


def test_a_normalized_training_run_exports_bit_exactly(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--normalize", "channel", "--out", str(run), "--quiet",
                 "--threads", "1"]) == 0
    with safe_open(str(run / "final.safetensors"), framework="pt") as f:
        assert SCALE_EXPONENTS in f.metadata()
    with safe_open(str(run / "init.safetensors"), framework="pt") as f:
        assert SCALE_EXPONENTS not in f.metadata()  # nothing projected yet
    out = tmp_path / "m.momos"
    assert main(["export", str(run), "-o", str(out)]) == 0
    final = load_file(run / "final.safetensors")
    assert_same_tensors(load(out), final)
    recorded = checkpoint_scales(run / "final.safetensors")
    stored = read_scales(out)
    assert list(stored) == list(recorded)
    assert all(torch.equal(stored[name].reshape(-1), recorded[name]) for name in stored)
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["normalize"] == "channel" and report["scale_bytes"] == sum(t.numel() for t in recorded.values())
    # the description length of the run's checkpoint uses the recorded scales: the projection's own
    assert main(["complexity", str(run), "--json", "--metrics", "mosaic"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    results = json.loads((run / "results.json").read_text())
    assert metrics["mosaic_num_scales"] == report["scale_bytes"]
    assert metrics["mosaic_simplification_factor"] == pytest.approx(
        results["epochs"][-1]["projection"]["simplification_factor"])
    assert main(["export", str(run), "-o", str(tmp_path / "init.momos"), "--checkpoint", "init"]) == 2
    assert "records no scales" in capsys.readouterr().err


# --- --onnx ----------------------------------------------------------------------------------------

def onnx_outputs(path, x):
    ort = pytest.importorskip("onnxruntime")
    return torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0])


def digits_mlp(cfg):
    """A projected MLP of the digits data set's shape (1 x 8 x 8, 10 classes) and its projection."""
    from momos.models import build_model

    torch.manual_seed(0)
    return projected(build_model("mlp", channels=1, image_size=8, num_classes=10).eval(), cfg)


def test_export_onnx_of_a_normalized_state_dict_with_its_architecture(tmp_path, capsys):
    pytest.importorskip("onnx")
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel")
    model, stats = digits_mlp(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, stats)
    out, onnx_file = tmp_path / "m.momos", tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--onnx", str(onnx_file), *CHANNEL,
                 "--model", "mlp", "--dataset", "digits"]) == 0
    assert f"wrote {onnx_file} (" in capsys.readouterr().out
    assert_same_tensors(load(out), model.state_dict())
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(onnx_outputs(onnx_file, x), model(x), rtol=0, atol=1e-5)
    assert onnx_file.stat().st_size < sum(4 * p.numel() for p in model.parameters()) / 3


def test_export_onnx_of_a_state_dict_needs_its_architecture(tmp_path, capsys):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1)
    model, _ = digits_mlp(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_file), "--block-size", "4", "--capacity", "0.1"]) == 2
    assert "give --model NAME and --dataset NAME" in capsys.readouterr().err and not onnx_file.exists()
    assert main(["export", str(ckpt), "--block-size", "4", "--capacity", "0.1"]) == 2
    assert "nothing to write" in capsys.readouterr().err


def test_export_onnx_names_the_extra_when_onnx_is_missing(tmp_path, capsys, monkeypatch):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.1)
    model, _ = digits_mlp(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt.safetensors", model)
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx fails as if it were not installed
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_file), "--block-size", "4", "--capacity", "0.1",
                 "--model", "mlp", "--dataset", "digits"]) == 2
    assert "pip install 'momos[onnx]'" in capsys.readouterr().err and not onnx_file.exists()


def test_export_onnx_of_a_training_run(tmp_path, capsys):
    pytest.importorskip("onnx")
    from momos.runfolder import load_model

    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--quiet", "--threads", "1"]) == 0
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run), "--onnx", str(onnx_file)]) == 0
    assert main(["export", str(run), "--onnx", str(onnx_file), "--model", "mlp"]) == 2
    assert "a run folder knows its own" in capsys.readouterr().err
    model, x = load_model(run), torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(onnx_outputs(onnx_file, x), model(x), rtol=0, atol=1e-5)
