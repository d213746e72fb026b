"""The decision service's HTTP front end (FastAPI): recommendations, health, metrics.

Routes:

- ``POST /v1/recommendations``: metrics in, guarded replicas per pool out (bearer token).
- ``GET /v1/recommendations/{pool}``: the latest recommendation for one pool (bearer token).
- ``GET /v1/policy``: the serving policy and the hot-reload watcher's state (bearer token).
- ``GET /healthz``: the process answers. ``GET /readyz``: a policy is loaded (503 before).
- ``GET /metrics``: Prometheus text, from the app's own registry (no global state, so several
  apps can live in one process, as tests do).

No torch here or in anything imported: the service runs baselines and ONNX exports.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)

from rlscale.serving.reload import PolicyReloader, ReloadEvent
from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse
from rlscale.serving.service import GUARDRAIL_CAUSES, DecisionService, LoadedPolicy
from rlscale.serving.shadow import ShadowLog

log = logging.getLogger("rlscale.serving")

TOKEN_ENV_VAR = "RLSCALE_API_TOKEN"
FALLBACK_CAUSES = ("stale_metrics", "invalid_input", "missing_input", "no_policy", "policy_failed")
"""Why the policy did not decide (``rlscale_fallback_causes_total{cause=...}``)."""
_BEARER = HTTPBearer(auto_error=False)


class ServiceMetrics:
    """The Prometheus series of one app, in their own registry."""

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
        self.model = Info("rlscale_policy", "The deployed policy.", registry=self.registry)
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

    def observe(self, response: RecommendationResponse) -> None:
        """Count one decision."""
        for pool in response.replicas:
            self.decisions.labels(pool=pool, source=response.source).inc()
        if response.source == "fallback":
            for cause in response.causes:
                if cause in FALLBACK_CAUSES:
                    self.fallbacks.labels(cause=cause).inc()
        if GUARDRAIL_CAUSES.intersection(response.causes):
            self.guardrail_changes.inc()


def create_app(
    service: DecisionService,
    *,
    token: str | None = None,
    shadow: ShadowLog | None = None,
    reloader: PolicyReloader | None = None,
) -> FastAPI:
    """The FastAPI app over ``service``.

    :param token: bearer token required on ``/v1/*``; None disables authentication.
    :param shadow: where every decision is recorded before its response; None = not recorded.
    :param reloader: the hot-reload watcher, shown by ``GET /v1/policy`` and counted in
        ``/metrics`` (the caller starts and stops it).
    """
    app = FastAPI(
        title="rlscale decision service",
        version="1",
        description=(
            "Recommended replicas per pool for a GPU LLM-inference cluster, from an RL or "
            "rule-based policy, with guardrails and a rule-based fallback."
        ),
    )
    metrics = ServiceMetrics(service.policy, service.fallback.version)
    service.listeners.append(metrics.set_policy)
    if reloader is not None:
        reloader.listeners.append(metrics.reloaded)
    app.state.service = service
    app.state.metrics = metrics
    app.state.shadow = shadow
    # Shadow writes wait for the disk one at a time (they share one connection): their own
    # thread, so a slow disk never holds the worker threads other work might need.
    shadow_writer = anyio.CapacityLimiter(1)

    async def authorize(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the default handler echoes the input, which may hold NaN (not JSON): answer a 500
        detail = [
            {
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready once a policy is loaded."""
        if service.is_ready():
            return JSONResponse({"status": "ready", "policy_version": service.policy_version})
        detail = {"status": "not ready", "reason": "no policy loaded"}
        if reloader is not None and reloader.last_error:
            detail["reason"] = f"no policy loaded: {reloader.last_error}"
        return JSONResponse(detail, status_code=503)

    @app.get("/metrics", tags=["health"])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/recommendations",
        response_model=RecommendationResponse,
        dependencies=[Depends(authorize)],
        tags=["decisions"],
        responses={401: {"description": "missing or wrong bearer token"}},
    )
    async def recommend(body: RecommendationRequest) -> Response:
        """Recommended replicas and warm pool per pool for the cluster's current metrics.

        Always answers 200 for a body that parses: stale, missing or out-of-range metrics and
        policy failures make the rule-based fallback (or a hold) decide, and ``reasons`` says
        why. With a shadow database the decision is durably recorded before this returns.
        """
        # The decision runs on the event loop: it takes tens of microseconds, less than the
        # hop to a worker thread would. The shadow write waits for the disk, so it does not.
        start = time.perf_counter()
        response = service.decide(body)
        try:
            if shadow is not None:
                try:
                    await anyio.to_thread.run_sync(
                        shadow.record, body, response, limiter=shadow_writer
                    )
                    response.shadow_recorded = True
                except sqlite3.Error as err:
                    metrics.shadow_errors.inc()
                    log.error("shadow write failed for %s: %s", response.decision_id, err)
        finally:  # counted even when the request is cancelled (shutdown) while it writes
            metrics.observe(response)
            metrics.latency.observe(time.perf_counter() - start)
        # serialized once, here: the model is already valid (FastAPI's response_model pass
        # would validate and encode it again; the schema in /docs still comes from it)
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get("/v1/policy", dependencies=[Depends(authorize)], tags=["policy"])
    async def policy_status() -> dict[str, object]:
        """The serving policy, the fallback, and the hot-reload watcher's last attempt."""
        current = service.policy
        return {
            "ready": current is not None,
            "policy": None
            if current is None
            else {
                "name": current.policy.name,
                "version": current.version,
                "kind": current.kind,
                "spec": current.spec,
                "origin": current.origin or None,
                "loaded_at": service.loaded_at,
            },
            "fallback": {"version": service.fallback.version, "spec": service.fallback.spec},
            "reload": reloader.status() if reloader is not None else None,
        }

    @app.get(
        "/v1/recommendations/{pool}",
        dependencies=[Depends(authorize)],
        tags=["decisions"],
        responses={404: {"description": "unknown pool"}},
    )
    async def latest(pool: str) -> dict[str, object]:
        """The latest recommendation for one pool (what the KEDA scaler serves)."""
        try:
            rec = service.recommend(pool)
        except KeyError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        return {
            "pool": rec.pool,
            "replicas": rec.replicas,
            "source": rec.source,
            "reason": rec.reason,
            "policy_version": rec.policy_version,
        }

    return app
