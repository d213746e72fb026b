"""N simulated clusters of one scenario, stepped together by the compiled kernel.

:class:`ClusterSimulator` packs a :class:`~rlscale.envs.scenario.Scenario` into the flat arrays
that :mod:`rlscale.envs.dynamics` advances, owns each cluster's random stream, and reads results
back as plain numbers. The Gymnasium env (N=1), the Gymnasium vector env and the
stable-baselines3 VecEnv all drive this one class.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlscale.envs import dynamics as dyn
from rlscale.envs.budgets import BudgetLedger
from rlscale.envs.capacity import RequestMix, pool_capacities_rps
from rlscale.envs.cluster_view import ClusterView, ColdStartLevels, SpotMarketSeries
from rlscale.envs.coldstart import COLD_START_LEVELS, build_cold_start
from rlscale.envs.metering import meter_clusters
from rlscale.envs.names import EPISODE_LATENCY_KEYS
from rlscale.envs.observation import observation_bounds, observation_names
from rlscale.envs.profiles import ThroughputProfile, load_profile
from rlscale.envs.randomization import (
    NOMINAL,
    draw_scales,
    max_cold_start_scale,
    scales_dict,
)
from rlscale.envs.scenario import (
    REQUEST_CLASSES,
    RandomizationConfig,
    Scenario,
    ScenarioError,
    WorkloadConfig,
    load_scenario,
)
from rlscale.envs.splits import Split, check_part, split_of
from rlscale.envs.spot import SpotMarket, build_spot_market
from rlscale.envs.workload import WorkloadSeries, build_workload, output_classes

_SERVES = {
    "all": dyn.SERVES_ALL,
    "interactive": dyn.SERVES_INTERACTIVE,
    "batch": dyn.SERVES_BATCH,
}
POOL_STATES = ("provisioning", "loading", "ready", "draining", "standby", "refilling", "noticed")
_POOL_STATE_METRICS = (
    dyn.PM_PROV,
    dyn.PM_LOAD,
    dyn.PM_READY,
    dyn.PM_DRAIN,
    dyn.PM_STANDBY,
    dyn.PM_REFILL,
    dyn.PM_NOTICED,
)


@functools.lru_cache(maxsize=16)
def _cached_workload(
    cfg_json: str, substep_s: float, interval_s: float, seed: int
) -> WorkloadSeries:
    cfg = WorkloadConfig.model_validate(json.loads(cfg_json))
    return build_workload(cfg, substep_s=substep_s, control_interval_s=interval_s, seed=seed)


def scenario_workload(scenario: Scenario, seed: int = 0) -> WorkloadSeries:
    """The scenario's workload series, built once per process and shared (it is read-only)."""
    return _cached_workload(
        scenario.workload.model_dump_json(), scenario.substep_s, scenario.control_interval_s, seed
    )


def prefill_wait_quantiles(prompt_q: np.ndarray, samples: int = 50_000) -> np.ndarray:
    """[1 + WAIT_ROWS, n] token quantiles that a new request's TTFT pays prefill for.

    Row 0: its own prompt. Row 1 + r: its own prompt plus an exponential wait whose mean is
    ``WAIT_MIN_TOK * WAIT_RATIO**r`` tokens' worth of prefill, the wait behind other prompts
    at a busy replica (dynamics._iteration_wait gives its chance and mean each step; a step's
    statistics interpolate between the two rows around that mean, the episode's mix them).
    Computed once per workload from a fixed-seed sample.
    """
    q = np.asarray(prompt_q, dtype=np.float64)
    n = q.shape[0]
    levels = (np.arange(n) + 0.5) / n
    rng = np.random.default_rng(20231116)
    own = np.interp(rng.random(samples), levels, q)
    waits = rng.exponential(1.0, samples)
    rows = [q]
    for r in range(dyn.WAIT_ROWS):
        mean_tok = dyn.WAIT_MIN_TOK * dyn.WAIT_RATIO**r
        rows.append(np.quantile(own + waits * mean_tok, levels))
    return np.ascontiguousarray(np.stack(rows))


_PREFILL_TABLES: dict[int, tuple[WorkloadSeries, np.ndarray]] = {}


def _prefill_table(wl: WorkloadSeries) -> np.ndarray:
    hit = _PREFILL_TABLES.get(id(wl))
    if hit is not None and hit[0] is wl:
        return hit[1]
    table = prefill_wait_quantiles(wl.prompt_quantiles)
    if len(_PREFILL_TABLES) >= 16:
        _PREFILL_TABLES.pop(next(iter(_PREFILL_TABLES)))
    _PREFILL_TABLES[id(wl)] = (wl, table)
    return table


_KERNEL_ARRAYS: dict[int, tuple[WorkloadSeries, np.ndarray]] = {}


def kernel_workload_arrays(wl: WorkloadSeries) -> np.ndarray:
    """The workload as the kernel reads it, [dynamics.N_WL, T] (rows ``dynamics.WL_*``).

    Built once per series and shared by every simulator of it (a two-week series is ~40 MB,
    and a SyncVectorEnv holds a thousand simulators).
    """
    hit = _KERNEL_ARRAYS.get(id(wl))
    if hit is not None and hit[0] is wl:
        return hit[1]
    class0 = wl.output_class_bins
    if class0 is None:
        # no per-request lengths (synthetic, ServeGen, a user's series): every bin holds the
        # classes in the workload's proportions
        table = wl.output_classes if wl.output_classes is not None else None
        share = table[0, dyn.CP_SHARE] if table is not None else 1.0
        p_ratio = table[0, dyn.CP_PROMPT] if table is not None else 1.0
        o_ratio = table[0, dyn.CP_OUTPUT] if table is not None else 1.0
        n0 = wl.arrivals * share
        p0 = wl.prompt_tokens * share * p_ratio
        o0 = wl.output_tokens * share * o_ratio
        # prompt x output sums with the workload's own pshift in each class (0 without a table)
        po = np.zeros_like(n0)
        po0 = po
        for k, (n, p, o) in enumerate(
            ((n0, p0, o0), (wl.arrivals - n0, wl.prompt_tokens - p0, wl.output_tokens - o0))
        ):
            psi = table[k, dyn.CP_PSHIFT] if table is not None else 0.0
            mean_p = np.divide(p, n, out=np.zeros_like(p), where=n > 0.0)
            po_k = np.maximum(0.0, (mean_p + psi) * o)
            po = po + po_k
            if k == 0:
                po0 = po_k
        class0 = np.stack([n0, p0, o0, po0, po])
    rows = [None] * dyn.N_WL
    rows[dyn.WL_ARRIVALS] = wl.arrivals
    rows[dyn.WL_PROMPT] = wl.prompt_tokens
    rows[dyn.WL_OUTPUT] = wl.output_tokens
    rows[dyn.WL_FORECAST] = wl.forecast_rps
    (
        rows[dyn.WL_N0],
        rows[dyn.WL_PROMPT0],
        rows[dyn.WL_OUTPUT0],
        rows[dyn.WL_PO0],
        rows[dyn.WL_PO],
    ) = class0
    arrays = np.ascontiguousarray(np.stack(rows), dtype=np.float64)
    arrays.setflags(write=False)
    if len(_KERNEL_ARRAYS) >= 16:
        _KERNEL_ARRAYS.pop(next(iter(_KERNEL_ARRAYS)))
    # the entry keeps wl alive, so its id cannot be reused while cached
    _KERNEL_ARRAYS[id(wl)] = (wl, arrays)
    return arrays


@dataclass(frozen=True)
class PoolInfo:
    """What the Python side needs to know about a pool besides the kernel's numbers."""

    name: str
    purchase: str
    profile: ThroughputProfile
    quota: int
    warm_pool_max: int
    price_usd_h: float


class ClusterSimulator:
    """``num_clusters`` independent clusters of one scenario, stepped together.

    :param scenario: a shipped scenario name, a YAML path, or a :class:`Scenario`.
    :param num_clusters: how many clusters to simulate at once.
    :param workload: a prebuilt workload series to use instead of the scenario's (for example a
        user's own trace); it must be on the scenario's sub-step grid.
    :param workload_seed: seed of the workload's own randomness (ServeGen sampling, synthetic
        noise); the series is shared by all clusters.
    :param split: the part of the workload episodes lie in (:mod:`rlscale.envs.splits`):
        ``"all"`` (the whole trace, the scenario's episode length), or ``"train"``,
        ``"validation"`` or ``"heldout"`` (episodes of the split's length, which fits each part).
    :param randomize: draw every episode's multipliers from the scenario's ``randomization``
        ranges (domain randomization, for training; :mod:`rlscale.envs.randomization`). Off
        by default, so evaluation runs the scenario as written; on with no such section, the
        multipliers stay 1.
    :param episode_latency_stats: keep each episode's TTFT and TPOT histograms, which
        :meth:`episode_latency` reads. Off, nothing else changes (observations, rewards and
        step metrics are the same to the last bit) and stepping takes about 13% less time:
        the batched envs turn it off unless asked, since training reads none of it.
    :param reference_rps: the rate observations are normalized by; None: the workload's mean
        (after the response cache). Clusters of another workload mixed into training
        (:mod:`rlscale.envs.mix`) take the scenario's own, so a rate reads the same in both.
    """

    def __init__(
        self,
        scenario: Scenario | str,
        num_clusters: int = 1,
        *,
        workload: WorkloadSeries | None = None,
        workload_seed: int = 0,
        split: str = "all",
        randomize: bool = False,
        episode_latency_stats: bool = True,
        reference_rps: float | None = None,
    ) -> None:
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        sc = load_scenario(scenario)
        self.scenario = sc
        self.num_clusters = n = int(num_clusters)
        wl = workload if workload is not None else scenario_workload(sc, workload_seed)
        if abs(wl.substep_s - sc.substep_s) > 1e-9:
            raise ScenarioError(
                f"workload sub-step {wl.substep_s} s does not match scenario substep_s "
                f"{sc.substep_s} s"
            )
        self.workload = wl
        self.split_part = check_part(split)
        self.split: Split | None = None
        if split != "all":
            self.split, hours = split_of(sc, wl.n_bins)
            sc = self.scenario = sc.model_copy(update={"episode_hours": hours})
        K = sc.substeps_per_step
        self.substeps_per_step = K
        self.episode_steps = sc.episode_steps
        self.episode_bins = self.episode_steps * K
        if wl.n_bins < self.episode_bins:
            raise ScenarioError(
                f"episode_hours ({sc.episode_hours}) is longer than the workload "
                f"'{wl.name}' ({wl.duration_s / 3600:.2f} h); shorten episode_hours or widen "
                f"the trace window"
            )
        self.max_offset_steps = (wl.n_bins - self.episode_bins) // K
        # the start steps an episode may take: inside the chosen part, the whole episode too
        self.start_range: tuple[int, int] = (
            (0, self.max_offset_steps)
            if self.split is None
            else self.split.start_range(split, self.episode_steps)
        )

        P = len(sc.pools)
        self.pools: list[PoolInfo] = []
        pp = np.zeros((P, dyn.N_PP))
        n_spot = math.ceil(wl.n_bins / K)
        spot = np.zeros((3, P, n_spot))
        cold = np.zeros((P, 3, COLD_START_LEVELS))
        max_notice = 0.0
        for p, pool in enumerate(sc.pools):
            prof = load_profile(pool.profile)
            self.pools.append(
                PoolInfo(
                    pool.name, pool.purchase, prof, pool.quota, pool.warm_pool_max, pool.price_usd_h
                )
            )
            pp[p, dyn.PP_A] = prof.iter_base_s
            pp[p, dyn.PP_C] = prof.iter_per_seq_s
            pp[p, dyn.PP_KCTX] = prof.iter_per_ctx_token_s
            pp[p, dyn.PP_PREFILL] = prof.prefill_per_token_s
            pp[p, dyn.PP_KV] = prof.kv_cache_tokens
            pp[p, dyn.PP_MAXSEQ] = prof.max_num_seqs
            pp[p, dyn.PP_PRICE] = pool.price_usd_h
            pp[p, dyn.PP_QUOTA] = pool.quota
            pp[p, dyn.PP_WARMMAX] = pool.warm_pool_max
            pp[p, dyn.PP_HOLD] = pool.warm_holding_usd_h
            pp[p, dyn.PP_INIT] = pool.initial_replicas
            pp[p, dyn.PP_SERVES] = _SERVES[pool.serves]
            cs_model = build_cold_start(sc.cold_start, prof)
            cold[p, dyn.CT_PROV] = cs_model.provisioning_s
            cold[p, dyn.CT_LOAD] = cs_model.loading_s
            cold[p, dyn.CT_WARM] = cs_model.warm_start_s
            if pool.purchase == "spot":
                market: SpotMarket = build_spot_market(
                    pool.spot if pool.spot is not None else _default_spot(),
                    on_demand_price_usd_h=pool.price_usd_h,
                    n_steps=n_spot,
                    control_interval_s=sc.control_interval_s,
                    seed=workload_seed + 1000 + p,
                )
                pp[p, dyn.PP_SPOT] = 1.0
                pp[p, dyn.PP_FULFIL] = market.fulfil_prob
                pp[p, dyn.PP_NOTICE_BINS] = max(1, round(market.notice_s / sc.substep_s))
                max_notice = max(max_notice, pp[p, dyn.PP_NOTICE_BINS])
                pp[p, dyn.PP_OU_MEAN] = market.ou_mean_usd_h
                pp[p, dyn.PP_OU_REV] = market.ou_reversion_per_h
                pp[p, dyn.PP_OU_VOL] = market.ou_vol_usd_h
                if market.price_usd_h is not None:
                    pp[p, dyn.PP_PRICE_TRACE] = 1.0
                    spot[0, p] = market.price_usd_h[:n_spot]
                else:
                    spot[0, p] = market.ou_mean_usd_h
                spot[1, p] = market.preempt_prob[:n_spot]
                spot[2, p] = market.capacity_share[:n_spot]
            else:
                spot[0, p] = pool.price_usd_h
                spot[2, p] = 1.0
        self.pool_params = pp
        self.spot_series = spot
        self.cold_tables = cold

        grace_bins = max(1, round(sc.drain_grace_s / sc.substep_s))
        L = max(2, math.ceil(sc.slo.timeout_s / sc.substep_s))
        # the lifecycle rings must reach the slowest start: provisioning, then loading (at the
        # largest cold-start multiplier, when randomizing: set_randomize lengthens them)
        self._slowest_start_s = float(cold[:, dyn.CT_PROV].max() + cold[:, dyn.CT_LOAD].max())
        H = self._ring_length(1.0)
        G = int(max(grace_bins, max_notice)) + 2
        ref_rps = (
            max(wl.mean_rps * (1.0 - sc.workload.cache_hit_ratio), 1e-3)
            if reference_rps is None
            else float(reference_rps)
        )
        self.reference_rps = ref_rps
        sp = np.zeros(dyn.N_SP)
        sp[dyn.SP_DT] = sc.substep_s
        sp[dyn.SP_K] = K
        sp[dyn.SP_L] = L
        sp[dyn.SP_H] = H
        sp[dyn.SP_G] = G
        sp[dyn.SP_TTFT] = sc.slo.ttft_s
        sp[dyn.SP_TPOT] = sc.slo.tpot_s
        sp[dyn.SP_CACHE] = sc.workload.cache_hit_ratio
        sp[dyn.SP_W_SLO] = sc.reward.slo_violation_usd
        sp[dyn.SP_W_CHURN] = sc.reward.churn_usd
        sp[dyn.SP_RSCALE] = sc.reward.scale
        sp[dyn.SP_MAXSTEP] = sc.max_step
        sp[dyn.SP_STOCH] = 1.0 if wl.stochastic else 0.0
        sp[dyn.SP_GRACE_BINS] = grace_bins
        sp[dyn.SP_MAXTOK] = sc.max_batched_tokens
        sp[dyn.SP_REF_RPS] = ref_rps
        sp[dyn.SP_TOW0] = wl.start_s_of_week
        sp[dyn.SP_NBINS] = wl.n_bins
        sp[dyn.SP_NSPOT] = n_spot
        sp[dyn.SP_TIMEOUT] = sc.slo.timeout_s
        classes = wl.output_classes
        if classes is None:  # lengths unknown: memoryless classes, as one bucket would be
            classes = output_classes(np.ones(1), np.ones(1))
            classes[:, dyn.CP_PHI] = 1.0
        n_cls = dyn.N_CP * dyn.OUTPUT_CLASSES
        sp[dyn.SP_CLASS : dyn.SP_CLASS + n_cls] = np.asarray(classes, dtype=np.float64).ravel()
        self.has_batch = wl.batch_bins is not None
        batch = sc.workload.batch
        if batch is None and self.has_batch:
            raise ScenarioError(
                f"the workload '{wl.name}' has batch requests (a class column) but the scenario "
                "has no workload.batch section: add one to set their deadline"
            )
        bclass = wl.batch_class if wl.batch_class is not None else np.ones(dyn.N_CP)
        sp[dyn.SP_CLASS + n_cls : dyn.SP_OUTPUT_Q] = bclass
        sp[dyn.SP_BATCH] = 1.0 if self.has_batch else 0.0
        # the batch queue holds a cohort per decision step, for the deadline
        deadline_s = batch.deadline_h * 3600.0 if batch is not None else sc.control_interval_s
        sp[dyn.SP_BATCH_STEPS] = max(1, round(deadline_s / (K * sc.substep_s)))
        sp[dyn.SP_W_BATCH] = batch.expired_usd if batch is not None else 0.0
        mean_output = float(wl.output_tokens.sum() / max(wl.arrivals.sum(), 1e-9))
        quantiles = wl.output_quantiles
        if quantiles is None:  # lengths unknown: every request at the mean
            quantiles = np.full(dyn.N_OUTPUT_Q, mean_output)
        sp[dyn.SP_OUTPUT_Q : dyn.SP_OUTPUT_Q + dyn.N_OUTPUT_Q] = quantiles
        q0 = np.asarray(wl.prompt_quantiles, dtype=np.float64)
        mean_sq = max(float(q0.mean()) ** 2, 1e-12)
        sp[dyn.SP_PROMPT_M2] = float((q0**2).mean()) / mean_sq
        sp[dyn.SP_PROMPT_M2_CHUNK] = (
            float((np.minimum(q0, sc.max_batched_tokens) ** 2).mean()) / mean_sq
        )
        # per-replica queues change who waits for whom before a prefill (dynamics.
        # _iteration_wait); the queue itself stays pooled (see the README's fidelity section)
        sp[dyn.SP_PER_REPLICA_QUEUES] = 0.0 if sc.routing == "least_loaded" else 1.0
        self.sim_params = sp
        self.workload_arrays = kernel_workload_arrays(wl)
        self.batch_arrays = (
            np.ascontiguousarray(wl.batch_bins, dtype=np.float64)
            if self.has_batch
            else np.zeros((dyn.N_BQ, 1))
        )
        self.prompt_quantiles = _prefill_table(wl)

        self.observes_budget = any(b.observed for b in sc.budgets)
        self.obs_low, self.obs_high = observation_bounds(
            P, self.observes_budget, batch=self.has_batch
        )
        obs_dim = self.obs_low.shape[0]
        self.action_nvec = np.array(
            [2 * sc.max_step + 1] * P + [p.warm_pool_max + 1 for p in sc.pools], dtype=np.int64
        )
        # state, written in place by the kernel
        self.cluster_state = np.zeros((n, dyn.N_CS))
        self.pool_state = np.zeros((n, P, dyn.N_PS))
        self.queue_ring = np.zeros((n, dyn.N_Q, L))
        self.batch_ring = np.zeros(
            (n, dyn.N_BQ, int(sp[dyn.SP_BATCH_STEPS]) if self.has_batch else 1)
        )
        # the episode's cost allocated to the request classes (REQUEST_CLASSES order)
        self.class_cost_usd = np.zeros((n, len(REQUEST_CLASSES)))
        self.wait_hist = np.zeros((n, 3, L))
        self.lifecycle_rings = np.zeros((n, P, 3, H), dtype=np.float32)
        self.drain_rings = np.zeros((n, P, 2, G))
        self.rng_state = np.zeros(n, dtype=np.uint64)
        self.obs = np.zeros((n, obs_dim), dtype=np.float32)
        self.rewards = np.zeros(n)
        self.metrics = np.zeros((n, dyn.N_M))
        self.pool_metrics = np.zeros((n, P, dyn.N_PM))
        # the episode's bill allocated to tenants (rlscale.envs.metering): busy and idle USD,
        # and the busy GPU-seconds their tokens used
        n_tenants = len(wl.tenant_names)
        self.tenant_busy_usd = np.zeros((n, n_tenants))
        self.tenant_idle_usd = np.zeros((n, n_tenants))
        self.tenant_busy_gpu_s = np.zeros((n, n_tenants))
        self._gpus_per_replica = np.array(
            [p.profile.gpus_per_replica for p in self.pools], dtype=np.float64
        )
        self._interval_arrived = _interval_has_requests(wl, K)
        # a pool's cost while it decodes nothing goes to the class it serves
        self._idle_batch_share = np.array(
            [1.0 if pool.serves == "batch" else 0.0 for pool in sc.pools]
        )
        # empty when not kept: the kernel then skips them (dynamics.step_clusters)
        self.episode_latency_stats = bool(episode_latency_stats)
        kept = self.episode_latency_stats
        self.episode_wait_hist = np.zeros((n, dyn.WAIT_ROWS + 1, 3, L if kept else 0))
        # the TPOT bins, then the step's completions per sub-step and pool (dyn.TPOT_AT_FIELDS)
        tpot_width = dyn.TPOT_BINS + self.substeps_per_step * P * dyn.TPOT_AT_FIELDS
        self.episode_tpot_hist = np.zeros((n, tpot_width if kept else 0))
        self.steps = np.zeros(n, dtype=np.int64)
        self.start_steps = np.zeros(n, dtype=np.int64)
        self._actions = np.zeros((n, 2 * P), dtype=np.int64)
        # the kernel's arguments, grouped as dynamics.step_clusters documents
        self._params = (
            self.sim_params,
            self.pool_params,
            self.workload_arrays,
            self.prompt_quantiles,
            self.spot_series,
            self.cold_tables,
            self.obs_low,
            self.obs_high,
            self.batch_arrays,
        )
        self._state = (
            self.cluster_state,
            self.pool_state,
            self.queue_ring,
            self.wait_hist,
            self.lifecycle_rings,
            self.drain_rings,
            self.rng_state,
            self.episode_wait_hist,
            self.episode_tpot_hist,
            np.zeros((n, dyn.N_SCR, P)),
            np.zeros((n, dyn.N_GR, max(dyn.TTFT_GRID, self.prompt_quantiles.shape[1]))),
            self.batch_ring,
        )
        self._out = (self.obs, self.rewards, self.metrics, self.pool_metrics)
        self._cluster_views: dict[int, ClusterView] = {}
        self.randomize = False
        self._randomization: RandomizationConfig | None = None
        self.set_randomize(randomize)
        # the scenario's spend budgets (rlscale.envs.budgets); None keeps every step as before
        self.budget_ledger: BudgetLedger | None = BudgetLedger(self) if sc.budgets else None

    # --- domain randomization ----------------------------------------------------------------
    def set_randomize(self, on: bool) -> None:
        """Switch domain randomization on or off from each cluster's next reset on (the
        constructor's ``randomize``; for example to start training on the nominal scenario).
        """
        self.randomize = bool(on)
        self._randomization = self.scenario.randomization if self.randomize else None
        self._fit_lifecycle_rings(self._ring_length(max_cold_start_scale(self._randomization)))

    def _ring_length(self, cold_start_scale: float) -> int:
        return math.ceil(self._slowest_start_s * cold_start_scale / self.scenario.substep_s) + 2

    def _fit_lifecycle_rings(self, length: int) -> None:
        """Lengthen the lifecycle rings to ``length`` sub-steps (never shorten them), keeping
        every pending transition due at the sub-step it was due at."""
        old = self.lifecycle_rings
        n, _, _, h_old = old.shape
        if length <= h_old:
            return
        rings = np.zeros((*old.shape[:3], length), dtype=old.dtype)
        # pending transitions are due within the ring's reach of the next sub-step
        now = self.cluster_state[:, dyn.CS_SUB].astype(np.int64)
        rows = np.arange(n)
        for slot in range(h_old):
            due = now + (slot - now) % h_old
            rings[rows, :, :, due % length] = old[:, :, :, slot]
        self.lifecycle_rings = rings
        self.sim_params[dyn.SP_H] = length
        self._state = tuple(rings if a is old else a for a in self._state)

    # --- control ---------------------------------------------------------------------------
    @property
    def pool_names(self) -> list[str]:
        """Pool names in action / observation order."""
        return [p.name for p in self.pools]

    @property
    def batch_window_s(self) -> float | None:
        """The batch requests' completion window as the kernel counts it (whole decision
        steps; the observation's ``batch_queue`` is scaled by it); None without batch work."""
        if not self.has_batch:
            return None
        sp = self.sim_params
        return float(sp[dyn.SP_BATCH_STEPS] * sp[dyn.SP_K] * sp[dyn.SP_DT])

    @property
    def observation_names(self) -> list[str]:
        """Names of the observation's entries (the observed budget's last, when there is one)."""
        return observation_names(self.pool_names, self.observes_budget, batch=self.has_batch)

    def spaces(self) -> tuple[Any, Any]:
        """Observation and action space of one cluster: a ``Box`` and a ``MultiDiscrete``."""
        from gymnasium import spaces

        obs = spaces.Box(
            low=self.obs_low.astype(np.float32),
            high=self.obs_high.astype(np.float32),
            dtype=np.float32,
        )
        return obs, spaces.MultiDiscrete(self.action_nvec)

    def noop_action(self) -> np.ndarray:
        """The action that changes nothing: zero replica change and an empty warm pool."""
        a = np.zeros(2 * len(self.pools), dtype=np.int64)
        a[: len(self.pools)] = self.scenario.max_step
        return a

    def reset_cluster(
        self, i: int, rng: np.random.Generator, start_step: int | None = None
    ) -> None:
        """Start cluster ``i`` afresh; its episode offset and random stream come from ``rng``.

        :param start_step: pin the episode's first decision step within the workload (for
            evaluation on a chosen window); drawn uniformly from :attr:`start_range` (the
            chosen part of the split) when None.

        With ``randomize`` on, the episode's multipliers are drawn from a stream seeded by its
        kernel seed: ``rng`` yields the same numbers with randomization on or off.
        """
        lo, hi = self.start_range
        if start_step is None:
            start = int(rng.integers(lo, hi + 1))
        else:
            if not lo <= start_step <= hi:
                raise ValueError(
                    f"start_step {start_step} outside [{lo}, {hi}] for an episode of "
                    f"{self.episode_steps} steps in the '{self.split_part}' part of "
                    f"'{self.workload.name}'"
                )
            start = int(start_step)
        seed = int(rng.integers(1, 2**63 - 1))
        self.start_steps[i] = start
        self.steps[i] = 0
        self.tenant_busy_usd[i] = 0.0
        self.tenant_idle_usd[i] = 0.0
        self.tenant_busy_gpu_s[i] = 0.0
        self.class_cost_usd[i] = 0.0
        scales = NOMINAL if self._randomization is None else draw_scales(self._randomization, seed)
        dyn.reset_cluster(
            i, start * self.substeps_per_step, seed, scales, self._params, self._state, self._out
        )
        if self.budget_ledger is not None:
            self.budget_ledger.reset(i)

    def step(self, actions: np.ndarray) -> None:
        """Advance every cluster by one decision interval under ``actions`` [N, 2 * pools]."""
        a = np.asarray(actions)
        if a.shape != self._actions.shape:
            a = a.reshape(self._actions.shape)
        if np.any(a < 0) or np.any(a >= self.action_nvec):
            bad = np.argwhere((a < 0) | (a >= self.action_nvec))[0]
            raise ValueError(
                f"action entry {tuple(int(x) for x in bad)} = {a[tuple(bad)]} is outside "
                f"[0, {self.action_nvec[bad[-1]] - 1}]"
            )
        ledger = self.budget_ledger
        self._actions[:] = a if ledger is None else ledger.before_step(a)
        dyn.step_clusters(self._actions, self._params, self._state, self._out)
        self._meter_tenants()
        if self.has_batch:
            self._meter_classes()
        if ledger is not None:
            ledger.after_step()
        self.steps += 1

    def _meter_tenants(self) -> None:
        """Allocate every cluster's last interval to tenants (:mod:`rlscale.envs.metering`)."""
        wl = self.workload
        pm = self.pool_metrics
        token_share = wl.tenant_token_share
        request_share = token_share if wl.tenant_request_share is None else wl.tenant_request_share
        meter_clusters(
            self.metrics[:, dyn.M_COST],
            pm[:, :, dyn.PM_COST],
            pm[:, :, dyn.PM_REPLICA_S],
            pm[:, :, dyn.PM_TOKENS],
            pm[:, :, dyn.PM_PRICE],
            self._saturation_tokens_per_s,
            self._gpus_per_replica,
            (self.start_steps + self.steps) % token_share.shape[0],
            self._interval_arrived,
            token_share,
            request_share,
            self.tenant_busy_usd,
            self.tenant_idle_usd,
            self.tenant_busy_gpu_s,
        )

    def _meter_classes(self) -> None:
        """Allocate every cluster's last interval to the request classes: each pool's cost by
        the share of its tokens each class decoded; a pool that decoded none (idle, starting,
        draining empty) charges the class it serves, interactive when it serves both."""
        pm = self.pool_metrics
        cost = pm[:, :, dyn.PM_COST]
        tokens = pm[:, :, dyn.PM_TOKENS]
        batch_share = np.where(
            tokens > 0.0,
            pm[:, :, dyn.PM_B_TOKENS] / np.maximum(tokens, 1e-300),
            self._idle_batch_share,
        )
        batch_usd = (cost * batch_share).sum(axis=1)
        self.class_cost_usd[:, 1] += batch_usd
        self.class_cost_usd[:, 0] += cost.sum(axis=1) - batch_usd

    def set_violation_price(self, usd: float) -> None:
        """Price one SLO violation at ``usd`` in the reward from the next step on (training
        adapts it as a Lagrange multiplier: :mod:`rlscale.training.lagrange`)."""
        if not math.isfinite(usd) or usd < 0.0:
            raise ValueError(f"violation price must be a finite number >= 0, got {usd}")
        self.sim_params[dyn.SP_W_SLO] = float(usd)

    @property
    def violation_price(self) -> float:
        """The reward's current price of one SLO violation, USD."""
        return float(self.sim_params[dyn.SP_W_SLO])

    def step_requests(self) -> tuple[np.ndarray, np.ndarray]:
        """[N] requests of the last step that met the SLO, and [N] that counted (met + missed,
        drops included): what attainment is the ratio of."""
        m = self.metrics
        return m[:, dyn.M_GOOD], m[:, dyn.M_GOOD] + m[:, dyn.M_VIOL]

    # --- reading results ----------------------------------------------------------------------
    def truncated(self) -> np.ndarray:
        """Which clusters have reached the end of their episode."""
        return self.steps >= self.episode_steps

    def counters(self, i: int) -> dict[str, float]:
        """Cumulative request accounting of cluster ``i`` (the conservation identity's terms)."""
        c = self.cluster_state[i]
        ps = self.pool_state[i]
        return {
            "arrived": float(c[dyn.CS_ARRIVED]),
            "cache_hits": float(c[dyn.CS_HITS]),
            "completed": float(c[dyn.CS_COMPLETED]),
            "dropped": float(c[dyn.CS_DROPPED]),
            "queued": float(self.queue_ring[i, 0].sum()),
            "in_flight": float(ps[:, dyn.PS_IR].sum() + ps[:, dyn.PS_ID].sum())
            - self._batch_in_flight(i),
            "admitted": float(c[dyn.CS_ADMITTED]),
            "requeued": float(c[dyn.CS_REQUEUED]),
        }

    def _batch_in_flight(self, i: int) -> float:
        jb = dyn.PS_CLASS + dyn.N_CF * dyn.BATCH_BUCKET
        ps = self.pool_state[i]
        return float(ps[:, jb + dyn.CF_IR].sum() + ps[:, jb + dyn.CF_ID].sum())

    def batch_counters(self, i: int) -> dict[str, float]:
        """Cumulative accounting of cluster ``i``'s batch requests: arrived = completed +
        expired + queued + in flight (``requeued`` ones were counted back into the queue;
        ``admitted`` counts each admission, a requeued request's again). All zero without
        batch work."""
        c = self.cluster_state[i]
        return {
            "arrived": float(c[dyn.CS_B_ARRIVED]),
            "completed": float(c[dyn.CS_B_COMPLETED]),
            "expired": float(c[dyn.CS_B_EXPIRED]),
            "queued": float(self.batch_ring[i, dyn.BQ_N].sum()),
            "in_flight": self._batch_in_flight(i),
            "admitted": float(c[dyn.CS_B_ADMITTED]),
            "requeued": float(c[dyn.CS_B_REQUEUED]),
        }

    def class_costs(self, i: int) -> dict[str, float]:
        """Cost of cluster ``i``'s episode so far by request class (USD); sums to the bill.
        Without batch work everything is the interactive requests'."""
        if not self.has_batch:
            return {
                REQUEST_CLASSES[0]: float(self.cluster_state[i, dyn.CS_COST]),
                REQUEST_CLASSES[1]: 0.0,
            }
        return dict(zip(REQUEST_CLASSES, self.class_cost_usd[i].tolist(), strict=True))

    def randomization(self, i: int) -> dict[str, float]:
        """The multipliers cluster ``i``'s episode runs with (``rate_scale``,
        ``spot_price_scale``, ``preemption_scale``, ``cold_start_scale``); all 1 when nominal."""
        return scales_dict(self.cluster_state[i, dyn.CS_SCALES : dyn.CS_SCALES + dyn.N_SCALES])

    def randomization_info(self, i: int) -> dict[str, float]:
        """Cluster ``i``'s multipliers as info keys (``randomization/rate_scale``, ...) when this
        simulator randomizes, for episode summaries; empty otherwise."""
        if not self.randomize:
            return {}
        return {f"randomization/{k}": v for k, v in self.randomization(i).items()}

    def replicas(self, i: int) -> dict[str, dict[str, float]]:
        """Replicas of cluster ``i`` by pool and state."""
        return self._replicas(self.pool_metrics[i].tolist())

    def _replicas(self, pm: list[list[float]]) -> dict[str, dict[str, float]]:
        return {
            pool.name: {
                state: row[k] for state, k in zip(POOL_STATES, _POOL_STATE_METRICS, strict=True)
            }
            for pool, row in zip(self.pools, pm, strict=True)
        }

    def step_info(self, i: int) -> dict:
        """The metrics of cluster ``i``'s last step, namespaced like ``cost/usd``."""
        m = self.metrics[i].tolist()  # Python floats: one conversion, not one per key
        pm = self.pool_metrics[i].tolist()
        info = {
            "cost/usd": m[dyn.M_COST],
            "cost/total_usd": m[dyn.M_COST_TOTAL],
            "cost/by_pool_usd": {p.name: pm[j][dyn.PM_COST] for j, p in enumerate(self.pools)},
            "slo/attainment": m[dyn.M_ATTAIN],
            "slo/attainment_episode": m[dyn.M_ATTAIN_EP],
            "slo/violations": m[dyn.M_VIOL],
            "latency/ttft_p50_s": m[dyn.M_TTFT50],
            "latency/ttft_p95_s": m[dyn.M_TTFT95],
            "latency/ttft_p99_s": m[dyn.M_TTFT99],
            "latency/tpot_p50_s": m[dyn.M_TPOT50],
            "latency/tpot_p95_s": m[dyn.M_TPOT95],
            "latency/tpot_p99_s": m[dyn.M_TPOT99],
            "load/arrival_rate_rps": m[dyn.M_RATE_RPS],
            "load/queue": m[dyn.M_QUEUE],
            "load/in_flight": m[dyn.M_INFLIGHT],
            "load/compute_util": m[dyn.M_UTIL],
            "load/kv_util": m[dyn.M_KV_UTIL],
            "requests/arrived": m[dyn.M_ARRIVED],
            "requests/cache_hits": m[dyn.M_HITS],
            "requests/admitted": m[dyn.M_ADMITTED],
            "requests/completed": m[dyn.M_COMPLETED],
            "requests/dropped": m[dyn.M_DROPPED],
            "requests/requeued": m[dyn.M_REQUEUED],
            "tokens/served": m[dyn.M_TOKENS],
            "scale/events": m[dyn.M_SCALE_EVENTS],
            "scale/replicas_changed": m[dyn.M_REPLICAS_CHANGED],
            "scale/cold_starts": m[dyn.M_COLD_STARTS],
            "scale/warm_starts": m[dyn.M_WARM_STARTS],
            "spot/preemptions": m[dyn.M_PREEMPTIONS],
            "spot/unfulfilled": m[dyn.M_UNFULFILLED],
            "spot/price_usd_h": {p.name: pm[j][dyn.PM_PRICE] for j, p in enumerate(self.pools)},
            "replicas": self._replicas(pm),
        }
        if self.has_batch:
            info.update(
                {
                    "batch/arrived": m[dyn.M_B_ARRIVED],
                    "batch/admitted": m[dyn.M_B_ADMITTED],
                    "batch/completed": m[dyn.M_B_COMPLETED],
                    "batch/expired": m[dyn.M_B_EXPIRED],
                    "batch/requeued": m[dyn.M_B_REQUEUED],
                    "batch/queue": m[dyn.M_B_QUEUE],
                    "batch/in_flight": m[dyn.M_B_INFLIGHT],
                    "batch/tokens": m[dyn.M_B_TOKENS],
                }
            )
        if self.scenario.budget_usd:  # reported, not observed: a live cluster has no episode
            info["cost/budget_spent"] = info["cost/total_usd"] / self.scenario.budget_usd
        if self.budget_ledger is not None:
            info.update(self.budget_ledger.info(i))
        return info

    def episode_latency(self, i: int) -> dict[str, float]:
        """TTFT and TPOT percentiles of cluster ``i``'s episode so far, in seconds, and the
        TTFT attainment: the share of requests reaching the servers whose first token came
        within the SLO's TTFT target (dropped requests count as missing it)."""
        if not self.episode_latency_stats:
            raise RuntimeError(
                "this simulator keeps no episode latency histograms: build it with "
                "episode_latency_stats=True"
            )
        v = dyn.episode_latency(
            self.sim_params,
            self.prompt_quantiles,
            self.cluster_state[i],
            self.episode_wait_hist[i],
            self.episode_tpot_hist[i],
        )
        return {k: float(x) for k, x in zip(EPISODE_LATENCY_KEYS, v, strict=True)}

    def cluster(self, i: int) -> ClusterView:
        """Cluster ``i`` read by name; live, so one view serves every step (see
        :class:`~rlscale.envs.cluster_view.ClusterView`)."""
        view = self._cluster_views.get(i)
        if view is None:
            view = self._cluster_views[i] = ClusterView(self, i)
        return view

    def spot_market_series(self) -> SpotMarketSeries:
        """Every pool's market per decision step: price, preemption chance, capacity share."""
        ro = self.spot_series.view()
        ro.flags.writeable = False
        fulfil = self.pool_params[:, dyn.PP_FULFIL].copy()
        return SpotMarketSeries(ro[0], ro[1], ro[2], fulfil)

    def cold_start_levels_s(self) -> ColdStartLevels:
        """Every pool's cold-start phases as equally likely levels, in seconds."""
        ro = self.cold_tables.view()
        ro.flags.writeable = False
        return ColdStartLevels(ro[:, dyn.CT_PROV], ro[:, dyn.CT_LOAD], ro[:, dyn.CT_WARM])

    @functools.cached_property
    def pool_capacity_rps(self) -> np.ndarray:
        """[pools] saturation req/s of one ready replica of each pool for the request mix of
        the whole workload series (:mod:`rlscale.envs.capacity`); read-only."""
        caps = pool_capacities_rps(
            [p.profile for p in self.pools],
            RequestMix.of_series(self.workload),
            max_batched_tokens=self.scenario.max_batched_tokens,
        )
        caps.flags.writeable = False
        return caps

    @functools.cached_property
    def _saturation_tokens_per_s(self) -> np.ndarray:
        """[pools] output tokens/s one ready replica decodes at saturation for the workload's
        request mix: what a token's GPU time is metered at."""
        mix = RequestMix.of_series(self.workload)
        return np.maximum(self.pool_capacity_rps * mix.output_tokens, 1e-12)

    def tenant_costs(self, i: int) -> dict[str, float]:
        """Cost of cluster ``i``'s episode so far by tenant: the GPU time its tokens used plus
        its share of idle, warm-pool, cold-start and draining time
        (:mod:`rlscale.envs.metering`); the values sum to the episode's cost."""
        total = self.tenant_busy_usd[i] + self.tenant_idle_usd[i]
        return dict(zip(self.workload.tenant_names, total.tolist(), strict=True))

    def tenant_idle_costs(self, i: int) -> dict[str, float]:
        """Of :meth:`tenant_costs`, each tenant's share of idle, warm-pool, cold-start and
        draining time (USD)."""
        return dict(zip(self.workload.tenant_names, self.tenant_idle_usd[i].tolist(), strict=True))

    def tenant_busy_gpu_hours(self, i: int) -> dict[str, float]:
        """GPU-hours each tenant's tokens kept busy in cluster ``i``'s episode so far."""
        hours = self.tenant_busy_gpu_s[i] / 3600.0
        return dict(zip(self.workload.tenant_names, hours.tolist(), strict=True))


def _interval_has_requests(wl: WorkloadSeries, per_interval: int) -> np.ndarray:
    """[rows of ``tenant_token_share``] whether any request arrives in each interval."""
    rows = wl.tenant_token_share.shape[0]
    padded = np.zeros(rows * per_interval)
    n = min(wl.n_bins, padded.size)
    padded[:n] = wl.arrivals[:n]
    return padded.reshape(rows, per_interval).sum(axis=1) > 0.0


def _default_spot():
    from rlscale.envs.scenario import SpotConfig

    return SpotConfig()
