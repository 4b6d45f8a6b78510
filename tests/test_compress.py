"""momos compress and model sources: a pretrained model to a fine-tuned, exported mosaic."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import momos
from momos.cli import main
from momos.sources import SourceError, load_source
from momos.train import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A baseline MLP trained on digits: the 'pretrained' model."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    train(TrainConfig(dataset="digits", model="mlp", method="baseline", epochs=3), out)
    return out


ARGS = ["--block-size", "4", "--capacity", "0.05", "--normalize", "channel", "--threads", "1", "--quiet"]


def test_compress_a_run_with_a_short_fine_tune_then_load_the_file(pretrained, tmp_path, capsys):
    out = tmp_path / "compressed"
    assert main(["compress", str(pretrained), "-o", str(out), "--steps", "8", "--lr", "1e-3", *ARGS]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and printed["finetuned"] == {k: v for k, v in results["finetuned"].items()
                                                             if k != "projection"}
    assert results["original"]["agreement"] == 1.0
    assert results["original"]["accuracy"] == pytest.approx(
        json.loads((pretrained / "results.json").read_text())["summary"]["test_acc"])
    for stage in ("projected", "finetuned"):
        assert 0 <= results[stage]["accuracy"] <= 1 and 0 <= results[stage]["agreement"] <= 1
    assert results["finetuned"]["steps"] == 8 and results["finetuned"]["projection"]["changed_weights"] == 0
    # the file holds exactly the fine-tuned model, at the bits per weight recorded
    loaded = momos.load(out / "model.momos")
    final = load_file(out / "final.safetensors")
    assert loaded.keys() == final.keys() and all(torch.equal(loaded[k], final[k]) for k in final)
    size = (out / "model.momos").stat().st_size
    values = sum(t.numel() for t in final.values())
    assert results["file"]["bytes"] == size
    assert results["file"]["bits_per_weight"] == pytest.approx(8 * size / values)
    # fine-tuning changed the projected model
    projected = load_file(out / "projected.safetensors")
    assert any(not torch.equal(projected[k], final[k]) for k in final)


def test_an_interrupted_compress_continues_at_its_first_unfinished_stage(pretrained, tmp_path):
    out = tmp_path / "compressed"
    command = ["compress", str(pretrained), "-o", str(out), "--steps", "4", *ARGS]
    assert main(command) == 0
    results = json.loads((out / "results.json").read_text())
    del results["file"]
    results["complete"] = False
    (out / "results.json").write_text(json.dumps(results))
    (out / "model.momos").unlink()
    final_written = (out / "final.safetensors").stat().st_mtime_ns
    assert main(command) == 0
    assert (out / "final.safetensors").stat().st_mtime_ns == final_written   # not fine-tuned again
    assert json.loads((out / "results.json").read_text())["complete"]
    loaded = momos.load(out / "model.momos")
    assert all(torch.equal(loaded[k], v) for k, v in load_file(out / "final.safetensors").items())
    assert main(command) == 2   # complete: nothing to do


@pytest.mark.parametrize("extra, message", [
    (["--steps", "2", "--epochs", "1"], "--steps or --epochs"),
    (["--dataset", "no-such-set"], "unknown dataset"),
    (["--tune", "weights", "--every-n-steps", "0"], "every_n_steps"),
    (["--every-n-steps", "3"], "never leave the mosaic"),
    (["--reestimate-bn", "2"], "has no BatchNorm layer"),
])
def test_bad_options_exit_2_and_write_nothing(pretrained, tmp_path, capsys, extra, message):
    out = tmp_path / "compressed"
    assert main(["compress", str(pretrained), "-o", str(out), *ARGS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("source, extra, message", [
    ("no/such/run", [], "no such file or folder"),
    ("hf:no/such/folder", [], "not a Hugging Face model folder"),
    ("timm:resnet18", [], "--weights FILE"),
    ("torchvision:no_such_net", ["--weights", "x.pth"], "not a torchvision model"),
])
def test_sources_that_cannot_be_loaded_are_named(tmp_path, capsys, source, extra, message):
    out = tmp_path / "compressed"
    assert main(["compress", source, "-o", str(out), *ARGS, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and source in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_projecting_only_evaluates_the_projection_once(pretrained, tmp_path, monkeypatch):
    import momos.compress

    calls = []
    evaluate = momos.compress.evaluate
    monkeypatch.setattr(momos.compress, "evaluate", lambda *a: calls.append(1) or evaluate(*a))
    assert main(["compress", str(pretrained), "-o", str(tmp_path / "out"), "--steps", "0", *ARGS]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(calls) == 1
    assert results["finetuned"]["agreement"] == results["projected"]["agreement"]
    assert results["finetuned"]["accuracy"] == results["projected"]["accuracy"]


def test_another_runs_folder_is_left_alone(pretrained, tmp_path, capsys):
    out = tmp_path / "compressed"
    assert main(["compress", str(pretrained), "-o", str(out), "--steps", "0", *ARGS]) == 0
    before = (out / "results.json").read_bytes()
    assert main(["compress", str(pretrained), "-o", str(out), "--steps", "0", *ARGS[:-3], "--capacity", "0.1",
                 "--quiet"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_a_bare_state_dict_needs_model_and_dataset(pretrained, tmp_path):
    path = tmp_path / "weights.safetensors"
    shutil.copy(pretrained / "final.safetensors", path)
    with pytest.raises(SourceError, match="--model NAME --dataset NAME"):
        load_source(path)
    source = load_source(path, model_name="mlp", dataset="digits")
    assert source.kind == "checkpoint" and not source.model.training
    reference = load_source(pretrained)
    assert reference.kind == "run" and reference.dataset == "digits"
    for a, b in zip(source.model.parameters(), reference.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(SourceError, match="does not fit the model"):
        load_source(path, model_name="vit", dataset="digits")


def test_torchvision_and_timm_sources_read_their_weight_files(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "squeeze.pth")
    source = load_source("torchvision:squeezenet1_1", weights=tmp_path / "squeeze.pth", num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(source.model.state_dict().values(), net.state_dict().values()))
    assert source.inputs(torch.zeros(2, 1, 8, 8)).shape == (2, 3, 8, 8)   # gray repeated, no resize
    with pytest.raises(SourceError, match="does not fit"):
        load_source("torchvision:squeezenet1_1", weights=tmp_path / "squeeze.pth")   # 1000 classes by default
    timm = pytest.importorskip("timm")
    vit = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    source = load_source("timm:test_vit", weights=tmp_path / "vit.safetensors", num_classes=10)
    native = vit.pretrained_cfg["input_size"][1]
    assert source.inputs(torch.zeros(2, 1, 8, 8)).shape == (2, 3, native, native)
    (tmp_path / "evil.pth").write_bytes(b"not a pickle")
    with pytest.raises(SourceError, match="not a readable weight file"):
        load_source("timm:test_vit", weights=tmp_path / "evil.pth", num_classes=10)


def _tiny_bert(folder, *, head: bool):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(40)]]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    model = (transformers.BertForSequenceClassification if head else transformers.BertModel)(config)
    model.save_pretrained(folder)


def _texts(path, *, labels: bool):
    generator = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(60):
        words = torch.randint(0, 40, (6,), generator=generator)
        text = " ".join(f"w{int(w)}" for w in words)
        lines.append(f"{int((words < 20).sum() > 3)}\t{text}" if labels else text)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("head", [True, False], ids=["classifier", "embeddings"])
def test_compress_a_hugging_face_text_model(tmp_path, capsys, head):
    _tiny_bert(tmp_path / "bert", head=head)
    _texts(tmp_path / "texts.txt", labels=head)
    out = tmp_path / "compressed"
    assert main(["compress", f"hf:{tmp_path / 'bert'}", "-o", str(out), "--text-file", str(tmp_path / "texts.txt"),
                 "--batch-size", "8", "--steps", "4", "--lr", "1e-3", "--parameters", "matrices", *ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    if head:
        assert {"agreement", "accuracy"} <= results["finetuned"].keys()
    else:
        assert results["original"]["cosine"] == pytest.approx(1.0)
        assert 0 < results["finetuned"]["cosine"] <= 1 + 1e-6
    assert results["data"].endswith("54 training texts, 6 held out")
    state = momos.load(out / "model.momos")
    assert all(torch.equal(state[k], v) for k, v in load_file(out / "final.safetensors").items())


def test_a_text_file_with_some_labels_missing_is_refused(tmp_path, capsys):
    _tiny_bert(tmp_path / "bert", head=True)
    (tmp_path / "texts.txt").write_text("1\tw1 w2\nw3 w4\n0\tw5\n")
    assert main(["compress", f"hf:{tmp_path / 'bert'}", "-o", str(tmp_path / "out"),
                 "--text-file", str(tmp_path / "texts.txt"), *ARGS]) == 2
    assert "line 2 has no integer label" in capsys.readouterr().err


def test_train_init_from_starts_at_the_sources_weights(pretrained, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert main(["train", "--init-from", str(pretrained), "--epochs", "1", "--out", str(out), "--quiet",
                 "--threads", "1"]) == 0
    init, source = load_file(out / "init.safetensors"), load_file(pretrained / "final.safetensors")
    assert all(torch.equal(init[k], source[k]) for k in source)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["init_from"] == str(pretrained)
    assert main(["train", "--init-from", str(pretrained), "--model", "vit", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "does not fit model vit" in capsys.readouterr().err


def test_train_init_from_a_timm_model_and_its_weight_file(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    vit = timm.create_model("test_vit", pretrained=False, num_classes=10, in_chans=1)
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    out = tmp_path / "run"
    assert main(["train", "--model", "test_vit", "--init-from", "timm:test_vit", "--init-weights",
                 str(tmp_path / "vit.safetensors"), "--method", "baseline", "--epochs", "1", "--train-subset", "64",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    init = load_file(out / "init.safetensors")
    assert all(torch.equal(init[f"model.{k}"], v) for k, v in vit.state_dict().items())   # inside the resize wrapper
    assert main(["train", "--model", "mlp", "--init-from", "timm:test_vit", "--init-weights",
                 str(tmp_path / "vit.safetensors"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "another model than --model mlp" in capsys.readouterr().err
    assert main(["train", "--init-from", "hf:somewhere", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "compress hf models with momos compress" in capsys.readouterr().err


def test_scores_leave_out_padding_tokens():
    from momos.compress import scores
    from momos.finetune import Output

    mask = torch.tensor([[1, 1, 0, 0]])                               # one text of 2 tokens, 2 padding
    original = torch.randn(1, 4, 8)
    finetuned = original.clone()
    finetuned[0, 2:] = -original[0, 2:]                               # only the padding disagrees
    evaluation = [({"attention_mask": mask}, None)]
    embeddings = scores([Output(finetuned, False, mask)], evaluation, [Output(original, False, mask)])
    assert embeddings["cosine"] == pytest.approx(1.0)
    tokens = scores([Output(finetuned, True, mask)], evaluation, [Output(original, True, mask)])
    assert tokens["agreement"] == 1.0
