"""Metering (envs/metering.py): tenant allocations sum to the bill, whatever the scenario and
policy; who pays for what."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import random_pools

from rlscale.agents.observe import run_episode
from rlscale.agents.registry import baselines, make_policy
from rlscale.envs.metering import busy_usd, tenant_weights
from rlscale.envs.scenario import WorkloadConfig, scenario_from_dict
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.workload import build_workload

PROFILES = ["h100x1-llama3-8b", "a100x1-llama3-8b", "mi250x1-llama3-8b"]
EPISODE_S = 900.0
TRACE_DIR = Path(tempfile.mkdtemp(prefix="rlscale-metering-"))


def write_trace(rows: list[tuple[float, int, int, str]], name: str) -> str:
    """A CSV trace with a tenant column; the first row is pinned at time 0 (traces start at
    their first request) and one at the episode's end, so the window is the episode."""
    path = TRACE_DIR / f"{name}.csv"
    lines = ["timestamp_s,prompt_tokens,output_tokens,tenant"]
    lines += [f"{t:.3f},{p},{o},{ten}" for t, p, o, ten in sorted(rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@st.composite
def tenant_traces(draw) -> list[tuple[float, int, int, str]]:
    """Requests of 1-5 tenants, each busy in its own stretch of the episode (quiet intervals,
    intervals of one tenant only, and overlaps all occur)."""
    n_tenants = draw(st.integers(1, 5))
    rows = [(0.0, 100, 10, "t0"), (EPISODE_S + 30.0, 100, 10, "t0")]
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    for k in range(n_tenants):
        lo = draw(st.floats(0.0, EPISODE_S * 0.8))
        hi = draw(st.floats(lo + 10.0, EPISODE_S))
        rate = draw(st.floats(0.05, 8.0))
        n = rng.poisson(rate * (hi - lo))
        t = rng.uniform(lo, hi, n)
        prompt = rng.integers(20, draw(st.sampled_from([200, 2000, 6000])), n)
        output = rng.integers(1, draw(st.sampled_from([50, 400, 1500])), n)
        rows += [
            (float(a), int(b), int(c), f"t{k}") for a, b, c in zip(t, prompt, output, strict=True)
        ]
    return rows


@st.composite
def scenarios(draw):
    rows = draw(tenant_traces())
    path = write_trace(rows, f"trace-{draw(st.integers(0, 10**9))}")
    pools = draw(random_pools(profiles=PROFILES, max_quota=6, min_fulfil=0.2, on_demand_first=True))
    raw = {
        "name": "random-tenants",
        "episode_hours": EPISODE_S / 3600.0,
        "max_step": draw(st.integers(1, 3)),
        "drain_grace_s": draw(st.sampled_from([0.0, 60.0, 300.0])),
        "workload": {
            "kind": "csv",
            "path": path,
            "cache_hit_ratio": draw(st.floats(0.0, 0.5)),
        },
        "slo": {"timeout_s": draw(st.sampled_from([5.0, 30.0])), "ttft_s": 1.0},
        "pools": pools,
    }
    return scenario_from_dict(raw)


def _check_allocation(sim: ClusterSimulator) -> None:
    bill = sim.cluster(0).episode_cost_usd
    total = sim.tenant_costs(0)
    idle = sim.tenant_idle_costs(0)
    assert sum(total.values()) == pytest.approx(bill, rel=1e-9, abs=1e-9)
    assert all(v >= 0.0 for v in total.values())
    assert all(0.0 <= idle[t] <= total[t] + 1e-12 for t in total)
    assert all(v >= 0.0 for v in sim.tenant_busy_gpu_hours(0).values())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios(), seed=st.integers(0, 2**31 - 1), action_seed=st.integers(0, 1000))
def test_random_actions_allocations_sum_to_the_bill_every_step(scenario, seed, action_seed):
    sim = ClusterSimulator(scenario)
    sim.reset_cluster(0, np.random.default_rng(seed))
    _, action_space = sim.spaces()
    action_space.seed(action_seed)
    while not sim.truncated()[0]:
        sim.step(action_space.sample()[None, :])
        _check_allocation(sim)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scenario=scenarios(),
    policy=st.sampled_from([b for b in baselines()]),
    seed=st.integers(0, 1000),
)
def test_baseline_policies_allocations_sum_to_the_bill(scenario, policy, seed):
    assume(policy != "spot_aware" or any(p.purchase == "spot" for p in scenario.pools))
    sim = ClusterSimulator(scenario)
    result = run_episode(make_policy(policy, scenario), sim, seed=seed)
    _check_allocation(sim)
    by_tenant = result.summary["cost_by_tenant_usd"]
    assert sum(by_tenant.values()) == pytest.approx(result.summary["cost_usd"], rel=1e-9)


def _two_tenant_scenario(rows, pools=None):
    path = write_trace(rows, f"fixed-{abs(hash(tuple(rows))) % 10**9}")
    pools = pools or [
        {
            "name": "h100",
            "profile": "h100x1-llama3-8b",
            "price_usd_h": 4.0,
            "quota": 4,
            "initial_replicas": 2,
        }
    ]
    return scenario_from_dict(
        {
            "name": "two-tenants",
            "episode_hours": EPISODE_S / 3600.0,
            "workload": {"kind": "csv", "path": path},
            "slo": {"ttft_s": 2.0},
            "pools": pools,
        }
    )


def _steady(tenant, lo, hi, rate, rng):
    t = np.sort(rng.uniform(lo, hi, int(rate * (hi - lo))))
    return [(float(x), 300, 150, tenant) for x in t]


def test_a_tenant_pays_nothing_of_intervals_it_sent_nothing_in():
    rng = np.random.default_rng(3)
    # "a" only in the first third, "b" throughout
    rows = _steady("b", 0.0, EPISODE_S + 30, 2.0, rng) + _steady("a", 0.0, 300.0, 2.0, rng)
    sc = _two_tenant_scenario(rows)
    sim = ClusterSimulator(sc)
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    a = sim.noop_action()[None, :]
    for _ in range(10):  # the first 300 s: both send the same load
        sim.step(a)
    at_300 = sim.tenant_costs(0)
    assert at_300["a"] == pytest.approx(at_300["b"], rel=0.2)
    while not sim.truncated()[0]:
        sim.step(a)
    end = sim.tenant_costs(0)
    # "a" pays at most what the interval around its last requests cost, nothing later
    assert end["a"] - at_300["a"] < 0.05 * end["b"]
    assert sum(end.values()) == pytest.approx(sim.cluster(0).episode_cost_usd, rel=1e-9)


def test_idle_share_follows_busy_share_and_overprovisioning_is_idle():
    rng = np.random.default_rng(5)
    # "big" sends 3x the tokens of "small" all along
    # 32 req/s of 300 + 150 tokens: three quarters of one H100 replica's saturation (44 req/s)
    rows = _steady("big", 0.0, EPISODE_S + 30, 24.0, rng) + _steady(
        "small", 0.0, EPISODE_S + 30, 8.0, rng
    )

    def run(replicas: int) -> ClusterSimulator:
        sc = _two_tenant_scenario(
            rows,
            [
                {
                    "name": "h100",
                    "profile": "h100x1-llama3-8b",
                    "price_usd_h": 4.0,
                    "quota": 8,
                    "initial_replicas": replicas,
                }
            ],
        )
        sim = ClusterSimulator(sc)
        sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
        while not sim.truncated()[0]:
            sim.step(sim.noop_action()[None, :])
        return sim

    lean, fat = run(1), run(6)
    for sim in (lean, fat):
        total, idle = sim.tenant_costs(0), sim.tenant_idle_costs(0)
        assert total["big"] / total["small"] == pytest.approx(3.0, rel=0.15)
        assert idle["big"] / total["big"] == pytest.approx(idle["small"] / total["small"], rel=0.05)
    # six replicas for the load of one: most of the bill is idle; with one, a quarter or so
    idle_share = {
        k: sum(s.tenant_idle_costs(0).values()) / s.cluster(0).episode_cost_usd
        for k, s in (("lean", lean), ("fat", fat))
    }
    assert 0.1 < idle_share["lean"] < 0.45 and idle_share["fat"] > 0.8, idle_share


def test_busy_is_capped_by_the_bill_and_weights_fall_back():
    # pool 0: 50 s of work in 30 billed s; pool 1 billed nothing
    usd, busy_s = busy_usd(
        np.array([1.0, 0.0]), np.array([30.0, 0.0]), np.array([50.0, 5.0]), np.array([4.0, 4.0])
    )
    assert busy_s == 30.0 and usd == pytest.approx(30 * 4 / 3600)
    usd, _ = busy_usd(np.array([0.01]), np.array([30.0]), np.array([30.0]), np.array([4.0]))
    assert usd == 0.01  # never more than the pool billed

    def weights(busy, arrived, busy_so_far):
        w_busy, w_idle = np.empty(2), np.empty(2)
        tenant_weights(
            busy,
            arrived,
            np.array([0.9, 0.1], dtype=np.float32),
            np.array([0.5, 0.5], dtype=np.float32),
            np.asarray(busy_so_far, dtype=np.float64),
            w_busy,
            w_idle,
        )
        return w_busy, w_idle

    w_busy, w_idle = weights(1.0, True, [1.0, 3.0])
    np.testing.assert_allclose(w_busy, [0.9, 0.1], rtol=1e-6)  # busy by tokens
    np.testing.assert_allclose(w_idle, w_busy)  # idle as busy
    _, w_idle = weights(0.0, True, [1.0, 3.0])
    np.testing.assert_allclose(w_idle, [0.5, 0.5])  # nothing busy: idle by requests
    w_busy, w_idle = weights(1.0, False, [1.0, 3.0])
    np.testing.assert_allclose(w_busy, [0.25, 0.75])  # nothing arrived: the shares so far
    np.testing.assert_allclose(w_idle, [0.25, 0.75])
    w_busy, w_idle = weights(0.0, False, [0.0, 0.0])
    np.testing.assert_allclose(w_idle, [0.5, 0.5])  # nothing at all yet: uniform


def test_csv_request_shares_count_requests_not_tokens(tmp_path):
    rows = [(0.5, 100, 0, "a"), (3.0, 50, 50, "b"), (4.0, 100, 0, "a"), (75.0, 10, 10, "b")]
    path = tmp_path / "t.csv"
    path.write_text(
        "timestamp_s,prompt_tokens,output_tokens,tenant\n"
        + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    s = build_workload(
        WorkloadConfig(kind="csv", path=str(path)), substep_s=1.0, control_interval_s=30.0
    )
    assert s.tenant_request_share is not None
    np.testing.assert_allclose(s.tenant_request_share, [[2 / 3, 1 / 3], [0.5, 0.5], [0, 1]])
    # one interval: "a" sent 200 of the 320 tokens but half the requests
    s2 = build_workload(
        WorkloadConfig(kind="csv", path=str(path)), substep_s=1.0, control_interval_s=75.0
    )
    np.testing.assert_allclose(s2.tenant_request_share, [[0.5, 0.5]])
    np.testing.assert_allclose(s2.tenant_token_share, [[200 / 320, 120 / 320]], rtol=1e-6)
