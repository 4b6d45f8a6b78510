"""The README's code runs as written."""

import re

import torch
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    match = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, flags=re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def test_training_loop_snippet_runs_and_ends_as_a_mosaic(capsys):
    namespace = {}
    exec(compile(python_block_after("## MoMos in your own training loop"), "README.md", "exec"), namespace)
    momos, model, projector = namespace["momos"], namespace["model"], namespace["projector"]
    assert momos.is_mosaic(model, projector.config, projector.codebook_motifs)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(last.rsplit(" ", 1)[1]) > 0.5   # far above the 0.1 of guessing


def test_finetune_snippet_runs_and_ends_as_a_saved_mosaic(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("## Compressing a pretrained model"), "README.md", "exec"), namespace)
    momos, model = namespace["momos"], namespace["model"]
    state = momos.load(tmp_path / "finetuned.momos")
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert namespace["accuracy"] > 0.8


def test_hugging_face_trainer_snippet_runs_and_saves_a_mosaic(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace = {}
        exec(compile(python_block_after("### Hugging Face Trainer"), "README.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    state = namespace["momos"].load(tmp_path / "bert.momos")
    assert all(torch.equal(state[name], tensor) for name, tensor in namespace["trainer"].model.state_dict().items())


def test_lightning_snippet_builds_a_one_device_trainer_with_the_callback():
    import pytest

    pytest.importorskip("lightning")
    from momos.integrations.lightning import MoMosCallback

    namespace = {}
    exec(compile(python_block_after("### Several processes"), "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.num_devices == 1
    assert any(isinstance(callback, MoMosCallback) for callback in trainer.callbacks)
