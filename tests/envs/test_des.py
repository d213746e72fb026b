"""The request-level DES (experiments/des.py) on hand-made inputs, against timelines computed by
hand: iteration times, chunked prefill, admission limits, FIFO order, timeouts and routing.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs.profiles import ThroughputProfile
from rlscale.experiments.des import route_requests, simulate

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


# --- routing ------------------------------------------------------------------------------------


def test_round_robin_waits_behind_a_busy_replica_while_another_is_idle():
    """Request 2 goes to replica 0, still busy with request 0, although replica 1 is idle."""
    reqs = [(0.0, 10, 100), (0.1, 10, 2), (0.5, 10, 2)]
    rr = _run(reqs, replicas=2, max_num_seqs=1, routing="round_robin")
    assert list(rr.replica) == [0, 1, 0]
    assert rr.done_s[1] < 0.5  # replica 1 is idle from here on
    assert rr.admit_s[2] == pytest.approx(rr.done_s[0])
    assert rr.first_token_s[2] - 0.5 > 0.5
    ll = _run(reqs, replicas=2, max_num_seqs=1)
    assert ll.admit_s[2] == 0.5  # the idle replica takes it at once
    assert list(ll.replica) == [-1, -1, -1]


def test_per_replica_queue_times_out_while_another_replica_is_idle():
    reqs = [(0.0, 10, 1000), (0.1, 10, 2), (0.2, 10, 5)]
    rr = _run(reqs, replicas=2, max_num_seqs=1, timeout_s=1.0, routing="round_robin")
    assert rr.dropped == 1 and rr.drop_s[2] == pytest.approx(1.2)
    assert _run(reqs, replicas=2, max_num_seqs=1, timeout_s=1.0).dropped == 0


def test_simultaneous_arrivals_round_robin_to_idle_replicas():
    res = _run([(0.0, 1000, 2), (0.0, 1000, 2)], replicas=2, routing="round_robin")
    assert res.first_token_s == pytest.approx([A + P * 1000] * 2)


@pytest.mark.parametrize("routing", ["random", "round_robin"])
def test_one_replica_routes_like_the_shared_queue(routing):
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 20, 300))
    p, o = rng.integers(10, 3000, 300), rng.integers(1, 200, 300)
    prof = _profile(max_num_seqs=4, kv_cache_tokens=20_000)
    a = simulate(prof, 1, t, p, o, horizon_s=25.0, timeout_s=2.0)
    b = simulate(prof, 1, t, p, o, horizon_s=25.0, timeout_s=2.0, routing=routing)
    for field in ("admit_s", "first_token_s", "done_s", "drop_s"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True)


def test_random_routing_is_seeded_and_fifo_per_replica():
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0, 300, 500))
    p, o = rng.integers(10, 2000, 500), rng.integers(1, 100, 500)
    prof = _profile(max_num_seqs=2)
    res = simulate(prof, 3, t, p, o, horizon_s=1000.0, routing="random", seed=11)
    assert np.array_equal(res.replica, route_requests(500, 3, "random", seed=11))
    assert not np.array_equal(res.replica, route_requests(500, 3, "random", seed=12))
    assert np.bincount(res.replica, minlength=3).min() > 130  # about 500 / 3 each
    assert res.completed == 500
    for r in range(3):
        mine = res.replica == r
        assert np.all(np.diff(res.admit_s[mine]) >= 0)  # its own FIFO
        # never more than max_num_seqs at once on one replica
        for x in res.admit_s[mine]:
            assert np.sum((res.admit_s[mine] <= x) & (res.done_s[mine] > x)) <= 2
    again = simulate(prof, 3, t, p, o, horizon_s=1000.0, routing="random", seed=11)
    assert np.array_equal(res.done_s, again.done_s)


def test_blind_routing_waits_longer_than_least_loaded():
    """At one load, per-replica queues wait more: requests queue at a busy replica while
    another idles (the classic M/M/1 x R vs M/M/R gap). Round robin evens out the arrivals,
    random does not: it waits longest. (With equal service times round robin IS the shared
    FIFO: replicas free up in the order they were filled.)"""
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1.25, 4000))
    # 50-550 iterations of about 0.0126 s: 3.8 s on average, load 0.76 on 4 replicas
    o = rng.integers(50, 551, 4000)
    prof = _profile(max_num_seqs=1)
    waits = {
        routing: simulate(prof, 4, t, np.full(4000, 10), o, routing=routing).wait_s.mean()
        for routing in ("least_loaded", "random", "round_robin")
    }
    assert waits["least_loaded"] < waits["round_robin"] < waits["random"]


def test_attainment_counts_drops_as_misses():
    """Three requests reach a replica: one on time, one late, one dropped: attainment 1/3."""
    reqs = [(0.0, 10, 300), (0.1, 10, 100), (0.2, 10, 5)]
    # max_num_seqs 1: the second waits 300 iterations (3.8 s), the third times out at 4.2 s
    # while the second runs
    res = _run(reqs, max_num_seqs=1, timeout_s=4.0, ttft_target_s=2.0)
    assert res.dropped == 1 and res.first_token == 2
    assert res.ttft_s[1] > 2.0
    assert res.ttft_attainment == pytest.approx(1 / 3)
    loose = _run(reqs, max_num_seqs=1, timeout_s=4.0, ttft_target_s=10.0)
    assert loose.ttft_attainment == pytest.approx(2 / 3)  # the drop still misses


def test_attainment_leaves_out_requests_still_queued_at_the_horizon():
    res = _run([(0.0, 10, 300), (0.1, 10, 5)], max_num_seqs=1, horizon_s=1.0)
    assert res.ttft_attainment == 1.0  # the second has not reached a replica


def test_rejects_unknown_routing():
    with pytest.raises(ValueError, match="routing"):
        _run([(0.0, 10, 2)], routing="sticky")
