"""End-to-end runs of ``momos train`` on digits with the MLP, resume, run files and bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import momos
from momos.blocks import to_blocks
from momos.cli import main
from momos.runfolder import RUN_FILES, load_model
from momos.train import TrainConfig, fit, prepare, resume, train

METHODS = ("baseline", "qat", "momos", "momos+qat")
EPOCH_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "projection"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-epoch CLI run per method, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("runs")
    for method in METHODS:
        assert main(["train", "--method", method, "--epochs", "2", "--out", str(root / method), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-epoch MoMos+QAT run with augmentation, the reference of the resume tests."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(resume_config(), out)
    return out


def resume_config():
    return TrainConfig(method="momos+qat", epochs=3, augment=True, seed=3)


def results(path):
    return json.loads((Path(path) / "results.json").read_text())


def assert_same_files(a, b, names=("final.safetensors", "best.safetensors", "motif_counts.safetensors")):
    for name in names:
        left, right = load_file(Path(a) / name), load_file(Path(b) / name)
        assert left.keys() == right.keys(), name
        for key in left:
            assert torch.equal(left[key], right[key]), f"{name}: {key}"


def without_seconds(entries):
    return [{k: v for k, v in e.items() if k != "seconds"} |
            {"projection": e["projection"] and {k: v for k, v in e["projection"].items() if k != "seconds"}}
            for e in entries]


@pytest.mark.parametrize("method", METHODS)
def test_results_json_records_the_run(runs, method):
    record = results(runs / method)
    config = record["config"]
    assert config["method"] == method and config["dataset"] == "digits" and config["model"] == "mlp"
    assert config["epochs"] == 2 and config["seed"] == 0 and config["versions"]["torch"] == torch.__version__
    assert TrainConfig.from_dict(config).to_dict() == {k: v for k, v in config.items() if k != "versions"}
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(EPOCH_KEYS <= e.keys() for e in epochs)
    assert epochs[0]["train_loss"] is None and epochs[0]["projection"] is None
    assert all(0 <= e["val_acc"] <= 1 and e["val_loss"] > 0 for e in epochs)
    assert epochs[2]["lr"] < epochs[1]["lr"]                       # cosine schedule
    projects = "momos" in method
    assert all((e["projection"] is not None) == projects for e in epochs[1:])
    summary = record["summary"]
    assert summary["complete"] and summary["epochs_done"] == 2 and 0 < summary["test_acc"] <= 1
    assert summary["final_val_acc"] == epochs[-1]["val_acc"]
    assert summary["best_val_acc"] == max(e["val_acc"] for e in epochs[1:])
    assert record["data"]["train"] + record["data"]["val"] == 1438 and record["data"]["test"] == 359
    files = {p.name for p in (runs / method).iterdir()}
    expected = set(RUN_FILES) - (set() if projects else {"motif_counts.safetensors"})
    assert files == expected


def test_methods_learn(runs):
    for method in METHODS:
        epochs = results(runs / method)["epochs"]
        assert epochs[-1]["val_acc"] > 0.5 > epochs[0]["val_acc"], method


@pytest.mark.parametrize("method", ["momos", "momos+qat"])
def test_final_checkpoint_is_an_exact_mosaic_with_k_motifs(runs, method):
    run_dir = runs / method
    cfg = momos.MoMosConfig.from_dict(results(run_dir)["config"]["momos"])
    model = load_model(run_dir)                       # latent weights under QAT: the projected ones
    params = [p.detach() for _, p in momos.select_parameters(model, cfg)]
    blocks, layout = to_blocks(params, cfg.block_size)
    saved = load_file(run_dir / "motif_counts.safetensors")
    motifs, counts = saved["motifs"], saved["motif_counts"]
    assert len(motifs) == cfg.motifs_for(layout.num_blocks) == results(run_dir)["epochs"][-1]["projection"]["num_motifs"]
    assert int(counts.sum()) == layout.num_blocks
    assert momos.is_mosaic(model, cfg, motifs)
    assert torch.equal(motifs[0], torch.zeros(cfg.block_size))     # force-zero


def test_qat_model_forward_is_quantized(runs):
    from momos.qat import has_qat

    model = load_model(runs / "qat")
    assert has_qat(model)
    weight = model[1].weight                                          # the parametrized, quantized view
    assert len(torch.unique(weight)) <= 2 ** 8 - 1


def test_checkpoints_differ_and_load_without_pickle(runs):
    init = load_file(runs / "momos" / "init.safetensors")
    final = load_file(runs / "momos" / "final.safetensors")
    assert init.keys() == final.keys()
    assert not torch.equal(init["1.weight"], final["1.weight"])


def test_compare_and_plot_on_the_runs(runs, tmp_path, capsys):
    dirs = [str(runs / m) for m in METHODS]
    assert main(["compare", *dirs, "--out", str(tmp_path / "table.csv")]) == 0
    printed = capsys.readouterr().out
    assert all(m in printed for m in METHODS)
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("run,method,model,dataset")
    assert main(["plot", *dirs, "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_is_bit_exact(uninterrupted, tmp_path):
    out = tmp_path / "run"
    fit(prepare(resume_config(), out), stop_after_epoch=1)
    assert not results(out)["summary"]["complete"] and not (out / "final.safetensors").exists()
    resume(out)
    assert_same_files(uninterrupted, out)
    assert without_seconds(results(out)["epochs"]) == without_seconds(results(uninterrupted)["epochs"])


def test_killed_run_leaves_complete_files_and_resumes_bit_exact(uninterrupted, tmp_path):
    """SIGKILL right after the first epoch's state appears: every file is whole, resume matches."""
    out = tmp_path / "run"
    cfg = resume_config()
    command = [sys.executable, "-c", "import sys; from momos.cli import main; sys.exit(main(sys.argv[1:]))", "train", "--method", cfg.method, "--epochs", "3",
               "--augment", "--seed", "3", "--out", str(out), "--quiet",
               "--threads", str(torch.get_num_threads())]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "state.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for path in out.iterdir():
        if path.name.endswith(".json"):
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(path)
    # polled every 10 ms, the kill lands long before the two remaining epochs could end
    assert not results(out)["summary"]["complete"], "the run finished before it was killed"
    resume(out)
    assert not list(out.glob(".*.tmp"))
    assert_same_files(uninterrupted, out)


def test_default_command_config():
    from momos.cli import build_parser
    from momos.cli.train import config_from_args

    config = config_from_args(build_parser().parse_args(["train"]), given=[])
    assert (config.dataset, config.model, config.method, config.epochs, config.batch_size) == \
        ("digits", "mlp", "momos", 30, 32)
    assert (config.momos.block_size, config.momos.capacity, config.momos.force_zero) == (4, 0.01, True)
    assert (config.optimizer, config.lr, config.weight_decay, config.schedule) == ("adamw", 3e-4, 1e-2, "cosine")
    resnet = TrainConfig(model="resnet20", dataset="cifar10", method="baseline")
    assert (resnet.optimizer, resnet.lr, resnet.momentum, resnet.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (resnet.epochs, resnet.batch_size, resnet.augment) == (10, 128, True)


def test_default_out_dir_is_the_next_numbered_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "007").mkdir(parents=True)
    assert main(["train", "--quiet", "--epochs", "1", "--method", "baseline"]) == 0
    assert results(tmp_path / "runs" / "008")["summary"]["complete"]


@pytest.mark.slow
def test_default_command_learns_digits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--quiet"]) == 0
    assert results(tmp_path / "runs" / "001")["summary"]["test_acc"] > 0.85


def test_metrics_are_logged_every_epoch(tmp_path):
    pytest.importorskip("momos.complexity")
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--metrics", "gzip,sparsity", "--out", str(out), "--quiet"]) == 0
    epochs = results(out)["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for entry in epochs:
        assert entry["metrics"]["gzip"] > 0 and 0 <= entry["metrics"]["sparsity"] <= 1
    assert epochs[1]["metrics"]["gzip"] > epochs[0]["metrics"]["gzip"]   # a mosaic compresses better


def test_label_smoothing_smooths_the_training_loss_only(tmp_path, monkeypatch):
    import torch.nn.functional as F

    smoothing = []
    plain = F.cross_entropy

    def recording(*args, **kwargs):
        smoothing.append((kwargs.get("reduction", "mean"), kwargs.get("label_smoothing", 0.0)))
        return plain(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", recording)
    result = train(TrainConfig(method="baseline", epochs=1, label_smoothing=0.1), tmp_path / "run")
    assert result["config"]["label_smoothing"] == 0.1
    steps = {s for reduction, s in smoothing if reduction == "mean"}      # the training steps
    evaluations = {s for reduction, s in smoothing if reduction == "sum"}  # validation and test
    assert steps == {0.1} and evaluations == {0.0}


def test_every_n_steps_projects_during_epochs_and_ends_a_mosaic(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--every-n-steps", "10", "--train-subset", "400",
                 "--out", str(out), "--quiet"]) == 0
    record = results(out)
    assert record["data"]["train"] == 400
    steps_per_epoch = 400 // 32
    # The epoch's entry records its last projection, made at a multiple of 10 steps.
    assert [e["projection"]["num_motifs"] > 0 for e in record["epochs"][1:]] == [True, True]
    assert record["summary"]["final_projection"] is not None   # 2 * 12 steps: the last step did not project
    config = momos.MoMosConfig.from_dict(record["config"]["momos"])
    motifs = load_file(out / "motif_counts.safetensors")["motifs"]
    assert momos.is_mosaic(load_model(out), config, motifs)
    assert steps_per_epoch * 2 % 10 != 0


BAD_INPUT = [
    (["--method", "sgd"], "unknown method"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--model", "no_such_model"], "unknown model"),
    (["--method", "baseline", "--q", "4"], "quantization bits need"),
    (["--method", "qat", "--capacity", "0.1"], "is a MoMos option"),
    (["--method", "baseline", "--num-motifs", "8"], "is a MoMos option"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch-size", "-1"], "batch_size must be a positive integer"),
    (["--epochs", "two"], "invalid int value"),
    (["--capacity", "2"], "capacity must be in (0, 1]"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "momentum is an SGD option"),
    (["--val-fraction", "1"], "val_fraction must be in (0, 1)"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    (["--exclude", "."], "no parameters selected"),
    (["--metrics", "gzip,nonsense"], "nonsense"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/data", "--no-download"], "/nonexistent/data/mnist"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--device", "cuda:99"], "device cuda:99 is not available"),
    (["--device", "quantum"], "unknown device 'quantum'"),
    (["--train-subset", "0"], "train_subset must be a positive integer"),
    (["--train-subset", "100000"], "a subset of 100000 images needs 1 to"),
    (["--every-n-steps", "0"], "every_n_steps must be a positive integer"),
    (["--method", "baseline", "--every-n-steps", "5"], "is a MoMos option"),
    (["--epochs", "4", "--anneal-from", "0.2", "--anneal-epochs", "4"], "anneal_epochs (4) must be smaller than epochs (4)"),
    (["--anneal-epochs", "2"], "anneal_epochs (2) needs anneal_from"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if "two" in argv else _returns(2) as code:
        code.value = main(["train", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


class _returns:
    """Context manager that checks the value stored in it, like pytest.raises checks exceptions."""

    def __init__(self, expected):
        self.expected = expected

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        assert exc[0] is None and self.value == self.expected


def test_refuses_to_overwrite_a_run_unless_asked(runs, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("results.json", "state.safetensors"):
        (out / name).write_bytes((runs / "baseline" / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["train", "--epochs", "1", "--method", "baseline", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert results(out)["config"]["epochs"] == 1


def test_resume_refuses_options_and_finished_runs(runs, tmp_path, capsys):
    assert main(["train", "--resume", str(runs / "momos"), "--epochs", "5"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(runs / "momos")]) == 2
    assert "complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_resume_may_read_the_data_from_another_folder(tmp_path):
    out = tmp_path / "run"
    fit(prepare(TrainConfig(epochs=2), out), stop_after_epoch=1)
    run = momos.train.prepare_resume(out, data_dir=tmp_path / "moved")
    assert run.config.data_dir == str(tmp_path / "moved") and run.epoch == 1


# --- divergence: stop in one line, keep the last good epoch, resume with another lr ---------------


def run_files(out):
    """Every run file but results.json (which a divergence marks), as bytes."""
    return {p.name: p.read_bytes() for p in Path(out).iterdir() if p.name != "results.json"}


def diverges(out, argv, capsys, *, epoch):
    """``momos train argv`` exits 3 with one line naming ``epoch`` and the fix, and marks results.json."""
    capsys.readouterr()
    assert main(["train", *argv, "--quiet"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    where = re.search(rf"diverged at epoch {epoch}, step (\d+) \(training loss (nan|inf)\)", err)
    assert where and f"keeps epoch {epoch - 1}: " in err and f"momos train --resume {out} --lr" in err, err
    summary = results(out)["summary"]
    assert summary["stopped"] == "diverged" and not summary["complete"] and summary["epochs_done"] == epoch - 1
    assert summary["stopped_at"]["epoch"] == epoch and summary["stopped_at"]["step"] == int(where[1])


@pytest.mark.parametrize("method", ["baseline", "momos"])
def test_divergence_exits_3_keeps_the_last_good_epoch_and_resumes_with_a_new_lr(tmp_path, capsys, method,
                                                                                   one_thread):
    out = tmp_path / "run"
    small = ["--epochs", "2", "--train-subset", "320", *one_thread]
    diverges(out, ["--method", method, *small, "--lr", "1e6", "--out", str(out)], capsys, epoch=1)
    assert not (out / "best.safetensors").exists() and not (out / "final.safetensors").exists()
    resume_ = ["train", "--resume", str(out), *one_thread, "--quiet"]
    assert main([*resume_, "--lr", "1e-3", "--stop-after-epoch", "1"]) == 0
    good, good_epochs = run_files(out), results(out)["epochs"]
    diverges(out, ["--resume", str(out), *one_thread, "--lr", "1e6"], capsys, epoch=2)
    assert run_files(out) == good and results(out)["epochs"] == good_epochs     # state, best, counts untouched
    assert main([*resume_, "--lr", "2e-3"]) == 0
    record = results(out)
    assert record["summary"]["complete"] and record["summary"]["stopped"] is None
    assert record["summary"]["lr_changes"] == [{"epoch": 0, "lr": 1e-3}, {"epoch": 1, "lr": 2e-3}]
    assert [e["lr"] for e in record["epochs"][1:]] == pytest.approx([1e-3, 1e-3])   # cosine: 2e-3 halved
    assert record["config"]["lr"] == 1e6                              # the config the run was started with


@pytest.mark.parametrize("every_n_steps, poisoned_step", [(None, 10), (5, 5)])
def test_non_finite_weights_stop_before_the_projection(tmp_path, every_n_steps, poisoned_step, one_thread):
    """A NaN weight after a step whose loss was finite: caught before the projection refuses it."""
    from momos.train import TrainingDiverged

    out = tmp_path / "run"
    run = prepare(TrainConfig(epochs=1, train_subset=320, every_n_steps=every_n_steps), out)
    step, steps = run.optimizer.step, []

    def poisoned_step_():
        step()
        steps.append(1)
        if len(steps) == poisoned_step:
            with torch.no_grad():
                run.model[1].weight[0, 0] = float("nan")

    run.optimizer.step = poisoned_step_
    with pytest.raises(TrainingDiverged, match=f"epoch 1, step {poisoned_step} .*'1.weight' holds NaN"):
        fit(run)
    assert results(out)["summary"]["stopped_at"] == {
        "epoch": 1, "step": poisoned_step, "cause": "parameter '1.weight' holds NaN or Inf values"}
    assert not (out / "best.safetensors").exists()
