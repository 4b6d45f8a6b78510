"""``experiments/motifs/analyze.py`` judges a difference by the seed spread: with one seed there
is none, so such a setting is shown and counted apart, never as a win or a loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "motifs" / "analyze.py"


@pytest.fixture(scope="module")
def analyze():
    spec = importlib.util.spec_from_file_location("motif_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(option, seed, test_acc, s=4, capacity=0.01):
    return {"model": "resnet20", "dataset": "cifar10", "train_images": 49000, "option": option, "s": s,
            "capacity": capacity, "seed": seed, "test_acc": test_acc, "bits_per_weight": 3.0,
            "distortion": 1.0, "projection_seconds": 0.1}


def test_one_seed_is_not_judged_against_a_spread_it_does_not_have(analyze):
    rows = [row("sample", 0, 0.80), row("kmeans", 0, 0.85)]
    [compared] = analyze.comparisons(rows)
    assert compared["verdict"] == "one seed" and compared["diff"] == pytest.approx(0.05)
    assert "0 wins, 0 ties, 0 losses, 1 with one seed (not judged)" in analyze.verdict_lines([compared])[0]
    assert "| 4 | 0.01 | 0.8000 (1 seed, 3.00 b/w) | 0.8500 (1 seed, 3.00 b/w) |" in analyze.settings_table(rows)


def test_two_seeds_are_judged_against_their_spread(analyze):
    rows = [row("sample", 0, 0.80), row("sample", 1, 0.82), row("kmeans", 0, 0.85), row("kmeans", 1, 0.86)]
    [compared] = analyze.comparisons(rows)
    assert compared["verdict"] == "win" and compared["noise"] == pytest.approx(0.02)
    assert "1 wins, 0 ties, 0 losses;" in analyze.verdict_lines([compared])[0]
    assert "| 4 | 0.01 | 0.8100 ± 0.0200 (3.00 b/w) | 0.8550 ± 0.0100 (3.00 b/w) |" in analyze.settings_table(rows)
