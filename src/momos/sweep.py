"""Grids of training runs: ``momos sweep`` as a library.

    spec = load_spec("experiments/reproduction/mlp.yaml")
    points = expand(spec)                            # every run, checked, nothing written
    outcome = run_sweep(points, "runs/sweeps/demo", jobs=2)
    report = aggregate("runs/sweeps/demo")           # runs.csv, summary.csv/.md, plots/

A spec holds ``fixed`` settings for every run and a ``grid`` of axes (or a list of grids, whose
runs are pooled); every combination of the axes' values is a run. Keys are
:class:`~momos.trainconfig.TrainConfig` field names (``momos`` excepted) and
:class:`~momos.config.MoMosConfig` field names (``seed`` excepted: the run's ``seed`` seeds the
motifs too). An axis whose values are mappings sets several keys per value and is named by
each value's ``name``.

MoMos keys and the projection schedule apply only to the ``momos`` methods, ``qat_bits`` only
to the ``qat`` ones; a run drops the keys its method does not use, and the axes that set only
such keys leave its name, so the baseline is trained once per remaining combination.

Each run is a plain ``momos train`` folder ``<out>/runs/<name>/`` with
``name = "__".join(f"{axis}-{label}")`` over the axes that apply to it, e.g.
``dataset-mnist__method-momos__block_size-2__capacity-0.05__seed-0``. A run whose folder holds
a complete run with the same config is skipped, an interrupted one is resumed, one with another
config is an error (the folder is never overwritten).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from .config import FORMER_NAMES, MoMosConfig
from .io import write_bytes_atomic, write_json_atomic
from .models import check_model_name
from .report import UNSAFE_IN_NAMES, RunRecord, SweepReport, axis_order, load_run, summarize_runs
from .runfolder import RESULTS, STATE, read_results
from .runtime import Runtime, check_precision, default_threads, resolve_device
from .train import check_metric_names, fit, prepare, prepare_resume, work_per_step
from .trainconfig import DEFAULT_MOMOS, MOMOS_OPTIONS, TrainConfig, option_applies

SPEC_KEYS = ("out", "fixed", "grid")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name != "momos")
MOMOS_KEYS = MOMOS_OPTIONS
# Where the data is read from does not change a run.
NOT_COMPARED = ("data_dir", "download", "versions")
SEED_AXIS = "seed"
NAME_KEY = "name"
RUNS, PLAN, ERROR = "runs", "sweep.json", "error.txt"

_SCALARS = (str, int, float, bool, type(None))
_UNSAFE = UNSAFE_IN_NAMES
_FIELD_TYPES = {f.name: str(f.type) for f in (*fields(TrainConfig), *fields(MoMosConfig))}
_TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its folder name, the label of each axis in its name, its config."""

    name: str
    axes: dict[str, str]
    config: TrainConfig


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: run names skipped (already complete), trained, and failed
    with their one-line error."""

    skipped: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


# --- the spec ----------------------------------------------------------------------------------

def load_spec(path: str | os.PathLike) -> dict:
    """The YAML spec in ``path``, as a mapping (checked by :func:`expand`).

    Numbers such as ``1e-3`` are read as floats (YAML 1.2), not as the strings YAML 1.1 makes of them.

    Raises:
        ValueError: the file is unreadable, not YAML, or not a mapping.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                 list("-+0123456789."))
    try:
        spec = yaml.load(Path(path).read_text(), Loader=Loader)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a mapping with keys {', '.join(SPEC_KEYS)}")
    return spec


def expand(spec: dict) -> list[SweepPoint]:
    """Every run of ``spec`` in grid order, duplicates removed, each config built and checked.

    Raises:
        ValueError: an unknown key, a malformed axis, a value no config accepts (naming the run),
            two runs with the same name or the same config.
    """
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r} in the sweep spec; valid keys: {', '.join(SPEC_KEYS)}")
    if spec.get("out") is not None and not isinstance(spec["out"], str):
        raise ValueError(f"out must be a folder name, got {spec['out']!r}")
    fixed = _settings(spec.get("fixed") or {}, "fixed")
    grids = spec.get("grid")
    grids = grids if isinstance(grids, list) else [grids]
    points: dict[str, SweepPoint] = {}
    names_of: dict[TrainConfig, str] = {}
    for number, grid in enumerate(grids):
        where = "grid" if len(grids) == 1 else f"grid {number + 1}"
        axes = _axes(grid, where)
        for choice in itertools.product(*(values for _, values in axes)):
            point = _point(fixed, [(axis, label, settings) for (axis, _), (label, settings) in zip(axes, choice)])
            _add_point(points, names_of, point)
    return list(points.values())


def _add_point(points: dict[str, SweepPoint], names_of: dict[TrainConfig, str], point: SweepPoint) -> None:
    """Keep ``point`` unless the same run is already planned."""
    same_name = points.get(point.name)
    if same_name is not None:
        if same_name.config != point.config:
            raise ValueError(f"two runs of the grid are named {point.name} but differ "
                             f"({'; '.join(config_differences(same_name.config.to_dict(), point.config))}); "
                             f"give their axis values distinct labels")
        return
    same_config = names_of.get(point.config)
    if same_config is not None:
        raise ValueError(f"runs {same_config} and {point.name} have the same config; remove one of the values")
    points[point.name] = point
    names_of[point.config] = point.name


def _settings(mapping, where: str) -> dict:
    """Config keys and values of ``fixed`` or of a mapping axis value, checked."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping of config keys to values, got {mapping!r}")
    settings = {}
    for key, value in mapping.items():
        _check_key(key, where)
        _check_value(key, value, where)
        # A single name where a tuple of names is expected, e.g. ``metrics: lzma``.
        settings[key] = [value] if isinstance(value, str) and _FIELD_TYPES[key].startswith("tuple[str") else value
    return settings


def _check_key(key, where: str) -> None:
    if key in FORMER_NAMES:
        raise ValueError(f"key {key!r} in {where} is now called {FORMER_NAMES[key]!r}")
    if key not in TRAIN_KEYS and key not in MOMOS_KEYS:
        raise ValueError(f"unknown key {key!r} in {where}; valid keys: {', '.join(sorted(TRAIN_KEYS + MOMOS_KEYS))}")


def _check_value(key: str, value, where: str) -> None:
    if isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)):
        return
    raise ValueError(f"{where}: {key} must be a number, a string or a list of them, got {value!r}")


def _axes(grid, where: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """The axes of one grid: ``(axis, [(label, settings) per value])`` in the spec's order."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{where} must be a mapping of axes to lists of values (or a list of such mappings), "
                         f"got {grid!r}")
    axes = []
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: axis {axis!r} must be a non-empty list of values, got {values!r}")
        mappings = sum(isinstance(value, dict) for value in values)
        if mappings and mappings < len(values):
            raise ValueError(f"{where}: axis {axis!r} mixes mappings and plain values")
        choices = [_mapping_value(axis, value, where) for value in values] if mappings else \
            [_plain_value(axis, value, where) for value in values]
        labels = [label for label, _ in choices]
        repeated = next((label for label in labels if labels.count(label) > 1), None)
        if repeated is not None:
            raise ValueError(f"{where}: axis {axis!r} has two values labelled {repeated!r}")
        axes.append((str(axis), choices))
    return axes


def _plain_value(axis, value, where: str) -> tuple[str, dict]:
    settings = _settings({axis: value}, where)
    return _label(axis, value), settings


def _mapping_value(axis, value: dict, where: str) -> tuple[str, dict]:
    name = value.get(NAME_KEY)
    if not isinstance(name, (str, int, float)) or isinstance(name, bool) or str(name) == "":
        raise ValueError(f"{where}: every value of axis {axis!r} needs a `name`, got {value!r}")
    settings = _settings({k: v for k, v in value.items() if k != NAME_KEY}, f"{where}: axis {axis!r} value {name!r}")
    return str(name), settings


def _label(key: str, value) -> str:
    """The text of a value in a run name: ``0.05``, ``3x3`` for a tile shape, ``a+b`` for a list."""
    if isinstance(value, list):
        return ("x" if key == "tile_shape" else "+").join(_label(key, v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def applies(key: str, method: str) -> bool:
    """Whether setting ``key`` changes a run of ``method``: TrainConfig's rule, which refuses the
    keys that do not (the sweep drops them instead)."""
    return option_applies(key, method)


def _point(fixed: dict, chosen: list[tuple[str, str, dict]]) -> SweepPoint:
    """The run of one combination of axis values ``(axis, label, settings)``."""
    merged = dict(fixed)
    for _, _, settings in chosen:
        merged.update(settings)
    method = str(merged.get("method", _TRAIN_DEFAULTS["method"]))
    axes = {axis: label for axis, label, settings in chosen if any(applies(key, method) for key in settings)}
    name = "__".join(_UNSAFE.sub("_", f"{axis}-{label}") for axis, label in axes.items())
    if not name:
        raise ValueError(f"no axis of the grid applies to the {method} run of {merged}; add one (e.g. seed)")
    config = build_config({key: value for key, value in merged.items() if applies(key, method)}, name)
    return SweepPoint(name, axes, config)


def build_config(settings: dict, name: str) -> TrainConfig:
    """The TrainConfig of a run's settings; MoMos keys go into train's default MoMosConfig,
    seeded by the run's seed.

    Raises:
        ValueError: a value the config rejects, or an unknown model or metric (naming the run).
    """
    train_settings = {key: value for key, value in settings.items() if key in TRAIN_KEYS}
    momos_settings = {key: value for key, value in settings.items() if key in MOMOS_KEYS}
    try:
        if momos_settings:
            if "num_motifs" in momos_settings and "capacity" not in momos_settings:
                momos_settings["capacity"] = None   # the default capacity would clash with k
            seed = train_settings.get("seed", _TRAIN_DEFAULTS["seed"])
            train_settings["momos"] = replace(DEFAULT_MOMOS, **momos_settings, seed=seed)
        config = TrainConfig(**train_settings)
        check_model_name(config.model)
        check_metric_names(config.metrics, config.momos)
    except (ValueError, TypeError) as error:
        raise ValueError(f"run {name}: {error}") from None
    return config


# --- the state of the run folders --------------------------------------------------------------

def run_dir(out: str | os.PathLike, name: str) -> Path:
    return Path(out) / RUNS / name


def complete_runs(spec: dict, out: str | os.PathLike | None = None) -> list[tuple[SweepPoint, RunRecord]]:
    """The runs of ``spec``'s grid that are complete in ``out`` (default: the spec's ``out``), in grid order."""
    out = out if out is not None else spec.get("out")
    if out is None:
        raise ValueError("no output folder: give out in the spec or as an argument")
    found = []
    for point in expand(spec):
        if (run_dir(out, point.name) / RESULTS).is_file():
            record = load_run(run_dir(out, point.name))
            if record.results["summary"].get("complete"):
                found.append((point, record))
    return found


def sweep_rows(spec: dict, out: str | os.PathLike, row_of: Callable[[RunRecord, SweepPoint], dict],
               stored: list[dict], select: Callable[[SweepPoint], bool] = lambda point: True) -> list[dict]:
    """One row per complete run of ``spec`` that ``select`` keeps, in grid order: ``row_of(run,
    point)`` where ``out`` holds the complete run, else the row of ``stored`` whose ``"run"`` is
    the point's name (none if there is none).

    Reports keep a long sweep's results in a committed table of such rows, since run folders
    (checkpoints) stay on the machine that trained them: a sweep run in pieces on several machines
    is reported whole, and a run found here again is measured again.
    """
    done = {point.name: run for point, run in complete_runs(spec, out)}
    kept = {row["run"]: row for row in stored}
    rows = []
    for point in filter(select, expand(spec)):
        if point.name in done:
            rows.append(row_of(done[point.name], point))
        elif point.name in kept:
            rows.append(kept[point.name])
    return rows


def select(points: list[SweepPoint], patterns: list[str]) -> list[SweepPoint]:
    """The points whose names match one of the shell-style ``patterns`` (``*``, ``?``, ``[...]``),
    in grid order: a piece of a sweep, e.g. the runs a durable table does not hold yet.

    Raises:
        ValueError: a pattern that matches no run (a typo would otherwise train nothing quietly).
    """
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(p.name, pattern) for p in points):
            raise ValueError(f"{pattern!r} matches none of the {len(points)} runs: "
                             + ", ".join(p.name for p in points))
    return [p for p in points if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]


def plan(points: list[SweepPoint], out: str | os.PathLike) -> dict[str, str]:
    """The state of every run in ``out``: ``done`` (complete), ``partial`` (resumable) or ``new``.

    Raises:
        ValueError: a run folder holds a run with another config, or an unreadable ``results.json``.
    """
    return {point.name: run_status(point, run_dir(out, point.name)) for point in points}


def run_status(point: SweepPoint, folder: Path) -> str:
    path = folder / RESULTS
    if not path.is_file():
        return "new"
    try:
        results = read_results(folder)
        stored, complete = results["config"], results["summary"]["complete"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"run {point.name}: cannot read {path} ({error}); delete {folder} to train it again") from None
    differences = config_differences(stored, point.config)
    if differences:
        raise ValueError(f"run {point.name}: {folder} holds a run with another config ({'; '.join(differences)}); "
                         f"delete the folder to train this one")
    if complete:
        return "done"
    return "partial" if (folder / STATE).is_file() else "new"


def config_differences(stored: dict, config: TrainConfig) -> list[str]:
    """``key: stored value != planned value`` for every differing field (nested as
    ``momos.capacity``), except where the data is read from and the library versions."""
    try:
        stored = TrainConfig.from_dict(stored).to_dict()
    except (ValueError, TypeError) as error:
        return [f"stored config unreadable: {error}"]
    before, after = _flat(stored), _flat(config.to_dict())
    missing = object()
    return [f"{key}: {before.get(key)!r} != {after.get(key)!r}" for key in {**after, **before}
            if key.split(".")[0] not in NOT_COMPARED and before.get(key, missing) != after.get(key, missing)]


def _flat(d: dict) -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# --- running -----------------------------------------------------------------------------------

def run_sweep(spec_or_points: dict | list[SweepPoint], out: str | os.PathLike | None = None, jobs: int = 1,
              threads: int | None = None, data_dir: str | os.PathLike | None = None,
              device: str = "cpu", quiet: bool = False, runtime: Runtime = Runtime(),
              only: list[str] | None = None) -> SweepOutcome:
    """Train every run of the sweep that is not complete in ``out``, ``jobs`` at a time, each in
    its own process on ``threads`` torch threads (default: ``runtime.default_threads`` of each run,
    the cores shared among the jobs), its steps computed as ``runtime`` says (precision,
    channels-last, compile; see ``momos.train.fit``).

    ``out``: default the spec's ``out``. ``data_dir``: where every run reads its data set.
    ``only``: train just the runs :func:`select` picks with these patterns (the plan written to
    ``out`` still lists every run).
    ``device``: where every run trains; ``cuda`` spreads the runs over the GPUs (run ``i`` of
    the ones to train on ``cuda:i mod GPUs``), so ``jobs`` = the number of GPUs keeps one per GPU.
    Everything is checked before anything runs; a run that fails does not stop the others: its
    error is printed and written to its folder's ``error.txt``.

    Raises:
        ValueError: a bad spec or option, or a run folder holding another config.
    """
    points = expand(spec_or_points) if isinstance(spec_or_points, dict) else list(spec_or_points)
    if out is None:
        out = spec_or_points.get("out") if isinstance(spec_or_points, dict) else None
        if out is None:
            raise ValueError("no output folder: give out in the spec or as an argument")
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if data_dir is not None:
        points = [replace(p, config=replace(p.config, data_dir=str(data_dir))) for p in points]
    check_precision(runtime.precision, resolve_device(device))   # fails now, not in every worker
    chosen = select(points, only) if only else points
    statuses = plan(chosen, out)
    write_json_atomic({"runs": [{"name": p.name, "axes": p.axes, "config": p.config.to_dict()} for p in points]},
                      Path(out) / PLAN)
    outcome = SweepOutcome(skipped=[name for name, status in statuses.items() if status == "done"])
    todo = [p for p in chosen if statuses[p.name] != "done"]
    if not quiet:
        resumed = sum(statuses[p.name] == "partial" for p in todo)
        print(f"sweep {out}: {len(chosen)} runs, {len(outcome.skipped)} complete, {resumed} to resume, "
              f"{len(todo) - resumed} to train; {min(jobs, len(todo))} at a time, torch threads per run: "
              f"{threads or 'by run (runtime.default_threads)'}",
              flush=True)
    if todo:
        _run_all(todo, out, statuses, jobs, threads, device, runtime, outcome, quiet=quiet)
    return outcome


def _run_all(todo: list[SweepPoint], out, statuses: dict[str, str], jobs: int, threads: int | None, device: str,
             runtime: Runtime, outcome: SweepOutcome, *, quiet: bool) -> None:
    options = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn"), **options) as pool:
        futures = {}
        for index, point in enumerate(todo):
            folder = run_dir(out, point.name)
            future = pool.submit(train_run, point.config, str(folder), resuming=statuses[point.name] == "partial",
                                 overwrite=(folder / RESULTS).is_file(), threads=threads, jobs=jobs,
                                 device=_device_of_run(device, index), runtime=runtime)
            futures[future] = point
        for count, future in enumerate(as_completed(futures), 1):
            try:
                result = future.result()
            except BrokenProcessPool:
                result = {"error": "the worker process died (killed, or out of memory)", "traceback": ""}
            _record(futures[future], result, run_dir(out, futures[future].name), f"[{count}/{len(todo)}]",
                    outcome, quiet=quiet)


def _record(point: SweepPoint, result: dict, folder: Path, progress: str, outcome: SweepOutcome, *,
            quiet: bool) -> None:
    """Print the outcome of a finished run and keep its error, if any, in ``error.txt``."""
    if "error" in result:
        outcome.failed[point.name] = result["error"]
        write_bytes_atomic(f"{point.name}\n{result['error']}\n\n{result['traceback']}".encode(), folder / ERROR)
        print(f"{progress} FAILED {point.name}: {result['error']}", file=sys.stderr, flush=True)
        return
    outcome.trained.append(point.name)
    (folder / ERROR).unlink(missing_ok=True)
    if not quiet:
        print(f"{progress} {point.name}  test acc {result['test_acc']:.4f}  {result['seconds']:.1f} s", flush=True)


def _device_of_run(device: str, index: int) -> str:
    """``cuda`` without an index: the runs take the GPUs in turn."""
    if device != "cuda":
        return device
    import torch

    return f"cuda:{index % torch.cuda.device_count()}"


def train_run(config: TrainConfig, folder: str, *, resuming: bool, overwrite: bool, threads: int | None,
              jobs: int = 1, device: str = "cpu", runtime: Runtime = Runtime()) -> dict:
    """Train (or resume) one run; ``{"test_acc", "seconds"}``, or ``{"error", "traceback"}``.

    Runs in a worker process: every failure is returned as text, which always crosses back.
    ``overwrite``: the folder holds an unfinished start of this same run without its state.
    ``threads``: torch's threads; None: ``default_threads`` of the run among ``jobs`` processes.
    """
    import torch

    try:
        if resuming:
            run = prepare_resume(folder, device=device, data_dir=config.data_dir)
        else:
            run = prepare(config, folder, overwrite=overwrite, device=device)
        torch.set_num_threads(threads or default_threads(work_per_step(run), sharing=jobs))
        results = fit(run, **asdict(runtime))
    except Exception as error:  # noqa: BLE001 - reported per run; the sweep goes on
        message = " ".join(str(error).split())
        return {"error": f"{type(error).__name__}: {message}", "traceback": traceback.format_exc()}
    return {"test_acc": results["summary"]["test_acc"], "seconds": results["summary"]["wall_seconds"]}


# --- the report --------------------------------------------------------------------------------

def aggregate(out: str | os.PathLike, points: list[SweepPoint] | None = None) -> SweepReport:
    """Collect the runs of the sweep in ``out`` (default: the grid :func:`run_sweep` last
    planned there) and write

    - ``runs.csv``: one row per run (the axis labels, then ``report.compare_rows``, wall seconds);
    - ``summary.csv`` / ``summary.md``: per combination of the axes other than ``seed``, the mean
      and sample standard deviation over the complete runs of test and final validation
      accuracy, simplification factor, least-used-half share, wall seconds and the final value
      of every logged metric;
    - ``plots/<model>_<dataset>.png``: ``report.plot_runs`` over the complete runs of the lowest seed.

    Raises:
        ValueError: no plan in ``out``, or no complete run yet.
    """
    out = Path(out)
    planned = [(p.name, p.axes) for p in points] if points is not None else _planned(out)
    found = [(axes, load_run(run_dir(out, name))) for name, axes in planned if (run_dir(out, name) / RESULTS).is_file()]
    missing = [name for name, _ in planned if not (run_dir(out, name) / RESULTS).is_file()]
    if not any(record.results["summary"].get("complete") for _, record in found):
        raise ValueError(f"no run of the sweep in {out} is complete yet")
    axis_names = axis_order([axes for _, axes in planned])
    return summarize_runs(out, found, axis_names, [a for a in axis_names if a != SEED_AXIS], missing)


def _planned(out: Path) -> list[tuple[str, dict]]:
    try:
        return [(run["name"], run["axes"]) for run in json.loads((out / PLAN).read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{out} holds no sweep plan ({PLAN}: {error}); pass the sweep's spec") from None
