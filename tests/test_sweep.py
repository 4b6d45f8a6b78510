"""``momos sweep``: grid expansion, a tiny real sweep on digits (resume, skip, report) and the CLI."""

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from momos import sweep
from momos.cli import main
from momos.runtime import native_bf16
from momos.train import TrainConfig, fit, prepare

EXAMPLE = {
    "out": "runs/sweeps/demo",
    "fixed": {"model": "mlp", "epochs": 10, "metrics": ["lzma"]},
    "grid": {
        "dataset": ["mnist", "fashion-mnist"],
        "method": ["baseline", "qat", "momos", "momos+qat"],
        "block_size": [2, 4],
        "capacity": [0.01, 0.05],
        "qat_bits": [8],
        "option": [{"name": "sample", "motif_method": "sample"},
                   {"name": "kmeans-warmup", "motif_method": "kmeans", "warmup_epochs": 1}],
        "seed": [0, 1],
    },
}
# 2 methods x 2 seeds on digits; the momos seed-1 run is interrupted before the sweep starts.
TINY = {"fixed": {"model": "mlp", "dataset": "digits", "epochs": 2, "metrics": ["lzma"]},
        "grid": {"method": ["baseline", "momos"], "capacity": [0.05], "seed": [0, 1]}}
INTERRUPTED = "method-momos__capacity-0.05__seed-1"


def names(spec):
    return [point.name for point in sweep.expand(spec)]


# --- expansion ---------------------------------------------------------------------------------

def test_example_expands_without_inapplicable_axes():
    points = {point.name: point for point in sweep.expand(EXAMPLE)}
    # per data set: baseline and qat per seed, the momos methods per s x capacity x option x seed
    assert len(points) == 2 * (2 + 2 + 2 * 16)
    assert sum(p.config.method == "baseline" for p in points.values()) == 4
    assert "dataset-mnist__method-baseline__seed-0" in points
    assert "dataset-mnist__method-qat__qat_bits-8__seed-1" in points
    momos = points["dataset-fashion-mnist__method-momos__block_size-2__capacity-0.05__option-kmeans-warmup__seed-1"]
    assert momos.axes == {"dataset": "fashion-mnist", "method": "momos", "block_size": "2", "capacity": "0.05",
                          "option": "kmeans-warmup", "seed": "1"}
    config = momos.config
    assert (config.dataset, config.epochs, config.metrics, config.warmup_epochs, config.qat_bits) == \
        ("fashion-mnist", 10, ("lzma",), 1, None)
    assert (config.momos.block_size, config.momos.capacity, config.momos.motif_method, config.momos.seed) == \
        (2, 0.05, "kmeans", 1)
    both = points["dataset-mnist__method-momos+qat__block_size-4__capacity-0.01__qat_bits-8__option-sample__seed-0"]
    assert both.config.qat_bits == 8 and both.config.momos.motif_method == "sample"
    baseline = points["dataset-mnist__method-baseline__seed-1"].config
    assert baseline == TrainConfig(dataset="mnist", model="mlp", method="baseline", epochs=10, metrics=("lzma",),
                                   seed=1)


def test_fixed_momos_keys_and_lists_of_grids():
    spec = {"fixed": {"dataset": "digits", "block_size": 4, "warmup_epochs": 1},
            "grid": [{"method": ["baseline"], "seed": [0]},
                     {"method": ["momos"], "tile_shape": [[2, 2], [1, 4]], "num_motifs": [3]}]}
    points = sweep.expand(spec)
    assert [p.name for p in points] == ["method-baseline__seed-0", "method-momos__tile_shape-2x2__num_motifs-3",
                                        "method-momos__tile_shape-1x4__num_motifs-3"]
    assert points[0].config.momos is None and points[0].config.warmup_epochs == 0
    tiled = points[1].config
    assert (tiled.momos.tile_shape, tiled.momos.num_motifs, tiled.momos.capacity, tiled.warmup_epochs) == \
        ((2, 2), 3, None, 1)


def test_mapping_values_that_set_nothing_leave_the_name():
    spec = {"fixed": {"dataset": "digits"},
            "grid": {"method": ["baseline", "momos"],
                     "option": [{"name": "plain"}, {"name": "w/1", "warmup_epochs": 1}]}}
    assert names(spec) == ["method-baseline", "method-momos", "method-momos__option-w_1"]


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"blocksize": [2]}}, r"unknown key 'blocksize' in grid; valid keys: .*block_size"),
    ({"fixed": {"momos": {}}, "grid": {"seed": [0]}}, r"unknown key 'momos' in fixed"),
    ({"grid": {"option": [{"name": "a", "lr_max": 1}]}}, r"unknown key 'lr_max' in grid: axis 'option' value 'a'"),
    ({"grids": {"seed": [0]}}, r"unknown top-level key 'grids'"),
    ({"grid": {"seed": 0}}, r"axis 'seed' must be a non-empty list"),
    ({"grid": {"seed": []}}, r"axis 'seed' must be a non-empty list"),
    ({"fixed": {"method": "momos"}}, r"grid must be a mapping"),
    ({"grid": {"option": [{"motif_method": "kmeans"}]}}, r"needs a `name`"),
    ({"grid": {"motifs": ["kmeans"]}}, r"key 'motifs' in grid is now called 'motif_method'"),
    ({"grid": {"option": [{"name": "a"}, "b"]}}, r"mixes mappings and plain values"),
    ({"grid": {"tile_shape": [[[2, 2]]]}}, r"tile_shape must be a number, a string or a list of them"),
    ({"grid": {"capacity": [0.05, 0.050]}}, r"two values labelled '0.05'"),
    ({"grid": {"method": ["momos"],
               "option": [{"name": "a", "warmup_epochs": 0}, {"name": "b", "motif_method": "sample"}]}},
     r"runs method-momos__option-a and method-momos__option-b have the same config"),
    ({"fixed": {"method": "baseline"}, "grid": {"capacity": [0.05]}}, r"no axis of the grid applies"),
    ({"grid": {"method": ["momos"], "capacity": [0.05, 2.0]}}, r"run method-momos__capacity-2: capacity must be in"),
    ({"grid": {"epochs": [0]}}, r"run epochs-0: epochs must be a positive integer"),
    ({"grid": {"method": ["momos"], "capacity": ["lots"]}},
     r"run method-momos__capacity-lots: capacity must be a number"),
    ({"grid": {"model": ["not-a-model"]}}, r"run model-not-a-model: unknown model"),
    ({"grid": {"metrics": ["nope"]}}, r"run metrics-nope: .*nope"),
])
def test_bad_specs_are_errors_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        sweep.expand(spec)


def test_a_bad_value_fails_before_anything_runs(tmp_path):
    spec = {"fixed": {"dataset": "digits"}, "grid": {"method": ["baseline", "momos"], "block_size": [0]}}
    with pytest.raises(ValueError, match="block_size-0"):
        sweep.run_sweep(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_spec_reads_yaml_floats_and_reports_bad_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("grid:\n  capacity: [1e-3, 5.0e-2]\n  seed: [0]\n")
    assert sweep.load_spec(path)["grid"]["capacity"] == [0.001, 0.05]
    path.write_text("grid: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        sweep.load_spec(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        sweep.load_spec(path)


# --- a tiny sweep on digits --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The TINY sweep run with 2 jobs after one of its runs was interrupted after epoch 1."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    point = next(p for p in sweep.expand(TINY) if p.name == INTERRUPTED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in the sweep's workers: on a busy machine more threads only wait
    try:
        fit(prepare(point.config, sweep.run_dir(out, INTERRUPTED)), stop_after_epoch=1)
    finally:
        torch.set_num_threads(threads)
    folder = sweep.run_dir(out, INTERRUPTED)
    before = {"init_mtime": (folder / "init.safetensors").stat().st_mtime_ns,
              "epoch1": json.loads((folder / "results.json").read_text())["epochs"][1]}
    assert sweep.plan(sweep.expand(TINY), out)[INTERRUPTED] == "partial"
    outcome = sweep.run_sweep(TINY, out, jobs=2, quiet=True)
    return out, outcome, before


def results(out, name):
    return json.loads((sweep.run_dir(out, name) / "results.json").read_text())


def test_sweep_trains_every_run_and_resumes_the_interrupted_one(tiny):
    out, outcome, before = tiny
    assert outcome.failed == {} and outcome.skipped == []
    assert sorted(outcome.trained) == sorted(names(TINY))
    for name in names(TINY):
        assert results(out, name)["summary"]["complete"]
    resumed = sweep.run_dir(out, INTERRUPTED)
    assert (resumed / "init.safetensors").stat().st_mtime_ns == before["init_mtime"]   # not retrained
    assert results(out, INTERRUPTED)["epochs"][1] == before["epoch1"]
    assert results(out, INTERRUPTED)["summary"]["epochs_done"] == 2


def test_complete_runs_lists_the_finished_runs_in_grid_order(tiny, tmp_path):
    out, _, _ = tiny
    found = sweep.complete_runs(TINY, out)
    assert [point.name for point, _ in found] == names(TINY)
    assert all(record.results["summary"]["complete"] for _, record in found)
    assert sweep.complete_runs(TINY, tmp_path / "empty") == []


def test_sweep_rows_measure_the_runs_here_and_keep_the_stored_rest(tiny, tmp_path):
    out, _, _ = tiny
    def row_of(run, point):
        return {"run": point.name, "acc": run.results["summary"]["test_acc"]}
    measured = sweep.sweep_rows(TINY, out, row_of, [])
    assert [row["run"] for row in measured] == names(TINY) and None not in [row["acc"] for row in measured]
    stale = [{**row, "acc": -1.0} for row in measured] + [{"run": "method-baseline__seed-9", "acc": 0.5}]
    assert sweep.sweep_rows(TINY, out, row_of, stale) == measured               # folders win, unplanned rows go
    assert sweep.sweep_rows(TINY, tmp_path / "elsewhere", row_of, stale) == stale[:-1]
    momos_only = sweep.sweep_rows(TINY, out, row_of, [], select=lambda point: point.config.method == "momos")
    assert [row["run"] for row in momos_only] == [n for n in names(TINY) if "momos" in n]


def test_a_second_sweep_skips_complete_runs(tiny, capsys):
    out, _, _ = tiny
    mtimes = {name: (sweep.run_dir(out, name) / "results.json").stat().st_mtime_ns for name in names(TINY)}
    outcome = sweep.run_sweep(TINY, out, jobs=2)
    assert outcome.trained == [] and outcome.failed == {} and sorted(outcome.skipped) == sorted(mtimes)
    assert {name: (sweep.run_dir(out, name) / "results.json").stat().st_mtime_ns for name in mtimes} == mtimes
    assert "4 complete, 0 to resume, 0 to train" in capsys.readouterr().out


def test_select_picks_runs_by_pattern_in_grid_order():
    points = sweep.expand(TINY)
    chosen = sweep.select(points, ["*seed-1", "method-baseline__seed-0"])
    assert [p.name for p in chosen] == ["method-baseline__seed-0", "method-baseline__seed-1", INTERRUPTED]
    with pytest.raises(ValueError, match="'method-qat\\*' matches none of the 4 runs"):
        sweep.select(points, ["*seed-1", "method-qat*"])


def test_only_trains_a_piece_of_the_sweep_and_plans_all_of_it(tmp_path):
    out = tmp_path / "out"
    outcome = sweep.run_sweep(TINY, out, only=["method-baseline__seed-1"], quiet=True)
    assert outcome.trained == ["method-baseline__seed-1"] and outcome.failed == {}
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["method-baseline__seed-1"]
    assert [run["name"] for run in json.loads((out / "sweep.json").read_text())["runs"]] == names(TINY)


def test_a_run_folder_with_another_config_is_an_error(tiny):
    out, _, _ = tiny
    changed = {**TINY, "fixed": {**TINY["fixed"], "epochs": 3, "data_dir": "/elsewhere"}}
    with pytest.raises(ValueError, match=r"run method-baseline__seed-0: .* another config \(epochs: 2 != 3\)"):
        sweep.run_sweep(changed, out)
    point = next(p for p in sweep.expand(TINY) if p.name == INTERRUPTED)
    kmeans = replace(point, config=replace(point.config, momos=replace(point.config.momos, motif_method="kmeans")))
    differing = r"another config \(momos.motif_method: 'sample' != 'kmeans'\)"
    with pytest.raises(ValueError, match=rf"run {INTERRUPTED}: .*{differing}"):
        sweep.plan([kmeans], out)


def test_aggregate_writes_runs_summary_and_plots(tiny):
    out, _, _ = tiny
    report = sweep.aggregate(out)
    assert report.missing == []
    runs = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    assert sorted(row["run"] for row in runs) == sorted(names(TINY))
    assert {"method", "capacity", "seed", "test_acc", "lzma", "wall_seconds"} <= set(runs[0])
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert [(row["method"], row["capacity"], row["n"]) for row in summary] == \
        [("baseline", "", "2"), ("momos", "0.05", "2")]
    for row in summary:
        accuracies = [r["test_acc"] for r in runs if r["method"] == row["method"]]
        assert float(row["test_acc_mean"]) == pytest.approx(sum(map(float, accuracies)) / 2)
        assert float(row["test_acc_std"]) >= 0 and float(row["lzma_mean"]) > 0
    assert summary[1]["least_used_half_share_mean"] and not summary[0]["least_used_half_share_mean"]
    markdown = (out / "summary.md").read_text()
    assert markdown == report.markdown and "| method | capacity | n | test_acc |" in markdown and " ± " in markdown
    assert report.plots == [out / "plots" / "mlp_digits.png"] and report.plots[0].stat().st_size > 0


# --- the command line --------------------------------------------------------------------------

def write_spec(path, spec):
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_cli_dry_run_and_report_only(tiny, tmp_path, capsys):
    out, _, _ = tiny
    config = write_spec(tmp_path / "tiny.yaml", {**TINY, "out": str(out)})
    assert main(["sweep", config, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"done     {INTERRUPTED}" in printed and "4 runs in" in printed and "4 done, 0 partial, 0 new" in printed
    assert main(["sweep", config, "--report-only"]) == 0
    assert "| baseline | - | 2 |" in capsys.readouterr().out
    assert main(["sweep", config, "--dry-run", "--only", "method-momos*"]) == 0
    printed = capsys.readouterr().out
    assert "method-baseline" not in printed and "2 runs in" in printed and "2 done, 0 partial, 0 new" in printed
    assert main(["sweep", config, "--dry-run", "--only", "momos"]) == 2
    assert "--only 'momos' matches none of the 4 runs" in capsys.readouterr().err


def test_cli_dry_run_shows_how_far_a_partial_run_is(tmp_path, capsys):
    out = tmp_path / "out"
    point = next(p for p in sweep.expand(TINY) if p.name == INTERRUPTED)
    fit(prepare(point.config, sweep.run_dir(out, INTERRUPTED)), stop_after_epoch=1)
    assert main(["sweep", write_spec(tmp_path / "tiny.yaml", TINY), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"partial  {INTERRUPTED}  (epoch 1 of 2)\n" in printed and "new      method-baseline__seed-0\n" in printed


def test_cli_failed_run_is_reported_and_exits_1(tmp_path, capsys):
    spec = {"fixed": {"dataset": "mnist", "data_dir": str(tmp_path / "empty"), "download": False, "epochs": 1},
            "grid": {"method": ["baseline"], "seed": [0]}}
    config = write_spec(tmp_path / "fail.yaml", spec)
    out = tmp_path / "out"
    assert main(["sweep", config, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "FAILED method-baseline__seed-0: DatasetError" in err and "1 runs failed" in err
    error = (sweep.run_dir(out, "method-baseline__seed-0") / "error.txt").read_text()
    assert error.startswith("method-baseline__seed-0\nDatasetError: ") and "Traceback" in error


def test_cli_runtime_options_reach_every_run(tmp_path):
    spec = {"fixed": {"model": "resnet20", "dataset": "digits", "epochs": 1, "train_subset": 64},
            "grid": {"method": ["baseline"], "seed": [0]}}
    out = tmp_path / "out"
    assert main(["sweep", write_spec(tmp_path / "one.yaml", spec), "--out", str(out), "--quiet",
                 "--channels-last"]) == 0
    runtime = results(out, "method-baseline__seed-0")["runtime"]   # channels-last: a convolutional network
    assert runtime["channels_last"] is True and runtime["precision"] == "fp32" and runtime["compile"] is False


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be a positive integer"),
    ([], "no sweep folder: give --out"),
    (["--out", "x", "--device", "cuda:7"], "device cuda:7 is not available"),
    pytest.param(["--out", "x", "--precision", "bf16"], "needs native bfloat16",
                 marks=pytest.mark.skipif(native_bf16(torch.device("cpu")), reason="this CPU has native bfloat16")),
])
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    config = write_spec(tmp_path / "s.yaml", TINY)
    assert main(["sweep", config, *argv]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["sweep", config, "--dry-run", "--report-only"])


def test_cli_bad_key_is_a_usage_error(tmp_path, capsys):
    config = write_spec(tmp_path / "s.yaml", {"grid": {"blocksize": [2]}})
    assert main(["sweep", config, "--out", str(tmp_path / "out")]) == 2
    assert "unknown key 'blocksize'" in capsys.readouterr().err
    assert not Path(tmp_path / "out").exists()
