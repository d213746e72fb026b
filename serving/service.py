"""The decision service's core: metrics in, guarded replicas per pool out; no web framework.

:class:`DecisionService` holds the scenario (it describes the live cluster's pools: names,
quotas, warm-pool sizes, profiles, prices), the policy, the rule-based fallback, each cluster's
memory, the guardrails and the :class:`~rlscale.serving.recorder.Recorder` every decision goes
through. ``decide(request)`` never raises for a request that parsed (unless the cluster table
is full): whatever is wrong with the metrics, it answers with the best decision it can still
make safely, in this order:

1. the policy, when the metrics are fresh, complete and in range, the budget it observes (if
   any) has a spend known whole, and the policy does not fail;
2. else the fallback (the Kubernetes HPA by default) when the arrival rate is usable;
3. else hold every pool at its current size.

It fails safe (the README's fail-safe table; each row is a test):

- a pool whose current replicas are missing or null is taken to run its last known-good count
  for that cluster; with no such count it gets no recommendation (never 0);
- on missing, stale or invalid input (an observed budget's unknown spend included) no pool is
  scaled down: ignorance is not idleness;
- no answer is more than one step below the cluster's last answer for the pool, whatever
  count is reported (a report can lag what the scaler already applied);
- guardrails (``serving/guardrails.py``) apply to every answer.

KEDA (:class:`~rlscale.serving.base.PoolRecommender`) reads the latest answer per
(cluster, pool), from pushes not marked ``shadow_only``, and only while the metrics it came
from are within the staleness bound: otherwise :meth:`DecisionService.recommend` raises
:class:`~rlscale.serving.base.NoRecommendationError`, the gRPC call fails, and KEDA's own
``fallback`` applies.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.envs.capacity import scenario_capacities_rps
from rlscale.envs.scenario import Scenario
from rlscale.serving.base import NoRecommendationError, PoolRecommendation
from rlscale.serving.budgets import (
    BudgetConfig,
    SpendMeter,
    SpendMetrics,
    SpendStore,
    check_observed_budget,
    observed_budget_of,
)
from rlscale.serving.causes import Cause, Reason, codes, texts
from rlscale.serving.guardrails import Guardrails, PoolLimits, guard
from rlscale.serving.inputs import RANGES, ReadRequest, read_request
from rlscale.serving.limits import CLUSTER_FORGET_AFTER_S, MAX_CLUSTERS, STALENESS_INTERVALS
from rlscale.serving.loaders import (  # noqa: F401 (re-exported: the service's policy API)
    ARTIFACT_KINDS,
    LoadedPolicy,
    check_registry_spec,
    load_policy,
    policy_kind,
    policy_signature,
    register_policy_loader,
)
from rlscale.serving.recorder import Recorder, ServiceMetrics
from rlscale.serving.schemas import BudgetStatus, RecommendationRequest, RecommendationResponse
from rlscale.serving.shadow import ShadowLog

log = logging.getLogger("rlscale.serving")


class TooManyClustersError(RuntimeError):
    """The cluster table is full of clusters heard from recently; a new one is refused."""


@dataclass
class _ClusterMemory:
    policy: Memory
    fallback: Memory
    last_seen_s: float
    last_known_good: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Per pool: the latest reported current replicas and when they were measured."""
    last_answer: dict[str, int] = field(default_factory=dict)
    """Per pool: the latest recommendation (a scale-up may still be under way)."""
    generation: int = 0
    """The service's policy generation ``policy`` belongs to."""


@dataclass(frozen=True)
class _Latest:
    recommendation: PoolRecommendation
    metrics_time_s: float
    """When the metrics it was decided on were measured (-inf: unusable timestamp)."""


class DecisionService:
    """Guarded decisions for live clusters; thread-safe. See the module docstring.

    :param scenario: the live cluster's pools, quotas, profiles and SLO targets.
    :param policy: the policy that decides when the input is good; None until one is loaded
        (:meth:`swap_policy`): the service answers from the fallback and is not ready.
    :param fallback: the rule-based scaler used when it is not (or when the policy fails).
    :param guardrails: limits on every answer; default: quotas as bounds, +4/-2 per decision.
    :param max_staleness_s: metrics older than this (by ``timestamp``) go to the fallback, and
        KEDA gets no number from them; default two of the scenario's control intervals.
    :param max_clusters: clusters tracked at once (steering and shadow-only ones apart).
    :param forget_after_s: a cluster silent this long may make room for a new one.
    :param shadow: the shadow log every decision is recorded in; None: not recorded.
    :param budgets: spend limits reported in every answer and in ``/metrics`` (never
        enforced); spend is metered either way (``serving/budgets.py``).
    :param clock: unix time now (tests pass a fake one).
    """

    def __init__(
        self,
        scenario: Scenario,
        policy: LoadedPolicy | None,
        fallback: LoadedPolicy,
        *,
        guardrails: Guardrails | None = None,
        max_staleness_s: float | None = None,
        max_clusters: int = MAX_CLUSTERS,
        forget_after_s: float = CLUSTER_FORGET_AFTER_S,
        shadow: ShadowLog | None = None,
        budgets: list[BudgetConfig] | None = None,
        budget_state: SpendStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_staleness_s is None:
            max_staleness_s = STALENESS_INTERVALS * scenario.control_interval_s
        if not max_staleness_s > 0:
            raise ValueError(f"max_staleness_s must be > 0, got {max_staleness_s}")
        if max_clusters < 1:
            raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
        self.scenario = scenario
        self.policy = policy
        self.fallback = fallback
        self.guardrails = guardrails or default_guardrails(scenario)
        missing = [p.name for p in scenario.pools if p.name not in self.guardrails.pools]
        if missing:
            raise ValueError(f"guardrails lack limits for pools {missing}")
        self.max_staleness_s = max_staleness_s
        self.max_clusters = max_clusters
        self.forget_after_s = forget_after_s
        self.clock = clock
        self._pools = {p.name: p for p in scenario.pools}
        # what a request that sends no capacity_rps gets (the scenario's configured mix)
        self._capacity_rps = scenario_capacities_rps(scenario)
        self._memory: OrderedDict[str, _ClusterMemory] = OrderedDict()
        self._shadow_memory: OrderedDict[str, _ClusterMemory] = OrderedDict()
        self._latest: dict[tuple[str, str], _Latest] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.loaded_at: float | None = clock() if policy is not None else None
        self.listeners: list[Callable[[LoadedPolicy], None]] = []
        """Called (outside the lock) after every :meth:`swap_policy`."""
        metrics = ServiceMetrics(policy, fallback.version)
        self.listeners.append(metrics.set_policy)
        self.recorder = Recorder(metrics, shadow)
        """Where every decision and KEDA answer is recorded (shadow log, metrics)."""
        self.spend = SpendMeter.for_scenario(
            scenario,
            budgets or [],
            max_staleness_s,
            SpendMetrics(metrics.registry),
            budget_state,
            forget_after_s,
        )
        """Each cluster's metered spend and the budgets (reported, never enforced)."""
        self.budgets = list(budgets or [])
        if policy is not None:
            self.check_policy(policy)
        metrics.slo_target.set(scenario.slo.target_attainment)

    @property
    def policy_version(self) -> str:
        """The serving policy's version, or ``none`` before one is loaded."""
        policy = self.policy
        return policy.version if policy is not None else "none"

    def check_policy(self, policy: LoadedPolicy) -> None:
        """Refuse a policy this service cannot feed: one that observes a spend budget the
        ``--budgets`` file does not configure (:func:`~rlscale.serving.budgets.
        check_observed_budget`).

        :raises BudgetError: the message names the budget and the fix.
        """
        check_observed_budget(observed_budget_of(policy.policy), self.budgets)

    def swap_policy(self, new: LoadedPolicy) -> bool:
        """Serve ``new`` from the next decision on; every cluster's policy memory restarts.

        Atomic: a decision runs wholly on the old policy or wholly on the new one. A policy of
        the version already serving is not swapped (its memories are kept); returns whether
        it was.

        :raises BudgetError: ``new`` observes a budget this service does not configure.
        """
        self.check_policy(new)
        with self._lock:
            if self.policy is not None and self.policy.version == new.version:
                return False
            self.policy = new
            self.loaded_at = self.clock()
            # memories restart lazily, at each cluster's next decision: O(1) under the lock
            self._generation += 1
        for listener in list(self.listeners):
            listener(new)
        return True

    # PoolRecommender ---------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """A policy is loaded."""
        return self.policy is not None

    def pools(self) -> list[str]:
        """The scenario's pool names."""
        return list(self._pools)

    def recommend(self, cluster: str, pool: str) -> PoolRecommendation:
        """The latest answer for ``pool`` of ``cluster``, from a push that may steer KEDA.

        :raises KeyError: unknown pool.
        :raises NoRecommendationError: no state from the cluster yet, state older than the
            staleness bound, or none for this pool (its count was never reported).
        """
        if pool not in self._pools:
            raise KeyError(f"unknown pool '{pool}'; known: {self.pools()}")
        now = self.clock()
        with self._lock:
            latest = self._latest.get((cluster, pool))
            heard = cluster in self._memory
        try:
            if latest is None:
                if heard:
                    raise NoRecommendationError(
                        f"no recommendation for pool '{pool}' of cluster '{cluster}': its "
                        "current replicas were never reported"
                    )
                raise NoRecommendationError(f"no state from cluster '{cluster}' yet")
            age_s = now - latest.metrics_time_s
            if not age_s <= self.max_staleness_s:
                raise NoRecommendationError(
                    f"cluster '{cluster}': the state behind pool '{pool}'s recommendation is "
                    + (f"{age_s:.0f} s old" if math.isfinite(age_s) else "of unknown age")
                    + f" (max {self.max_staleness_s:g} s)"
                )
        except NoRecommendationError:
            self.recorder.keda_answer("no_state")
            raise
        self.recorder.keda_answer("ok")
        return latest.recommendation

    # deciding ----------------------------------------------------------------------------------

    def decide_and_record(self, request: RecommendationRequest) -> RecommendationResponse:
        """:meth:`decide`, then record it (shadow row, metrics) in the caller's thread."""
        start = time.perf_counter()
        response = self.decide(request)
        self.recorder.record(request, response, time.perf_counter() - start)
        return response

    def decide(self, request: RecommendationRequest) -> RecommendationResponse:
        """The guarded recommendation for ``request``; see the module docstring. Not recorded:
        the caller hands it to :attr:`recorder` (or uses :meth:`decide_and_record`).

        :raises TooManyClustersError: a new cluster while the table is full of live ones.
        """
        now = self.clock()
        with self._lock:
            memory = self._memory_of(request.cluster_id, request.shadow_only, now)
            read = read_request(
                request,
                now=now,
                scenario=self.scenario,
                capacity_rps=self._capacity_rps,
                last_known_good={p: n for p, (n, _) in memory.last_known_good.items()},
                max_staleness_s=self.max_staleness_s,
            )
            # metered first: a policy that observes a budget sees the spend up to these metrics
            budgets = self._meter(request, read)
            read = self._with_budget(read, request)
            read = self._with_batch(read)
            decision, source, reasons = self._decide_locked(read, memory)
            current, unknown = self._current_replicas(read, memory, reasons)
            wanted = dict(decision.replicas)
            if read.problems:  # never scale down out of ignorance
                for pool, n in current.items():
                    # nor below what was last asked for: a scale-up may still be under way
                    n = max(n, memory.last_answer.get(pool, n))
                    if pool not in unknown and wanted.get(pool, n) < n:
                        reasons.append(
                            Reason(Cause.NO_SCALE_DOWN, f"(asked {wanted[pool]}, kept {n})", pool)
                        )
                        wanted[pool] = n
            # nor more than one step below the last answer: the reported count may lag what
            # the scaler already applied, and a step from a lagging count is more than a step
            step = self.guardrails.max_step_down
            for pool, last in memory.last_answer.items():
                if pool in wanted and wanted[pool] < last - step:
                    reasons.append(
                        Reason(
                            Cause.STEP_DOWN_LIMITED,
                            f"-{step} from the last answer (asked {wanted[pool]}, last {last})",
                            pool,
                        )
                    )
                    wanted[pool] = last - step
            replicas, warm, guard_reasons = guard(
                wanted, decision.warm_pool, current, self.guardrails
            )
            reasons += guard_reasons
            for pool in unknown:
                replicas.pop(pool, None)
                warm.pop(pool, None)
                reasons.append(
                    Reason(
                        Cause.NO_RECOMMENDATION,
                        "(current replicas unknown and never reported for this cluster)",
                        pool,
                    )
                )
            response = RecommendationResponse(
                decision_id=uuid.uuid4().hex,
                cluster_id=request.cluster_id,
                replicas=replicas,
                warm_pool=warm,
                source=source,
                policy_version=self.policy_version,
                reasons=texts(reasons),
                causes=codes(reasons),
                policy_reason=decision.reason,
                decided_at=now,
                budgets=budgets,
            )
            self._remember(request, read, memory, response, changed=bool(guard_reasons))
        return response

    def _meter(self, request: RecommendationRequest, read: ReadRequest) -> list[BudgetStatus]:
        """Meter the cluster's spend and show its reported SLO attainment (for alerts); a
        failure here is logged, never a failed decision. A shadow-only push is a replay or a
        mirror of some cluster, not a bill: it is neither metered nor shown to the alerts."""
        if request.shadow_only:
            return []
        attainment = request.slo_attainment
        if attainment is not None and RANGES["slo_attainment"].holds(attainment):
            self.recorder.metrics.slo_attainment.labels(request.cluster_id).set(attainment)
        try:
            # a spot price out of range is not billed as given (clipped, it was counted as
            # known spend for the rest of the period): the list price, as for a missing one,
            # and the pool is an estimate like one whose count is held
            bad_price = {
                pm.name
                for pm in request.pools
                if pm.spot_price_usd_h is not None
                and not RANGES["spot_price_usd_h"].holds(pm.spot_price_usd_h)
            }
            state = read.state
            if bad_price:
                pools = tuple(
                    replace(p, price_usd_h=p.on_demand_price_usd_h) if p.name in bad_price else p
                    for p in state.pools
                )
                state = replace(state, pools=pools)
            held = tuple(p for p, n in read.current.items() if n is None or p in bad_price)
            return self.spend.observe(
                request.cluster_id,
                state,
                read.metrics_time_s,
                request.tenant_rates_rps,
                held,
            )
        except Exception:
            log.exception("metering cluster '%s' failed", request.cluster_id[:64])
            return []

    def _with_budget(self, read: ReadRequest, request: RecommendationRequest) -> ReadRequest:
        """``read`` with the budget the serving policy observes in its state, from the spend
        meter; a problem (``budget_unknown``: the fallback decides, nothing scales down) when
        its spend is not known whole. Unchanged for a policy that observes none."""
        policy = self.policy
        observed = observed_budget_of(policy.policy) if policy is not None else None
        if observed is None or read.problems:
            return read
        budget = None
        if not request.shadow_only:
            try:
                budget = self.spend.observed_budget(
                    request.cluster_id, observed.name, read.metrics_time_s
                )
            except Exception:
                log.exception("reading budget '%s' failed", observed.name)
        if budget is None:
            why = f"('{observed.name}': unmetered period, stale cluster, or shadow-only push)"
            return replace(read, problems=[*read.problems, Reason(Cause.BUDGET_UNKNOWN, why)])
        return replace(read, state=replace(read.state, budget=budget))

    def _with_batch(self, read: ReadRequest) -> ReadRequest:
        """``read`` with its batch problems (``batch_unknown``: the fallback decides, nothing
        scales down) when the serving policy reads the batch inputs (:func:`reads_batch`);
        unchanged for any other policy, which ignores them."""
        policy = self.policy
        if (
            policy is None
            or not read.batch_problems
            or not reads_batch(policy.policy, self.scenario)
        ):
            return read
        return replace(read, problems=[*read.problems, *read.batch_problems])

    def _current_replicas(
        self, read: ReadRequest, memory: _ClusterMemory, reasons: list[Reason]
    ) -> tuple[dict[str, int], list[str]]:
        """Each pool's current count for the guardrails: reported, else the last known-good
        count (or the last answer, when a scale-up to it was under way); and the pools with
        neither (they get no recommendation)."""
        current: dict[str, int] = {}
        unknown: list[str] = []
        for pool, n in read.current.items():
            if n is None:
                good = memory.last_known_good.get(pool)
                if good is None:
                    unknown.append(pool)
                    n = 0
                else:
                    n = max(good[0], memory.last_answer.get(pool, 0))
                    reasons.append(Reason(Cause.LAST_KNOWN_GOOD, f"({n})", pool))
            current[pool] = n
        return current, unknown

    def _remember(
        self,
        request: RecommendationRequest,
        read: ReadRequest,
        memory: _ClusterMemory,
        response: RecommendationResponse,
        *,
        changed: bool,
    ) -> None:
        """Keep the reported counts as known-good, and the answer for KEDA (steering only)."""
        measured = read.metrics_time_s
        if math.isfinite(measured):
            for pool, n in read.current.items():
                old = memory.last_known_good.get(pool)
                if n is not None and (old is None or measured >= old[1]):
                    memory.last_known_good[pool] = (n, measured)
        memory.last_answer.update(response.replicas)
        if request.shadow_only:
            return
        reason = "; ".join(response.reasons)
        for pool in self._pools:
            n = response.replicas.get(pool)
            if n is None:
                self._latest.pop((request.cluster_id, pool), None)
                continue
            self._latest[(request.cluster_id, pool)] = _Latest(
                PoolRecommendation(
                    pool=pool,
                    replicas=n,
                    source="fallback" if changed else response.source,
                    reason=reason,
                    policy_version=response.policy_version,
                    cluster=request.cluster_id,
                ),
                measured,
            )

    def _decide_locked(
        self, read: ReadRequest, memory: _ClusterMemory
    ) -> tuple[Decision, str, list[Reason]]:
        state = read.state
        reasons = list(read.problems)
        decision: Decision | None = None
        if self.policy is None:
            reasons.append(Reason(Cause.NO_POLICY))
        elif not read.problems:
            try:
                decision, new_memory = self.policy.policy.decide(state, memory.policy)
                _check_decision(decision)
                memory.policy = new_memory
            except Exception as err:  # any policy failure means: fall back
                decision = None
                reasons.append(
                    Reason(Cause.POLICY_FAILED, f"{type(err).__name__}: {str(err)[:200]}")
                )
        # The fallback runs on every decision it can make, so its stabilization windows are
        # current when it has to take over.
        fallback: Decision | None = None
        if read.rate_ok:
            try:
                fallback, new_fb = self.fallback.policy.decide(state, memory.fallback)
                _check_decision(fallback)
                memory.fallback = new_fb
            except Exception as err:
                fallback = None
                reasons.append(
                    Reason(Cause.FALLBACK_FAILED, f"{type(err).__name__}: {str(err)[:200]}")
                )
        if decision is not None:
            return decision, "policy", reasons
        if fallback is not None:
            reasons.append(Reason(Cause.FALLBACK_DECIDED, self.fallback.version))
            return fallback, "fallback", reasons
        hold = {p.name: round(p.desired) for p in state.pools}
        standby = {p.name: round(p.standby) for p in state.pools}
        reasons.append(Reason(Cause.HOLD, "no usable arrival rate for the fallback"))
        return Decision(hold, standby, reason="hold current replicas"), "fallback", reasons

    def _memory_of(self, cluster_id: str, shadow_only: bool, now: float) -> _ClusterMemory:
        table = self._shadow_memory if shadow_only else self._memory
        mem = table.get(cluster_id)
        if mem is None:
            if len(table) >= self.max_clusters:
                oldest_id, oldest = next(iter(table.items()))
                if now - oldest.last_seen_s < self.forget_after_s:
                    raise TooManyClustersError(
                        f"{len(table)} clusters tracked (max {self.max_clusters}), none silent "
                        f"for {self.forget_after_s:g} s; cluster '{cluster_id[:64]}' refused"
                    )
                del table[oldest_id]
                if not shadow_only:
                    for pool in self._pools:
                        self._latest.pop((oldest_id, pool), None)
                    # its spend series and its reported attainment go with it: a silent
                    # cluster's last values would keep alerts firing, and its name every
                    # budget's notes
                    try:  # the budget state failing is logged, never a failed decision
                        self.spend.forget(oldest_id)
                    except Exception:
                        log.exception("forgetting cluster '%s''s spend failed", oldest_id[:64])
                    self.recorder.metrics.forget_cluster(oldest_id)
            mem = _ClusterMemory(
                self.policy.policy.initial_memory() if self.policy is not None else {},
                self.fallback.policy.initial_memory(),
                last_seen_s=now,
                generation=self._generation,
            )
            table[cluster_id] = mem
        elif mem.generation != self._generation:  # the policy changed since its last decision
            mem.policy = self.policy.policy.initial_memory() if self.policy is not None else {}
            mem.generation = self._generation
        mem.last_seen_s = now
        table.move_to_end(cluster_id)
        return mem

    # input -------------------------------------------------------------------------------------

    def to_state(self, request: RecommendationRequest) -> ClusterState:
        """The policy's view of ``request`` for a cluster with no history (replays, tests)."""
        return read_request(
            request,
            now=self.clock(),
            scenario=self.scenario,
            capacity_rps=self._capacity_rps,
            last_known_good={},
            max_staleness_s=self.max_staleness_s,
        ).state


def reads_batch(policy: object, scenario: Scenario) -> bool:
    """The policy decides on the batch inputs: an exported one trained with batch work (its
    manifest's layout has the batch entries), or, where the scenario has batch work, a
    baseline that sizes capacity for the batch backlog (``reads_batch_backlog``). Without
    those inputs such a policy would read no backlog and could scale its batch capacity down
    out of ignorance."""
    manifest = getattr(policy, "manifest", None)
    observation = getattr(manifest, "observation", None)
    if getattr(observation, "batch_window_s", None) is not None:
        return True
    return scenario.workload.batch is not None and getattr(policy, "reads_batch_backlog", False)


def _check_decision(decision: Decision) -> None:
    """A policy's answer must be whole, finite replica counts."""
    for table in (decision.replicas, decision.warm_pool):
        for pool, n in table.items():
            if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n):
                raise ValueError(f"pool '{pool}': replicas {n!r} is not a finite number")
    # ints, so guardrails and JSON see whole replicas
    for table in (decision.replicas, decision.warm_pool):
        for pool in list(table):
            table[pool] = round(table[pool])


def default_guardrails(
    scenario: Scenario,
    *,
    min_replicas: dict[str, int] | None = None,
    max_replicas: dict[str, int] | None = None,
    max_step_up: int = 4,
    max_step_down: int = 2,
    max_total_replicas: int | None = None,
) -> Guardrails:
    """Guardrails from the scenario's quotas, with optional per-pool overrides.

    :raises ValueError: an override for an unknown pool, or above the pool's quota.
    """
    min_replicas = min_replicas or {}
    max_replicas = max_replicas or {}
    known = {p.name for p in scenario.pools}
    for name in {*min_replicas, *max_replicas} - known:
        raise ValueError(f"guardrail for unknown pool '{name}'; known: {sorted(known)}")
    limits = {}
    for p in scenario.pools:
        hi = max_replicas.get(p.name, p.quota)
        if hi > p.quota:
            raise ValueError(f"pool '{p.name}': max_replicas {hi} exceeds its quota {p.quota}")
        limits[p.name] = PoolLimits(
            min_replicas=min_replicas.get(p.name, 0), max_replicas=hi, warm_pool_max=p.warm_pool_max
        )
    return Guardrails(
        pools=limits,
        max_step_up=max_step_up,
        max_step_down=max_step_down,
        max_total_replicas=max_total_replicas,
    )
