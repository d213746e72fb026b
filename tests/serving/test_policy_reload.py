"""Hot reload: a new policy is verified and swapped in, a bad one refused while the old serves.

In process (the watcher and the service, with baselines' parameter files), then against the
real server: an exported ONNX artifact replaced on disk, and an MLflow registry alias moved in
MLflow's own SQLite store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from rlscale.agents.onnx_policy import MANIFEST_NAME, MODEL_NAME
from rlscale.envs.scenario import ScenarioError, load_scenario
from rlscale.serving.reload import PolicyReloader, start_policy
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.service import (
    DecisionService,
    load_policy,
    policy_kind,
    policy_signature,
)

SCENARIO = load_scenario("azure-conv")
WAIT_S = 20.0


def _service(policy) -> DecisionService:
    return DecisionService(SCENARIO, policy, load_policy("hpa", SCENARIO))


def _write_params(path: Path, target: float) -> None:
    # a new inode each time, as editors and ConfigMap updates do
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"target_utilization": target}))
    os.replace(tmp, path)


@pytest.fixture
def decide(make_body):
    """``decide(service, **body_overrides)``: one in-process decision."""

    def run(service: DecisionService, **kw):
        return service.decide(RecommendationRequest.model_validate(make_body(**kw)))

    return run


@pytest.fixture
def watched(tmp_path):
    """``(params file, service, reloader)``: HPA from a parameter file the test may rewrite."""
    params = tmp_path / "hpa.json"
    _write_params(params, 0.5)
    service, reloader, _ = start_policy(_service, f"hpa={params}", SCENARIO, interval_s=1)
    return params, service, reloader


# --- in process ---------------------------------------------------------------------------------


def test_a_changed_parameter_file_is_swapped_in(tmp_path, decide):
    params = tmp_path / "hpa.json"
    _write_params(params, 0.5)
    service, reloader, error = start_policy(_service, f"hpa={params}", SCENARIO, interval_s=1)
    assert error == ""
    first = service.policy_version
    decide(service, cluster="a")
    assert reloader.check() is None  # nothing changed
    _write_params(params, 0.7)
    event = reloader.check()
    assert event is not None and event.result == "loaded"
    assert service.policy_version == event.version != first
    assert service.policy.policy.config()["target_utilization"] == 0.7
    assert decide(service, cluster="a").policy_version == event.version


def test_a_bad_file_is_refused_once_and_the_old_policy_keeps_serving(watched, decide):
    params, service, reloader = watched
    good = service.policy_version
    params.write_text("{broken")
    event = reloader.check()
    assert event is not None and event.result == "refused"
    assert "cannot read" in event.error
    assert service.policy_version == good
    assert reloader.check() is None  # the same bad file is not tried again
    assert reloader.status()["last_error"] == event.error
    response = decide(service)
    assert response.source == "policy" and response.policy_version == good
    _write_params(params, 0.6)
    assert reloader.check().result == "loaded"
    assert reloader.status()["last_error"] is None


def test_the_same_version_again_is_not_swapped(watched, decide):
    """A touched file (or a poll during a write) reloads the same version: memories stay."""
    params, service, reloader = watched
    for _ in range(3):
        decide(service, cluster="a", rate_rps=40.0)
    memory = service._memory["a"].policy
    assert memory != service.policy.policy.initial_memory()
    _write_params(params, 0.5)  # same content, new file
    assert reloader.check() is None
    assert service._memory["a"].policy == memory
    assert reloader.check() is None  # and the new signature is remembered


def test_an_empty_artifact_folder_is_an_artifact_waiting_for_its_files(tmp_path):
    folder = tmp_path / "policy"
    folder.mkdir()
    assert policy_kind(str(folder)) == "onnx"
    service, _, error = start_policy(_service, str(folder), SCENARIO)
    assert "no manifest" in error and not service.is_ready()


def test_a_registry_error_is_retried_at_every_poll(exported_policy, tmp_path, decide):
    """No alias yet (as a registry away) is temporary: every poll asks again, and the first
    one that finds the version loads it."""
    pytest.importorskip("mlflow")
    from rlscale.training.export import register_policy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        spec = "models:/rlscale-policy@champion"
        service, reloader, error = start_policy(_service, spec, SCENARIO)
        assert error and not service.is_ready()
        for _ in range(2):
            assert reloader.check() is None
            assert "cannot check models:/rlscale-policy@champion" in reloader.last_error
        register_policy(exported_policy(0), tracking_uri=uri)
        assert reloader.check().result == "loaded"
        assert decide(service).source == "policy"
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_swap_restarts_every_clusters_policy_memory(watched, decide):
    """After a swap a cluster decides as a new one would: the old policy's windows are gone."""
    params, service, reloader = watched
    for cluster in ("a", "b"):
        for _ in range(3):
            decide(service, cluster=cluster, rate_rps=40.0)
    # control: HPA's scale-down stabilization remembers the peak, a new cluster does not
    # (the policy's own answer: the service's guardrails keep their own per-cluster memory)
    assert decide(service, cluster="a", rate_rps=5.0).policy_reason != (
        decide(service, cluster="new-1", rate_rps=5.0).policy_reason
    )
    _write_params(params, 0.6)
    assert reloader.check().result == "loaded"
    assert decide(service, cluster="b", rate_rps=5.0).policy_reason == (
        decide(service, cluster="new-2", rate_rps=5.0).policy_reason
    )


def test_without_a_policy_the_fallback_answers_and_the_service_is_not_ready(decide):
    service = _service(None)
    assert not service.is_ready()
    response = decide(service)
    assert response.source == "fallback"
    assert response.policy_version == "none"
    assert "no policy loaded" in response.reasons
    assert sum(response.replicas.values()) >= 1


def test_an_artifact_that_fails_at_startup_starts_the_service_not_ready(tmp_path):
    folder = tmp_path / "policy"
    folder.mkdir()
    service, reloader, error = start_policy(_service, str(folder / "model.onnx"), SCENARIO)
    assert policy_kind(str(folder / "model.onnx")) == "onnx"
    assert "no manifest" in error
    assert not service.is_ready()
    assert reloader.last_error == error


def test_a_baseline_that_fails_at_startup_is_a_configuration_error():
    with pytest.raises(ScenarioError, match="unknown policy 'hpaa'"):
        start_policy(_service, "hpaa", SCENARIO)


@pytest.mark.parametrize(
    "spec", ["models:/", "models:/x@", "models:/@champion", "models:/x/latest", "models:/x"]
)
def test_malformed_registry_uris_say_what_is_expected(spec):
    with pytest.raises(ScenarioError, match="expected models:/NAME"):
        policy_signature(spec)


def test_reload_interval_must_be_positive():
    with pytest.raises(ValueError, match="reload interval"):
        PolicyReloader(_service(None), "hpa", SCENARIO, interval_s=0)


# --- on a live server ---------------------------------------------------------------------------


def _install(src: Path, dst: Path) -> None:
    """Replace the artifact at ``dst`` with ``src``'s: the model first, the manifest last."""
    dst.mkdir(exist_ok=True)
    for name in (MODEL_NAME, MANIFEST_NAME):
        tmp = dst / f".{name}.new"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)


class Api:
    """The calls these tests make to a live server."""

    def __init__(self, body: dict, auth: dict[str, str]) -> None:
        self.body = body
        self.auth = auth

    def version(self, server) -> tuple[str, str, list[str]]:
        """(policy_version, source, reasons) of one recommendation (kept in ``last``)."""
        self.body["timestamp"] = time.time()  # fresh metrics each time
        r = httpx.post(f"{server.url}/v1/recommendations", json=self.body, headers=self.auth)
        assert r.status_code == 200, r.text
        self.last = r.json()
        return self.last["policy_version"], self.last["source"], self.last["reasons"]

    def status(self, server) -> dict:
        r = httpx.get(f"{server.url}/v1/policy", headers=self.auth)
        assert r.status_code == 200
        return r.json()

    @staticmethod
    def reload_count(server, result: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        key = f'rlscale_policy_reloads_total{{result="{result}"}}'
        lines = [ln for ln in text.splitlines() if ln.startswith(key)]
        return float(lines[0].split()[-1]) if lines else 0.0


@pytest.fixture
def api(make_body, auth) -> Api:
    return Api(make_body(), auth)


def _wait_for(predicate, what: str, server) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {WAIT_S} s: {what}\n{server.log_path.read_text()}")


def test_live_server_swaps_a_new_artifact_and_refuses_a_corrupt_one(
    exported_policy, server_factory, tmp_path, api
):
    first, second = exported_policy(0), exported_policy(1)
    live = tmp_path / "live"
    _install(first, live)
    server = server_factory("--policy", str(live), "--reload-interval-s", "0.2")
    v1, source, _ = api.version(server)
    assert source == "policy" and v1.startswith("ppo-azure-conv-0@")
    assert httpx.get(f"{server.url}/readyz").json()["policy_version"] == v1

    _install(second, live)
    _wait_for(lambda: api.version(server)[0] != v1, "the new artifact serves", server)
    v2, source, _ = api.version(server)
    assert source == "policy" and v2.startswith("ppo-azure-conv-1@")
    assert api.reload_count(server, "loaded") == 1
    assert f'version="{v2}"' in httpx.get(f"{server.url}/metrics").text

    # a model replaced by garbage of the same size, its manifest untouched (a poll between
    # _install's two renames may already have refused the new model beside the old manifest)
    refused = api.reload_count(server, "refused")
    size = (live / MODEL_NAME).stat().st_size
    (live / MODEL_NAME).write_bytes(os.urandom(size))
    _wait_for(
        lambda: api.reload_count(server, "refused") == refused + 1,
        "the corrupt model refused",
        server,
    )
    status = api.status(server)
    assert "checksum mismatch" in status["reload"]["last_error"]
    assert status["policy"]["version"] == v2
    for _ in range(5):
        version, source, _ = api.version(server)
        assert (version, source) == (v2, "policy")
    assert server.alive()


def test_live_server_started_on_a_corrupt_artifact_falls_back_until_a_good_one_lands(
    exported_policy, server_factory, tmp_path, api
):
    grpc = pytest.importorskip("grpc")
    from rlscale.serving import externalscaler_pb2 as pb
    from rlscale.serving import externalscaler_pb2_grpc as pb_grpc

    live = tmp_path / "live"
    _install(exported_policy(0), live)
    (live / MODEL_NAME).write_bytes(b"not an onnx model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        grpc_port = sock.getsockname()[1]
    server = server_factory(
        "--policy", str(live), "--reload-interval-s", "0.2", "--grpc-port", str(grpc_port)
    )
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert "checksum mismatch" in ready.json()["reason"]
    version, source, reasons = api.version(server)
    assert (version, source) == ("none", "fallback")
    assert "no policy loaded" in reasons
    # KEDA, through the real gRPC server: the fallback's numbers, and a pool the fallback
    # would run at zero stays active while the service does not know (not ready)
    fallback = api.last
    idle = [pool for pool, n in fallback["replicas"].items() if n == 0]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        for pool, n in fallback["replicas"].items():
            metadata = {"cluster": api.body["cluster_id"], "pool": pool}
            ref = pb.ScaledObjectRef(name=pool, namespace="t", scalerMetadata=metadata)
            got = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5)
            assert got.metricValues[0].metricValueFloat == pytest.approx(n, abs=1e-3)
            assert stub.IsActive(ref, timeout=5).result is True
    assert idle, "the test needs a pool the fallback runs at zero"
    _install(exported_policy(0), live)
    _wait_for(
        lambda: httpx.get(f"{server.url}/readyz").status_code == 200, "ready once loaded", server
    )
    assert api.version(server)[1] == "policy"


def test_live_server_follows_a_registry_alias(exported_policy, server_factory, tmp_path, api):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from rlscale.training.export import register_policy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1 = register_policy(exported_policy(0), tracking_uri=uri)
    server = server_factory(
        "--policy",
        "models:/rlscale-policy@champion",
        "--reload-interval-s",
        "0.2",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    # the registry is read in the background: the service answers before it is ready
    _wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, "loaded", server)
    first, source, _ = api.version(server)
    assert source == "policy" and first.startswith("ppo-azure-conv-0@")
    assert api.status(server)["policy"]["origin"] == f"models:/rlscale-policy/{v1}"

    v2 = register_policy(exported_policy(1), tracking_uri=uri)  # moves the alias
    assert v2 == v1 + 1
    _wait_for(lambda: api.version(server)[0] != first, "the alias' new version serves", server)
    second = api.version(server)[0]
    assert second.startswith("ppo-azure-conv-1@")

    # a version whose files were damaged after export: registered by hand, alias moved to it
    bad = tmp_path / "bad"
    shutil.copytree(exported_policy(0), bad)
    (bad / MODEL_NAME).write_bytes((bad / MODEL_NAME).read_bytes()[:-10])
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.get_experiment_by_name("rlscale-policies").experiment_id)
    client.log_artifacts(run.info.run_id, str(bad), artifact_path="policy")
    mv = client.create_model_version(
        "rlscale-policy", source=f"{run.info.artifact_uri}/policy", run_id=run.info.run_id
    )
    client.set_registered_model_alias("rlscale-policy", "champion", mv.version)
    _wait_for(lambda: api.reload_count(server, "refused") == 1, "the bad version refused", server)
    assert "checksum mismatch" in api.status(server)["reload"]["last_error"]
    assert api.version(server)[:2] == (second, "policy")


def test_every_reason_has_its_cause_code(decide):
    """Each kind of reason the service and its guardrails give maps to one documented code."""
    from rlscale.serving.causes import Cause, codes
    from rlscale.serving.guardrails import guard
    from rlscale.serving.service import default_guardrails

    service = _service(None)
    out = decide(service, age_s=600)
    assert out.causes == ["stale_metrics", "no_policy", "fallback_decided"]
    assert out.reasons[0].startswith("stale metrics: ")
    rails = default_guardrails(SCENARIO, min_replicas={"a100": 1}, max_total_replicas=3)
    _, _, guard_reasons = guard(
        {"h100": 9, "a100": 0, "h100-spot": 0},
        {"h100": 99},
        {"h100": 2, "a100": 0, "h100-spot": 4},
        rails,
    )
    assert codes(guard_reasons) == [
        "step_up_limited",
        "step_down_limited",
        "min_replicas",
        "cluster_quota",
        "warm_pool_limited",
    ]
    assert all(isinstance(r.cause, Cause) for r in guard_reasons)
    assert str(guard_reasons[0]) == "h100: step up limited to +4 (asked 9, current 2)"
