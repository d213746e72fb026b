"""The decision service's HTTP front end (FastAPI): recommendations, health, metrics.

Routes:

- ``POST /v1/recommendations``: metrics in, guarded replicas per pool out (bearer token).
- ``GET /v1/recommendations/{pool}?cluster_id=...``: what KEDA reads for one pool of one
  cluster (bearer token).
- ``GET /v1/policy``: the serving policy and the hot-reload watcher's state (bearer token).
- ``GET /healthz``: the process answers. ``GET /readyz``: a policy is loaded (503 before).
- ``GET /metrics``: Prometheus text, from the service's recorder (no global state, so several
  services can live in one process, as tests do).

``/v1/*`` needs a bearer token unless the app is built with ``insecure_no_auth``; bodies over
``MAX_BODY_BYTES`` get 413 before they are read.

No torch here or in anything imported: the service runs baselines and ONNX exports.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlscale.serving.base import TOKEN_ENV_VAR, NoRecommendationError
from rlscale.serving.limits import MAX_BODY_BYTES
from rlscale.serving.recorder import METRICS_CONTENT_TYPE
from rlscale.serving.reload import PolicyReloader
from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse
from rlscale.serving.service import DecisionService, TooManyClustersError

_BEARER = HTTPBearer(auto_error=False)
_ERROR = {
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
        }
    }
}
_V1_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not JSON", **_ERROR},
    401: {"description": "missing or wrong bearer token", **_ERROR},
    413: {"description": f"the body is over {MAX_BODY_BYTES} bytes", **_ERROR},
}


class NoTokenError(ValueError):
    """The service would start without authentication, and nobody said so."""


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before reading them when the
    ``Content-Length`` says so, and as soon as the count passes it for chunked ones.

    Pure ASGI, outside everything else: an oversized body costs the event loop nothing but the
    header check, so ``/healthz`` keeps answering.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # the server's HTTP parser refuses it
                if too_large:
                    await self._refuse(send)
                    return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._detail()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),  # the unread body is not this server's problem
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(
    service: DecisionService,
    *,
    token: str | None = None,
    insecure_no_auth: bool = False,
    reloader: PolicyReloader | None = None,
) -> FastAPI:
    """The FastAPI app over ``service``.

    :param token: bearer token required on ``/v1/*``; an empty one counts as none.
    :param insecure_no_auth: serve ``/v1/*`` without a token; required to say so when there
        is none (the service never runs open by accident).
    :param reloader: the hot-reload watcher, shown by ``GET /v1/policy`` and counted in
        ``/metrics`` (the caller starts and stops it).
    :raises NoTokenError: no token, and ``insecure_no_auth`` not given.
    """
    token = token or None
    if token is None and not insecure_no_auth:
        raise NoTokenError(
            f"no API token: set {TOKEN_ENV_VAR} (a non-empty secret), or pass "
            "--insecure-no-auth to let anyone reach /v1/*"
        )
    app = FastAPI(
        title="rlscale decision service",
        version="1",
        description=(
            "Recommended replicas per pool for a GPU LLM-inference cluster, from an RL or "
            "rule-based policy, with guardrails and a rule-based fallback."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    recorder = service.recorder
    metrics = recorder.metrics
    if reloader is not None:
        reloader.listeners.append(metrics.reloaded)
        metrics.watch_reloader(lambda: reloader.last_error)
    app.state.service = service
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
        errors = exc.errors()
        detail = [
            {
                "loc": [str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": e.get("type", ""),
            }
            for e in errors
        ]
        not_json = any(e.get("type") == "json_invalid" for e in errors)
        return JSONResponse(status_code=400 if not_json else 422, content={"detail": detail})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "no policy loaded (the fallback answers)"}},
    )
    async def readyz() -> JSONResponse:
        """Ready once a policy is loaded."""
        if service.is_ready():
            return JSONResponse({"status": "ready", "policy_version": service.policy_version})
        detail = {"status": "not ready", "reason": "no policy loaded"}
        if reloader is not None and reloader.last_error:
            detail["reason"] = f"no policy loaded: {reloader.last_error}"
        return JSONResponse(detail, status_code=503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.post(
        "/v1/recommendations",
        response_model=RecommendationResponse,
        dependencies=[Depends(authorize)],
        tags=["decisions"],
        responses={
            **_V1_ERRORS,
            429: {"description": "a new cluster while the cluster table is full", **_ERROR},
        },
    )
    async def recommend(body: RecommendationRequest) -> Response:
        """Recommended replicas and warm pool per pool for the cluster's current metrics.

        Always answers 200 for a body that parses (unless it names a new cluster while the
        cluster table is full: 429): stale, missing or out-of-range metrics and policy
        failures make the rule-based fallback (or a hold) decide, and ``reasons`` says why.
        With a shadow database the decision is durably recorded before this returns.
        """
        # The decision runs on the event loop: it takes tens of microseconds, less than the
        # hop to a worker thread would. The shadow write waits for the disk, so it does not.
        start = time.perf_counter()
        try:
            response = service.decide(body)
        except TooManyClustersError as err:
            raise HTTPException(status_code=429, detail=str(err)) from None
        try:
            if recorder.shadow is not None:
                await anyio.to_thread.run_sync(
                    recorder.write_shadow, body, response, limiter=shadow_writer
                )
        finally:  # counted even when the request is cancelled (shutdown) while it writes
            recorder.observe(response, time.perf_counter() - start)
        # serialized once, here: the model is already valid (FastAPI's response_model pass
        # would validate and encode it again; the schema in /docs still comes from it)
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/policy",
        dependencies=[Depends(authorize)],
        tags=["policy"],
        responses={401: _V1_ERRORS[401]},
    )
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
        responses={
            401: _V1_ERRORS[401],
            404: {"description": "unknown pool", **_ERROR},
            503: {
                "description": "no fresh recommendation for this cluster and pool (what KEDA "
                "is told too: its fallback applies)",
                **_ERROR,
            },
        },
    )
    async def latest(
        pool: str,
        cluster_id: Annotated[str, Query(max_length=128)] = "default",
    ) -> dict[str, object]:
        """The latest recommendation for one pool of one cluster: what KEDA reads."""
        try:
            rec = service.recommend(cluster_id, pool)
        except KeyError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        except NoRecommendationError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None
        return {
            "cluster_id": rec.cluster,
            "pool": rec.pool,
            "replicas": rec.replicas,
            "source": rec.source,
            "reason": rec.reason,
            "policy_version": rec.policy_version,
        }

    return app
