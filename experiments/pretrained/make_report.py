"""``experiments/PRETRAINED.md``: MoMos as a post-training projection of pretrained networks.

    bash experiments/pretrained/pretrain.sh                          # the pretrained runs
    MOMOS_DATA=/path/to/data nice -n 10 python experiments/pretrained/make_report.py

For each pretrained run (``runs/pretrained/<name>``, its ``final`` checkpoint) this measures
test accuracy and the stored bits per weight of the whole model, with no fine-tuning, for

* MoMos: ``momos.project_`` on a copy of the model at every block size ``s``, capacity and
  parameter set of the grid below, for the model's variants (:data:`VARIANTS`): the paper's random
  motifs on raw weights (``plain``), power-of-two scales per tensor or per output channel, the
  channel scales with the importance of 256 calibration images, and the same with k-means
  motifs. Bits per weight: 8 x the size of the ``.momos`` file that ``momos.save`` writes (the
  whole state dict: buffers and unprojected tensors too) / the number of parameter values. The
  accuracy is that of the model read back from the file.
* Round-to-nearest (``rtn.py``): symmetric int2/3/4/8 per tensor and per output channel on the
  same tensors, bits per weight entropy-coded (codes + frequency table + scales; everything else
  at its dtype's width).

A model whose :class:`PretrainedModel` sets ``reestimate_bn`` (the full-data ResNet-20) has its
BatchNorm statistics re-estimated before every evaluation, the unprojected model's too, on that
many training batches augmented as the run trained; the accuracy with the running statistics is
kept beside it (``running_bn_accuracy``).

Every measured point is cached in ``<out>/points.csv`` (default ``runs/pretrained/report/``) and
skipped when the script runs again, so an interrupted sweep resumes where it stopped;
``--retry-failed`` measures the failed points again. The script then writes
``experiments/pretrained/results.csv``, one accuracy-against-bits figure per model and
``experiments/PRETRAINED.md``; ``--report-only`` only writes those from the cache. Data is read
like ``momos train`` reads it (the run's own config; ``$MOMOS_DATA`` or ``--data-dir``), never
downloaded. One thread; a model whose run has no ``final.safetensors`` yet is skipped. What the
report says of each run (model, data, epochs, accuracy) is kept in ``pretrained/runs.json``, so
it can be written again without the run folders.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import rtn

BLOCK_SIZES = (2, 4, 8)
CAPACITIES = (0.001, 0.01, 0.05)
PARAMETER_SETS = ("all", "matrices")
# variant -> (MoMosConfig fields, use calibration images)
VARIANTS = {
    "plain": ({"normalize": "none", "motif_method": "sample"}, False),
    "tensor": ({"normalize": "tensor", "motif_method": "sample"}, False),
    "channel": ({"normalize": "channel", "motif_method": "sample"}, False),
    "channel+calib": ({"normalize": "channel", "motif_method": "sample"}, True),
    "channel+calib+kmeans": ({"normalize": "channel", "motif_method": "kmeans"}, True),
}


@dataclass(frozen=True)
class PretrainedModel:
    """How one pretrained run (``runs/pretrained/<name>``) is measured."""

    eval_images: int | None = None       # test images evaluated (None: the whole official test split)
    reestimate_bn: int = 0               # training batches of 64 to re-estimate BatchNorm on
    variants: tuple[str, ...] = tuple(VARIANTS)
    note: str = ""                       # a sentence for the model's section


MODELS = {
    "mlp-fashion-mnist": PretrainedModel(),
    "vit-fashion-mnist": PretrainedModel(2000),
    "resnet20-cifar10": PretrainedModel(2000, note=(
        "Evaluated with the BatchNorm running statistics of the unprojected network, which a projection "
        "or rounding leaves stale; `resnet20-cifar10-full` below re-estimates them.")),
    # the baseline of the full-data ResNet-20 sweep (pretrain.sh copies it); fewer variants, since
    # every point costs a re-estimation and a second evaluation
    "resnet20-cifar10-full": PretrainedModel(2000, reestimate_bn=40,
                                             variants=("plain", "channel", "channel+calib+kmeans")),
}
RTN_BITS = (2, 3, 4, 8)
RTN_GRANULARITIES = ("per-tensor", "per-channel")
SEED = 0                        # MoMos motif draws
SUBSET_SEED = 0                 # the evaluated test subset
CALIBRATION_SEED = 0            # the calibration images, drawn from the training split
CALIBRATION_IMAGES, CALIBRATION_BATCH = 256, 64
BN_BATCH = 64                   # the BatchNorm re-estimation's batches, seeded like the calibration images
TARGET_MAX_BITS = 4.0           # the target check looks at per-channel RTN points up to this

COLUMNS = ("model", "method", "variant", "s", "capacity", "rtn_bits", "parameters", "bits_per_weight",
           "test_accuracy", "eval_images", "projection_seconds", "max_relative_error", "num_motifs",
           "roundtrip_exact", "point_seconds", "error", "running_bn_accuracy")
KEY = ("model", "method", "variant", "s", "capacity", "rtn_bits", "parameters")
FLOATS = ("capacity", "bits_per_weight", "test_accuracy", "projection_seconds", "max_relative_error",
          "point_seconds", "running_bn_accuracy")
INTS = ("s", "rtn_bits", "eval_images", "num_motifs")
STRINGS = ("model", "method", "variant", "parameters", "error")


# --- the grid ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One measurement: the unprojected model, an RTN setting or a MoMos setting."""

    model: str
    method: str                  # "pretrained", "rtn" or "momos"
    variant: str = ""            # a VARIANTS name, or "per-tensor" / "per-channel" for RTN
    s: int | None = None
    capacity: float | None = None
    rtn_bits: int | None = None
    parameters: str = ""

    def key(self) -> tuple:
        return key_of(asdict(self))

    def label(self) -> str:
        if self.method == "momos":
            return f"momos {self.variant} {self.parameters} s={self.s} c={self.capacity:g}"
        if self.method == "rtn":
            return f"rtn int{self.rtn_bits} {self.variant} {self.parameters}"
        return "pretrained"


def key_of(row: dict) -> tuple:
    """The identity of a point (a CSV row or a :class:`Point`), types normalized."""
    return tuple("" if row.get(k) is None else str(row[k]) for k in KEY)


def grid(model: str) -> list[Point]:
    """Every point of one model, cheap ones first."""
    variants = MODELS[model].variants if model in MODELS else tuple(VARIANTS)
    points = [Point(model, "pretrained")]
    points += [Point(model, "rtn", g, rtn_bits=b, parameters=p)
               for p in PARAMETER_SETS for g in RTN_GRANULARITIES for b in RTN_BITS]
    points += [Point(model, "momos", v, s=s, capacity=c, parameters=p)
               for v in variants for p in PARAMETER_SETS for s in BLOCK_SIZES for c in CAPACITIES]
    return points


# --- the cache ---------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict]:
    """The rows of a points CSV, numbers parsed, empty cells None; a missing file: no rows."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [parse_row(row) for row in csv.DictReader(f)]


def parse_row(row: dict) -> dict:
    parsed = {c: (row.get(c) if row.get(c) not in ("", None) else None) for c in COLUMNS}
    for c in STRINGS:
        parsed[c] = parsed[c] or ""
    for c in FLOATS:
        parsed[c] = float(parsed[c]) if parsed[c] is not None else None
    for c in INTS:
        parsed[c] = int(float(parsed[c])) if parsed[c] is not None else None
    if parsed["roundtrip_exact"] is not None:
        parsed["roundtrip_exact"] = parsed["roundtrip_exact"] == "True"
    return parsed


def write_rows(rows: list[dict], path: Path) -> None:
    from momos.io import write_bytes_atomic

    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row[c] for c in COLUMNS} for row in rows)
    write_bytes_atomic(out.getvalue().encode(), path)


def failed(row: dict) -> bool:
    return bool(row["error"])


# --- the pretrained model and its data ---------------------------------------------------------

@dataclass
class Setup:
    """A pretrained model with the images it is evaluated and calibrated on."""

    name: str
    model: object                # torch.nn.Module, eval mode
    data: object                 # momos.data.Dataset
    test: object                 # the evaluated ImageSplit
    calibration: list            # input batches
    num_parameters: int
    bn_inputs: list              # input batches to re-estimate BatchNorm on before evaluating; [] keeps it


def load_setup(run_dir: Path, spec: PretrainedModel, data_dir: str | None) -> Setup:
    """The run's final model, its test images (all, or a seeded subset), calibration batches and
    BatchNorm batches, the data built as ``momos train`` builds it from the run's config."""
    import torch
    from momos.data import batches, load_dataset, random_subset
    from momos.runfolder import load_model, read_config

    config = read_config(run_dir)
    data = load_dataset(config.dataset, data_dir or config.data_dir, val_fraction=config.val_fraction,
                        split_seed=config.split_seed, download=False)
    if config.train_subset is not None:
        data.train = random_subset(data.train, config.train_subset, seed=config.split_seed)
    test = data.test
    if spec.eval_images is not None and spec.eval_images < len(test):
        test = random_subset(test, spec.eval_images, seed=SUBSET_SEED)
    images = random_subset(data.train, CALIBRATION_IMAGES, seed=CALIBRATION_SEED)
    calibration = [x for x, _ in batches(images, data.info, CALIBRATION_BATCH)]
    # augmented as the run trained: the weights expect the statistics of those images (a padded
    # crop shifts them), and plain ones cost the unprojected ResNet-20 about 4 points
    shuffled = batches(data.train, data.info, BN_BATCH, generator=torch.Generator().manual_seed(CALIBRATION_SEED),
                       augment=config.augment, randaugment=config.randaugment)
    bn_inputs = [x for x, _ in itertools.islice(shuffled, spec.reestimate_bn)]
    model = load_model(run_dir, "final")
    return Setup(run_dir.name, model, data, test, calibration, sum(p.numel() for p in model.parameters()),
                 bn_inputs)


def accuracy(model, setup: Setup) -> float:
    from momos.train import evaluate

    return evaluate(model, setup.test, setup.data)[1]


def evaluated(model, setup: Setup) -> dict:
    """``test_accuracy`` of ``model``; with ``setup.bn_inputs``, after re-estimating its BatchNorm
    statistics on them (``model`` changes), and the accuracy before (``running_bn_accuracy``)."""
    import momos

    if not setup.bn_inputs:
        return {"test_accuracy": accuracy(model, setup)}
    running = accuracy(model, setup)
    momos.reestimate_batchnorm_(model, setup.bn_inputs)
    return {"test_accuracy": accuracy(model, setup), "running_bn_accuracy": running}


# --- measurements ------------------------------------------------------------------------------

def measure(point: Point, setup: Setup, folder: Path) -> dict:
    """One row; a ValueError (a refused projection, a file that cannot be written) is recorded
    in ``error`` instead of raised."""
    start = time.perf_counter()
    row = {**asdict(point), "eval_images": len(setup.test), "error": ""}
    try:
        if point.method == "pretrained":
            row.update(measure_pretrained(setup))
        elif point.method == "rtn":
            row.update(measure_rtn(point, setup))
        else:
            row.update(measure_momos(point, setup, folder))
    except ValueError as error:
        row["error"] = " ".join(str(error).split())
    row["point_seconds"] = time.perf_counter() - start
    return row


def measure_pretrained(setup: Setup) -> dict:
    state = setup.model.state_dict()
    return {**evaluated(copy.deepcopy(setup.model), setup),
            "bits_per_weight": rtn.bits_per_weight(state, {}, setup.num_parameters)}


def selected(model, parameters: str) -> list[tuple[str, object]]:
    """The tensors MoMos would project with ``parameters`` (``momos.select_parameters``)."""
    import momos

    return momos.select_parameters(model, momos.MoMosConfig(capacity=1.0, parameters=parameters))


def measure_rtn(point: Point, setup: Setup) -> dict:
    import torch

    model = copy.deepcopy(setup.model)
    start = time.perf_counter()
    tensors = selected(model, point.parameters)
    values, sizes = rtn.quantize_all(tensors, point.rtn_bits, point.variant == "per-channel")
    errors = {name: relative_error(values[name], p.detach()) for name, p in tensors}
    with torch.no_grad():
        for name, p in tensors:
            p.copy_(values[name])
    seconds = time.perf_counter() - start
    bits = rtn.bits_per_weight(model.state_dict(), sizes, setup.num_parameters)
    return {**evaluated(model, setup), "projection_seconds": seconds, "max_relative_error": max(errors.values()),
            "bits_per_weight": bits}


def relative_error(new, old) -> float:
    norm = float(old.double().norm())
    diff = float((new.double() - old.double()).norm())
    return diff / norm if norm > 0 else diff


def momos_config(point: Point):
    import momos

    fields, _ = VARIANTS[point.variant]
    return momos.MoMosConfig(block_size=point.s, capacity=point.capacity, force_zero=True, seed=SEED,
                             parameters=point.parameters, **fields)


def measure_momos(point: Point, setup: Setup, folder: Path) -> dict:
    """Project a copy, write it as a ``.momos`` file, read the file back into a fresh copy and
    evaluate that."""
    import momos

    config = momos_config(point)
    calibration = setup.calibration if VARIANTS[point.variant][1] else None
    model = copy.deepcopy(setup.model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # project_ warns about large relative errors; we record them
        stats = stage("project", lambda: momos.project_(model, config, calibration=calibration))
    seconds = time.perf_counter() - start
    path = folder / "point.momos"
    extra = {"scales": stats.scales} if stats.scales is not None else {}
    stage("save", lambda: momos.save(model, path, config, **extra))
    size = path.stat().st_size
    loaded = stage("load", lambda: momos.load(path, copy.deepcopy(setup.model)))
    path.unlink()
    exact = same_state(loaded, model)
    return {**evaluated(loaded, setup), "projection_seconds": seconds,
            "max_relative_error": max(stats.relative_errors.values()), "num_motifs": stats.num_motifs,
            "roundtrip_exact": exact, "bits_per_weight": 8 * size / setup.num_parameters}


def stage(name: str, action):
    """``action()``, its ValueError prefixed with the stage that raised it."""
    try:
        return action()
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def same_state(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def sweep(setup: Setup, points: list[Point], cache: Path, *, retry_failed: bool) -> None:
    """Measure the points missing from the cache, rewriting it after every point."""
    rows = read_rows(cache)
    if retry_failed:
        rows = [r for r in rows if not (r["model"] == setup.name and failed(r))]
    done = {key_of(r) for r in rows}
    todo = [p for p in points if p.key() not in done]
    print(f"{setup.name}: {len(points) - len(todo)} of {len(points)} points cached, measuring {len(todo)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="momos-pretrained-") as folder:
        for i, point in enumerate(todo, 1):
            row = measure(point, setup, Path(folder))
            rows.append(row)
            write_rows(rows, cache)
            print(f"  [{i}/{len(todo)}] {point.label()}: {describe(row)}", flush=True)


def describe(row: dict) -> str:
    if failed(row):
        return f"FAILED ({row['error'][:120]})  {row['point_seconds']:.1f} s"
    return (f"acc {row['test_accuracy']:.4f}  {row['bits_per_weight']:.3f} b/w  "
            f"{row['point_seconds']:.1f} s")


# --- the target check --------------------------------------------------------------------------

def target_check(rows: list[dict], model: str, max_bits: float = TARGET_MAX_BITS,
                 granularity: str = "per-channel") -> list[dict]:
    """For each measured RTN point of ``model`` (``granularity``, per channel for the target) with
    at most ``max_bits`` bits per weight: the most accurate MoMos point (any variant, parameter
    set, s, capacity) with no more bits per weight, and the accuracy difference MoMos − RTN
    (None when no MoMos point fits)."""
    ok = [r for r in rows if r["model"] == model and not failed(r) and r["test_accuracy"] is not None]
    momos_rows = [r for r in ok if r["method"] == "momos"]
    checks = []
    baselines = [r for r in ok if r["method"] == "rtn" and r["variant"] == granularity
                 and r["bits_per_weight"] <= max_bits]
    for base in sorted(baselines, key=lambda r: (r["bits_per_weight"], r["parameters"])):
        fitting = [r for r in momos_rows if r["bits_per_weight"] <= base["bits_per_weight"]]
        best = max(fitting, key=lambda r: (r["test_accuracy"], -r["bits_per_weight"]), default=None)
        diff = None if best is None else best["test_accuracy"] - base["test_accuracy"]
        matching = min((r for r in momos_rows if r["test_accuracy"] >= base["test_accuracy"]),
                       key=lambda r: (r["bits_per_weight"], -r["test_accuracy"]), default=None)
        checks.append({"rtn": base, "momos": best, "difference": diff, "cheapest_matching": matching})
    return checks


def target_verdict(checks: list[dict]) -> tuple[str, float | None, dict | None]:
    """``(outcome, margin, deciding check)`` over the checks that have a MoMos point to compare:
    "met" when MoMos is at least as accurate at every one (margin: the smallest difference),
    "not met" otherwise (margin: the largest shortfall); "not tested" when none can be compared.
    An RTN point below the bits of every MoMos point is left out (and named by :func:`verdict_line`)."""
    compared = [c for c in checks if c["difference"] is not None]
    if not compared:
        return "not tested", None, None
    worst = min(compared, key=lambda c: c["difference"])
    return ("met" if worst["difference"] >= 0 else "not met"), worst["difference"], worst


def verdict_line(model: str, checks: list[dict], standard_error: float | None = None,
                 chance: float | None = None) -> str:
    """The verdict as one Markdown bullet; ``standard_error``: of one accuracy on the evaluated
    images, to say whether a difference is within evaluation noise; ``chance``: the accuracy of
    guessing, to name the comparisons where both models are below twice that (near chance)."""
    outcome, margin, worst = target_verdict(checks)
    uncompared = [c["rtn"] for c in checks if c["difference"] is None]
    if outcome == "not tested":
        line = (f"- **{model}: not tested**: no per-channel RTN point of ≤ {TARGET_MAX_BITS:g} bits per "
                "weight with a MoMos point at or below its bits was measured.")
    else:
        compared = len(checks) - len(uncompared)
        beaten = sum(c["difference"] is not None and c["difference"] >= 0 for c in checks)
        how = "smallest margin" if outcome == "met" else "short by"
        line = (f"- **{model}: {outcome}**: MoMos is at least as accurate at {beaten} of {compared} "
                f"per-channel RTN points of ≤ {TARGET_MAX_BITS:g} bits per weight; {how} "
                f"{abs(margin) * 100:.2f} points (at {rtn_name(worst['rtn'])}, "
                f"{worst['rtn']['bits_per_weight']:.2f} b/w: MoMos {worst['momos']['test_accuracy']:.4f} "
                f"with {worst['momos']['bits_per_weight']:.2f} b/w, RTN {worst['rtn']['test_accuracy']:.4f}).")
    near = [c for c in checks if chance is not None and c["difference"] is not None
            and max(c["rtn"]["test_accuracy"], c["momos"]["test_accuracy"]) < 2 * chance]
    if near:
        line += (f" {len(near)} of these compare models near chance (both below {2 * chance:.2f}, twice the "
                 f"{chance:.2f} of guessing): " + ", ".join(rtn_name(c["rtn"]) for c in near) + ".")
    if uncompared:
        line += (" Not compared, no MoMos point at so few bits: "
                 + ", ".join(f"{rtn_name(r)} ({r['bits_per_weight']:.2f} b/w, accuracy {r['test_accuracy']:.4f})"
                             for r in uncompared) + ".")
    if standard_error is not None and outcome != "not tested":
        line += f" Standard error of one accuracy on these images: {standard_error * 100:.2f} points."
    return line


def standard_error(rows: list[dict], model: str) -> float | None:
    """The binomial standard error of the pretrained accuracy on the evaluated images."""
    base = next((r for r in rows if r["model"] == model and r["method"] == "pretrained" and not failed(r)), None)
    if base is None:
        return None
    p = base["test_accuracy"]
    return math.sqrt(p * (1 - p) / base["eval_images"])


def rtn_name(row: dict) -> str:
    return f"int{row['rtn_bits']} {row['variant']} ({row['parameters']})"


def momos_name(row: dict) -> str:
    return f"{row['variant']} ({row['parameters']}) s={row['s']} c={row['capacity']:g}"


def point_name(row: dict) -> str:
    if row["method"] == "momos":
        return momos_name(row)
    return rtn_name(row) if row["method"] == "rtn" else row["method"]


# --- tables ------------------------------------------------------------------------------------

def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if failed(row):
        return "failed"
    return f"{row['test_accuracy']:.4f} @ {row['bits_per_weight']:.2f}"


def momos_table(rows: list[dict]) -> list[str]:
    """Variants x parameter sets down, (s, capacity) across; cells ``accuracy @ bits per weight``."""
    found = {key_of(r): r for r in rows}
    settings = [(s, c) for s in BLOCK_SIZES for c in CAPACITIES]
    lines = ["| variant | parameters | " + " | ".join(f"s={s} c={c:g}" for s, c in settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    model = rows[0]["model"] if rows else ""
    for variant in MODELS[model].variants if model in MODELS else VARIANTS:
        for parameters in PARAMETER_SETS:
            cells = [cell(found.get(Point(model, "momos", variant, s, c, None, parameters).key()))
                     for s, c in settings]
            lines.append(f"| {variant} | {parameters} | " + " | ".join(cells) + " |")
    return lines


def rtn_table(rows: list[dict]) -> list[str]:
    found = {key_of(r): r for r in rows}
    model = rows[0]["model"] if rows else ""
    lines = ["| RTN | parameters | " + " | ".join(f"int{b}" for b in RTN_BITS) + " |",
             "|---|---|" + "---|" * len(RTN_BITS)]
    for granularity in RTN_GRANULARITIES:
        for parameters in PARAMETER_SETS:
            cells = [cell(found.get(Point(model, "rtn", granularity, rtn_bits=b, parameters=parameters).key()))
                     for b in RTN_BITS]
            lines.append(f"| {granularity} | {parameters} | " + " | ".join(cells) + " |")
    return lines


def check_table(checks: list[dict]) -> list[str]:
    """One line per check; the last column, the cheapest MoMos point at least as accurate as the
    RTN point (whatever its bits), tells how many bits MoMos needs to match it."""
    lines = ["| RTN | b/w | RTN accuracy | best MoMos at ≤ those b/w | its b/w | its accuracy "
             "| MoMos − RTN | cheapest MoMos point as accurate (accuracy @ b/w) |", "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        base, best = c["rtn"], c["momos"]
        lines.append(f"| {rtn_name(base)} | {base['bits_per_weight']:.2f} | {base['test_accuracy']:.4f} | "
                     + (f"{momos_name(best)} | {best['bits_per_weight']:.2f} | {best['test_accuracy']:.4f} | "
                        f"{c['difference'] * 100:+.2f} points |" if best else "none | - | - | - |")
                     + f" {matching_cell(c.get('cheapest_matching'))} |")
    return lines


def matching_cell(row: dict | None) -> str:
    return "none" if row is None else f"{momos_name(row)}: {cell(row)}"


def failure_lines(rows: list[dict], shown: int = 5) -> list[str]:
    """The distinct failure messages (numbers in them vary; the first of each kind is shown)."""
    bad = [r for r in rows if failed(r)]
    if not bad:
        return []
    kinds: dict[str, list[dict]] = {}
    for r in bad:
        kinds.setdefault(_message_kind(r["error"]), []).append(r)
    lines = [f"{len(bad)} points failed (recorded, not measured):", ""]
    for group in list(kinds.values())[:shown]:
        first = group[0]
        lines.append(f"- {len(group)} × e.g. {point_name(first)}: `{first['error'][:300]}`")
    return lines + [""]


def roundtrip_lines(rows: list[dict]) -> list[str]:
    """A warning when a ``.momos`` file did not load back to the projected model bit for bit."""
    inexact = [r for r in rows if r["roundtrip_exact"] is False]
    if not inexact:
        return []
    return [f"{len(inexact)} MoMos points did not load back from their `.momos` file bit for bit (e.g. "
            f"{momos_name(inexact[0])}); their accuracy is that of the model read from the file.", ""]


def _message_kind(message: str) -> str:
    return "".join("#" if ch.isdigit() else ch for ch in message.split("'")[0])[:80]


# --- the figure --------------------------------------------------------------------------------

MARKERS = {"plain": "o", "tensor": "s", "channel": "^", "channel+calib": "D", "channel+calib+kmeans": "*"}


def plot_model(rows: list[dict], pretrained: dict | None, path: Path) -> None:
    """Test accuracy against bits per weight (log scale), twice: every point, and zoomed to within
    :data:`ZOOM_POINTS` of the pretrained accuracy. MoMos points are markers (filled: all
    parameters, hollow: matrices only) with a line along each variant's best points; RTN is
    lines; the pretrained accuracy a horizontal line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from momos.io import write_bytes_atomic

    ok = [r for r in rows if not failed(r) and r["test_accuracy"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    for ax in axes:
        draw_points(ax, ok, pretrained)
    xs = [r["bits_per_weight"] for r in ok if r["method"] != "pretrained"]
    for ax in axes:
        style_axis(ax, xs, ok[0]["eval_images"] if ok else None)
    if pretrained is not None and not failed(pretrained):
        low = pretrained["test_accuracy"] - ZOOM_POINTS / 100
        axes[1].set_ylim(low, pretrained["test_accuracy"] + 0.01)
        near = [r["bits_per_weight"] for r in ok if r["method"] != "pretrained" and r["test_accuracy"] >= low]
        if near:
            axes[1].set_xlim(min(near) / 1.25, max(near) * 1.25)
    model = rows[0]["model"] if rows else ""
    axes[0].set_title(f"{model}: post-training, no fine-tuning")
    axes[1].set_title(f"zoom: within {ZOOM_POINTS:g} points of the pretrained accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), path)


ZOOM_POINTS = 10


def draw_points(ax, ok: list[dict], pretrained: dict | None) -> None:
    import matplotlib.pyplot as plt

    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for variant in VARIANTS:
        mine = [r for r in ok if r["method"] == "momos" and r["variant"] == variant]
        for parameters, face in (("all", colors[variant]), ("matrices", "none")):
            pts = [r for r in mine if r["parameters"] == parameters]
            ax.scatter([r["bits_per_weight"] for r in pts], [r["test_accuracy"] for r in pts], s=36,
                       marker=MARKERS[variant], facecolors=face, edgecolors=colors[variant], linewidths=1.2,
                       label=f"MoMos {variant} ({parameters})" if pts else None, zorder=3)
        front = pareto(mine)
        if front:
            ax.plot(*zip(*[(r["bits_per_weight"], r["test_accuracy"]) for r in front]), color=colors[variant],
                    linewidth=1, alpha=0.7)
    for granularity, color in (("per-tensor", "gray"), ("per-channel", "black")):
        for parameters, style in (("all", "-"), ("matrices", "--")):
            pts = sorted((r for r in ok if r["method"] == "rtn" and r["variant"] == granularity
                          and r["parameters"] == parameters), key=lambda r: r["bits_per_weight"])
            if pts:
                ax.plot([r["bits_per_weight"] for r in pts], [r["test_accuracy"] for r in pts], style,
                        color=color, marker="x", label=f"RTN {granularity} ({parameters})")
    if pretrained is not None and not failed(pretrained):
        ax.axhline(pretrained["test_accuracy"], color="red", linestyle=":",
                   label=f"pretrained float32 ({pretrained['test_accuracy']:.4f})")


def style_axis(ax, xs: list[float], eval_images: int | None) -> None:
    """Log x axis with plain-number ticks at powers of two and 1.5 times them."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(m * 2.0 ** e for e in range(-6, 6) for m in (1, 1.5))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if xs:
        ax.set_xlim(min(xs) / 1.25, max(xs) * 1.25)
    ax.set_xlabel("bits per weight of the whole model (log scale)")
    ax.set_ylabel(f"test accuracy ({eval_images} test images)")
    ax.grid(alpha=0.3)


def pareto(rows: list[dict]) -> list[dict]:
    """The points no other point beats with fewer or equal bits, ordered by bits."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r["bits_per_weight"], -r["test_accuracy"])):
        if r["test_accuracy"] > best:
            front.append(r)
            best = r["test_accuracy"]
    return front


# --- the document ------------------------------------------------------------------------------

def expected_points(model: str) -> int:
    return len(grid(model))


def chance(runs: Path, model: str) -> float | None:
    """1 / the number of classes of the run's data set."""
    from momos.data import INFOS

    summary = run_summary(runs, model)
    return 1 / INFOS[summary["dataset"]].num_classes if summary else None


RUNS = HERE / "runs.json"       # the summaries of the measured runs, for a report without their folders


def run_summary(runs: Path, model: str) -> dict | None:
    """What the report says of the pretrained run: from its folder, else as last recorded in :data:`RUNS`."""
    path = runs / model / "results.json"
    if path.is_file():
        results = json.loads(path.read_text())
        return {"model": results["config"]["model"], "dataset": results["config"]["dataset"],
                "epochs": results["summary"]["epochs_done"], "parameters": results["model"]["parameters"],
                "test_accuracy": results["summary"]["test_acc"], "test_images": results["data"]["test"]}
    return json.loads(RUNS.read_text()).get(model) if RUNS.is_file() else None


def model_section(model: str, rows: list[dict], runs: Path) -> list[str]:
    mine = [r for r in rows if r["model"] == model]
    pretrained = next((r for r in mine if r["method"] == "pretrained"), None)
    summary = run_summary(runs, model)
    lines = [f"## {model}", ""]
    if summary:
        lines.append(f"{summary['model']} on {summary['dataset']}, trained {summary['epochs']} epochs "
                     f"(`momos train --method baseline`, {summary['parameters']:,} parameter values); "
                     f"test accuracy at the end of training {summary['test_accuracy']:.4f} on all "
                     f"{summary['test_images']:,} test images.")
        lines.append("")
    if MODELS[model].note:
        lines += [MODELS[model].note, ""]
    if pretrained is None:
        return lines + ["", "Not measured yet.", ""]
    n = pretrained["eval_images"]
    se = standard_error(rows, model) or 0.0
    per_tensor = target_check(rows, model, granularity="per-tensor")
    measured = [r for r in mine if r["method"] != "pretrained"]
    lines += [f"Pretrained (unprojected) accuracy here: **{pretrained['test_accuracy']:.4f}** on {n:,} test "
              f"images{' (a fixed seeded subset)' if summary and n < summary['test_images'] else ''}, "
              f"{pretrained['bits_per_weight']:.2f} bits per weight as float32 (binomial standard error of an "
              f"accuracy near it: {se * 100:.2f} points; every point below is evaluated on the same images).",
              "",
              f"Points measured: {len(mine)} of {expected_points(model)} ({sum(failed(r) for r in mine)} failed); "
              f"measurement time {sum(r['point_seconds'] or 0 for r in mine) / 60:.1f} min (sum over points: "
              f"projection or quantization, `.momos` file write and read, evaluation); slowest projection "
              f"{max((r['projection_seconds'] or 0 for r in measured), default=0):.1f} s.",
              "",
              *batchnorm_lines(mine, MODELS[model].reestimate_bn),
              f"![accuracy against bits per weight](pretrained/{model}.png)",
              "",
              "MoMos, test accuracy @ bits per weight (`.momos` file size):",
              "",
              *momos_table(mine),
              "",
              "Round-to-nearest, test accuracy @ bits per weight (entropy-coded):",
              "",
              *rtn_table(mine),
              "",
              *failure_lines(mine),
              *roundtrip_lines(mine),
              f"Target check (per-channel RTN points of ≤ {TARGET_MAX_BITS:g} bits per weight):",
              "",
              *check_table(target_check(rows, model)),
              "",
              f"For reference, not part of the target: the same comparison with per-tensor RTN "
              f"({target_verdict(per_tensor)[0]} by the same rule).",
              "",
              *check_table(per_tensor),
              ""]
    return lines


def batchnorm_lines(rows: list[dict], batches: int) -> list[str]:
    """What re-estimating the BatchNorm statistics changed, where the model's points did."""
    if not batches:
        return []
    changes = {method: [100 * (r["test_accuracy"] - r["running_bn_accuracy"]) for r in rows
                        if r["method"] == method and not failed(r) and r["running_bn_accuracy"] is not None]
               for method in ("pretrained", "momos", "rtn")}

    def spread(values: list[float]) -> str:
        if len(values) < 2:
            return f"{values[0]:+.2f} points" if values else "not measured"
        return f"median {statistics.median(values):+.2f} points (from {min(values):+.2f} to {max(values):+.2f})"

    return [f"Every point here, the unprojected model included, is evaluated after re-estimating its BatchNorm "
            f"statistics (`momos.reestimate_batchnorm_`) on {batches} training batches of {BN_BATCH}, augmented "
            f"as the network was trained (a fixed seeded draw); a projection or a rounding leaves the running "
            f"statistics of the weights before it. Accuracy gained by the re-estimation over the running statistics: unprojected "
            f"{spread(changes['pretrained'])}; MoMos {spread(changes['momos'])}; RTN {spread(changes['rtn'])}.", ""]


def coverage_note(rows: list[dict], model: str) -> str:
    """A sentence saying how much of the model's grid is measured, empty when all of it is."""
    measured = {key_of(r) for r in rows if r["model"] == model}
    expected = {p.key() for p in grid(model)}
    done = len(measured & expected)
    return "" if done == len(expected) else f" Measured so far: {done} of {len(expected)} points."


def document(rows: list[dict], runs: Path, models: list[str]) -> str:
    verdicts = [verdict_line(m, target_check(rows, m), standard_error(rows, m), chance(runs, m))
                + coverage_note(rows, m) for m in models]
    lines = [
        "# MoMos on pretrained networks: post-training projection, no fine-tuning",
        "",
        "Generated by `python experiments/pretrained/make_report.py` from the measured points in",
        "[`pretrained/results.csv`](pretrained/results.csv) and the runs' summaries in",
        "[`pretrained/runs.json`](pretrained/runs.json); no number here is typed by hand. The networks",
        "were trained without MoMos by `experiments/pretrained/pretrain.sh` (`resnet20-cifar10-full`: the",
        "baseline of the full-data ResNet-20 sweep, 60 epochs, which it copies); each is then projected once",
        "(`momos.project_` on a copy, seed 0, `force_zero=True`) or rounded to nearest, and evaluated",
        "as it is: **no fine-tuning, no retraining**. One motif draw per setting (seed 0), so single",
        "points carry the luck of that draw.",
        "",
        "- **Bits per weight** are of the whole model over its parameter values. MoMos: 8 × the size",
        "  of the `.momos` file `momos.save` writes (motifs, indices, scales, every unprojected",
        "  parameter and buffer, header); its accuracy is measured on the model read back from that",
        "  file. RTN: an entropy-coding estimate, not a written file: per quantized tensor `n × H(codes)`",
        "  + a `2^b`-entry table of 32-bit counts + 32-bit scales, every other value at its dtype's",
        "  width. The estimate has no container overhead, so the comparison leans slightly towards RTN.",
        "- **MoMos variants**: `plain` is the paper's (raw weights, random motifs); `tensor` / `channel`",
        "  divide each tensor / output channel by a power-of-two scale first; `+calib` weighs the",
        f"  nearest-motif search by the input statistics of {CALIBRATION_IMAGES} training images (a fixed",
        "  seeded draw); `+kmeans` refines the motifs with Lloyd iterations. `parameters`: `all` (every",
        "  parameter) or `matrices` (tensors of two or more dimensions; biases and norms stay float32).",
        "- **RTN**: symmetric int2/3/4/8 (`±(2^(b−1)−1)` levels, scale = absmax / `(2^(b−1)−1)`), per",
        "  tensor or per output channel, on the same tensors (`momos.select_parameters`).",
        "- **Evaluation**: the MLP on the whole official test split; the ViT and ResNet-20 on a fixed",
        f"  seeded subset of {MODELS['resnet20-cifar10'].eval_images:,} test images (seed {SUBSET_SEED}) to keep the CPU",
        "  time feasible; the unprojected model on the same images. The BatchNorm statistics of",
        "  `resnet20-cifar10-full` are re-estimated before every evaluation (its section says how).",
        "- **Times**: projection seconds are the wall time of `momos.project_` (calibration passes",
        f"  included), on one thread of a {os.cpu_count()}-core {platform.machine()} CPU that other jobs",
        "  shared while the points were measured (the pretraining runs), so they are upper bounds.",
        "",
        "## Target check",
        "",
        f"Target: at every per-channel RTN point of at most {TARGET_MAX_BITS:g} bits per weight, the best MoMos",
        "point (any variant, parameter set, s, capacity) with no more bits per weight is at least as",
        "accurate. Differences are in accuracy points (MoMos − RTN). An RTN point below the bits of",
        "every MoMos point of the grid cannot be compared; it is named, not counted.",
        "",
        *verdicts,
        "",
    ]
    for model in models:
        lines += model_section(model, rows, runs)
    return "\n".join(lines)


def sort_rows(rows: list[dict]) -> list[dict]:
    order = {key_of(asdict(p)): i for i, p in enumerate(p for m in MODELS for p in grid(m))}
    return sorted(rows, key=lambda r: (order.get(key_of(r), len(order)), key_of(r)))


def write_report(rows: list[dict], runs: Path, models: list[str]) -> None:
    from momos.io import write_bytes_atomic

    rows = sort_rows(rows)
    write_rows(rows, HERE / "results.csv")
    summaries = {model: run_summary(runs, model) for model in models}
    write_bytes_atomic((json.dumps({m: v for m, v in summaries.items() if v}, indent=1) + "\n").encode(), RUNS)
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        if mine:
            pretrained = next((r for r in mine if r["method"] == "pretrained"), None)
            plot_model(mine, pretrained, HERE / f"{model}.png")
    write_bytes_atomic(document(rows, runs, models).encode(), HERE.parent / "PRETRAINED.md")
    print(f"{len(rows)} points -> {HERE.parent / 'PRETRAINED.md'}", flush=True)


# --- main --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "pretrained",
                        help="the folder of the pretrained runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pretrained" / "report",
                        help="where the cache of measured points (points.csv) lives")
    parser.add_argument("--data-dir", default=None, help="default: the run's own, else $MOMOS_DATA")
    parser.add_argument("--report-only", action="store_true", help="write the report from the cache")
    parser.add_argument("--retry-failed", action="store_true", help="measure failed points again")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    cache = args.out / "points.csv"
    if not args.report_only:
        for model in args.models:
            run_dir = args.runs / model
            if not (run_dir / "final.safetensors").is_file():
                print(f"{model}: {run_dir / 'final.safetensors'} does not exist yet; skipped", flush=True)
                continue
            start = time.perf_counter()
            setup = load_setup(run_dir, MODELS[model], args.data_dir)
            sweep(setup, grid(model), cache, retry_failed=args.retry_failed)
            print(f"{model}: sweep done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    rows = read_rows(cache)
    if not rows:
        raise SystemExit(f"no measured points in {cache}; run without --report-only first")
    write_report(rows, args.runs, [m for m in MODELS if any(r["model"] == m for r in rows)])


if __name__ == "__main__":
    main()
