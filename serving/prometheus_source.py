"""Cluster metrics from Prometheus' HTTP query API, for callers that push nothing (KEDA).

KEDA's gRPC calls carry no metrics, so the service needs the cluster's state from somewhere:
this source queries Prometheus every ``interval_s`` with PromQL for the standard vLLM serving
metrics and kube-state-metrics' replica counts, turns the answers into a
:class:`~rlscale.serving.schemas.RecommendationRequest` and lets the service decide and
record (the same recorder as HTTP pushes: shadow log and metrics), so the latest
recommendation per pool is always current. When Prometheus cannot be reached (or a required
query has no data), the service is asked again with the last good replica counts, at their
own time and without rates: it holds every pool (no scale-down on a snapshot it has already
seen), the metrics go stale, KEDA gets no number (its fallback applies), and the reasons say
why. A pool whose ready count has no data is reported unknown,
never 0: the service holds it at its last known-good count.

The default queries assume a typical vLLM on Kubernetes deployment: one Deployment per pool,
named like the pool (``deployment_of`` maps otherwise), vLLM's ``/metrics`` scraped, and
kube-state-metrics installed. Every query can be replaced, and any numeric cluster field of
the request (:data:`QUERYABLE_FIELDS`) added. vLLM has no notion of a batch class, so the
batch inputs a policy trained with batch work needs (and the spot-aware baseline where the
scenario has batch work) have no default: whatever queues the batch requests exports them
(:data:`BATCH_QUERY_EXAMPLES`); without them, or with no data, such a policy does not decide
(``batch_unknown``) and the fallback does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from rlscale.serving.inputs import RANGES
from rlscale.serving.schemas import PoolMetrics, RecommendationRequest, ReplicasByState

log = logging.getLogger("rlscale.serving.prometheus")

DEFAULT_QUERIES: dict[str, str] = {
    # requests finishing per second: in steady state, the arrival rate
    "arrival_rate_rps": "sum(rate(vllm:request_success_total[1m]))",
    "queue": "sum(vllm:num_requests_waiting)",
    "in_flight": "sum(vllm:num_requests_running)",
    "kv_util": "avg(vllm:gpu_cache_usage_perc)",
    "ttft_p50_s": (
        "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[1m])))"
    ),
    "ttft_p95_s": (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[1m])))"
    ),
    "tpot_p95_s": (
        "histogram_quantile(0.95, "
        "sum by (le) (rate(vllm:time_per_output_token_seconds_bucket[1m])))"
    ),
}
"""Cluster-wide PromQL per request field (vLLM's metric names)."""

BATCH_QUERY_EXAMPLES: dict[str, str] = {
    # a gauge of the batch API's worker: requests accepted and not yet sent to vLLM
    "batch_queue": "sum(batch_worker_queue_length)",
    # the gateway's requests of the batch class, per second
    "batch_arrival_rate_rps": 'sum(rate(gateway_requests_total{class="batch"}[1m]))',
}
"""What a deployment with a batch API would configure for the batch inputs (metric names of
its own exporters: examples, not defaults)."""

QUERYABLE_FIELDS = frozenset(
    name
    for name in RecommendationRequest.model_fields
    if name in RANGES and name not in PoolMetrics.model_fields
)
"""The request's cluster-wide numbers, the fields a query may fill."""

DEFAULT_POOL_QUERIES: dict[str, str] = {
    "ready": 'sum(kube_deployment_status_replicas_ready{{deployment="{deployment}"}})',
    "desired": 'sum(kube_deployment_spec_replicas{{deployment="{deployment}"}})',
}
"""Per-pool PromQL (kube-state-metrics); ``{deployment}`` is the pool's Deployment."""

REQUIRED = ("arrival_rate_rps",)


class PrometheusError(RuntimeError):
    """Prometheus did not answer, or answered something that is not a query result."""


@dataclass
class PrometheusSource:
    """Polls Prometheus and feeds each snapshot to ``decide``.

    :param url: Prometheus' base URL, e.g. ``http://prometheus.monitoring:9090``.
    :param pools: the scenario's pool names.
    :param decide: decides and records one request (``DecisionService.decide_and_record``).
    :param queries: PromQL per request field (defaults: :data:`DEFAULT_QUERIES`).
    :param pool_queries: PromQL per pool, with ``{deployment}`` (:data:`DEFAULT_POOL_QUERIES`).
    :param deployment_of: pool name -> Deployment name (default: the same).
    :param interval_s: seconds between polls.
    :param timeout_s: HTTP timeout of one query.
    :param cluster_id: the cluster id the decisions are filed under.
    :param tenant_query: PromQL giving each tenant's request rate (req/s) as a vector with the
        tenant in label ``tenant_label``, e.g. a gateway's
        ``sum by (tenant) (rate(gateway_requests_total[1m]))``; None: no per-tenant spend. Only
        metered: a failed or empty answer leaves the request without tenant rates (the
        service's metrics say so), never changes the decision.
    :param tenant_label: the label naming the tenant in ``tenant_query``'s answer.
    """

    url: str
    pools: list[str]
    decide: Callable[[RecommendationRequest], object]
    queries: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_QUERIES))
    pool_queries: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_POOL_QUERIES))
    deployment_of: dict[str, str] = field(default_factory=dict)
    interval_s: float = 15.0
    timeout_s: float = 2.0
    cluster_id: str = "default"
    tenant_query: str | None = None
    tenant_label: str = "tenant"
    last_error: str = ""
    tenant_error: str = ""
    """Why the latest snapshot has no tenant rates although ``tenant_query`` is set."""
    _last_good: RecommendationRequest | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.queries) - QUERYABLE_FIELDS)
        if unknown:
            raise ValueError(
                f"no request field {unknown} for a query; the fields are {sorted(QUERYABLE_FIELDS)}"
            )
        missing = [name for name in REQUIRED if name not in self.queries]
        if missing:
            raise ValueError(f"queries need {missing}: without them no decision can be made")

    def _instant(self, client: httpx.Client, promql: str) -> list[dict[str, Any]]:
        """One instant query's result list.

        :raises PrometheusError: no answer, or an error answer.
        """
        try:
            r = client.get(f"{self.url}/api/v1/query", params={"query": promql})
            body = r.json()
        except (httpx.HTTPError, ValueError) as err:
            raise PrometheusError(f"query {promql!r}: {err}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"query {promql!r}: {body.get('error', r.status_code)}")
        return body.get("data", {}).get("result", [])

    def query(self, client: httpx.Client, promql: str) -> float | None:
        """One instant query: its single value, or None when the result is empty or NaN."""
        result = self._instant(client, promql)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value  # NaN: no data in the window

    def query_vector(self, client: httpx.Client, promql: str, label: str) -> dict[str, float]:
        """One instant query whose answer is a vector: value by ``label``'s value.

        :raises PrometheusError: no answer, an error, or a series without ``label``.
        """
        out: dict[str, float] = {}
        for series in self._instant(client, promql):
            key = series.get("metric", {}).get(label)
            if key is None:
                raise PrometheusError(f"query {promql!r}: a series without label {label!r}")
            out[key] = out.get(key, 0.0) + float(series["value"][1])
        return out

    def tenant_rates(self, client: httpx.Client) -> dict[str, float] | None:
        """Each tenant's request rate from ``tenant_query``; None (and ``tenant_error`` says
        why) when it is not configured, fails, or has no data."""
        self.tenant_error = ""
        if self.tenant_query is None:
            return None
        try:
            rates = self.query_vector(client, self.tenant_query, self.tenant_label)
        except PrometheusError as err:
            self.tenant_error = str(err)
        else:
            rates = {t: r for t, r in rates.items() if r == r}  # NaN: no data in the window
            if rates:
                return rates
            self.tenant_error = f"query {self.tenant_query!r}: no data"
        log.warning("no per-tenant request rates: %s", self.tenant_error)
        return None

    def snapshot(self) -> RecommendationRequest:
        """The cluster's metrics now, as the service's request."""
        with httpx.Client(timeout=self.timeout_s) as client:
            values = {name: self.query(client, q) for name, q in self.queries.items()}
            missing = [name for name in REQUIRED if values.get(name) is None]
            if missing:
                raise PrometheusError(f"no data for {missing}")
            pools = []
            for pool in self.pools:
                deployment = self.deployment_of.get(pool, pool)
                got = {
                    name: self.query(client, q.format(deployment=deployment))
                    for name, q in self.pool_queries.items()
                }
                ready = got.get("ready")  # None: unknown, never taken as 0
                desired = got.get("desired")
                starting = max(desired - ready, 0.0) if ready is not None and desired else 0.0
                pools.append(
                    PoolMetrics(name=pool, replicas=ReplicasByState(ready=ready, loading=starting))
                )
            tenants = self.tenant_rates(client)
        fields = {k: v for k, v in values.items() if v is not None}
        return RecommendationRequest(
            cluster_id=self.cluster_id,
            timestamp=time.time(),
            pools=pools,
            tenant_rates_rps=tenants,
            **fields,
        )

    def poll_once(self) -> object:
        """Query and decide; on failure decide on what is still known, and nothing more."""
        try:
            request = self.snapshot()
        except PrometheusError as err:
            self.last_error = f"prometheus unreachable or empty: {err}"
            log.warning("%s", self.last_error)
            if self._last_good is None:
                return None
            # The last good replica counts at their own (aging) time, and no rates: the same
            # snapshot decided again would be taken as news, and a policy could scale down on
            # it. Without a rate the service holds, and once the time is past the staleness
            # bound KEDA gets no number.
            known = RecommendationRequest(
                cluster_id=self.cluster_id,
                timestamp=self._last_good.timestamp,
                pools=self._last_good.pools,
            )
            return self.decide(known)
        self.last_error = ""
        self._last_good = request
        return self.decide(request)

    def start(self) -> None:
        """Poll in a daemon thread every ``interval_s`` until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except Exception:  # a bad poll must never end the polling
                    log.exception("polling Prometheus failed")
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="prometheus-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s * 10)
