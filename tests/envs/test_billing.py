"""The kernel bills the states that ``BILLED_STATES`` names (the service meters by that list)."""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs import dynamics as dyn
from rlscale.envs.names import BILLED_STATES
from rlscale.envs.scenario import scenario_from_dict
from rlscale.envs.simulator import POOL_STATES, ClusterSimulator


def test_a_step_bills_the_named_states_and_holds_standby(quick_raw):
    raw = quick_raw()
    for pool in raw["pools"]:
        pool["warm_pool_max"] = 2
        pool["warm_holding_usd_h"] = 0.25
    # a cold start far longer than a step: the replicas started stay provisioning and
    # refilling for the whole step, so every state's count is constant while it is billed
    slow = {"median_s": 900.0, "p90_s": 1000.0}
    raw["cold_start"] = {
        "provisioning": slow,
        "image_pull": slow,
        "weight_load": slow,
        "engine_warmup": slow,
    }
    sc = scenario_from_dict(raw)
    sim = ClusterSimulator(sc, 1)
    sim.reset_cluster(0, np.random.default_rng(0))
    action = sim.noop_action()
    P = len(sim.pools)
    action[:P] += 1  # one more replica per pool: a cold start
    action[P:] = 2  # fill the warm pool
    sim.step(action[None, :])
    interval = sc.control_interval_s
    replicas = sim.replicas(0)
    assert set(BILLED_STATES) <= set(POOL_STATES)
    for p, pool in enumerate(sc.pools):
        counts = replicas[pool.name]
        billed = sum(counts[s] for s in BILLED_STATES)
        assert counts["provisioning"] >= 1 and counts["refilling"] >= 1, counts
        pm = sim.pool_metrics[0, p]
        assert pm[dyn.PM_REPLICA_S] == pytest.approx(billed * interval)
        expected = (billed * pool.price_usd_h + counts["standby"] * 0.25) * interval / 3600.0
        assert pm[dyn.PM_COST] == pytest.approx(expected)
