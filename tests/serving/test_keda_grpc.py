"""The KEDA external scaler against a real gRPC server on loopback, through a real channel."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")

from rlscale.serving import externalscaler_pb2 as pb  # noqa: E402
from rlscale.serving import externalscaler_pb2_grpc as pb_grpc  # noqa: E402
from rlscale.serving.base import (  # noqa: E402
    NoRecommendationError,
    PoolRecommendation,
    PoolRecommender,
)
from rlscale.serving.keda_grpc import (  # noqa: E402
    ExternalScalerServicer,
    hpa_desired_replicas,
    metric_name,
    parse_metadata,
    serve_grpc,
)

RPC_TIMEOUT_S = 5.0


class TablePoolRecommender:
    """A real, thread-safe recommender backed by a table the test edits."""

    def __init__(self, replicas_by_pool: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self._replicas = dict(replicas_by_pool)
        self.ready = True
        self.broken = False

    def set_replicas(self, pool: str, replicas: int) -> None:
        with self._lock:
            self._replicas[pool] = replicas

    def is_ready(self) -> bool:
        return self.ready

    def pools(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    def recommend(self, cluster: str, pool: str) -> PoolRecommendation:
        if self.broken:
            raise RuntimeError("policy crashed")
        with self._lock:
            replicas = self._replicas[pool]  # KeyError for an unknown pool, as the protocol says
        if replicas is None:
            raise NoRecommendationError(f"no state from cluster '{cluster}' yet")
        return PoolRecommendation(pool=pool, replicas=replicas, source="policy", cluster=cluster)


def _ref(cluster: str | None = "prod", **metadata: str) -> pb.ScaledObjectRef:
    if cluster is not None:
        metadata["cluster"] = cluster
    return pb.ScaledObjectRef(name="llama-70b", namespace="inference", scalerMetadata=metadata)


@pytest.fixture
def recommender() -> TablePoolRecommender:
    return TablePoolRecommender({"a100-llama70b": 6, "h100-mixtral": 0})


@pytest.fixture
def server(recommender: TablePoolRecommender, loopback_port) -> Iterator[tuple[grpc.Server, int]]:
    port = loopback_port()
    srv = serve_grpc(recommender, "127.0.0.1", port, stream_interval_s=0.05)
    yield srv, port
    srv.stop(grace=None).wait(RPC_TIMEOUT_S)


@pytest.fixture
def stub(server: tuple[grpc.Server, int]) -> Iterator[pb_grpc.ExternalScalerStub]:
    _, port = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.ExternalScalerStub(channel)


def _code(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=RPC_TIMEOUT_S)
    return info.value.code(), info.value.details()


# -- the protocol object --------------------------------------------------------------------


def test_table_recommender_satisfies_protocol(recommender):
    assert isinstance(recommender, PoolRecommender)


# -- every RPC through a real channel -------------------------------------------------------


def test_metric_spec_and_metrics_share_one_name(stub):
    ref = _ref(pool="a100-llama70b", targetValue="2", scalerAddress="rlscale:9090")
    spec = stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S).metricSpecs
    assert len(spec) == 1
    assert spec[0].metricName == metric_name("a100-llama70b") == "rlscale-a100-llama70b"
    assert spec[0].targetSizeFloat == 2.0
    assert spec[0].targetSize == 0  # the deprecated int64 field is never set

    for asked in ("", spec[0].metricName, "s0-" + spec[0].metricName):
        values = stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=asked), timeout=RPC_TIMEOUT_S
        ).metricValues
        assert len(values) == 1
        assert values[0].metricName == spec[0].metricName
        assert values[0].metricValueFloat == 12.0  # 6 replicas * target 2
        assert values[0].metricValue == 0


def test_target_value_defaults_to_one(stub):
    ref = _ref(pool="a100-llama70b")
    assert stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S).metricSpecs[0].targetSizeFloat == 1.0
    request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="rlscale-a100-llama70b")
    assert stub.GetMetrics(request, timeout=RPC_TIMEOUT_S).metricValues[0].metricValueFloat == 6


def test_is_active(stub, recommender):
    assert stub.IsActive(_ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S).result is True
    assert stub.IsActive(_ref(pool="h100-mixtral"), timeout=RPC_TIMEOUT_S).result is False
    # not ready: unknown is not idle, so even a pool recommended 0 stays active
    recommender.ready = False
    assert stub.IsActive(_ref(pool="h100-mixtral"), timeout=RPC_TIMEOUT_S).result is True
    assert stub.IsActive(_ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S).result is True


def test_stream_is_active_pushes_changes(stub, recommender):
    stream = stub.StreamIsActive(_ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S)
    try:
        assert next(stream).result is True  # the current state, at once
        recommender.set_replicas("a100-llama70b", 0)
        assert next(stream).result is False  # pushed within the interval
        recommender.set_replicas("a100-llama70b", 3)
        assert next(stream).result is True
    finally:
        stream.cancel()


def test_stream_is_active_ends_when_server_stops(recommender, loopback_port):
    port = loopback_port()
    srv = serve_grpc(recommender, "127.0.0.1", port, stream_interval_s=0.05)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = pb_grpc.ExternalScalerStub(channel).StreamIsActive(
            _ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S
        )
        assert next(stream).result is True
        srv.stop(grace=None).wait(RPC_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED


# -- the HPA's AverageValue arithmetic ------------------------------------------------------


@pytest.mark.parametrize("target", ["1", "2", "0.3", "2.01", "1.001", "7.5", "0.001", "100"])
@pytest.mark.parametrize("recommended", [1, 2, 3, 7, 10, 33, 64, 250])
def test_hpa_reaches_the_recommendation_from_far_away(stub, recommender, target, recommended):
    """From a count far outside the tolerance band, the HPA lands exactly on the number."""
    recommender.set_replicas("a100-llama70b", recommended)
    ref = _ref(pool="a100-llama70b", targetValue=target)
    target_value = stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S).metricSpecs[0].targetSizeFloat
    request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric_name("a100-llama70b"))
    metric = stub.GetMetrics(request, timeout=RPC_TIMEOUT_S).metricValues[0].metricValueFloat
    assert metric == pytest.approx(recommended * float(target), rel=1e-12)
    assert int(metric * 1000) == recommended * round(float(target) * 1000)  # KEDA's milli
    for current in {1, recommended * 2, recommended * 5 + 3}:
        if abs(recommended / current - 1) > 0.1:
            assert hpa_desired_replicas(current, metric, target_value) == recommended


@pytest.mark.parametrize(
    ("current", "recommended", "hpa_result"),
    [
        (10, 10, 10),
        (10, 9, 10),  # -10%: 1 - 0.9 rounds below 0.1, inside the band: not applied
        (10, 11, 11),  # +10%: 1.1 - 1 rounds above 0.1, outside the band: applied
        (20, 21, 20),  # +5%: not applied
        (20, 19, 20),  # -5%: not applied
        (20, 23, 23),  # +15%: applied
        (50, 46, 50),  # -8%: not applied
        (50, 44, 44),  # -12%: applied
        (100, 109, 100),  # +9%: not applied
        (9, 10, 10),  # +11%: one replica more is always applied below 10 replicas
        (4, 3, 3),
        (1, 2, 2),
        (2, 1, 1),
    ],
)
@pytest.mark.parametrize("target", ["1", "0.3"])
def test_hpa_tolerance_band(stub, recommender, current, recommended, hpa_result, target):
    recommender.set_replicas("a100-llama70b", recommended)
    ref = _ref(pool="a100-llama70b", targetValue=target)
    target_value = stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S).metricSpecs[0].targetSizeFloat
    metric = (
        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=RPC_TIMEOUT_S)
        .metricValues[0]
        .metricValueFloat
    )
    assert hpa_desired_replicas(current, metric, target_value) == hpa_result


def test_hpa_mirror_matches_the_kubernetes_formula():
    # metric 2.5 with target 0.5 from 3 replicas: ratio 5/3, outside the band: ceil(2.5/0.5)
    assert hpa_desired_replicas(3, 2.5, 0.5) == 5
    assert hpa_desired_replicas(3, 2.6, 0.5) == 6  # a fractional ratio rounds up
    assert hpa_desired_replicas(10, 10.5, 1.0) == 10  # within tolerance
    assert hpa_desired_replicas(10, 10.5, 1.0, tolerance=0.01) == 11
    with pytest.raises(ValueError, match="does not scale from 0"):
        hpa_desired_replicas(0, 3.0, 1.0)


def test_plain_floats_would_lose_a_replica_to_keda_truncation():
    """Why the values are milli-exact floats: 2.01 and 2 * 2.01 both truncate a milli short."""
    naive_metric, naive_target = 2 * 2.01, 2.01
    assert (int(naive_metric * 1000), int(naive_target * 1000)) == (4019, 2009)
    assert math.ceil(4019 / 2009) == 3  # one replica too many
    config = parse_metadata({"cluster": "c", "pool": "p", "targetValue": "2.01"})
    assert (int(config.metric_value(2) * 1000), int(config.target_value * 1000)) == (4020, 2010)
    assert hpa_desired_replicas(1, config.metric_value(2), config.target_value) == 2


# -- errors -----------------------------------------------------------------------------------


def test_missing_cluster_is_invalid_argument_naming_the_key(stub):
    for call, request in [
        (stub.IsActive, _ref(cluster=None, pool="a100-llama70b")),
        (stub.GetMetricSpec, _ref(cluster=None, pool="a100-llama70b")),
        (stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=_ref(None, pool="a100-llama70b"))),
    ]:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'cluster'" in details


def test_no_fresh_state_is_unavailable_and_active(stub, recommender):
    """No number rather than a guess: GetMetrics fails (KEDA's fallback), IsActive is true."""
    recommender.set_replicas("h100-mixtral", None)
    ref = _ref(pool="h100-mixtral")
    code, details = _code(stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=ref))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "no state from cluster 'prod'" in details and "fallback" in details
    assert stub.IsActive(ref, timeout=RPC_TIMEOUT_S).result is True
    stream = stub.StreamIsActive(ref, timeout=RPC_TIMEOUT_S)
    try:
        assert next(stream).result is True
    finally:
        stream.cancel()


def test_missing_pool_is_invalid_argument_naming_the_key(stub):
    for call, request in [
        (stub.IsActive, _ref()),
        (stub.GetMetricSpec, _ref(targetValue="2")),
        (stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=_ref())),
    ]:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'pool'" in details
        assert "inference/llama-70b" in details
    stream = stub.StreamIsActive(_ref(), timeout=RPC_TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad", ["zero", "0", "-1", "0.0001", "nan", "inf", "1e300", "1000001"])
def test_bad_target_value_is_invalid_argument(stub, bad):
    code, details = _code(stub.GetMetricSpec, _ref(pool="a100-llama70b", targetValue=bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'targetValue'" in details


def test_foreign_metric_name_is_invalid_argument(stub):
    request = pb.GetMetricsRequest(scaledObjectRef=_ref(pool="a100-llama70b"), metricName="cpu")
    code, details = _code(stub.GetMetrics, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rlscale-a100-llama70b" in details


def test_unknown_pool_is_not_found_listing_known_pools(stub, recommender):
    for ready in (True, False):
        recommender.ready = ready
        for call, request in [
            (stub.IsActive, _ref(pool="tpu")),
            (stub.GetMetricSpec, _ref(pool="tpu")),
            (stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=_ref(pool="tpu"))),
        ]:
            code, details = _code(call, request)
            assert code == grpc.StatusCode.NOT_FOUND
            assert "'tpu'" in details
            assert "a100-llama70b" in details
            assert "h100-mixtral" in details


def test_recommender_failure_is_internal(stub, recommender):
    recommender.broken = True
    for call, request in [
        (stub.IsActive, _ref(pool="a100-llama70b")),
        (stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=_ref(pool="a100-llama70b"))),
    ]:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INTERNAL
        assert "policy crashed" in details


def test_stream_is_active_reports_a_failure_mid_stream(stub, recommender):
    stream = stub.StreamIsActive(_ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S)
    assert next(stream).result is True
    recommender.broken = True
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INTERNAL


# -- serving ----------------------------------------------------------------------------------


def test_port_taken_by_another_server_raises(server, recommender):
    _, port = server
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        serve_grpc(recommender, "127.0.0.1", port)


def test_port_taken_by_a_plain_socket_raises(recommender):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(OSError, match="cannot listen"):
            serve_grpc(recommender, "127.0.0.1", sock.getsockname()[1])


def test_bad_arguments_fail_fast(recommender, tmp_path):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        serve_grpc(recommender, "127.0.0.1", 0, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ValueError, match="stream_interval_s"):
        ExternalScalerServicer(recommender, stream_interval_s=0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_round_trip(recommender, tmp_path: Path, loopback_port):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = loopback_port()
    srv = serve_grpc(recommender, "127.0.0.1", port, tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            assert stub.IsActive(_ref(pool="a100-llama70b"), timeout=RPC_TIMEOUT_S).result
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, _ = _code(pb_grpc.ExternalScalerStub(channel).IsActive, _ref(pool="x"))
            assert code == grpc.StatusCode.UNAVAILABLE  # plaintext is refused
    finally:
        srv.stop(grace=None).wait(RPC_TIMEOUT_S)


# -- the real core ----------------------------------------------------------------------------


def test_decision_service_behind_the_scaler(loopback_port):
    """The real core: before any state it gives no number (UNAVAILABLE, active); after a push
    it gives that cluster's answer, and only to that cluster's ScaledObjects."""
    from rlscale.envs.scenario import load_scenario
    from rlscale.serving.schemas import RecommendationRequest
    from rlscale.serving.service import DecisionService, default_guardrails, load_policy

    scenario = load_scenario("synthetic-2week")
    pool = scenario.pools[0].name
    floor = min(2, scenario.pools[0].quota)
    core = DecisionService(
        scenario,
        load_policy("hpa", scenario),
        load_policy("hpa", scenario),
        guardrails=default_guardrails(scenario, min_replicas={pool: floor}),
    )
    assert isinstance(core, PoolRecommender)
    port = loopback_port()
    srv = serve_grpc(core, "127.0.0.1", port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            ref = _ref(cluster="a", pool=pool, targetValue="0.5")
            request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric_name(pool))
            code, details = _code(stub.GetMetrics, request)
            assert code == grpc.StatusCode.UNAVAILABLE and "cluster 'a'" in details
            assert stub.IsActive(ref, timeout=RPC_TIMEOUT_S).result is True
            body = {
                "cluster_id": "a",
                "timestamp": core.clock(),
                "arrival_rate_rps": 1.0,
                "pools": [{"name": p.name, "replicas": {"ready": 3}} for p in scenario.pools],
            }
            out = core.decide(RecommendationRequest.model_validate(body))
            metric = stub.GetMetrics(request, timeout=RPC_TIMEOUT_S).metricValues[0]
            assert metric.metricValueFloat == pytest.approx(out.replicas[pool] * 0.5)
            other = pb.GetMetricsRequest(scaledObjectRef=_ref(cluster="b", pool=pool))
            assert _code(stub.GetMetrics, other)[0] == grpc.StatusCode.UNAVAILABLE
            code, details = _code(stub.IsActive, _ref(pool="no-such-pool"))
            assert code == grpc.StatusCode.NOT_FOUND
            assert pool in details
    finally:
        srv.stop(grace=None).wait(RPC_TIMEOUT_S)
