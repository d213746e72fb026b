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
rounding. The same functions meter the simulator (:class:`~rlscale.envs.simulator.
ClusterSimulator`, vectorized over clusters) and a live cluster's shadow log.
"""

from __future__ import annotations

import numpy as np


def busy_usd(
    cost_usd: np.ndarray,
    replica_s: np.ndarray,
    busy_replica_s: np.ndarray,
    price_usd_h: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The busy part of each pool's cost, and its busy replica-seconds, both capped.

    :param cost_usd: [..., pools] what each pool billed in the interval (its bill).
    :param replica_s: [..., pools] billed replica-seconds (every billed state).
    :param busy_replica_s: [..., pools] replica-seconds the served work needed.
    :param price_usd_h: [..., pools] the hourly price of one replica.
    :return: ``(busy_usd, busy_replica_s)``, each [..., pools], with
        ``0 <= busy_usd <= cost_usd`` and ``0 <= busy_replica_s <= replica_s``.
    """
    busy_s = np.clip(busy_replica_s, 0.0, np.maximum(replica_s, 0.0))
    usd = np.clip(busy_s * price_usd_h / 3600.0, 0.0, np.maximum(cost_usd, 0.0))
    return usd, busy_s


def normalized_rows(weights: np.ndarray) -> np.ndarray:
    """``weights`` [n, tenants] with each row summing to 1; a row summing to 0 is uniform."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=-1, keepdims=True)
    uniform = 1.0 / w.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0.0, w / np.where(total > 0.0, total, 1.0), uniform)


def tenant_weights(
    busy: np.ndarray,
    requests_arrived: np.ndarray,
    token_share: np.ndarray,
    request_share: np.ndarray,
    busy_so_far: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Who the busy and the idle part of an interval go to (see the module docstring).

    :param busy: [n] busy USD of each cluster's interval.
    :param requests_arrived: [n] whether requests arrived in the interval.
    :param token_share: [n, tenants] each tenant's share of the interval's tokens.
    :param request_share: [n, tenants] each tenant's share of the interval's requests.
    :param busy_so_far: [n, tenants] busy USD allocated so far (the fallback's shares).
    :return: ``(busy_weights, idle_weights)``, [n, tenants], rows summing to 1.
    """
    arrived = np.asarray(requests_arrived, dtype=bool)[:, None]
    past = normalized_rows(busy_so_far)
    w_busy = np.where(arrived, normalized_rows(token_share), past)
    w_idle = np.where(
        (np.asarray(busy) > 0.0)[:, None],
        w_busy,
        np.where(arrived, normalized_rows(request_share), past),
    )
    return w_busy, w_idle
