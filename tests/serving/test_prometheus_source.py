"""The Prometheus path against a real Prometheus scraping a local exporter of vLLM metrics."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmExporter:
    """vLLM-named metrics at a settable load, served over HTTP like a vLLM pod's /metrics."""

    def __init__(self) -> None:
        reg = prometheus_client.CollectorRegistry()
        self.success = prometheus_client.Counter("vllm:request_success", "done", registry=reg)
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
        self.rate_rps = 0.0
        self.port = _free_port()
        # always the text format: with OpenMetrics, prometheus-client 0.26 rewrites the ':'
        # of vLLM's names to '_', and Prometheus would store names vLLM never exposes
        body = prometheus_client.generate_latest

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = body(reg)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def set_load(self, rate_rps: float) -> None:
        self.rate_rps = rate_rps
        self.running.set(rate_rps * 2.0)  # ~2 s in the system per request

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            self.success.inc(self.rate_rps * 0.1)

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()


@pytest.fixture
def exporter():
    e = VllmExporter()
    yield e
    e.close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: VllmExporter):
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: vllm\n    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text())
    yield proc, url
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
