"""What ``momos train`` tells as it goes: the console lines, metrics.csv, TensorBoard, threads."""

import csv
import re
import sys
import time

import pytest
import torch

from momos import distributed
from momos.cli import main
from momos.runfolder import read_results
from momos.runtime import ONE_THREAD_BELOW, default_threads, multiply_adds
from momos.train import TrainConfig, fit, prepare, resume, train, work_per_step

SMALL = ["--train-subset", "320", "--threads", "1"]
FINAL = re.compile(r"test loss \d\.\d{4} acc \d\.\d{4}  \(\d+\.\d s\)  -> (.+)")


pytestmark = pytest.mark.usefixtures("one_thread")


def lines(text):
    return text.splitlines()


def test_header_one_line_per_epoch_and_no_bars_without_a_terminal(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", *SMALL, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    header, *epochs, final = lines(captured.out)
    assert header == ("mlp (216,586 parameters) · digits (sklearn.datasets.load_digits): "
                      "train 320 / val 72 / test 359 · momos s=4 k=541 · 1 thread · cpu")
    assert [line.split("  ")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert FINAL.fullmatch(final)[1] == str(out)
    assert captured.err == ""                     # tqdm writes its bars to stderr


def test_header_names_q_for_qat(tmp_path, capsys):
    assert main(["train", "--method", "momos+qat", "--q", "6", "--epochs", "1", *SMALL,
                 "--out", str(tmp_path / "run")]) == 0
    assert " · momos+qat s=4 k=541 q=6 · " in lines(capsys.readouterr().out)[0]


def test_bars_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["train", "--epochs", "1", "--method", "baseline", *SMALL, "--out", str(tmp_path / "run")]) == 0
    assert "epoch 1/1" in capsys.readouterr().err   # tqdm's bar


def test_quiet_prints_exactly_the_final_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)   # not even a bar on a terminal
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", *SMALL, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert len(lines(captured.out)) == 1 and FINAL.fullmatch(lines(captured.out)[0])[1] == str(out)
    assert f"{read_results(out)['summary']['test_acc']:.4f}" in captured.out
    assert captured.err == ""


def test_resume_says_where_it_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", *SMALL, "--out", str(out), "--quiet", "--stop-after-epoch", "1"]) == 0
    assert capsys.readouterr().out == ""           # an interrupted run has no final line
    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    header, resuming, *epochs, final = lines(capsys.readouterr().out)
    assert header.startswith("mlp (216,586 parameters) · digits")
    assert resuming == "resuming at epoch 2 of 3"
    assert [line.split("  ")[0] for line in epochs] == ["epoch 2/3", "epoch 3/3"]
    assert FINAL.fullmatch(final)


def test_metrics_csv_has_one_row_per_epoch_after_a_resume(tmp_path):
    pytest.importorskip("momos.complexity")
    out = tmp_path / "run"
    fit(prepare(TrainConfig(epochs=3, train_subset=320, metrics=("sparsity",)), out), stop_after_epoch=1)
    resume(out)
    epochs = read_results(out)["epochs"]
    with open(out / "metrics.csv", newline="") as f:
        table = csv.DictReader(f)
        rows = list(table)
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    columns = table.fieldnames
    assert columns[:6] == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert columns[-1] == "seconds"
    assert {"projection.distortion", "projection.motifs_used", "projection.bits_per_weight",
            "metrics.sparsity"} <= set(columns)
    assert rows[0]["train_loss"] == "" and rows[0]["projection.distortion"] == ""   # epoch 0: untrained
    for row, entry in zip(rows, epochs):
        assert float(row["val_acc"]) == entry["val_acc"] and float(row["seconds"]) == entry["seconds"]
        assert float(row["metrics.sparsity"]) == entry["metrics"]["sparsity"]
    for row, entry in zip(rows[1:], epochs[1:]):
        assert float(row["projection.distortion"]) == entry["projection"]["distortion"]
        assert int(row["projection.motifs_used"]) == entry["projection"]["motifs_used"]


def scalars(folder):
    """{tag: [(step, value)]} and the histogram tags of the TensorBoard events in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}, tags["histograms"]


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(TrainConfig(epochs=2, train_subset=320), out, log="tensorboard")
    logged, histograms = scalars(out / "tensorboard")
    steps = 320 // 32
    assert [step for step, _ in logged["step/train_loss"]] == list(range(1, 2 * steps + 1))
    assert [step for step, _ in logged["step/lr"]] == list(range(1, 2 * steps + 1))
    epochs = read_results(out)["epochs"]
    assert logged["epoch/val_acc"] == [(e["epoch"] * steps, pytest.approx(e["val_acc"])) for e in epochs]
    for name in ("distortion", "motifs_used", "bits_per_weight"):
        assert logged[f"projection/{name}"] == [(e["epoch"] * steps, pytest.approx(e["projection"][name]))
                                                for e in epochs[1:]]
    assert {"epoch/train_loss", "epoch/lr", "epoch/seconds"} <= logged.keys()
    assert histograms == ["projection/motif_usage"]


def test_tensorboard_resume_hides_what_a_killed_session_logged_after_its_last_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out, steps = tmp_path / "run", 320 // 32
    fit(prepare(TrainConfig(epochs=2, train_subset=320, method="baseline"), out), stop_after_epoch=1,
        log="tensorboard")
    with SummaryWriter(out / "tensorboard") as killed:   # steps of epoch 2, then killed
        for step in range(steps + 1, steps + 5):
            killed.add_scalar("step/train_loss", 99.0, step)
    time.sleep(1.1)   # event files are read in the order of their names, which start with the second
    resume(out, log="tensorboard")
    logged = scalars(out / "tensorboard")[0]["step/train_loss"]
    assert [step for step, _ in logged] == list(range(1, 2 * steps + 1))
    assert 99.0 not in [value for _, value in logged]


def test_unknown_log_and_missing_tensorboard_write_nothing(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown log 'wandb'; choose tensorboard"):
        train(TrainConfig(epochs=1), tmp_path / "lib", log="wandb")
    assert not (tmp_path / "lib").exists()
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, "tensorboard", None)      # as if not installed
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", *SMALL, "--out", str(out), "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err == ("momos train: error: this needs tensorboard, which is not installed: "
                   "pip install 'momos[tensorboard]'\n")
    assert not out.exists()


# --- the default number of threads -----------------------------------------------------------------

def test_multiply_adds_of_linear_and_convolution_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(75, 4))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert multiply_adds(model, (2, 5, 5)) == 3 * 5 * 5 * (2 * 3 * 3) + 75 * 4
    assert model.training and all(torch.equal(before[n], v) for n, v in model.state_dict().items())


def test_default_threads_one_for_small_steps_else_the_cores_shared(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    run = prepare(TrainConfig(), tmp_path / "run")
    per_image = sum(m.weight.numel() for m in run.model.modules() if isinstance(m, torch.nn.Linear))
    assert work_per_step(run) == per_image * 32

    def with_batch(batch_size):
        run.config = TrainConfig(batch_size=batch_size)
        return run

    def threads(batch_size, **kwargs):
        return default_threads(work_per_step(with_batch(batch_size)), **kwargs)

    below, at = (ONE_THREAD_BELOW - 1) // per_image, -(-ONE_THREAD_BELOW // per_image)
    assert threads(below) == 1
    assert threads(at) == 8
    assert threads(at, sharing=2) == 4
    assert threads(at, sharing=16) == 1
    monkeypatch.setattr(distributed, "world_size", lambda: 2)   # each process takes half a batch
    assert work_per_step(with_batch(2 * at)) == per_image * at
    assert threads(2 * at) == 8
    assert threads(2 * at - 2) == 1
