"""The scripts of examples/: each runs as a newcomer would run it and prints its results."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(path.name for path in EXAMPLES.glob("*.py"))
# The public API: the package's top level, its integrations and the documented subpackages.
PUBLIC_MODULES = {"momos", "momos.complexity", "momos.fileformat", "momos.integrations.lightning",
                  "momos.integrations.transformers"}


def run_example(name: str, out: Path, *args: str, timeout: float = 300) -> str:
    """Run ``examples/NAME`` with ``--out OUT`` on one thread; its stdout (the test fails on exit != 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--out", str(out), *args],
                            capture_output=True, text=True, env=env, timeout=timeout, cwd=EXAMPLES.parent)
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def number(pattern: str, text: str) -> float:
    """The number that the (one-group) regex ``pattern`` captures in ``text`` (``^``/``$``: lines)."""
    match = re.search(pattern, text, re.M)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_every_example_is_listed_documented_and_public():
    assert SCRIPTS == ["checkpoint_complexity.py", "compress_pretrained.py", "export_and_load.py",
                       "hf_trainer.py", "lightning_digits.py", "training_loop.py"]
    listing = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        tree = ast.parse((EXAMPLES / name).read_text())
        docstring = ast.get_docstring(tree)
        assert docstring and f"python examples/{name}" in docstring, f"{name}: the docstring says how to run it"
        assert f"python examples/{name}" in listing, f"{name} is not in examples/README.md"
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        private = {module for module in imported if module.split(".")[0] == "momos"} - PUBLIC_MODULES
        assert not private, f"{name} imports {private}, not the public API"
        assert '"--out"' in (EXAMPLES / name).read_text()


def test_training_loop(tmp_path):
    out = run_example("training_loop.py", tmp_path)
    assert len(re.findall(r"^epoch +\d+: .*val accuracy", out, re.M)) == 8
    assert number(r"final val accuracy ([\d.]+)", out) > 0.8          # chance: 0.1
    assert "is mosaic: True" in out
    assert (tmp_path / "final.safetensors").is_file() and (tmp_path / "history.json").is_file()


@pytest.mark.slow   # importing Lightning alone takes about 10 s on one thread
def test_lightning_digits(tmp_path):
    pytest.importorskip("lightning.pytorch")
    out = run_example("lightning_digits.py", tmp_path)
    assert len(re.findall(r"^epoch +\d+: .*val accuracy", out, re.M)) == 8
    assert number(r"final val accuracy ([\d.]+)", out) > 0.8
    assert "is mosaic: True" in out
    assert (tmp_path / "digits.momos").is_file()


@pytest.mark.slow
def test_lightning_digits_under_ddp(tmp_path):
    pytest.importorskip("lightning.pytorch")
    out = run_example("lightning_digits.py", tmp_path, "--devices", "2", "--epochs", "2")
    assert len(re.findall(r"^epoch +\d+: .*val accuracy", out, re.M)) == 2   # rank 0 alone prints
    assert "is mosaic: True (2 projections" in out
    assert (tmp_path / "digits.momos").is_file()


def test_export_and_load(tmp_path):
    out = run_example("export_and_load.py", tmp_path)
    assert "identical weights: True, identical outputs: True" in out
    assert number(r"loaded: +val accuracy ([\d.]+)", out) == number(r"projected: +val accuracy ([\d.]+)", out) > 0.8
    assert number(r"([\d.]+)x smaller", out) > 4
    assert number(r"bits per weight: ([\d.]+)", out) < 8
    assert (tmp_path / "digits.momos").is_file() and (tmp_path / "digits.safetensors").is_file()


def test_checkpoint_complexity_of_two_trained_checkpoints(tmp_path):
    out = run_example("checkpoint_complexity.py", tmp_path)
    factors = re.search(r"^simplification factor +([\d.]+) +([\d.]+)$", out, re.M)
    assert factors, out
    baseline, mosaic = float(factors.group(1)), float(factors.group(2))
    assert baseline < 1 < mosaic        # float weights: no block repeats; the mosaic: few motifs
    assert number(r"lzma compresses momos ([\d.]+)x better than baseline", out) > 2
    assert (tmp_path / "baseline.safetensors").is_file() and (tmp_path / "momos.safetensors").is_file()


def test_checkpoint_complexity_of_a_given_checkpoint(tmp_path):
    import torch
    from safetensors.torch import save_file

    import momos

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4))
    momos.project_(model, momos.MoMosConfig(block_size=4, num_motifs=3, parameters="matrices"),
                   warn_relative_error=None)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    out = run_example("checkpoint_complexity.py", tmp_path / "out", str(tmp_path / "model.safetensors"),
                      "--metrics", "gzip,mosaic")
    assert number(r"^weights +([\d,]+)$", out) == 16 * 32 + 32 + 32 + 32 + 32 * 4 + 4   # running_ left out
    assert "gzip ratio" in out and "lzma ratio" not in out
    assert number(r"^motifs \(distinct blocks of 4\) +([\d,]+)$", out) > 3   # biases and norms are not a mosaic


def test_compress_pretrained(tmp_path):
    out = run_example("compress_pretrained.py", tmp_path)
    pretrained = number(r"pretrained: +accuracy ([\d.]+)", out)
    projected = number(r"projected: +accuracy ([\d.]+)", out)
    finetuned = number(r"fine-tuned: +accuracy ([\d.]+)", out)
    assert pretrained > 0.9 and finetuned > 0.85 and finetuned > projected
    assert number(r"fine-tuned: .*agreement with the original ([\d.]+)", out) > 0.9
    assert number(r"([\d.]+) bits per weight", out) < 3
    assert (tmp_path / "compressed.momos").is_file()


def test_hf_trainer(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")   # the Trainer needs it
    out = run_example("hf_trainer.py", tmp_path)
    assert len(re.findall(r"^epoch \d+: projection \d+", out, re.M)) == 4
    assert number(r"final eval accuracy ([\d.]+)", out) > 0.65          # chance: 0.5
    assert "is mosaic: True" in out and "loaded back identical: True" in out
    assert (tmp_path / "bert.momos").is_file()
