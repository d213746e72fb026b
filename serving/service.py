"""The decision service's core: metrics in, guarded replicas per pool out; no web framework.

:class:`DecisionService` holds the scenario (it describes the live cluster's pools: names,
quotas, warm-pool sizes, profiles, prices), the policy, the rule-based fallback, the policy
memory of each cluster, and the guardrails. ``decide(request)`` never raises for a request that
parsed: whatever is wrong with the metrics, it answers with the best decision it can still make
safely, in this order:

1. the policy, when the metrics are fresh, complete and in range and the policy does not fail;
2. else the fallback (the Kubernetes HPA by default) when the arrival rate is usable;
3. else hold every pool at its current size.

Guardrails (``serving/guardrails.py``) apply to every answer. The service also implements
:class:`rlscale.serving.base.PoolRecommender` from its latest decision, for the KEDA scaler.

Policies are resolved by :func:`load_policy` from a spec string; a new kind (an ONNX export,
an MLflow model) plugs in with :func:`register_policy_loader` without touching the service.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlscale.agents.base import ClusterState, Decision, Memory, Policy, PoolState
from rlscale.agents.onnx_policy import ArtifactError
from rlscale.envs.capacity import scenario_capacities_rps
from rlscale.envs.scenario import Scenario, ScenarioError
from rlscale.serving.base import PoolRecommendation
from rlscale.serving.guardrails import Guardrails, PoolLimits, guard
from rlscale.serving.schemas import (
    EPOCH_MONDAY_S,
    PoolMetrics,
    RecommendationRequest,
    RecommendationResponse,
    ReplicasByState,
)

# --- policy loading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy ready to decide, with the version reported in every answer."""

    policy: Policy
    version: str
    """``NAME@<12 hex>`` of its config (a baseline) or of its model file (an export)."""
    spec: str
    kind: str
    origin: str = ""
    """Where it was loaded from, when the spec does not say (``models:/NAME/VERSION``)."""


PolicyLoader = Callable[[str, Scenario], LoadedPolicy]
Signature = Callable[[str], Any]


@dataclass(frozen=True)
class _PolicyKind:
    kind: str
    matches: Callable[[str], bool]
    load: PolicyLoader
    signature: Signature | None


_LOADERS: list[_PolicyKind] = []
ARTIFACT_KINDS = ("onnx", "mlflow")
"""Kinds whose loading can fail at run time (a file being replaced, a registry away)."""


def register_policy_loader(
    kind: str,
    matches: Callable[[str], bool],
    load: PolicyLoader,
    signature: Signature | None = None,
) -> None:
    """Resolve specs for which ``matches(spec)`` holds with ``load``; later ones win.

    :param signature: a cheap fingerprint of what the spec points at now (file times, the
        version an alias names); when it changes, the service reloads. None: never reloads.
    """
    _LOADERS.insert(0, _PolicyKind(kind, matches, load, signature))


def policy_version(name: str, config: dict[str, Any]) -> str:
    """A stable version string from a policy's name and parameters."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}@{digest[:12]}"


def _file_signature(*paths: Path) -> tuple:
    out = []
    for path in paths:
        try:
            st = path.stat()  # follows symlinks: a ConfigMap's ..data swap is a change
            # ctime too: a copy that keeps the old mtime (cp -p, tar) still changes it
            out.append(
                (str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
            )
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def _load_baseline(spec: str, scenario: Scenario) -> LoadedPolicy:
    from rlscale.agents.registry import make_policy

    name, _, params = spec.partition("=")
    policy = make_policy(name, scenario, params or None)
    return LoadedPolicy(policy, policy_version(policy.name, policy.config()), spec, "baseline")


def _baseline_signature(spec: str) -> tuple:
    _, _, params = spec.partition("=")
    return _file_signature(Path(params)) if params else ()


def _is_artifact(spec: str) -> bool:
    """A path, not ``NAME`` or ``NAME=params.json``: a folder (even one still empty, whose
    files are on their way), a ``manifest.json`` or a ``.onnx`` file."""
    if "=" in spec:
        return False
    return "/" in spec or spec.endswith(".onnx") or Path(spec).is_dir()


def _load_onnx(spec: str, scenario: Scenario) -> LoadedPolicy:
    from rlscale.agents.onnx_policy import load_onnx_policy

    policy = load_onnx_policy(spec, pools=[p.name for p in scenario.pools])
    return LoadedPolicy(policy, policy.version, spec, "onnx")


def _onnx_signature(spec: str) -> tuple:
    from rlscale.agents.onnx_policy import artifact_paths, read_manifest

    manifest_path, folder = artifact_paths(spec)
    try:
        model = folder / read_manifest(manifest_path).model.file
    except ValueError:
        return _file_signature(manifest_path)
    return _file_signature(manifest_path, model)


def _parse_model_uri(spec: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    rest = spec[len("models:/") :]
    name, at, alias = rest.partition("@")
    if at:
        if not name or not alias or "/" in alias:
            raise ScenarioError(f"policy '{spec}': expected models:/NAME@ALIAS")
        return name, alias, None
    name, slash, version = rest.rpartition("/")
    if not slash or not name or not version.isdigit():
        raise ScenarioError(f"policy '{spec}': expected models:/NAME@ALIAS or models:/NAME/N")
    return name, None, version


REGISTRY_HTTP_TIMEOUT_S = "10"
REGISTRY_HTTP_RETRIES = "2"


def _registry_client() -> Any:
    # a registry away must not hold a decision service for minutes (MLflow's defaults retry
    # for long); the operator's own settings win
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REGISTRY_HTTP_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REGISTRY_HTTP_RETRIES)
    try:
        from mlflow import MlflowClient
    except ModuleNotFoundError:
        raise ScenarioError(
            "models:/ policies need the MLflow client: pip install 'rlscale[registry]'"
        ) from None
    from rlscale.experiments.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def check_registry_spec(spec: str) -> None:
    """A ``models:/`` spec is well formed and the MLflow client is installed (no network).

    :raises ScenarioError: otherwise.
    """
    _parse_model_uri(spec)
    _registry_client()


def _registered_version(spec: str) -> str:
    """The registry version ``spec`` names now (an alias is resolved)."""
    name, alias, version = _parse_model_uri(spec)
    if version is not None:
        return version
    return str(_registry_client().get_model_version_by_alias(name, alias).version)


def _load_registered(spec: str, scenario: Scenario) -> LoadedPolicy:
    """Download the version ``spec`` names and load it as an ONNX artifact.

    Only the manifest and the model file it names are fetched, not whatever else the
    version's folder holds.
    """
    import tempfile

    from rlscale.agents.onnx_policy import MANIFEST_NAME, load_onnx_policy, read_manifest

    name, _, _ = _parse_model_uri(spec)
    version = _registered_version(spec)
    client = _registry_client()
    source = client.get_model_version_download_uri(name, version).rstrip("/")
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="rlscale-policy-") as tmp:
        download_artifacts(artifact_uri=f"{source}/{MANIFEST_NAME}", dst_path=tmp)
        manifest = read_manifest(Path(tmp))
        model_file = Path(manifest.model.file)
        if model_file.is_absolute() or ".." in model_file.parts:
            raise ArtifactError(f"{spec}: model.file must be inside the artifact folder")
        target = Path(tmp) / model_file.parent
        target.mkdir(parents=True, exist_ok=True)
        download_artifacts(artifact_uri=f"{source}/{model_file.as_posix()}", dst_path=str(target))
        # the verified bytes are held in memory: the download can go
        policy = load_onnx_policy(tmp, pools=[p.name for p in scenario.pools])
    return LoadedPolicy(policy, policy.version, spec, "mlflow", origin=f"models:/{name}/{version}")


register_policy_loader("baseline", lambda spec: True, _load_baseline, _baseline_signature)
register_policy_loader("onnx", _is_artifact, _load_onnx, _onnx_signature)
register_policy_loader(
    "mlflow", lambda spec: spec.startswith("models:/"), _load_registered, _registered_version
)


def _kind_of(spec: str) -> _PolicyKind:
    for kind in _LOADERS:
        if kind.matches(spec):
            return kind
    raise ScenarioError(f"no loader for policy '{spec}'")  # unreachable: baseline matches all


def policy_kind(spec: str) -> str:
    """The kind of loader ``spec`` resolves to (``baseline``, ``onnx``, ``mlflow``, ...)."""
    return _kind_of(spec).kind


def policy_signature(spec: str) -> Any:
    """What ``spec`` points at now (None: this kind never reloads); may raise while a
    registry is unreachable."""
    kind = _kind_of(spec)
    return kind.signature(spec) if kind.signature is not None else None


def load_policy(spec: str, scenario: Scenario) -> LoadedPolicy:
    """The policy a spec names: ``NAME``, ``NAME=params.json``, an exported artifact (its
    folder, ``manifest.json`` or ``.onnx``), or ``models:/NAME@ALIAS`` / ``models:/NAME/N``.

    :raises ScenarioError: unknown policy, unreadable parameters, or a bad registry URI.
    :raises ArtifactError: an artifact that fails verification (a ``ValueError``).
    """
    return _kind_of(spec).load(spec, scenario)


# --- causes ------------------------------------------------------------------------------------

_CAUSE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern))
    for code, pattern in (
        ("stale_metrics", r"^stale metrics:"),
        ("invalid_input", r"^invalid input:"),
        ("missing_input", r"^missing input:"),
        ("no_policy", r"^no policy loaded"),
        ("policy_failed", r"^policy failed:"),
        ("fallback_failed", r"^fallback failed:"),
        ("fallback_decided", r"^fallback \S+ decided$"),
        ("hold", r"^hold:"),
        ("step_up_limited", r": step up limited to "),
        ("step_down_limited", r": step down limited to "),
        ("min_replicas", r": min_replicas \d+ \(asked"),
        ("max_replicas", r": max_replicas \d+ \(asked"),
        ("cluster_quota", r"^cluster quota:"),
        ("warm_pool_limited", r": warm pool \d+ \(asked"),
    )
)
CAUSES = tuple(code for code, _ in _CAUSE_PATTERNS)
"""Every code ``causes`` can hold, in the order the service checks them."""
GUARDRAIL_CAUSES = frozenset(
    {
        "step_up_limited",
        "step_down_limited",
        "min_replicas",
        "max_replicas",
        "cluster_quota",
        "warm_pool_limited",
    }
)
"""Causes that mean a guardrail changed the answer."""


def cause_of(reason: str) -> str:
    """The machine-readable code of one of the service's reasons (``other`` if none fits)."""
    for code, pattern in _CAUSE_PATTERNS:
        if pattern.search(reason):
            return code
    return "other"


def causes_of(reasons: list[str]) -> list[str]:
    """The distinct codes of ``reasons``, in the order they first appear."""
    return list(dict.fromkeys(cause_of(r) for r in reasons))


# --- input ranges ------------------------------------------------------------------------------

MAX_RATE_RPS = 1e7
MAX_COUNT = 1e6
MAX_REPLICAS_PER_STATE = 1e5
MAX_LATENCY_S = 86400.0
MAX_CLOCK_SKEW_S = 60.0
"""A timestamp this far in the future is out of range (clocks disagree by less)."""

# field -> (low, high); None values are "missing"
_CLUSTER_RANGES: dict[str, tuple[float, float]] = {
    "arrival_rate_rps": (0.0, MAX_RATE_RPS),
    "arrival_rate_ewma_rps": (0.0, MAX_RATE_RPS),
    "forecast_rps": (0.0, MAX_RATE_RPS),
    "queue": (0.0, MAX_COUNT),
    "in_flight": (0.0, MAX_COUNT),
    "gpu_util": (0.0, 1.0),
    "kv_util": (0.0, 1.0),
    "ttft_p50_s": (0.0, MAX_LATENCY_S),
    "ttft_p95_s": (0.0, MAX_LATENCY_S),
    "tpot_p95_s": (0.0, MAX_LATENCY_S),
    "slo_attainment": (0.0, 1.0),
    "dropped": (0.0, MAX_COUNT),
}
_REPLICA_STATES = tuple(ReplicasByState.model_fields)
_REQUIRED = ("arrival_rate_rps",)
"""Metrics without which the policy does not decide (the others default)."""
_POOL_RANGES: dict[str, tuple[float, float]] = {
    "spot_price_usd_h": (0.0, 1e4),
    "preempt_notices": (0.0, MAX_REPLICAS_PER_STATE),
    "spot_capacity_share": (0.0, 1.0),
    "capacity_rps": (1e-6, MAX_RATE_RPS),
    "batch_per_replica": (0.0, MAX_COUNT),
}


def _in_range(value: float | None, low: float, high: float) -> bool:
    return value is not None and math.isfinite(value) and low <= value <= high


def _clip(value: float | None, low: float, high: float, default: float) -> float:
    """A usable number: missing or non-finite -> default, else clipped to [low, high]."""
    if value is None or not math.isfinite(value):
        return default
    return min(max(value, low), high)


# --- the service -------------------------------------------------------------------------------


@dataclass
class _ClusterMemory:
    policy: Memory
    fallback: Memory
    last_replicas: dict[str, int] = field(default_factory=dict)
    """The last answer per pool: what a pool missing from a request is taken to run."""
    generation: int = 0
    """The service's policy generation ``policy`` belongs to."""


class DecisionService:
    """Guarded decisions for live clusters; thread-safe. See the module docstring.

    :param scenario: the live cluster's pools, quotas, profiles and SLO targets.
    :param policy: the policy that decides when the input is good; None until one is loaded
        (:meth:`swap_policy`): the service answers from the fallback and is not ready.
    :param fallback: the rule-based scaler used when it is not (or when the policy fails).
    :param guardrails: limits on every answer; default: quotas as bounds, +4/-2 per decision.
    :param max_staleness_s: metrics older than this (by ``timestamp``) go to the fallback.
    :param max_clusters: policy memories kept (least recently used ones are forgotten).
    :param clock: unix time now (tests pass a fake one).
    """

    def __init__(
        self,
        scenario: Scenario,
        policy: LoadedPolicy | None,
        fallback: LoadedPolicy,
        *,
        guardrails: Guardrails | None = None,
        max_staleness_s: float = 120.0,
        max_clusters: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not max_staleness_s > 0:
            raise ValueError(f"max_staleness_s must be > 0, got {max_staleness_s}")
        self.scenario = scenario
        self.policy = policy
        self.fallback = fallback
        self.guardrails = guardrails or default_guardrails(scenario)
        missing = [p.name for p in scenario.pools if p.name not in self.guardrails.pools]
        if missing:
            raise ValueError(f"guardrails lack limits for pools {missing}")
        self.max_staleness_s = max_staleness_s
        self.max_clusters = max_clusters
        self.clock = clock
        self._pools = {p.name: p for p in scenario.pools}
        # what a request that sends no capacity_rps gets (the scenario's configured mix)
        self._capacity_rps = scenario_capacities_rps(scenario)
        self._memory: OrderedDict[str, _ClusterMemory] = OrderedDict()
        self._latest: dict[str, PoolRecommendation] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.loaded_at: float | None = clock() if policy is not None else None
        self.listeners: list[Callable[[LoadedPolicy], None]] = []
        """Called (outside the lock) after every :meth:`swap_policy`."""

    @property
    def policy_version(self) -> str:
        """The serving policy's version, or ``none`` before one is loaded."""
        policy = self.policy
        return policy.version if policy is not None else "none"

    def swap_policy(self, new: LoadedPolicy) -> bool:
        """Serve ``new`` from the next decision on; every cluster's policy memory restarts.

        Atomic: a decision runs wholly on the old policy or wholly on the new one. A policy of
        the version already serving is not swapped (its memories are kept); returns whether
        it was.
        """
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

    def recommend(self, pool: str) -> PoolRecommendation:
        """The latest decision's replicas for ``pool`` (of any cluster); before any decision,
        the pool's current guardrail floor as a fallback.

        :raises KeyError: unknown pool.
        """
        if pool not in self._pools:
            raise KeyError(f"unknown pool '{pool}'; known: {self.pools()}")
        with self._lock:
            latest = self._latest.get(pool)
        if latest is not None:
            return latest
        return PoolRecommendation(
            pool=pool,
            replicas=self.guardrails.pools[pool].min_replicas,
            source="fallback",
            reason="no decision yet",
            policy_version=self.policy_version,
        )

    # deciding ----------------------------------------------------------------------------------

    def decide(self, request: RecommendationRequest) -> RecommendationResponse:
        """The guarded recommendation for ``request``; see the module docstring."""
        now = self.clock()
        with self._lock:
            memory = self._memory_of(request.cluster_id)
            problems = self.validate(request, now, memory.last_replicas)
            state = self.to_state(request, memory.last_replicas)
            current = {p.name: round(p.desired) for p in state.pools}
            rate_ok = _in_range(request.arrival_rate_rps, 0.0, MAX_RATE_RPS)
            decision, source, reasons = self._decide_locked(state, memory, problems, rate_ok)
            replicas, warm, guard_reasons = guard(
                decision.replicas, decision.warm_pool, current, self.guardrails
            )
            response = RecommendationResponse(
                decision_id=uuid.uuid4().hex,
                cluster_id=request.cluster_id,
                replicas=replicas,
                warm_pool=warm,
                source=source,
                policy_version=self.policy_version,
                reasons=reasons + guard_reasons,
                causes=causes_of(reasons + guard_reasons),
                policy_reason=decision.reason,
                decided_at=now,
            )
            memory.last_replicas = dict(replicas)
            for pool, n in replicas.items():
                self._latest[pool] = PoolRecommendation(
                    pool=pool,
                    replicas=n,
                    source=source if not guard_reasons else "fallback",
                    reason="; ".join(response.reasons),
                    policy_version=self.policy_version,
                )
        return response

    def _decide_locked(
        self, state: ClusterState, memory: _ClusterMemory, problems: list[str], rate_ok: bool
    ) -> tuple[Decision, str, list[str]]:
        reasons = list(problems)
        decision: Decision | None = None
        if self.policy is None:
            reasons.append("no policy loaded")
        elif not problems:
            try:
                decision, new_memory = self.policy.policy.decide(state, memory.policy)
                _check_decision(decision)
                memory.policy = new_memory
            except Exception as err:  # any policy failure means: fall back
                decision = None
                reasons.append(f"policy failed: {type(err).__name__}: {str(err)[:200]}")
        # The fallback runs on every decision it can make, so its stabilization windows are
        # current when it has to take over.
        fallback: Decision | None = None
        if rate_ok:
            try:
                fallback, new_fb = self.fallback.policy.decide(state, memory.fallback)
                _check_decision(fallback)
                memory.fallback = new_fb
            except Exception as err:
                fallback = None
                reasons.append(f"fallback failed: {type(err).__name__}: {str(err)[:200]}")
        if decision is not None:
            return decision, "policy", reasons
        if fallback is not None:
            reasons.append(f"fallback {self.fallback.version} decided")
            return fallback, "fallback", reasons
        hold = {p.name: round(p.desired) for p in state.pools}
        standby = {p.name: round(p.standby) for p in state.pools}
        reasons.append("hold: no usable arrival rate for the fallback")
        return Decision(hold, standby, reason="hold current replicas"), "fallback", reasons

    def _memory_of(self, cluster_id: str) -> _ClusterMemory:
        mem = self._memory.get(cluster_id)
        if mem is None:
            mem = _ClusterMemory(
                self.policy.policy.initial_memory() if self.policy is not None else {},
                self.fallback.policy.initial_memory(),
                generation=self._generation,
            )
            self._memory[cluster_id] = mem
            while len(self._memory) > self.max_clusters:
                self._memory.popitem(last=False)
        elif mem.generation != self._generation:  # the policy changed since its last decision
            mem.policy = self.policy.policy.initial_memory() if self.policy is not None else {}
            mem.generation = self._generation
        self._memory.move_to_end(cluster_id)
        return mem

    # input -------------------------------------------------------------------------------------

    def validate(
        self, request: RecommendationRequest, now: float, last: dict[str, int] | None = None
    ) -> list[str]:
        """Why the policy should not decide on ``request``: staleness, gaps, ranges, pools."""
        problems: list[str] = []
        ts = request.timestamp
        if not math.isfinite(ts):
            problems.append(f"invalid input: timestamp {ts}")
        elif now - ts > self.max_staleness_s:
            problems.append(f"stale metrics: {now - ts:.0f} s old (max {self.max_staleness_s:g} s)")
        elif ts - now > MAX_CLOCK_SKEW_S:
            problems.append(f"invalid input: timestamp {ts - now:.0f} s in the future")
        if request.interval_s is not None and not _in_range(request.interval_s, 1e-3, 86400.0):
            problems.append(f"invalid input: interval_s {request.interval_s}")
        for name in _REQUIRED:
            if getattr(request, name) is None:
                problems.append(f"missing input: {name}")
        for name, (low, high) in _CLUSTER_RANGES.items():
            value = getattr(request, name)
            if value is not None and not _in_range(value, low, high):
                problems.append(f"invalid input: {name} {value}")
        seen: set[str] = set()
        for pm in request.pools:
            if pm.name in seen:
                problems.append(f"invalid input: pool '{pm.name[:64]}' given twice")
            seen.add(pm.name)
            if pm.name not in self._pools:
                problems.append(f"invalid input: unknown pool '{pm.name[:64]}'")
                continue
            replicas = pm.replicas
            for state in _REPLICA_STATES:
                value = getattr(replicas, state)
                if value is None:
                    problems.append(f"missing input: {pm.name} replicas.{state}")
                elif not _in_range(value, 0.0, MAX_REPLICAS_PER_STATE):
                    problems.append(f"invalid input: {pm.name} replicas.{state} {value}")
            for name, (low, high) in _POOL_RANGES.items():
                value = getattr(pm, name)
                if value is not None and not _in_range(value, low, high):
                    problems.append(f"invalid input: {pm.name} {name} {value}")
        for name in self._pools:
            if name not in seen:
                held = (last or {}).get(name, 0)
                problems.append(f"missing input: pool '{name}' (taken as {held} replicas)")
        return problems

    def to_state(
        self, request: RecommendationRequest, last: dict[str, int] | None = None
    ) -> ClusterState:
        """The policy's view of ``request``: missing or out-of-range numbers made usable.

        A pool missing from the request is taken to run its last recommendation (``last``),
        so a gap in the metrics holds it rather than scaling it to zero.
        """
        sc = self.scenario
        ts = _clip(request.timestamp, -1e12, 1e12, self.clock())
        rate = _clip(request.arrival_rate_rps, 0.0, MAX_RATE_RPS, 0.0)
        given = {}
        for pm in request.pools:
            given.setdefault(pm.name, pm)
        pools = tuple(
            self._pool_state(
                name,
                given.get(name)
                or PoolMetrics(
                    name=name, replicas=ReplicasByState(ready=(last or {}).get(name, 0))
                ),
            )
            for name in self._pools
        )
        return ClusterState(
            time_s=ts,
            # the epoch fell on a Thursday: Monday 00:00 UTC starts the week
            time_of_week_s=(ts - EPOCH_MONDAY_S) % (7 * 86400.0),
            interval_s=_clip(request.interval_s, 1e-3, 86400.0, sc.control_interval_s),
            arrival_rate_rps=rate,
            arrival_rate_ewma_rps=_clip(request.arrival_rate_ewma_rps, 0.0, MAX_RATE_RPS, rate),
            # the simulator's forecast counts requests reaching the servers (after the cache)
            forecast_rps=_clip(
                request.forecast_rps, 0.0, MAX_RATE_RPS, rate * (1.0 - sc.workload.cache_hit_ratio)
            ),
            queue=_clip(request.queue, 0.0, MAX_COUNT, 0.0),
            in_flight=_clip(request.in_flight, 0.0, MAX_COUNT, 0.0),
            gpu_util=_clip(request.gpu_util, 0.0, 1.0, 0.0),
            kv_util=_clip(request.kv_util, 0.0, 1.0, 0.0),
            ttft_p50_s=_clip(request.ttft_p50_s, 0.0, MAX_LATENCY_S, 0.0),
            ttft_p95_s=_clip(request.ttft_p95_s, 0.0, MAX_LATENCY_S, 0.0),
            tpot_p95_s=_clip(request.tpot_p95_s, 0.0, MAX_LATENCY_S, 0.0),
            slo_attainment=_clip(request.slo_attainment, 0.0, 1.0, 1.0),
            dropped=_clip(request.dropped, 0.0, MAX_COUNT, 0.0),
            ttft_target_s=sc.slo.ttft_s,
            tpot_target_s=sc.slo.tpot_s,
            pools=pools,
        )

    def _pool_state(self, name: str, pm: PoolMetrics) -> PoolState:
        cfg = self._pools[name]
        r = pm.replicas
        n = MAX_REPLICAS_PER_STATE
        return PoolState(
            name=name,
            purchase=cfg.purchase,
            quota=cfg.quota,
            warm_pool_max=cfg.warm_pool_max,
            on_demand_price_usd_h=cfg.price_usd_h,
            price_usd_h=_clip(pm.spot_price_usd_h, 0.0, 1e4, cfg.price_usd_h),
            capacity_rps=_clip(pm.capacity_rps, 1e-6, MAX_RATE_RPS, self._capacity_rps[name]),
            provisioning=_clip(r.provisioning, 0.0, n, 0.0),
            loading=_clip(r.loading, 0.0, n, 0.0),
            ready=_clip(r.ready, 0.0, n, 0.0),
            draining=_clip(r.draining, 0.0, n, 0.0),
            standby=_clip(r.standby, 0.0, n, 0.0),
            refilling=_clip(r.refilling, 0.0, n, 0.0),
            preempt_notices=_clip(pm.preempt_notices, 0.0, n, 0.0),
            spot_capacity_share=_clip(pm.spot_capacity_share, 0.0, 1.0, 1.0),
            batch_per_replica=_clip(pm.batch_per_replica, 0.0, MAX_COUNT, 0.0),
        )


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
