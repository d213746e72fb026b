"""The deploy files agree with the code: scenario schema, pool names, ports, entry point."""

from __future__ import annotations

from pathlib import Path

import yaml

from rlscale.envs.scenario import scenario_from_dict

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "rlscale.yaml"


def _docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


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
    assert address.startswith(docs["Service"]["metadata"]["name"] + ".")
    assert address.endswith(":9090")


def test_deployment_reads_the_mounted_scenario_and_the_token_secret():
    docs = _docs()
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    scenario_path = args[args.index("--scenario") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert scenario_path == mounts["config"] + "/cluster.yaml"
    env = {e["name"]: e for e in container["env"]}
    secret = env["RLSCALE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == docs["Secret"]["metadata"]["name"]
    assert secret["key"] in docs["Secret"]["stringData"]
    # the fallback answers before a policy loads: traffic must reach it (see the manifest)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
