"""The simulator read by name: every reader agrees with the kernel's arrays and outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlscale.envs.observation import N_CLUSTER_FEATURES, N_POOL_FEATURES, SECONDS_PER_DAY
from rlscale.envs.simulator import POOL_STATES, ClusterSimulator

_STATE_ATTRS = (
    "provisioning",
    "loading",
    "ready",
    "draining",
    "standby",
    "refilling",
    "preempt_notices",
)
"""ClusterView's attribute for each of POOL_STATES."""


def stepped(sc, num_clusters: int = 2, steps: int = 12) -> ClusterSimulator:
    """A simulator whose clusters scaled up and down for a few steps."""
    sim = ClusterSimulator(sc, num_clusters)
    for i in range(num_clusters):
        sim.reset_cluster(i, np.random.default_rng(10 + i))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        sim.step(rng.integers(0, sim.action_nvec, size=(num_clusters, len(sim.action_nvec))))
    return sim


def test_view_reads_what_step_info_reports(make_small_scenario) -> None:
    sim = stepped(make_small_scenario())
    for i in range(sim.num_clusters):
        v, info = sim.cluster(i), sim.step_info(i)
        assert v.index == i
        assert v.cost_usd == info["cost/usd"]
        assert v.episode_cost_usd == info["cost/total_usd"]
        assert v.slo_attainment == info["slo/attainment"]
        assert v.episode_slo_attainment == info["slo/attainment_episode"]
        assert v.ttft_p50_s == info["latency/ttft_p50_s"]
        assert v.ttft_p95_s == info["latency/ttft_p95_s"]
        assert v.tpot_p95_s == info["latency/tpot_p95_s"]
        assert v.arrival_rate_rps == info["load/arrival_rate_rps"]
        assert v.queue == info["load/queue"]
        assert v.in_flight == info["load/in_flight"]
        assert v.compute_util == info["load/compute_util"]
        assert v.kv_util == info["load/kv_util"]
        assert v.dropped == info["requests/dropped"]
        assert v.tokens_served == info["tokens/served"]
        assert v.scale_events == info["scale/events"]
        assert v.cold_starts == info["scale/cold_starts"]
        assert v.warm_starts == info["scale/warm_starts"]
        assert v.preemptions == info["spot/preemptions"]
        for j, name in enumerate(sim.pool_names):
            assert v.cost_by_pool_usd[j] == info["cost/by_pool_usd"][name]
            assert v.price_usd_h[j] == info["spot/price_usd_h"][name]
            # after a step the replicas now are the replicas the step ended with
            by_state = info["replicas"][name]
            for state, attr in zip(POOL_STATES, _STATE_ATTRS, strict=True):
                assert getattr(v, attr)[j] == by_state[state], (name, state)


def test_view_agrees_with_the_kernels_observation(make_small_scenario) -> None:
    """The derived readers (time, forecast, spot share, batch) use the kernel's formulas."""
    sim = stepped(make_small_scenario(), steps=7)
    ref = sim.reference_rps
    P = len(sim.pools)
    for i in range(sim.num_clusters):
        v, o = sim.cluster(i), sim.obs[i].astype(np.float64)
        assert v.time_s == pytest.approx(7 * sim.scenario.control_interval_s)
        assert v.arrival_rate_ewma_rps / ref == pytest.approx(o[1], rel=1e-5, abs=1e-6)
        assert v.forecast_rps / ref == pytest.approx(o[3], rel=1e-5, abs=1e-6)
        day = 2 * math.pi * v.time_of_week_s / SECONDS_PER_DAY
        assert (math.sin(day), math.cos(day)) == pytest.approx((o[13], o[14]), abs=1e-5)
        share = v.spot_capacity_share()
        assert share.shape == (P,)
        for j, pool in enumerate(sim.pools):
            k = N_CLUSTER_FEATURES + j * N_POOL_FEATURES
            assert share[j] == pytest.approx(o[k + 7], abs=1e-6)
            want = min(v.batch_per_replica[j] / pool.profile.max_num_seqs, 1.0)
            assert want == pytest.approx(o[k + 8], abs=1e-6)
        assert v.replica_s_by_pool.sum() > 0  # something was billed


def test_view_is_live_read_only_and_one_per_cluster(make_small_scenario) -> None:
    sc = make_small_scenario()
    sim = ClusterSimulator(sc, 2)
    sim.reset_cluster(0, np.random.default_rng(1))
    sim.reset_cluster(1, np.random.default_rng(2))
    v = sim.cluster(0)
    assert sim.cluster(0) is v and sim.cluster(1) is not v
    assert v.time_s == 0.0 and v.cost_usd == 0.0
    ready0 = v.ready.copy()
    np.testing.assert_array_equal(ready0, [p.initial_replicas for p in sc.pools])
    up = sim.noop_action()
    up[0] += 2  # two more h100 replicas
    sim.step(np.stack([up, sim.noop_action()]))
    assert v.time_s == sc.control_interval_s and v.cost_usd > 0.0
    assert v.provisioning[0] + v.loading[0] + v.ready[0] == ready0[0] + 2
    assert sim.cluster(1).provisioning[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        v.ready[0] = 5.0
    with pytest.raises(AttributeError):
        v.cost_usd = 1.0  # type: ignore[misc]
    with pytest.raises(IndexError, match="cluster 2"):
        sim.cluster(2)


def test_market_and_cold_start_readers(make_small_scenario) -> None:
    sc = make_small_scenario()
    sim = ClusterSimulator(sc, 1)
    m = sim.spot_market_series()
    P = len(sim.pools)
    assert m.price_usd_h.shape == m.preempt_prob.shape == m.capacity_share.shape
    assert m.price_usd_h.shape[0] == P and m.steps == m.price_usd_h.shape[1]
    spot = np.array([p.purchase == "spot" for p in sim.pools])
    assert np.all(m.capacity_share[~spot] == 1.0) and np.all(m.preempt_prob[~spot] == 0.0)
    np.testing.assert_array_equal(
        m.price_usd_h[~spot, 0], [p.price_usd_h for p in sim.pools if p.purchase != "spot"]
    )
    assert np.all(m.preempt_prob[spot] > 0.0)  # the small scenario's hazard
    assert np.all(m.fulfil_prob[spot] > 0.0) and np.all(m.fulfil_prob[~spot] == 0.0)
    cold = sim.cold_start_levels_s()
    for phase in cold:
        assert phase.shape[0] == P and np.all(np.diff(phase, axis=1) >= 0.0)
        with pytest.raises(ValueError, match="read-only"):
            phase[0, 0] = 0.0
    assert np.all(cold.provisioning_s > 0.0) and np.all(cold.loading_s > 0.0)
