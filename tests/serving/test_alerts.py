"""The alerting rules shipped in ``deploy/prometheus``: valid, unit-tested with promtool, and
written only with series the service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rlscale.envs.scenario import load_scenario
from rlscale.serving.budgets import BudgetConfig
from rlscale.serving.service import DecisionService, load_policy

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rlscale-alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rlscale-alerts.test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool (Debian package 'prometheus'; CI installs it)"
)
SUFFIXES = {
    "counter": ("_total",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def exported_series() -> set[str]:
    """Every series name the service's ``/metrics`` can show, budgets and all."""
    scenario = load_scenario("azure-conv")
    hpa = load_policy("hpa", scenario)
    service = DecisionService(
        scenario, hpa, hpa, budgets=[BudgetConfig(name="b", period="day", limit_usd=1.0)]
    )
    names = set()
    for family in service.recorder.metrics.registry.collect():
        names.update(family.name + s for s in SUFFIXES[family.type])
    return names


@needs_promtool
def test_rules_are_valid_and_pass_their_promtool_tests():
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_rules_use_only_series_the_service_exports():
    exported = exported_series()
    assert "rlscale_budget_projected_spend_usd" in exported  # the check can see budgets
    used = set()
    for rule in _rules():
        text = rule["expr"] + " ".join(rule.get("annotations", {}).values())
        used.update(re.findall(r"\brlscale_[a-z_]+\b", text))
    assert used, "no rlscale series in the rules"
    assert used <= exported, f"not exported by the service: {sorted(used - exported)}"


def test_each_alert_has_a_firing_and_a_silent_case():
    """Each alert is tested where it fires and where it must not."""
    alerts = {r["alert"] for r in _rules()}
    assert alerts == {
        "RlscaleBudgetProjectedBreach",
        "RlscaleSloAttainmentBelowTarget",
        "RlscaleFallbackRateHigh",
        "RlscalePolicyStale",
    }
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == alerts and silent == alerts


def test_the_series_the_rules_read_follow_the_service():
    """The SLO and reload series move with what the service sees (not only exist)."""
    from rlscale.serving.schemas import RecommendationRequest

    scenario = load_scenario("azure-conv")
    hpa = load_policy("hpa", scenario)
    service = DecisionService(scenario, hpa, hpa)
    metrics = service.recorder.metrics
    error = {"text": ""}
    metrics.watch_reloader(lambda: error["text"])

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("rlscale_slo_attainment_target") == scenario.slo.target_attainment
    assert value("rlscale_policy_reload_failing") == 0.0
    error["text"] = "cannot check models:/x@champion: registry away"
    assert value("rlscale_policy_reload_failing") == 1.0
    body = {"cluster_id": "prod", "arrival_rate_rps": 5.0, "slo_attainment": 0.93}
    pools = [{"name": p.name, "replicas": {"ready": 1}} for p in scenario.pools]
    service.decide(
        RecommendationRequest.model_validate({**body, "timestamp": service.clock(), "pools": pools})
    )
    assert value("rlscale_slo_attainment", cluster="prod") == 0.93
    # an attainment out of range is not shown as measured
    service.decide(
        RecommendationRequest.model_validate(
            {**body, "slo_attainment": 7.0, "timestamp": service.clock(), "pools": pools}
        )
    )
    assert value("rlscale_slo_attainment", cluster="prod") == 0.93
