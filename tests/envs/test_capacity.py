"""A pool's capacity: the formula on hand-computed cases, and one mix per source."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rlscale.envs.capacity import (
    RequestMix,
    pool_capacities_rps,
    scenario_capacities_rps,
)
from rlscale.envs.profiles import (
    ThroughputProfile,
    load_profile,
    replica_capacity_rps,
    saturation_batch,
    slo_capacity_rps,
)
from rlscale.envs.scenario import WorkloadConfig
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.workload import length_moments


def hand_profile(**overrides: float) -> ThroughputProfile:
    """Round numbers: 10 ms per iteration, 1 ms per sequence, 1 us per context token,
    0.1 ms per prompt token, 10 sequence slots, a 100k-token KV cache."""
    values = dict(
        name="hand",
        gpu="test",
        gpus_per_replica=1,
        model="test",
        weights_gb=1.0,
        iter_base_s=0.01,
        iter_per_seq_s=0.001,
        iter_per_ctx_token_s=1e-6,
        prefill_per_token_s=1e-4,
        kv_cache_tokens=100_000,
        max_num_seqs=10,
        fit_mape=0.0,
        fit_rows=0,
        source="test",
    )
    values.update(overrides)
    return ThroughputProfile(**values)


@pytest.mark.parametrize(
    ("overrides", "max_batched_tokens", "batch", "per_request_s"),
    [
        # 10 slots bind: ctx 10 x (100 + 25) = 1250 tokens, iteration 10 + 10 + 1.25 ms;
        # a request: 100 x 0.1 ms prefill + 50 iterations shared by 10 = 10 + 106.25 ms
        ({}, 8192, 10.0, 0.11625),
        # the KV cache binds: 600 / (100 + 50) = 4 sequences; iteration 10 + 4 + 0.5 ms
        ({"kv_cache_tokens": 600}, 8192, 4.0, 0.01 + 50 * 0.0145 / 4),
        # the token budget binds: 2 sequences; iteration 10 + 2 + 0.25 ms
        ({}, 2, 2.0, 0.01 + 50 * 0.01225 / 2),
    ],
)
def test_replica_capacity_by_hand(
    overrides: dict, max_batched_tokens: int, batch: float, per_request_s: float
) -> None:
    prof = hand_profile(**overrides)
    assert saturation_batch(prof, 100, 50, max_batched_tokens=max_batched_tokens) == batch
    got = replica_capacity_rps(prof, 100, 50, max_batched_tokens=max_batched_tokens)
    assert got == pytest.approx(1.0 / per_request_s, rel=1e-12)


def test_slo_capacity_by_hand() -> None:
    prof = hand_profile()
    # TPOT(b) = 10 ms + b x (1 ms + 125 x 1 us + 100 x 0.1 ms / 50) = 10 ms + b x 1.325 ms
    b = (0.02 - 0.01) / 0.001325  # 7.55 sequences at a 20 ms target
    iter_s = 0.01 + 0.001 * b + 1e-6 * 125 * b
    want = 1.0 / (0.01 + 50 * iter_s / b)
    assert slo_capacity_rps(prof, 100, 50, tpot_s=0.02) == pytest.approx(want, rel=1e-12)
    # a loose target allows saturation, never more
    sat = replica_capacity_rps(prof, 100, 50)
    assert slo_capacity_rps(prof, 100, 50, tpot_s=1.0) == sat
    assert slo_capacity_rps(prof, 100, 50, tpot_s=0.02) < sat


def test_capacity_refuses_an_empty_mix() -> None:
    with pytest.raises(ValueError, match="positive"):
        replica_capacity_rps(hand_profile(), 0.0, 50.0)


def test_series_mix_is_arrival_weighted_and_at_least_one_token() -> None:
    wl = SimpleNamespace(
        arrivals=np.array([2.0, 0.0, 3.0]),
        prompt_tokens=np.array([200.0, 0.0, 300.0]),
        output_tokens=np.array([20.0, 0.0, 30.0]),
    )
    assert RequestMix.of_series(wl) == RequestMix(100.0, 10.0)
    assert RequestMix.of_series(wl, np.array([2])) == RequestMix(100.0, 10.0)
    assert RequestMix.of_series(wl, np.array([1])) == RequestMix(1.0, 1.0)


def test_config_mix_is_the_clipped_lognormal_mean() -> None:
    cfg = WorkloadConfig(
        kind="csv",
        path="x",
        prompt_tokens={"median": 100, "p90": 100},
        output_tokens={"median": 1000, "p90": 8000, "max": 2000},
    )
    mix = RequestMix.of_config(cfg)
    assert mix.prompt_tokens == pytest.approx(100.0)  # no spread: the median
    assert mix.output_tokens == length_moments(cfg.output_tokens)[0]
    assert mix.output_tokens < 2000  # the clip at max counts


def test_every_caller_gets_the_same_capacity(make_small_scenario) -> None:
    sc = make_small_scenario()
    sim = ClusterSimulator(sc, 1)
    profiles = [load_profile(p.profile) for p in sc.pools]
    want = pool_capacities_rps(
        profiles, RequestMix.of_series(sim.workload), max_batched_tokens=sc.max_batched_tokens
    )
    np.testing.assert_array_equal(sim.pool_capacity_rps, want)
    assert sim.pool_capacity_rps is sim.pool_capacity_rps  # computed once
    assert not sim.pool_capacity_rps.flags.writeable
    # the service has only the scenario: the configured mix, close to the synthetic series'
    by_name = scenario_capacities_rps(sc)
    assert list(by_name) == sim.pool_names
    np.testing.assert_allclose(list(by_name.values()), want, rtol=0.02)
    # pools of one profile have one capacity
    assert by_name["h100"] == by_name["spot"]
