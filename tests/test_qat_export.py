"""Quantized (QAT) mosaics in ``.momos`` files: a ``momos+qat`` run exports, and ``momos.save``
writes a model with fake quantization attached, as the model its forward pass computes with
(format version 3): the latent mosaic plus which weights are quantized to how many bits.
``momos.load`` gives back the quantized weights bit for bit."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrizations

import momos
from momos.cli import main
from momos.complexity import QUANTIZATION_BITS, description_length_from_config, measure
from momos.data import INFOS, batches, load_dataset
from momos.fileformat import FormatError, load, read, read_scales, save
from momos.fileformat.container import read_container, write_container
from momos.fileformat.tables import same_bits
from momos.models import build_model
from momos.qat import FakeQuantize, fake_quantized, latent_name
from momos.quantization import fake_quantize
from momos.runfolder import load_model
from momos.train import TrainConfig, train

from fileformat_helpers import assert_same_state, load_bytes, resign

DATA = Path(__file__).parent / "data"
MLP_WEIGHTS = ["1.weight", "3.weight", "5.weight", "7.weight", "9.weight"]  # the mlp's Linear layers


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """A two-epoch momos+qat run on digits and its export by the command line."""
    root = tmp_path_factory.mktemp("qat")
    train(TrainConfig(dataset="digits", model="mlp", method="momos+qat", epochs=2), root / "run")
    assert main(["export", str(root / "run"), "-o", str(root / "run.momos")]) == 0
    return root / "run", root / "run.momos"


def forward_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the forward pass computes with: every parameter, fake-quantized weights as used."""
    owners = {name: model.get_submodule(name.rpartition(".")[0]) for name in fake_quantized(model)}
    quantized = {name: owner.weight.detach() for name, owner in owners.items()}
    latent = {latent_name(name) for name in quantized}
    plain = {name: p.detach() for name, p in model.named_parameters() if name not in latent}
    return {**plain, **quantized}


def digits_batch() -> torch.Tensor:
    data = load_dataset("digits")
    return next(batches(data.test, data.info, 64))[0]


def mlp(qat_bits: int | None = None) -> nn.Module:
    info = INFOS["digits"]
    model = build_model("mlp", channels=info.shape[0], image_size=info.shape[1], num_classes=info.num_classes)
    return momos.add_qat_(model, momos.QATConfig(bits=qat_bits)) if qat_bits else model


def assert_same_tensors(got, expected):
    assert_same_state(got, expected, ordered=False)


# ----------------------------------------------------------------------------- a momos+qat run

def test_export_gives_back_the_weights_the_forward_pass_used(qat_run):
    run, out = qat_run
    model = load_model(run)
    state, info = read(out)
    assert_same_tensors(state, forward_weights(model))
    assert_same_tensors(load(out), state)
    # quantization did change them: the file does not just hold the latent weights
    latent = load_file(run / "final.safetensors")
    assert all(not torch.equal(state[name], latent[name]) for name in MLP_WEIGHTS)
    assert all(torch.equal(state[name], fake_quantize(latent[name], 8)) for name in MLP_WEIGHTS)
    # as motifs + indices + quantization, not as dense tensors
    assert info.version == 3 and info.quantization == dict.fromkeys(MLP_WEIGHTS, 8)
    assert info.mosaic_weights == info.num_values and info.other_bytes == 0
    assert info.file_bytes < info.num_values // 2      # under 4 bits per weight, headers included
    assert info.metadata == {"source": "run"}


def test_a_plain_model_loaded_from_the_export_computes_what_the_run_computed(qat_run):
    run, out = qat_run
    x = digits_batch()
    with torch.no_grad():
        expected = load_model(run)(x)
        got = load(out, mlp().eval())(x)
    assert torch.equal(got, expected)


def test_a_qat_model_gets_the_latent_weights_back(qat_run):
    run, out = qat_run
    model = load(out, mlp(qat_bits=8))
    checkpoint = load_model(run)
    for name in MLP_WEIGHTS:  # the latent weights as trained, from which training can go on
        assert same_bits(model.get_parameter(latent_name(name)), checkpoint.get_parameter(latent_name(name)))
    assert_same_tensors(forward_weights(model), forward_weights(checkpoint))
    x = digits_batch()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), checkpoint(x))


def partly_quantized_mlp():
    model = mlp()
    momos.add_qat_(model[1], momos.QATConfig(bits=8))
    return model


@pytest.mark.parametrize("make", [lambda: mlp(qat_bits=4), partly_quantized_mlp], ids=["other bits", "some weights"])
def test_a_model_with_other_fake_quantization_is_refused(qat_run, make):
    _, out = qat_run
    model = make()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="fake quantization is not the file's"):
        load(out, model)
    assert_same_tensors(model.state_dict(), before)


def test_inspect_shows_the_quantization(qat_run, capsys):
    _, out = qat_run
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format           momos version 3" in text
    assert "quantization     8-bit symmetric per tensor (QAT) of 5 tensors: 1.weight, 3.weight" in text
    assert "steps derived from the weights (0 bytes)" in text
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 3 and report["quantization"] == dict.fromkeys(MLP_WEIGHTS, 8)


def test_the_description_length_counts_the_quantization(qat_run, capsys):
    run, _ = qat_run
    capsys.readouterr()
    assert main(["complexity", str(run), "--json", "--metrics", "mosaic"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["mosaic_num_quantized"] == 5 and metrics["mosaic_quantization_bits"] == 5 * QUANTIZATION_BITS
    # the same latent mosaic without QAT: exactly the quantization's bits less
    model = load_model(run)
    config = momos.MoMosConfig.from_dict(json.loads((run / "results.json").read_text())["config"]["momos"])
    plain = measure(momos.remove_qat_(model, keep_quantized=False), ["mosaic"], config)
    assert plain["mosaic_num_quantized"] == 0
    for variant in ("bound", "entropy_coded", "needed_table", "combined"):
        assert metrics[f"mosaic_{variant}_bits"] == plain[f"mosaic_{variant}_bits"] + 40, variant
    assert metrics["mosaic_bound_bits_per_weight"] == pytest.approx(
        (plain["mosaic_bound_bits"] + 40) / metrics["num_weights"])
    assert description_length_from_config(mlp(qat_bits=8), config).num_quantized == 5
    assert description_length_from_config(mlp(), config).num_quantized == 0


def test_a_normalized_qat_run_exports_with_its_scales(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = momos.MoMosConfig(block_size=4, capacity=0.01, normalize="channel")
    train(TrainConfig(dataset="digits", model="mlp", method="momos+qat", epochs=1, qat_bits=4, momos=cfg), run)
    out = tmp_path / "m.momos"
    assert main(["export", str(run), "-o", str(out)]) == 0
    state, info = read(out)
    assert info.normalize == "channel" and info.quantization == dict.fromkeys(MLP_WEIGHTS, 4)
    assert_same_tensors(state, forward_weights(load_model(run)))
    assert sorted(read_scales(out)) == sorted(load_file(run / "final.safetensors"))
    # the description length: the recorded scales (by plain name) and the quantization
    capsys.readouterr()
    assert main(["complexity", str(run), "--json", "--metrics", "mosaic"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["mosaic_num_scales"] == info.num_scales and metrics["mosaic_num_quantized"] == 5


# ----------------------------------------------------------------------------- momos.save

def small(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def qat_mosaic(cfg, bits=4, seed=0):
    model = momos.add_qat_(small(seed), momos.QATConfig(bits=bits))
    stats = momos.project_(model, cfg, warn_relative_error=None)
    return model, stats


def test_a_plain_file_is_refused_by_a_qat_model(tmp_path):
    cfg = momos.MoMosConfig(block_size=2, capacity=0.2)
    model = small()
    momos.project_(model, cfg, warn_relative_error=None)
    save(model, tmp_path / "plain.momos", cfg)
    with pytest.raises(ValueError, match=r"0.weight: 8 vs none"):
        load(tmp_path / "plain.momos", momos.add_qat_(small(), momos.QATConfig(bits=8)))


def test_save_a_qat_model_and_round_trip(tmp_path):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, force_zero=False)
    model, _ = qat_mosaic(cfg)
    info = save(model, tmp_path / "a.momos", cfg)
    assert info.version == 3 and info.quantization == {"0.weight": 4, "2.weight": 4}
    assert_same_tensors(load(tmp_path / "a.momos"), forward_weights(model))
    # back into a QAT model and written again: the same file
    again = load(tmp_path / "a.momos", momos.add_qat_(small(seed=1), momos.QATConfig(bits=4)))
    save(again, tmp_path / "b.momos", cfg)
    assert_same_content(tmp_path / "b.momos", tmp_path / "a.momos")


def assert_same_content(got: Path, expected: Path):
    """The same header, tensors and version (safetensors orders the metadata as it likes)."""
    header, tensors, version = read_container(got.read_bytes())
    expected_header, expected_tensors, expected_version = read_container(expected.read_bytes())
    if expected_header.get("config"):   # as a current writer stores an older file's config
        expected_header["config"] = momos.MoMosConfig.from_dict(expected_header["config"]).to_dict()
    assert (header, version) == (expected_header, expected_version)
    assert_same_tensors(tensors, expected_tensors)


def test_save_a_normalized_qat_model_with_scales_by_either_name(tmp_path):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.3, normalize="channel", force_zero=False)
    model, stats = qat_mosaic(cfg, bits=3)
    expected = forward_weights(model)
    by_latent = dict(zip(stats.parameter_names, stats.scales))
    assert "0.parametrizations.weight.original" in by_latent
    for scales in (stats.scales, by_latent, read_scales_of(model, cfg, stats, tmp_path)):
        save(model, tmp_path / "m.momos", cfg, scales=scales)
        assert_same_tensors(load(tmp_path / "m.momos"), expected)


def read_scales_of(model, cfg, stats, tmp_path):
    """The scales by plain name, as a file (or a run's checkpoint) records them."""
    save(model, tmp_path / "scales.momos", cfg, scales=stats.scales)
    return read_scales(tmp_path / "scales.momos")


@pytest.mark.filterwarnings("ignore:the projection moved")
def test_save_projects_a_qat_model_on_its_latent_weights(tmp_path):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2)
    model = momos.add_qat_(small(), momos.QATConfig(bits=6))
    save(model, tmp_path / "m.momos", cfg, project=True)
    expected = copy.deepcopy(model)
    momos.project_(expected, cfg, warn_relative_error=None)
    assert_same_tensors(load(tmp_path / "m.momos"), forward_weights(expected))


def test_quantized_tensors_outside_the_mosaic(tmp_path):
    """A fake-quantized weight that the configuration leaves out is stored plain, latent too."""
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, exclude=("^2",), force_zero=False)
    model, _ = qat_mosaic(cfg, bits=5)
    info = save(model, tmp_path / "m.momos", cfg)
    assert info.quantization == {"0.weight": 5, "2.weight": 5} and info.other_bytes == 4 * (8 * 3 + 3)
    assert_same_tensors(load(tmp_path / "m.momos"), forward_weights(model))


@pytest.mark.filterwarnings("ignore:the projection moved")
def test_save_refuses_what_it_cannot_write(tmp_path):
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2)
    not_a_mosaic = momos.add_qat_(small(), momos.QATConfig(bits=4))
    with pytest.raises(ValueError, match="parameter '0.weight' is not a mosaic"):
        save(not_a_mosaic, tmp_path / "m.momos", cfg)
    orthogonal = small()
    parametrizations.orthogonal(orthogonal[2])
    with pytest.raises(ValueError, match="'2.weight' is parametrized by something other than fake quantization"):
        save(orthogonal, tmp_path / "m.momos", cfg, project=True)
    manual = small()
    torch.nn.utils.parametrize.register_parametrization(manual[0], "weight", FakeQuantize(40))
    with pytest.raises(ValueError, match="quantization bits must be an int in"):
        save(manual, tmp_path / "m.momos", cfg, project=True)
    assert not (tmp_path / "m.momos").exists()


def test_fake_quantize_is_exactly_the_forward_pass():
    """The file holds ``fake_quantize(latent, q)``; FakeQuantize computes ``w + (that - w)``,
    which is the same bits: the difference is exact (the two are within a factor of two, or
    one is zero)."""
    generator = torch.Generator().manual_seed(0)
    for bits in (2, 3, 4, 8, 16):
        layer = FakeQuantize(bits)
        for scale in (1e-30, 1e-3, 1.0, 1e20):
            w = torch.randn(4096, generator=generator) * scale
            w[::97] = 0.0
            assert same_bits(layer(w), fake_quantize(w, bits)), (bits, scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fake_quantize_gives_the_same_bits_on_cuda():
    generator = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        for _ in range(50):
            w = torch.randn(1000, generator=generator) * torch.rand((), generator=generator) * 10
            assert same_bits(fake_quantize(w.cuda(), bits).cpu(), fake_quantize(w, bits)), bits


# ----------------------------------------------------------------------------- the format

@pytest.fixture(scope="module")
def qat_file(tmp_path_factory):
    """A QAT file with plain tensors and an int buffer, and the weights it holds."""
    cfg = momos.MoMosConfig(block_size=4, capacity=0.2, force_zero=False)
    model, _ = qat_mosaic(cfg)
    model.register_buffer("steps", torch.tensor([3, 1, 4]))
    path = tmp_path_factory.mktemp("format") / "q.momos"
    save(model, path, cfg)
    return path.read_bytes(), {**forward_weights(model), "steps": model.steps}


def _set_bits(q):
    return lambda h, t: h["quantization"]["tensors"].__setitem__("0.weight", q)


QUANTIZATION_LIES = {
    "scheme": lambda h, t: h["quantization"].__setitem__("scheme", "asymmetric"),
    "extra key": lambda h, t: h["quantization"].__setitem__("steps", [1.0]),
    "not an object": lambda h, t: h.__setitem__("quantization", [8]),
    "no tensors": lambda h, t: h["quantization"].__setitem__("tensors", {}),
    "tensors list": lambda h, t: h["quantization"].__setitem__("tensors", ["0.weight"]),
    "unknown tensor": lambda h, t: h["quantization"]["tensors"].__setitem__("head.weight", 8),
    "int buffer": lambda h, t: h["quantization"]["tensors"].__setitem__("steps", 8),
    "one bit": _set_bits(1),
    "32 bits": _set_bits(32),
    "bits as a string": _set_bits("8"),
    "bits as a bool": _set_bits(True),
    "bits as a float": _set_bits(4.0),
    "no quantization key": lambda h, t: h.pop("quantization"),
}


@pytest.mark.parametrize("lie", sorted(QUANTIZATION_LIES))
def test_a_lying_quantization_is_a_format_error(tmp_path, qat_file, lie):
    data, expected = qat_file
    assert_same_tensors(load_bytes(data, tmp_path), expected)
    with pytest.raises(FormatError):
        load_bytes(resign(data, QUANTIZATION_LIES[lie]), tmp_path)


def test_the_stored_bits_are_the_ones_applied(tmp_path, qat_file):
    data, expected = qat_file
    latent = load_bytes(resign(data, lambda h, t: h.__setitem__("quantization", None)), tmp_path)
    state = load_bytes(resign(data, _set_bits(3)), tmp_path)
    assert torch.equal(state["0.weight"], fake_quantize(latent["0.weight"], 3))
    assert not torch.equal(state["0.weight"], expected["0.weight"])
    assert_same_tensors({k: v for k, v in state.items() if k != "0.weight"},
                        {k: v for k, v in expected.items() if k != "0.weight"})


def test_versions_and_the_quantization_key(tmp_path, qat_file):
    data, _ = qat_file
    header, tensors, version = read_container(data)
    assert version == 3
    with pytest.raises(FormatError, match="quantization"):  # version 2 has no quantization key
        load_bytes(write_container(tensors, header, version=2), tmp_path)
    # null in version 3: no quantized tensors, the latent weights as stored
    header["quantization"] = None
    latent = load_bytes(write_container(tensors, header, version=3), tmp_path)
    assert_same_tensors(latent, read_latent(data))


def read_latent(data):
    from momos.fileformat.codec import decode_stored

    return decode_stored(data)[0]


@pytest.mark.parametrize("name,version", [("v1_global", 1), ("v1_per_tensor_grid", 1), ("v2_channel", 2)])
def test_older_files_load_unchanged(tmp_path, name, version):
    """tests/data/format_v*.momos were written by older writers (tests/data/make_format_v*.py)."""
    path = DATA / f"format_{name}.momos"
    state, info = read(path)
    assert_same_tensors(state, load_file(DATA / f"format_{name}.expected.safetensors"))
    assert info.version == version and info.quantization == {}
    assert (read_scales(path) is not None) == (info.normalize != "none")
    # written again: a version-2 file (without quantization nothing newer is needed), the same weights;
    # a version-2 file comes out as the version-2 writer wrote it
    cfg = momos.MoMosConfig.from_dict(info.config)
    again = tmp_path / "again.momos"
    assert save(state, again, cfg, scales=read_scales(path), metadata=info.metadata).version == 2
    assert_same_tensors(load(again), state)
    if version == 2:
        assert_same_content(again, path)
