"""``momos sweep``: train a grid of runs described in a YAML file, resume it, aggregate it."""

from __future__ import annotations

import argparse

from momos.cli.common import add_step_arguments, step_runtime

DESCRIPTION = """\
Train every combination of the grid in CONFIG.yaml as a separate `momos train` run in
OUT/runs/<name>/, then aggregate: OUT/runs.csv (one row per run), OUT/summary.csv and
OUT/summary.md (mean ± std over seeds) and OUT/plots/<model>_<dataset>.png.

CONFIG.yaml:
  out: runs/sweeps/demo          # or --out
  fixed: {model: mlp, epochs: 10, metrics: [lzma]}
  grid:                           # every combination, in this order
    dataset: [mnist, fashion-mnist]
    method: [baseline, qat, momos, momos+qat]
    block_size: [2, 4]
    capacity: [0.01, 0.05]
    option:                       # values that are mappings: a name, then the keys they set
      - {name: sample, motif_method: sample}
      - {name: kmeans-warmup, motif_method: kmeans, warmup_epochs: 1}
    seed: [0, 1]

Keys are TrainConfig and MoMosConfig field names. MoMos keys and the projection schedule
apply only to the momos methods, qat_bits only to the qat ones: other runs drop them, so the
baseline is trained once per data set and seed. Complete runs are skipped and interrupted ones
resumed, so running the command again continues a sweep (--only trains a piece of it); a run
folder trained with another config is an error (delete it to train it again). A failed run does
not stop the others; its error is written to its folder's error.txt and the command exits with 1."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="train a grid of runs from a YAML file and aggregate them",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG.yaml", help="the sweep: out, fixed settings and the grid")
    parser.add_argument("--out", metavar="DIR", help="the sweep folder (default: out in CONFIG.yaml)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="runs trained at once, one process each")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="torch threads per run (default: one for a small model, else the CPU cores divided by --jobs)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="train only the runs whose names match PATTERN (shell-style: *, ?, [...]; "
                             "repeatable); the report still covers every run in the folder")
    parser.add_argument("--device", default="cpu",
                        help="where every run trains: cpu (default), cuda (with --jobs N: run i on GPU i mod the GPUs)")
    add_step_arguments(parser.add_argument_group(
        "how every run's training steps compute (results.json records it as runtime)"))
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder of the data sets for every run (default $MOMOS_DATA, else ~/.cache/momos/data)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="list the runs and whether each is done, partial (epochs done) or new; train nothing")
    mode.add_argument("--report-only", action="store_true", help="aggregate the runs there are; train nothing")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import sys

    from momos import sweep
    from momos.cli import UsageError
    from momos.cli.common import check_positive

    check_positive(args, "jobs", "threads")
    spec = sweep.load_spec(args.config)
    points = sweep.expand(spec)
    out = args.out or spec.get("out")
    if out is None:
        raise UsageError(f"no sweep folder: give --out or out: in {args.config}")
    try:
        chosen = sweep.select(points, args.only) if args.only else points
    except ValueError as error:
        raise UsageError(f"--only {error}") from None
    if args.dry_run:
        statuses = sweep.plan(chosen, out)
        for point in chosen:
            status = statuses[point.name]
            print(f"{status:8} {point.name}" + (f"  (epoch {_epochs_done(out, point)} of {point.config.epochs})"
                                                  if status == "partial" else ""))
        counts = {status: list(statuses.values()).count(status) for status in ("done", "partial", "new")}
        print(f"{len(chosen)} runs in {out}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
        return 0
    failed = {}
    if not args.report_only:
        failed = sweep.run_sweep(points, out, only=args.only, jobs=args.jobs, threads=args.threads,
                                 data_dir=args.data_dir, device=args.device, quiet=args.quiet,
                                 runtime=step_runtime(args)).failed
    try:
        report = sweep.aggregate(out, points)
    except ValueError as error:
        if not failed:
            raise UsageError(str(error)) from None
        print(f"momos sweep: {error}", file=sys.stderr)
    else:
        if not args.quiet:
            print(report.markdown, end="")
            missing = f"; {len(report.missing)} runs have no results yet" if report.missing else ""
            print(f"wrote runs.csv, summary.csv, summary.md and plots/ in {out}{missing}")
    if failed:
        print(f"momos sweep: {len(failed)} runs failed (see error.txt in their folders): " + ", ".join(failed),
              file=sys.stderr)
        return 1
    return 0


def _epochs_done(out, point) -> int:
    from momos import sweep
    from momos.runfolder import read_results

    return read_results(sweep.run_dir(out, point.name))["summary"]["epochs_done"]
