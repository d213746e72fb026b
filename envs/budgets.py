"""Spend budgets in the simulator: metered per period, observed, charged or capped.

A scenario's ``budgets:`` (:class:`~rlscale.envs.scenario.ScenarioBudget`, the decision
service's budget schema plus a mode) are kept per cluster by :class:`BudgetLedger`, which the
simulator calls around each kernel step:

- **Periods.** UTC hours, days and calendar months of the simulated clock, which starts on
  Monday 2024-01-01 00:00 UTC (:data:`SIM_EPOCH_UNIX_S`; the workload's start weekday and hour
  place bin 0 in that week). An interval's spend counts in the period its decision was taken
  in. An episode's first period starts with nothing spent (what came before is not simulated).
- **Metering.** A global budget counts the cluster's bill; a tenant's counts what
  :mod:`rlscale.envs.metering` allocates to that tenant (busy GPU time plus its share of idle
  time), so tenant budgets are metered and reported, never capped or charged.
- **Observed.** The observed budget's spent share and the share of its period left are the
  observation's last two entries (:data:`rlscale.envs.observation.BUDGET_FEATURES`).
- **Penalty.** The reward pays ``penalty_usd_per_usd`` (divided by the reward's ``scale``) for
  each USD a period's spend goes over the limit, when it goes over.
- **Cap.** The period's spend never exceeds the limit. Before each decision the ledger bounds
  what the cluster may still be billed if every replica were stopped now (draining replicas
  until their grace or notice ends, the others for a full drain), and takes that off what the
  budget has left. What remains pays the next interval: a kept replica costs one interval, a
  new one an interval plus its own drain. When the policy's action does not fit, its scale-ups
  are cut (cheapest pools' kept first), and when even its kept replicas do not fit, replicas
  are stopped, most expensive pool first, beyond the action's ``max_step`` if need be. Each
  step records whether the cap bound and by how many replicas it changed the policy's
  targets. Prices are bounded ahead from the scenario (on-demand prices, a spot pool's price
  trace), so a cap needs pools whose price is known ahead: on-demand pools and spot pools
  priced from a trace, without warm pools.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import numpy as np

from rlscale.common.budgets import period_bounds
from rlscale.envs import dynamics as dyn
from rlscale.envs.observation import write_budget_features
from rlscale.envs.scenario import ScenarioBudget, ScenarioError

if TYPE_CHECKING:
    from rlscale.envs.simulator import ClusterSimulator

SIM_EPOCH_UNIX_S = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
"""Unix time of the simulated clock's zero: Monday 2024-01-01 00:00 UTC."""

_ROOM_TOLERANCE = 1e-9
"""Relative slack kept under a cap's limit against float rounding of the kernel's sums."""


class BudgetLedger:
    """Every cluster's spend per budget and period; see the module docstring.

    :param sim: the simulator whose clusters it meters (read and written in place: actions
        capped before a step, rewards charged and budget entries observed after it).
    """

    def __init__(self, sim: ClusterSimulator) -> None:
        sc = sim.scenario
        self.sim = sim
        self.budgets: list[ScenarioBudget] = list(sc.budgets)
        n, nb = sim.num_clusters, len(self.budgets)
        tenants = list(sim.workload.tenant_names)
        self._tenant_index = []
        for b in self.budgets:
            if b.tenant is not None and b.tenant not in tenants:
                raise ScenarioError(
                    f"budget '{b.name}': tenant '{b.tenant}' is not in the workload; its "
                    f"tenants are {tenants[:20]}"
                )
            self._tenant_index.append(-1 if b.tenant is None else tenants.index(b.tenant))
        self._metered_tenants = any(t >= 0 for t in self._tenant_index)
        self.limit_usd = np.array([b.limit_usd for b in self.budgets])
        self.spend_usd = np.zeros((n, nb))
        self.period_start_s = np.full((n, nb), -math.inf)
        self.period_end_s = np.full((n, nb), -math.inf)
        self.breached = np.zeros((n, nb), dtype=bool)
        """Whether the current period's spend has gone over the limit."""
        self.breaches = np.zeros((n, nb), dtype=np.int64)
        """Periods of the episode whose spend went over the limit."""
        self.peak_spend_usd = np.zeros((n, nb))
        """The most any period of the episode spent so far."""
        self.penalty_usd = np.zeros(n)
        """The last step's penalty (USD, before the reward's scale)."""
        self.cap_bound = np.zeros(n, dtype=bool)
        """Whether a cap changed the last step's action."""
        self.cap_cut_replicas = np.zeros(n)
        """Replicas the cap took off the policy's targets in the last step."""
        self._tenant_before = np.zeros((n, len(tenants)))
        self._penalty = np.array(
            [b.penalty_usd_per_usd if b.mode == "penalty" else 0.0 for b in self.budgets]
        )
        self._charges = bool(self._penalty.any())
        self._caps = [k for k, b in enumerate(self.budgets) if b.mode == "cap"]
        self.observed = next((k for k, b in enumerate(self.budgets) if b.observed), None)
        if self._caps:
            self._setup_cap()

    # --- the clock --------------------------------------------------------------------------
    def now_unix_s(self) -> np.ndarray:
        """[N] each cluster's simulated time as unix seconds (see :data:`SIM_EPOCH_UNIX_S`)."""
        sp = self.sim.sim_params
        cs = self.sim.cluster_state
        bins = cs[:, dyn.CS_OFF] + cs[:, dyn.CS_SUB]
        return SIM_EPOCH_UNIX_S + sp[dyn.SP_TOW0] + bins * sp[dyn.SP_DT]

    def _roll(self, now: np.ndarray) -> None:
        """Start a fresh period for every budget whose period ``now`` is past."""
        for i, k in zip(*np.nonzero(now[:, None] >= self.period_end_s), strict=True):
            start, end = period_bounds(float(now[i]), self.budgets[k].period)
            self.period_start_s[i, k], self.period_end_s[i, k] = start, end
            self.spend_usd[i, k] = 0.0
            self.breached[i, k] = False

    # --- the simulator's hooks --------------------------------------------------------------
    def reset(self, i: int) -> None:
        """Cluster ``i`` starts an episode: nothing spent, its first periods start now."""
        self.spend_usd[i] = 0.0
        self.period_start_s[i] = self.period_end_s[i] = -math.inf
        self.breached[i] = False
        self.breaches[i] = 0
        self.peak_spend_usd[i] = 0.0
        self.penalty_usd[i] = 0.0
        self.cap_bound[i] = False
        self.cap_cut_replicas[i] = 0.0
        self._tenant_before[i] = 0.0
        self._roll_one(i)
        self._write_observations(np.array([i]))

    def _roll_one(self, i: int) -> None:
        now = float(self.now_unix_s()[i])
        for k, b in enumerate(self.budgets):
            self.period_start_s[i, k], self.period_end_s[i, k] = period_bounds(now, b.period)
            self.spend_usd[i, k] = 0.0

    def before_step(self, actions: np.ndarray) -> np.ndarray:
        """Roll periods to the decision's time, and cap ``actions`` (returns the kernel's
        actions: capped, and re-encoded for the kernel's wider step when a cap is set)."""
        self._roll(self.now_unix_s())
        if not self._caps:
            return actions
        return self._cap(actions)

    def after_step(self) -> None:
        """Count the step's spend, charge penalties, and write the observed entries."""
        sim = self.sim
        cost = sim.metrics[:, dyn.M_COST]
        tenant_step = None
        if self._metered_tenants:  # [clusters, tenants] work only when a budget names one
            tenant_total = sim.tenant_busy_usd + sim.tenant_idle_usd
            tenant_step = tenant_total - self._tenant_before
            self._tenant_before = tenant_total
        over_before = np.maximum(self.spend_usd - self.limit_usd, 0.0)
        for k, t in enumerate(self._tenant_index):
            self.spend_usd[:, k] += cost if t < 0 else tenant_step[:, t]
        over_after = np.maximum(self.spend_usd - self.limit_usd, 0.0)
        newly = (over_after > 0.0) & ~self.breached
        self.breaches += newly
        self.breached |= newly
        np.maximum(self.peak_spend_usd, self.spend_usd, out=self.peak_spend_usd)
        self.penalty_usd = (over_after - over_before) @ self._penalty
        if self._charges:
            sim.rewards -= self.penalty_usd / sim.scenario.reward.scale
        # the periods roll at the next decision (before_step): until then the info shows the
        # period this step was billed to; the observation already sees the next one
        self._write_observations()

    def _write_observations(self, rows: np.ndarray | None = None) -> None:
        """The observed budget's entries of the clusters ``rows`` (all: None)."""
        if self.observed is None:
            return
        rows = np.arange(self.sim.num_clusters) if rows is None else rows
        spend, left_s, period_s = self._observed_now(rows)
        block = self.sim.obs[rows]
        write_budget_features(block, spend, self.limit_usd[self.observed], left_s, period_s)
        self.sim.obs[rows] = block

    def _observed_now(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The observed budget of clusters ``rows`` at their current time: each period's
        spend, the time left in it and its length (a period just ended reads as the next one,
        unspent)."""
        k = self.observed
        assert k is not None
        now = self.now_unix_s()[rows]
        spend = self.spend_usd[rows, k].copy()
        start, end = self.period_start_s[rows, k].copy(), self.period_end_s[rows, k].copy()
        for j in np.flatnonzero(now >= end):
            start[j], end[j] = period_bounds(float(now[j]), self.budgets[k].period)
            spend[j] = 0.0
        return spend, end - now, end - start

    def state(self, i: int) -> dict[str, float] | None:
        """The observed budget of cluster ``i`` as :class:`~rlscale.agents.base.BudgetState`'s
        fields, or None without one."""
        if self.observed is None:
            return None
        spend, left_s, period_s = self._observed_now(np.array([i]))
        return {
            "name": self.budgets[self.observed].name,
            "spend_usd": float(spend[0]),
            "limit_usd": float(self.limit_usd[self.observed]),
            "time_left_s": float(left_s[0]),
            "period_s": float(period_s[0]),
        }

    def info(self, i: int) -> dict[str, float]:
        """Cluster ``i``'s budgets as step-info keys: per budget ``budget/NAME/spend_usd``
        (the period the step was billed to), ``.../limit_usd``, ``.../spent_share``,
        ``.../breached`` (that period), ``.../breaches`` (periods of the episode over the
        limit) and ``.../peak_spend_usd`` (the most a period of the episode spent);
        ``budget/penalty_usd`` with a penalty, ``budget/cap_bound`` and
        ``budget/cap_cut_replicas`` with a cap."""
        out: dict[str, float] = {}
        for k, b in enumerate(self.budgets):
            key = f"budget/{b.name}"
            out[f"{key}/spend_usd"] = float(self.spend_usd[i, k])
            out[f"{key}/limit_usd"] = float(self.limit_usd[k])
            out[f"{key}/spent_share"] = float(self.spend_usd[i, k] / self.limit_usd[k])
            out[f"{key}/breached"] = float(self.breached[i, k])
            out[f"{key}/breaches"] = float(self.breaches[i, k])
            out[f"{key}/peak_spend_usd"] = float(self.peak_spend_usd[i, k])
        if self._charges:
            out["budget/penalty_usd"] = float(self.penalty_usd[i])
        if self._caps:
            out["budget/cap_bound"] = float(self.cap_bound[i])
            out["budget/cap_cut_replicas"] = float(self.cap_cut_replicas[i])
        return out

    # --- the cap ----------------------------------------------------------------------------
    def _setup_cap(self) -> None:
        sim, sc = self.sim, self.sim.scenario
        for pool in sc.pools:
            if pool.warm_pool_max > 0 or (
                pool.purchase == "spot" and (pool.spot is None or pool.spot.price != "trace")
            ):
                raise ScenarioError(
                    f"pool '{pool.name}': a budget cap needs prices known ahead and no warm "
                    "pool: on-demand pools, or spot pools with spot.price: trace, and "
                    "warm_pool_max: 0"
                )
        sp, pp = sim.sim_params, sim.pool_params
        dt_s = sp[dyn.SP_DT]
        self._interval_s = dt_s * sp[dyn.SP_K]
        drain_bins = max(sp[dyn.SP_GRACE_BINS], pp[:, dyn.PP_NOTICE_BINS].max())
        # a replica stopped now is billed for at most its drain (grace, or a spot notice),
        # plus the sub-step the kernel rounds to
        self._drain_s = (drain_bins + 1.0) * dt_s
        self._steps_ahead = math.ceil((self._interval_s + self._drain_s) / self._interval_s) + 1
        # the kernel decodes a replica change as action - max_step: a wider step lets the cap
        # stop every replica of a pool in one interval
        self._policy_max_step = int(sc.max_step)
        self._kernel_max_step = max(self._policy_max_step, int(pp[:, dyn.PP_QUOTA].max()))
        sp[dyn.SP_MAXSTEP] = self._kernel_max_step
        worst = self._worst_prices_usd_h()
        need = float(pp[:, dyn.PP_QUOTA] @ worst) * self._drain_s / 3600.0
        for k in self._caps:
            if self.limit_usd[k] < need:
                raise ScenarioError(
                    f"budget '{self.budgets[k].name}': a cap of {self.limit_usd[k]:.4g} USD "
                    f"cannot be kept: stopping every pool at its quota costs up to {need:.4g} "
                    "USD of draining; raise the limit or lower the quotas"
                )

    def _worst_prices_usd_h(self) -> np.ndarray:
        """[pools] the highest price any step can charge (spot: the trace's maximum at the
        largest price multiplier the scenario may draw)."""
        sim = self.sim
        pp = sim.pool_params
        worst = pp[:, dyn.PP_PRICE].copy()
        r = sim.scenario.randomization
        scale = r.spot_price_scale[1] if r is not None and r.spot_price_scale else 1.0
        for p in range(pp.shape[0]):
            if pp[p, dyn.PP_SPOT] > 0.0:
                worst[p] = sim.spot_series[0, p].max() * max(scale, 1.0)
        return worst

    def _price_bounds_usd_h(self) -> np.ndarray:
        """[N, pools] the highest price each cluster pays over the next interval and a drain."""
        sim = self.sim
        sp, pp, cs = sim.sim_params, sim.pool_params, sim.cluster_state
        K, nspot = int(sp[dyn.SP_K]), int(sp[dyn.SP_NSPOT])
        step0 = (cs[:, dyn.CS_OFF].astype(np.int64) + cs[:, dyn.CS_SUB].astype(np.int64)) // K
        ahead = (step0[:, None] + np.arange(self._steps_ahead)) % nspot  # [N, steps]
        prices = np.tile(pp[:, dyn.PP_PRICE], (sim.num_clusters, 1))
        price_scale = cs[:, dyn.CS_SCALES + dyn.SC_SPOT_PRICE]
        for p in np.flatnonzero(pp[:, dyn.PP_SPOT] > 0.0):
            prices[:, p] = sim.spot_series[0, p][ahead].max(axis=1) * price_scale
        return prices

    def _draining_usd(self, prices: np.ndarray) -> np.ndarray:
        """[N] what each cluster's draining replicas may still be billed: each until its grace
        or notice slot in the kernel's drain rings comes due."""
        sim = self.sim
        dt_s = sim.sim_params[dyn.SP_DT]
        rings = sim.drain_rings.sum(axis=2)  # [N, pools, G]: grace and notice slots
        G = rings.shape[-1]
        now = sim.cluster_state[:, dyn.CS_SUB].astype(np.int64)
        left_s = (((np.arange(G)[None, :] - now[:, None]) % G) + 1.0) * dt_s  # [N, G]
        replica_s = np.einsum("npg,ng->np", rings, left_s)
        unringed = np.maximum(sim.pool_state[:, :, dyn.PS_DRAIN] - rings.sum(axis=2), 0.0)
        replica_s += unringed * self._drain_s
        return (prices * replica_s).sum(axis=1) / 3600.0

    def _cap(self, actions: np.ndarray) -> np.ndarray:
        sim = self.sim
        P = len(sim.pools)
        out = np.array(actions, dtype=np.int64, copy=True)
        ps = sim.pool_state
        interval_h = self._interval_s / 3600.0
        drain_h = self._drain_s / 3600.0
        prices = self._price_bounds_usd_h()  # [N, P]
        running = ps[:, :, dyn.PS_PROV] + ps[:, :, dyn.PS_LOAD] + ps[:, :, dyn.PS_READY]
        # what stopping everything now would still cost, on top of what is spent
        committed = self._draining_usd(prices) + (running * prices).sum(axis=1) * drain_h
        caps = self._caps
        left = (self.limit_usd[caps] * (1.0 - _ROOM_TOLERANCE) - self.spend_usd[:, caps]).min(1)
        room = left - committed
        delta = out[:, :P] - self._policy_max_step
        kept = np.maximum(running + np.minimum(delta, 0), 0.0)
        ups = np.maximum(delta, 0).astype(np.float64)
        keep_usd = prices * interval_h  # a kept replica pays one more interval
        new_usd = prices * (interval_h + drain_h)  # a new one, that and its drain
        wanted = kept + ups
        over = (kept * keep_usd + ups * new_usd).sum(axis=1) > room
        for i in np.flatnonzero(over):
            kept[i], ups[i] = _fit(kept[i], ups[i], keep_usd[i], new_usd[i], float(room[i]))
        target = kept + ups
        self.cap_cut_replicas[:] = np.maximum(wanted - target, 0.0).sum(axis=1)
        self.cap_bound[:] = self.cap_cut_replicas > 0.0
        out[:, :P] = np.rint(target - running).astype(np.int64) + self._kernel_max_step
        return out


def _fit(
    kept: np.ndarray, ups: np.ndarray, keep_usd: np.ndarray, new_usd: np.ndarray, room: float
) -> tuple[np.ndarray, np.ndarray]:
    """The largest replica plan within ``room`` USD that the policy's plan allows: the kept
    replicas, fewest stopped (most expensive pools first), then as many of the scale-ups as
    fit (cheapest pools first)."""
    kept = kept.copy()
    over = float(kept @ keep_usd) - room
    for p in np.argsort(-keep_usd, kind="stable"):
        if over <= 0.0:
            break
        if keep_usd[p] <= 0.0:
            continue
        stop = min(kept[p], math.ceil(over / keep_usd[p] - 1e-12))
        kept[p] -= stop
        over -= stop * keep_usd[p]
    left = max(room - float(kept @ keep_usd), 0.0)
    allowed = np.zeros_like(ups)
    for p in np.argsort(new_usd, kind="stable"):
        if ups[p] <= 0.0 or new_usd[p] <= 0.0:
            continue
        n = min(ups[p], math.floor(left / new_usd[p] + 1e-12))
        allowed[p] = n
        left -= n * new_usd[p]
    return kept, allowed
