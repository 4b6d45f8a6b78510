"""The runtime choices of ``momos train``: bf16 autocast, channels-last and torch.compile.

Each trains a tiny run and checks that the choice took effect, that the run still ends as an
exact mosaic of float32 weights, and that ``results.json`` records it. Speed is bench/train_throughput.py's.
"""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import momos
from momos import projector
from momos.cli import main
from momos.runfolder import load_model
from momos.train import TrainConfig, fit, prepare, resume


def native_bf16_cpu(monkeypatch, supported: bool) -> None:
    """Make this CPU report (or deny) native bfloat16, whatever it has."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def assert_exact_mosaic(run_dir):
    cfg = momos.MoMosConfig.from_dict(results(run_dir)["config"]["momos"])
    model = load_model(run_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert momos.is_mosaic(model, cfg, load_file(run_dir / "motif_counts.safetensors")["motifs"])


def test_bf16_is_refused_where_it_is_not_native(monkeypatch, tmp_path, capsys):
    native_bf16_cpu(monkeypatch, False)
    out = tmp_path / "run"
    assert main(["train", "--precision", "bf16", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--precision bf16" in err and "no native bfloat16" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A 2-epoch MoMos run in bf16 (native support pretended): the dtypes its training forward
    passes produced and the dtypes of the weights each projection saw."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        native_bf16_cpu(monkeypatch, True)
        seen = {"forward": set(), "projected": []}
        project = projector.project_

        def spy(model, *args, **kwargs):
            seen["projected"].append({p.dtype for p in model.parameters()})
            return project(model, *args, **kwargs)

        monkeypatch.setattr(projector, "project_", spy)
        out = tmp_path_factory.mktemp("bf16") / "run"
        run = prepare(TrainConfig(epochs=2), out)

        def record(module, inputs, output):
            if module.training:
                seen["forward"].add(output.dtype)

        run.model[1].register_forward_hook(record)
        fit(run, precision="bf16")
    return out, seen


def test_bf16_trains_the_forward_pass_in_bfloat16(bf16_run):
    _, seen = bf16_run
    assert seen["forward"] == {torch.bfloat16}


def test_bf16_projects_float32_weights_and_ends_an_exact_mosaic(bf16_run):
    out, seen = bf16_run
    assert len(seen["projected"]) == 2 and all(dtypes == {torch.float32} for dtypes in seen["projected"])
    assert_exact_mosaic(out)
    assert results(out)["runtime"] == {"device": "cpu", "precision": "bf16", "channels_last": False,
                                       "compile": False}


def test_channels_last_trains_a_convnet_in_channels_last(tmp_path):
    out = tmp_path / "run"
    run = prepare(TrainConfig(model="resnet20", epochs=1, batch_size=64, train_subset=256), out)
    layouts = set()

    def record(module, inputs, output):   # 16 channels in: the two layouts differ
        if module.training:
            layouts.update({tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
                            for tensor in (module.weight, inputs[0])})

    run.model.layers[0].conv2.register_forward_hook(record)
    fit(run, channels_last=True)
    assert layouts == {True}
    assert_exact_mosaic(out)
    assert results(out)["runtime"]["channels_last"] is True


def test_channels_last_is_a_noted_no_op_on_the_mlp(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="momos.train"):
        fit(prepare(TrainConfig(epochs=1), out), channels_last=True)
    assert "channels-last: no effect on mlp" in caplog.text
    assert results(out)["runtime"]["channels_last"] is False


@pytest.mark.slow   # compiling takes 20 s and more
def test_compile_trains_the_projected_model_and_resumes(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or real_compile(module, **kw))
    out = tmp_path / "run"
    run = prepare(TrainConfig(epochs=2), out)
    fit(run, stop_after_epoch=1, compile=True)
    assert compiled == [run.model] and run.projector.model is run.model
    resume(out, compile=True)
    record = results(out)
    assert all(entry["val_acc"] > 0.5 for entry in record["epochs"][1:])   # the evaluated model is the trained one
    assert record["runtime"]["compile"] is True
    assert_exact_mosaic(out)
