"""Command-line messages that name the fix, ``momos inspect`` without and with ``--compare``, and
output into a closed pipe."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

from momos.cli import main


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_complexity_without_arguments_says_what_to_give(capsys):
    assert main(["complexity"]) == 2
    err = one_line(capsys)
    assert "give PATH (a run folder or .safetensors checkpoint) or --model NAME" in err and "not both" not in err
    assert main(["complexity", "some/path", "--model", "mlp"]) == 2
    assert "not both" in one_line(capsys)


def test_export_of_a_non_mosaic_suggests_project_on_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    save_file({"w": torch.randn(16, 4)}, tmp_path / "in.safetensors")
    argv = ["export", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "m.momos"), "--block-size", "4",
            "--num-motifs", "2"]
    assert main(argv) == 2
    err = one_line(capsys)
    assert "is not a mosaic" in err and "add --project to project it first" in err and "momos.project_" not in err
    assert not (tmp_path / "m.momos").exists()


def exported(tmp_path):
    """A small .momos file (the projection is exact: as many motifs as blocks)."""
    torch.manual_seed(0)
    save_file({"w": torch.randn(16, 4)}, tmp_path / "in.safetensors")
    out = tmp_path / "m.momos"
    assert main(["export", str(tmp_path / "in.safetensors"), "-o", str(out), "--block-size", "4",
                 "--num-motifs", "16", "--project"]) == 0
    return out


def test_inspect_compares_with_generic_compressors_only_when_asked(tmp_path, capsys, monkeypatch):
    import momos.cli.inspect
    import momos.complexity

    out = exported(tmp_path)
    calls = []
    generic_sizes = momos.complexity.generic_sizes
    monkeypatch.setattr(momos.complexity, "generic_sizes", lambda *a, **k: calls.append(1) or generic_sizes(*a, **k))
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["float32_bytes"] == 16 * 4 * 4 and "compressed_bytes" not in report
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "size (bytes)" in text and "vs float32" in text and "vs lzma" not in text
    assert calls == []                                                  # no compressor ran
    assert main(["inspect", str(out), "--compare", "--fast"]) == 0
    assert "vs lzma" in capsys.readouterr().out and calls == [1]
    assert main(["inspect", str(out), "--fast"]) == 2
    assert "add --compare" in one_line(capsys)


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """``momos export ... | head -1``: the reader is gone before the output is flushed."""
    torch.manual_seed(0)
    save_file({"w": torch.randn(16, 4)}, tmp_path / "in.safetensors")
    command = [sys.executable, "-m", "momos", "export", str(tmp_path / "in.safetensors"), "-o",
               str(tmp_path / "m.momos"), "--block-size", "4", "--num-motifs", "16", "--project"]
    # buffered, as by default: the failed write surfaces when stdout is flushed, not in print()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()                                              # before the command writes a byte
    err = process.stderr.read().decode()
    assert process.wait() == 1
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert (tmp_path / "m.momos").is_file()                             # the work itself was done
