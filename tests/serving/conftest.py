"""Fixtures: the decision service as a real process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A running ``python -m rlscale.serving.cli`` process."""

    proc: subprocess.Popen
    url: str
    args: list[str]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s, by pid."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)


def start_server(
    log_dir: Path, *args: str, timeout_s: float = 30.0, env: dict[str, str] | None = None
) -> LiveServer:
    """Start the service with ``args`` (and extra ``env``) and wait until ``/healthz``
    answers."""
    port = free_port()
    argv = [sys.executable, "-m", "rlscale.serving.cli", "--port", str(port), *args]
    argv += ["--log-level", "warning"]
    log_path = log_dir / f"serve-{port}.log"
    env = {**os.environ, "RLSCALE_API_TOKEN": TOKEN, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", argv, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not healthy after {timeout_s} s: {log_path.read_text()}")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers in a test; every one is stopped at teardown."""
    started: list[LiveServer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> LiveServer:
        server = start_server(tmp_path, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the session: hpa, h100 bounded to [1, 5], a shadow database."""
    tmp = tmp_path_factory.mktemp("serve")
    server = start_server(
        tmp,
        "--policy",
        "hpa",
        "--shadow-db",
        str(tmp / "shadow.db"),
        "--min-replicas",
        "h100=1",
        "--max-replicas",
        "h100=5",
    )
    server.shadow_db = tmp / "shadow.db"  # type: ignore[attr-defined]
    yield server
    server.stop()


def metrics_body(
    *, ready_h100: float = 2, rate_rps: float = 10.0, age_s: float = 0.0, cluster: str = "test"
) -> dict:
    """A well-formed request for the azure-conv pools."""
    return {
        "cluster_id": cluster,
        "timestamp": time.time() - age_s,
        "arrival_rate_rps": rate_rps,
        "queue": 0,
        "in_flight": 5,
        "gpu_util": 0.5,
        "kv_util": 0.1,
        "ttft_p50_s": 0.2,
        "ttft_p95_s": 0.6,
        "tpot_p95_s": 0.03,
        "slo_attainment": 1.0,
        "pools": [
            {"name": "h100", "replicas": {"ready": ready_h100}},
            {"name": "a100", "replicas": {"ready": 0}},
            {"name": "h100-spot", "replicas": {"ready": 0}, "spot_price_usd_h": 2.4},
        ],
    }


@pytest.fixture
def make_body() -> Callable[..., dict]:
    """:func:`metrics_body`, for tests."""
    return metrics_body


@pytest.fixture
def auth() -> dict[str, str]:
    """The bearer header the servers of these fixtures accept."""
    return dict(AUTH)


# --- a metrics exporter and a real Prometheus scraping it ---------------------------------------

PROMETHEUS = shutil.which("prometheus")
"""Debian's ``prometheus`` (CI installs it); tests that need it skip without it."""


class MetricsEndpoint:
    """A ``prometheus_client`` registry served over HTTP on a loopback port, like a vLLM pod's
    or kube-state-metrics' ``/metrics``, with a counter ``counter`` (if given) ticking at
    ``rate_rps`` requests a second.

    Always the text format: with OpenMetrics, prometheus-client 0.26 rewrites the ':' of
    vLLM's names to '_', and Prometheus would store names vLLM never exposes."""

    def __init__(self, registry, counter=None) -> None:
        import prometheus_client

        self.registry = registry
        self.counter = counter
        self.rate_rps = 0.0
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = prometheus_client.generate_latest(registry)
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
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            if self.counter is not None:
                self.counter.inc(self.rate_rps * 0.1)

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class PrometheusServer:
    """A real Prometheus scraping ``127.0.0.1:<target_port>`` every second, with its files
    in ``tmp``; it can be stopped and started again on the same port and storage."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: vllm\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait until ``/-/ready`` answers."""
        assert PROMETHEUS is not None, "no prometheus binary"
        log = self.tmp / "prometheus.log"
        with log.open("a") as err:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus not ready: " + log.read_text())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def loopback_port() -> Callable[[], int]:
    """:func:`free_port`, for tests that start their own listeners."""
    return free_port


@pytest.fixture
def metrics_endpoint() -> Iterator[Callable[..., MetricsEndpoint]]:
    """Serve registries in a test; every endpoint is closed at teardown."""
    started: list[MetricsEndpoint] = []

    def start(registry, counter=None) -> MetricsEndpoint:
        endpoint = MetricsEndpoint(registry, counter)
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[int], PrometheusServer]]:
    """Start Prometheus servers in a test (not yet started: call ``start()``); every one is
    stopped at teardown."""
    made: list[PrometheusServer] = []

    def make(target_port: int) -> PrometheusServer:
        server = PrometheusServer(tmp_path, target_port)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
