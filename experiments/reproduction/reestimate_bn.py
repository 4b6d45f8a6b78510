"""The final checkpoints of the full-data ResNet-20 runs, tested again after re-estimating their
BatchNorm statistics: ``momos train --reestimate-bn``'s procedure applied after the fact to runs
trained without it (the paper's procedure, which the sweep keeps).

    MOMOS_DATA=... python experiments/reproduction/reestimate_bn.py [--batches 40] [--threads 2]

For every complete run folder of the sweep (``--runs``): the recorded test accuracy, the same
checkpoint tested again as loaded (it must agree), tested after re-estimating on the first
``--batches`` training batches of the run's split, augmented as the run trained
(``momos.train.reestimate_bn``, drawn with the run's seed), and after re-estimating on the same
batches without augmentation (which the weights did not train on: the comparison shows why the
first is the one to use). Writes ``reestimated_bn.csv`` next to this file (``--out``) and prints
it as a table. Run folders that are gone keep their rows (a column they predate stays empty).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch

from momos.data import load_dataset
from momos.io import write_bytes_atomic
from momos.report import format_table, read_csv_table
from momos.runfolder import load_model, read_config, read_results
from momos.train import evaluate, reestimate_bn

HERE = Path(__file__).resolve().parent
SWEEP = HERE.parents[1] / "runs" / "sweeps" / "reproduction-resnet20-cifar10-full" / "runs"
CSV = HERE / "reestimated_bn.csv"


def measure(run_dir: Path, batches: int) -> dict:
    config = read_config(run_dir)
    data = load_dataset(config.dataset, config.data_dir if config.data_dir and Path(config.data_dir).exists() else None,
                        val_fraction=config.val_fraction, split_seed=config.split_seed, download=False)
    model = load_model(run_dir)
    recorded = read_results(run_dir)["summary"]["test_acc"]
    as_loaded = evaluate(model, data.test, data)[1]
    reestimate_bn(model, data, config, count=batches)
    reestimated = evaluate(model, data.test, data)[1]
    reestimate_bn(model, data, dataclasses.replace(config, augment=False, randaugment=False), count=batches)
    plain = evaluate(model, data.test, data)[1]
    return {"run": run_dir.name, "method": config.method, "test_acc": round(recorded, 4),
            "test_acc_as_loaded": round(as_loaded, 4), "test_acc_reestimated": round(reestimated, 4),
            "test_acc_reestimated_plain": round(plain, 4),
            "change_points": round(100 * (reestimated - recorded), 2), "batches": batches,
            "batch_size": config.batch_size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="training batches to re-estimate on (default 40)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--runs", type=Path, default=SWEEP, help="the folder of the run folders (default: the sweep's)")
    parser.add_argument("--out", type=Path, default=CSV, help="the table to update (default: reestimated_bn.csv here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {row["run"]: row for row in (read_csv_table(args.out) if args.out.exists() else [])}
    for run_dir in sorted(args.runs.iterdir()) if args.runs.is_dir() else []:
        if (run_dir / "results.json").exists() and read_results(run_dir)["summary"]["complete"]:
            rows[run_dir.name] = measure(run_dir, args.batches)
            print(f"measured {run_dir.name}", flush=True)
    # rows kept from an older table may lack a column that the script measures now
    columns = dict.fromkeys(key for row in rows.values() for key in row)
    table = [{key: row.get(key) for key in columns} for row in sorted(rows.values(), key=lambda row: row["run"])]
    write_bytes_atomic(format_table(table, "csv").encode(), args.out)
    print(format_table(table, "markdown"))


if __name__ == "__main__":
    main()
