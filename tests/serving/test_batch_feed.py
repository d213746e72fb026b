"""A policy trained with batch work, served: its manifest records the batch entries and the
window it was trained with, the service feeds them from the request's batch inputs (the
simulator's writer, entry for entry), and falls back (never scaling down) when they are
missing or out of range; a policy without them ignores the batch inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlscale.agents.observe import observe
from rlscale.agents.onnx_policy import observation_from_state, read_manifest
from rlscale.envs.observation import BATCH_FEATURES, observation_size
from rlscale.envs.scenario import load_scenario
from rlscale.envs.simulator import ClusterSimulator
from rlscale.serving.schemas import EPOCH_MONDAY_S, RecommendationRequest
from rlscale.serving.service import DecisionService, load_policy

pytestmark = pytest.mark.needs_data

SCENARIO = "azure-conv-batch"
T0 = 1_767_225_600.0
BATCH = {"batch_queue": 120.0, "batch_arrival_rate_rps": 15.0}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def batch_policy(exported_policy):
    return exported_policy(0, SCENARIO)


@pytest.fixture(scope="module")
def eager_hpa(tmp_path_factory) -> str:
    """The HPA without scale-down stabilization: as a fallback it would scale down at once,
    so a hold shows."""
    params = tmp_path_factory.mktemp("hpa") / "hpa.json"
    params.write_text(json.dumps({"scale_down_stabilization_s": 0.0}))
    return f"hpa={params}"


def _service(policy: str, fallback: str = "hpa") -> DecisionService:
    scenario = load_scenario(SCENARIO)
    return DecisionService(
        scenario,
        load_policy(policy, scenario),
        load_policy(fallback, scenario),
        max_staleness_s=60.0,
        clock=Clock(T0),
    )


def _body(
    *,
    h100: int = 6,
    spot: int = 0,
    rate: float = 0.1,
    gpu_util: float = 0.05,
    **batch: float | None,
) -> RecommendationRequest:
    """By default a quiet cluster running 6 on-demand replicas: the HPA would scale it far
    down."""
    body = {
        "cluster_id": "c1",
        "timestamp": T0,
        "arrival_rate_rps": rate,
        "gpu_util": gpu_util,
        "pools": [
            {"name": "h100", "replicas": {"ready": h100}},
            {"name": "h100-spot", "replicas": {"ready": spot}},
        ],
        **{k: v for k, v in batch.items() if v is not None},
    }
    return RecommendationRequest.model_validate(body)


def test_the_export_records_the_batch_entries_and_the_trained_window(batch_policy):
    sim = ClusterSimulator(SCENARIO, 1)
    manifest = read_manifest(batch_policy)
    lay = manifest.observation
    assert lay.batch_window_s == sim.batch_window_s == 1800.0  # 30 min, whole 30 s steps
    n_before = observation_size(len(manifest.pools))  # the cluster's and the pools' entries
    assert lay.names[n_before:] == [f[0] for f in BATCH_FEATURES] == sim.observation_names[-2:]


def test_a_batch_observing_policy_decides_when_the_request_gives_the_batch_inputs(batch_policy):
    out = _service(str(batch_policy)).decide(_body(**BATCH))
    assert out.source == "policy", out.reasons
    assert "batch_unknown" not in out.causes
    assert set(out.replicas) == {"h100", "h100-spot"}


@pytest.mark.parametrize(
    "batch",
    [
        {},
        {"batch_queue": 120.0},
        {"batch_arrival_rate_rps": 15.0},
        {"batch_queue": -1.0, "batch_arrival_rate_rps": 15.0},
        {"batch_queue": 120.0, "batch_arrival_rate_rps": float("nan")},
        {"batch_queue": 1e12, "batch_arrival_rate_rps": 15.0},
    ],
    ids=["neither", "no-rate", "no-queue", "negative-queue", "nan-rate", "huge-queue"],
)
def test_without_usable_batch_inputs_the_fallback_decides_and_nothing_scales_down(
    batch_policy, eager_hpa, batch
):
    service = _service(str(batch_policy), eager_hpa)
    out = service.decide(_body(**batch))
    assert out.source == "fallback"
    assert "batch_unknown" in out.causes and "fallback_decided" in out.causes
    assert out.replicas["h100"] == 6, out.reasons
    assert "no_scale_down" in out.causes  # the HPA asked for fewer on this load
    # the same request with the inputs given: the policy decides
    assert service.decide(_body(**BATCH)).source == "policy"


@pytest.mark.parametrize("batch", [{}, {"batch_queue": -5.0, "batch_arrival_rate_rps": 1e300}])
@pytest.mark.parametrize("policy", ["exported", "spot_aware"])
def test_a_policy_without_batch_entries_ignores_the_batch_inputs(exported_policy, policy, batch):
    """A policy trained without batch work, or the spot-aware baseline on a scenario without
    batch work, decides whatever the batch inputs say."""
    scenario = load_scenario("azure-conv")
    if policy == "exported":
        policy = str(exported_policy(0, "azure-conv"))
    service = DecisionService(
        scenario,
        load_policy(policy, scenario),
        load_policy("hpa", scenario),
        max_staleness_s=60.0,
        clock=Clock(T0),
    )
    body = {
        "cluster_id": "c1",
        "timestamp": T0,
        "arrival_rate_rps": 3.0,
        "pools": [{"name": p.name, "replicas": {"ready": 1}} for p in scenario.pools],
        **batch,
    }
    out = service.decide(RecommendationRequest.model_validate(body))
    assert out.source == "policy", out.reasons
    assert "batch_unknown" not in out.causes


def test_the_service_feeds_the_batch_entries_the_simulator_observes():
    """For the same cluster state, the observation built from the service's request body
    (through JSON and the service's parsing) is the kernel's, batch entries included."""
    from rlscale.training.export import manifest_for

    sim = ClusterSimulator(SCENARIO, 1)
    sim.reset_cluster(0, np.random.default_rng(3))
    manifest = manifest_for(sim, name="x", sha256="0" * 64)
    service = DecisionService(sim.scenario, None, load_policy("hpa", sim.scenario))
    names = sim.observation_names
    batch_at = [names.index(f[0]) for f in BATCH_FEATURES]
    rng = np.random.default_rng(4)
    seen = np.zeros(len(batch_at))
    for step in range(60):
        # scaled to nothing for the first half, so batch requests queue; then at random
        action = np.zeros_like(sim.action_nvec) if step < 30 else rng.integers(0, sim.action_nvec)
        sim.step(action[None, :])
        state = observe(sim, 0)
        body = RecommendationRequest.from_state(
            state, timestamp=EPOCH_MONDAY_S + state.time_of_week_s
        )
        request = RecommendationRequest.model_validate_json(body.model_dump_json())
        got = observation_from_state(service.to_state(request), manifest)
        close = np.isclose(got, sim.obs[0], rtol=1e-6, atol=1e-7)
        assert close.all(), (step, [names[k] for k in np.flatnonzero(~close)])
        seen = np.maximum(seen, sim.obs[0][batch_at])
    assert (seen > 0).all(), "the batch entries were never exercised"


@pytest.mark.parametrize(
    ("batch", "want"),
    [
        (BATCH, (120.0, 15.0, 1800.0)),
        ({"batch_queue": 120.0}, (0.0, 0.0, 0.0)),
        ({"batch_queue": 1e12, "batch_arrival_rate_rps": 15.0}, (0.0, 0.0, 0.0)),
    ],
)
def test_the_state_carries_the_batch_class_whole_or_not_at_all(batch, want):
    """Any policy reading the state (the spot-aware baseline sizes spot for the backlog) sees
    the batch class as reported, or none: never a clipped or half-known backlog."""
    service = DecisionService(
        load_scenario(SCENARIO), None, load_policy("hpa", load_scenario(SCENARIO))
    )
    state = service.to_state(_body(**batch))
    assert (state.batch_queue, state.batch_arrival_rate_rps, state.batch_deadline_s) == want


def test_rlscale_serve_answers_from_the_batch_policy_over_http(batch_policy, server_factory, auth):
    """The whole path: a real `rlscale serve` loads the export and decides on a pushed body
    with the batch inputs; without them the fallback answers, with its cause."""
    import time

    import httpx

    server = server_factory("--scenario", SCENARIO, "--policy", str(batch_policy))

    def push(**batch: float) -> dict:
        body = _body(**batch).model_dump(exclude_none=True)
        body["timestamp"] = time.time()
        r = httpx.post(server.url + "/v1/recommendations", json=body, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    served = push(**BATCH)
    assert served["source"] == "policy", served["reasons"]
    assert served["policy_version"].startswith(f"ppo-{SCENARIO}-0@")
    fallen = push()
    assert fallen["source"] == "fallback"
    assert "batch_unknown" in fallen["causes"]
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'rlscale_fallback_causes_total{cause="batch_unknown"} 1.0' in metrics


def _spot_body(spot: int, **batch: float | None) -> RecommendationRequest:
    """One on-demand replica for a quiet interactive load, ``spot`` spot replicas working
    off a batch backlog."""
    return _body(h100=1, spot=spot, rate=0.5, gpu_util=0.3, **batch)


def test_the_spot_aware_baseline_served_with_batch_work_falls_back_without_the_batch_inputs(
    eager_hpa,
):
    """It sizes spot for the batch backlog: without the batch inputs it would read no backlog
    and scale the spot replicas working it off down; the fallback decides and holds them."""
    backlog = {"batch_queue": 60000.0, "batch_arrival_rate_rps": 2.0}
    service = _service("spot_aware", eager_hpa)
    known = service.decide(_spot_body(4, **backlog))
    assert known.source == "policy", known.reasons
    assert known.replicas["h100-spot"] >= 4  # the backlog keeps its spot replicas
    # what the baseline itself makes of a request without them: no backlog, fewer spot
    blind = load_policy("spot_aware", load_scenario(SCENARIO)).policy
    state = service.to_state(_spot_body(4))
    decision, _ = blind.decide(state, blind.initial_memory())
    assert decision.replicas["h100-spot"] < 4
    for batch in ({}, {"batch_queue": float("nan"), "batch_arrival_rate_rps": 2.0}):
        out = _service("spot_aware", eager_hpa).decide(_spot_body(4, **batch))
        assert out.source == "fallback", out.reasons
        assert "batch_unknown" in out.causes
        assert out.replicas["h100-spot"] == 4, out.reasons
