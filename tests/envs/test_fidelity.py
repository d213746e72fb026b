"""Fidelity of the fluid model against the request-level DES (experiments/fidelity.py).

The DES itself is checked on hand-made inputs in test_des.py and against queueing theory in
test_queueing.py. Here the fluid model (envs/dynamics.py via ClusterSimulator) is compared with it
on the Azure conversation trace at fixed replica counts, from light load to saturation at the
trace's peak: completed requests within 5 % and p95 TTFT within 20 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlscale.envs.scenario import data_root
from rlscale.experiments.fidelity import (
    AZURE_CONV,
    COMPLETED_TOL,
    DEFAULT_GRID,
    TTFT_P95_TOL,
    compare,
    fidelity_table,
    format_markdown,
    workload_config,
)
from rlscale.experiments.replay import window_requests

# --- DES vs fluid on the Azure conversation trace ---------------------------------------------

needs_trace = pytest.mark.skipif(
    not (data_root() / AZURE_CONV).is_file(),
    reason=f"Azure LLM trace not found under {data_root()} (set $RLSCALE_DATA)",
)


@needs_trace
def test_des_sees_the_fluid_workload_and_is_fast():
    t, _, _, span = window_requests(workload_config())
    assert t.size == 19_366 and np.all(np.diff(t) >= 0) and span >= t[-1]
    res = compare("h100x1-llama3-8b", 2)
    assert res["des"]["arrived"] == pytest.approx(res["fluid"]["arrived"])
    assert res["des"]["wall_s"] < 10.0
    assert res["horizon_s"] % 30.0 == 0.0 and res["horizon_s"] <= span


@needs_trace
@pytest.mark.parametrize(("profile", "replicas", "time_scale"), DEFAULT_GRID)
def test_fluid_matches_des(profile, replicas, time_scale):
    r = compare(profile, replicas, time_scale=time_scale)
    d, f = r["des"], r["fluid"]
    where = (
        f"{profile} x{replicas} at {r['load_rps']:.2f} req/s: completed DES {d['completed']} "
        f"fluid {f['completed']:.0f} ({100 * r['completed_err']:+.1f}%), p95 TTFT DES "
        f"{d['ttft_p95_s']:.3f} s fluid {f['ttft_p95_s']:.3f} s ({100 * r['ttft_p95_s_err']:+.1f}%)"
    )
    assert abs(r["completed_err"]) <= COMPLETED_TOL, where
    assert abs(r["ttft_p95_s_err"]) <= TTFT_P95_TOL, where


@needs_trace
def test_grid_spans_light_load_to_saturation():
    """The grid's DES runs go from an always-empty queue to a visible one, without mass drops."""
    rows = fidelity_table(DEFAULT_GRID[:1] + DEFAULT_GRID[-2:])
    light, *heavy = rows
    assert light["des_wait_p95_s"] < 0.05
    for r in heavy:
        assert r["des_wait_p95_s"] > 10.0  # queueing at the peak
        assert r["des_dropped"] <= 0.01 * r["des_completed"]
    table = format_markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "a100x1-llama3-8b" in table
    assert all(math.isfinite(r["ttft_p95_err"]) for r in rows)
