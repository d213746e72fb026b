"""The Prometheus path against a real Prometheus scraping a local exporter of vLLM metrics."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from rlscale.envs.scenario import load_scenario  # noqa: E402
from rlscale.serving.prometheus_source import PrometheusSource  # noqa: E402
from rlscale.serving.service import DecisionService, load_policy  # noqa: E402
from rlscale.serving.shadow import ShadowLog  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian package 'prometheus'); CI installs it"
)
WINDOW_S = 5  # the test's rate window, so a change of load shows within seconds


class VllmExporter:
    """vLLM-named metrics at a settable load, served over HTTP like a vLLM pod's /metrics."""

    def __init__(self, serve) -> None:
        reg = prometheus_client.CollectorRegistry()
        success = prometheus_client.Counter("vllm:request_success", "done", registry=reg)
        self.running = prometheus_client.Gauge("vllm:num_requests_running", "run", registry=reg)
        self.waiting = prometheus_client.Gauge("vllm:num_requests_waiting", "wait", registry=reg)
        ready = prometheus_client.Gauge(
            "kube_deployment_status_replicas_ready", "ready", ["deployment"], registry=reg
        )
        spec = prometheus_client.Gauge(
            "kube_deployment_spec_replicas", "spec", ["deployment"], registry=reg
        )
        # every pool's count: one without data is unknown to the service, not 0
        for deployment, n in (("h100", 1), ("a100", 0), ("h100-spot", 0)):
            ready.labels(deployment=deployment).set(n)
            spec.labels(deployment=deployment).set(n)
        self.endpoint = serve(reg, success)
        self.port = self.endpoint.port

    def set_load(self, rate_rps: float) -> None:
        self.endpoint.rate_rps = rate_rps
        self.running.set(rate_rps * 2.0)  # ~2 s in the system per request


@pytest.fixture
def exporter(metrics_endpoint):
    return VllmExporter(metrics_endpoint)


@pytest.fixture
def prometheus(exporter: VllmExporter, prometheus_server):
    server = prometheus_server(exporter.port)
    server.start()
    return server.proc, server.url


def _service(tmp_path: Path) -> DecisionService:
    scenario = load_scenario("azure-conv")
    params = tmp_path / "hpa.json"
    # a sync every second and no scale-down stabilization, so the recommendation follows the
    # load up and down within the test (the HPA's 15 s sync would hold it between two polls)
    params.write_text(json.dumps({"scale_down_stabilization_s": 0.0, "sync_period_s": 1.0}))
    return DecisionService(
        scenario,
        load_policy(f"hpa={params}", scenario),
        load_policy("hpa", scenario),
        max_staleness_s=3.0,
        shadow=ShadowLog(tmp_path / "shadow.db"),
    )


def test_recommendation_follows_the_exporter_and_falls_back_without_prometheus(
    tmp_path, exporter, prometheus
):
    proc, url = prometheus
    service = _service(tmp_path)
    queries = {
        "arrival_rate_rps": f"sum(rate(vllm:request_success_total[{WINDOW_S}s]))",
        "queue": "sum(vllm:num_requests_waiting)",
        "in_flight": "sum(vllm:num_requests_running)",
    }
    source = PrometheusSource(url, service.pools(), service.decide_and_record, queries=queries)

    def settle(rate_rps: float):
        exporter.set_load(rate_rps)
        time.sleep(WINDOW_S + 2.5)  # scrapes fill the rate window with the new load only
        out = source.poll_once()
        assert out is not None, source.last_error
        return out

    low = settle(2.0)
    high = settle(60.0)
    back = settle(2.0)
    assert low.source == high.source == back.source == "policy"
    assert high.replicas["h100"] > low.replicas["h100"]
    assert back.replicas["h100"] < high.replicas["h100"]
    assert service.recommend("default", "h100").replicas == back.replicas["h100"]

    proc.terminate()
    proc.wait(timeout=10)
    time.sleep(3.5)  # the last good metrics are now older than the staleness bound
    fallen = source.poll_once()
    assert "prometheus unreachable" in source.last_error
    assert fallen.source == "fallback"
    assert any("stale" in r or "old" in r for r in fallen.reasons), fallen.reasons
    assert fallen.replicas["h100"] >= back.replicas["h100"]  # no scale-down on stale input

    # Prometheus mode goes through the same recorder as HTTP: every decision has its shadow
    # row and is counted in the metrics
    assert service.recorder.shadow.count() == 4
    assert all(r.shadow_recorded for r in (low, high, back, fallen))
    text = service.recorder.metrics.exposition().decode()
    assert 'rlscale_decisions_total{pool="h100",source="policy"} 3.0' in text
    assert 'rlscale_fallback_causes_total{cause="stale_metrics"} 1.0' in text
    assert "rlscale_shadow_rows 4.0" in text
