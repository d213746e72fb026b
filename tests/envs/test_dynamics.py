"""Behaviour of the simulated cluster's mechanisms, one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs.coldstart import build_cold_start
from rlscale.envs.profiles import load_profile
from rlscale.envs.simulator import ClusterSimulator

pytestmark = pytest.mark.needs_data


def _sim(scenario, seed=0, start_step=0):
    sim = ClusterSimulator(scenario, 1)
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=start_step)
    return sim


def _one_pool(make_small_scenario, rate=8.0, **pool):
    base = {"name": "h100", "profile": "h100x1-llama3-8b", "price_usd_h": 4.0, "quota": 6}
    base.update(pool)
    return make_small_scenario(
        pools=[base],
        workload={"kind": "synthetic", "synthetic": {"base_rate_rps": rate, "days": 0.5}},
    )


def test_static_cluster_bills_price_times_hours(make_small_scenario):
    sim = _sim(_one_pool(make_small_scenario, initial_replicas=3))
    for _ in range(sim.episode_steps):
        sim.step(sim.noop_action()[None])
    assert sim.step_info(0)["cost/total_usd"] == pytest.approx(3 * 4.0 * 0.5)


def test_cold_start_passes_through_provisioning_and_loading(make_small_scenario):
    sc = _one_pool(make_small_scenario, initial_replicas=1)
    sim = _sim(sc)
    up = sim.noop_action()
    up[0] += 2
    sim.step(up[None])
    seen = {"provisioning": 0.0, "loading": 0.0}
    steps_to_ready = None
    for step in range(1, 60):
        r = sim.replicas(0)["h100"]
        seen["provisioning"] = max(seen["provisioning"], r["provisioning"])
        seen["loading"] = max(seen["loading"], r["loading"])
        if r["ready"] == 3:
            steps_to_ready = step
            break
        sim.step(sim.noop_action()[None])
    assert seen["provisioning"] > 0 and seen["loading"] > 0
    cold = build_cold_start(sc.cold_start, load_profile("h100x1-llama3-8b"))
    fastest = (cold.provisioning_s[0] + cold.loading_s[0]) / sc.control_interval_s
    slowest = (cold.provisioning_s[-1] + cold.loading_s[-1]) / sc.control_interval_s + 1
    assert steps_to_ready is not None and fastest - 1 <= steps_to_ready <= slowest
    # billed while starting: more than the one ready replica costs
    assert sim.step_info(0)["cost/total_usd"] > 4.0 * steps_to_ready * 30 / 3600


def test_warm_pool_starts_faster_than_a_cold_start(make_small_scenario):
    sc = _one_pool(make_small_scenario, initial_replicas=1, warm_pool_max=2, warm_holding_usd_h=0.5)

    def steps_until_ready(use_warm: bool) -> int:
        sim = _sim(sc)
        hold = sim.noop_action()
        if use_warm:
            hold[1] = 2  # warm-pool target of the only pool
            for _ in range(40):  # let the pool fill
                sim.step(hold[None])
            assert sim.replicas(0)["h100"]["standby"] == 2
        up = hold.copy()
        up[0] += 2
        sim.step(up[None])
        for step in range(1, 60):
            if sim.replicas(0)["h100"]["ready"] == 3:
                return step
            sim.step(hold[None])
        raise AssertionError("never became ready")

    assert steps_until_ready(True) < steps_until_ready(False)


def test_scale_down_drains_then_releases(make_small_scenario):
    sc = _one_pool(make_small_scenario, rate=20.0, initial_replicas=3)
    sim = _sim(sc)
    for _ in range(5):
        sim.step(sim.noop_action()[None])
    down = sim.noop_action()
    down[0] -= 2
    sim.step(down[None])
    r = sim.replicas(0)["h100"]
    assert r["ready"] == 1
    assert r["draining"] == 2 or sim.counters(0)["dropped"] == 0  # drained within the step
    for _ in range(10):
        sim.step(sim.noop_action()[None])
    assert sim.replicas(0)["h100"]["draining"] == 0
    assert sim.counters(0)["dropped"] == 0


def test_no_capacity_means_every_request_times_out(make_small_scenario):
    sc = _one_pool(make_small_scenario, initial_replicas=0)
    sim = _sim(sc)
    for _ in range(10):
        sim.step(sim.noop_action()[None])
    c = sim.counters(0)
    assert c["completed"] == 0 and c["dropped"] > 0
    timeout_s = sc.slo.timeout_s
    # what arrived in the last timeout window is still queued, everything older was dropped
    assert c["queued"] == pytest.approx(c["arrived"] - c["dropped"])
    assert c["queued"] < c["arrived"] * (timeout_s + 30) / (10 * 30)
    assert sim.step_info(0)["slo/attainment"] == 0.0


def test_cache_hits_never_reach_a_gpu(make_small_scenario):
    sc = _one_pool(make_small_scenario, initial_replicas=2)
    sc = sc.model_copy(
        update={"workload": sc.workload.model_copy(update={"cache_hit_ratio": 0.25})}
    )
    sim = _sim(sc)
    for _ in range(20):
        sim.step(sim.noop_action()[None])
    c = sim.counters(0)
    assert c["cache_hits"] == pytest.approx(0.25 * c["arrived"])
    assert c["admitted"] == pytest.approx(0.75 * c["arrived"], rel=1e-3)


def test_latency_grows_with_load(make_small_scenario):
    def ttft_tpot(rate):
        sim = _sim(_one_pool(make_small_scenario, rate=rate, initial_replicas=1))
        for _ in range(40):
            sim.step(sim.noop_action()[None])
        lat = sim.episode_latency(0)
        return lat["ttft_p95_s"], lat["tpot_p50_s"]

    light, heavy = ttft_tpot(1.0), ttft_tpot(14.0)
    assert heavy[0] > light[0] and heavy[1] > light[1]


def test_preempted_work_returns_to_the_queue(make_small_scenario):
    spot = {
        "name": "spot",
        "profile": "h100x1-llama3-8b",
        "purchase": "spot",
        "price_usd_h": 4.0,
        "quota": 6,
        "initial_replicas": 4,
        "spot": {"hazard_per_h": 30.0, "notice_s": 5.0},
    }
    # long generations outlast the 5 s notice, so work is still in flight when it expires
    sc = make_small_scenario(
        pools=[spot],
        workload={
            "kind": "synthetic",
            "synthetic": {"base_rate_rps": 5.0, "days": 0.5},
            "output_tokens": {"median": 1500, "p90": 4000},
        },
        drain_grace_s=600,
    )
    sim = _sim(sc)
    up = sim.noop_action()
    up[0] += 1
    preempted = 0.0
    for _ in range(sim.episode_steps):
        sim.step(up[None])
        preempted += sim.step_info(0)["spot/preemptions"]
    c = sim.counters(0)
    assert preempted > 0 and c["requeued"] > 0
    # requeued requests are not lost: only the timeout drops anything
    total = c["completed"] + c["queued"] + c["in_flight"] + c["dropped"] + c["cache_hits"]
    assert total == pytest.approx(c["arrived"])


def test_spot_price_follows_the_trace(make_small_scenario):
    spot = {
        "name": "spot",
        "profile": "h100x1-llama3-8b",
        "purchase": "spot",
        "price_usd_h": 4.0,
        "quota": 4,
        "initial_replicas": 1,
        "spot": {"price": "trace", "instance_type": "g5.xlarge", "mean_discount": 0.4},
    }
    sim = _sim(make_small_scenario(pools=[spot]))
    prices = []
    for _ in range(10):
        sim.step(sim.noop_action()[None])
        prices.append(sim.step_info(0)["spot/price_usd_h"]["spot"])
    # the trace's price path, scaled so that it averages 40% of on-demand
    assert np.allclose(prices, sim.spot_series[0, 0, 1:11])
    assert np.mean(prices) == pytest.approx(1.6, rel=0.05)


@pytest.mark.parametrize("lam", [0.5, 3.0, 9.9, 10.0, 40.0, 400.0])
def test_poisson_sampler_has_poisson_moments(lam):
    from rlscale.envs import dynamics as dyn

    rng = np.array([2024], dtype=np.uint64)
    x = np.array([dyn._poisson(rng, 0, lam) for _ in range(40_000)])
    se = np.sqrt(lam / x.size)
    assert abs(x.mean() - lam) < 5 * se
    assert x.var() == pytest.approx(lam, rel=0.06)
    assert (x >= 0).all() and (x == np.floor(x)).all()


def test_quantile_table_draws_reproduce_the_table():
    from rlscale.envs import dynamics as dyn

    table = np.sort(np.random.default_rng(1).lognormal(3.0, 0.5, 32))
    rng = np.array([7], dtype=np.uint64)
    x = np.array([dyn._draw_table(rng, 0, table) for _ in range(40_000)])
    levels = (np.arange(32) + 0.5) / 32
    assert np.allclose(np.quantile(x, levels[2:-2]), table[2:-2], rtol=0.03)


@pytest.mark.parametrize("tpot_s", [0.0123, 0.031, 0.0877, 0.42])
def test_episode_tpot_percentiles_within_two_percent(tpot_s):
    """The episode TPOT histogram resolves a percentile to within 2 % of its value."""
    from rlscale.envs import dynamics as dyn

    span = np.log(dyn.TPOT_MAX_S / dyn.TPOT_MIN_S)
    hist = np.zeros(dyn.TPOT_BINS)
    # every token at one TPOT, binned as the kernel bins it
    hist[int(np.log(tpot_s / dyn.TPOT_MIN_S) / span * dyn.TPOT_BINS)] = 1000.0
    sp = np.zeros(dyn.N_SP)
    out = dyn.episode_latency(sp, np.ones((1, 4)), np.zeros(dyn.N_CS), np.zeros((1, 3, 4)), hist)
    for k in (3, 4, 5):
        assert out[k] == pytest.approx(tpot_s, rel=0.02)


# --- continuous batching at saturation (the knee) ---------------------------------------------


def _fixed_lengths(make_small_scenario, rate, prompt, output, replicas=1, **extra):
    """One H100 pool under flat synthetic load whose every request has the same lengths."""
    return make_small_scenario(
        pools=[
            {
                "name": "h100",
                "profile": "h100x1-llama3-8b",
                "price_usd_h": 4.0,
                "quota": replicas,
                "initial_replicas": replicas,
            }
        ],
        workload={
            "kind": "synthetic",
            "synthetic": {
                "base_rate_rps": rate,
                "days": 0.5,
                "noise_cv": 0.0,
                "daily_amplitude": 0.0,
            },
            "prompt_tokens": {"median": prompt, "p90": prompt},
            "output_tokens": {"median": output, "p90": output},
        },
        **extra,
    )


def _pool_state(sim):
    """(sequences, held context, remaining output) of the only pool's ready replicas."""
    from rlscale.envs import dynamics as dyn

    row = sim.pool_state[0, 0]
    return row[dyn.PS_IR], row[dyn.PS_CR], row[dyn.PS_WR]


@pytest.mark.parametrize("replicas", [1, 3])
def test_overload_holds_max_num_seqs_per_replica(make_small_scenario, replicas):
    """Slots freed within a sub-step are refilled within it: a saturated replica holds
    max_num_seqs sequences, not a few percent fewer (the queue is never empty here)."""
    sc = _fixed_lengths(make_small_scenario, 300.0 * replicas, 500, 200, replicas=replicas)
    sim = _sim(sc)
    held = []
    for _ in range(12):
        sim.step(sim.noop_action()[None])
        assert sim.step_info(0)["load/queue"] > 0
        held.append(_pool_state(sim)[0])
    max_seqs = load_profile("h100x1-llama3-8b").max_num_seqs
    assert np.mean(held[4:]) / replicas == pytest.approx(max_seqs, rel=0.005)


@pytest.mark.parametrize(("prompt", "output"), [(500, 201), (1500, 61)])
def test_held_context_grows_with_generated_tokens(make_small_scenario, prompt, output):
    """As the calibration assumes (an iteration pays for prompt AND generated tokens held): with
    every request of the same lengths, a sequence in flight holds on average its prompt and
    half its output, and has the other half to go."""
    sc = _fixed_lengths(make_small_scenario, 20.0, prompt, output)
    sim = _sim(sc)
    seqs, ctx, rem = [], [], []
    for _ in range(20):
        sim.step(sim.noop_action()[None])
        s, c, w = _pool_state(sim)
        seqs.append(s)
        ctx.append(c)
        rem.append(w)
    mean_seqs = np.mean(seqs[6:])
    assert np.mean(ctx[6:]) / mean_seqs == pytest.approx(prompt + output / 2, rel=0.03)
    assert np.mean(rem[6:]) / mean_seqs == pytest.approx(output / 2, rel=0.05)


def test_per_replica_queues_make_requests_wait_at_light_load(make_small_scenario):
    """A request sent blindly to a busy replica waits for that replica's iteration and the
    prompts sent to it, where a least-loaded gateway hands it to whichever replica starts an
    iteration first: TTFT rises, throughput does not change."""
    results = {}
    for routing in ("least_loaded", "random"):
        sc = _fixed_lengths(make_small_scenario, 40.0, 1000, 100, replicas=4, routing=routing)
        sim = _sim(sc)
        for _ in range(20):
            sim.step(sim.noop_action()[None])
        results[routing] = (sim.episode_latency(0), sim.counters(0)["completed"])
    ll, rnd = results["least_loaded"], results["random"]
    assert rnd[0]["ttft_p50_s"] > ll[0]["ttft_p50_s"] * 1.05
    assert rnd[1] == pytest.approx(ll[1], rel=0.01)
