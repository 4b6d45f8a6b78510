"""Reading run folders back: a comparison table and figures.

    runs = [load_run(d) for d in ("runs/001", "runs/002")]
    print(format_table(compare_rows(runs), "markdown"))
    plot_runs(runs, "runs.png")
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .runfolder import MOTIF_COUNTS, RESULTS, read_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLE_FORMATS = ("text", "markdown", "csv")
SIMPLIFICATION = "simplification_factor"
SIMPLIFICATION_LABEL = "simplification factor n·q / (k·s·q + m·⌈log2 k⌉)"


@dataclass
class RunRecord:
    name: str
    path: Path
    results: dict
    motif_counts: torch.Tensor | None     # (k,) of the last projection; None without MoMos

    @property
    def config(self) -> dict:
        return self.results["config"]

    @property
    def epochs(self) -> list[dict]:
        return self.results["epochs"]

    def label(self) -> str:
        """The run folder and what distinguishes runs: method, s, capacity or k, q."""
        config, parts = self.config, [self.config["method"]]
        momos = config.get("momos")
        if momos:
            parts.append(f"s={momos['block_size']}")
            parts.append(f"c={momos['capacity']:g}" if momos.get("capacity") else f"k={momos['num_motifs']}")
        if config.get("qat_bits"):
            parts.append(f"q={config['qat_bits']}")
        description = " ".join(parts)
        return self.name if self.name == description else f"{self.name} ({description})"


def load_run(path: str | os.PathLike) -> RunRecord:
    """A run folder written by ``momos train``.

    Raises:
        ValueError: no readable ``results.json`` in ``path``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        results = read_results(path)
        missing = {"config", "epochs"} - set(results)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a momos run folder (cannot read {RESULTS}: {error})") from None
    if missing:
        raise ValueError(f"{path} is not a momos run folder ({RESULTS} lacks {', '.join(sorted(missing))})")
    counts_path = path / MOTIF_COUNTS
    counts = load_file(counts_path)["motif_counts"] if counts_path.is_file() else None
    return RunRecord(path.name or str(path), path, results, counts)


# --- numbers -------------------------------------------------------------------------------------

def least_used_share(counts: torch.Tensor, fraction: float = 0.5) -> float:
    """The share of all assignments that go to the least-used ``fraction`` of the motifs.

    The paper reports about 0.10-0.13 for ``fraction=0.5`` after training; 0.5 means uniform usage.
    """
    ordered = counts.double().sort().values
    return float(ordered[:int(len(ordered) * fraction)].sum() / ordered.sum())


def usage_curve(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lorenz curve of motif usage: (share of motifs, least used first; cumulative share of assignments)."""
    ordered = counts.double().sort().values
    x = torch.arange(len(ordered) + 1, dtype=torch.float64) / len(ordered)
    y = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0) / ordered.sum()])
    return x, y


def epoch_value(run: RunRecord, entry: dict, name: str) -> float | None:
    """A complexity value of an epoch: a logged metric, or the simplification factor
    (1 without MoMos and before the first projection)."""
    if name == SIMPLIFICATION:
        projected = [e for e in run.epochs if e.get("projection") and e["epoch"] <= entry["epoch"]]
        return projected[-1]["projection"].get(SIMPLIFICATION) if projected else 1.0
    return entry.get("metrics", {}).get(name)


def final_value(run: RunRecord, name: str) -> float | None:
    """The value at the last epoch."""
    return epoch_value(run, run.epochs[-1], name)


def logged_metrics(runs: list[RunRecord]) -> list[str]:
    """The metric names the runs asked for with ``--metrics``, in first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.config.get("metrics") or []))
    return list(names)


COMPLEXITY_CACHE = "complexity.json"


def checkpoint_complexity(run: RunRecord, checkpoint: str, metrics: list[str]) -> dict[str, float]:
    """The complexity metrics (``momos.complexity.measure``) of the run's ``init``, ``best`` or
    ``final`` checkpoint, measured once and kept in the run folder's ``complexity.json``.

    ``mosaic`` is measured for MoMos runs only (it needs their block size), at the run's q.
    """
    from .complexity import measure
    from .io import write_json_atomic
    from .runfolder import checkpoint_scales, load_model
    from .trainconfig import TrainConfig

    cache_path = run.path / COMPLEXITY_CACHE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    known = cache.get(checkpoint, {})
    config = TrainConfig.from_dict(run.config)
    wanted = [m for m in metrics if m != "mosaic" or config.momos is not None]
    missing = [m for m in wanted if m not in known.get("measured", [])]
    if missing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # window warnings: a property of the compressor, noted in the docs
            values = measure(load_model(run.path, checkpoint), missing, config.momos, q=config.qat_bits,
                             scales=checkpoint_scales(run.path / f"{checkpoint}.safetensors"))
        known = {"measured": known.get("measured", []) + missing, "values": {**known.get("values", {}), **values}}
        write_json_atomic({**cache, checkpoint: known}, cache_path)
    return known["values"]


# --- the table -----------------------------------------------------------------------------------

def compare_rows(runs: list[RunRecord], metrics: list[str] | None = None) -> list[dict]:
    """One row per run: method, s, capacity, k, q, accuracies, simplification factor, motif usage
    and the final value of each of ``metrics`` (default: every metric the runs logged)."""
    metrics = logged_metrics(runs) if metrics is None else metrics
    rows = []
    for run in runs:
        config, summary = run.config, run.results["summary"]
        momos = config.get("momos") or {}
        last_projection = next((e["projection"] for e in reversed(run.epochs) if e.get("projection")), None)
        row = {
            "run": run.name, "method": config["method"], "model": config["model"],
            "dataset": config["dataset"], "epochs": summary["epochs_done"],
            "s": momos.get("block_size"), "capacity": momos.get("capacity"),
            "k": last_projection["num_motifs"] if last_projection else None,
            "q": config.get("qat_bits"),
            "best_val_acc": summary["best_val_acc"], "final_val_acc": summary["final_val_acc"],
            "test_acc": summary["test_acc"],
            SIMPLIFICATION: final_value(run, SIMPLIFICATION),
            "least_used_half_share": least_used_share(run.motif_counts) if run.motif_counts is not None else None,
        }
        for name in metrics:
            row[name] = final_value(run, name)
        rows.append(row)
    return rows


def format_table(rows: list[dict], fmt: str = "text") -> str:
    """``rows`` (dicts with the same keys) as an aligned text table, Markdown or CSV."""
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return out.getvalue()
    cells = [[format_cell(row[c]) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines) + "\n"


def read_csv_table(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV file written by ``format_table(rows, "csv")``, typed back: an empty cell
    is None, a number an int or a float, anything else a string."""
    with open(path, newline="") as f:
        return [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _typed(cell: str):
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def format_cell(value) -> str:
    """A table cell: ``-`` for None, 4 decimals for floats (4 significant digits from 1000 on)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


# --- the figure ----------------------------------------------------------------------------------

def metric_label(name: str) -> str:
    """An axis label with the unit of a complexity value."""
    if name == SIMPLIFICATION:
        return SIMPLIFICATION_LABEL
    base = name.split("_")[0]
    if base in ("gzip", "bz2", "lzma", "zstd"):
        return f"{name} compression ratio, raw / compressed (higher = simpler)"
    if base.startswith("bdm"):
        return f"{name} (bits)" if not name.endswith("per_bit") else f"{name} (bits per bit)"
    return {"sparsity": "sparsity (share of exact zeros)", "l2": "L2 norm of the weights",
            "entropy": "empirical entropy (bits per weight)"}.get(name, name)


def plot_runs(runs: list[RunRecord], path: str | os.PathLike, metric: str | None = None) -> str:
    """Write :func:`runs_figure` to ``path`` (.png, .pdf or .svg); returns the metric shown."""
    from .io import write_bytes_atomic

    figure, metric = runs_figure(runs, metric)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=110)
    write_bytes_atomic(buffer.getvalue(), path)
    return metric


def runs_figure(runs: list[RunRecord], metric: str | None = None) -> tuple[Figure, str]:
    """A 2x2 figure: validation accuracy and complexity against epoch, test accuracy against
    complexity across runs (Pareto view), and the motif usage of the MoMos runs.

    ``metric``: the complexity shown (a logged metric name); default the first logged metric,
    else the simplification factor. Returns the figure and the metric used.

    Warns (``UserWarning``, one line) naming the runs without ``metric``, which the two complexity
    panels leave out.

    Raises:
        ValueError: ``metric`` was not logged by any run.
    """
    import matplotlib
    from matplotlib.figure import Figure   # not pyplot: no global figure to close, any backend

    metric = metric or next(iter(logged_metrics(runs)), SIMPLIFICATION)
    lacking = [run.name for run in runs if final_value(run, metric) is None]
    if len(lacking) == len(runs):
        raise ValueError(f"no run logged metric {metric!r}; logged: {', '.join(logged_metrics(runs)) or 'none'}")
    if lacking:
        warnings.warn(f"{len(lacking)} of {len(runs)} runs did not log {metric!r} and are left out of the "
                      f"complexity and Pareto panels: {', '.join(lacking)}")
    fig = Figure(figsize=(13, 9.5), layout="tight")
    axes = fig.subplots(2, 2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {run.name: colors[i % len(colors)] for i, run in enumerate(runs)}
    _plot_against_epoch(axes[0, 0], runs, color, lambda r, e: e["val_acc"], "validation accuracy")
    axes[0, 0].set_title("Validation accuracy (epoch 0 = initialization)")
    _plot_against_epoch(axes[0, 1], runs, color, lambda r, e: epoch_value(r, e, metric), metric_label(metric))
    axes[0, 1].set_title(f"Complexity: {metric.replace('_', ' ')}")
    _plot_pareto(axes[1, 0], runs, color, metric)
    _plot_usage(axes[1, 1], runs, color)
    return fig, metric


def _plot_against_epoch(ax, runs, color, value, ylabel) -> None:
    for run in runs:
        points = [(e["epoch"], value(run, e)) for e in run.epochs if value(run, e) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, color=color[run.name], label=run.label())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_pareto(ax, runs, color, metric) -> None:
    shown = []
    for run in runs:
        x, y = final_value(run, metric), run.results["summary"]["test_acc"]
        if y is None:
            y = run.results["summary"]["final_val_acc"]
        if x is None or y is None:
            continue
        shown.append(x)
        ax.scatter([x], [y], s=50, color=color[run.name], label=run.label(), zorder=3)
        ax.annotate(run.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if shown and (metric == SIMPLIFICATION or metric.split("_")[0] in ("gzip", "bz2", "lzma", "zstd")):
        _log_x_if_wide(ax, shown)
    ax.set_xlabel(metric_label(metric) + " (final)")
    ax.set_ylabel("test accuracy (final model)")
    ax.set_title("Accuracy against complexity across runs (up and right is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _log_x_if_wide(ax, values: list[float]) -> None:
    """A log x axis when ``values`` (ratios) span a decade or more, labelled with plain numbers:
    ticks at 1, 2 and 5 times the powers of ten over up to three decades, at the powers alone
    beyond (more labels would overlap). A narrower span keeps the linear axis, whose ticks are
    readable as they are, while a log axis might show none."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = min(values), max(values)
    if low <= 0 or high < 10 * low:
        return
    ax.set_xscale("log")   # resets the locators and formatters, so they come after
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high <= 1000 * low else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plain_number(value: float, _position=None) -> str:
    """A tick label such as 0.5, 20 or 1000 instead of 2×10^1: one significant digit, which is
    all a 1-2-5 tick has (and float noise such as 0.30000000000000004 would add)."""
    return np.format_float_positional(value, precision=1, unique=False, fractional=False, trim="-")


def _plot_usage(ax, runs, color) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="uniform usage")
    for run in runs:
        if run.motif_counts is None:
            continue
        x, y = usage_curve(run.motif_counts)
        share = least_used_share(run.motif_counts)
        ax.plot(x.numpy(), y.numpy(), color=color[run.name],
                label=f"{run.label()}: least-used 50% get {100 * share:.1f}%")
    ax.axvline(0.5, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("share of motifs, least used first")
    ax.set_ylabel("cumulative share of block assignments")
    ax.set_title("Motif usage of the last projection")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


# --- sweeps: many runs, grouped by their axis labels ---------------------------------------------

SUMMARY_VALUES = ("test_acc", "final_val_acc", SIMPLIFICATION, "least_used_half_share", "wall_seconds")
UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9._+=-]")
"""The characters a run folder or figure name must not hold (each is written as ``_``)."""


@dataclass
class SweepReport:
    """What :func:`momos.sweep.aggregate` wrote: per-run rows, per-group rows, the Markdown table
    and figures; ``missing``: runs of the grid without results yet."""

    runs: list[dict]
    summary: list[dict]
    markdown: str
    plots: list[Path]
    missing: list[str]


def summarize_runs(out: Path, found: list[tuple[dict, RunRecord]], axis_names: list[str],
                   group_axes: list[str], missing: list[str]) -> SweepReport:
    """Write the tables and figures of runs ``found`` as ``(axis labels, run)`` pairs into ``out``:
    ``runs.csv`` (:func:`run_rows`), ``summary.csv`` / ``summary.md`` (:func:`summary_rows` over
    ``group_axes``, of :data:`SUMMARY_VALUES` and every logged metric) and one figure per
    (model, dataset) of the complete runs in ``plots/``."""
    from .io import write_bytes_atomic

    rows = run_rows(found, axis_names)
    numbers, cells = summary_rows(rows, group_axes,
                                  [*SUMMARY_VALUES, *logged_metrics([record for _, record in found])])
    markdown = format_table(cells, "markdown")
    write_bytes_atomic(format_table(rows, "csv").encode(), out / "runs.csv")
    write_bytes_atomic(format_table(numbers, "csv").encode(), out / "summary.csv")
    write_bytes_atomic(markdown.encode(), out / "summary.md")
    plots = _plot_lowest_seeds(out, [record for _, record in found if record.results["summary"].get("complete")])
    return SweepReport(rows, numbers, markdown, plots, missing)


def axis_order(axes_of_runs: list[dict]) -> list[str]:
    """The axes of all runs in grid order, although each run names only the axes that apply to it
    (the run with the most axes sets the order; axes it lacks follow their predecessor elsewhere)."""
    order: list[str] = []
    for axes in sorted(axes_of_runs, key=len, reverse=True):
        previous = None
        for axis in axes:
            if axis not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, axis)
            previous = axis
    return order


def run_rows(found: list[tuple[dict, RunRecord]], axis_names: list[str]) -> list[dict]:
    """One row per ``(axis labels, run)``: run name, the axis labels, the other columns of
    :func:`compare_rows`, wall seconds and whether the run is complete."""
    rows = []
    for (axes, record), row in zip(found, compare_rows([record for _, record in found])):
        summary = record.results["summary"]
        rows.append({"run": row["run"], **{a: axes.get(a) for a in axis_names},
                     **{k: v for k, v in row.items() if k != "run" and k not in axis_names},
                     "wall_seconds": summary.get("wall_seconds"), "complete": bool(summary.get("complete"))})
    return rows


def summary_rows(rows: list[dict], group_axes: list[str], values: list[str]) -> tuple[list[dict], list[dict]]:
    """The complete runs grouped by their labels on ``group_axes``: per group ``n`` and the mean
    and sample standard deviation of each of ``values``, as numbers (``<value>_mean``,
    ``<value>_std``) and as ``mean ± std`` cells."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["complete"]:
            groups.setdefault(tuple(row[a] for a in group_axes), []).append(row)
    numbers, cells = [], []
    for key, members in groups.items():
        labels = {**dict(zip(group_axes, key)), "n": len(members)}
        stats = {name: _mean_std([member[name] for member in members]) for name in values}
        numbers.append({**labels, **{f"{name}_{part}": stat for name, pair in stats.items()
                                     for part, stat in zip(("mean", "std"), pair)}})
        cells.append({**labels, **{name: None if mean is None else f"{format_cell(mean)} ± {format_cell(std)}"
                                   for name, (mean, std) in stats.items()}})
    return numbers, cells


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the values that are not None."""
    present = [v for v in values if v is not None]
    mean = statistics.fmean(present) if present else None
    return mean, statistics.stdev(present) if len(present) > 1 else None


def _plot_lowest_seeds(out: Path, records: list[RunRecord]) -> list[Path]:
    """One figure per (model, dataset) over the runs of its lowest seed."""
    by_data: dict[tuple[str, str], list] = {}
    for record in records:
        by_data.setdefault((record.config["model"], record.config["dataset"]), []).append(record)
    paths = []
    for (model, dataset), group in by_data.items():
        seed = min(record.config["seed"] for record in group)
        path = out / "plots" / UNSAFE_IN_NAMES.sub("_", f"{model}_{dataset}.png")
        plot_runs([record for record in group if record.config["seed"] == seed], path)
        paths.append(path)
    return paths
