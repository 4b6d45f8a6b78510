"""``momos train`` under torchrun: 2 CPU processes (gloo) against one process, on digits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import momos
from momos.cli import main
from momos.runfolder import load_model

EPOCHS = 2


def torchrun(*argv: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m momos train ARGV`` with one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "momos", "train", "--quiet", "--threads", "1", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same MoMos run (s=4, capacity 0.01, 2 epochs) with 2 processes and with 1."""
    root = tmp_path_factory.mktemp("torchrun")
    launched = torchrun("--epochs", str(EPOCHS), "--out", str(root / "two"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert main(["train", "--epochs", str(EPOCHS), "--threads", "1", "--quiet", "--out", str(root / "one")]) == 0
    return root


def test_ranks_hold_identical_parameters_after_every_projection(runs):
    record = results(runs / "two")
    assert record["summary"]["complete"] and record["summary"]["processes"] == 2
    projected = [entry for entry in record["epochs"] if entry["projection"]]
    assert len(projected) == EPOCHS
    for entry in projected:
        first, second = entry["projection"]["rank_checksums"]
        assert first == second, f"epoch {entry['epoch']}"


def test_final_model_is_an_exact_mosaic(runs):
    run_dir = runs / "two"
    config = momos.MoMosConfig.from_dict(results(run_dir)["config"]["momos"])
    motifs = load_file(run_dir / "motif_counts.safetensors")["motifs"]
    assert momos.is_mosaic(load_model(run_dir), config, motifs)
    assert results(run_dir)["summary"]["final_projection"] is None   # the last epoch's projection stands


def test_two_processes_match_one_within_float_tolerance(runs):
    """Each rank trains on half of every global batch, so DDP's averaged gradient is the whole
    batch's: only the order of float additions differs from one process."""
    two, one = results(runs / "two"), results(runs / "one")
    for a, b in zip(two["epochs"][1:], one["epochs"][1:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.01)
    final_two, final_one = load_file(runs / "two" / "final.safetensors"), load_file(runs / "one" / "final.safetensors")
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=0, atol=1e-5)


def test_only_rank_zero_writes_and_prints(runs):
    names = sorted(p.name for p in (runs / "two").iterdir())
    assert names == sorted(p.name for p in (runs / "one").iterdir())


def test_batch_that_does_not_split_evenly_is_refused(tmp_path):
    launched = torchrun("--epochs", "1", "--batch-size", "33", "--out", str(tmp_path / "run"))
    assert launched.returncode != 0
    assert "batch size divisible by 2" in launched.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_under_torchrun_matches_the_uninterrupted_run(runs, tmp_path):
    run_dir = tmp_path / "run"
    stopped = torchrun("--epochs", str(EPOCHS), "--out", str(run_dir), "--stop-after-epoch", "1")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not results(run_dir)["summary"]["complete"]
    resumed = torchrun("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, reference = load_file(run_dir / "final.safetensors"), load_file(runs / "two" / "final.safetensors")
    for name in reference:
        assert torch.equal(final[name], reference[name]), \
            f"{name}: largest difference {(final[name] - reference[name]).abs().max():.3g}"
