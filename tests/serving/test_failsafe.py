"""The README's fail-safe table, row by row: the core behind a real gRPC server on loopback.

Each test is one row: what the input lacks, what the answer is, what KEDA reads.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import grpc
import pytest

from rlscale.envs.scenario import load_scenario
from rlscale.serving import externalscaler_pb2 as pb
from rlscale.serving import externalscaler_pb2_grpc as pb_grpc
from rlscale.serving.keda_grpc import serve_grpc
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.service import DecisionService, load_policy

SCENARIO = load_scenario("azure-conv")
STEP_DOWN = 2  # the default guardrail


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(clock, tmp_path) -> DecisionService:
    # no scale-down stabilization: the HPA would scale down at once, so a hold shows
    params = tmp_path / "hpa.json"
    params.write_text(json.dumps({"scale_down_stabilization_s": 0.0}))
    hpa = load_policy(f"hpa={params}", SCENARIO)
    return DecisionService(SCENARIO, hpa, hpa, clock=clock)


@pytest.fixture
def keda_for() -> Iterator:
    """``keda_for(service)``: a stub of a real gRPC scaler over ``service``."""
    opened = []

    def start(service: DecisionService) -> pb_grpc.ExternalScalerStub:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = serve_grpc(service, "127.0.0.1", port)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        opened.append((server, channel))
        return pb_grpc.ExternalScalerStub(channel)

    yield start
    for server, channel in opened:
        channel.close()
        server.stop(None).wait(5)


@pytest.fixture
def keda(service, keda_for) -> pb_grpc.ExternalScalerStub:
    return keda_for(service)


def push(service, clock, *, cluster="a", rate=20.0, h100=6, omit=(), age_s=0.0, **extra):
    """One decision; ``h100`` None sends ``ready: null``; ``omit`` leaves out pools or
    ``replicas`` (``"h100.replicas"``)."""
    pools = []
    for name, ready in (("h100", h100), ("a100", 0), ("h100-spot", 0)):
        if name in omit:
            continue
        pool = {"name": name} if f"{name}.replicas" in omit else {
            "name": name, "replicas": {"ready": ready}
        }  # fmt: skip
        pools.append(pool)
    body = {
        "cluster_id": cluster,
        "timestamp": clock.now - age_s,
        "arrival_rate_rps": rate,
        "pools": pools,
        **extra,
    }
    return service.decide(RecommendationRequest.model_validate(body))


def keda_reads(stub, cluster="a", pool="h100") -> tuple[grpc.StatusCode, float | None, bool]:
    """(status, metric value, IsActive) as KEDA would get them."""
    metadata = {"cluster": cluster, "pool": pool}
    ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata=metadata)
    active = stub.IsActive(ref, timeout=5).result
    try:
        got = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5)
    except grpc.RpcError as err:
        return err.code(), None, active
    return grpc.StatusCode.OK, got.metricValues[0].metricValueFloat, active


@pytest.mark.parametrize(
    "gap",
    [
        {"h100": None},  # "replicas": {"ready": null}
        {"omit": ("h100.replicas",)},  # "replicas" left out
        {"omit": ("h100",)},  # the pool left out
    ],
    ids=["ready-null", "replicas-left-out", "pool-left-out"],
)
@pytest.mark.parametrize("rate", [20.0, None], ids=["rate", "rate-null"])
def test_missing_replicas_hold_the_last_known_good_count(service, clock, keda, gap, rate):
    """Row 1: missing or null current replicas hold the last known-good count (issue 10's
    first case: it used to give 0, and KEDA read 0 and inactive)."""
    push(service, clock, rate=20.0, h100=6)  # 6 running: the last known-good count
    clock.now += 15
    out = push(service, clock, rate=rate, **gap)
    assert out.replicas["h100"] == 6
    assert "missing_input" in out.causes and "last_known_good" in out.causes
    assert keda_reads(keda) == (grpc.StatusCode.OK, 6.0, True)


def test_missing_input_never_scales_down(service, clock, keda):
    """Row 2: with input missing, stale or invalid, no pool goes below its current count,
    though the fallback would scale down (a low rate)."""
    push(service, clock, rate=60.0, h100=8)
    for bad in ({"h100": None}, {"gpu_util": 7.0}, {"age_s": 90.0}):
        clock.now += 15
        out = push(service, clock, **{"rate": 0.5, "h100": 8, **bad})
        assert out.replicas["h100"] == 8, (bad, out.reasons)
        assert "no_scale_down" in out.causes, (bad, out.causes)
    # control: the same low rate with good input does scale down, one step at a time
    clock.now += 15
    out = push(service, clock, rate=0.5, h100=8)
    assert out.replicas["h100"] >= 8 - STEP_DOWN and out.replicas["h100"] < 8


def test_no_answer_falls_more_than_a_step_below_the_last(service, clock, keda):
    """Row 3: a reported count that lags (or drops) never takes the answer more than one
    step below the last one."""
    assert push(service, clock, rate=60.0, h100=8).replicas["h100"] == 8
    clock.now += 15
    out = push(service, clock, rate=0.5, h100=2)  # the report says 2, the last answer was 8
    assert out.replicas["h100"] == 8 - STEP_DOWN
    assert "step_down_limited" in out.causes
    assert keda_reads(keda)[1] == 8 - STEP_DOWN


def test_unknown_count_without_history_gives_no_recommendation(service, clock, keda):
    """Row 4: unknown current replicas and no history: no number for that pool, not 0."""
    out = push(service, clock, cluster="fresh", h100=None)
    assert "h100" not in out.replicas
    assert "no_recommendation" in out.causes
    assert out.replicas["a100"] == 0  # the pools it knows are answered
    status, value, active = keda_reads(keda, cluster="fresh")
    assert (status, value, active) == (grpc.StatusCode.UNAVAILABLE, None, True)


def test_keda_gets_no_number_before_any_state(service, keda):
    """Row 5: a fresh start (policy loaded, ready) has no state: GetMetrics fails so KEDA's
    fallback applies; IsActive is true."""
    assert service.is_ready()
    assert keda_reads(keda, cluster="a") == (grpc.StatusCode.UNAVAILABLE, None, True)


def test_keda_gets_no_number_from_stale_state(service, clock, keda):
    """Row 6: state older than the staleness bound (two control intervals by default) is
    not acted on; fresh state again is."""
    assert service.max_staleness_s == 2 * SCENARIO.control_interval_s
    push(service, clock, h100=6)
    assert keda_reads(keda)[0] == grpc.StatusCode.OK
    clock.now += service.max_staleness_s + 1  # the pusher stopped
    assert keda_reads(keda) == (grpc.StatusCode.UNAVAILABLE, None, True)
    out = push(service, clock, h100=6, age_s=service.max_staleness_s + 5)  # late metrics
    assert "stale_metrics" in out.causes
    assert keda_reads(keda)[0] == grpc.StatusCode.UNAVAILABLE
    push(service, clock, h100=6)
    assert keda_reads(keda)[0] == grpc.StatusCode.OK


def test_one_cluster_never_steers_another(service, clock, keda):
    """Row 7: recommendations are per (cluster, pool)."""
    push(service, clock, cluster="a", h100=10, rate=60.0)
    before = keda_reads(keda, cluster="a")
    out_b = push(service, clock, cluster="b", h100=0, rate=0.0)
    assert out_b.replicas["h100"] != before[1]
    assert keda_reads(keda, cluster="a") == before
    assert keda_reads(keda, cluster="b")[1] == out_b.replicas["h100"]


def test_shadow_only_pushes_never_steer_keda(service, clock, keda):
    """Row 8: a push marked shadow_only is answered and recorded, never read by KEDA."""
    assert push(service, clock, cluster="a", h100=6, shadow_only=True).replicas["h100"] > 0
    assert keda_reads(keda, cluster="a")[0] == grpc.StatusCode.UNAVAILABLE
    push(service, clock, cluster="a", h100=6)
    status, value, _ = keda_reads(keda, cluster="a")
    push(service, clock, cluster="a", h100=0, rate=0.0, shadow_only=True)
    assert keda_reads(keda, cluster="a") == (status, value, True)


def test_no_policy_keeps_keda_active(clock, keda_for):
    """Row 9: no policy loaded: the fallback answers, and IsActive stays true even for a
    pool it runs at 0."""
    hpa = load_policy("hpa", SCENARIO)
    service = DecisionService(SCENARIO, None, hpa, clock=clock)
    out = push(service, clock, h100=0, rate=0.0)
    assert out.source == "fallback" and "no_policy" in out.causes
    assert not service.is_ready()
    assert out.replicas["a100"] == 0
    assert keda_reads(keda_for(service), pool="a100") == (grpc.StatusCode.OK, 0.0, True)
