"""The decision service over real HTTP: recommendations, guardrails, fallback, auth, metrics."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys

import httpx
import pytest

from rlscale.envs.scenario import load_scenario
from rlscale.serving.app import NoTokenError, create_app
from rlscale.serving.base import TOKEN_ENV_VAR
from rlscale.serving.causes import Cause
from rlscale.serving.guardrails import (
    Guardrails,
    PoolLimits,
    apply_bounds,
    apply_total_quota,
    guard,
    limit_steps,
    limit_warm_pool,
)
from rlscale.serving.service import DecisionService, load_policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


URL = "/v1/recommendations"


def post(server, body, auth, **kw) -> httpx.Response:
    return httpx.post(server.url + URL, json=body, headers=auth, timeout=10, **kw)


def test_recommendation_fields(live_server, make_body, auth):
    body = make_body(rate_rps=10.0, cluster="fields")
    body["production_decision"] = {"h100": 2, "a100": 0, "h100-spot": 0}
    r = post(live_server, body, auth)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["replicas"]) == {"h100", "a100", "h100-spot"}
    assert all(isinstance(n, int) and n >= 0 for n in out["replicas"].values())
    assert out["source"] == "policy"
    assert out["policy_version"].startswith("hpa@")
    assert out["shadow_recorded"] is True
    with sqlite3.connect(live_server.shadow_db) as db:
        row = db.execute(
            "SELECT source, policy_version, production_json, response_json FROM decisions "
            "WHERE decision_id = ?",
            (out["decision_id"],),
        ).fetchone()
    assert row[0] == "policy" and row[1] == out["policy_version"]
    assert json.loads(row[2]) == body["production_decision"]
    assert json.loads(row[3])["replicas"] == out["replicas"]


def test_step_limit_and_max_bound(live_server, make_body, auth):
    # 80 req/s on 2 ready h100 (~21 req/s each at 60%): the HPA asks 8; +4 -> 6; max 5
    r = post(live_server, make_body(ready_h100=2, rate_rps=80.0, cluster="steps"), auth)
    out = r.json()
    assert out["source"] == "policy"
    assert out["replicas"]["h100"] == 5
    assert any("step up limited to +4" in x for x in out["reasons"])
    assert any("h100: max_replicas 5" in x for x in out["reasons"])
    assert out["causes"] == ["step_up_limited", "max_replicas"]


def test_latest_per_cluster_and_pool(live_server, make_body, auth):
    out = post(live_server, make_body(rate_rps=10.0, cluster="latest"), auth).json()
    r = httpx.get(live_server.url + URL + "/h100", params={"cluster_id": "latest"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["pool"] == "h100" and r.json()["cluster_id"] == "latest"
    assert r.json()["replicas"] == out["replicas"]["h100"]
    assert httpx.get(live_server.url + URL + "/nope", headers=auth).status_code == 404
    # a cluster never heard from has no number, not 0
    r = httpx.get(live_server.url + URL + "/h100", params={"cluster_id": "nobody"}, headers=auth)
    assert r.status_code == 503 and "no state from cluster 'nobody'" in r.json()["detail"]


def test_stale_metrics_fall_back(live_server, make_body, auth):
    out = post(live_server, make_body(age_s=600, cluster="stale"), auth).json()
    assert out["source"] == "fallback"
    assert out["reasons"][0].startswith("stale metrics")
    assert out["causes"][:2] == ["stale_metrics", "fallback_decided"]
    assert out["replicas"]["h100"] >= 1  # min bound still applies


def test_out_of_range_falls_back_to_hold(live_server, make_body, auth):
    body = make_body(ready_h100=3, cluster="range")
    body["arrival_rate_rps"] = -4.0
    body["kv_util"] = 7.0
    out = post(live_server, body, auth).json()
    assert out["source"] == "fallback"
    assert "invalid input: arrival_rate_rps -4.0" in out["reasons"]
    assert any(x.startswith("hold") for x in out["reasons"])
    assert out["replicas"]["h100"] == 3
    assert out["causes"] == ["invalid_input", "hold"]


def test_missing_pool_is_held_at_last_answer(live_server, make_body, auth):
    out = post(live_server, make_body(ready_h100=3, cluster="gap"), auth).json()
    body = make_body(cluster="gap")
    body["pools"] = [p for p in body["pools"] if p["name"] != "h100"]
    again = post(live_server, body, auth).json()
    assert again["source"] == "fallback"
    assert any("pool 'h100'" in x for x in again["reasons"])
    assert again["replicas"]["h100"] >= out["replicas"]["h100"] - 2  # at most one step down


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"not json", 400),
        (b'{"timestamp": 1', 400),
        (b'{"timestamp": "yesterday", "pools": []}', 422),
        (b"[]", 422),
        (b'{"pools": 3}', 422),
    ],
)
def test_malformed_body_is_400_or_422(live_server, auth, content, status):
    r = httpx.post(
        live_server.url + URL,
        content=content,
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == status, r.text


def test_auth(live_server, make_body, auth):
    assert post(live_server, make_body(), {}).status_code == 401
    assert post(live_server, make_body(), {"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(live_server.url + URL + "/h100").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(live_server.url + path).status_code == 200, path


def test_metrics_and_openapi(live_server, make_body, auth):
    post(live_server, make_body(cluster="metrics"), auth)
    text = httpx.get(live_server.url + "/metrics").text
    assert 'rlscale_decisions_total{pool="h100",source="policy"}' in text
    assert "rlscale_decision_latency_seconds_bucket" in text
    assert 'rlscale_policy_info{fallback="hpa@' in text
    spec = httpx.get(live_server.url + "/openapi.json").json()
    assert spec["components"]["schemas"]["RecommendationRequest"]["examples"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_serving_imports_no_torch():
    code = (
        "import sys\n"
        "from rlscale.envs.scenario import load_scenario\n"
        "from rlscale.serving.app import create_app\n"
        "from rlscale.serving.service import DecisionService, load_policy\n"
        "sc = load_scenario('azure-conv')\n"
        "svc = DecisionService(sc, load_policy('hpa', sc), load_policy('hpa', sc))\n"
        "create_app(svc, token='t')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_policy_spec_exits_2(tmp_path):
    cmd = [sys.executable, "-m", "rlscale.serving.cli", "--policy", "nope", "--port", "1"]
    cmd.append("--insecure-no-auth")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown policy 'nope'" in done.stderr


# --- auth by default ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_means_no_start(token):
    """Without a token (an empty one counts as none) the service refuses to start."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV_VAR}
    if token is not None:
        env[TOKEN_ENV_VAR] = token
    cmd = [sys.executable, "-m", "rlscale.serving.cli", "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert TOKEN_ENV_VAR in done.stderr and "--insecure-no-auth" in done.stderr


def test_insecure_no_auth_serves_openly_when_asked(server_factory, make_body):
    server = server_factory("--insecure-no-auth", env={TOKEN_ENV_VAR: ""})
    r = post(server, make_body(cluster="open"), {})
    assert r.status_code == 200, r.text
    assert "--insecure-no-auth" in server.log_path.read_text()  # said out loud


def test_create_app_refuses_to_run_open_by_accident():
    sc = load_scenario("azure-conv")
    service = DecisionService(sc, load_policy("hpa", sc), load_policy("hpa", sc))
    for token in (None, ""):
        with pytest.raises(NoTokenError, match="--insecure-no-auth"):
            create_app(service, token=token)
    assert create_app(service, token=None, insecure_no_auth=True) is not None


# --- guardrails as pure functions -------------------------------------------------------------


def test_limit_steps_both_ways():
    out, reasons = limit_steps({"a": 10, "b": 0, "c": 3}, {"a": 2, "b": 6, "c": 3}, 4, 2)
    assert out == {"a": 6, "b": 4, "c": 3}
    assert len(reasons) == 2 and "step down limited to -2" in str(reasons[1])
    assert [r.cause for r in reasons] == [Cause.STEP_UP_LIMITED, Cause.STEP_DOWN_LIMITED]


def test_bounds_win_over_current():
    limits = {"a": PoolLimits(min_replicas=2, max_replicas=4)}
    assert apply_bounds({"a": 0}, limits)[0] == {"a": 2}
    assert apply_bounds({"a": 9}, limits)[0] == {"a": 4}
    assert apply_bounds({}, limits)[0] == {"a": 2}


def test_total_quota_trims_largest_not_below_min():
    limits = {"a": PoolLimits(1, 8), "b": PoolLimits(3, 8)}
    out, reasons = apply_total_quota({"a": 6, "b": 4}, limits, 6)
    assert sum(out.values()) == 6 and out["b"] >= 3 and reasons


def test_warm_pool_within_quota_room():
    limits = {"a": PoolLimits(0, 8, warm_pool_max=3)}
    assert limit_warm_pool({"a": 3}, {"a": 7}, limits)[0] == {"a": 1}
    assert limit_warm_pool({"a": -1}, {"a": 0}, limits)[0] == {"a": 0}


def test_guard_end_to_end_and_validation():
    rails = Guardrails(pools={"a": PoolLimits(0, 5, 1)}, max_step_up=2, max_step_down=1)
    replicas, warm, reasons = guard({"a": 9}, {"a": 1}, {"a": 1}, rails)
    assert replicas == {"a": 3} and warm == {"a": 1} and len(reasons) == 1
    with pytest.raises(ValueError, match="max_step_up"):
        Guardrails(max_step_up=0)
