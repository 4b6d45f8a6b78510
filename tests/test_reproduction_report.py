"""``experiments/reproduction/make_report.py`` keeps its sweeps in ``runs.csv``: a run measured
from its folder and the same run read back from the CSV make the same report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from momos.report import read_csv_table
from momos.sweep import run_sweep

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduction" / "make_report.py"
# a baseline and MoMos at the report's headline point (s = 2, capacity 0.05), one seed, on digits
SPEC = {"out": "sweeps/tiny",
        "fixed": {"model": "mlp", "dataset": "digits", "epochs": 1, "metrics": ["lzma"], "seed": 0},
        "grid": [{"method": ["baseline"]}, {"method": ["momos"], "block_size": [2], "capacity": [0.05]}]}


@pytest.fixture(scope="module")
def report(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("reproduction")
    (root / "tiny.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    run_sweep(SPEC, root / SPEC["out"], threads=1)
    spec = importlib.util.spec_from_file_location("reproduction_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch_module.setattr(module, "HERE", root)
    monkeypatch_module.setattr(module, "SPECS", ("tiny.yaml",))
    monkeypatch_module.setattr(module, "SUPERSEDED", ())
    return module, root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_stored_rows_make_the_same_report_as_the_run_folders(report, tmp_path):
    module, root = report
    measured = module.collect(root, [])
    assert [r["run"] for r in measured] == ["method-baseline", "method-momos__block_size-2__capacity-0.05"]
    assert measured[1]["lzma_by_epoch"] and measured[1]["final_lzma"] > measured[0]["final_lzma"]
    module.write_runs_csv(measured, tmp_path / "runs.csv")
    stored = read_csv_table(tmp_path / "runs.csv")
    elsewhere = tmp_path / "elsewhere"                        # the run folders are not on this machine
    from_csv = module.collect(elsewhere, stored)
    assert sorted(from_csv, key=module.setting) == sorted(measured, key=module.setting)
    assert module.document(from_csv, True) == module.document(measured, True)
    assert "MoMos s=2 c=0.05" in module.document(measured, True)


def test_a_run_folder_replaces_its_stored_row_and_unplanned_rows_are_dropped(report, tmp_path):
    module, root = report
    measured = module.collect(root, [])
    stale = {**measured[0], "test_acc": 0.0}
    foreign = {**measured[0], "run": "method-baseline__seed-7"}
    other_spec = {**measured[0], "spec": "other.yaml"}
    records = module.collect(root, [stale, foreign, other_spec])
    assert records == measured


def test_each_metric_reports_its_median_relative_change(report):
    module, _ = report
    checks = [("a lzma", True, 1.0, 2.0), ("b lzma", True, 1.0, 4.0), ("c lzma", True, 1.0, 10.0),
              ("a bdm", False, 100.0, 100.5), ("b bdm", True, 100.0, 99.0)]
    outcome, lines = module._summarize(checks, "runs")
    assert outcome == "partly reproduced"
    assert lines[0] == ("- runs: 4 of 5 comparisons agree (lzma 3/3, median change +300.00%; "
                        "bdm 1/2, median change -0.25%).")
    assert lines[1] == "  - disagrees: a bdm: 100 → 100.5"


def test_the_setting_table_says_how_many_planned_runs_are_complete(report):
    module, root = report
    measured = module.collect(root, [])
    assert "| 1 | 2 | 1 | fp32 |" in "\n".join(module.settings_lines(measured))
    assert "| 1 | 1 of 2 (in progress) | 1 | fp32 |" in "\n".join(module.settings_lines(measured[:1]))


def test_the_reestimated_table_is_shown_when_measured(report, tmp_path):
    module, _ = report
    assert module.reestimated_section(tmp_path / "absent.csv") == []
    (tmp_path / "reestimated_bn.csv").write_text(
        "run,method,test_acc,test_acc_as_loaded,test_acc_reestimated,test_acc_reestimated_plain,change_points,"
        "batches,batch_size\n"
        "method-momos__seed-0,momos,0.8655,0.8655,0.879,0.81,1.35,40,128\n"
        "method-gone__seed-0,momos,0.8655,0.8655,0.879,,1.35,40,128\n")   # measured before the plain column
    section = "\n".join(module.reestimated_section(tmp_path / "reestimated_bn.csv"))
    assert "| method-momos__seed-0 | momos | 0.8655 | 0.8790 | +1.35 points | 40 of 128 | 0.8100 |" in section
    assert "| method-gone__seed-0 | momos | 0.8655 | 0.8790 | +1.35 points | 40 of 128 | - |" in section
