"""``momos compare``: a table of runs (method, s, capacity, k, accuracies, complexity)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare run folders in a table",
        description="Print one row per run folder written by momos train: method, block size s, capacity, "
                    "number of motifs k, QAT bits q, best and final validation accuracy, test accuracy, "
                    "simplification factor, the share of assignments of the least-used half of the motifs, "
                    "and the final value of complexity metrics.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    parser.add_argument("--metrics", metavar="NAME,...",
                        help="metric columns (default: every metric the runs logged with --metrics)")
    parser.add_argument("--format", choices=("text", "markdown", "csv"),
                        help="table format (default: text on screen; from the --out suffix, .md or .csv)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from momos.cli import UsageError
    from momos.io import write_bytes_atomic
    from momos.report import compare_rows, format_table, load_run

    fmt = args.format
    if fmt is None and args.out:
        suffixes = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".txt": "text"}
        fmt = suffixes.get(args.out[args.out.rfind("."):].lower()) if "." in args.out else None
        if fmt is None:
            raise UsageError(f"cannot tell the format of {args.out} from its suffix; pass --format")
    runs = [load_run(path) for path in args.runs]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    table = format_table(compare_rows(runs, metrics), fmt or "text")
    print(table, end="")
    if args.out:
        write_bytes_atomic(table.encode(), args.out)
    return 0
