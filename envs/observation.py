"""What a policy sees: the observation's layout, and the formulas the env and the service share.

Every entry is a number a live cluster reports (rates, queue, latencies, replicas by state,
prices, the clock), scaled by constants of the scenario the policy was trained on (the
reference rate, the SLO targets, quotas, on-demand prices). Nothing without a live
counterpart is an input: no episode progress (a live cluster has no episode), no episode
budget spent. A scenario with an *observed* budget (a spend limit per hour, day or month,
which the decision service meters too) appends :data:`BUDGET_FEATURES`; without one the layout
is as before, entry for entry.

The simulator's kernel and the decision service
(:func:`rlscale.agents.onnx_policy.observation_from_state`) both write the observation with
:func:`write_cluster_features`, :func:`write_pool_features` and
:func:`write_batch_features`, so a served policy is fed exactly what it was trained on. The
writers are defined in the kernel's module (:mod:`rlscale.envs.dynamics`) and exported here:
numba caches the compiled kernel by its own file, so a formula kept in another file could
change without the cached kernel noticing.

Layout: :data:`CLUSTER_FEATURES`, then :data:`POOL_FEATURES` once per pool, in pool order,
then :data:`BATCH_FEATURES` only when the scenario has batch work (``batch=True``), then
:data:`BUDGET_FEATURES` when a budget is observed (written by :func:`write_budget_features`,
outside the kernel: the simulator's budget ledger and the service's spend meter both call
it); every other scenario keeps its layout. Entries named by :func:`observation_names`,
bounded by :func:`observation_bounds`. Each entry is clipped to its bounds, a non-finite one
taken as 0 (:func:`clip_observation`). The batch entries are wired live: the service writes
them with :func:`write_batch_features` from the request's ``batch_queue`` and
``batch_arrival_rate_rps``, scaled by the batch window the exported manifest records.
"""

from __future__ import annotations

import numpy as np

from rlscale.envs.dynamics import (
    OBS_BATCH_ENTRIES,
    OBS_CLUSTER_ENTRIES,
    OBS_POOL_ENTRIES,
    SECONDS_PER_DAY,
    SECONDS_PER_WEEK,
    clip_observation,
    write_batch_features,
    write_cluster_features,
    write_pool_features,
)

__all__ = [
    "BATCH_FEATURES",
    "BUDGET_FEATURES",
    "CLUSTER_FEATURES",
    "POOL_FEATURES",
    "SECONDS_PER_DAY",
    "SECONDS_PER_WEEK",
    "clip_observation",
    "observation_bounds",
    "observation_names",
    "observation_size",
    "write_batch_features",
    "write_budget_features",
    "write_cluster_features",
    "write_pool_features",
]

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

BATCH_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("batch_queue", 0.0, 50.0, "batch requests queued / (reference rate x completion window)"),
    ("batch_arrival_rate", 0.0, 50.0, "batch arrival rate over the last interval / reference rate"),
)
"""(name, low, high, meaning) of the request-class entries, last, only with batch work."""

BUDGET_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("budget/spent_share", 0.0, 2.0, "spend in the observed budget's period / its limit"),
    ("budget/time_left_share", 0.0, 1.0, "time left in the budget's period / the period"),
)
"""(name, low, high, meaning) of the observed budget's entries, last in the observation."""

N_CLUSTER_FEATURES = len(CLUSTER_FEATURES)
N_POOL_FEATURES = len(POOL_FEATURES)
# the writers' own count of what they write (they are compiled with the kernel, see above)
assert (N_CLUSTER_FEATURES, N_POOL_FEATURES, len(BATCH_FEATURES)) == (
    OBS_CLUSTER_ENTRIES,
    OBS_POOL_ENTRIES,
    OBS_BATCH_ENTRIES,
)


def observation_size(n_pools: int, budgeted: bool = False, *, batch: bool = False) -> int:
    """Entries of the observation of a cluster of ``n_pools`` pools (with batch work when
    ``batch``, and an observed budget when ``budgeted``)."""
    extra = (len(BATCH_FEATURES) if batch else 0) + (len(BUDGET_FEATURES) if budgeted else 0)
    return N_CLUSTER_FEATURES + N_POOL_FEATURES * n_pools + extra


def observation_names(
    pool_names: list[str], budgeted: bool = False, *, batch: bool = False
) -> list[str]:
    """Names of the observation vector's entries, in order (``POOL/feature`` per pool)."""
    names = [f[0] for f in CLUSTER_FEATURES]
    for pool in pool_names:
        names += [f"{pool}/{f[0]}" for f in POOL_FEATURES]
    if batch:
        names += [f[0] for f in BATCH_FEATURES]
    if budgeted:
        names += [f[0] for f in BUDGET_FEATURES]
    return names


def observation_bounds(
    n_pools: int, budgeted: bool = False, *, batch: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of every observation entry (float64)."""
    feats = list(CLUSTER_FEATURES) + list(POOL_FEATURES) * n_pools
    if batch:
        feats += list(BATCH_FEATURES)
    if budgeted:
        feats += list(BUDGET_FEATURES)
    lo = np.array([f[1] for f in feats], dtype=np.float64)
    hi = np.array([f[2] for f in feats], dtype=np.float64)
    return lo, hi


def write_budget_features(
    o: np.ndarray,
    spend_usd: float | np.ndarray,
    limit_usd: float | np.ndarray,
    time_left_s: float | np.ndarray,
    period_s: float | np.ndarray,
) -> None:
    """Write the observed budget's entries (:data:`BUDGET_FEATURES`) into the end of ``o``
    (one observation, or ``[N, entries]`` with an array per argument), clipped to their
    bounds, a non-finite one taken as 0: the period's spend over its limit, and the share of
    the period still to run."""
    n = len(BUDGET_FEATURES)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (np.divide(spend_usd, limit_usd), np.divide(time_left_s, period_s))
    for k, (value, (_, lo, hi, _)) in enumerate(zip(values, BUDGET_FEATURES, strict=True)):
        finite = np.where(np.isfinite(value), value, 0.0)
        o[..., o.shape[-1] - n + k] = np.clip(finite, lo, hi)
