"""The Prometheus path against a real Prometheus scraping a local exporter of vLLM metrics."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from rlscale.envs.scenario import load_scenario  # noqa: E402
from rlscale.serving.prometheus_source import DEFAULT_POOL_QUERIES, PrometheusSource  # noqa: E402
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


@pytest.mark.needs_data
def test_the_batch_inputs_come_from_their_configured_queries(
    exported_policy, metrics_endpoint, prometheus_server
):
    """A policy trained with batch work, served in Prometheus mode: fed from the batch
    queries when they have data; without them (not configured, or no data) it does not
    decide, the fallback does, and nothing scales down."""
    reg = prometheus_client.CollectorRegistry()
    running = prometheus_client.Gauge("vllm:num_requests_running", "run", registry=reg)
    queued = prometheus_client.Gauge("batch_worker_queue_length", "batch", registry=reg)
    batch_rate = prometheus_client.Gauge("batch_arrival_rps", "batch rate", registry=reg)
    ready = prometheus_client.Gauge(
        "kube_deployment_status_replicas_ready", "ready", ["deployment"], registry=reg
    )
    for deployment, n in (("h100", 4), ("h100-spot", 0)):
        ready.labels(deployment=deployment).set(n)
    running.set(0.2)
    queued.set(120.0)
    batch_rate.set(15.0)
    server = prometheus_server(metrics_endpoint(reg).port)
    server.start()

    scenario = load_scenario("azure-conv-batch")
    params = Path(server.tmp) / "hpa.json"
    params.write_text(json.dumps({"scale_down_stabilization_s": 0.0}))
    service = DecisionService(
        scenario,
        load_policy(str(exported_policy(0, "azure-conv-batch")), scenario),
        load_policy(f"hpa={params}", scenario),  # would scale down at once on this load
    )
    base = {
        "arrival_rate_rps": "sum(vllm:num_requests_running)",
        "gpu_util": "sum(vllm:num_requests_running) / 100",
    }
    batch = {
        "batch_queue": "sum(batch_worker_queue_length)",
        "batch_arrival_rate_rps": "sum(batch_arrival_rps)",
    }

    def source(queries: dict[str, str]) -> PrometheusSource:
        return PrometheusSource(
            server.url,
            service.pools(),
            service.decide_and_record,
            queries=queries,
            pool_queries={"ready": DEFAULT_POOL_QUERIES["ready"]},
        )

    fed = source({**base, **batch})
    deadline = time.monotonic() + 30
    while True:  # until the first scrapes are in
        try:
            snapshot = fed.snapshot()
            if snapshot.batch_queue is not None:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "Prometheus never had the exporter's metrics"
        time.sleep(0.5)
    assert (snapshot.batch_queue, snapshot.batch_arrival_rate_rps) == (120.0, 15.0)
    out = fed.poll_once()
    assert out.source == "policy", out.reasons

    for queries in (base, {**base, **batch, "batch_queue": "sum(no_such_metric)"}):
        out = source(queries).poll_once()
        assert out.source == "fallback"
        assert "batch_unknown" in out.causes
        assert out.replicas["h100"] == 4, out.reasons
        assert "no_scale_down" in out.causes  # the HPA asked for fewer on this load


def test_a_query_for_no_request_field_is_refused():
    with pytest.raises(ValueError, match=r"no request field \['batch_queu'\]"):
        PrometheusSource(
            "http://x", ["h100"], print, queries={"arrival_rate_rps": "1", "batch_queu": "1"}
        )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("batch_queu=sum(x)", "'batch_queu': no such request field"),
        ("batch_queue", "expects FIELD=PROMQL"),
    ],
)
def test_rlscale_serve_refuses_a_bad_query_before_it_starts(item, message, capsys):
    from rlscale.cli import main

    argv = ["serve", "--scenario", "azure-conv", "--insecure-no-auth", "--prometheus-query", item]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
