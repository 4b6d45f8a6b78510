"""``momos plot``: accuracy and complexity of runs in one figure."""

from __future__ import annotations

import sys
import warnings


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="plot accuracy, complexity and motif usage of run folders",
        description="Write a figure with four panels: validation accuracy against epoch, complexity against "
                    "epoch, test accuracy against complexity across runs (Pareto view), and the motif usage "
                    "of the MoMos runs (cumulative share of assignments, least-used motifs first). Runs that did "
                    "not log the metric are left out of the complexity panels and named on stderr.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by momos train")
    parser.add_argument("--out", required=True, metavar="FIG.png", help="figure file (.png, .pdf or .svg)")
    parser.add_argument("--metric", metavar="NAME",
                        help="the complexity to show (default: the first metric the runs logged, "
                             "else the simplification factor)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from momos.cli import UsageError
    from momos.report import load_run, plot_runs

    if not args.out.lower().endswith((".png", ".pdf", ".svg")):
        raise UsageError(f"--out must end in .png, .pdf or .svg, got {args.out}")
    runs = [load_run(path) for path in args.runs]
    # What the figure leaves out is said in one line each, not as Python's two-line warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric = plot_runs(runs, args.out, metric=args.metric)
    for warning in caught:
        print(f"momos plot: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {args.out} (complexity: {metric})")
    return 0
