"""The deploy files agree with the code: scenario schema, pool names, ports, entry point,
the token the operator creates, Prometheus, KEDA's fallback, the volume's owner, the namespace.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rlscale.envs.scenario import scenario_from_dict
from rlscale.serving.base import TOKEN_ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "rlscale.yaml"
NAMESPACE_VAR = "RLSCALE_NAMESPACE"


def _docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def _container(docs: dict[str, dict]) -> dict:
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_embedded_scenario_validates_and_names_the_scaled_pool():
    docs = _docs()
    scenario = scenario_from_dict(
        yaml.safe_load(docs["ConfigMap"]["data"]["cluster.yaml"]), "ConfigMap rlscale-scenario"
    )
    trigger = docs["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["type"] == "external"
    assert trigger["metadata"]["pool"] in [p.name for p in scenario.pools]


def test_ports_agree_between_image_deployment_service_and_keda():
    docs = _docs()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"--port", "8080", "--grpc-port", "9090"' in dockerfile
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 9090}
    service_ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == {"http": 8080, "grpc": 9090}
    address = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["scalerAddress"]
    service = docs["Service"]["metadata"]["name"]
    assert address == f"{service}.${{{NAMESPACE_VAR}}}.svc.cluster.local:9090"


def test_deployment_reads_the_mounted_scenario_and_the_token_secret():
    docs = _docs()
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    scenario_path = args[args.index("--scenario") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert scenario_path == mounts["config"] + "/cluster.yaml"
    env = {e["name"]: e for e in container["env"]}
    secret = env[TOKEN_ENV_VAR]["valueFrom"]["secretKeyRef"]
    # the fallback answers before a policy loads: traffic must reach it (see the manifest)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # no token ships: the operator creates it with the command at the top, same name and key
    assert "Secret" not in docs
    assert not secret.get("optional", False)
    assert "change-me" not in MANIFEST.read_text()
    create = re.search(
        r"create secret generic (\S+) \\\n#\s+--from-literal=(\w+)=", MANIFEST.read_text()
    )
    assert create is not None and create.groups() == (secret["name"], secret["key"])
    assert "--insecure-no-auth" not in container["args"]


def test_metrics_come_from_prometheus_for_the_cluster_keda_names():
    docs = _docs()
    args = _container(docs)["args"]
    assert _arg(args, "--prometheus-url").startswith("http")
    trigger = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert trigger["cluster"] == _arg(args, "--cluster-id")


def test_keda_fallback_never_goes_below_the_current_count():
    fallback = _docs()["ScaledObject"]["spec"]["fallback"]
    assert fallback["failureThreshold"] >= 1 and fallback["replicas"] >= 1
    assert fallback["behavior"] == "currentReplicasIfHigher"


def test_the_shadow_volume_belongs_to_the_images_user():
    uid = re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
    security = _docs()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security["fsGroup"] == security["runAsUser"] == int(uid)


def test_the_namespace_is_one_setting():
    """No document names a namespace; the one place that must (KEDA dials the scaler by its
    DNS name) takes it from the variable the apply command substitutes."""
    text = MANIFEST.read_text()
    for doc in yaml.safe_load_all(text):
        assert "namespace" not in doc["metadata"], doc["kind"]
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    assert re.findall(r"\$\{?(\w+)", body) == [NAMESPACE_VAR]
    assert f"envsubst '${NAMESPACE_VAR}'" in text
    assert f'kubectl apply -n "${NAMESPACE_VAR}"' in text


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="needs envsubst (gettext-base)")
def test_the_apply_command_puts_the_namespace_in_the_scaler_address():
    done = subprocess.run(
        ["envsubst", f"${NAMESPACE_VAR}"],
        input=MANIFEST.read_text(),
        env={NAMESPACE_VAR: "team-a"},
        capture_output=True,
        text=True,
        check=True,
    )
    docs = {d["kind"]: d for d in yaml.safe_load_all(done.stdout)}
    address = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["scalerAddress"]
    assert address == "rlscale.team-a.svc.cluster.local:9090"
