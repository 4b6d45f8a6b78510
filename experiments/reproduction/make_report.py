"""``experiments/REPRODUCTION.md`` from the reproduction sweeps; no number is typed by hand.

    momos sweep experiments/reproduction/mlp.yaml --jobs 2
    momos sweep experiments/reproduction/resnet20-cifar10-full.yaml --channels-last --compile
    momos sweep experiments/reproduction/vit-fashion-mnist.yaml --jobs 2
    python experiments/reproduction/make_report.py

``runs.csv`` is the sweeps' durable record (run folders hold checkpoints and are not committed;
a long sweep runs in pieces, maybe on other machines): a run whose folder is here is measured
(its initial and final checkpoints' complexity, cached in the folder by
``report.checkpoint_complexity``; accuracies, motif usage and timings from ``results.json`` and
``motif_counts.safetensors``) and its row rewritten; the row of a run whose folder is not here is
read back from ``runs.csv``.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
from collections import defaultdict
from pathlib import Path

from momos.io import write_bytes_atomic
from momos.report import checkpoint_complexity, format_cell, format_table, least_used_share, read_csv_table
from momos.sweep import expand, load_spec, sweep_rows

HERE = Path(__file__).resolve().parent
RUNS_CSV = HERE / "runs.csv"
SPECS = ("mlp.yaml", "resnet20-cifar10-full.yaml", "vit-fashion-mnist.yaml")
# ResNet-20 on 5,000 images for 10 epochs: its baseline reached 0.49, too far from working for a
# verdict; its runs stay in runs.csv and in a section of their own
SUPERSEDED = ("resnet20-cifar10.yaml",)
COMPRESSORS = ("gzip", "bz2", "lzma", "zstd")
METRICS = [*COMPRESSORS, "lzma_bin", "bdm", "sparsity", "l2", "mosaic"]
CSV_METRICS = ("gzip", "bz2", "lzma", "zstd", "lzma_bin", "bdm", "sparsity", "l2")
HEADLINE = (2, 0.05)                 # the paper's near-baseline point: s = 2, capacity 5%
ACCURACY_TOLERANCE = 0.01            # "near-baseline": within 1 percentage point of the mean


def collect(root: Path, stored: list[dict]) -> list[dict]:
    """One record (a ``runs.csv`` row) per completed run of the sweeps: measured where the run
    folder is under ``root``, else the ``stored`` row of that run."""
    records = []
    for name in (*SPECS, *SUPERSEDED):
        spec = load_spec(HERE / name)
        records += sweep_rows(spec, root / spec["out"], lambda run, point: record_of(run, point, name),
                              [r for r in stored if r["spec"] == name])
    return records


def record_of(run, point, spec: str) -> dict:
    """A run folder as a ``runs.csv`` row: its setting, runtime, accuracy, description length,
    motif usage, every metric at initialization and at the end, and the lzma ratio per epoch."""
    config, summary, runtime = run.config, run.results["summary"], run.results.get("runtime", {})
    momos = config["momos"] or {}
    init = initial_complexity(run)
    final = checkpoint_complexity(run, "final", METRICS)
    lzma_by_epoch = [e.get("metrics", {}).get("lzma") for e in run.epochs]
    return {
        "spec": spec, "run": point.name, "model": config["model"], "dataset": config["dataset"],
        "method": config["method"], "option": point.axes.get("option"),
        "s": momos.get("block_size"), "capacity": momos.get("capacity"), "q": config.get("qat_bits"),
        "seed": config["seed"], "train_images": run.results["data"]["train"], "epochs": summary["epochs_done"],
        "threads": summary.get("threads"),
        "runtime": " ".join([runtime.get("precision", "fp32")] + [flag for flag, on in (
            ("channels-last", runtime.get("channels_last")), ("compile", runtime.get("compile"))) if on]),
        "seconds": summary["wall_seconds"],
        "momos_version": config.get("versions", {}).get("momos"),
        "torch_version": config.get("versions", {}).get("torch"),
        "test_acc": summary["test_acc"],
        "bits_per_weight": final.get("mosaic_bound_bits_per_weight", float(config.get("qat_bits") or 32)),
        "entropy_coded_bits_per_weight": final.get("mosaic_entropy_coded_bits_per_weight"),
        "simplification_factor": final.get("mosaic_simplification_factor", 1.0),
        "least_used_half_share": least_used_share(run.motif_counts) if run.motif_counts is not None else None,
        **{f"init_{m}": init[m] for m in CSV_METRICS}, **{f"final_{m}": final[m] for m in CSV_METRICS},
        "lzma_by_epoch": " ".join(map(repr, lzma_by_epoch)) if None not in lzma_by_epoch else None,
    }


_initial: dict[str, dict] = {}


def initial_complexity(run) -> dict:
    """The metrics of the run's initial weights, measured once per distinct initialization (runs
    of one model and seed start from the same weights, whatever their method and data)."""
    from safetensors.torch import load_file

    tensors = load_file(run.path / "init.safetensors")
    digest = hashlib.sha256(b"".join(tensors[name].numpy().tobytes() for name in sorted(tensors))).hexdigest()
    if digest not in _initial:
        _initial[digest] = checkpoint_complexity(run, "init", [m for m in METRICS if m != "mosaic"])
    return _initial[digest]


def setting(r: dict) -> tuple:
    return (r["spec"], r["model"], r["dataset"], r["method"], r["s"] or 0, r["capacity"] or 0, r["q"] or 0,
            r["option"] or "")


def by_setting(records: list[dict]) -> dict[tuple, list[dict]]:
    """The records by setting (the seeds of one setting together), in the order of the tables."""
    grouped = defaultdict(list)
    for r in records:
        grouped[setting(r)].append(r)
    order = [*SPECS, *SUPERSEDED]
    return dict(sorted(grouped.items(), key=lambda item: (order.index(item[0][0]), item[0][1:3],
                                                          _method_order(item[0][3]), item[0][4:])))


def _method_order(method: str) -> int:
    return ("baseline", "qat", "momos", "momos+qat").index(method)


def stat(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` (sample std) of the seeds; the mean alone for one seed."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def label(key: tuple) -> str:
    _, _, _, method, s, capacity, q, option = key
    parts = [method]
    if s:
        parts.append(f"s={s} c={capacity:g}")
    if q:
        parts.append(f"q={q}")
    if option:
        parts.append(option)
    return " ".join(parts)


def sweep_of(key: tuple) -> str:
    return key[0].removesuffix(".yaml")


# --- tables ------------------------------------------------------------------------------------

def accuracy_table(grouped: dict) -> list[str]:
    lines = ["| sweep | model | data | method | seeds | test accuracy | bits per weight | simplification factor "
             "| least-used half of motifs gets | lzma ratio init → final | BDM bits init → final |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, runs in grouped.items():
        usage = [r["least_used_half_share"] for r in runs if r["least_used_half_share"] is not None]
        lines.append(
            f"| {sweep_of(key)} | {key[1]} | {key[2]} | {label(key)} | {len(runs)} "
            f"| {stat([r['test_acc'] for r in runs])} "
            f"| {stat([r['bits_per_weight'] for r in runs], 2)} | {stat([r['simplification_factor'] for r in runs], 2)} "
            f"| {stat(usage, 3) if usage else '-'} "
            f"| {stat([r['init_lzma'] for r in runs], 2)} → {stat([r['final_lzma'] for r in runs], 2)} "
            f"| {stat([r['init_bdm'] for r in runs], 0)} → {stat([r['final_bdm'] for r in runs], 0)} |")
    return lines


def compression_table(grouped: dict) -> list[str]:
    names = [*COMPRESSORS, "lzma_bin"]
    lines = ["| sweep | model | data | method | " + " | ".join(f"{n} init → final" for n in names)
             + " | sparsity final | L2 init → final |",
             "|---|---|---|---|" + "---|" * (len(names) + 2)]
    for key, runs in grouped.items():
        cells = [f"{stat([r[f'init_{n}'] for r in runs], 2)} → {stat([r[f'final_{n}'] for r in runs], 2)}"
                 for n in names]
        lines.append(f"| {sweep_of(key)} | {key[1]} | {key[2]} | {label(key)} | " + " | ".join(cells)
                     + f" | {stat([r['final_sparsity'] for r in runs], 3)}"
                     + f" | {stat([r['init_l2'] for r in runs], 1)} → {stat([r['final_l2'] for r in runs], 1)} |")
    return lines


# --- verdicts ----------------------------------------------------------------------------------

def verdict(passed: int, total: int) -> str:
    if total == 0:
        return "not tested"
    return "reproduced" if passed == total else "partly reproduced" if passed else "not reproduced"


def finding_trained_simpler(records: list[dict]) -> tuple[str, list[str]]:
    """(1) Trained baseline weights compress better (every compressor) and have lower BDM than at init."""
    checks = []
    for r in (r for r in records if r["method"] == "baseline"):
        for name in COMPRESSORS:
            checks.append((f"{r['model']}/{r['dataset']} seed {r['seed']} {name}",
                           r[f"final_{name}"] > r[f"init_{name}"], r[f"init_{name}"], r[f"final_{name}"]))
        checks.append((f"{r['model']}/{r['dataset']} seed {r['seed']} bdm", r["final_bdm"] < r["init_bdm"],
                       r["init_bdm"], r["final_bdm"]))
    return _summarize(checks, "baseline runs: final vs initial weights (ratio higher / BDM lower = simpler)")


def finding_momos_simplifies(records: list[dict]) -> tuple[str, list[str]]:
    """(2) MoMos final weights are simpler than the baseline's final weights of the same sweep,
    model, data and seed: higher lzma ratio and lower BDM."""
    baseline = {(r["spec"], r["model"], r["dataset"], r["seed"]): r for r in records if r["method"] == "baseline"}
    checks = []
    for r in (r for r in records if "momos" in r["method"]):
        base = baseline.get((r["spec"], r["model"], r["dataset"], r["seed"]))
        if base is None:
            continue
        name = f"{r['model']}/{r['dataset']} {label(setting(r))} seed {r['seed']}"
        checks.append((name + " lzma", r["final_lzma"] > base["final_lzma"], base["final_lzma"], r["final_lzma"]))
        checks.append((name + " bdm", r["final_bdm"] < base["final_bdm"], base["final_bdm"], r["final_bdm"]))
    outcome, lines = _summarize(checks, "MoMos runs against the baseline of the same sweep, model, data and seed, "
                                        "final weights")
    lines.append("- BDM sees only the signs of the weights (`w > 0`), which a projection onto nearby motifs "
                 "seldom flips, while lzma sees the repeated float32 values: compare the median changes "
                 "above before reading a BDM disagreement as a MoMos network that grew more complex.")
    return outcome, lines


def finding_accuracy_kept(grouped: dict) -> tuple[str, list[str]]:
    """(3) MoMos at the headline point keeps the baseline's mean test accuracy within the tolerance."""
    lines, passed, total = [], 0, 0
    for key, runs in grouped.items():
        spec, model, dataset, method, s, capacity, _, option = key
        if method != "momos" or (s, capacity) != HEADLINE or option:
            continue
        base = grouped.get((spec, model, dataset, "baseline", 0, 0, 0, ""))
        if not base:
            continue
        diff = statistics.fmean(r["test_acc"] for r in runs) - statistics.fmean(r["test_acc"] for r in base)
        total += 1
        passed += diff >= -ACCURACY_TOLERANCE
        lines.append(f"- {model}/{dataset} ({sweep_of(key)}, {seeds(runs)} against {seeds(base)}): "
                     f"MoMos s={s} c={capacity:g} {diff * 100:+.2f} points against the baseline "
                     f"({'within' if diff >= -ACCURACY_TOLERANCE else 'outside'} {ACCURACY_TOLERANCE * 100:g} point; "
                     f"test accuracy {stat([r['test_acc'] for r in runs])} against "
                     f"{stat([r['test_acc'] for r in base])}), simplification factor "
                     f"{stat([r['simplification_factor'] for r in runs], 2)}.")
    for key, base in grouped.items():
        spec, model, dataset, method, *_ = key
        if method == "baseline" and (spec, model, dataset, "momos", *HEADLINE, 0, "") not in grouped:
            lines.append(f"- {model}/{dataset} ({sweep_of(key)}): no MoMos s={HEADLINE[0]} c={HEADLINE[1]:g} run "
                         f"is complete yet (baseline {stat([r['test_acc'] for r in base])}, {seeds(base)}); "
                         "not counted.")
    return verdict(passed, total), lines


def seeds(runs: list[dict]) -> str:
    return f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"


def _summarize(checks, what: str, shown: int = 6) -> tuple[str, list[str]]:
    """The verdict over ``checks`` (name ending in the metric, agrees, before, after), the count
    and the median relative change per metric (a metric that agrees by chance moves by fractions
    of a percent), and the first disagreements."""
    passed = sum(ok for _, ok, _, _ in checks)
    metrics = list(dict.fromkeys(name.split()[-1] for name, *_ in checks))
    per_metric = []
    for m in metrics:
        of_m = [(ok, before, after) for n, ok, before, after in checks if n.split()[-1] == m]
        change = statistics.median(after / before - 1 for _, before, after in of_m)
        per_metric.append(f"{m} {sum(ok for ok, *_ in of_m)}/{len(of_m)}, median change {change * 100:+.2f}%")
    lines = [f"- {what}: {passed} of {len(checks)} comparisons agree ({'; '.join(per_metric)})."]
    failed = [c for c in checks if not c[1]]
    lines += [f"  - disagrees: {name}: {before:.6g} → {after:.6g}" for name, _, before, after in failed[:shown]]
    if len(failed) > shown:
        lines.append(f"  - and {len(failed) - shown} more (all in `reproduction/runs.csv`)")
    return verdict(passed, len(checks)), lines


# --- the runs' file and the figure -------------------------------------------------------------

def write_runs_csv(records: list[dict], path: Path) -> None:
    write_bytes_atomic(format_table(sorted(records, key=lambda r: (setting(r), r["seed"])), "csv").encode(), path)


def plot_lzma_during_training(grouped: dict, path: Path) -> bool:
    """The lzma ratio of the weights after every epoch (epoch 0: initialization), mean over seeds,
    one panel per sweep, model and data set, one line per setting; only the runs that measured it
    (``metrics: [lzma]`` in their spec). Returns whether there was anything to draw."""
    curves_of = {key: [[float(v) for v in r["lzma_by_epoch"].split()] for r in runs if r["lzma_by_epoch"]]
                 for key, runs in grouped.items()}
    curves_of = {key: curves for key, curves in curves_of.items() if curves}
    panels = list(dict.fromkeys(key[:3] for key in curves_of))
    if not panels:
        return False
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key, curves in curves_of.items():
            if key[:3] == panel:
                ax.plot(range(len(curves[0])), [statistics.fmean(v) for v in zip(*curves)], marker="o",
                        markersize=3, linestyle="-" if "momos" in key[3] else "--", label=label(key))
        ax.set_yscale("log")
        ax.set_title(f"{panel[1]} on {panel[2]} ({sweep_of(panel)})")
        ax.set_xlabel("epoch (0 = initialization)")
        ax.set_ylabel("lzma-9 ratio of the float32 weights (higher = simpler)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), path)
    return True


# --- the document ------------------------------------------------------------------------------

def settings_lines(records: list[dict]) -> list[str]:
    lines = ["| sweep | model | data | training images | epochs | seeds | runs | threads per run | runtime "
             "| hours (sum of the runs' wall times) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in (*SPECS, *SUPERSEDED):
        mine = [r for r in records if r["spec"] == spec]
        if not mine:
            continue
        seconds = [r["seconds"] for r in mine]
        hours = f"{sum(seconds) / 3600:.2f}" if None not in seconds else "not recorded"
        planned = len(expand(load_spec(HERE / spec)))
        runs = f"{len(mine)}" if len(mine) == planned else f"{len(mine)} of {planned} (in progress)"
        lines.append(
            f"| `{spec}` | {mine[0]['model']} | {', '.join(sorted({r['dataset'] for r in mine}))} "
            f"| {', '.join(str(n) for n in sorted({r['train_images'] for r in mine}))} "
            f"| {', '.join(str(n) for n in sorted({r['epochs'] for r in mine}))} "
            f"| {len({r['seed'] for r in mine})} | {runs} | {_values(mine, 'threads')} | {_values(mine, 'runtime')} "
            f"| {hours} |")
    return lines


def _values(records: list[dict], key: str) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(r[key] for r in records))


def reestimated_section(path: Path) -> list[str]:
    """The full-data ResNet-20 runs tested again with re-estimated BatchNorm statistics
    (``reestimate_bn.py``'s table), when it has been measured."""
    if not path.is_file():
        return []
    rows = read_csv_table(path)
    return [
        "## ResNet-20 with re-estimated BatchNorm statistics (measured after the fact)",
        "",
        "The runs above follow the paper: after each projection the BatchNorm layers keep the running",
        "statistics of the weights before it. `python experiments/reproduction/reestimate_bn.py` tests the",
        "final checkpoints of the full-data ResNet-20 runs again after re-estimating those statistics on",
        "training batches of the run, augmented as it trained (what `momos train --reestimate-bn N` does",
        "after every projection); the verdicts above do not use these numbers. The last column",
        "re-estimates on the same batches without augmentation, which the weights did not train on.",
        "",
        "| run | method | test acc | test acc, statistics re-estimated | change | batches | re-estimated on plain images |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['run']} | {r['method']} | {r['test_acc']:.4f} | {r['test_acc_reestimated']:.4f} | "
          f"{r['change_points']:+.2f} points | {r['batches']} of {r['batch_size']} | "
          f"{format_cell(r.get('test_acc_reestimated_plain'))} |" for r in rows),
        "",
    ]


def document(records: list[dict], figure: bool) -> str:
    current = [r for r in records if r["spec"] in SPECS]
    superseded = [r for r in records if r["spec"] in SUPERSEDED]
    grouped = by_setting(current)
    findings = [
        ("1. Trained weights are algorithmically simpler than their random initialization",
         *finding_trained_simpler(current)),
        ("2. MoMos lowers the algorithmic complexity of the networks", *finding_momos_simplifies(current)),
        (f"3. ... while keeping the accuracy of unconstrained training (s={HEADLINE[0]}, capacity {HEADLINE[1]:g})",
         *finding_accuracy_kept(grouped)),
    ]
    versions = _values(records, "momos_version"), _values(records, "torch_version")
    lines = [
        "# Reproducing the paper's findings",
        "",
        "Generated by `python experiments/reproduction/make_report.py` from the sweeps in",
        "`experiments/reproduction/` (every run's row: [`reproduction/runs.csv`](reproduction/runs.csv));",
        "no number here is typed by hand. Test accuracy is the final model's on the official test split;",
        "cells are mean ± sample std over seeds. Compression ratios (raw / compressed bytes, higher =",
        "simpler) are of the float32 weights (`lzma_bin`: binarized `w > 0`, a byte per weight); BDM is of",
        "the binarized weights, in bits (lower = simpler); bits per weight is the paper's bound",
        "`(k·s·q + m·⌈log2 k⌉) / n` (32 for unconstrained float32, q under QAT); the simplification",
        "factor is `n·q / (k·s·q + m·⌈log2 k⌉)`. Motif usage: the share of all block assignments that the",
        "least-used half of the motifs receives (0.5 = uniform). Under QAT the metrics are of the latent",
        "full-precision weights (the ones MoMos projects and the checkpoints hold); the forward pass uses",
        "their q-bit quantization, which is why q enters the bound. A sweep that is still running shows",
        "the runs it has completed (the runs column says how many of the planned ones).",
        "",
        "## The setting",
        "",
        *settings_lines(records),
        "",
        f"Hardware: {platform.machine()} CPU (2 cores), no GPU. Software: momos {versions[0]}, torch {versions[1]}.",
        "",
        "Differences from the paper's setting: the epochs and training images of the table above",
        "instead of 200 epochs on the full data (ResNet-20: the full training split, with weight decay",
        "5e-4 and label smoothing 0.1); CIFAR-10 from its JPEG (quality 75) copy instead of the lossless set; the",
        "small ViT on Fashion-MNIST at 28 pixels (5,000 images) instead of CIFAR-10 at 224 pixels;",
        "MoMos+QAT only at s = 2, capacity 0.05 for ResNet-20 and the ViT.",
        "",
        "## Verdicts",
        "",
        "From the sweeps of the table above except the superseded ResNet-20 subset runs (last section).",
        "",
    ]
    for title, outcome, evidence in findings:
        lines += [f"### {title}: **{outcome}**", "", *evidence, ""]
    if figure:
        lines += ["## Complexity during training", "",
                  "![lzma ratio after every epoch](reproduction/lzma_during_training.png)", ""]
    lines += [
        "## Accuracy, description length, motif usage",
        "",
        *accuracy_table(grouped),
        "",
        "## Compression at initialization and at the end",
        "",
        *compression_table(grouped),
        "",
    ]
    lines += reestimated_section(HERE / "reestimated_bn.csv")
    if superseded:
        lines += [
            "## Superseded: ResNet-20 on a CIFAR-10 subset",
            "",
            "The first ResNet-20 sweep (`resnet20-cifar10.yaml`: 5,000 training images, 10 epochs) left its",
            "baseline far below a working ResNet-20, so the verdicts above do not use it; kept for the record.",
            "",
            *accuracy_table(by_setting(superseded)),
            "",
        ]
    lines += [
        "## Rerunning the paper's full setting on a GPU machine",
        "",
        "`experiments/reproduction/paper-full.yaml` holds the paper's setting: 200 epochs, full MNIST,",
        "Fashion-MNIST and CIFAR-10 (torchvision downloads the originals), ResNet-20, the MLP and the",
        "224-pixel ViT (timm's `vit_tiny_patch16_224`, images resized), 3 seeds. The command and the",
        "expected time per run are in [README.md](README.md#on-a-gpu); then add the spec to `SPECS` of",
        "this script. The GPU path of `momos train` has not been run on the machine that produced this report.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    root = HERE.parent.parent
    records = collect(root, read_csv_table(RUNS_CSV) if RUNS_CSV.is_file() else [])
    if not records:
        raise SystemExit("no completed runs of the reproduction sweeps found; run them first")
    write_runs_csv(records, RUNS_CSV)
    figure = plot_lzma_during_training(by_setting([r for r in records if r["spec"] in SPECS]),
                                       HERE / "lzma_during_training.png")
    write_bytes_atomic(document(records, figure).encode(), HERE.parent / "REPRODUCTION.md")
    print(f"{len(records)} runs -> {RUNS_CSV}, {HERE.parent / 'REPRODUCTION.md'}")


if __name__ == "__main__":
    main()
