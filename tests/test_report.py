"""Comparison tables and figures from run folders (synthetic records: no training here)."""

import csv
import io
import json
import warnings

import pytest
import torch

from momos.cli import main
from momos.io import save_safetensors_atomic
from momos.report import (compare_rows, format_table, least_used_share, load_run, plot_runs, read_csv_table,
                          runs_figure, usage_curve)


def fake_run(root, name, method, *, test_acc, metrics=(), counts=None, simplification=12.0):
    """A run folder as ``momos train`` writes it, with 2 epochs (``simplification``: the final
    simplification factor of a MoMos run)."""
    momos = {"block_size": 4, "capacity": 0.01, "num_motifs": None} if "momos" in method else None
    epochs = []
    for epoch in range(3):
        projection = ({"num_motifs": 5, "simplification_factor": simplification - 2 + epoch}
                      if momos and epoch else None)
        entry = {"epoch": epoch, "lr": 1e-3, "train_loss": None if epoch == 0 else 1.0 / epoch,
                 "train_acc": None if epoch == 0 else 0.5, "val_loss": 1.0, "val_acc": 0.1 + 0.3 * epoch,
                 "seconds": 0.1, "projection": projection}
        if metrics:
            entry["metrics"] = {m: float(epoch + 1) for m in metrics}
        epochs.append(entry)
    results = {
        "config": {"method": method, "model": "mlp", "dataset": "digits", "momos": momos,
                   "qat_bits": 8 if "qat" in method else None, "metrics": list(metrics)},
        "epochs": epochs,
        "summary": {"epochs_done": 2, "best_val_acc": 0.7, "final_val_acc": 0.7, "test_acc": test_acc},
    }
    folder = root / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    if counts is not None:
        save_safetensors_atomic({"motif_counts": torch.tensor(counts), "motifs": torch.zeros(len(counts), 4)},
                                folder / "motif_counts.safetensors")
    return folder


@pytest.fixture
def folders(tmp_path):
    return [fake_run(tmp_path, "a", "baseline", test_acc=0.9, metrics=("gzip",)),
            fake_run(tmp_path, "b", "momos", test_acc=0.8, metrics=("gzip", "l2"), counts=[1, 1, 8, 10, 0])]


def test_least_used_share_and_usage_curve():
    assert least_used_share(torch.tensor([1, 1, 8, 10])) == pytest.approx(0.1)
    assert least_used_share(torch.full((10,), 3)) == pytest.approx(0.5)
    x, y = usage_curve(torch.tensor([5, 0, 15]))
    assert x.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1]) and y.tolist() == pytest.approx([0, 0, 0.25, 1])


def test_compare_rows(folders):
    rows = compare_rows([load_run(f) for f in folders])
    assert [r["run"] for r in rows] == ["a", "b"]
    baseline, momos = rows
    assert (baseline["s"], baseline["k"], baseline["simplification_factor"]) == (None, None, 1.0)
    assert (momos["s"], momos["capacity"], momos["k"]) == (4, 0.01, 5)
    assert momos["simplification_factor"] == 12.0
    assert momos["least_used_half_share"] == pytest.approx(1 / 20)           # 2 of 5 motifs: 0 + 1 of 20
    assert momos["gzip"] == 3.0 and momos["l2"] == 3.0 and baseline["l2"] is None
    assert list(compare_rows([load_run(f) for f in folders], ["l2"])[0]).count("gzip") == 0


def test_table_formats(folders):
    rows = compare_rows([load_run(f) for f in folders])
    parsed = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert parsed[1]["method"] == "momos" and parsed[0]["k"] == ""
    markdown = format_table(rows, "markdown").splitlines()
    assert markdown[0].startswith("| run | method") and markdown[1].startswith("|---|") and len(markdown) == 4
    text = format_table(rows, "text").splitlines()
    assert text[1].split()[:2] == ["a", "baseline"]
    assert text[0].index("method") == text[1].index("baseline") == text[2].index("momos")   # aligned
    with pytest.raises(ValueError, match="unknown table format"):
        format_table(rows, "xlsx")


def test_csv_table_reads_back_typed(tmp_path):
    rows = [{"run": "method-baseline__seed-0", "s": None, "capacity": 0.05, "seed": 1, "acc": 0.9387000000000001,
             "version": "2.14.1+cu130", "curve": "1.5 2.25"}]
    path = tmp_path / "runs.csv"
    path.write_text(format_table(rows, "csv"))
    assert read_csv_table(path) == rows


def test_plot_writes_a_figure_and_checks_the_metric(folders, tmp_path):
    runs = [load_run(f) for f in folders]
    assert plot_runs(runs, tmp_path / "fig.png") == "gzip"
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_runs(runs[:1], tmp_path / "fig.svg", metric="simplification_factor") == "simplification_factor"
    with pytest.raises(ValueError, match="no run logged metric 'bdm'"):
        plot_runs(runs, tmp_path / "other.png", metric="bdm")


def test_runs_without_the_metric_are_named(folders):
    runs = [load_run(f) for f in folders]                         # a logged gzip, b gzip and l2
    with pytest.warns(UserWarning, match=r"^1 of 2 runs did not log 'l2' and are left out .*: a$"):
        figure, _ = runs_figure(runs, "l2")
    assert len(figure.axes[2].collections) == 1                   # b alone in the Pareto panel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs_figure(runs, "gzip")                                 # both logged it: no warning


def visible_labels(axis):
    """The major tick labels inside the axis' view, after a draw has placed them."""
    axis.figure.savefig(io.BytesIO(), format="png")
    low, high = axis.get_view_interval()
    return [label.get_text() for tick, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if low <= tick <= high]


def test_a_log_axis_shows_plain_numbers(tmp_path):
    baseline = fake_run(tmp_path, "a", "baseline", test_acc=0.9)            # simplification factor 1
    wide = fake_run(tmp_path, "b", "momos", test_acc=0.8, simplification=40.0)
    narrow = fake_run(tmp_path, "c", "momos", test_acc=0.8, simplification=3.0)
    figure, _ = runs_figure([load_run(baseline), load_run(wide)], "simplification_factor")
    assert figure.axes[2].get_xscale() == "log"
    assert visible_labels(figure.axes[2].xaxis) == ["1", "2", "5", "10", "20"]
    figure, _ = runs_figure([load_run(baseline), load_run(narrow)], "simplification_factor")
    assert figure.axes[2].get_xscale() == "linear"                # less than a decade: log ticks could be none


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ValueError, match="not a momos run folder"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="lacks epochs"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("7")
    with pytest.raises(ValueError, match="not a momos run folder"):
        load_run(tmp_path)


def test_compare_and_plot_commands(folders, tmp_path, capsys):
    assert main(["compare", *map(str, folders), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().startswith("| run |")
    assert "baseline" in capsys.readouterr().out
    assert main(["compare", *map(str, folders), "--out", str(tmp_path / "t.xyz")]) == 2
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert main(["plot", *map(str, folders), "--out", str(tmp_path / "f.jpg")]) == 2
    assert main(["plot", *map(str, folders), "--out", str(tmp_path / "f.png"), "--metric", "bdm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err
    assert not (tmp_path / "t.xyz").exists() and not (tmp_path / "f.png").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two one-epoch digits runs of ``momos train``: ``gzip`` logs the gzip ratio, ``plain`` nothing."""
    root = tmp_path_factory.mktemp("trained")
    for name, metrics in (("gzip", ["--metrics", "gzip"]), ("plain", [])):
        assert main(["train", "--epochs", "1", "--threads", "1", "--quiet", "--out", str(root / name),
                     *metrics]) == 0
    return root


def test_plot_command_names_the_runs_without_the_metric(trained, tmp_path, capsys):
    runs = [str(trained / "gzip"), str(trained / "plain")]
    assert main(["plot", *runs, "--out", str(tmp_path / "f.png")]) == 0
    out, err = capsys.readouterr()
    assert "wrote" in out and (tmp_path / "f.png").is_file()
    assert err == ("momos plot: warning: 1 of 2 runs did not log 'gzip' and are left out of the complexity "
                   "and Pareto panels: plain\n")


def test_checkpoint_complexity_is_measured_once_and_cached(tmp_path):
    from momos.report import checkpoint_complexity
    from momos.train import TrainConfig, train

    train(TrainConfig(method="momos", epochs=1), tmp_path / "run")
    run = load_run(tmp_path / "run")
    final = checkpoint_complexity(run, "final", ["lzma", "mosaic"])
    init = checkpoint_complexity(run, "init", ["lzma"])
    assert final["lzma"] > init["lzma"] > 1                      # a mosaic compresses better
    assert 0 < final["mosaic_bound_bits_per_weight"] < 32
    cached = json.loads((tmp_path / "run" / "complexity.json").read_text())
    assert set(cached) == {"final", "init"} and cached["final"]["values"]["lzma"] == final["lzma"]
    assert checkpoint_complexity(load_run(tmp_path / "run"), "final", ["lzma"]) == final
