"""The rule-based baselines against the documented algorithms of the scalers they copy.

Unit tests drive each policy with hand-built cluster states (no simulator): the replica counts
expected here are worked out from the Kubernetes HPA, KEDA, Knative KPA, Ray Serve and SkyServe
rules cited in each module's docstring. Integration tests run each baseline on azure-conv.
"""

from __future__ import annotations

import copy
import math
import re

import pytest

from rlscale.agents.base import Policy, dump_memory, load_memory
from rlscale.agents.hpa import HPAPolicy, resource_replicas
from rlscale.agents.keda import KEDAPolicy
from rlscale.agents.knative import KnativePolicy
from rlscale.agents.observe import run_episode
from rlscale.agents.predictive import PredictivePolicy
from rlscale.agents.rayserve import RayServePolicy, desired_num_replicas
from rlscale.agents.registry import make_policy
from rlscale.agents.spot_aware import SpotAwarePolicy
from rlscale.envs.scenario import ScenarioError, load_scenario

BASELINES = ("hpa", "keda", "knative", "rayserve", "predictive", "spot_aware")
DAY_S = 86400.0


def decide_n(policy: Policy, state, memory=None):
    """One decision: (replicas of the first pool, all targets, new memory)."""
    memory = policy.initial_memory() if memory is None else memory
    decision, memory = policy.decide(state, memory)
    return decision.replicas[state.pools[0].name], decision.replicas, memory


def run_sequence(policy: Policy, build, states_fn, steps: int, first_pool: str = "h100"):
    """Decisions over ``steps`` intervals; replicas follow each decision (ready at once).

    ``states_fn(k, state_pools) -> state`` builds the k-th state from the current pools.
    """
    memory = policy.initial_memory()
    pools = None
    out = []
    for k in range(steps):
        state = states_fn(k, pools)
        decision, memory = policy.decide(state, memory)
        out.append(decision.replicas[first_pool])
        pools = build.follow(state, decision.replicas).pools
    return out


# --- Kubernetes HPA ---------------------------------------------------------------------------


def test_hpa_no_change_inside_tolerance(build):
    """|1 - utilization / target| <= 0.1 keeps the count; outside it, ceil(ready * ratio)."""
    hpa = HPAPolicy(target_utilization=0.5)
    pool = build.pool(ready=4, capacity_rps=10.0)
    for rate in (21.0, 18.2):  # utilization 0.525 and 0.455: ratios 1.05 and 0.91
        assert decide_n(hpa, build.state(pool, rate=rate))[0] == 4
    assert decide_n(hpa, build.state(pool, rate=26.0))[0] == 6  # ratio 1.3 -> ceil(5.2)


def test_hpa_memory_stays_bounded_when_asked_far_more_often_than_it_syncs(build):
    """The controller records one recommendation per 15 s sync: a caller asking every 5 ms
    (a runaway client of the service) must not grow the window without bound."""
    hpa = HPAPolicy(target_utilization=0.5)
    memory = hpa.initial_memory()
    pool = build.pool(ready=4, capacity_rps=10.0)
    for k in range(2000):
        _, memory = hpa.decide(build.state(pool, t=k * 0.005, rate=15.0 + k % 7), memory)
    assert len(memory["recs"]) <= math.ceil(300.0 / 15.0) + 2


def test_hpa_stabilization_holds_against_higher_recommendations_never_raises(build):
    """The scale-down window keeps the count at most at its highest recent recommendation; it
    never asks *more* than the current count when the proposal is lower (Kubernetes brings
    the current count within [lowest scale-up, highest scale-down] recommendation)."""
    hpa = HPAPolicy(target_utilization=0.5)
    # 25 req/s on 2 replicas of 10: utilization 1.25 -> 5
    n, _, memory = decide_n(hpa, build.state(build.pool(ready=2), t=0.0, rate=25.0))
    assert n == 5
    # the Deployment only reached 3, and the load is gone: hold 3 (5 is in the window)
    n, _, _ = decide_n(hpa, build.state(build.pool(ready=3), t=30.0, rate=0.1), memory)
    assert n == 3


def test_hpa_answers_the_same_however_often_it_is_asked(build):
    """The controller syncs every 15 s of metrics time, whatever the caller's cadence: asked
    every 0.5 s (the service polling Prometheus), it answers at each moment what it answered
    at its latest sync, and those syncs agree with a caller asking every 15 s. The Deployment
    does not follow here, as a real one lags the HPA."""
    hpa = HPAPolicy(target_utilization=0.5)

    def state(t: float):
        return build.state(build.pool(ready=3), t=t, rate=60.0 if t < 60.0 else 0.2)

    def run(step_s: float, until_s: float) -> dict[float, int]:
        memory = hpa.initial_memory()
        out = {}
        for k in range(round(until_s / step_s) + 1):
            n, _, memory = decide_n(hpa, state(k * step_s), memory)
            out[k * step_s] = n
        return out

    every_sync = run(15.0, 450.0)
    polled = run(0.5, 450.0)
    expected = {t: every_sync[15.0 * math.floor(t / 15.0)] for t in polled}
    assert polled == expected
    # under load: 12 over the first decision's two syncs, then +4 per 15 s on the 3 ready
    assert every_sync[0.0] == 12 and every_sync[15.0] == every_sync[45.0] == 7
    # no load: the current 3 held (not raised to the window's 12) until the last sync under
    # load (t=45) is 300 s old, then down to the minimum
    assert every_sync[60.0] == every_sync[330.0] == 3 and every_sync[345.0] == 1


def test_hpa_after_a_handover_syncs_rather_than_answer_its_count_from_before(build):
    """A handover sets the count, not the controller: its next decision, within 15 s of its
    last sync, decides on the metrics then instead of answering what it set before."""
    hpa = HPAPolicy(target_utilization=0.5, pool="h100")
    other = build.pool("a100", ready=3)
    n, _, memory = decide_n(hpa, build.state(build.pool(ready=2), other, t=0.0, rate=100.0))
    assert n == 12  # 2 -> 6 -> 12 over the first decision's two syncs
    n, _, memory = decide_n(hpa, build.state(build.pool(ready=0), other, t=1.0), memory)
    assert n == 3  # handover: the other pool's 3 replicas' worth
    n, _, memory = decide_n(hpa, build.state(build.pool(ready=3), t=2.0, rate=10.0), memory)
    assert n == 3  # 10 req/s on 3 (0.33 of 0.5: down to 2 after the window), not 12


def test_hpa_scales_up_at_once(build):
    """Scale-up has no stabilization window: the first decision moves."""
    hpa = HPAPolicy(target_utilization=0.5)
    assert decide_n(hpa, build.state(build.pool(ready=4), rate=40.0))[0] == 8


def test_hpa_scale_up_rate_limit(build):
    """Default policies allow max(4 pods, 100%) per 15 s: 2 -> 6 -> 12 over two syncs."""
    state = build.state(build.pool(ready=2, capacity_rps=10.0), rate=400.0)
    assert decide_n(HPAPolicy(target_utilization=0.5), state)[0] == 12
    one_sync = HPAPolicy(target_utilization=0.5, sync_period_s=30.0)
    assert decide_n(one_sync, state)[0] == 6


def test_hpa_starting_pods_count_as_idle(build):
    """On a scale-up, unready pods count as 0%: replicas already starting are not re-asked."""
    assert resource_replicas(5, 2, 3, 1.2, 0.5, 0.1) == 5  # new ratio 0.96 < 1: hold
    assert resource_replicas(2, 2, 0, 1.2, 0.5, 0.1) == 5  # the same load without them
    hpa = HPAPolicy(target_utilization=0.5)
    assert decide_n(hpa, build.state(build.pool(ready=2, starting=3), rate=24.0))[0] == 5


def test_hpa_scale_down_only_after_stabilization(build):
    """A lower recommendation wins only once every higher one is 300 s old."""
    hpa = HPAPolicy(target_utilization=0.5)

    def states(k, pools):
        t = 30.0 * k
        return build.state(*(pools or (build.pool(ready=4),)), t=t, rate=20.0 if t <= 120 else 10.0)

    counts = run_sequence(hpa, build, states, 20)
    # 4 replicas at utilization 0.5 until t=120; from t=150 the raw proposal is 2
    assert counts[: 420 // 30] == [4] * 14
    assert counts[420 // 30] == 2  # 300 s after the last recommendation of 4
    assert counts[-1] == 2


def test_hpa_initial_size_is_a_recommendation(build):
    """The first sync records the current size, so low load scales down only after 300 s."""
    hpa = HPAPolicy(target_utilization=0.5)

    def states(k, pools):
        return build.state(*(pools or (build.pool(ready=4),)), t=30.0 * k, rate=10.0)

    counts = run_sequence(hpa, build, states, 12)
    assert counts[:10] == [4] * 10
    assert counts[10] == 2


def test_hpa_kv_cache_metric_and_bounds(build):
    """kv_cache utilization 0.9 against 0.6 asks 3 of 2; min/max replicas bound the result."""
    pool = build.pool(ready=2)
    assert (
        decide_n(
            HPAPolicy(metric="kv_cache", target_utilization=0.6), build.state(pool, kv_util=0.9)
        )[0]
        == 3
    )
    assert (
        decide_n(HPAPolicy(target_utilization=0.5, max_replicas=5), build.state(pool, rate=100.0))[
            0
        ]
        == 5
    )
    assert decide_n(HPAPolicy(min_replicas=3), build.state(pool, rate=0.0))[0] == 3


def test_classic_scaler_manages_one_pool(build):
    """The cheapest on-demand pool per capacity is managed; others drain once it is ready."""
    h100 = build.pool("h100", ready=2, capacity_rps=10.0, price_usd_h=4.0)  # 0.40 $/h per rps
    a100 = build.pool("a100", ready=1, capacity_rps=4.0, price_usd_h=2.5)  # 0.63 $/h per rps
    spot = build.pool("spot", purchase="spot", ready=0, capacity_rps=10.0)
    _, targets, _ = decide_n(HPAPolicy(), build.state(h100, a100, spot, rate=12.0))
    assert targets == {"h100": 2, "a100": 0, "spot": 0}
    # nothing in the managed pool yet: it takes over the others' capacity, which stays meanwhile
    empty = build.pool("h100", ready=0, capacity_rps=10.0)
    a100_big = build.pool("a100", ready=4, capacity_rps=4.0, price_usd_h=2.5)
    _, targets, _ = decide_n(HPAPolicy(), build.state(empty, a100_big, rate=12.0))
    assert targets == {"h100": 2, "a100": 4}


# --- KEDA --------------------------------------------------------------------------------------


def test_keda_desired_is_ceil_metric_over_target(build):
    """AverageValue: ceil((queue + running) / target); tolerance on metric / (target * n)."""
    keda = KEDAPolicy(target_per_replica=20.0)
    assert decide_n(keda, build.state(build.pool(ready=2), queue=10, in_flight=90))[0] == 5
    assert decide_n(keda, build.state(build.pool(ready=5), queue=4, in_flight=100))[0] == 5
    queue_only = KEDAPolicy(metric="queue", target_per_replica=20.0)
    assert decide_n(queue_only, build.state(build.pool(ready=2), queue=100, in_flight=90))[0] == 5


def test_keda_min_and_max_replica_count(build):
    """maxReplicaCount caps; with minReplicaCount >= 1 the idle HPA settles at it, not 0."""
    capped = KEDAPolicy(target_per_replica=20.0, max_replica_count=3)
    assert decide_n(capped, build.state(build.pool(ready=2), in_flight=100))[0] == 3
    floor = KEDAPolicy(target_per_replica=20.0, min_replica_count=2)

    def states(k, pools):
        return build.state(*(pools or (build.pool(ready=4),)), t=30.0 * k)

    counts = run_sequence(floor, build, states, 14)
    assert counts[:10] == [4] * 10  # the 300 s stabilization window
    assert counts[10:] == [2] * 4


def test_keda_cooldown_to_zero_and_activation(build):
    """minReplicaCount 0: to 0 once idle for cooldownPeriod; an active trigger wakes it to 1."""
    keda = KEDAPolicy(target_per_replica=20.0, cooldown_period_s=300.0)

    def states(k, pools):
        t = 30.0 * k
        return build.state(*(pools or (build.pool(ready=1),)), t=t, in_flight=5 if t <= 60 else 0)

    counts = run_sequence(keda, build, states, 14)
    assert counts[: 360 // 30] == [1] * 12  # last active at t=60
    assert counts[360 // 30 :] == [0, 0]
    asleep = build.pool(ready=0)
    assert decide_n(keda, build.state(asleep, queue=3))[0] == 1
    assert decide_n(KEDAPolicy(min_replica_count=2), build.state(asleep, queue=3))[0] == 2
    assert decide_n(keda, build.state(asleep))[0] == 0


def test_keda_does_not_serve_the_hpa_count_from_before_zero(build):
    """Once KEDA has set the count (to 0, then 1 on activation), the HPA's next decision syncs
    on the metrics then, even within 15 s of its last sync, rather than answering the count
    it had set before."""
    keda = KEDAPolicy(target_per_replica=32.0, cooldown_period_s=0.0)
    n, _, memory = decide_n(keda, build.state(build.pool(ready=2), t=0.0, in_flight=320))
    assert n == 10
    n, _, memory = decide_n(keda, build.state(build.pool(ready=10), t=1.0), memory)
    assert n == 0  # idle, no cooldown
    n, _, memory = decide_n(keda, build.state(build.pool(ready=0), t=2.0, in_flight=64), memory)
    assert n == 1  # activated
    n, _, memory = decide_n(keda, build.state(build.pool(ready=1), t=3.0, in_flight=64), memory)
    # KEDA's 1 stands (its scale-up of t=0 still counts against the HPA's 15 s rate limit),
    # not the 10 the HPA set at t=0
    assert n == 1


# --- Knative KPA -------------------------------------------------------------------------------


def kpa_run(kpa: KnativePolicy, build, ready: int, concurrencies: list[float]) -> list[int]:
    """KPA decisions at t = 0, 30, ...; the first holds (no data), replicas follow."""

    def states(k, pools):
        return build.state(
            *(pools or (build.pool(ready=ready),)), t=30.0 * k, in_flight=concurrencies[k]
        )

    return run_sequence(kpa, build, states, len(concurrencies))


def test_knative_first_decision_has_no_data(build):
    """The autoscaler's first tick has no scrape: it holds instead of reading 0 concurrency."""
    assert kpa_run(KnativePolicy(), build, 6, [0.0]) == [6]


def test_knative_stable_window_averages(build):
    """dspc = ceil(mean concurrency of the last 60 s / 70): two samples at 30 s."""
    assert kpa_run(KnativePolicy(), build, 4, [0, 280, 140, 140]) == [4, 4, 3, 2]


def test_knative_panic_at_twice_and_never_down_while_panicking(build):
    """Panic when ceil(panic / 70) / ready >= 2; hold the panic peak until 60 s calm."""
    counts = kpa_run(KnativePolicy(), build, 2, [0, 100, 280, 70, 70, 70])
    # t=60: dppc 4 on 2 ready = 200% -> panic, max(stable 3, panic 4); t=90,120 hold 4 though
    # the stable proposal is lower; t=150: 60 s after the last over-threshold tick -> stable
    assert counts == [2, 2, 4, 4, 4, 2]
    below = kpa_run(KnativePolicy(), build, 2, [0, 100, 209])  # dppc 3 on 2 ready = 150%
    assert below == [2, 2, 3]


def test_knative_scale_down_rate_and_delay(build):
    """max-scale-down-rate 2 halves at most per tick; scale-down-delay holds the window's max."""
    assert kpa_run(KnativePolicy(), build, 8, [0, 0, 0]) == [8, 4, 2]
    load = [0, 280, 70, 70, 70]
    assert kpa_run(KnativePolicy(), build, 4, load) == [4, 4, 3, 1, 1]
    delayed = KnativePolicy(scale_down_delay_s=60.0)
    assert kpa_run(delayed, build, 4, load) == [4, 4, 4, 3, 2]


# --- Ray Serve ---------------------------------------------------------------------------------


def ray_run(policy: RayServePolicy, build, ready: int, ongoing: list[float]) -> list[int]:
    """Ray decisions at t = 0, 30, ...; replicas follow."""

    def states(k, pools):
        return build.state(*(pools or (build.pool(ready=ready),)), t=30.0 * k, in_flight=ongoing[k])

    return run_sequence(policy, build, states, len(ongoing))


def test_rayserve_upscale_after_upscale_delay(build):
    """desired = ceil(running * ongoing / (target * running)); moves after 30 s of "up"."""
    assert ray_run(RayServePolicy(), build, 2, [20, 20, 20]) == [2, 10, 10]
    slower = RayServePolicy(upscale_delay_s=60.0)
    assert ray_run(slower, build, 2, [20, 20, 20, 20]) == [2, 2, 10, 10]


def test_rayserve_downscale_after_downscale_delay(build):
    """A scale-down needs 600 s of consecutive "down" decisions."""
    counts = ray_run(RayServePolicy(), build, 10, [4.0] * 22)
    assert counts[:20] == [10] * 20
    assert counts[20] == 2  # t = 600 s after the first "down" at t = 0


def test_rayserve_direction_change_resets_delay(build):
    """up, down, up: the up delay restarts at the last up."""
    counts = ray_run(RayServePolicy(), build, 4, [16, 2, 16, 16])
    assert counts == [4, 4, 4, 8]


def test_rayserve_smoothing_factors():
    """The gain scales the distance to 1; a scale-down the gain would freeze takes one off."""
    assert desired_num_replicas(20, 2, 2.0, 0.5, 1.0, 1, 64) == 6  # 2 * (1 + 4 * 0.5)
    assert desired_num_replicas(17, 10, 2.0, 1.0, 0.1, 1, 64) == 9  # stuck at 10 -> 9
    assert desired_num_replicas(1000, 2, 2.0, 1.0, 1.0, 1, 8) == 8  # max_replicas


def test_rayserve_cold_start_rule(build):
    """No running replica and requests waiting: scale to max(ceil(upscaling_factor), target)."""
    assert decide_n(RayServePolicy(), build.state(build.pool(ready=0), queue=5))[0] == 1


# --- predictive --------------------------------------------------------------------------------


def _ramp_rps(time_of_week_s: float) -> float:
    """2 req/s, and 10 req/s from 12:00 to 14:00 every day."""
    return 10.0 if 12 * 3600 <= time_of_week_s % DAY_S < 14 * 3600 else 2.0


def test_predictive_provisions_ahead_of_a_daily_ramp(build):
    """After a day of history the 12:00 ramp is provisioned one lead time early."""
    policy = PredictivePolicy(
        lead_s=120.0, headroom=0.2, target_utilization=0.7, scale_down_delay_s=0.0
    )
    pool = build.pool(ready=2, capacity_rps=2.0)  # 1.4 req/s per replica at 70%

    def state_at(tow: float):
        rate = _ramp_rps(tow - 30.0)  # the state reports the interval that just ended
        return build.state(pool, t=tow, time_of_week_s=tow, rate=rate)

    memory = policy.initial_memory()
    early = {}
    for k in range(int(DAY_S // 30)):
        tow = 30.0 * k
        n, _, memory = decide_n(policy, state_at(tow), memory)
        early[tow] = n
    ramp = 12 * 3600.0
    assert early[ramp - 120] == 2  # day 1: no season yet, the EWMA sees 2 req/s
    for tow in range(int(DAY_S), int(DAY_S + ramp - 600), 30):
        memory = decide_n(policy, state_at(float(tow)), memory)[2]
    n_before, _, memory = decide_n(policy, state_at(DAY_S + ramp - 600), memory)
    assert n_before == 2  # 10 minutes before: the ramp is beyond the lead time
    for tow in range(int(DAY_S + ramp - 570), int(DAY_S + ramp - 120), 30):
        memory = decide_n(policy, state_at(float(tow)), memory)[2]
    n_lead, _, _ = decide_n(policy, state_at(DAY_S + ramp - 120), memory)
    # 0.7 * 10 (last season) + 0.3 * 2 (EWMA) = 7.6 req/s, * 1.2 / 1.4 -> 7 replicas
    assert n_lead == math.ceil(7.6 * 1.2 / 1.4)


def test_predictive_uses_trend_before_a_season_and_the_state_forecast(build):
    """Without history a rising EWMA is extrapolated; an announced forecast is provisioned."""
    policy = PredictivePolicy(
        lead_s=120.0, headroom=0.0, target_utilization=1.0, scale_down_delay_s=0.0
    )
    pool = build.pool(ready=2, capacity_rps=1.0)
    memory = policy.initial_memory()
    for k in range(20):  # the EWMA climbs 0.5 req/s per interval
        n, _, memory = decide_n(policy, build.state(pool, t=30.0 * k, rate=5 + 0.5 * k), memory)
    assert n > math.ceil(5 + 0.5 * 19)
    n, _, _ = decide_n(policy, build.state(pool, rate=2.0, forecast=20.0))
    assert n == 20


# --- spot-aware (SkyServe) ---------------------------------------------------------------------


def spot_state(build, *, od_ready=1, spot_ready=3, notices=0, share=1.0, rate=20.0):
    """On-demand h100 and spot pools of 10 req/s replicas."""
    od = build.pool("h100", ready=od_ready, capacity_rps=10.0)
    spot = build.pool(
        "h100-spot",
        purchase="spot",
        ready=spot_ready,
        capacity_rps=10.0,
        preempt_notices=notices,
        spot_capacity_share=share,
    )
    return build.state(od, spot, rate=rate)


def test_spot_aware_floor_fill_and_fallback(build):
    """Target 4 (20 req/s at 5 per replica): 1 on-demand floor + 3 spot; fallback covers gaps."""
    sky = SpotAwarePolicy(target_utilization=0.5, upscale_delay_s=0.0)
    assert decide_n(sky, spot_state(build))[1] == {"h100": 1, "h100-spot": 3}
    # two spot replicas preempted (gone): re-requested, and covered on demand meanwhile
    assert decide_n(sky, spot_state(build, od_ready=1, spot_ready=1))[1] == {
        "h100": 3,
        "h100-spot": 3,
    }
    # two under a preemption notice count as lost already
    assert decide_n(sky, spot_state(build, notices=2))[1] == {"h100": 3, "h100-spot": 3}
    # no spot capacity on the market: nothing asked of it, all on demand
    no_market = spot_state(build, spot_ready=0, share=0.0)
    assert decide_n(sky, no_market)[1] == {"h100": 4, "h100-spot": 0}
    static_fallback = SpotAwarePolicy(
        target_utilization=0.5, upscale_delay_s=0.0, dynamic_ondemand_fallback=False
    )
    assert decide_n(static_fallback, spot_state(build, spot_ready=1))[1] == {
        "h100": 1,
        "h100-spot": 3,
    }


def test_spot_aware_hysteresis(build):
    """The target rises only after int(upscale_delay / interval) consecutive higher decisions."""
    sky = SpotAwarePolicy(target_utilization=0.5, upscale_delay_s=90.0)
    memory = sky.initial_memory()
    spot_counts = []
    for k in range(4):
        state = spot_state(build, rate=40.0)  # raw target 8 from a running 4
        state = build.state(*state.pools, t=30.0 * k, rate=40.0)
        _, targets, memory = decide_n(sky, state, memory)
        spot_counts.append(targets["h100-spot"])
    assert spot_counts == [3, 3, 7, 7]


def test_spot_aware_delays_are_metrics_time_whatever_the_poll_rate(build):
    """Asked every 0.5 s (the service polling Prometheus), the target moves when it would at
    30 s decisions (60 s into the streak for a 90 s delay), not at the third call (1 s)."""

    def first_move(every_s: float) -> float:
        sky = SpotAwarePolicy(target_utilization=0.5, upscale_delay_s=90.0)
        memory = sky.initial_memory()
        t = 0.0
        while t < 300.0:
            state = spot_state(build, rate=40.0)  # raw target 8 from a running 4
            state = build.state(*state.pools, t=t, rate=40.0)
            _, targets, memory = decide_n(sky, state, memory)
            if targets["h100-spot"] == 7:
                return t
            t += every_s
        return math.inf

    assert first_move(30.0) == 60.0
    assert first_move(0.5) == 60.0


# --- all baselines -----------------------------------------------------------------------------


def _policies() -> dict[str, Policy]:
    return {
        "hpa": HPAPolicy(target_utilization=0.5),
        "keda": KEDAPolicy(target_per_replica=10.0),
        "knative": KnativePolicy(container_concurrency_target=20.0),
        "rayserve": RayServePolicy(target_ongoing_requests=5.0),
        "predictive": PredictivePolicy(lead_s=90.0),
        "spot_aware": SpotAwarePolicy(upscale_delay_s=60.0, downscale_delay_s=120.0),
    }


def _wave_state(build, k: int, pools):
    """A varying load: a wave of arrivals, queue and work in flight, and a preemption."""
    rate = 10.0 + 8.0 * math.sin(k / 4.0)
    pools = pools or (
        build.pool("h100", ready=2, capacity_rps=10.0),
        build.pool("h100-spot", purchase="spot", ready=1, capacity_rps=10.0),
    )
    if k == 15:  # the spot replicas are preempted
        pools = (pools[0], build.pool("h100-spot", purchase="spot", ready=0, capacity_rps=10.0))
    return build.state(
        *pools,
        t=30.0 * k,
        time_of_week_s=3600.0 + 30.0 * k,
        rate=rate,
        ewma=rate * 0.9,
        queue=max(0.0, rate - 12.0) * 5,
        in_flight=rate * 3,
    )


@pytest.mark.parametrize("name", BASELINES)
def test_memory_round_trips_through_json(name, build):
    """Dumping and reloading memory at every step changes no decision; decide is pure."""
    policy = _policies()[name]
    plain_memory = policy.initial_memory()
    json_memory = load_memory(dump_memory(policy.initial_memory()))
    pools = None
    for k in range(30):
        state = _wave_state(build, k, pools)
        snapshot = copy.deepcopy(plain_memory)
        plain, new_memory = policy.decide(state, plain_memory)
        assert plain_memory == snapshot  # the memory passed in is left as it was
        again, _ = policy.decide(state, snapshot)
        assert again == plain  # same state and memory, same decision
        plain_memory = new_memory
        via_json, json_memory = policy.decide(state, json_memory)
        json_memory = load_memory(dump_memory(json_memory))
        assert via_json == plain, f"step {k}"
        pools = build.follow(state, plain.replicas).pools


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("hpa", {"target_utilisation": 0.5}, "unknown parameter 'target_utilisation'"),
        ("hpa", {"target_utilization": -1}, "'target_utilization' = -1"),
        ("hpa", {"min_replicas": 0}, "'min_replicas' = 0"),
        ("hpa", {"metric": "gpu"}, "'metric' = 'gpu'"),
        ("keda", {"target_per_replica": "ten"}, "'target_per_replica' = 'ten'"),
        ("knative", {"pool": "tpu"}, "'pool' = 'tpu'"),
        ("rayserve", {"max_replicas": 0}, "'max_replicas' = 0"),
        ("predictive", {"lead_s": 30.0, "season": "month"}, "'season' = 'month'"),
        ("spot_aware", {"spot_pool": "h100"}, "'spot_pool' = 'h100'"),
    ],
)
def test_factories_reject_bad_params(name, params, fragment):
    """Registry factories fail with a ScenarioError naming the parameter and its value."""
    scenario = load_scenario("azure-conv")
    with pytest.raises(ScenarioError, match=re.escape(fragment)):
        make_policy(name, scenario, params)


def test_spot_aware_needs_a_spot_pool():
    """A scenario without spot has nothing for the spot-aware scaler to fill."""
    with pytest.raises(ScenarioError, match="needs a spot pool"):
        make_policy("spot_aware", load_scenario("azure-code"), {})


@pytest.mark.needs_data
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_on_azure_conv(name, azure_conv):
    """Defaults from the docs run a training window of azure-conv and keep the SLO in sight."""
    scenario, split, sim = azure_conv["scenario"], azure_conv["split"], azure_conv["sim"]
    policy = make_policy(name, scenario, {})
    assert make_policy(name, scenario, policy.config()).config() == policy.config()
    result = run_episode(policy, sim, seed=0, start_step=split.train_starts[0])
    summary = result.summary
    assert summary["completed"] > 0
    assert summary["slo_attainment"] >= 0.95
    # at most the whole quota of every pool for the whole episode
    hours = split.episode_steps * scenario.control_interval_s / 3600.0
    ceiling = sum(p.quota * p.price_usd_h for p in scenario.pools) * hours
    assert 0 < summary["cost_usd"] <= ceiling


@pytest.mark.needs_data
def test_predictive_lead_defaults_to_the_median_cold_start(azure_conv):
    """provisioning 60 + image pull 40 + weight load (~4.6 s for 16 GB) + warm-up 20 s."""
    policy = make_policy("predictive", azure_conv["scenario"], {})
    assert 120.0 < policy.config()["lead_s"] < 130.0


def test_spot_aware_sizes_a_batch_only_spot_pool_for_the_backlog():
    """With batch work and a batch-only spot pool, interactive load runs wholly on demand and
    spot gets ceil(backlog / (drain share x window) / (utilization x capacity)) replicas."""
    from rlscale.agents.base import ClusterState, PoolState
    from rlscale.agents.spot_aware import SpotAwarePolicy

    def state(batch_queue: float, spot_serves: str) -> ClusterState:
        pools = (
            PoolState("od", "on_demand", 8, 0, 4.0, 4.0, 10.0, ready=3.0),
            PoolState("spot", "spot", 8, 0, 4.0, 1.6, 10.0, serves=spot_serves),
        )
        return ClusterState(
            time_s=0.0,
            time_of_week_s=0.0,
            interval_s=30.0,
            arrival_rate_rps=17.0,
            arrival_rate_ewma_rps=17.0,
            forecast_rps=17.0,
            queue=0.0,
            in_flight=0.0,
            gpu_util=0.5,
            kv_util=0.3,
            ttft_p50_s=0.1,
            ttft_p95_s=0.2,
            tpot_p95_s=0.03,
            slo_attainment=1.0,
            dropped=0.0,
            ttft_target_s=2.0,
            tpot_target_s=0.1,
            pools=pools,
            batch_queue=batch_queue,
            batch_arrival_rate_rps=5.0,
            batch_deadline_s=1800.0,
        )

    policy = SpotAwarePolicy(target_utilization=0.6, batch_utilization=0.9, batch_drain_share=0.5)
    memory = policy.initial_memory()
    # 17 req/s at 6 per replica: 3 replicas, all on demand; 8100 queued over 900 s = 9 req/s
    decision, _ = policy.decide(state(8100.0, "batch"), memory)
    assert decision.replicas["od"] == 3 and decision.replicas["spot"] == 1
    decision, _ = policy.decide(state(8101.0, "batch"), memory)
    assert decision.replicas["spot"] == 2
    decision, _ = policy.decide(state(0.0, "batch"), memory)
    assert decision.replicas == {"od": 3, "spot": 0}
    # a spot pool that serves both: its interactive share as before, plus the batch replicas
    shared, _ = policy.decide(state(8100.0, "all"), memory)
    plain, _ = policy.decide(state(0.0, "all"), memory)
    assert shared.replicas["spot"] == plain.replicas["spot"] + 1
    assert shared.replicas["od"] == plain.replicas["od"]
