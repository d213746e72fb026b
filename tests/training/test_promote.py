"""The promotion gate, end to end: a real MLflow SQLite store, real ONNX exports.

The policies are stable-baselines3 PPO models whose action head is fixed (zero weights, a large
bias on one index of every head), so their deterministic action is known and their cost is
not luck: ``hold`` keeps the scenario's initial fleet (2 H100, 4 USD per half-hour episode),
``surge`` adds ``max_step`` replicas to every pool at every step until the quotas (about 17 USD).
A tuned ``static`` baseline of 3 H100 (6 USD) sits between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("mlflow")
pytest.importorskip("stable_baselines3")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from rlscale.cli import main
from rlscale.training.promote import PromotionError, decide, promote

GATE = {"seeds": 3, "max_windows": 2}


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory, quick_raw) -> Path:
    """The quick scenario (tests/conftest.py): 60-step episodes, 6 held-out windows."""
    path = tmp_path_factory.mktemp("scenario") / "promote-quick.yaml"
    path.write_text(yaml.safe_dump(quick_raw("promote-quick")))
    return path


@pytest.fixture(scope="module")
def fixed_policy(scenario_file, tmp_path_factory):
    """``make(kind) -> folder``: ``hold`` or ``surge`` exported (once per module)."""
    import torch
    from stable_baselines3 import PPO

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv
    from rlscale.envs.scenario import load_scenario
    from rlscale.training.export import export_ppo

    sc = load_scenario(scenario_file)
    venv = InferenceClusterVecEnv(1, scenario=sc)
    pools = len(sc.pools)
    cache: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in cache:
            step = {"hold": 0, "surge": sc.max_step}[kind]
            model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, device="cpu", seed=0)
            nvec = [int(n) for n in venv.sim.action_nvec]
            bias = torch.full((sum(nvec),), -20.0)
            offset = 0
            for head, n in enumerate(nvec):
                # replica heads: index max_step is "no change"; warm-pool heads: size 0
                bias[offset + (sc.max_step + step if head < pools else 0)] = 20.0
                offset += n
            with torch.no_grad():
                model.policy.action_net.weight.zero_()
                model.policy.action_net.bias.copy_(bias)
            folder = tmp_path_factory.mktemp(f"policy-{kind}")
            # the manifest records the scenario's path, as a run trained on a YAML file would
            export_ppo(
                model, venv.sim, folder, name=kind, training={"scenario": str(scenario_file)}
            )
            cache[kind] = folder
        return cache[kind]

    return make


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); each test registers its
    own model name in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@dataclass(frozen=True)
class Registry:
    uri: str
    name: str
    """This test's registered model."""

    def register(self, folder: Path, alias: str) -> int:
        from rlscale.training.export import register_policy

        return register_policy(folder, model_name=self.name, alias=alias)

    def aliases(self) -> dict[str, str]:
        model = self.client().get_registered_model(self.name)
        return {alias: str(v) for alias, v in model.aliases.items()}

    def tags(self, version: int) -> dict[str, str]:
        return self.client().get_model_version(self.name, str(version)).tags

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture
def registry(store, request, monkeypatch) -> Registry:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return Registry(store, request.node.name.removeprefix("test_")[:16])


@pytest.fixture
def tuned(tmp_path) -> Path:
    """A tuning folder with one tuned baseline: ``static`` at 3 H100."""
    folder = tmp_path / "tuning"
    folder.mkdir()
    params = {"params": {"replicas": {"h100": 3, "a100": 0}}}
    (folder / "static.json").write_text(json.dumps(params))
    return folder


def test_a_cheaper_challenger_is_promoted_over_champion_and_tuned_baseline(
    fixed_policy, registry, tuned, tmp_path, capsys
):
    surge = registry.register(fixed_policy("surge"), "champion")
    hold = registry.register(fixed_policy("hold"), "challenger")
    out = tmp_path / "out"
    argv = ["promote", "--name", registry.name, "--tuning-dir", str(tuned), "--out", str(out)]
    argv += ["--seeds", str(GATE["seeds"]), "--max-windows", str(GATE["max_windows"])]
    argv += ["--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"PROMOTED ppo[{registry.name}@challenger=v{hold}]" in printed
    assert "| static[tuned] | best baseline |" in printed
    last = json.loads(printed.strip().splitlines()[-1])
    assert last["verdict"] == "promoted" and last["moved"] is True

    assert registry.aliases() == {"champion": str(hold), "challenger": str(hold)}
    tags = registry.tags(hold)
    assert tags["promotion.verdict"] == "promoted"
    assert tags["promotion.run_id"] == last["mlflow_run_id"]
    assert "promotion.verdict" not in registry.tags(surge)

    report = json.loads((out / "promotion.json").read_text())
    assert report["scenario"] == "promote-quick"  # from the challenger's manifest
    roles = {c["role"]: c for c in report["comparisons"]}
    assert set(roles) == {"champion", "best baseline"}
    assert roles["champion"]["cells"] == GATE["seeds"] * GATE["max_windows"]
    # hold (4 USD) against static at 3 H100 (6 USD): fixed fleets, the same in every cell
    assert roles["best baseline"]["cost_diff_usd"]["mean"] == pytest.approx(-2.0)
    assert roles["champion"]["cost_diff_usd"]["ci95"][1] < -5.0
    for name in ("promotion.md", "results.json", "report.html"):
        assert (out / name).is_file(), name

    client = registry.client()
    run = client.get_run(last["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "rlscale-policies"
    assert run.data.metrics["promote/promoted"] == 1.0
    assert run.data.params["verdict"] == "promoted"
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"promotion.json", "promotion.md", "results.json", "report.html"} <= logged


def test_a_costlier_challenger_is_refused_and_the_champion_stays(
    fixed_policy, registry, tuned, tmp_path, capsys
):
    hold = registry.register(fixed_policy("hold"), "champion")
    surge = registry.register(fixed_policy("surge"), "challenger")
    result = promote(registry.name, tuning_dir=tuned, out_dir=tmp_path / "out", **GATE)
    assert not result.decision.promote and not result.moved
    assert result.decision.reason.startswith("not cheaper than the champion")
    assert len(result.decision.reasons) == 2  # the tuned baseline beats it too
    assert registry.aliases() == {"champion": str(hold), "challenger": str(surge)}
    assert registry.tags(surge)["promotion.verdict"] == "refused"
    assert "REFUSED" in (tmp_path / "out" / "promotion.md").read_text()


def test_without_tuned_baselines_the_defaults_are_used_and_said(fixed_policy, registry, tmp_path):
    """With no champion, the best baseline alone is the bar; untuned, knative holds the fleet
    closer to the load than a fixed 2 H100, so hold is refused."""
    registry.register(fixed_policy("hold"), "challenger")
    result = promote(registry.name, tuning_dir=tmp_path / "none", out_dir=tmp_path / "out", **GATE)
    note = result.report["baselines"]["note"]
    assert note.startswith("no tuned baselines") and "with its defaults" in note
    assert "spot_aware" in note  # it needs a spot pool: left out, and named
    assert [c.role for c in result.decision.comparisons] == ["best baseline"]
    assert not result.decision.promote
    assert "not cheaper than the best baseline" in result.decision.reason


def test_dry_run_decides_but_moves_and_tags_nothing(fixed_policy, registry, tuned, tmp_path):
    surge = registry.register(fixed_policy("surge"), "champion")
    hold = registry.register(fixed_policy("hold"), "challenger")
    result = promote(
        registry.name, tuning_dir=tuned, out_dir=tmp_path / "out", dry_run=True, **GATE
    )
    assert result.decision.promote and not result.moved
    assert result.report["verdict"] == "would promote (dry run)"
    assert registry.aliases()["champion"] == str(surge)
    assert not any(k.startswith("promotion.") for k in registry.tags(hold))


def test_errors_exit_nonzero_with_the_reason(fixed_policy, registry, tmp_path, capsys):
    argv = ["promote", "--name", registry.name, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert f"registered model '{registry.name}'" in capsys.readouterr().err

    registry.register(fixed_policy("hold"), "champion")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no 'challenger' alias" in err and "--alias challenger" in err

    registry.register(fixed_policy("hold"), "challenger")
    pools = r"scenario azure-conv has pools .* the challenger v2 was trained on"
    with pytest.raises(PromotionError, match=pools):
        promote(registry.name, scenario="azure-conv", out_dir=tmp_path / "o", **GATE)


def test_a_champion_trained_on_other_pools_cannot_be_compared(
    fixed_policy, exported_policy, registry, tmp_path
):
    registry.register(exported_policy(0), "champion")  # azure-conv: three pools, one spot
    registry.register(fixed_policy("hold"), "challenger")
    with pytest.raises(PromotionError, match="trained on different pools"):
        promote(registry.name, out_dir=tmp_path / "o", **GATE)


def test_a_challenger_that_is_already_champion_is_an_error(fixed_policy, registry, tmp_path):
    version = registry.register(fixed_policy("hold"), "champion")
    registry.client().set_registered_model_alias(registry.name, "challenger", str(version))
    with pytest.raises(PromotionError, match="already promoted"):
        promote(registry.name, out_dir=tmp_path / "o", **GATE)


def test_an_unreachable_store_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    argv = ["promote", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "http://127.0.0.1:9" in capsys.readouterr().err


def _episodes(policy: str, costs: list[float], attainment: list[float]) -> list[dict[str, Any]]:
    return [
        {"policy": policy, "seed": k, "start_step": 0, "cost_usd": c, "slo_attainment": a}
        for k, (c, a) in enumerate(zip(costs, attainment, strict=True))
    ]


def test_the_rule_needs_the_whole_interval_on_the_right_side():
    champ = _episodes("champ", [10.0, 10.0, 10.0, 10.0], [1.0] * 4)
    # cheaper on average (-1), but one cell dearer: the interval reaches above 0
    noisy = _episodes("new", [7.0, 8.0, 9.0, 12.0], [1.0] * 4)
    verdict = decide(champ + noisy, "new", {"champ": "champion"}, 0.99)
    assert not verdict.promote
    assert verdict.comparisons[0].cost_diff_usd["mean"] == pytest.approx(-1.0)
    # cheaper everywhere, mean attainment 99.25% above the target, but its interval is not
    cheap = _episodes("new", [8.0, 8.1, 7.9, 8.0], [1.0, 0.98, 1.0, 0.99])
    verdict = decide(champ + cheap, "new", {"champ": "champion"}, 0.99)
    assert not verdict.promote and "lower end is below the 99.00% target" in verdict.reason
    steady = _episodes("new", [8.0, 8.1, 7.9, 8.0], [0.995, 0.996, 0.995, 0.996])
    assert decide(champ + steady, "new", {"champ": "champion"}, 0.99).promote
    # one cell gives no interval
    single = decide(champ[:1] + steady[:1], "new", {"champ": "champion"}, 0.99)
    assert not single.promote
