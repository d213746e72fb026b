"""Invariants of the simulator for random scenarios and random actions (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import random_pools

from rlscale.envs import dynamics as dyn
from rlscale.envs.env import InferenceClusterEnv
from rlscale.envs.scenario import scenario_from_dict
from rlscale.envs.simulator import ClusterSimulator

pytestmark = pytest.mark.needs_data

PROFILES = ["h100x1-llama3-8b", "a100x1-llama3-8b", "mi250x1-llama3-8b", "h100x4-llama3-70b"]


@st.composite
def scenarios(draw, batch: bool = False, on_demand_first: bool = False):
    pools = draw(random_pools(profiles=PROFILES, serves=batch, on_demand_first=on_demand_first))
    raw = {
        "name": "random",
        "episode_hours": 0.25,
        "max_step": draw(st.integers(1, 4)),
        "drain_grace_s": draw(st.sampled_from([0.0, 5.0, 60.0, 300.0])),
        "workload": {
            "kind": "synthetic",
            "cache_hit_ratio": draw(st.floats(0.0, 0.6)),
            "synthetic": {
                "base_rate_rps": draw(st.floats(0.1, 120.0)),
                "days": 0.3,
                "noise_cv": draw(st.floats(0.0, 0.5)),
            },
            "prompt_tokens": {"median": 500, "p90": draw(st.sampled_from([500, 2000, 8000]))},
            "output_tokens": {"median": 100, "p90": draw(st.sampled_from([100, 400, 2000]))},
            **(
                {
                    "batch": {
                        "share": draw(st.floats(0.05, 0.9)),
                        "deadline_h": draw(st.sampled_from([0.02, 0.1, 1.0])),
                    }
                }
                if batch
                else {}
            ),
        },
        "slo": {"timeout_s": draw(st.sampled_from([3.0, 20.0, 90.0])), "ttft_s": 1.0},
        "pools": pools,
    }
    return scenario_from_dict(raw)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios(), seed=st.integers(0, 2**31 - 1), action_seed=st.integers(0, 1000))
def test_invariants_hold_for_random_actions(scenario, seed, action_seed):
    env = InferenceClusterEnv(scenario=scenario)
    sim: ClusterSimulator = env.sim
    env.action_space.seed(action_seed)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    quotas = np.array([p.quota for p in scenario.pools])
    for _ in range(sim.episode_steps):
        obs, reward, _, truncated, info = env.step(env.action_space.sample())
        assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
        assert np.isfinite(reward)
        assert info["cost/usd"] >= 0.0
        assert all(v >= 0.0 for v in info["cost/by_pool_usd"].values())
        held = np.array(
            [
                sum(
                    info["replicas"][p.name][s]
                    for s in (
                        "provisioning",
                        "loading",
                        "ready",
                        "draining",
                        "standby",
                        "refilling",
                    )
                )
                for p in scenario.pools
            ]
        )
        assert np.all(held <= quotas + 1e-9), (held, quotas)
        assert all(v >= -1e-9 for pool in info["replicas"].values() for v in pool.values())
        c = sim.counters(0)
        accounted = c["completed"] + c["queued"] + c["in_flight"] + c["dropped"] + c["cache_hits"]
        assert accounted == pytest.approx(c["arrived"], rel=1e-9, abs=1e-6)
        assert 0.0 <= info["slo/attainment"] <= 1.0
        if truncated:
            break
    assert truncated


def test_conservation_under_heavy_overload_and_preemption(make_small_scenario):
    # far more load than capacity, short timeout, frequent preemptions with requeue
    sc = make_small_scenario(
        workload={"kind": "synthetic", "synthetic": {"base_rate_rps": 300.0, "days": 0.5}},
        slo={"timeout_s": 5.0},
    )
    sim = ClusterSimulator(sc, 1)
    sim.reset_cluster(0, np.random.default_rng(0))
    up = sim.noop_action()
    up[:3] += 2
    for _ in range(sim.episode_steps):
        sim.step(up[None])
    c = sim.counters(0)
    assert c["dropped"] > 0 and sim.metrics[0, dyn.M_PREEMPTIONS] >= 0
    total = c["completed"] + c["queued"] + c["in_flight"] + c["dropped"] + c["cache_hits"]
    assert total == pytest.approx(c["arrived"], rel=1e-9)
