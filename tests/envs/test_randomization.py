"""Domain randomization: the scenario's ranges, the per-episode draws and what they change."""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs.env import InferenceClusterEnv
from rlscale.envs.randomization import SCALE_NAMES, draw_scales
from rlscale.envs.scenario import (
    RandomizationConfig,
    ScenarioError,
    load_scenario,
)
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.vector import InferenceClusterVectorEnv

ALL_ONE = {name: [1.0, 1.0] for name in SCALE_NAMES}
TRAINING_RANGES = {
    "rate_scale": [0.8, 1.25],
    "spot_price_scale": [0.8, 1.25],
    "preemption_scale": [0.5, 2.0],
    "cold_start_scale": [0.8, 1.5],
}


@pytest.fixture
def randomized(make_small_scenario):
    """The small test scenario with a ``randomization`` section (and other overrides)."""

    def make(ranges: dict | None, **overrides):
        return make_small_scenario(randomization=ranges, **overrides)

    return make


def _rollout(sim: ClusterSimulator, seed: int, steps: int, action_seed: int = 0) -> dict:
    """Random actions for ``steps`` steps from a reset with ``seed``, resetting finished
    clusters from their own generators; every number the simulator writes, per step."""
    rngs = [np.random.default_rng(seed + i) for i in range(sim.num_clusters)]
    for i, rng in enumerate(rngs):
        sim.reset_cluster(i, rng)
    actions = np.random.default_rng(action_seed)
    record: dict[str, list] = {"obs": [sim.obs.copy()], "rew": [], "met": [], "pmet": []}
    for _ in range(steps):
        a = actions.integers(0, sim.action_nvec, size=(sim.num_clusters, sim.action_nvec.size))
        sim.step(a)
        record["rew"].append(sim.rewards.copy())
        record["met"].append(sim.metrics.copy())
        record["pmet"].append(sim.pool_metrics.copy())
        for i in np.flatnonzero(sim.truncated()):
            sim.reset_cluster(int(i), rngs[i])
        record["obs"].append(sim.obs.copy())
    record["start"] = sim.start_steps.copy()
    record["rng_state"] = [r.bit_generator.state for r in rngs]
    return record


# --- the schema ---------------------------------------------------------------------------------


def test_shipped_training_scenarios_declare_modest_ranges():
    for name in ("servegen-m-large", "azure-conv", "synthetic-2week", "spot-traces"):
        r = load_scenario(name).randomization
        assert r is not None, name
        for field in SCALE_NAMES:
            lo, hi = getattr(r, field)
            assert 0.0 < lo <= 1.0 <= hi <= 2.0, (name, field, lo, hi)


@pytest.mark.parametrize(
    ("field", "bounds", "message"),
    [
        ("rate_scale", [1.5, 1.0], r"rate_scale \[1\.5, 1\.0\]: lo must be <= hi"),
        ("cold_start_scale", [0.0, 2.0], r"cold_start_scale \[0\.0, 2\.0\]: lo must be > 0"),
        ("spot_price_scale", [-1.0, 1.0], r"spot_price_scale \[-1\.0, 1\.0\]: lo must be > 0"),
        ("preemption_scale", [-0.5, 2.0], r"preemption_scale \[-0\.5, 2\.0\]: lo must be >= 0"),
        ("preemption_scale", [0.0, 2.0], r"preemption_scale \[0\.0, 2\.0\]: log_uniform .*lo > 0"),
        ("rate_scale", [1.0, float("inf")], r"rate_scale \[1\.0, inf\] must be finite"),
    ],
)
def test_a_bad_range_names_the_field_and_its_value(randomized, field, bounds, message):
    with pytest.raises(ScenarioError, match=rf"randomization.*{message}"):
        randomized({field: bounds})


def test_a_range_that_is_not_a_pair_is_refused(randomized):
    with pytest.raises(ScenarioError, match=r"randomization\.rate_scale"):
        randomized({"rate_scale": [0.8, 1.0, 1.2]})


def test_spot_ranges_need_a_spot_pool(randomized, make_small_scenario):
    raw_pools = make_small_scenario().model_dump()["pools"][:2]
    with pytest.raises(ScenarioError, match=r"randomization\.preemption_scale is set but no pool"):
        randomized({"preemption_scale": [0.5, 2.0]}, pools=raw_pools)
    # the other ranges are fine without one
    assert randomized({"rate_scale": [0.5, 2.0]}, pools=raw_pools).randomization is not None


def test_uniform_sampling_takes_a_zero_lower_bound(randomized):
    sc = randomized({"preemption_scale": [0.0, 2.0], "sampling": "uniform"})
    assert sc.randomization.preemption_scale == (0.0, 2.0)


# --- the draws ----------------------------------------------------------------------------------


def test_draws_stay_in_their_ranges_and_fixed_ranges_are_exact():
    cfg = RandomizationConfig(rate_scale=(0.8, 1.25), cold_start_scale=(2.0, 2.0))
    draws = np.array([draw_scales(cfg, seed) for seed in range(1, 2001)])
    rate, price, preempt, cold = draws.T
    assert rate.min() >= 0.8 and rate.max() <= 1.25
    # log-uniform: the median at the geometric mean, as likely to go up as down
    assert np.median(rate) == pytest.approx(np.sqrt(0.8 * 1.25), abs=0.02)
    assert np.all(price == 1.0) and np.all(preempt == 1.0)  # ranges left out
    assert np.all(cold == 2.0)
    assert np.all(draw_scales(None, 5) == 1.0)


def test_uniform_sampling_has_the_middle_as_its_mean():
    cfg = RandomizationConfig(rate_scale=(0.5, 1.5), sampling="uniform")
    rate = np.array([draw_scales(cfg, seed)[0] for seed in range(1, 4001)])
    assert rate.mean() == pytest.approx(1.0, abs=0.02)
    assert rate.min() >= 0.5 and rate.max() <= 1.5


def test_off_by_default_and_without_a_section_every_multiplier_is_one(
    randomized, make_small_scenario
):
    sim = ClusterSimulator(randomized(TRAINING_RANGES), 2)
    sim.reset_cluster(0, np.random.default_rng(0))
    assert sim.randomize is False
    assert sim.randomization(0) == dict.fromkeys(SCALE_NAMES, 1.0)
    assert sim.randomization_info(0) == {}
    sim = ClusterSimulator(make_small_scenario(), 1, randomize=True)
    sim.reset_cluster(0, np.random.default_rng(0))
    assert sim.randomization(0) == dict.fromkeys(SCALE_NAMES, 1.0)


def test_draws_differ_across_clusters_and_episodes_and_reproduce_for_a_seed(randomized):
    sc = randomized(TRAINING_RANGES)
    env = InferenceClusterVectorEnv(8, scenario=sc, randomize=True)
    env.reset(seed=3)
    first = np.array([list(env.sim.randomization(i).values()) for i in range(8)])
    for k, name in enumerate(SCALE_NAMES):
        lo, hi = TRAINING_RANGES[name]
        assert np.all((first[:, k] >= lo) & (first[:, k] <= hi)), name
        assert len(set(first[:, k])) == 8, f"{name}: clusters share a draw"
    env.reset(seed=3)
    again = np.array([list(env.sim.randomization(i).values()) for i in range(8)])
    np.testing.assert_array_equal(first, again)
    env.reset(seed=4)
    other = np.array([list(env.sim.randomization(i).values()) for i in range(8)])
    assert not np.any(other == first)
    # the next episodes (autoreset) draw anew
    noop = np.tile(env.sim.noop_action(), (8, 1))
    for _ in range(env.sim.episode_steps + 1):
        env.step(noop)
    nxt = np.array([list(env.sim.randomization(i).values()) for i in range(8)])
    assert not np.any(nxt[:, 0] == other[:, 0])


def test_randomization_draws_nothing_more_from_the_clusters_generator(randomized):
    """Windows and the kernel's stream stay those of the nominal run; only the multipliers
    change (the generator is in the same state after a reset either way)."""
    sc = randomized(TRAINING_RANGES)
    states = []
    for randomize in (False, True):
        sim = ClusterSimulator(sc, 1, randomize=randomize)
        rng = np.random.default_rng(7)
        sim.reset_cluster(0, rng)
        states.append((rng.bit_generator.state, int(sim.start_steps[0]), sim.rng_state.copy()))
    bare = np.random.default_rng(7)
    lo, hi = ClusterSimulator(sc, 1).start_range
    bare.integers(lo, hi + 1)  # the window
    bare.integers(1, 2**63 - 1)  # the kernel's seed
    assert states[0][0] == states[1][0] == bare.bit_generator.state
    assert states[0][1] == states[1][1]
    np.testing.assert_array_equal(states[0][2], states[1][2])


# --- multipliers of exactly one change nothing --------------------------------------------------


def test_ranges_of_one_are_bit_identical_to_randomization_off(randomized, make_small_scenario):
    sc = randomized(ALL_ONE)
    n, steps = 3, 2 * make_small_scenario().episode_steps + 7  # across two resets
    off = _rollout(ClusterSimulator(sc, n, randomize=False), seed=11, steps=steps)
    on = _rollout(ClusterSimulator(sc, n, randomize=True), seed=11, steps=steps)
    for key in ("obs", "rew", "met", "pmet"):
        np.testing.assert_array_equal(np.array(on[key]), np.array(off[key]), err_msg=key)
    np.testing.assert_array_equal(on["start"], off["start"])
    assert on["rng_state"] == off["rng_state"]
    nominal = _rollout(ClusterSimulator(make_small_scenario(), n), seed=11, steps=steps)
    for key in ("obs", "rew", "met", "pmet"):
        np.testing.assert_array_equal(np.array(nominal[key]), np.array(off[key]), err_msg=key)


def test_batched_randomized_clusters_follow_single_envs_with_those_seeds(randomized):
    sc = randomized(TRAINING_RANGES)
    vec = InferenceClusterVectorEnv(3, scenario=sc, randomize=True)
    vec.reset(seed=20)
    singles = [InferenceClusterEnv(scenario=sc, randomize=True) for _ in range(3)]
    infos = [env.reset(seed=20 + i)[1] for i, env in enumerate(singles)]
    for i, info in enumerate(infos):
        assert {k: info[f"randomization/{k}"] for k in SCALE_NAMES} == vec.sim.randomization(i)
    actions = np.random.default_rng(1).integers(0, vec.sim.action_nvec, size=(20, 3, 6))
    for a in actions:
        obs, rew, *_ = vec.step(a)
        for i, env in enumerate(singles):
            o, r, *_ = env.step(a[i])
            np.testing.assert_array_equal(o, obs[i])
            assert r == rew[i]


# --- what each multiplier changes ---------------------------------------------------------------


def _episode_arrivals(sc, randomize: bool, seed: int) -> tuple[float, float, np.ndarray]:
    sim = ClusterSimulator(with_capacity(sc), 1, randomize=randomize)
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=0)
    first_obs = sim.obs[0].copy()
    tokens = 0.0
    while not sim.truncated()[0]:
        sim.step(sim.noop_action()[None, :])
        tokens += sim.cluster(0).tokens_served
    return sim.counters(0)["arrived"], tokens, first_obs


def with_capacity(sc):
    """Enough ready replicas from the start that the load, even doubled, is all served."""
    pools = [p.model_copy(update={"initial_replicas": p.quota}) for p in sc.pools]
    pools = [p.model_copy(update={"warm_pool_max": 0}) for p in pools]
    return sc.model_copy(update={"pools": pools})


def test_rate_scale_two_doubles_the_arrivals_and_tokens_of_the_episode(randomized):
    for seed in (0, 1):
        base, base_tok, base_obs = _episode_arrivals(randomized(ALL_ONE), True, seed)
        arrived, tokens, obs = _episode_arrivals(randomized({"rate_scale": [2, 2]}), True, seed)
        assert arrived / base == pytest.approx(2.0, rel=0.04)
        assert tokens / base_tok == pytest.approx(2.0, rel=0.05)
        # what the policy sees at reset: the recent rate and the forecast, exactly doubled
        np.testing.assert_allclose(obs[[0, 1, 3]], 2.0 * base_obs[[0, 1, 3]], rtol=1e-12)


NARROW_COLD_START = {
    # fixed durations (median = p90): a scale-up's time to ready is known to the step
    "provisioning": {"median_s": 60, "p90_s": 60},
    "image_pull": {"median_s": 20, "p90_s": 20},
    "weight_load": {"median_s": 30, "p90_s": 30},
    "engine_warmup": {"median_s": 10, "p90_s": 10},
}


def _seconds_to_ready(randomized, cold_scale: list[float], pool: int = 1) -> float:
    sc = randomized(
        {"cold_start_scale": cold_scale}, cold_start=NARROW_COLD_START, control_interval_s=5
    )
    sim = ClusterSimulator(sc, 1, randomize=True)
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    up = sim.noop_action()
    up[pool] += 1
    sim.step(up[None, :])
    steps = 1
    while sim.cluster(0).ready[pool] < 1.0:
        sim.step(sim.noop_action()[None, :])
        steps += 1
        assert steps < 1000
    return steps * sc.control_interval_s


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, 6.0])
def test_cold_start_scale_stretches_a_scale_up_in_proportion(randomized, scale):
    # 60 s provisioning + 60 s loading, seen on a 5 s decision grid; 6x reaches far past the
    # nominal scenario's lifecycle rings, which the simulator sizes for the range's top
    assert _seconds_to_ready(randomized, [scale, scale]) == pytest.approx(120.0 * scale, abs=5.0)


def _preemptions(randomized, preemption_scale: list[float] | None, seeds=range(6)) -> float:
    ranges = None if preemption_scale is None else {"preemption_scale": preemption_scale}
    spot_heavy = randomized(None).model_dump()["pools"]
    spot_heavy[2]["spot"]["hazard_per_h"] = 20.0
    spot_heavy[2]["initial_replicas"] = 4
    sc = randomized(ranges, pools=spot_heavy)
    sim = ClusterSimulator(sc, len(seeds), randomize=True)
    for i, seed in enumerate(seeds):
        sim.reset_cluster(i, np.random.default_rng(seed), start_step=0)
    total = 0.0
    up = np.tile(sim.noop_action(), (len(seeds), 1))
    up[:, 2] += 1  # keep asking for spot replicas, so there are some to preempt
    while not sim.truncated()[0]:
        sim.step(up)
        total += sum(sim.cluster(i).preemptions for i in range(len(seeds)))
    return total


def test_preemption_scale_zero_leaves_a_spot_pool_unpreempted(randomized):
    nominal = _preemptions(randomized, None)
    assert nominal > 10
    assert _preemptions(randomized, [0.0, 0.0]) == 0.0
    assert _preemptions(randomized, [3.0, 3.0]) > 1.25 * nominal


def test_spot_price_scale_scales_the_price_path(randomized):
    def prices(scale):
        sim = ClusterSimulator(randomized({"spot_price_scale": scale}), 1, randomize=True)
        sim.reset_cluster(0, np.random.default_rng(4), start_step=0)
        path = [sim.cluster(0).price_usd_h.copy()]
        for _ in range(30):
            sim.step(sim.noop_action()[None, :])
            path.append(sim.cluster(0).price_usd_h.copy())
        return np.array(path)

    nominal, doubled = prices([1.0, 1.0]), prices([2.0, 2.0])
    np.testing.assert_allclose(doubled[:, 2], 2.0 * nominal[:, 2], rtol=1e-9)
    assert len(set(nominal[:, 2])) > 10  # the price moved
    np.testing.assert_array_equal(doubled[:, :2], nominal[:, :2])  # on demand: as written


def test_episode_summary_carries_the_episodes_multipliers(randomized):
    pytest.importorskip("stable_baselines3")
    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    env = InferenceClusterVecEnv(2, scenario=randomized(TRAINING_RANGES), randomize=True)
    env.seed(5)
    env.reset()
    drawn = [env.sim.randomization(i) for i in range(2)]
    noop = np.tile(env.sim.noop_action(), (2, 1))
    for _ in range(env.sim.episode_steps):
        env.step_async(noop)
        _, _, dones, infos = env.step_wait()
    assert dones.all()
    for i in range(2):
        assert {k: infos[i][f"randomization/{k}"] for k in SCALE_NAMES} == drawn[i]
        assert env.sim.randomization(i) != drawn[i]  # the next episode drew its own
    plain = InferenceClusterVecEnv(1, scenario=randomized(TRAINING_RANGES))
    plain.reset()
    for _ in range(plain.sim.episode_steps):
        plain.step_async(np.tile(plain.sim.noop_action(), (1, 1)))
        _, _, _, infos = plain.step_wait()
    assert not any(k.startswith("randomization/") for k in infos[0])


def test_set_randomize_takes_effect_at_the_next_reset(randomized):
    sc = randomized(TRAINING_RANGES)
    built_on = ClusterSimulator(sc, 2, randomize=True)
    switched = ClusterSimulator(sc, 2)
    switched.set_randomize(True)
    for sim in (built_on, switched):
        for i in range(2):
            sim.reset_cluster(i, np.random.default_rng(i))
    assert [switched.randomization(i) for i in range(2)] == [
        built_on.randomization(i) for i in range(2)
    ]
    switched.set_randomize(False)
    assert switched.randomization(0) == built_on.randomization(0)  # until the next reset
    switched.reset_cluster(0, np.random.default_rng(0))
    assert switched.randomization(0) == dict.fromkeys(SCALE_NAMES, 1.0)
    assert switched.randomization_info(0) == {}


def test_switching_on_mid_episode_keeps_the_replicas_starting_on_time(randomized):
    """The lifecycle rings lengthen for the range's slowest start; replicas already starting
    become ready when they were due to, and the episode runs on unchanged."""
    sc = randomized(
        {"cold_start_scale": [6.0, 6.0]}, cold_start=NARROW_COLD_START, control_interval_s=5
    )
    runs = []
    for switch in (False, True):
        sim = ClusterSimulator(sc, 2)
        for i in range(2):
            sim.reset_cluster(i, np.random.default_rng(3 + i), start_step=0)
        rng = np.random.default_rng(0)
        record = []
        for t in range(150):
            if switch and t == 10:
                sim.set_randomize(True)
            sim.step(rng.integers(0, sim.action_nvec, size=(2, sim.action_nvec.size)))
            record.append((sim.obs.copy(), sim.metrics.copy(), sim.pool_metrics.copy()))
        runs.append(record)
    for (o0, m0, p0), (o1, m1, p1) in zip(*runs, strict=True):
        np.testing.assert_array_equal(o1, o0)
        np.testing.assert_array_equal(m1, m0)
        np.testing.assert_array_equal(p1, p0)


def test_the_randomized_env_passes_the_gymnasium_checker(randomized):
    from gymnasium.utils.env_checker import check_env

    env = InferenceClusterEnv(scenario=randomized(TRAINING_RANGES), randomize=True)
    check_env(env, skip_render_check=True)
