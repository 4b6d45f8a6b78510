"""The motif study, from its sweeps to evidence: ``results.csv``, two figures per section and the
summary in ``experiments/MOTIFS.md``. Every number comes from the runs.

    momos sweep experiments/motifs/mlp-fashion-mnist.yaml --jobs 2
    momos sweep experiments/motifs/mlp-fashion-mnist-tiles-schedules.yaml --jobs 2
    momos sweep experiments/reproduction/resnet20-cifar10-full.yaml --channels-last --compile
    momos sweep experiments/motifs/resnet20-cifar10.yaml --jobs 2
    momos sweep experiments/motifs/resnet20-cifar10-tiles.yaml --jobs 2
    python experiments/motifs/analyze.py

``results.csv`` is the study's durable record (run folders hold checkpoints and are not
committed): a run whose folder is here is measured and its row rewritten; the row of a run whose
folder is not here is read back from ``results.csv``. A section is one model, data set and
number of training images: the full-data ResNet-20 runs (shared with the reproduction) and the
3,000-image subset runs are separate sections.

Description length: the entropy-coded mosaic (``k·s·32`` bits of float32 motifs plus the
indices at their empirical entropy), in bits per weight; lzma: the compression ratio of the
final float32 weights. Both are measured on the final checkpoint (``report.checkpoint_complexity``).
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from pathlib import Path

from momos.config import MoMosConfig
from momos.io import write_bytes_atomic
from momos.report import checkpoint_complexity, format_table, least_used_share, read_csv_table
from momos.sweep import load_spec, sweep_rows

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent
RESULTS_CSV = HERE / "results.csv"
# paths under experiments/; the study takes the baseline and plain MoMos runs of each
SPECS = ("motifs/mlp-fashion-mnist.yaml", "motifs/mlp-fashion-mnist-tiles-schedules.yaml",
         "reproduction/resnet20-cifar10-full.yaml", "motifs/resnet20-cifar10.yaml",
         "motifs/resnet20-cifar10-tiles.yaml")
METHODS = ("baseline", "momos")
BITS = "mosaic_entropy_coded_bits_per_weight"
COLUMNS = ("spec", "run", "model", "dataset", "train_images", "epochs", "threads", "option", "s", "capacity",
           "seed", "test_acc", "final_val_acc", "bits_per_weight", "bound_bits_per_weight", "lzma",
           "simplification_factor", "least_used_half_share", "num_motifs", "distortion", "projection_seconds",
           "wall_seconds")


def option_of(config: dict, axes: dict) -> str:
    """The option a run stands for: its named option, else its motif method, or baseline."""
    if config["method"] == "baseline":
        return "baseline"
    return axes.get("option") or MoMosConfig.from_dict(config["momos"]).motif_method


def collect(root: Path, stored: list[dict]) -> list[dict]:
    """One row per completed baseline or MoMos run of the study's sweeps (spec ``out`` folders are
    relative to ``root``): measured where the run folder is here, else the ``stored`` row of that run."""
    rows = []
    for name in SPECS:
        spec = load_spec(EXPERIMENTS / name)
        rows += sweep_rows(spec, root / spec["out"], lambda run, point: row_of(run, point, name),
                           [r for r in stored if r["spec"] == name], lambda point: point.config.method in METHODS)
    return rows


def row_of(run, point, spec: str) -> dict:
    config, summary = run.config, run.results["summary"]
    momos = config["momos"]
    values = checkpoint_complexity(run, "final", ["lzma", "mosaic"])
    projection = next((e["projection"] for e in reversed(run.epochs) if e.get("projection")), None)
    return {
        "spec": spec, "run": point.name, "model": config["model"], "dataset": config["dataset"],
        "train_images": run.results["data"]["train"], "epochs": summary["epochs_done"],
        "threads": summary.get("threads"), "option": option_of(config, point.axes),
        "s": momos["block_size"] if momos else None, "capacity": momos["capacity"] if momos else None,
        "seed": config["seed"], "test_acc": summary["test_acc"], "final_val_acc": summary["final_val_acc"],
        "bits_per_weight": values.get(BITS, 32.0),
        "bound_bits_per_weight": values.get("mosaic_bound_bits_per_weight", 32.0),
        "lzma": values["lzma"],
        "simplification_factor": values.get("mosaic_simplification_factor", 1.0),
        "least_used_half_share": least_used_share(run.motif_counts) if run.motif_counts is not None else None,
        "num_motifs": projection["num_motifs"] if projection else None,
        "distortion": projection["distortion"] if projection else None,
        # the median over the run's projections
        "projection_seconds": statistics.median(e["projection"]["seconds"] for e in run.epochs
                                                if e.get("projection")) if projection else None,
        "wall_seconds": summary["wall_seconds"],
    }


def write_csv(rows: list[dict], path: Path) -> None:
    write_bytes_atomic(format_table([{k: row[k] for k in COLUMNS} for row in rows], "csv").encode(), path)


def section_of(row: dict) -> tuple:
    """The part of the study a run belongs to: its model, data set and number of training images."""
    return row["model"], row["dataset"], row["train_images"]


def sections(rows: list[dict]) -> list[tuple]:
    """The sections in the summary's order: by model, the most training images first."""
    return sorted({section_of(r) for r in rows}, key=lambda sec: (sec[0], sec[1], -sec[2]))


# --- statistics over seeds ---------------------------------------------------------------------

def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (section, option, s, capacity); the seeds of one setting together."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[(section_of(row), row["option"], row["s"], row["capacity"])].append(row)
    return grouped


def mean(rows, key):
    return statistics.fmean(r[key] for r in rows)


def spread(rows, key):
    """The seed spread: max - min over the seeds."""
    values = [r[key] for r in rows]
    return max(values) - min(values)


def std(rows, key):
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def comparisons(rows: list[dict], reference: str = "sample") -> list[dict]:
    """Each option against ``reference`` at the same (section, s, capacity): the difference of mean
    test accuracies and whether it exceeds the seed spread of both."""
    grouped = groups(rows)
    out = []
    for (section, option, s, capacity), runs in sorted(grouped.items(), key=str):
        base = grouped.get((section, reference, s, capacity))
        if option in ("baseline", reference) or not base:
            continue
        diff = mean(runs, "test_acc") - mean(base, "test_acc")
        noise = max(spread(runs, "test_acc"), spread(base, "test_acc"))
        # one seed has no spread to judge a difference by
        verdict = ("one seed" if min(len(runs), len(base)) < 2 else
                   "win" if diff > noise else "loss" if -diff > noise else "tie")
        out.append({"section": section, "option": option, "s": s, "capacity": capacity, "diff": diff,
                    "noise": noise, "verdict": verdict,
                    "distortion_change": mean(runs, "distortion") / mean(base, "distortion") - 1,
                    "bits_diff": mean(runs, "bits_per_weight") - mean(base, "bits_per_weight"),
                    "projection_seconds": mean(runs, "projection_seconds"),
                    "seeds": min(len(runs), len(base))})
    return out


# --- figures -----------------------------------------------------------------------------------

def has_momos_runs(rows: list[dict], section: tuple) -> bool:
    """Whether ``section`` has a point to plot (a baseline alone draws an empty figure)."""
    return any(section_of(r) == section and r["option"] != "baseline" for r in rows)


def plot_file(section: tuple) -> str:
    model, dataset, images = section
    return f"{model}-{dataset}-{images}.png"


def plot_section(rows: list[dict], section: tuple, path: Path) -> None:
    """Test accuracy against bits per weight and against the lzma ratio, one curve per option
    (mean over seeds, bars: seed std); the baseline as a horizontal band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if section_of(r) == section]
    grouped = groups(mine)
    options = sorted({r["option"] for r in mine if r["option"] != "baseline"},
                     key=lambda o: (o != "sample", o))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, key, label in ((axes[0], "bits_per_weight", "description length (bits per weight, entropy-coded mosaic)"),
                           (axes[1], "lzma", "lzma-9 compression ratio of the float32 weights")):
        for option in options:
            points = sorted((mean(g, key), mean(g, "test_acc"), std(g, "test_acc"))
                            for (_, o, _, _), g in grouped.items() if o == option)
            x, y, e = zip(*points)
            ax.errorbar(x, y, yerr=e, marker="o", markersize=4, capsize=2, linestyle="-" if option == "sample" else "--",
                        label=option)
        baseline = [r for r in mine if r["option"] == "baseline"]
        if baseline:
            level = mean(baseline, "test_acc")
            ax.axhspan(level - std(baseline, "test_acc"), level + std(baseline, "test_acc"), color="gray", alpha=0.2)
            ax.axhline(level, color="gray", linewidth=1, label="baseline (no projection)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (mean over seeds, bars: std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title(section)}: test accuracy against complexity (a point: one s and capacity, mean over seeds)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), path)


# --- the summary -------------------------------------------------------------------------------

def threads(runs: list[dict]) -> str:
    counts = sorted({r["threads"] for r in runs})
    return f"{' or '.join(map(str, counts))} thread{'s' if counts != [1] else ''}"


def title(section: tuple) -> str:
    model, dataset, images = section
    return f"{model} on {dataset}, {images:,} training images"


def summary_markdown(rows: list[dict], compared: list[dict]) -> str:
    lines = [
        "# Motifs: learned, persistent, tiled and scheduled against the paper's random motifs",
        "",
        "Generated by `python experiments/motifs/analyze.py` from the sweeps each section names (their",
        "configs state models, data, epochs and subsets); every number below comes from those runs.",
        "Data: `motifs/results.csv` (one row per run, the study's record), figures in `motifs/plots/`.",
        "Accuracy is the final model's test accuracy; spread is max - min over seeds. Projection times",
        "are medians over a run's projections, with the threads per run each section states (the",
        "subset sweeps ran two runs at a time on the 2 CPU cores).",
        "Against the paper's `sample` at the same (s, capacity): a *win* is a difference of mean test",
        "accuracies larger than the larger seed spread of the two settings, a *loss* one below minus",
        "that spread, a *tie* anything in between. Distortion: the squared distance between the weights",
        "before and after the last projection, relative to `sample`'s.",
        "",
    ]
    for section in sections(rows):
        mine = [r for r in rows if section_of(r) == section]
        baseline = [r for r in mine if r["option"] == "baseline"]
        lines += [f"## {title(section)}", ""]
        runs_of = {spec: [r for r in mine if r["spec"] == spec] for spec in dict.fromkeys(r["spec"] for r in mine)}
        lines += ["Sweeps: " + "; ".join(
            f"`{spec}` ({counted(len(runs), 'run')} of {', '.join(str(e) for e in sorted({r['epochs'] for r in runs}))} epochs, "
            f"{threads(runs)} each)"
            for spec, runs in runs_of.items()) + ".", ""]
        if any(other[:2] == section[:2] and other[2] > section[2] for other in sections(rows)):
            lines += ["A subset of the training data, kept for the record: its baseline is far below the "
                      "full-data one, so the section with more training images is the one to judge by.", ""]
        if baseline:
            seeds = counted(len(baseline), "seed")
            if len(baseline) > 1:   # one seed has no spread
                seeds = f"spread {spread(baseline, 'test_acc'):.4f}, {seeds}"
            lines += [f"Baseline (no projection): test accuracy {mean(baseline, 'test_acc'):.4f} ({seeds}), "
                      f"lzma ratio {mean(baseline, 'lzma'):.2f}.", ""]
        mine_compared = [c for c in compared if c["section"] == section]
        for block in (settings_table(mine), verdict_lines(mine_compared), acceptance_lines(mine_compared)):
            lines += [*block, ""] if block else []
        if has_momos_runs(rows, section):
            lines += [f"![accuracy against complexity](motifs/plots/{plot_file(section)})", ""]
    return "\n".join(lines)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def settings_table(rows: list[dict]) -> list[str]:
    """Mean test accuracy ± seed spread per option (columns) and (s, capacity) (rows)."""
    grouped = groups(rows)
    options = sorted({r["option"] for r in rows if r["option"] != "baseline"}, key=lambda o: (o != "sample", o))
    settings = sorted({(r["s"], r["capacity"]) for r in rows if r["option"] != "baseline"})
    if not settings:
        return ["No MoMos run of this section is complete yet."]
    section = section_of(rows[0])
    lines = ["| s | capacity | " + " | ".join(options) + " |", "|---|---|" + "---|" * len(options)]
    for s, capacity in settings:
        cells = []
        for option in options:
            runs = grouped.get((section, option, s, capacity))
            if not runs:
                cells.append("")
                continue
            accuracy, bits = f"{mean(runs, 'test_acc'):.4f}", f"{mean(runs, 'bits_per_weight'):.2f} b/w"
            cells.append(f"{accuracy} ± {spread(runs, 'test_acc'):.4f} ({bits})" if len(runs) > 1
                         else f"{accuracy} (1 seed, {bits})")
        lines.append(f"| {s} | {capacity:g} | " + " | ".join(cells) + " |")
    return ["Test accuracy ± seed spread (description length in bits per weight):", ""] + lines


def verdict_lines(compared: list[dict]) -> list[str]:
    lines = []
    for option in sorted({c["option"] for c in compared}):
        mine = [c for c in compared if c["option"] == option]
        counts = {v: sum(c["verdict"] == v for c in mine) for v in ("win", "tie", "loss", "one seed")}
        single = f", {counts['one seed']} with one seed (not judged)" if counts["one seed"] else ""
        diffs = [c["diff"] for c in mine]
        best = max(mine, key=lambda c: c["diff"])
        worst = min(mine, key=lambda c: c["diff"])
        slowest = max(mine, key=lambda c: c["projection_seconds"])
        lines.append(
            f"- **{option}** against sample in {len(mine)} settings: {counts['win']} wins, {counts['tie']} ties, "
            f"{counts['loss']} losses{single}; mean difference {statistics.fmean(diffs):+.4f} "
            f"(best {best['diff']:+.4f} at s={best['s']}, capacity {best['capacity']:g}; "
            f"worst {worst['diff']:+.4f} at s={worst['s']}, capacity {worst['capacity']:g}); "
            f"description length {statistics.fmean(c['bits_diff'] for c in mine):+.3f} bits per weight on average, "
            f"distortion {100 * statistics.median(c['distortion_change'] for c in mine):+.1f}% (median); "
            f"a projection took {statistics.median(c['projection_seconds'] for c in mine):.3f} s (median over "
            f"settings), {slowest['projection_seconds']:.2f} s at the slowest setting (s={slowest['s']}, "
            f"capacity {slowest['capacity']:g}).")
    return lines


def acceptance_lines(compared: list[dict]) -> list[str]:
    """Does the best new option beat ``sample`` beyond the seed spread in most of the grid's settings?"""
    grid = [c for c in compared if c["option"] in ("kmeans", "persistent")]
    if not grid:
        return []
    wins = {o: sum(c["verdict"] == "win" for c in grid if c["option"] == o) for o in ("kmeans", "persistent")}
    best = max(wins, key=wins.get)
    total = sum(c["option"] == best for c in grid)
    mine = [c for c in grid if c["option"] == best]
    ties = [c for c in mine if c["verdict"] == "tie"]
    losses = sum(c["verdict"] == "loss" for c in mine)
    line = (f"Acceptance: the best motif method of the full grid, **{best}**, beats sample beyond the seed "
            f"spread in {wins[best]} of {total} settings ({len(ties)} ties, {losses} losses): the majority is "
            f"{'reached' if wins[best] > total / 2 else '**not** reached'}.")
    if ties:
        line += (f" In the ties the accuracy difference (mean |difference| "
                 f"{statistics.fmean(abs(c['diff']) for c in ties):.4f}) does not exceed the seed spread (mean "
                 f"{statistics.fmean(c['noise'] for c in ties):.4f}, 2 seeds), while the last projection's distortion "
                 f"changes by {100 * statistics.median(c['distortion_change'] for c in ties):+.1f}% (median).")
    return [line]


def main() -> None:
    root = EXPERIMENTS.parent
    rows = collect(root, read_csv_table(RESULTS_CSV) if RESULTS_CSV.is_file() else [])
    if not rows:
        raise SystemExit("no completed runs of the motif study found; run its sweeps first")
    write_csv(rows, RESULTS_CSV)
    (HERE / "plots").mkdir(exist_ok=True)
    for section in filter(lambda section: has_momos_runs(rows, section), sections(rows)):
        plot_section(rows, section, HERE / "plots" / plot_file(section))
    compared = comparisons(rows)
    write_bytes_atomic(summary_markdown(rows, compared).encode(), EXPERIMENTS / "MOTIFS.md")
    print(f"{len(rows)} runs -> {RESULTS_CSV}, {HERE / 'plots'}, {EXPERIMENTS / 'MOTIFS.md'}")


if __name__ == "__main__":
    main()
