"""The pretrained-network experiment's own logic: RTN quantization and its size, the cache
and the target check of ``experiments/pretrained/make_report.py`` (no model is trained here)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

FOLDER = Path(__file__).resolve().parent.parent / "experiments" / "pretrained"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rtn = _load("rtn")
report = _load("make_report")


# --- RTN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, level", [(2, 1), (3, 3), (4, 7), (8, 127)])
def test_levels_are_symmetric(bits, level):
    assert rtn.max_level(bits) == level
    codes, _ = rtn.quantize(torch.linspace(-1, 1, 1001), bits, per_channel=False)
    assert codes.min() == -level and codes.max() == level
    assert set(codes.unique().tolist()) == set(range(-level, level + 1))


def test_one_bit_is_refused():
    with pytest.raises(ValueError):
        rtn.max_level(1)


def test_per_tensor_scale_and_rounding():
    w = torch.tensor([[0.7, -0.2], [0.1, 0.05]])
    codes, scale = rtn.quantize(w, 3, per_channel=False)       # levels -3..3, scale 0.7 / 3
    assert scale.shape == () and math.isclose(float(scale), 0.7 / 3, rel_tol=1e-6)
    assert codes.tolist() == [[3, -1], [0, 0]]                 # -0.2/0.2333 = -0.857 -> -1
    assert torch.allclose(rtn.rtn(w, 3, per_channel=False), codes * scale)


def test_per_channel_scales_use_dim_0():
    w = torch.tensor([[1.0, -4.0], [0.5, 0.3], [0.0, 0.0]])
    codes, scales = rtn.quantize(w, 4, per_channel=True)       # 7 levels each side
    assert torch.allclose(scales, torch.tensor([4 / 7, 0.5 / 7, 1.0]))   # a zero row gets scale 1
    assert codes[0].tolist() == [2, -7] and codes[1].tolist() == [7, 4] and codes[2].tolist() == [0, 0]
    conv = torch.randn(5, 3, 3, 3)
    assert rtn.rtn_scales(conv, 8, per_channel=True).shape == (5,)
    # a 1-D tensor gets one scale even per channel
    bias = torch.tensor([0.5, -2.0, 1.0])
    assert rtn.rtn_scales(bias, 8, per_channel=True).shape == ()
    assert math.isclose(float(rtn.rtn_scales(bias, 8, per_channel=True)), 2.0 / 127, rel_tol=1e-6)


def test_entropy_and_coded_bits_of_a_known_tensor():
    codes = torch.tensor([0, 0, 1, -1])                        # p = 1/2, 1/4, 1/4: 1.5 bits
    assert rtn.entropy(codes) == pytest.approx(1.5)
    assert rtn.entropy(torch.zeros(10, dtype=torch.int64)) == 0.0
    scales = torch.ones(2)
    # 4 codes x 1.5 bits + 2**2 counts x 32 bits + 2 scales x 32 bits
    assert rtn.coded_bits(codes, scales, 2) == pytest.approx(6 + 128 + 64)


def test_bits_per_weight_counts_every_stored_value():
    state = {"w": torch.zeros(4, 2), "b": torch.zeros(2), "steps": torch.zeros((), dtype=torch.int64)}
    # w quantized to 100 bits; b as float32 (2 x 32); the int64 buffer 64 bits; 10 parameter values
    assert rtn.bits_per_weight(state, {"w": 100.0}, 10) == pytest.approx((100 + 64 + 64) / 10)
    with pytest.raises(KeyError):
        rtn.bits_per_weight(state, {"missing": 1.0}, 10)


def test_quantize_all_names_values_and_sizes():
    tensors = [("a", torch.tensor([[1.0, -1.0], [0.5, 0.0]])), ("b", torch.tensor([2.0, -2.0]))]
    values, sizes = rtn.quantize_all(tensors, 2, per_channel=True)
    assert values["a"].tolist() == [[1.0, -1.0], [0.5, 0.0]]   # ternary per row: exact here
    assert values["b"].tolist() == [2.0, -2.0]
    # a: codes (1,-1,1,0): entropy 1.5 bits x 4 + 4 counts + 2 scales; b: 1 bit x 2 + 4 counts + 1 scale
    assert sizes["a"] == pytest.approx(6 + 128 + 64)
    assert sizes["b"] == pytest.approx(2 + 128 + 32)


# --- the cache and the target check -------------------------------------------------------------

def _row(method, variant, bits_per_weight, accuracy, *, s=None, capacity=None, rtn_bits=None,
         parameters="all", error="", model="m"):
    return {"model": model, "method": method, "variant": variant, "s": s, "capacity": capacity,
            "rtn_bits": rtn_bits, "parameters": parameters, "bits_per_weight": bits_per_weight,
            "test_accuracy": accuracy, "eval_images": 100, "projection_seconds": 0.1,
            "max_relative_error": 0.2, "num_motifs": None, "roundtrip_exact": None, "point_seconds": 1.0,
            "error": error, "running_bn_accuracy": None}


def _rows():
    return [
        _row("pretrained", "", 32.0, 0.90, parameters=""),
        _row("rtn", "per-channel", 1.0, 0.50, rtn_bits=2),
        _row("rtn", "per-channel", 2.5, 0.85, rtn_bits=3),
        _row("rtn", "per-channel", 3.5, 0.89, rtn_bits=4),
        _row("rtn", "per-channel", 8.0, 0.90, rtn_bits=8),     # above 4 bits: not checked
        _row("rtn", "per-tensor", 0.5, 0.10, rtn_bits=2),      # per tensor: not checked
        _row("momos", "plain", 1.0, 0.60, s=8, capacity=0.01),   # exactly at int2's bits: counts
        _row("momos", "channel", 2.4, 0.86, s=4, capacity=0.01, parameters="matrices"),
        _row("momos", "channel", 2.0, 0.95, s=4, capacity=0.05, error="project: refused"),  # failed
        _row("momos", "plain", 3.6, 0.99, s=2, capacity=0.05),                              # too large
        _row("rtn", "per-channel", 1.0, 0.99, rtn_bits=2, model="other"),                   # other model
    ]


def test_target_check_picks_the_best_momos_point_within_the_bits():
    checks = report.target_check(_rows(), "m")
    assert [c["rtn"]["rtn_bits"] for c in checks] == [2, 3, 4]
    assert [c["momos"]["variant"] for c in checks] == ["plain", "channel", "channel"]
    assert [round(c["difference"], 6) for c in checks] == [0.10, 0.01, -0.03]
    # the cheapest MoMos point at least as accurate as each RTN point, whatever its bits
    assert [c["cheapest_matching"]["bits_per_weight"] for c in checks] == [1.0, 2.4, 3.6]


def test_target_verdict():
    outcome, margin, worst = report.target_verdict(report.target_check(_rows(), "m"))
    assert outcome == "not met" and margin == pytest.approx(-0.03) and worst["rtn"]["rtn_bits"] == 4
    met = [r for r in _rows() if r.get("rtn_bits") != 4]
    outcome, margin, worst = report.target_verdict(report.target_check(met, "m"))
    assert outcome == "met" and margin == pytest.approx(0.01) and worst["rtn"]["rtn_bits"] == 3
    line = report.verdict_line("m", report.target_check(met, "m"))
    assert "**m: met**" in line and "2 of 2" in line and "1.00 points" in line
    assert "near chance" not in line
    # int2 (RTN 0.50, MoMos 0.60) is near chance only when guessing gets more than 0.30
    assert "near chance" not in report.verdict_line("m", report.target_check(met, "m"), chance=0.1)
    line = report.verdict_line("m", report.target_check(met, "m"), chance=0.35)
    assert "1 of these compare models near chance (both below 0.70" in line and "int2 per-channel" in line
    # an RTN point with no MoMos point at or below its bits is named but not counted
    cheap = met + [_row("rtn", "per-channel", 0.1, 0.2, rtn_bits=2, parameters="matrices")]
    checks = report.target_check(cheap, "m")
    assert checks[0]["momos"] is None and checks[0]["difference"] is None
    outcome, margin, _ = report.target_verdict(checks)
    assert outcome == "met" and margin == pytest.approx(0.01)
    line = report.verdict_line("m", checks)
    assert "2 of 2" in line and "Not compared" in line and "int2 per-channel (matrices) (0.10 b/w" in line
    only_cheap = [r for r in cheap if r["method"] != "rtn" or r["bits_per_weight"] < 0.5]
    assert report.target_verdict(report.target_check(only_cheap, "m")) == ("not tested", None, None)
    assert report.target_verdict(report.target_check(_rows(), "nothing")) == ("not tested", None, None)


def test_cache_round_trip_and_resume_keys(tmp_path):
    rows = _rows()
    path = tmp_path / "points.csv"
    report.write_rows(rows, path)
    back = report.read_rows(path)
    assert back == [{c: r[c] for c in report.COLUMNS} for r in rows]
    point = report.Point("m", "momos", "channel", s=4, capacity=0.01, parameters="matrices")
    assert point.key() in {report.key_of(r) for r in back}
    assert report.Point("m", "momos", "channel", s=4, capacity=0.01, parameters="all").key() \
        not in {report.key_of(r) for r in back}


def test_the_grid():
    points = report.grid("m")
    assert len(points) == 1 + 2 * 2 * 4 + 5 * 2 * 3 * 3
    assert len({p.key() for p in points}) == len(points)
    # the full-data ResNet-20 is measured with three variants only
    assert report.MODELS["resnet20-cifar10-full"].variants == ("plain", "channel", "channel+calib+kmeans")
    assert len(report.grid("resnet20-cifar10-full")) == 1 + 16 + 3 * 18


def test_batchnorm_re_estimation_is_evaluated_beside_the_running_statistics(monkeypatch):
    from torch import nn

    class Setup:   # what evaluated() reads
        bn_inputs = [torch.full((4, 2), 3.0)]

    # the "accuracy": the BatchNorm's running mean, 0 as initialized, 3 once re-estimated
    monkeypatch.setattr(report, "accuracy", lambda model, setup: float(model[0].running_mean.mean()))
    assert report.evaluated(nn.Sequential(nn.BatchNorm1d(2)), Setup()) == {"test_accuracy": 3.0,
                                                                           "running_bn_accuracy": 0.0}
    Setup.bn_inputs = []
    assert report.evaluated(nn.Sequential(nn.BatchNorm1d(2)), Setup()) == {"test_accuracy": 0.0}
    rows = [{**r, "running_bn_accuracy": r["test_accuracy"] - 0.02} for r in _rows() if r["model"] == "m"]
    [line, _] = report.batchnorm_lines(rows, 40)
    assert "40 training batches of 64" in line and "MoMos median +2.00 points (from +2.00 to +2.00)" in line
    assert report.batchnorm_lines(rows, 0) == []


def test_run_summary_is_kept_for_a_report_without_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RUNS", tmp_path / "runs.json")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "results.json").write_text(json.dumps({
        "config": {"model": "mlp", "dataset": "digits"}, "summary": {"epochs_done": 3, "test_acc": 0.9},
        "model": {"parameters": 100}, "data": {"test": 360}}))
    summary = report.run_summary(tmp_path, "m")
    assert summary == {"model": "mlp", "dataset": "digits", "epochs": 3, "parameters": 100, "test_accuracy": 0.9,
                       "test_images": 360}
    report.RUNS.write_text(json.dumps({"m": summary}))
    shutil.rmtree(tmp_path / "m")
    assert report.run_summary(tmp_path, "m") == summary
    assert report.run_summary(tmp_path, "gone") is None
