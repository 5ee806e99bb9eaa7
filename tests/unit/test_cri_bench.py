"""The percentile helper of bench/cri_bench.py (the bench itself needs root and minutes)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

# bench/ is a directory of scripts, not a package: load the file itself
_spec = importlib.util.spec_from_file_location(
    "pinnace_cri_bench", Path(__file__).resolve().parents[2] / "bench" / "cri_bench.py"
)
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _bench  # dataclasses look their module up while it loads
_spec.loader.exec_module(_bench)
percentile = _bench.percentile
summary = _bench.summary


def test_percentile_interpolates_between_closest_ranks() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(samples, 50) == 2.5  # mean of the middle two
    assert math.isclose(percentile(samples, 99), 3.97)  # 3 + 0.97 * (4 - 3)
    assert math.isclose(percentile(list(range(1, 101)), 90), 90.1)


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.5], 50) == 7.5
    assert percentile([7.5], 99) == 7.5


@pytest.mark.parametrize("q", [-1, 100.5, math.nan])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0, 2.0], q)


def test_percentile_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summary_is_in_milliseconds() -> None:
    s = summary([0.010, 0.020, 0.030])
    assert s["p50_ms"] == pytest.approx(20.0)
    assert s["mean_ms"] == pytest.approx(20.0)
    assert s["max_ms"] == pytest.approx(30.0)
    assert s["p99_ms"] == pytest.approx(29.8)
    assert summary([]) == {}
