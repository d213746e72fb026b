"""What every decision leaves behind: its shadow-log row and its Prometheus series.

One :class:`Recorder` per service; every front end goes through it (HTTP pushes, the
Prometheus poller, KEDA's gRPC calls), so no path decides without being recorded. The series
live in the recorder's own registry (no global state, so several services can live in one
process, as tests do).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from rlscale.serving.causes import FALLBACK_CAUSES, GUARDRAIL_CAUSES
from rlscale.serving.loaders import LoadedPolicy
from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse
from rlscale.serving.shadow import ShadowLog

if TYPE_CHECKING:
    from rlscale.serving.reload import ReloadEvent

log = logging.getLogger("rlscale.serving")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format, as ``/metrics`` answers and its OpenAPI declares."""


class ServiceMetrics:
    """The Prometheus series of one service, in their own registry."""

    def __init__(self, policy: LoadedPolicy | None, fallback_version: str) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "rlscale_decisions",
            "Decisions by pool and by what decided (policy or fallback).",
            ["pool", "source"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "rlscale_fallback_causes",
            "Why the policy did not decide: stale, invalid or missing input, no policy loaded, "
            "or a policy failure.",
            ["cause"],
            registry=self.registry,
        )
        self.guardrail_changes = Counter(
            "rlscale_guardrail_changes",
            "Decisions a guardrail changed.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "rlscale_decision_latency_seconds",
            "Time to decide and record one recommendation.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.shadow_errors = Counter(
            "rlscale_shadow_write_errors",
            "Decisions answered but not recorded in the shadow database.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "rlscale_policy_reloads",
            "Policy reload attempts by result: loaded, or refused (the old policy kept serving).",
            ["result"],
            registry=self.registry,
        )
        self.keda_answers = Counter(
            "rlscale_keda_metrics",
            "KEDA GetMetrics calls by result: ok, or no_state (no state, a stale one, or no "
            "recommendation for the pool: KEDA's fallback applies).",
            ["result"],
            registry=self.registry,
        )
        self.model = Info("rlscale_policy", "The deployed policy.", registry=self.registry)
        self.slo_attainment = Gauge(
            "rlscale_slo_attainment",
            "Share of requests within the SLO over the cluster's last reported interval.",
            ["cluster"],
            registry=self.registry,
        )
        self.slo_target = Gauge(
            "rlscale_slo_attainment_target",
            "The share of requests that must meet the SLO (the scenario's target_attainment).",
            registry=self.registry,
        )
        self.reload_failing = Gauge(
            "rlscale_policy_reload_failing",
            "1 while the hot-reload watcher cannot check or load what the policy spec names "
            "(an older policy, or none, keeps serving).",
            registry=self.registry,
        )
        self.fallback_version = fallback_version
        self.set_policy(policy)

    def set_policy(self, policy: LoadedPolicy | None) -> None:
        """Show ``policy`` (None: none loaded) in ``rlscale_policy_info``."""
        self.model.info(
            {
                "name": policy.policy.name if policy is not None else "none",
                "version": policy.version if policy is not None else "none",
                "fallback": self.fallback_version,
            }
        )

    def reloaded(self, event: ReloadEvent) -> None:
        """Count one reload attempt."""
        self.reloads.labels(result=event.result).inc()

    def watch_reloader(self, last_error: Callable[[], str]) -> None:
        """Show whether the hot-reload watcher is failing (read at each scrape)."""
        self.reload_failing.set_function(lambda: float(bool(last_error())))

    def watch_shadow(self, shadow: ShadowLog) -> None:
        """Show the shadow log's retention figures (read at each scrape, no query)."""
        Gauge(
            "rlscale_shadow_rows", "Decisions held in the shadow database.", registry=self.registry
        ).set_function(lambda: shadow.rows)
        Gauge(
            "rlscale_shadow_max_bytes",
            "Retention: the oldest rows are pruned while the rows take more than this.",
            registry=self.registry,
        ).set_function(lambda: shadow.max_bytes)
        Gauge(
            "rlscale_shadow_max_age_seconds",
            "Retention: rows older than this are pruned.",
            registry=self.registry,
        ).set_function(lambda: shadow.max_age_s)
        Gauge(
            "rlscale_shadow_pruned_rows",
            "Rows pruned by retention since start.",
            registry=self.registry,
        ).set_function(lambda: shadow.pruned_rows)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def forget_cluster(self, cluster_id: str) -> None:
        """Drop a forgotten cluster's reported SLO attainment (its last value would stand)."""
        with contextlib.suppress(KeyError):
            self.slo_attainment.remove(cluster_id)

    def observe(self, response: RecommendationResponse, elapsed_s: float) -> None:
        """Count one decision."""
        for pool in response.replicas:
            self.decisions.labels(pool=pool, source=response.source).inc()
        if response.source == "fallback":
            for cause in response.causes:
                if cause in FALLBACK_CAUSES:
                    self.fallbacks.labels(cause=cause).inc()
        if GUARDRAIL_CAUSES.intersection(response.causes):
            self.guardrail_changes.inc()
        self.latency.observe(elapsed_s)


class Recorder:
    """Records decisions: the shadow row (when there is a shadow log) and the metrics.

    :param metrics: the service's series.
    :param shadow: where every decision is recorded; None: not recorded.
    """

    def __init__(self, metrics: ServiceMetrics, shadow: ShadowLog | None = None) -> None:
        self.metrics = metrics
        self.shadow = shadow
        if shadow is not None:
            metrics.watch_shadow(shadow)

    def write_shadow(
        self, request: RecommendationRequest, response: RecommendationResponse
    ) -> bool:
        """Commit the decision's shadow row (waits for the disk); sets and returns
        ``response.shadow_recorded``. A failed write is logged and counted, never raised."""
        if self.shadow is None:
            return False
        try:
            self.shadow.record(request, response)
        except sqlite3.Error as err:
            self.metrics.shadow_errors.inc()
            log.error("shadow write failed for %s: %s", response.decision_id, err)
            return False
        response.shadow_recorded = True
        return True

    def observe(self, response: RecommendationResponse, elapsed_s: float) -> None:
        """Count the decision in the metrics."""
        self.metrics.observe(response, elapsed_s)

    def record(
        self, request: RecommendationRequest, response: RecommendationResponse, elapsed_s: float
    ) -> None:
        """Both: the shadow row, then the metrics."""
        try:
            self.write_shadow(request, response)
        finally:
            self.observe(response, elapsed_s)

    def keda_answer(self, result: str) -> None:
        """Count one GetMetrics answer (``ok`` or ``no_state``)."""
        self.metrics.keda_answers.labels(result=result).inc()
