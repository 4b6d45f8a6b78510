import json

import torch
from safetensors.torch import load_file, save_file

from momos.cli import main


def test_project_command_writes_mosaic(tmp_path, capsys):
    torch.manual_seed(0)
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({"w": torch.randn(10, 4), "b": torch.randn(3), "steps": torch.arange(2)}, src)
    # without force_zero: with the zero motif, 2 others may leave "b" all zeros, which project_ refuses
    assert main(["project", str(src), "-o", str(out), "--num-motifs", "3", "--block-size", "2",
                 "--no-force-zero"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_motifs"] == 3 and stats["num_blocks"] == 22
    projected = load_file(out)
    assert torch.equal(projected["steps"], torch.arange(2))
    assert len(torch.unique(projected["w"].reshape(-1, 2), dim=0)) <= 3


def test_project_command_bad_input_exit_2(tmp_path, capsys):
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({"w": torch.randn(4)}, src)
    assert main(["project", str(src), "-o", str(out), "--capacity", "2"]) == 2
    assert "capacity must be in (0, 1]" in capsys.readouterr().err
    assert main(["project", str(tmp_path / "missing"), "-o", str(out)]) == 2
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["project", str(tmp_path / "junk.safetensors"), "-o", str(out)]) == 2
    assert not out.exists()


def test_project_command_exclude_matches_real_names(tmp_path):
    torch.manual_seed(0)
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    bias = torch.randn(7)
    save_file({"layer.weight": torch.randn(8, 4), "layer.bias": bias}, src)
    assert main(["project", str(src), "-o", str(out), "--num-motifs", "2", "--exclude", r"bias$"]) == 0
    assert torch.equal(load_file(out)["layer.bias"], bias)


def test_project_command_motif_options(tmp_path, capsys):
    torch.manual_seed(0)
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({"conv": torch.randn(4, 2, 3, 3)}, src)
    args = ["project", str(src), "-o", str(out), "--block-size", "9", "--tile-shape", "3x3", "--num-motifs", "3",
            "--motif-method", "kmeans", "--kmeans-iterations", "2"]
    assert main(args) == 0
    kernels = load_file(out)["conv"].reshape(8, 9)
    assert len(torch.unique(kernels, dim=0)) <= 3
    assert main(args[:-6] + ["--tile-shape", "3by3"]) == 2
    assert "--tile-shape" in capsys.readouterr().err
    former = tmp_path / "former.safetensors"
    assert main(args[:2] + ["-o", str(former)] + args[4:10] + ["--motifs", "kmeans"] + args[12:]) == 0
    assert torch.equal(load_file(former)["conv"], load_file(out)["conv"])   # --motifs: the former name


def test_project_a_run_with_calibration_then_export_it(tmp_path, capsys):
    from momos.fileformat import load

    run = tmp_path / "run"
    assert main(["train", "--method", "baseline", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    out, mosaic = tmp_path / "projected.safetensors", tmp_path / "m.momos"
    options = ["--block-size", "4", "--capacity", "0.05", "--normalize", "channel", "--parameters", "matrices"]
    capsys.readouterr()
    assert main(["project", str(run), "-o", str(out), "--calibration", "64", *options]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["max_relative_error"] < 0.5
    projected = load_file(out)
    assert projected["1.bias"].equal(load_file(run / "final.safetensors")["1.bias"])  # not a matrix
    # the scales travel in the file's metadata, so the mosaic exports without projecting again
    assert main(["export", str(out), "-o", str(mosaic), *options]) == 0
    state = load(mosaic)
    for name, tensor in projected.items():
        assert torch.equal(state[name], tensor), name
    # calibration needs a model that runs, and a positive number of images
    assert main(["project", str(out), "-o", str(tmp_path / "x.safetensors"), "--calibration", "8"]) == 2
    assert main(["project", str(run), "-o", str(tmp_path / "x.safetensors"), "--calibration", "0"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_project_command_leaves_a_checkpoints_running_statistics_unless_included(tmp_path, capsys):
    torch.manual_seed(0)
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    state = {"conv.weight": torch.randn(8, 4), "bn.weight": torch.randn(8), "bn.running_mean": torch.randn(8),
             "bn.running_var": torch.rand(8) + 0.5, "bn.num_batches_tracked": torch.tensor(7)}
    save_file(state, src)
    args = ["project", str(src), "-o", str(out), "--num-motifs", "2", "--no-force-zero"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_weights"] == 40
    assert captured.err.count("\n") == 1 and "projected 2 of 5 tensors (40 values)" in captured.err
    assert "left out 3 buffers (bn.running_mean, bn.running_var, bn.num_batches_tracked;" in captured.err
    projected = load_file(out)
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(projected[name], state[name]), name
    # included by name, running statistics are projected like weights
    assert main([*args, "--include", "weight$", "--include", "running_"]) == 0
    assert "projected 4 of 5 tensors (56 values); left out 1 buffer (" in capsys.readouterr().err
    assert not torch.equal(load_file(out)["bn.running_mean"], state["bn.running_mean"])


def test_project_command_nprobe(tmp_path, capsys):
    from momos.cli import build_parser
    from momos.cli.common import projection_config

    args = build_parser().parse_args(["project", "x.safetensors", "-o", "y", "--assignment", "approximate",
                                      "--nprobe", "7"])
    assert projection_config(args).nprobe == 7
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({"w": torch.randn(64, 4)}, src)
    assert main(["project", str(src), "-o", str(out), "--nprobe", "7"]) == 2
    assert "--nprobe tunes --assignment approximate" in capsys.readouterr().err and not out.exists()
    assert main(["project", str(src), "-o", str(out), "--num-motifs", "16", "--assignment", "approximate",
                 "--nprobe", "2"]) == 0
