"""momos.complexity: compressors, BDM, simple statistics, description lengths, and ``momos complexity``."""

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import momos
from momos.cli import main
from momos.complexity import (COMPRESSORS, METRICS, CompressorWindowWarning, bdm, compressed_sizes,
                              description_length, description_length_from_config,
                              description_length_from_stats, description_length_of_codebooks, measure,
                              mosaic_codebooks)
from momos.complexity import block_decomposition as bdm_module

PAYLOAD_METRICS = [f"{name}{suffix}" for suffix in ("", "_bin", "_bits") for name in COMPRESSORS]


def _mlp(*sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Shapes(nn.Module):
    """A module with parameters of the given shapes: all the factor formula needs."""

    def __init__(self, shapes):
        super().__init__()
        self.params = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for shape in shapes])


# --- known values ---------------------------------------------------------------------------

def test_zeros_compress_far_better_than_noise_under_every_compressor_and_payload():
    zeros = measure(torch.zeros(20_000), PAYLOAD_METRICS)
    noise = measure(torch.randn(20_000, generator=torch.Generator().manual_seed(0)), PAYLOAD_METRICS)
    for name in PAYLOAD_METRICS:
        assert zeros[name] > 5 * noise[name], name
        assert zeros[f"{name}_raw_bytes"] == noise[f"{name}_raw_bytes"]
        assert zeros[name] == zeros[f"{name}_raw_bytes"] / zeros[f"{name}_compressed_bytes"]
    assert zeros["gzip_raw_bytes"] == 4 * 20_000
    assert zeros["gzip_bin_raw_bytes"] == 20_000
    assert zeros["gzip_bits_raw_bytes"] == 20_000 // 8


def test_a_mosaic_of_few_motifs_compresses_better_than_its_source():
    model = _mlp(64, 128, 10)
    before = measure(model, list(COMPRESSORS))
    momos.project_(model, momos.MoMosConfig(block_size=4, num_motifs=16))
    after = measure(model, list(COMPRESSORS))
    for name in COMPRESSORS:
        assert after[name] > 2 * before[name], name


def test_bdm_of_a_constant_string_is_lower_than_of_a_random_one():
    rng = np.random.default_rng(0)
    for alphabet in (2, 4):
        constant = np.zeros(600, dtype=np.int64)
        random = rng.integers(0, alphabet, 600)
        assert bdm(constant, alphabet) < bdm(random, alphabet) / 5
    weights = measure(torch.randn(1200), ["bdm", "bdm4"])
    constant = measure(torch.ones(1200), ["bdm", "bdm4"])
    assert constant["bdm"] < weights["bdm"] and constant["bdm4"] < weights["bdm4"]
    assert weights["bdm_per_bit"] == pytest.approx(weights["bdm"] / 1200)
    assert weights["bdm4_per_bit"] == pytest.approx(weights["bdm4"] / 2400)
    assert constant["bdm_normalized"] == 0 and 0.5 < weights["bdm_normalized"] <= 1


def test_sparsity_l2_and_entropy():
    w = torch.tensor([0.0, 0.0, 3.0, 4.0, 3.0, 0.0, -0.0, 3.0])
    result = measure(w, ["sparsity", "l2", "entropy"])
    assert result["sparsity"] == 4 / 8
    assert result["l2"] == pytest.approx(math.sqrt(3 * 9 + 16))
    p = np.array([4, 3, 1]) / 8  # zeros (signed zeros are one value), threes, the four
    assert result["entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert measure(torch.randn(1000), ["entropy"])["entropy"] == pytest.approx(math.log2(1000))


# --- BDM --------------------------------------------------------------------------------------

def test_bdm_counts_the_tail_by_default_and_can_drop_it_as_pybdm_does():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 2, 12 * 40 + 5)
    ignore = bdm(s, tail="ignore")
    assert ignore == pytest.approx(bdm(s[:480], tail="ignore"))  # the last 5 symbols are dropped
    assert bdm(s) > ignore                                        # ... or counted
    assert bdm(s[:480]) == pytest.approx(ignore)                  # no tail: the same value
    pybdm = bdm_module._import_pybdm()
    assert ignore == pytest.approx(pybdm.BDM(ndim=1).bdm(s))
    assert bdm(np.array([1, 0, 1])) > 0                           # shorter than one block


def test_pybdm_imports_without_leaving_a_stand_in_pkg_resources_behind():
    bdm_module._import_pybdm()
    module = sys.modules.get("pkg_resources")
    assert module is None or hasattr(module, "working_set")  # absent, or the real one


def test_bdm_raises_clear_errors_instead_of_returning_nothing(monkeypatch):
    with pytest.raises(ValueError, match="alphabets"):
        bdm(np.zeros(24, dtype=np.int64), alphabet=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bdm(np.array([0, 1, 2] * 8))
    with pytest.raises(ValueError, match="empty"):
        bdm(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="shorter"):
        bdm(np.zeros(5, dtype=np.int64), tail="ignore")

    class Broken:
        def bdm(self, x):
            raise KeyError("no CTM")

    monkeypatch.setattr(bdm_module, "_bdm_engine", lambda alphabet, tail: Broken())
    with pytest.raises(ValueError, match="pybdm failed.*KeyError"):
        bdm(np.zeros(24, dtype=np.int64))


# --- description length -----------------------------------------------------------------------

def test_description_length_by_hand():
    # 10 weights, s = 4: m = 3 blocks, k = 2 motifs used 2 and 1 times, q = 32.
    motifs = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    length = description_length(10, 3, 2, 4, 32, motif_counts=torch.tensor([2, 1]), motifs=motifs)
    assert length.bound_bits == 2 * 4 * 32 + 3 * 1 == 259
    assert length.simplification_factor == pytest.approx(320 / 259)
    entropy = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert length.entropy_coded_bits == pytest.approx(256 + 3 * entropy + 2 * 2)  # counts in [0, 3]: 2 bits
    assert length.needed_table_total_bits == 2 * 32 + 8 * 1 + 3                 # values {0, 1}
    assert length.combined_bits == pytest.approx(72 + 3 * entropy + 4)
    d = length.as_dict()
    assert d["simplification_factor"] == length.simplification_factor
    assert d["entropy_coded_bits_per_weight"] == pytest.approx(length.entropy_coded_bits / 10)


def test_description_length_rejects_impossible_numbers():
    with pytest.raises(ValueError, match="k <= m"):
        description_length(10, 3, 4, 4)
    with pytest.raises(ValueError, match="cannot fill"):
        description_length(100, 3, 2, 4)
    with pytest.raises(ValueError, match="q must be"):
        description_length(10, 3, 2, 4, 0)
    with pytest.raises(ValueError, match="summing to 3"):
        description_length(10, 3, 2, 4, motif_counts=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        description_length(10, 3, 2, 4, motifs=torch.zeros(2, 3))


def test_measured_mosaic_matches_the_hand_count_including_the_padded_block():
    w = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # last block: [1, 1, pad, pad]
    result = measure(w, ["mosaic"], momos.MoMosConfig(block_size=4, num_motifs=2))
    assert result["mosaic_num_motifs"] == 2
    assert result["mosaic_bound_bits"] == 259
    assert result["mosaic_needed_table_bits"] == 75


def test_factor_from_a_configuration_by_hand():
    model = nn.Linear(5, 3)  # 15 + 3 weights; s = 2: 8 + 2 = 10 blocks; capacity 0.3: k = 3
    length = description_length_from_config(model, momos.MoMosConfig(block_size=2, capacity=0.3))
    assert (length.num_weights, length.num_blocks, length.num_motifs) == (18, 10, 3)
    assert length.bound_bits == 3 * 2 * 32 + 10 * 2
    assert length.simplification_factor == pytest.approx(18 * 32 / 212)
    assert length.entropy_coded_bits is None and length.needed_table_bits is None
    per_tensor = description_length_from_config(
        model, momos.MoMosConfig(block_size=2, capacity=0.3, scope="per_tensor"))
    # weight: m = 8, k = 2; bias: m = 2, k = 1 (no index needed)
    assert per_tensor.bound_bits == (2 * 2 * 32 + 8 * 1) + (1 * 2 * 32 + 0)
    q8 = description_length_from_config(model, momos.MoMosConfig(block_size=2, capacity=0.3, motif_bits=8))
    assert q8.bits_per_value == 8 and q8.bound_bits == 3 * 2 * 8 + 10 * 2


@pytest.mark.parametrize("config", [
    momos.MoMosConfig(block_size=3, capacity=0.05),
    momos.MoMosConfig(block_size=4, num_motifs=40, scope="per_tensor"),
    momos.MoMosConfig(block_size=4, num_motifs=40, motif_bits=6),
])
def test_projected_model_measured_from_its_weights_or_its_stats_agrees(config):
    model = _mlp(31, 17, 5)
    stats = momos.project_(model, config)
    from_stats = description_length_from_stats(stats, q=32).as_dict()
    measured = measure(model, ["mosaic"], config, q=32)
    assert {k: measured[f"mosaic_{k}"] for k in from_stats if k != "num_weights"} == \
        {k: v for k, v in from_stats.items() if k != "num_weights"}
    assert from_stats["num_motifs"] == int((stats.motif_counts > 0).sum())
    assert from_stats["simplification_factor"] >= stats.num_weights * 32 / (
        stats.num_motifs * config.block_size * 32 + stats.num_blocks * math.ceil(math.log2(stats.num_motifs)))
    if config.motif_bits:  # quantized motifs need far fewer than 32 bits per value
        assert from_stats["needed_table_bits"] < from_stats["bound_bits"]


def _resnet20_shapes(classes=10):
    shapes = [(16, 3, 3, 3), (16,), (16,)]
    previous = 16
    for width in (16, 32, 64):
        for _ in range(3):
            shapes += [(width, previous, 3, 3), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            previous = width
    return shapes + [(classes, 64), (classes,)]


def _mlp_shapes(inputs=3072, classes=10):
    sizes = [inputs, 256, 256, 256, 256, classes]
    return [shape for a, b in zip(sizes, sizes[1:]) for shape in ((b, a), (b,))]


def test_paper_architectures_at_s2_capacity_005_q32():
    config = momos.MoMosConfig(block_size=2, capacity=0.05)
    factors = {name: description_length_from_config(Shapes(shapes), config, q=32).simplification_factor
               for name, shapes in (("mlp", _mlp_shapes()), ("resnet20", _resnet20_shapes()))}
    timm = pytest.importorskip("timm")
    factors["vit_tiny_patch16_224"] = description_length_from_config(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10), config).simplification_factor
    print({name: round(f, 4) for name, f in factors.items()})
    # MLP: n = 986634, m = 493317, k = 24665 (15-bit indices): 31572288 / 8978315
    assert factors["mlp"] == pytest.approx(31572288 / 8978315)
    # ResNet-20: n = 269722, m = 134861, k = 6743 (13-bit indices): 8631104 / 2184745
    assert factors["resnet20"] == pytest.approx(8631104 / 2184745)
    assert {name: round(f, 2) for name, f in factors.items()} == \
        {"mlp": 3.52, "resnet20": 3.95, "vit_tiny_patch16_224": 3.02}


def test_the_package_models_have_the_paper_shapes():
    models = pytest.importorskip("momos.models")
    for name, shapes in (("mlp", _mlp_shapes()), ("resnet20", _resnet20_shapes())):
        model = models.build_model(name, channels=3, image_size=32, num_classes=10)
        assert sorted(tuple(p.shape) for p in model.parameters()) == sorted(shapes), name


# --- window warning ---------------------------------------------------------------------------

def test_warns_when_the_motif_table_is_larger_than_gzips_window():
    model = _mlp(256, 256)  # 65792 weights in 16448 blocks of 4
    big = momos.MoMosConfig(block_size=4, capacity=0.2)  # k = 3289 motifs of 16 bytes: 52 KB > 32 KiB
    momos.project_(model, big)
    with pytest.warns(CompressorWindowWarning, match="gzip.*32768-byte window"):
        measure(model, ["gzip"], big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure(model, ["lzma", "gzip_bin"], big)             # a large window; few sign patterns
        measure(_mlp(256, 256), ["gzip"], big)                  # not a mosaic: nothing to see
        small = momos.MoMosConfig(block_size=4, num_motifs=100)
        momos.project_(model, small, warn_relative_error=None)
        measure(model, ["gzip"], small)                         # 1.6 KB table


# --- determinism and bad input ----------------------------------------------------------------

def test_outputs_are_deterministic():
    data = torch.randn(5000, generator=torch.Generator().manual_seed(3)).numpy().tobytes()
    for name, compress in COMPRESSORS.items():
        assert compress(data) == compress(data), name
    assert COMPRESSORS["gzip"](data)[4:8] == b"\0\0\0\0"  # no timestamp in the header
    model = _mlp(20, 30, 4)
    config = momos.MoMosConfig(block_size=2, capacity=0.1)
    momos.project_(model, config)
    every = [m for m in METRICS if m not in ("bdm5", "bdm6", "bdm9")]
    assert measure(model, every, config) == measure(model, every, config)


def test_compressed_sizes():
    sizes = compressed_sizes(bytes(1000))
    assert list(sizes) == ["gzip", "bz2", "lzma", "zstd"] and all(0 < v < 200 for v in sizes.values())
    assert compressed_sizes(b"abc" * 100, ["zstd"]) == {"zstd": len(COMPRESSORS["zstd"](b"abc" * 100))}
    fast = compressed_sizes(bytes(1000), fast=True)
    assert set(fast) == set(sizes)
    with pytest.raises(ValueError, match="valid"):
        compressed_sizes(b"abc", ["zip"])
    with pytest.raises(TypeError):
        compressed_sizes("abc")


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="unknown metric.*'gzp'.*valid metrics: gzip, bz2"):
        measure(torch.randn(10), ["gzp"])
    with pytest.raises(ValueError, match="no metrics"):
        measure(torch.randn(10), [])
    with pytest.raises(ValueError, match="needs a config"):
        measure(torch.randn(10), ["mosaic"])
    with pytest.raises(ValueError, match="no parameters"):
        measure(nn.ReLU(), ["gzip"])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to measure"):
        measure(frozen, ["gzip"])
    with pytest.raises(ValueError, match="0 weights"):
        measure(torch.zeros(0), ["gzip"])
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(ValueError, match="parameter 'bias' holds NaN"):
        measure(model, ["l2"])
    with pytest.raises(TypeError, match="floating"):
        measure(torch.arange(10), ["l2"])
    with pytest.raises(TypeError, match="nn.Module"):
        measure("weights", ["l2"])
    assert measure(torch.randn(10), "gzip, l2")["num_weights"] == 10  # a comma-separated string


def test_config_selects_the_parameters():
    model = nn.Linear(4, 3)
    everything = measure(model, ["l2"])
    weights_only = measure(model, ["l2"], momos.MoMosConfig(block_size=2, capacity=0.5, exclude=("bias",)))
    assert everything["num_weights"] == 15 and weights_only["num_weights"] == 12
    assert weights_only["l2"] == pytest.approx(float(model.weight.detach().norm()))


# --- normalized mosaics: scales at 8 bits each -------------------------------------------------

def test_scales_add_8_bits_each_to_every_variant():
    motifs = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    plain = description_length(10, 3, 2, 4, 32, motif_counts=torch.tensor([2, 1]), motifs=motifs)
    scaled = description_length(10, 3, 2, 4, 32, motif_counts=torch.tensor([2, 1]), motifs=motifs, num_scales=5)
    assert plain.num_scales == 0 and scaled.scale_bits == 40
    for variant in ("bound_bits", "entropy_coded_bits", "needed_table_total_bits", "combined_bits"):
        assert getattr(scaled, variant) == pytest.approx(getattr(plain, variant) + 40), variant
    assert scaled.bound_bits == 259 + 40
    assert scaled.simplification_factor == pytest.approx(320 / 299)
    d = scaled.as_dict()
    assert d["num_scales"] == 5 and d["scale_bits"] == 40 and d["bound_bits"] == 299
    assert d["combined_factor"] == pytest.approx(320 / scaled.combined_bits)
    with pytest.raises(ValueError, match="num_scales"):
        description_length(10, 3, 2, 4, num_scales=-1)


def test_factor_of_a_normalized_configuration_by_hand():
    model = nn.Linear(5, 3)  # under "channel" each row of 5 is cut alone: 3 x 3 blocks of 2, bias 2
    length = description_length_from_config(model, momos.MoMosConfig(block_size=2, capacity=0.3, normalize="channel"))
    assert (length.num_weights, length.num_blocks, length.num_motifs, length.num_scales) == (18, 11, 3, 3 + 1)
    assert length.bound_bits == 3 * 2 * 32 + 11 * 2 + 4 * 8
    tensor = description_length_from_config(model, momos.MoMosConfig(block_size=2, capacity=0.3, normalize="tensor"))
    assert (tensor.num_blocks, tensor.num_scales) == (10, 2)
    assert tensor.bound_bits == 3 * 2 * 32 + 10 * 2 + 2 * 8


@pytest.mark.parametrize("config", [
    momos.MoMosConfig(block_size=3, capacity=0.05, normalize="tensor"),
    momos.MoMosConfig(block_size=4, num_motifs=40, scope="per_tensor", normalize="channel", force_zero=False),
    momos.MoMosConfig(block_size=4, num_motifs=40, motif_bits=6, normalize="channel"),
])
def test_normalized_projection_measured_from_its_weights_or_its_stats_agrees(config):
    model = _mlp(31, 17, 5)
    stats = momos.project_(model, config, warn_relative_error=None)
    scales = 17 + 1 + 5 + 1 if config.normalize == "channel" else 4
    assert sum(t.numel() for t in stats.scales) == scales
    from_stats = description_length_from_stats(stats, q=32).as_dict()
    assert from_stats["num_scales"] == scales and from_stats["scale_bits"] == 8 * scales
    # Per-row padding leaves many padded blocks, which the projection may assign to another
    # motif than the first one that agrees on their real values: the usage (entropy) may differ.
    usage_free = [k for k in from_stats if k != "num_weights" and "entropy" not in k and "combined" not in k]
    for given in (stats.scales, dict(zip(stats.parameter_names, stats.scales))):
        measured = measure(model, ["mosaic"], config, q=32, scales=given)
        assert {k: measured[f"mosaic_{k}"] for k in usage_free} == {k: from_stats[k] for k in usage_free}
    unscaled = description_length_of_codebooks(stats.num_weights, config.block_size, 32,
                                               mosaic_codebooks(list(model.parameters()), config, stats.scales))
    assert from_stats["bound_bits"] == unscaled.bound_bits + 8 * scales
    assert from_stats["simplification_factor"] == pytest.approx(unscaled.raw_bits / (unscaled.bound_bits + 8 * scales))


def test_normalized_description_needs_the_projection_scales():
    """At other scales the same weights are another mosaic: more motifs, a longer description."""
    config = momos.MoMosConfig(block_size=4, num_motifs=20, normalize="tensor")
    model = _mlp(31, 17, 5)
    stats = momos.project_(model, config, warn_relative_error=None)
    own = measure(model, ["mosaic"], config, scales=stats.scales)
    shifted = measure(model, ["mosaic"], config, scales=[s * 2 if i == 0 else s for i, s in enumerate(stats.scales)])
    assert own["mosaic_num_motifs"] <= 20 < shifted["mosaic_num_motifs"]
    with pytest.raises(ValueError, match="powers of two"):
        measure(model, ["mosaic"], config, scales=[s * 3 for s in stats.scales])
    with pytest.raises(ValueError, match="normalize='none'"):
        measure(model, ["mosaic"], momos.MoMosConfig(block_size=4, num_motifs=20), scales=stats.scales)


@pytest.mark.parametrize("config", [
    momos.MoMosConfig(block_size=4, capacity=0.1),
    momos.MoMosConfig(block_size=9, capacity=0.3, tile_shape=(3, 3), scope="per_tensor", force_zero=False),
    momos.MoMosConfig(block_size=4, capacity=0.1, normalize="channel"),
    momos.MoMosConfig(block_size=9, capacity=0.5, tile_shape=(3, 3), normalize="channel", include=(r"^0\.",)),
])
def test_the_description_and_the_file_agree_on_the_motifs(tmp_path, config):
    """One decomposition for both: the motifs counted are the motifs the .momos file stores."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 7))
    stats = momos.project_(model, config, warn_relative_error=None)
    info = momos.save(model, tmp_path / "m.momos", config, scales=stats.scales)
    measured = measure(model, ["mosaic"], config, scales=stats.scales)
    assert measured["mosaic_num_motifs"] == info.num_motifs
    assert measured["mosaic_num_blocks"] == info.num_blocks
    assert measured["mosaic_num_scales"] == info.scale_bytes


# --- CLI --------------------------------------------------------------------------------------

def test_cli_configuration_only(capsys):
    assert main(["complexity", "--model", "resnet20", "--block-size", "2", "--capacity", "0.05", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["description_length"]["simplification_factor"] == pytest.approx(8631104 / 2184745)
    assert main(["complexity", "--model", "resnet20", "--block-size", "2", "--capacity", "0.05", "--q", "8"]) == 0
    assert "simplification_factor" in capsys.readouterr().out


def test_cli_checkpoint(tmp_path, capsys):
    model = _mlp(300, 128, 10)
    config = momos.MoMosConfig(block_size=2, capacity=0.3)
    momos.project_(model, config)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert main(["complexity", str(path), "--json", "--metrics", "gzip,l2,mosaic",
                 "--block-size", "2", "--capacity", "0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    with pytest.warns(CompressorWindowWarning):
        expected = measure(model, ["gzip", "l2", "mosaic"], config)
    # A safetensors file keeps no parameter order (it lists tensors by name), so only the
    # order-independent values must agree exactly.
    order_free = [k for k in expected if k.startswith("mosaic_") or k in ("l2", "num_weights", "gzip_raw_bytes")]
    assert {k: report["metrics"][k] for k in order_free} == pytest.approx({k: expected[k] for k in order_free})
    assert any("gzip" in note for note in report["warnings"])  # about 6000 motifs of 8 bytes
    assert main(["complexity", str(path), "--metrics", "l2", "--exclude", "bias"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["num_weights", str(300 * 128 + 128 * 10)]


def test_cli_run_folder(tmp_path, capsys):
    pytest.importorskip("momos.train")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["complexity", str(run), "--json", "--metrics", "mosaic,l2"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = momos.MoMosConfig.from_dict(report["config"])  # the run's own
    blocks = report["metrics"]["mosaic_num_blocks"]
    assert report["metrics"]["mosaic_num_motifs"] <= config.motifs_for(blocks)
    assert main(["complexity", str(run / "init.safetensors"), "--json", "--metrics", "mosaic"]) == 0
    init = json.loads(capsys.readouterr().out)["metrics"]
    assert init["mosaic_num_motifs"] > blocks // 2 and init["mosaic_simplification_factor"] < 1


def test_cli_bad_input(tmp_path, capsys):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.randn(10)}, str(path))
    for argv, message in (
            (["complexity", str(path), "--metrics", "gzp"], "unknown metric"),
            (["complexity", str(path), "--metrics", "mosaic"], "needs a block size"),
            (["complexity"], "nothing to measure: give PATH"),
            (["complexity", str(path), "--model", "mlp"], "either PATH"),
            (["complexity", str(tmp_path / "missing")], "does not exist"),
            (["complexity", str(tmp_path)], "not a run folder"),
            (["complexity", "--model", "no_such_model"], "unknown model"),
            (["complexity", "--model", "mlp", "--capacity", "2"], "capacity")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    assert main(["complexity", str(tmp_path / "junk.safetensors")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_bdm_on_every_alphabet():
    w = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    result = measure(w, ["bdm", "bdm4", "bdm5", "bdm6", "bdm9"])
    for name in ("bdm", "bdm4", "bdm5", "bdm6", "bdm9"):
        assert result[name] > 0 and result[f"{name}_per_bit"] > 0
        assert 0 <= result[f"{name}_normalized"] <= 1


def test_mosaic_codebooks_are_the_file_decomposition_signed_zeros_apart():
    """-0.0 and 0.0 blocks are two motifs, as in the .momos file (compared bit for bit)."""
    from momos.fileformat.decompose import decompose

    weights = [torch.tensor([0.0, 1.0, -0.0, 1.0, 0.0, 1.0, 2.0, 2.0])]
    config = momos.MoMosConfig(block_size=2, num_motifs=3)
    (book,) = mosaic_codebooks(weights, config)
    (table,) = decompose(weights, config).motifs
    assert book.num_motifs == 3 and book.motif_counts.tolist() == [2, 1, 1]
    assert torch.equal(book.motifs.view(torch.int32), table.view(torch.int32))
