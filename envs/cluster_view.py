"""Reading a simulated cluster by name: the simulator's state without the kernel's layout.

The kernel (:mod:`rlscale.envs.dynamics`) keeps every number in flat arrays indexed by
constants (``M_*``, ``PM_*``, ``PS_*``, ``CS_*``, ...). Those constants are the kernel's
internals: code outside ``envs`` reads a cluster through a :class:`ClusterView`
(``sim.cluster(i)``) and the scenario-wide tables through the simulator's reader methods
(:meth:`~rlscale.envs.simulator.ClusterSimulator.spot_market_series`,
:meth:`~rlscale.envs.simulator.ClusterSimulator.cold_start_levels_s`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from rlscale.envs import dynamics as dyn

if TYPE_CHECKING:
    from rlscale.envs.simulator import ClusterSimulator


def _read_only(a: np.ndarray) -> np.ndarray:
    """A view of ``a`` that cannot write back (``a`` itself stays writable for the kernel)."""
    v = a.view()
    v.flags.writeable = False
    return v


class ClusterView:
    """Cluster ``i`` of a :class:`~rlscale.envs.simulator.ClusterSimulator`, read by name.

    The view reads the simulator's arrays live: get it once (``sim.cluster(i)``) and read it
    after every step or reset. Per-pool attributes are read-only numpy views ``[pools]`` in
    pool order that change with the simulator; copy one to keep it.

    **Now** (after the last step, or the reset): :attr:`time_s`, :attr:`time_of_week_s`,
    :attr:`arrival_rate_rps`, :attr:`arrival_rate_ewma_rps`, :attr:`forecast_rps`, and per pool
    the replicas by state (:attr:`provisioning`, :attr:`loading`, :attr:`ready`,
    :attr:`draining`, :attr:`standby`, :attr:`refilling`, :attr:`preempt_notices`),
    :attr:`price_usd_h`, :attr:`batch_per_replica` and :meth:`spot_capacity_share`.

    **The last interval** (zero before the first step): :attr:`cost_usd`,
    :attr:`slo_attainment`, latencies, :attr:`queue`, :attr:`in_flight`, utilizations,
    :attr:`dropped`, :attr:`tokens_served`, scaling and spot events, and per pool
    :attr:`cost_by_pool_usd` and :attr:`replica_s_by_pool`.

    **The episode so far**: :attr:`episode_cost_usd`, :attr:`episode_slo_attainment`
    (:meth:`ClusterSimulator.counters`, :meth:`~ClusterSimulator.episode_latency` and
    :meth:`~ClusterSimulator.tenant_costs` give the rest).
    """

    __slots__ = (
        "_c",
        "_cache_keep",
        "_forecast_rps",
        "_interval_s",
        "_m",
        "_spot_share",
        "_start_s_of_week",
        "_substep_s",
        "_substeps_per_step",
        "batch_per_replica",
        "cost_by_pool_usd",
        "draining",
        "index",
        "loading",
        "preempt_notices",
        "price_usd_h",
        "provisioning",
        "ready",
        "refilling",
        "replica_s_by_pool",
        "standby",
    )

    provisioning: np.ndarray
    """[pools] replicas being provisioned (billed, not serving)."""
    loading: np.ndarray
    """[pools] replicas loading the model (billed, not serving)."""
    ready: np.ndarray
    """[pools] replicas serving."""
    draining: np.ndarray
    """[pools] replicas finishing their sequences before they go (billed)."""
    standby: np.ndarray
    """[pools] warm-pool replicas held in reserve."""
    refilling: np.ndarray
    """[pools] warm-pool replicas being prepared."""
    preempt_notices: np.ndarray
    """[pools] replicas under a spot preemption notice."""
    price_usd_h: np.ndarray
    """[pools] current hourly price of one replica."""
    batch_per_replica: np.ndarray
    """[pools] sequences per ready replica."""
    cost_by_pool_usd: np.ndarray
    """[pools] cost of the last interval."""
    replica_s_by_pool: np.ndarray
    """[pools] billed replica-seconds of the last interval."""

    def __init__(self, sim: ClusterSimulator, i: int) -> None:
        if not 0 <= i < sim.num_clusters:
            raise IndexError(f"cluster {i} outside [0, {sim.num_clusters - 1}]")
        self.index = i
        # what the readers need, not the simulator itself: no reference cycle through its cache
        sc, wl = sim.scenario, sim.workload
        self._substep_s = sc.substep_s
        self._substeps_per_step = sim.substeps_per_step
        self._start_s_of_week = wl.start_s_of_week
        self._cache_keep = 1.0 - sc.workload.cache_hit_ratio
        self._interval_s = sc.control_interval_s
        self._forecast_rps = sim.workload_arrays[3]
        self._spot_share = _read_only(sim.spot_series[2])
        self._c = sim.cluster_state[i]
        self._m = sim.metrics[i]
        ps = sim.pool_state[i]
        pm = sim.pool_metrics[i]
        self.provisioning = _read_only(ps[:, dyn.PS_PROV])
        self.loading = _read_only(ps[:, dyn.PS_LOAD])
        self.ready = _read_only(ps[:, dyn.PS_READY])
        self.draining = _read_only(ps[:, dyn.PS_DRAIN])
        self.standby = _read_only(ps[:, dyn.PS_STANDBY])
        self.refilling = _read_only(ps[:, dyn.PS_REFILL])
        self.preempt_notices = _read_only(ps[:, dyn.PS_NOTICED])
        self.price_usd_h = _read_only(ps[:, dyn.PS_PRICE])
        self.batch_per_replica = _read_only(ps[:, dyn.PS_BATCH])
        self.cost_by_pool_usd = _read_only(pm[:, dyn.PM_COST])
        self.replica_s_by_pool = _read_only(pm[:, dyn.PM_REPLICA_S])

    # --- now ---------------------------------------------------------------------------------
    @property
    def _bin(self) -> int:
        """Workload bins from the start of the series to now."""
        return int(self._c[dyn.CS_OFF]) + int(self._c[dyn.CS_SUB])

    @property
    def time_s(self) -> float:
        """Seconds since the episode started."""
        return float(int(self._c[dyn.CS_SUB])) * self._substep_s

    @property
    def time_of_week_s(self) -> float:
        """Seconds since Monday 00:00 of the workload's clock."""
        t = self._start_s_of_week + self._bin * self._substep_s
        return float(t % dyn.SECONDS_PER_WEEK)

    @property
    def arrival_rate_rps(self) -> float:
        """Arrival rate over the last interval, before the response cache."""
        return float(self._c[dyn.CS_RATE_LAST])

    @property
    def arrival_rate_ewma_rps(self) -> float:
        """Exponentially weighted mean of the arrival rate (5-minute horizon)."""
        return float(self._c[dyn.CS_RATE_EWMA])

    @property
    def forecast_rps(self) -> float:
        """The workload's forecast rate of the next interval, after the response cache (and
        scaled as the episode's arrivals are, under domain randomization)."""
        forecast = self._forecast_rps
        rate_scale = self._c[dyn.CS_SCALES + dyn.SC_RATE]
        return float(forecast[self._bin % forecast.shape[0]] * rate_scale * self._cache_keep)

    def spot_capacity_share(self) -> np.ndarray:
        """[pools] share of the quota the spot market can supply now (1 on demand); a copy."""
        share = self._spot_share
        return share[:, (self._bin // self._substeps_per_step) % share.shape[1]].copy()

    # --- the last interval ---------------------------------------------------------------------
    @property
    def cost_usd(self) -> float:
        """Cost of the last interval."""
        return float(self._m[dyn.M_COST])

    @property
    def slo_attainment(self) -> float:
        """Share of the last interval's requests that met the SLO."""
        return float(self._m[dyn.M_ATTAIN])

    @property
    def ttft_p50_s(self) -> float:
        """Median time to first token of the last interval."""
        return float(self._m[dyn.M_TTFT50])

    @property
    def ttft_p95_s(self) -> float:
        """95th percentile time to first token of the last interval."""
        return float(self._m[dyn.M_TTFT95])

    @property
    def tpot_p95_s(self) -> float:
        """95th percentile time per output token of the last interval."""
        return float(self._m[dyn.M_TPOT95])

    @property
    def queue(self) -> float:
        """Requests waiting for a replica at the end of the last interval."""
        return float(self._m[dyn.M_QUEUE])

    @property
    def in_flight(self) -> float:
        """Sequences being decoded at the end of the last interval."""
        return float(self._m[dyn.M_INFLIGHT])

    @property
    def batch_queue(self) -> float:
        """Batch requests waiting for room at the end of the last interval (0 without batch
        work)."""
        return float(self._m[dyn.M_B_QUEUE])

    @property
    def batch_arrival_rate_rps(self) -> float:
        """Batch requests per second that arrived in the last interval."""
        return float(self._m[dyn.M_B_ARRIVED]) / self._interval_s

    @property
    def compute_util(self) -> float:
        """Busy share of the ready replicas' time in the last interval."""
        return float(self._m[dyn.M_UTIL])

    @property
    def kv_util(self) -> float:
        """Share of the ready replicas' KV cache held (projected)."""
        return float(self._m[dyn.M_KV_UTIL])

    @property
    def dropped(self) -> float:
        """Requests dropped in the last interval (timed out queued, or cut off draining)."""
        return float(self._m[dyn.M_DROPPED])

    @property
    def tokens_served(self) -> float:
        """Tokens served in the last interval."""
        return float(self._m[dyn.M_TOKENS])

    @property
    def scale_events(self) -> float:
        """Pools whose replicas changed at the last decision."""
        return float(self._m[dyn.M_SCALE_EVENTS])

    @property
    def cold_starts(self) -> float:
        """Replicas started from scratch at the last decision (spot: those fulfilled)."""
        return float(self._m[dyn.M_COLD_STARTS])

    @property
    def warm_starts(self) -> float:
        """Replicas started from the warm pool at the last decision."""
        return float(self._m[dyn.M_WARM_STARTS])

    @property
    def preemptions(self) -> float:
        """Spot replicas preempted in the last interval."""
        return float(self._m[dyn.M_PREEMPTIONS])

    # --- the episode so far --------------------------------------------------------------------
    @property
    def episode_cost_usd(self) -> float:
        """Cost of the episode so far."""
        return float(self._m[dyn.M_COST_TOTAL])

    @property
    def episode_slo_attainment(self) -> float:
        """Share of the episode's requests so far that met the SLO."""
        return float(self._m[dyn.M_ATTAIN_EP])


class SpotMarketSeries(NamedTuple):
    """The spot markets a simulator replays, per pool and decision step (read-only views).

    Steps index the workload's decision-step grid and wrap around (``step % steps``). On-demand
    pools have their fixed price, no preemptions and a capacity share of 1.
    """

    price_usd_h: np.ndarray
    """[pools, steps] hourly price of a replica (a price trace, or the mean-reverting
    process's mean where the path is drawn per cluster), as the scenario writes it: an
    episode under domain randomization scales it by its ``spot_price_scale``."""
    preempt_prob: np.ndarray
    """[pools, steps] chance that a spot replica is preempted in the step (nominal; scaled
    by an episode's ``preemption_scale``)."""
    capacity_share: np.ndarray
    """[pools, steps] share of the quota the market can supply."""
    fulfil_prob: np.ndarray
    """[pools] chance that a spot request is fulfilled at a decision (0 on demand)."""

    @property
    def steps(self) -> int:
        """Decision steps of the series before it wraps around."""
        return int(self.price_usd_h.shape[1])


class ColdStartLevels(NamedTuple):
    """Per pool, equally likely levels of each cold-start phase in seconds (read-only views).

    Each array is ``[pools, levels]``; the phases of one start are independent draws. These
    are the nominal levels: an episode under domain randomization scales them by its
    ``cold_start_scale``.
    """

    provisioning_s: np.ndarray
    loading_s: np.ndarray
    warm_start_s: np.ndarray
