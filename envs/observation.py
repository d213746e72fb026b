"""What a policy sees: the observation's layout and formulas, in one place.

Every entry is a number a live cluster reports (rates, queue, latencies, replicas by state,
prices, the clock), scaled by constants of the scenario the policy was trained on (the
reference rate, the SLO targets, quotas, on-demand prices). The simulator's kernel
(:mod:`rlscale.envs.dynamics`) and the decision service
(:func:`rlscale.agents.onnx_policy.observation_from_state`) both write the observation with
:func:`write_cluster_features` and :func:`write_pool_features` below, so a served policy is fed
exactly what it was trained on. Nothing without a live counterpart is an input: no episode
progress (a live cluster has no episode), no episode budget spent (the service is not told one).

Layout: :data:`CLUSTER_FEATURES`, then :data:`POOL_FEATURES` once per pool, in pool order;
entries named by :func:`observation_names`, bounded by :func:`observation_bounds`. Each entry
is clipped to its bounds, a non-finite one taken as 0 (:func:`clip_observation`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SECONDS_PER_DAY = 86400.0
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
IN_FLIGHT_SCALE_S = 60.0
"""In-flight sequences are scaled by a minute of the reference rate."""

CLUSTER_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("arrival_rate", 0.0, 50.0, "arrival rate over the last interval / reference rate"),
    ("arrival_rate_ewma", 0.0, 50.0, "5-minute EWMA of the arrival rate / reference rate"),
    ("arrival_trend", -50.0, 50.0, "last-interval rate minus its EWMA / reference rate"),
    ("forecast_rate", 0.0, 50.0, "forecast rate of the next interval / reference rate"),
    ("queue", 0.0, 50.0, "queued requests / (reference rate x timeout)"),
    ("in_flight", 0.0, 50.0, "sequences being decoded / (reference rate x 60 s)"),
    ("compute_util", 0.0, 1.0, "busy share of ready replicas' time"),
    ("kv_util", 0.0, 1.0, "share of ready replicas' KV cache held (projected)"),
    ("ttft_p50", 0.0, 100.0, "TTFT p50 of the last interval / TTFT target"),
    ("ttft_p95", 0.0, 100.0, "TTFT p95 of the last interval / TTFT target"),
    ("tpot_p95", 0.0, 100.0, "TPOT p95 of the last interval / TPOT target"),
    ("slo_attainment", 0.0, 1.0, "share of last interval's requests meeting the SLO"),
    ("drop_share", 0.0, 1.0, "dropped / (requests reaching the servers + dropped), last interval"),
    ("day_sin", -1.0, 1.0, "time of day, sine"),
    ("day_cos", -1.0, 1.0, "time of day, cosine"),
    ("week_sin", -1.0, 1.0, "time of week, sine"),
    ("week_cos", -1.0, 1.0, "time of week, cosine"),
)
"""(name, low, high, meaning) of the cluster-wide entries, in order."""

POOL_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("starting", 0.0, 1.0, "provisioning + loading replicas / quota"),
    ("ready", 0.0, 1.0, "ready replicas / quota"),
    ("draining", 0.0, 1.0, "draining replicas / quota"),
    ("standby", 0.0, 1.0, "warm-pool standby replicas / quota"),
    ("refilling", 0.0, 1.0, "warm-pool replicas being prepared / quota"),
    ("preempt_notice", 0.0, 1.0, "replicas under a spot preemption notice / quota"),
    ("price_ratio", 0.0, 5.0, "current hourly price / on-demand price"),
    ("spot_capacity", 0.0, 1.0, "share of quota the spot market can supply (1 on demand)"),
    ("batch_fill", 0.0, 1.0, "sequences per ready replica / max_num_seqs"),
)
"""(name, low, high, meaning) of each pool's entries, in order."""

N_CLUSTER_FEATURES = len(CLUSTER_FEATURES)
N_POOL_FEATURES = len(POOL_FEATURES)


def observation_size(n_pools: int) -> int:
    """Entries of the observation of a cluster of ``n_pools`` pools."""
    return N_CLUSTER_FEATURES + N_POOL_FEATURES * n_pools


def observation_names(pool_names: list[str]) -> list[str]:
    """Names of the observation vector's entries, in order (``POOL/feature`` per pool)."""
    names = [f[0] for f in CLUSTER_FEATURES]
    for pool in pool_names:
        names += [f"{pool}/{f[0]}" for f in POOL_FEATURES]
    return names


def observation_bounds(n_pools: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of every observation entry (float64)."""
    feats = list(CLUSTER_FEATURES) + list(POOL_FEATURES) * n_pools
    lo = np.array([f[1] for f in feats], dtype=np.float64)
    hi = np.array([f[2] for f in feats], dtype=np.float64)
    return lo, hi


# The writers are compiled into the kernel's step (numba inlines them: no work added there) and
# run as plain Python in the service (``.py_func``: no compilation at serve time).


@njit(cache=True, error_model="numpy")
def write_cluster_features(
    o,
    arrival_rate_rps,
    arrival_rate_ewma_rps,
    forecast_rps,
    queue,
    in_flight,
    compute_util,
    kv_util,
    ttft_p50_s,
    ttft_p95_s,
    tpot_p95_s,
    slo_attainment,
    dropped,
    interval_s,
    time_of_week_s,
    reference_rps,
    cache_hit_ratio,
    queue_timeout_s,
    ttft_target_s,
    tpot_target_s,
):
    """Write the entries of :data:`CLUSTER_FEATURES` into the start of ``o``.

    Rates in req/s before the response cache, except ``forecast_rps`` (after it, as the
    servers see it); latencies in seconds; ``dropped`` counted over the last interval of
    ``interval_s``; ``time_of_week_s`` since Monday 00:00.
    """
    ref = reference_rps
    o[0] = arrival_rate_rps / ref
    o[1] = arrival_rate_ewma_rps / ref
    o[2] = (arrival_rate_rps - arrival_rate_ewma_rps) / ref
    o[3] = forecast_rps / ref
    o[4] = queue / (ref * queue_timeout_s)
    o[5] = in_flight / (ref * IN_FLIGHT_SCALE_S)
    o[6] = compute_util
    o[7] = kv_util
    o[8] = ttft_p50_s / ttft_target_s
    o[9] = ttft_p95_s / ttft_target_s
    o[10] = tpot_p95_s / tpot_target_s
    o[11] = slo_attainment
    # dropped / (requests reaching the servers + dropped): both are counts a live cluster has
    reached = arrival_rate_rps * interval_s * (1.0 - cache_hit_ratio) + dropped
    o[12] = dropped / reached if reached > 0.0 else 0.0
    tow = time_of_week_s % SECONDS_PER_WEEK
    o[13] = math.sin(2.0 * math.pi * tow / SECONDS_PER_DAY)
    o[14] = math.cos(2.0 * math.pi * tow / SECONDS_PER_DAY)
    o[15] = math.sin(2.0 * math.pi * tow / SECONDS_PER_WEEK)
    o[16] = math.cos(2.0 * math.pi * tow / SECONDS_PER_WEEK)


@njit(cache=True, error_model="numpy")
def write_pool_features(
    o,
    p,
    starting,
    ready,
    draining,
    standby,
    refilling,
    preempt_notices,
    price_usd_h,
    spot_capacity_share,
    batch_per_replica,
    quota,
    on_demand_price_usd_h,
    max_num_seqs,
):
    """Write pool ``p``'s entries of :data:`POOL_FEATURES` (replica counts by state, its
    price, the spot market's capacity share, running sequences per ready replica)."""
    j = N_CLUSTER_FEATURES + N_POOL_FEATURES * p
    o[j + 0] = starting / quota
    o[j + 1] = ready / quota
    o[j + 2] = draining / quota
    o[j + 3] = standby / quota
    o[j + 4] = refilling / quota
    o[j + 5] = preempt_notices / quota
    o[j + 6] = price_usd_h / on_demand_price_usd_h
    o[j + 7] = spot_capacity_share
    o[j + 8] = batch_per_replica / max_num_seqs


@njit(cache=True, error_model="numpy")
def clip_observation(o, low, high):
    """Every entry into its bounds; a non-finite entry (a 0/0 of an empty pool) becomes 0."""
    for j in range(o.shape[0]):
        v = o[j]
        if not np.isfinite(v):
            v = 0.0
        o[j] = min(max(v, low[j]), high[j])
