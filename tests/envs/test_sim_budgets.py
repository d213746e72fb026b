"""Budgets in the simulator (rlscale.envs.budgets): metered per period, observed only when
asked, a penalty charged exactly, and a cap the period's spend never exceeds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlscale.common.budgets import BudgetConfig, period_bounds
from rlscale.envs.budgets import SIM_EPOCH_UNIX_S
from rlscale.envs.observation import BUDGET_FEATURES, observation_names
from rlscale.envs.scenario import ScenarioError, scenario_from_dict
from rlscale.envs.simulator import ClusterSimulator

pytestmark = pytest.mark.needs_data


def _scenario(budgets: list[dict[str, Any]], **overrides: Any):
    """Two on-demand pools under a synthetic load (no warm pool: a cap can act on it)."""
    raw: dict[str, Any] = {
        "name": "budgeted",
        "episode_hours": 2.0,
        "workload": {
            "kind": "synthetic",
            "start_hour": 22.5,
            "synthetic": {"base_rate_rps": 10.0, "days": 1.0, "noise_cv": 0.2},
        },
        "pools": [
            {
                "name": "h100",
                "profile": "h100x1-llama3-8b",
                "price_usd_h": 4.0,
                "quota": 6,
                "initial_replicas": 2,
            },
            {"name": "a100", "profile": "a100x1-llama3-8b", "price_usd_h": 2.5, "quota": 6},
        ],
        "budgets": budgets,
    }
    raw.update(overrides)
    return scenario_from_dict(raw)


def _run(sim: ClusterSimulator, actions: np.ndarray, seed: int = 0):
    """Observations, rewards and infos of one episode of cluster 0 under ``actions``."""
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=0)
    obs, rewards, infos = [sim.obs[0].copy()], [], []
    for a in actions:
        sim.step(a[None, :])
        obs.append(sim.obs[0].copy())
        rewards.append(float(sim.rewards[0]))
        infos.append(sim.step_info(0))
    return np.array(obs), np.array(rewards), infos


def _random_actions(sim: ClusterSimulator, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, sim.action_nvec, size=(steps, sim.action_nvec.size))


# --- the schema -------------------------------------------------------------------------------


def test_a_scenario_budget_is_the_services_budget_schema():
    """One schema: the service's budget file's fields, plus what the simulator does."""
    from rlscale.envs.scenario import ScenarioBudget
    from rlscale.serving.budgets import BudgetConfig as ServiceBudget

    assert ServiceBudget is BudgetConfig
    assert issubclass(ScenarioBudget, BudgetConfig)
    sc = _scenario([{"name": "d", "period": "day", "limit_usd": 50}])
    assert sc.budgets[0].mode == "report" and not sc.budgets[0].observed


@pytest.mark.parametrize(
    ("budgets", "match"),
    [
        ([{"name": "d", "period": "week", "limit_usd": 1.0}], "period"),
        ([{"name": "d", "period": "day", "limit_usd": 0}], "limit_usd"),
        ([{"name": "d", "period": "day", "limit_usd": 1, "cluster": "c"}], "one cluster"),
        ([{"name": "d", "period": "day", "limit_usd": 1, "mode": "penalty"}], "penalty_usd"),
        (
            [{"name": "d", "period": "day", "limit_usd": 1, "penalty_usd_per_usd": 2}],
            "for mode penalty",
        ),
        (
            [{"name": "t", "period": "day", "limit_usd": 1, "tenant": "a", "mode": "cap"}],
            "global budget",
        ),
        (
            [
                {"name": "a", "period": "day", "limit_usd": 1, "observed": True},
                {"name": "b", "period": "hour", "limit_usd": 1, "observed": True},
            ],
            "at most one budget can be observed",
        ),
        (
            [
                {"name": "a", "period": "day", "limit_usd": 1},
                {"name": "a", "period": "hour", "limit_usd": 1},
            ],
            "unique",
        ),
        ([{"name": "d", "period": "day", "limit_usd": 1, "mood": "cap"}], "mood"),
    ],
)
def test_bad_budgets_are_refused_naming_the_field(budgets, match):
    with pytest.raises(ScenarioError, match=match):
        _scenario(budgets)


def test_a_cap_refuses_prices_it_cannot_know_ahead_and_limits_it_cannot_keep():
    cap = {"name": "d", "period": "day", "limit_usd": 100, "mode": "cap"}
    ou_spot = {
        "name": "spot",
        "profile": "h100x1-llama3-8b",
        "purchase": "spot",
        "price_usd_h": 4.0,
        "quota": 2,
    }
    sc = _scenario([cap])
    with pytest.raises(ScenarioError, match=r"spot\.price: trace"):
        pools = [*sc.pools, type(sc.pools[0])(**ou_spot)]
        ClusterSimulator(sc.model_copy(update={"pools": pools}))
    with pytest.raises(ScenarioError, match=r"cannot be kept.*raise the limit"):
        ClusterSimulator(_scenario([{**cap, "limit_usd": 0.5}]))


# --- metering and the observation ---------------------------------------------------------------


def test_budgets_not_observed_leave_observations_and_rewards_as_they_were():
    """Reported budgets change no observation, no reward: bit for bit."""
    plain = ClusterSimulator(_scenario([]))
    reported = ClusterSimulator(
        _scenario(
            [
                {"name": "h", "period": "hour", "limit_usd": 5.0},
                {"name": "d", "period": "day", "limit_usd": 30.0},
            ]
        )
    )
    assert plain.budget_ledger is None
    assert reported.obs.shape == plain.obs.shape
    actions = _random_actions(plain, plain.episode_steps, 1)
    obs_a, rew_a, _ = _run(plain, actions)
    obs_b, rew_b, infos = _run(reported, actions)
    assert obs_a.tobytes() == obs_b.tobytes()
    assert rew_a.tobytes() == rew_b.tobytes()
    assert infos[-1]["budget/h/breaches"] >= 1  # the hourly limit was broken, and reported


def test_spend_is_counted_per_utc_period_of_the_simulated_clock():
    sc = _scenario([{"name": "h", "period": "hour", "limit_usd": 1000.0}])
    sim = ClusterSimulator(sc)
    actions = _random_actions(sim, sim.episode_steps, 2)
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    by_hour: dict[float, float] = {}
    for a in actions:
        t0 = float(sim.budget_ledger.now_unix_s()[0])
        sim.step(a[None, :])
        info = sim.step_info(0)
        start, _ = period_bounds(t0, "hour")
        by_hour[start] = by_hour.get(start, 0.0) + info["cost/usd"]
        assert info["budget/h/spend_usd"] == pytest.approx(by_hour[start], rel=1e-12)
    # the workload starts at 22:30 on Monday 2024-01-01: a half hour, then whole hours
    first = SIM_EPOCH_UNIX_S + 22 * 3600.0
    assert sorted(by_hour) == [first, first + 3600.0, first + 7200.0]
    assert max(by_hour.values()) == pytest.approx(infos_peak(sim), rel=1e-12)


def infos_peak(sim: ClusterSimulator) -> float:
    return sim.step_info(0)["budget/h/peak_spend_usd"]


def test_the_observed_budget_appends_its_entries_and_they_say_spend_and_time_left():
    limit = 20.0
    sc = _scenario([{"name": "d", "period": "day", "limit_usd": limit, "observed": True}])
    sim = ClusterSimulator(sc)
    n = len(BUDGET_FEATURES)
    assert sim.observation_names == observation_names(sim.pool_names) + [
        f[0] for f in BUDGET_FEATURES
    ]
    assert sim.obs.shape[1] == len(observation_names(sim.pool_names)) + n
    actions = np.tile(sim.noop_action(), (sim.episode_steps, 1))
    obs, _, infos = _run(sim, actions)
    # starts 22:30: 1.5 of 24 hours left, nothing spent
    assert obs[0, -2] == 0.0
    assert obs[0, -1] == pytest.approx(1.5 / 24, rel=1e-6)
    crossed = False
    for k, info in enumerate(infos):
        t = SIM_EPOCH_UNIX_S + 22.5 * 3600 + (k + 1) * sc.control_interval_s
        start, end = period_bounds(t, "day")
        if t == start:  # midnight: the new day is observed, unspent
            crossed = True
            assert obs[k + 1, -2] == 0.0 and obs[k + 1, -1] == 1.0
            continue
        assert obs[k + 1, -1] == pytest.approx((end - t) / 86400.0, rel=1e-6)
        if not crossed:
            assert obs[k + 1, -2] == pytest.approx(info["budget/d/spend_usd"] / limit, rel=1e-6)
    assert crossed


def test_tenant_budgets_count_what_metering_allocates_to_the_tenant(tmp_path):
    """Per tenant: the tenant's allocation of each step (rlscale.envs.metering); all tenants'
    budgets together count the whole bill."""
    from tests.conftest import write_tenant_csv_trace

    trace = tmp_path / "t.csv"
    write_tenant_csv_trace(trace, {"acme": 0.6, "zeta": 0.3, "kilo": 0.1}, hours=0.5)
    sim0 = ClusterSimulator(_csv_scenario(trace, []))
    tenants = list(sim0.workload.tenant_names)
    budgets = [{"name": "all", "period": "day", "limit_usd": 1e6}] + [
        {"name": f"t{k}", "period": "day", "limit_usd": 1e6, "tenant": t}
        for k, t in enumerate(tenants)
    ]
    sim = ClusterSimulator(_csv_scenario(trace, budgets))
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    for a in _random_actions(sim, 40, 3):
        sim.step(a[None, :])
    info = sim.step_info(0)
    costs = sim.tenant_costs(0)
    for k, t in enumerate(tenants):
        assert info[f"budget/t{k}/spend_usd"] == pytest.approx(costs[t], rel=1e-9, abs=1e-12)
    per_tenant = sum(info[f"budget/t{k}/spend_usd"] for k in range(len(tenants)))
    assert per_tenant == pytest.approx(info["budget/all/spend_usd"], rel=1e-9)
    with pytest.raises(ScenarioError, match="not in the workload"):
        ClusterSimulator(
            _csv_scenario(trace, [{"name": "x", "period": "day", "limit_usd": 1, "tenant": "zz"}])
        )


def _csv_scenario(trace, budgets):
    return scenario_from_dict(
        {
            "name": "tenants",
            "episode_hours": 0.3,
            "workload": {"kind": "csv", "path": str(trace)},
            "pools": [
                {
                    "name": "h100",
                    "profile": "h100x1-llama3-8b",
                    "price_usd_h": 4.0,
                    "quota": 4,
                    "initial_replicas": 1,
                }
            ],
            "budgets": budgets,
        }
    )


# --- penalty ----------------------------------------------------------------------------------


def test_the_penalty_is_exactly_the_rate_times_the_spend_over_the_limit():
    limit, rate, scale = 3.0, 2.5, 4.0
    report = {"name": "h", "period": "hour", "limit_usd": limit}
    charged = {**report, "mode": "penalty", "penalty_usd_per_usd": rate}
    base = ClusterSimulator(_scenario([report], reward={"scale": scale}))
    pen = ClusterSimulator(_scenario([charged], reward={"scale": scale}))
    actions = _random_actions(base, base.episode_steps, 4)
    obs_a, rew_a, infos_a = _run(base, actions)
    obs_b, rew_b, infos_b = _run(pen, actions)
    np.testing.assert_array_equal(obs_a, obs_b)  # the penalty changes the reward only
    charged_usd = (rew_a - rew_b) * scale
    # spend over the limit, per hour, from the report-mode run's own figures
    over_before, expected = 0.0, []
    for info in infos_a:
        over = max(info["budget/h/spend_usd"] - limit, 0.0)
        if info["budget/h/spend_usd"] < over_before + limit - 1e-9:  # a new hour began
            over_before = 0.0
        expected.append(rate * (over - over_before))
        over_before = over
    np.testing.assert_allclose(charged_usd, expected, rtol=1e-9, atol=1e-9)
    assert sum(expected) > 0.0  # the limit was broken: the test charged something
    assert [i["budget/penalty_usd"] for i in infos_b] == pytest.approx(expected, abs=1e-9)


# --- cap --------------------------------------------------------------------------------------


def _check_cap(sim: ClusterSimulator, actions: np.ndarray, seed: int) -> tuple[int, float]:
    """Run ``actions`` and check every cap's period spend against its limit; returns the
    steps where the cap bound and the largest spent share seen."""
    caps = [b for b in sim.scenario.budgets if b.mode == "cap"]
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=0)
    spend: dict[tuple[str, float], float] = {}
    bound, peak = 0, 0.0
    for a in actions:
        t0 = float(sim.budget_ledger.now_unix_s()[0])
        sim.step(a[None, :])
        info = sim.step_info(0)
        bound += int(info["budget/cap_bound"])
        for b in caps:
            key = (b.name, period_bounds(t0, b.period)[0])
            spend[key] = spend.get(key, 0.0) + info["cost/usd"]
            assert spend[key] <= b.limit_usd * (1 + 1e-9), (key, spend[key], b.limit_usd)
            peak = max(peak, spend[key] / b.limit_usd)
    return bound, peak


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    hourly=st.floats(0.6, 12.0),
    daily=st.floats(2.0, 40.0),
    grace=st.sampled_from([0.0, 30.0, 120.0, 400.0]),
    max_step=st.integers(1, 4),
    quota=st.integers(1, 8),
    rate=st.floats(1.0, 60.0),
    seed=st.integers(0, 2**31 - 1),
    greedy=st.floats(0.0, 1.0),
)
def test_a_cap_is_never_exceeded_whatever_the_policy(
    hourly, daily, grace, max_step, quota, rate, seed, greedy
):
    sc = _scenario(
        [
            {"name": "h", "period": "hour", "limit_usd": hourly, "mode": "cap"},
            {"name": "d", "period": "day", "limit_usd": daily, "mode": "cap"},
        ],
        drain_grace_s=grace,
        max_step=max_step,
        episode_hours=1.5,
        workload={
            "kind": "synthetic",
            "start_hour": 23.25,
            "synthetic": {"base_rate_rps": rate, "days": 1.0},
        },
    )
    sc = sc.model_copy(
        update={
            "pools": [
                p.model_copy(update={"quota": quota, "initial_replicas": min(1, quota)})
                for p in sc.pools
            ]
        }
    )
    try:
        sim = ClusterSimulator(sc)
    except ScenarioError as err:  # a limit below the drain of full quotas is refused
        assert "cannot be kept" in str(err)
        return
    rng = np.random.default_rng(seed)
    actions = _random_actions(sim, sim.episode_steps, seed)
    # a share of steps scale up as fast as allowed: the cap has something to cut
    up = rng.random(len(actions)) < greedy
    actions[up, : len(sim.pools)] = 2 * max_step
    _check_cap(sim, actions, seed)


def test_a_binding_cap_lets_the_period_spend_up_to_its_limit():
    sc = _scenario([{"name": "h", "period": "hour", "limit_usd": 4.0, "mode": "cap"}])
    sim = ClusterSimulator(sc)
    up = np.zeros((sim.episode_steps, sim.action_nvec.size), dtype=np.int64)
    up[:, : len(sim.pools)] = 2 * sc.max_step
    bound, peak = _check_cap(sim, up, 0)
    assert bound > 0 and peak > 0.9  # it bound, and the hour spent most of its limit


def test_the_cap_stops_the_most_expensive_replicas_first_and_admits_cheap_scale_ups_first():
    from rlscale.envs.budgets import _fit

    keep = np.array([4.0, 2.0, 1.0])  # USD a kept replica of each pool pays
    new = keep * 3  # and a new one
    # kept replicas fit, room for two new cheap ones of the three asked
    kept, ups = _fit(np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 5.0]), keep, new, 13.0)
    assert kept.tolist() == [1.0, 1.0, 1.0] and ups.tolist() == [0.0, 0.0, 2.0]
    # 10 USD short of keeping 3 x 4 + 2 x 2 + 2 x 1 = 18 in 8: stop three of the 4 USD pool
    kept, ups = _fit(np.array([3.0, 2.0, 2.0]), np.array([0.0, 0.0, 4.0]), keep, new, 8.0)
    assert kept.tolist() == [0.0, 2.0, 2.0] and ups.tolist() == [0.0, 0.0, 0.0]
    assert kept @ keep <= 8.0


def test_a_cap_that_never_binds_changes_nothing():
    """A cap far above any spend leaves every observation and reward as a report would."""
    report = [{"name": "d", "period": "day", "limit_usd": 1e5}]
    cap = [{**report[0], "mode": "cap"}]
    a = ClusterSimulator(_scenario(report))
    b = ClusterSimulator(_scenario(cap))
    actions = _random_actions(a, a.episode_steps, 5)
    obs_a, rew_a, _ = _run(a, actions)
    obs_b, rew_b, infos = _run(b, actions)
    assert not any(i["budget/cap_bound"] for i in infos)
    assert obs_a.tobytes() == obs_b.tobytes() and rew_a.tobytes() == rew_b.tobytes()


def test_the_shipped_budget_scenario_caps_its_daily_spend():
    sim = ClusterSimulator("synthetic-4day-budget")
    (budget,) = sim.scenario.budgets
    assert budget.mode == "cap" and budget.observed and budget.period == "day"
    assert math.isclose(sim.obs.shape[1] - len(observation_names(sim.pool_names)), 2)


def test_a_cap_holds_on_spot_pools_priced_from_a_trace():
    """spot-traces: an on-demand pool and a spot pool priced and preempted from traces (a
    notice of 120 s): the cap bounds the spot price ahead from the trace."""
    from rlscale.envs.scenario import ScenarioBudget, load_scenario

    base = load_scenario("spot-traces")
    assert any(p.spot is not None and p.spot.price == "trace" for p in base.pools)
    cap = ScenarioBudget(name="h", period="hour", limit_usd=6.0, mode="cap")
    sim = ClusterSimulator(base.model_copy(update={"episode_hours": 3.0, "budgets": [cap]}))
    actions = _random_actions(sim, sim.episode_steps, 0)
    greedy = np.random.default_rng(0).random(len(actions)) < 0.5
    actions[greedy, : len(sim.pools)] = 2 * sim.scenario.max_step
    bound, peak = _check_cap(sim, actions, 0)
    assert bound > 0 and peak > 0.9
