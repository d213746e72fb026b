"""Chaos against a real `rlscale serve` in Prometheus mode, read through KEDA's gRPC protocol.

A real Prometheus scrapes an exporter of vLLM and kube-state-metrics series; the service polls
it (``--prometheus-url``) and serves KEDA (``--grpc-port``). A simulated Deployment follows
the HPA: at each step the test asks GetMetrics/IsActive as KEDA does, turns the answer into
the HPA's replica count (``hpa_desired_replicas``; a failed GetMetrics keeps the current count,
as the HPA does and as KEDA's ``fallback: currentReplicasIfHigher`` would), and checks that the
count never drops below the safe floor: one step down from the current count while the input
is good, the current count itself while anything is missing, stale or down. Then Prometheus
down and back, metrics missing field by field, a pusher that stops, a restart on the same
shadow database; the shadow log's causes say why at each step.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import grpc
import httpx
import prometheus_client
import pytest

from rlscale.serving import externalscaler_pb2 as pb
from rlscale.serving import externalscaler_pb2_grpc as pb_grpc
from rlscale.serving.keda_grpc import hpa_desired_replicas

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="no prometheus binary (Debian package 'prometheus'); CI installs it",
)
STALENESS_S = 4.0
STEP_DOWN = 2
TARGET = 1.0
CLUSTER = "prod"


class Exporter:
    """vLLM's request counter and kube-state-metrics' replica counts, each removable."""

    def __init__(self, serve) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.success = prometheus_client.Counter(
            "vllm:request_success", "done", registry=self.registry
        )
        self.ready = prometheus_client.Gauge(
            "kube_deployment_status_replicas_ready", "ready", ["deployment"], registry=self.registry
        )
        self.endpoint = serve(self.registry, self.success)
        self.port = self.endpoint.port

    @property
    def rate_rps(self) -> float:
        return self.endpoint.rate_rps

    @rate_rps.setter
    def rate_rps(self, rps: float) -> None:
        self.endpoint.rate_rps = rps

    def set_replicas(self, **ready: int) -> None:
        for deployment, n in ready.items():
            self.ready.labels(deployment=deployment.replace("_", "-")).set(n)

    def drop_replicas(self, deployment: str) -> None:
        self.ready.remove(deployment)

    def drop_rate(self) -> None:
        self.registry.unregister(self.success)


class Keda:
    """KEDA and the HPA for the h100 pool's Deployment, whose size the test tracks."""

    def __init__(self, grpc_port: int, replicas: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pb_grpc.ExternalScalerStub(self.channel)
        metadata = {"cluster": CLUSTER, "pool": "h100", "targetValue": str(TARGET)}
        self.ref = pb.ScaledObjectRef(name="h100", namespace="ns", scalerMetadata=metadata)
        self.replicas = replicas

    def sync(self) -> tuple[int, grpc.StatusCode, bool]:
        """One HPA sync: (the new replica count, GetMetrics' status, IsActive)."""
        active = self.stub.IsActive(self.ref, timeout=5).result
        try:
            value = (
                self.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=self.ref), timeout=5)
                .metricValues[0]
                .metricValueFloat
            )
        except grpc.RpcError as err:
            return self.replicas, err.code(), active  # the HPA keeps its count
        self.replicas = hpa_desired_replicas(self.replicas, value, TARGET)
        return self.replicas, grpc.StatusCode.OK, active


def _latest_causes(db: Path, cluster: str = CLUSTER) -> list[str]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT response_json FROM decisions WHERE cluster_id = ? ORDER BY id DESC LIMIT 1",
            (cluster,),
        ).fetchone()
    return json.loads(row[0])["causes"] if row else []


def _last_informed_answer(db: Path, pool: str, cluster: str = CLUSTER) -> int:
    """The latest answer for ``pool`` decided on complete metrics (no missing input)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT response_json FROM decisions WHERE cluster_id = ? ORDER BY id DESC",
            (cluster,),
        )
        for (resp,) in rows:
            answer = json.loads(resp)
            if "missing_input" not in answer["causes"] and pool in answer["replicas"]:
                return int(answer["replicas"][pool])
    raise AssertionError(f"no decision on complete metrics for {pool}")


def _says(db: Path, *causes: str, within_s: float = 3.0) -> bool:
    """The latest decision's causes include ``causes`` (polled: the poller runs on)."""
    deadline = time.monotonic() + within_s
    while not set(causes) <= set(_latest_causes(db)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_hpa_never_drops_below_the_safe_floor(
    tmp_path, server_factory, metrics_endpoint, prometheus_server, loopback_port, make_body, auth
):
    exporter = Exporter(metrics_endpoint)
    prometheus = prometheus_server(exporter.port)
    prometheus.start()
    db = tmp_path / "shadow.db"
    grpc_port = loopback_port()
    args = (
        "--prometheus-url", prometheus.url, "--prometheus-interval-s", "0.5",
        "--prometheus-query", "arrival_rate_rps=sum(rate(vllm:request_success_total[5s]))",
        "--cluster-id", CLUSTER, "--grpc-port", str(grpc_port), "--shadow-db", str(db),
        "--max-staleness-s", str(STALENESS_S),
    )  # fmt: skip
    keda = None
    try:
        keda = Keda(grpc_port, replicas=2)
        exporter.set_replicas(h100=2, a100=0, h100_spot=0)
        exporter.rate_rps = 60.0
        server = server_factory(*args)
        log: list[str] = []

        reported = {"h100": True}  # whether kube-state-metrics reports h100's count

        def step(name: str, *, ignorant: bool, wait_s: float) -> tuple[grpc.StatusCode, bool]:
            time.sleep(wait_s)
            before = keda.replicas
            after, status, active = keda.sync()
            if reported["h100"]:
                exporter.set_replicas(h100=after)  # the Deployment follows the HPA
            floor = before if ignorant else before - STEP_DOWN
            log.append(f"{name}: {before} -> {after} ({status.name}, active={active})")
            assert after >= floor, "\n".join(log)
            if ignorant:
                assert active, log  # never inactive (scale to zero) out of ignorance
            return status, active

        def until(name: str, wanted: grpc.StatusCode, *, ignorant: bool, within_s: float) -> None:
            """Sync every half second until KEDA's call answers ``wanted``; every sync on
            the way is held to the floor."""
            deadline = time.monotonic() + within_s
            while step(name, ignorant=ignorant, wait_s=0.5)[0] != wanted:
                assert time.monotonic() < deadline, log

        # before Prometheus has a rate window: no state yet, so no number (and active)
        until("starting", grpc.StatusCode.OK, ignorant=True, within_s=30.0)
        # under load, fresh metrics: KEDA follows the recommendation up
        for _ in range(3):
            status, _ = step("load", ignorant=False, wait_s=3.0)
            assert status == grpc.StatusCode.OK, log
        assert keda.replicas > 2, log

        # the load falls: with good metrics, KEDA may follow it down one step at a time
        exporter.rate_rps = 0.2
        for _ in range(3):
            step("load falls", ignorant=False, wait_s=2.5)
        # metrics missing field by field: the pool's ready count first, at that low load
        reported["h100"] = False
        exporter.drop_replicas("h100")
        assert _says(db, "missing_input", "last_known_good", within_s=10.0), _latest_causes(db)
        # the HPA last synced before the service's final decisions on complete metrics, which
        # may have stepped down since (one step each, as the load allows): the first sync
        # catches up, held to the last of those, never below it
        informed = _last_informed_answer(db, "h100")
        after, status, active = keda.sync()
        log.append(f"h100 ready missing (catch-up): -> {after} ({status.name}, active={active})")
        assert after >= informed and status == grpc.StatusCode.OK and active, log
        held = keda.replicas
        for _ in range(4):
            status, _ = step("h100 ready missing", ignorant=True, wait_s=1.0)
            assert status == grpc.StatusCode.OK, log  # held, so there is a number
        assert keda.replicas >= held, log
        # then the arrival rate: the poller has no data; the service holds, and once the last
        # good metrics are stale KEDA gets no number (its fallback, not a guess)
        exporter.drop_rate()
        assert _says(db, "missing_input", "hold", within_s=10.0), _latest_causes(db)
        until("rate missing", grpc.StatusCode.UNAVAILABLE, ignorant=True, within_s=15.0)
        assert _says(db, "stale_metrics", "missing_input", "hold"), _latest_causes(db)

        # Prometheus down, then back with complete metrics
        prometheus.stop()
        status, _ = step("prometheus down", ignorant=True, wait_s=2.0)
        assert status == grpc.StatusCode.UNAVAILABLE, log
        exporter.registry.register(exporter.success)
        reported["h100"] = True
        exporter.set_replicas(h100=keda.replicas)
        prometheus.start()
        until("prometheus back", grpc.StatusCode.OK, ignorant=False, within_s=30.0)

        # a pusher for another cluster stops: its number goes stale, this cluster's does not
        push = make_body(cluster="pushed", ready_h100=3)
        r = httpx.post(server.url + "/v1/recommendations", json=push, headers=auth, timeout=5)
        assert r.status_code == 200, r.text
        pushed = Keda(grpc_port, replicas=3)
        pushed.ref.scalerMetadata["cluster"] = "pushed"
        assert pushed.sync()[1] == grpc.StatusCode.OK
        time.sleep(STALENESS_S + 1.0)
        assert pushed.sync() == (3, grpc.StatusCode.UNAVAILABLE, True)
        pushed.channel.close()
        status, _ = step("other pusher stopped", ignorant=False, wait_s=0.0)
        assert status == grpc.StatusCode.OK, log

        # a restart on the same shadow database, Prometheus away meanwhile: no state, so no
        # number and active; then state arrives and KEDA follows again
        server.kill()
        prometheus.stop()
        restarted = server_factory(*args)
        assert restarted.alive()
        for _ in range(3):
            status, _ = step("restarted, prometheus away", ignorant=True, wait_s=0.5)
            assert status == grpc.StatusCode.UNAVAILABLE, log
        prometheus.start()
        until("after restart", grpc.StatusCode.OK, ignorant=False, within_s=30.0)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        print("\n".join(log))
    finally:
        if keda is not None:
            keda.channel.close()
