"""Metering: a cluster's bill split into busy and idle GPU time, and allocated to tenants.

The bill of an interval is what every pool's replicas cost in it (provisioning, loading,
ready, draining, warm-pool refill at the replica price; standby at the holding price). Of it:

- **busy**: the GPU time the served tokens needed, at the replica price. A replica's time per
  token is taken at its saturation throughput for the workload's request mix (a full batch,
  :mod:`rlscale.envs.capacity`): the simulator's pool that decoded ``tokens`` output tokens was
  busy ``tokens / (capacity_rps x mean output tokens)`` replica-seconds; a live cluster's pools,
  which requests reach in proportion to capacity, were busy ``load / capacity`` of their ready
  time. Capped by what the pool billed, so busy never exceeds the bill. (A GPU's duty cycle
  would call a replica decoding one sequence fully busy; it would leave no headroom to share.)
- **idle**: the rest of the bill: capacity the load did not need (batch slots left empty),
  the warm pool, cold starts (provisioning and loading) and draining replicas.

Tenants: the busy part goes to each tenant by the share of the GPU work its tokens made (its
token share of the interval); the idle part in proportion to the same busy shares, so a
tenant pays for the headroom its load is served with. When nothing was busy in an interval
its idle part goes by request share; with no requests either, by the tenants' busy shares so
far (uniform before any). Both parts sum to the bill, interval by interval, within float
rounding. The simulator meters every cluster after each step with :func:`meter_clusters`
(compiled: a few microseconds a step); a live cluster's shadow log is split into busy and idle
with the same :func:`busy_usd` (:mod:`rlscale.serving.shadow_cost`, where tenants pay by
request share, as the service meters them).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True)
def busy_usd(
    cost_usd: np.ndarray,
    replica_s: np.ndarray,
    busy_replica_s: np.ndarray,
    price_usd_h: np.ndarray,
) -> tuple[float, float]:
    """The busy part of an interval's bill and its busy replica-seconds, over pools.

    :param cost_usd: [pools] what each pool billed in the interval (its bill).
    :param replica_s: [pools] billed replica-seconds (every billed state).
    :param busy_replica_s: [pools] replica-seconds the served work needed.
    :param price_usd_h: [pools] the hourly price of one replica.
    :return: ``(busy_usd, busy_replica_s)`` summed over pools, each pool's capped by its
        bill and its billed time: ``0 <= busy_usd <= sum(cost_usd)``.
    """
    usd = 0.0
    seconds = 0.0
    for p in range(cost_usd.shape[0]):
        s = min(max(busy_replica_s[p], 0.0), max(replica_s[p], 0.0))
        usd += min(s * price_usd_h[p] / 3600.0, max(cost_usd[p], 0.0))
        seconds += s
    return usd, seconds


@njit(cache=True)
def _normalized(w: np.ndarray, out: np.ndarray) -> bool:
    """``w`` scaled to sum 1 into ``out``; False (``out`` untouched) when it sums to 0."""
    total = 0.0
    for k in range(w.shape[0]):
        total += w[k]
    if not total > 0.0:
        return False
    for k in range(w.shape[0]):
        out[k] = w[k] / total
    return True


@njit(cache=True)
def tenant_weights(
    busy: float,
    requests_arrived: bool,
    token_share: np.ndarray,
    request_share: np.ndarray,
    busy_so_far: np.ndarray,
    w_busy: np.ndarray,
    w_idle: np.ndarray,
) -> None:
    """Who an interval's busy and idle parts go to (see the module docstring), written into
    ``w_busy`` and ``w_idle`` [tenants], each summing to 1.

    :param busy: busy USD of the interval.
    :param requests_arrived: whether requests arrived in it.
    :param token_share: [tenants] each tenant's share of its tokens.
    :param request_share: [tenants] each tenant's share of its requests.
    :param busy_so_far: [tenants] busy USD allocated so far (the fallback's shares).
    """
    n = w_busy.shape[0]
    past_known = _normalized(busy_so_far, w_idle)
    if not past_known:
        for k in range(n):
            w_idle[k] = 1.0 / n
    # w_idle holds the fallback now: the busy shares so far, or uniform
    if not (requests_arrived and _normalized(token_share, w_busy)):
        for k in range(n):
            w_busy[k] = w_idle[k]
    if busy > 0.0:
        for k in range(n):
            w_idle[k] = w_busy[k]
    elif requests_arrived:
        _normalized(request_share, w_idle)


def meter_clusters(
    cost_usd: np.ndarray,
    pool_cost_usd: np.ndarray,
    pool_replica_s: np.ndarray,
    pool_tokens: np.ndarray,
    pool_price_usd_h: np.ndarray,
    saturation_tokens_per_s: np.ndarray,
    gpus_per_replica: np.ndarray,
    rows: np.ndarray,
    requests_arrived: np.ndarray,
    token_share: np.ndarray,
    request_share: np.ndarray,
    tenant_busy_usd: np.ndarray,
    tenant_idle_usd: np.ndarray,
    tenant_busy_gpu_s: np.ndarray,
) -> None:
    """Allocate every simulated cluster's last interval to tenants, in place.

    :param cost_usd: [n] each cluster's bill of the interval.
    :param pool_cost_usd: [n, pools] of it, each pool's.
    :param pool_replica_s: [n, pools] billed replica-seconds.
    :param pool_tokens: [n, pools] output tokens decoded.
    :param pool_price_usd_h: [n, pools] a replica's hourly price.
    :param saturation_tokens_per_s: [pools] output tokens/s of one replica at saturation.
    :param gpus_per_replica: [pools].
    :param rows: [n] each cluster's interval in the workload's tenant tables.
    :param requests_arrived: [intervals] whether requests arrived in each.
    :param token_share: [intervals, tenants] of the workload.
    :param request_share: [intervals, tenants] of the workload.
    :param tenant_busy_usd: [n, tenants] accumulated busy USD (updated).
    :param tenant_idle_usd: [n, tenants] accumulated idle USD (updated).
    :param tenant_busy_gpu_s: [n, tenants] accumulated busy GPU-seconds (updated).

    Clusters are metered apart, so many of them are split over threads (the same numbers).
    """
    args = (
        cost_usd,
        pool_cost_usd,
        pool_replica_s,
        pool_tokens,
        pool_price_usd_h,
        saturation_tokens_per_s,
        gpus_per_replica,
        rows,
        requests_arrived,
        token_share,
        request_share,
        tenant_busy_usd,
        tenant_idle_usd,
        tenant_busy_gpu_s,
    )
    n = pool_cost_usd.shape[0]
    if n >= METERING_PARALLEL_MIN_CLUSTERS and numba.get_num_threads() > 1:
        _meter_parallel(4 * numba.get_num_threads(), *args)
    else:
        _meter_range(0, n, *args)


METERING_PARALLEL_MIN_CLUSTERS = 256
"""From this many clusters on, metering is split over threads."""


@njit(parallel=True, cache=True)
def _meter_parallel(
    chunks,
    cost_usd,
    pool_cost_usd,
    pool_replica_s,
    pool_tokens,
    pool_price_usd_h,
    saturation_tokens_per_s,
    gpus_per_replica,
    rows,
    requests_arrived,
    token_share,
    request_share,
    tenant_busy_usd,
    tenant_idle_usd,
    tenant_busy_gpu_s,
):
    n = pool_cost_usd.shape[0]
    for c in prange(chunks):
        _meter_range(
            c * n // chunks,
            (c + 1) * n // chunks,
            cost_usd,
            pool_cost_usd,
            pool_replica_s,
            pool_tokens,
            pool_price_usd_h,
            saturation_tokens_per_s,
            gpus_per_replica,
            rows,
            requests_arrived,
            token_share,
            request_share,
            tenant_busy_usd,
            tenant_idle_usd,
            tenant_busy_gpu_s,
        )


@njit(cache=True)
def _meter_range(
    lo,
    hi,
    cost_usd,
    pool_cost_usd,
    pool_replica_s,
    pool_tokens,
    pool_price_usd_h,
    saturation_tokens_per_s,
    gpus_per_replica,
    rows,
    requests_arrived,
    token_share,
    request_share,
    tenant_busy_usd,
    tenant_idle_usd,
    tenant_busy_gpu_s,
):
    """:func:`meter_clusters` for clusters ``lo`` .. ``hi - 1``."""
    n_pools = pool_cost_usd.shape[1]
    n_tenants = tenant_busy_usd.shape[1]
    busy_s = np.empty(n_pools)
    w_busy = np.empty(n_tenants)
    w_idle = np.empty(n_tenants)
    for i in range(lo, hi):
        for p in range(n_pools):
            busy_s[p] = pool_tokens[i, p] / saturation_tokens_per_s[p]
        busy, _ = busy_usd(pool_cost_usd[i], pool_replica_s[i], busy_s, pool_price_usd_h[i])
        gpu_s = 0.0
        for p in range(n_pools):
            gpu_s += min(max(busy_s[p], 0.0), max(pool_replica_s[i, p], 0.0)) * gpus_per_replica[p]
        idle = max(cost_usd[i] - busy, 0.0)
        r = rows[i]
        tenant_weights(
            busy,
            requests_arrived[r],
            token_share[r],
            request_share[r],
            tenant_busy_usd[i],
            w_busy,
            w_idle,
        )
        for k in range(n_tenants):
            tenant_busy_usd[i, k] += busy * w_busy[k]
            tenant_idle_usd[i, k] += idle * w_idle[k]
            tenant_busy_gpu_s[i, k] += gpu_s * w_busy[k]
