"""Fidelity of the fluid model against the request-level DES (experiments/fidelity.py).

The DES is first checked on its own against hand-computed timelines of tiny inputs; then the
fluid model (envs/dynamics.py via ClusterSimulator) is compared with it on the Azure conversation
trace at fixed replica counts, from light load to saturation at the trace's peak: completed
requests within 5 % and p95 TTFT within 20 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlscale.envs.profiles import ThroughputProfile
from rlscale.envs.scenario import data_root
from rlscale.experiments.fidelity import (
    AZURE_CONV,
    COMPLETED_TOL,
    DEFAULT_GRID,
    TTFT_P95_TOL,
    compare,
    fidelity_table,
    format_markdown,
    simulate,
    window_requests,
    workload_config,
)

# the toy profile's iteration time: base, per sequence, per context token, per prompt token
A, C, K, P = 0.01, 0.001, 1e-5, 1e-4


def _profile(max_num_seqs: int = 8, kv_cache_tokens: int = 100_000) -> ThroughputProfile:
    return ThroughputProfile(
        name="toy",
        gpu="toy",
        gpus_per_replica=1,
        model="toy",
        weights_gb=1.0,
        iter_base_s=A,
        iter_per_seq_s=C,
        iter_per_ctx_token_s=K,
        prefill_per_token_s=P,
        kv_cache_tokens=kv_cache_tokens,
        max_num_seqs=max_num_seqs,
        fit_mape=0.0,
        fit_rows=0,
        source="test",
    )


def _run(requests, *, replicas=1, horizon_s=1000.0, **kw):
    t, p, o = (np.array(col, dtype=float) for col in zip(*requests, strict=True))
    prof_kw = {k: kw.pop(k) for k in ("max_num_seqs", "kv_cache_tokens") if k in kw}
    return simulate(_profile(**prof_kw), replicas, t, p, o, horizon_s=horizon_s, **kw)


# --- the DES on hand-made inputs --------------------------------------------------------------


def test_single_request_timeline():
    """Alone: first token after one iteration holding only its prefill, then one per iteration."""
    res = _run([(1.0, 100, 3)])
    first = 1.0 + A + P * 100
    assert res.first_token_s[0] == pytest.approx(first)
    assert res.ttft_p50_s == pytest.approx(A + P * 100)
    # two decode iterations of b = 1 holding 101 then 102 context tokens
    done = first + (A + C + K * 101) + (A + C + K * 102)
    assert res.done_s[0] == pytest.approx(done)
    assert res.tpot_p50_s == pytest.approx((done - first) / 2)
    assert (res.completed, res.dropped, res.tokens) == (1, 0, 3)
    assert res.utilization == pytest.approx((done - 1.0) / 1000.0)


def test_one_output_token_completes_with_its_prefill():
    res = _run([(0.0, 50, 1)])
    assert res.done_s[0] == pytest.approx(A + P * 50)
    assert res.first_token_s[0] == res.done_s[0]


def test_long_prompt_is_chunked_by_the_token_budget():
    """A 10,000-token prompt with a 4,096-token budget takes three iterations."""
    res = _run([(0.0, 10_000, 2)], max_batched_tokens=4096)
    it1 = A + P * 4096
    it2 = A + K * 4096 + P * 4096  # holds the first chunk's context
    it3 = A + K * 8192 + P * (10_000 - 8192)
    assert res.first_token_s[0] == pytest.approx(it1 + it2 + it3)


def test_decodes_share_the_budget_with_prefill():
    """Two decoding sequences leave budget - 2 tokens for a new prompt."""
    res = _run([(0.0, 10, 50), (0.0, 10, 50), (0.05, 200, 2)], max_batched_tokens=102)
    # the third request is prefilled in two chunks of 100 tokens, each in an iteration that also
    # decodes the first two: two iterations of A + 2C + 100P plus their context terms
    t_adm = res.admit_s[2]
    assert t_adm >= 0.05
    first = res.first_token_s[2]
    two = 2 * (A + 2 * C + 100 * P)
    ctx_max = 2 * (10 + 50) + 200  # all context the replica can hold
    assert two < first - t_adm <= two + 2 * K * ctx_max
    assert res.first_token_s[0] == pytest.approx(A + P * 20)  # both prompts in one iteration


def test_max_num_seqs_is_respected():
    res = _run([(0.0, 10, 20)] * 5, max_num_seqs=2)
    assert res.completed == 5
    t = np.sort(np.concatenate([res.admit_s, res.done_s]))
    for x in t:
        running = np.sum((res.admit_s <= x) & (res.done_s > x))
        assert running <= 2
    # the third request waits for a slot: admitted when the first two complete
    assert res.admit_s[2] == pytest.approx(res.done_s[0])


def test_kv_admission_uses_projected_context():
    """Room for prompt + output of every running sequence: a third 400-token request waits."""
    res = _run([(0.0, 300, 100)] * 3, kv_cache_tokens=1000)
    assert res.admit_s[1] == 0.0
    assert res.admit_s[2] == pytest.approx(res.done_s[0])


def test_fifo_never_skips_the_head():
    """A small request behind a head that does not fit waits, although it would fit."""
    res = _run(
        [(0.0, 400, 100), (0.001, 500, 100), (0.002, 10, 10)],
        kv_cache_tokens=1000,
    )
    assert res.admit_s[1] >= res.done_s[0] - 1e-12
    assert res.admit_s[2] >= res.admit_s[1]
    order = np.argsort(res.admit_s, kind="stable")
    assert list(order) == [0, 1, 2]


def test_fifo_order_of_admissions():
    reqs = [(0.01 * i, 100 + 37 * (i % 5), 5 + i % 7) for i in range(40)]
    res = _run(reqs, max_num_seqs=3)
    assert res.completed == 40
    assert np.all(np.diff(res.admit_s) >= 0)


def test_timeout_drops_queued_requests():
    res = _run([(0.0, 10, 1000), (0.1, 10, 5), (0.2, 10, 5)], max_num_seqs=1, timeout_s=1.0)
    assert res.completed == 1 and res.dropped == 2
    assert res.drop_s[1] == pytest.approx(1.1)
    assert np.isnan(res.first_token_s[1])


def test_too_large_for_the_kv_cache_is_dropped():
    res = _run([(0.0, 900, 200), (0.1, 10, 5)], kv_cache_tokens=1000)
    assert res.dropped == 1 and res.completed == 1


def test_idle_replicas_take_simultaneous_arrivals():
    """The least-loaded free replica: two requests at once run on two idle replicas."""
    res = _run([(0.0, 1000, 2), (0.0, 1000, 2)], replicas=2)
    assert res.first_token_s == pytest.approx([A + P * 1000] * 2)
    one = _run([(0.0, 1000, 2), (0.0, 1000, 2)], replicas=1)
    assert one.first_token_s == pytest.approx([A + P * 2000] * 2)  # batched prefill


def test_busy_replica_admits_at_its_next_iteration():
    res = _run([(0.0, 100, 50), (0.005, 100, 5)])
    # the second arrives during the first's prefill iteration and waits for its end
    assert res.admit_s[1] == pytest.approx(A + P * 100)


def test_request_conservation_at_the_horizon():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 50, 400))
    p = rng.integers(10, 3000, 400)
    o = rng.integers(1, 300, 400)
    res = simulate(_profile(max_num_seqs=16, kv_cache_tokens=40_000), 2, t, p, o, horizon_s=40.0)
    in_flight = np.sum(~np.isnan(res.admit_s) & np.isnan(res.done_s))
    queued = np.sum(np.isnan(res.admit_s) & np.isnan(res.drop_s))
    assert res.arrived == np.sum(t < 40.0)
    assert res.completed + res.dropped + in_flight + queued == res.arrived
    assert res.first_token <= res.arrived


def test_rejects_unsorted_or_empty_requests():
    with pytest.raises(ValueError):
        simulate(_profile(), 1, np.array([1.0, 0.5]), np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError):
        simulate(_profile(), 1, np.array([0.0]), np.array([0]), np.array([1]))


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
        f"{d['ttft_p95_s']:.3f} s fluid {f['ttft_p95_s']:.3f} s ({100 * r['ttft_p95_err']:+.1f}%)"
    )
    assert abs(r["completed_err"]) <= COMPLETED_TOL, where
    assert abs(r["ttft_p95_err"]) <= TTFT_P95_TOL, where


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
