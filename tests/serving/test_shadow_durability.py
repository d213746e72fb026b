"""Every decision whose response a client received survives a SIGKILL of the service."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx

from rlscale.serving.shadow import SCHEMA_VERSION


def _load(url: str, auth: dict, make_body, received: list[str], stop: threading.Event) -> None:
    """Send decisions until stopped or the server dies; keep the ids of answered ones."""
    with httpx.Client(timeout=5.0, headers=auth) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body = make_body(rate_rps=5.0 + i % 40, cluster=f"load-{threading.get_ident()}")
            body["production_decision"] = {"h100": 2}
            try:
                r = client.post(url + "/v1/recommendations", json=body)
            except httpx.TransportError:
                return  # the server was killed mid-request: that response was never received
            assert r.status_code == 200, r.text
            assert r.json()["shadow_recorded"] is True
            received.append(r.json()["decision_id"])


def _run_until_killed(server, auth, make_body, seconds: float) -> list[str]:
    received: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(server.url, auth, make_body, received, stop))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    server.kill()  # SIGKILL while requests are in flight
    stop.set()
    for t in threads:
        t.join(timeout=10)
    return received


def test_sigkill_loses_no_received_decision(server_factory, tmp_path, auth, make_body):
    db = tmp_path / "shadow.db"
    received: list[str] = []
    for _ in range(2):  # kill, restart on the same database, kill again
        server = server_factory("--shadow-db", str(db))
        received += _run_until_killed(server, auth, make_body, seconds=1.5)
    assert len(received) > 20, "the load generator barely ran"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM decisions")}
    missing = set(received) - stored
    assert not missing, f"{len(missing)} of {len(received)} received decisions not recorded"
