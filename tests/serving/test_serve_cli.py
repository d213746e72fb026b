"""One `rlscale serve` process, both front ends: what HTTP is told, KEDA's gRPC call reads."""

from __future__ import annotations

import httpx
import pytest

grpc = pytest.importorskip("grpc")

from rlscale.serving import externalscaler_pb2 as pb  # noqa: E402
from rlscale.serving import externalscaler_pb2_grpc as pb_grpc  # noqa: E402
from rlscale.serving.keda_grpc import hpa_desired_replicas  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pushed_state_reaches_keda_through_grpc(server_factory, make_body, auth):
    grpc_port = free_port()
    server = server_factory("--grpc-port", str(grpc_port))
    r = httpx.post(
        server.url + "/v1/recommendations",
        json=make_body(ready_h100=2, rate_rps=40.0, cluster="keda"),
        headers=auth,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    wanted = r.json()["replicas"]["h100"]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(
            name="llama",
            namespace="inference",
            scalerMetadata={"cluster": "keda", "pool": "h100", "targetValue": "2"},
        )
        spec = stub.GetMetricSpec(ref, timeout=5)
        name = spec.metricSpecs[0].metricName
        value = (
            stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=name), timeout=5)
            .metricValues[0]
            .metricValueFloat
        )
        assert stub.IsActive(ref, timeout=5).result is (wanted > 0)
    # the HPA's AverageValue rule, from far enough away that its tolerance does not apply
    assert hpa_desired_replicas(1, value, 2.0) == wanted
