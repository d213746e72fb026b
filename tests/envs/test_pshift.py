"""What completions free: the prompts of the requests in flight (envs/dynamics.py, PS_PSTAT).

Requests stay in flight for their output's worth of iterations, so the prompts in flight are
output-weighted and a completing request's prompt lies ``pshift = E[p o] / E[o] - E[p]`` from
them. The kernel takes pshift over the requests admitted into a class and still in flight, from
the prompt x output sums the workload bins and the queue carry.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs import dynamics as dyn
from rlscale.envs.simulator import kernel_workload_arrays, scenario_workload
from rlscale.envs.workload import shorter_answers
from rlscale.experiments.replay import fluid_scenario, workload_config


def _sp() -> np.ndarray:
    sp = np.zeros(dyn.N_SP)
    for k in range(dyn.N_BUCKETS):
        sp[dyn.SP_CLASS + dyn.N_CP * k + dyn.CP_PHI] = 0.5
    return sp


def _pshift(row: np.ndarray, k: int) -> float:
    return row[dyn.PS_PSTAT + dyn.N_PT * k + dyn.PT_PSHIFT]


def _admit(row, n0=0.0, p0=0.0, o0=0.0, po0=0.0, n1=0.0, p1=0.0, o1=0.0, po1=0.0, const=0.0):
    dyn._admit_classes(row, n0, p0, o0, po0, n1, p1, o1, po1, const, const, dyn.OUTPUT_CLASSES)


def _pshift_of(p: np.ndarray, o: np.ndarray) -> float:
    """Output-weighted mean prompt less the mean prompt, with Bessel's n / (n - 1)."""
    n = p.size
    return ((p * o).sum() / o.sum() - p.mean()) * n / (n - 1)


def test_pshift_is_taken_over_the_requests_admitted():
    """Two cohorts of class 0, long prompts with short answers: pshift over all four requests."""
    row = np.zeros(dyn.N_PS)
    p = np.array([3000.0, 2800.0, 900.0, 1000.0])
    o = np.array([40.0, 50.0, 90.0, 80.0])
    for sl in (slice(0, 2), slice(2, 4)):
        _admit(row, 2.0, p[sl].sum(), o[sl].sum(), (p[sl] * o[sl]).sum(), const=-153.0)
    got = _pshift(row, 0)
    assert got == pytest.approx(_pshift_of(p, o), rel=1e-12)
    assert got < -300.0  # the window's anti-correlation, far from the trace's constant
    # the held context and outputs are the requests' own
    j = dyn.PS_CLASS + dyn.CF_IR
    assert row[j] == 4.0 and row[j + 1] == o.sum() and row[j + 2] == p.sum()


def test_one_request_in_flight_keeps_the_constant():
    """A single request has no spread of its own: the workload's constant stands."""
    row = np.zeros(dyn.N_PS)
    _admit(row, n1=1.0, p1=500.0, o1=20.0, po1=10_000.0, const=-153.0)
    assert _pshift(row, 1) == -153.0
    # a second request: its own pair's spread
    _admit(row, n1=1.0, p1=100.0, o1=200.0, po1=20_000.0, const=-153.0)
    assert _pshift(row, 1) == pytest.approx(
        _pshift_of(np.array([500.0, 100.0]), np.array([20.0, 200.0]))
    )


def test_completions_take_requests_away_not_the_means():
    """Decoding completes some of class 0; what the next admission mixes with weighs the rest."""
    sp = _sp()
    row = np.zeros(dyn.N_PS)
    _admit(row, 10.0, 20_000.0, 500.0, 600_000.0)
    before = row[dyn.PS_PSTAT : dyn.PS_PSTAT + dyn.N_PT].copy()
    _, done, _, _ = dyn._decode_classes(row, dyn.CF_IR, 20.0, sp, 2)
    assert 0.0 < done < 10.0
    after = row[dyn.PS_PSTAT : dyn.PS_PSTAT + dyn.N_PT]
    assert after[dyn.PT_N] == pytest.approx(10.0 - done)
    for f in (dyn.PT_PROMPT, dyn.PT_OUTPUT, dyn.PT_PO, dyn.PT_PSHIFT):
        assert after[f] == before[f]


def test_workload_bins_carry_prompt_times_output(tmp_path):
    """A trace's kernel rows hold, per bin, the sum of prompt x output tokens of its class-0
    arrivals (the shorter answers) and of all of them."""
    t = np.array([0.1, 0.2, 0.3, 1.5, 1.6, 2.5, 2.6, 2.7])
    p = np.array([100, 2000, 300, 50, 4000, 700, 800, 900])
    o = np.array([10, 400, 30, 500, 5, 60, 70, 80])
    path = tmp_path / "trace.csv"
    np.savetxt(
        path,
        np.column_stack([t, p, o]),
        fmt=("%.3f", "%d", "%d"),
        delimiter=",",
        header="timestamp_s,prompt_tokens,output_tokens",
        comments="",
    )
    cfg = workload_config(path=str(path), kind="csv")
    sc = fluid_scenario("h100x1-llama3-8b", 1, cfg, 60.0 / 3600.0)
    wl = kernel_workload_arrays(scenario_workload(sc, 0))
    short = shorter_answers(o)
    bins = t.astype(int)
    for b in range(3):
        here = bins == b
        assert wl[dyn.WL_PO, b] == pytest.approx((p * o)[here].sum())
        assert wl[dyn.WL_PO0, b] == pytest.approx((p * o)[here & short].sum())
        assert wl[dyn.WL_N0, b] == pytest.approx((here & short).sum())
