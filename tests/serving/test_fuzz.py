"""Fuzzing the HTTP API: no body, however odd, gives a 5xx or takes the process down.

Most examples run in-process against the ASGI app (fast); a smaller run hits the live server.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlscale.envs.scenario import load_scenario
from rlscale.serving.app import create_app
from rlscale.serving.causes import Cause
from rlscale.serving.service import DecisionService, load_policy

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

POOLS = ["h100", "a100", "h100-spot", "other", ""]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1e308, -1e-300, 1e9]),
    st.none(),
    st.text(max_size=5),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
pool = st.fixed_dictionaries(
    {"name": st.sampled_from(POOLS)},
    optional={
        "replicas": st.dictionaries(
            st.sampled_from(["ready", "loading", "provisioning", "standby", "draining", "x"]),
            numbers,
            max_size=4,
        )
        | json_values,
        "spot_price_usd_h": numbers,
        "preempt_notices": numbers,
        "spot_capacity_share": numbers,
        "capacity_rps": numbers,
    },
)
requests = st.fixed_dictionaries(
    {"timestamp": numbers, "pools": st.lists(pool, max_size=5) | json_values},
    optional={
        "cluster_id": st.text(max_size=20) | numbers,
        "arrival_rate_rps": numbers,
        "queue": numbers,
        "gpu_util": numbers,
        "kv_util": numbers,
        "ttft_p95_s": numbers,
        "slo_attainment": numbers,
        "interval_s": numbers,
        "production_decision": st.dictionaries(st.sampled_from(POOLS), numbers, max_size=3)
        | json_values,
    },
)
# well-typed numbers, so most bodies parse and reach the service's range checks and policies
floats = st.one_of(
    st.floats(min_value=0, max_value=200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.none(),
)
now_ish = st.floats(min_value=-300, max_value=120).map(lambda d: time.time() + d)
typed_pool = st.fixed_dictionaries(
    {
        "name": st.sampled_from(POOLS[:3] + POOLS[:3] + POOLS[3:]),
        "replicas": st.fixed_dictionaries(
            {},
            optional={k: floats for k in ("ready", "loading", "provisioning", "standby")},
        ),
    },
    optional={"spot_price_usd_h": floats, "capacity_rps": floats, "spot_capacity_share": floats},
)
typed_requests = st.fixed_dictionaries(
    {
        "timestamp": now_ish | floats.filter(lambda x: x is not None),
        "pools": st.lists(typed_pool, max_size=4),
    },
    optional={
        "cluster_id": st.sampled_from(["a", "b", "c"]),
        "arrival_rate_rps": floats,
        "arrival_rate_ewma_rps": floats,
        "queue": floats,
        "in_flight": floats,
        "gpu_util": floats,
        "kv_util": floats,
        "ttft_p95_s": floats,
        "tpot_p95_s": floats,
        "slo_attainment": floats,
        "interval_s": floats,
        "production_decision": st.dictionaries(
            st.sampled_from(POOLS), st.integers(-(10**20), 10**20), max_size=3
        ),
    },
)
bodies = st.one_of(typed_requests, typed_requests, requests, json_values)


def _encode(body) -> bytes:
    # allow_nan: Python's JSON writes NaN/Infinity, which lenient parsers may accept
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    sc = load_scenario("azure-conv")
    service = DecisionService(sc, load_policy("hpa", sc), load_policy("hpa", sc))
    with TestClient(create_app(service, token="t"), raise_server_exceptions=True) as c:
        yield c


def _check(status: int, text: str) -> None:
    assert status < 500, text
    if status == 200:
        out = json.loads(text)
        assert all(isinstance(n, int) and n >= 0 for n in out["replicas"].values())
        assert all(math.isfinite(n) for n in out["warm_pool"].values())
        # every code is a known cause, and every cause has a reason that starts with its words
        assert all(c in set(Cause) for c in out["causes"]), out["causes"]
        for code in out["causes"]:
            assert any(Cause(code).label in r for r in out["reasons"]), (code, out["reasons"])
        assert len(out["reasons"]) >= len(out["causes"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzz_in_process(client, body):
    r = client.post(
        "/v1/recommendations",
        content=_encode(body),
        headers={"Authorization": "Bearer t", "content-type": "application/json"},
    )
    _check(r.status_code, r.text)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes_in_process(client, raw):
    r = client.post(
        "/v1/recommendations",
        content=raw,
        headers={"Authorization": "Bearer t", "content-type": "application/json"},
    )
    assert r.status_code < 500


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzz_live_server(live_server, auth, body):
    r = httpx.post(
        live_server.url + "/v1/recommendations",
        content=_encode(body),
        headers={**auth, "content-type": "application/json"},
        timeout=10,
    )
    _check(r.status_code, r.text)
    assert live_server.alive()


def test_live_server_survived_fuzzing(live_server):
    assert live_server.alive()
    assert httpx.get(live_server.url + "/healthz").status_code == 200
