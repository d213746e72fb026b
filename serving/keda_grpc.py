"""KEDA external scaler over gRPC: one pool per ScaledObject, its recommendation as a metric.

KEDA calls this server through ``externalscaler.proto`` (``IsActive``, ``StreamIsActive``,
``GetMetricSpec``, ``GetMetrics``). Everything it needs arrives in the trigger's metadata,
which KEDA forwards whole as ``ScaledObjectRef.scalerMetadata`` (so ``scalerAddress`` and the
like are there too and are ignored):

``cluster`` (required)
    The cluster whose state this ScaledObject follows: the ``cluster_id`` its metrics are
    pushed under (or the Prometheus poller's ``--cluster-id``). Recommendations are kept per
    (cluster, pool), so one cluster's pushes never steer another's pools.
``pool`` (required)
    The pool this ScaledObject scales; one of :meth:`PoolRecommender.pools`.
``targetValue`` (optional, default ``1``)
    The per-replica ``AverageValue`` target. Kubernetes quantities carry milli precision, so it
    must be a multiple of 0.001, at most ``MAX_KEDA_TARGET_VALUE``.

How the number becomes replicas
-------------------------------
KEDA turns the trigger into an HPA ``External`` metric with an ``AverageValue`` target. For
such a metric the HPA ignores per-pod values and computes, from the current replica count::

    usage_ratio = metric / (target * current)
    desired = current                      if |usage_ratio - 1| <= tolerance (0.1)
    desired = ceil(metric / target)        otherwise

``GetMetrics`` answers ``metric = recommended_replicas * target``, so ``ceil(metric / target)``
is exactly the recommendation and ``usage_ratio = recommended / current``. The consequence is
the HPA's tolerance band: **a recommendation within 10% of the current count is not applied**
(10 → 9 keeps 10; 20 → 21 keeps 20). At exactly 10% the float arithmetic decides (10 → 11 is
applied, since ``1.1 - 1`` rounds above ``0.1``; 10 → 9 is not). Small pools are unaffected
(any change of one replica below 10 replicas is more than 10%). Kubernetes >= 1.33 can lower
the tolerance per HPA (``behavior.scaleUp/scaleDown.tolerance``, feature gate
``HPAConfigurableTolerance``); the HPA's stabilization windows and the ScaledObject's
``minReplicaCount``/``maxReplicaCount`` also still apply. :func:`hpa_desired_replicas` mirrors
this rule, milli-unit rounding included, and the tests check the arithmetic with it.

KEDA converts both numbers to milli-quantities by truncation (``int64(v * 1000)``); plain
floats can lose a milli each and then a replica: ``targetValue: 2.01`` would arrive as 2009m
and 2 replicas' ``4.02`` as 4019m, and ``ceil(4019 / 2009) = 3``.
Both values are therefore sent as the nearest float at or above the exact milli value
(:func:`milli_exact_float`), a difference of a few ulps.

Nothing is ever reported out of ignorance. While the cluster's state never arrived, is older
than the service's staleness bound, or never gave the pool's current count, ``GetMetrics``
fails with ``UNAVAILABLE`` and says which: after ``failureThreshold`` failures KEDA applies
the ScaledObject's ``fallback`` replicas (``behavior: currentReplicasIfHigher`` keeps at least
the current count), and until then the HPA keeps its current count.

Replicas 0 is reported through ``IsActive``: the HPA never scales to zero, KEDA does, when the
scaler is inactive and ``minReplicaCount`` is 0. ``IsActive`` is ``replicas > 0`` only while
the recommender is ready and has a fresh recommendation; otherwise it is true: a service that
does not know must not let KEDA scale a pool to zero.

Errors: missing or malformed metadata is ``INVALID_ARGUMENT`` naming the key, an unknown pool
``NOT_FOUND`` listing the known ones (from every RPC, ``GetMetricSpec`` included), no fresh
recommendation ``UNAVAILABLE``, too many open streams ``RESOURCE_EXHAUSTED``, any failure of
the recommender ``INTERNAL``.

Generated code
--------------
``externalscaler_pb2.py`` and ``externalscaler_pb2_grpc.py`` are generated from
``externalscaler.proto``; from the repository root (``-I`` maps the proto into the installed
package so the generated import reads ``from rlscale.serving import externalscaler_pb2``)::

    python -m grpc_tools.protoc -Irlscale/serving=serving --python_out=/tmp/kgen \\
        --grpc_python_out=/tmp/kgen rlscale/serving/externalscaler.proto \\
      && cp /tmp/kgen/rlscale/serving/externalscaler_pb2*.py serving/
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from rlscale.serving import externalscaler_pb2 as pb
from rlscale.serving import externalscaler_pb2_grpc as pb_grpc
from rlscale.serving.base import NoRecommendationError, PoolRecommendation, PoolRecommender
from rlscale.serving.limits import MAX_GRPC_STREAMS, MAX_KEDA_TARGET_VALUE

logger = logging.getLogger(__name__)

METADATA_CLUSTER = "cluster"
METADATA_POOL = "pool"
METADATA_TARGET_VALUE = "targetValue"
DEFAULT_TARGET_VALUE = 1.0
HPA_TOLERANCE = 0.1
"""The HPA's default ``--horizontal-pod-autoscaler-tolerance``."""
METRIC_PREFIX = "rlscale-"
MAX_STREAM_INTERVAL_S = 60.0
NO_RECOMMENDATION_STATUS = grpc.StatusCode.UNAVAILABLE
"""GetMetrics' status while there is no fresh recommendation: the condition is transient (it
ends when fresh state arrives), and any error counts as a failure for KEDA's fallback."""

# The HPA (and KEDA's logs) name an external trigger's metric "s<trigger index>-<name>".
_KEDA_INDEX_PREFIX = re.compile(r"^s\d+-")


def metric_name(pool: str) -> str:
    """The metric name for ``pool``; the same string in GetMetricSpec and GetMetrics."""
    return f"{METRIC_PREFIX}{pool}"


def milli_exact_float(milli: int) -> float:
    """The smallest float ``v >= milli / 1000`` with ``int(v * 1000) == milli``.

    KEDA truncates ``v * 1000`` to an integer milli-quantity; this float survives it (and
    rounding to nearest) unchanged.
    """
    value = milli / 1000
    while int(value * 1000) < milli:
        value = math.nextafter(value, math.inf)
    return value


def hpa_desired_replicas(
    current_replicas: int,
    metric_value: float,
    target_average_value: float,
    *,
    tolerance: float = HPA_TOLERANCE,
) -> int:
    """The HPA's replica count for an ``External`` metric with an ``AverageValue`` target.

    Mirrors Kubernetes' ``GetExternalPerPodMetricReplicas`` after KEDA's milli conversion:
    the ratio ``metric / (target * current)`` within ``tolerance`` of 1 keeps the current count,
    otherwise the count is ``ceil(metric / target)``. Bounds, stabilization windows and scaling
    policies come after this and are not modelled.

    :param current_replicas: replicas the scale target has now (the HPA does not act at 0).
    :param metric_value: the value GetMetrics returned.
    :param target_average_value: the value GetMetricSpec returned.
    :param tolerance: the HPA's tolerance (0.1 unless the cluster changed it).
    """
    if current_replicas < 1:
        raise ValueError(
            f"current_replicas={current_replicas}: the HPA does not scale from 0; "
            "KEDA activates the target (IsActive) first"
        )
    usage_milli = int(metric_value * 1000)
    target_milli = int(target_average_value * 1000)
    if target_milli < 1:
        raise ValueError(f"target_average_value={target_average_value} is below 1 milli")
    usage_ratio = usage_milli / (target_milli * current_replicas)
    if abs(1.0 - usage_ratio) <= tolerance:
        return current_replicas
    return math.ceil(usage_milli / target_milli)


@dataclass(frozen=True)
class ScalerConfig:
    """One ScaledObject's configuration, parsed from its trigger metadata."""

    cluster: str
    """The cluster whose pushed (or polled) state the recommendation comes from."""
    pool: str
    target_milli: int
    """``targetValue`` in milli-units (Kubernetes quantities carry no finer precision)."""

    @property
    def target_value(self) -> float:
        """The per-replica ``AverageValue`` target, as sent to KEDA."""
        return milli_exact_float(self.target_milli)

    def metric_value(self, replicas: int) -> float:
        """``replicas * target``, as sent to KEDA."""
        return milli_exact_float(replicas * self.target_milli)


class MetadataError(ValueError):
    """The ScaledObject's metadata is missing a key or holds a bad value."""


def parse_metadata(metadata: Mapping[str, str]) -> ScalerConfig:
    """Read ``cluster``, ``pool`` and ``targetValue`` from a trigger's metadata (other keys
    are ignored)."""
    cluster = (metadata.get(METADATA_CLUSTER) or "").strip()
    if not cluster:
        raise MetadataError(
            f"ScaledObject metadata needs {METADATA_CLUSTER!r} (the cluster_id its state is "
            "pushed under, or --cluster-id of the Prometheus poller)"
        )
    pool = (metadata.get(METADATA_POOL) or "").strip()
    if not pool:
        raise MetadataError(
            f"ScaledObject metadata needs {METADATA_POOL!r} (the rlscale pool to scale)"
        )
    raw_target = metadata.get(METADATA_TARGET_VALUE)
    if raw_target is None or raw_target.strip() == "":
        target = DEFAULT_TARGET_VALUE
    else:
        try:
            target = float(raw_target)
        except ValueError:
            raise MetadataError(
                f"metadata {METADATA_TARGET_VALUE!r}={raw_target!r} is not a number"
            ) from None
    ok = math.isfinite(target) and 0 < target <= MAX_KEDA_TARGET_VALUE
    target_milli = round(target * 1000) if ok else 0
    if target_milli < 1 or abs(target * 1000 - target_milli) > 1e-6 * max(1.0, target_milli):
        raise MetadataError(
            f"metadata {METADATA_TARGET_VALUE!r}={raw_target!r} must be a multiple of 0.001 "
            f"in (0, {MAX_KEDA_TARGET_VALUE:g}] (Kubernetes quantities carry milli precision)"
        )
    return ScalerConfig(cluster=cluster, pool=pool, target_milli=target_milli)


class ExternalScalerServicer(pb_grpc.ExternalScalerServicer):
    """KEDA's ``ExternalScaler`` service in front of a :class:`PoolRecommender` (grpc.aio).

    Every RPC is a coroutine on the server's event loop; the recommender's calls are short and
    never block. Streams sleep on the loop, so any number of them leaves ``GetMetrics`` its
    answer; they are still bounded (``max_streams``), as everything a client can open is.

    :param recommender: the decision service's core.
    :param stream_interval_s: how often ``StreamIsActive`` re-checks activity; a change is
        pushed at most this long after it happens (0 < interval <= 60 s).
    :param max_streams: open ``StreamIsActive`` streams; one more is RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        recommender: PoolRecommender,
        *,
        stream_interval_s: float = 1.0,
        max_streams: int = MAX_GRPC_STREAMS,
    ) -> None:
        if not 0 < stream_interval_s <= MAX_STREAM_INTERVAL_S:
            raise ValueError(
                f"stream_interval_s={stream_interval_s} must be in (0, {MAX_STREAM_INTERVAL_S}]"
            )
        if max_streams < 1:
            raise ValueError(f"max_streams={max_streams} must be >= 1")
        self._recommender = recommender
        self._stream_interval_s = stream_interval_s
        self._max_streams = max_streams
        self.open_streams = 0
        """Streams open now (changed only on the server's event loop)."""

    # -- helpers ---------------------------------------------------------------------------

    async def _config(
        self, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> ScalerConfig:
        """The trigger's configuration; INVALID_ARGUMENT if malformed, NOT_FOUND for a pool
        the service does not know."""
        try:
            config = parse_metadata(ref.scalerMetadata)
        except MetadataError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{_ref_name(ref)}: {err}")
        try:
            known = sorted(self._recommender.pools())
        except Exception as err:
            logger.exception("recommender pools failed")
            await _abort(context, grpc.StatusCode.INTERNAL, f"recommender pools failed: {err}")
        if config.pool not in known:
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"{_ref_name(ref)}: unknown pool {config.pool!r}; known pools: {known}",
            )
        return config

    async def _recommend(
        self, config: ScalerConfig, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> PoolRecommendation:
        """The recommendation; :class:`NoRecommendationError` passes through to the caller."""
        try:
            return self._recommender.recommend(config.cluster, config.pool)
        except NoRecommendationError:
            raise
        except Exception as err:
            logger.exception("recommender failed for %s/%s", config.cluster, config.pool)
            await _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"{_ref_name(ref)}: recommender failed for pool {config.pool!r} of cluster "
                f"{config.cluster!r}: {type(err).__name__}: {err}",
            )

    async def _is_active(
        self, config: ScalerConfig, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> bool:
        try:
            ready = self._recommender.is_ready()
        except Exception as err:
            logger.exception("recommender is_ready failed")
            await _abort(context, grpc.StatusCode.INTERNAL, f"recommender is_ready failed: {err}")
        if not ready:
            return True  # unknown is not idle (see the module docstring)
        try:
            recommendation = await self._recommend(config, ref, context)
        except NoRecommendationError:
            return True  # no fresh state is not idle either
        return recommendation.replicas > 0

    # -- RPCs ------------------------------------------------------------------------------

    async def IsActive(  # noqa: N802 (the proto's name)
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.IsActiveResponse:
        """Active unless the service is ready, has a fresh recommendation, and it is 0."""
        config = await self._config(request, context)
        return pb.IsActiveResponse(result=await self._is_active(config, request, context))

    async def StreamIsActive(  # noqa: N802
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IsActiveResponse]:
        """The current activity at once, then each change within ``stream_interval_s``."""
        config = await self._config(request, context)
        if self.open_streams >= self._max_streams:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{_ref_name(request)}: {self.open_streams} StreamIsActive streams open "
                f"(max {self._max_streams}); poll IsActive instead",
            )
        self.open_streams += 1
        try:
            last: bool | None = None
            while True:
                active = await self._is_active(config, request, context)
                if active != last:
                    last = active
                    yield pb.IsActiveResponse(result=active)
                await asyncio.sleep(self._stream_interval_s)
        finally:  # the client left, the server stops, or a failure ended the stream
            self.open_streams -= 1

    async def GetMetricSpec(  # noqa: N802
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricSpecResponse:
        """One metric, ``rlscale-<pool>``, with ``targetSizeFloat = targetValue``."""
        config = await self._config(request, context)
        spec = pb.MetricSpec(
            metricName=metric_name(config.pool), targetSizeFloat=config.target_value
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(  # noqa: N802
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricsResponse:
        """``metricValueFloat = recommended_replicas * targetValue`` for the pool; UNAVAILABLE
        while there is no fresh recommendation, so that KEDA's ``fallback`` applies."""
        ref = request.scaledObjectRef
        config = await self._config(ref, context)
        name = metric_name(config.pool)
        asked = _KEDA_INDEX_PREFIX.sub("", request.metricName)
        if request.metricName and asked != name:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{_ref_name(ref)}: metricName {request.metricName!r} is not this "
                f"ScaledObject's metric {name!r}",
            )
        try:
            recommendation = await self._recommend(config, ref, context)
        except NoRecommendationError as err:
            await _abort(
                context,
                NO_RECOMMENDATION_STATUS,
                f"{_ref_name(ref)}: {err}; no number rather than a guess (KEDA's fallback "
                "applies after failureThreshold failures)",
            )
        value = pb.MetricValue(
            metricName=name, metricValueFloat=config.metric_value(recommendation.replicas)
        )
        return pb.GetMetricsResponse(metricValues=[value])


class ScalerServer:
    """The KEDA scaler's gRPC server, running on an event loop in its own thread."""

    def __init__(
        self,
        server: grpc.aio.Server,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        servicer: ExternalScalerServicer,
        address: str,
    ) -> None:
        self._server = server
        self._loop = loop
        self._thread = thread
        self.servicer = servicer
        self.address = address
        self._stopped: threading.Event | None = None

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop serving (open RPCs get ``grace`` seconds, None: none); the returned event is
        set once the server and its loop have stopped (``stop(g).wait(timeout)``)."""
        if self._stopped is not None:
            return self._stopped
        done = threading.Event()
        self._stopped = done

        async def shutdown() -> None:
            try:
                await self._server.stop(grace)
            finally:
                self._loop.stop()

        def join() -> None:
            self._thread.join()
            done.set()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        threading.Thread(target=join, name="keda-grpc-stop", daemon=True).start()
        return done


def serve_grpc(
    recommender: PoolRecommender,
    host: str,
    port: int,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_client_ca: str | Path | None = None,
    stream_interval_s: float = 1.0,
    max_streams: int = MAX_GRPC_STREAMS,
) -> ScalerServer:
    """Start the KEDA external scaler on ``host:port`` and return the running server.

    Raises :class:`OSError` when the address cannot be bound; port reuse is switched off, so a
    port another process (or another server here) holds is an error, not a silent second
    listener. Stop it with ``server.stop(grace_s)``.

    :param tls_cert: PEM server certificate; with ``tls_key`` the port speaks TLS (KEDA then
        needs ``caCert`` in its TriggerAuthentication, or ``enableTLS``/``unsafeSsl``).
    :param tls_key: PEM private key of ``tls_cert``.
    :param tls_client_ca: PEM CA bundle; when given, clients must present a certificate it
        signed (mutual TLS; KEDA's ``tlsClientCert``/``tlsClientKey``).
    :param stream_interval_s: see :class:`ExternalScalerServicer`.
    :param max_streams: see :class:`ExternalScalerServicer`.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together: give both or neither")
    if tls_client_ca is not None and tls_cert is None:
        raise ValueError("tls_client_ca needs tls_cert and tls_key")
    servicer = ExternalScalerServicer(
        recommender, stream_interval_s=stream_interval_s, max_streams=max_streams
    )
    credentials = None
    if tls_cert is not None and tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())],
            root_certificates=Path(tls_client_ca).read_bytes() if tls_client_ca else None,
            require_client_auth=tls_client_ca is not None,
        )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start() -> grpc.aio.Server:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_ExternalScalerServicer_to_server(servicer, server)
        try:
            if credentials is not None:
                bound = server.add_secure_port(address, credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as err:  # grpcio >= 1.50 raises instead of returning 0
            raise OSError(f"cannot listen on {address}: {err}") from err
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        return server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="keda-grpc", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        raise
    logger.info("KEDA external scaler listening on %s (tls=%s)", address, tls_cert is not None)
    return ScalerServer(server, loop, thread, servicer, address)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _ref_name(ref: pb.ScaledObjectRef) -> str:
    return f"ScaledObject {ref.namespace or '?'}/{ref.name or '?'}"


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers
