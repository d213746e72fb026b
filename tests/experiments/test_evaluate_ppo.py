"""``rlscale evaluate --policy ppo=SPEC``: a trained policy by registry alias, version, run id or
folder evaluates exactly as ``onnx=FOLDER`` does on the same artifact."""

from __future__ import annotations

import pytest

from rlscale.envs.scenario import ScenarioError
from rlscale.experiments.evaluate import evaluate, parse_policy_arg

pytest.importorskip("mlflow")

GRID = {"seeds": 2, "max_windows": 1, "include_oracle": False, "progress": False}


@pytest.fixture
def registered(exported_policy, tmp_path, monkeypatch):
    """exported_policy(0) registered as version 1 of rlscale-policy, alias champion."""
    from mlflow import MlflowClient

    from rlscale.training.export import register_policy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    version = register_policy(exported_policy(0))
    run_id = MlflowClient(tracking_uri=uri).get_model_version("rlscale-policy", version).run_id
    return {"folder": exported_policy(0), "version": version, "run_id": run_id}


def test_every_ppo_spec_evaluates_as_the_onnx_folder(registered, tmp_path):
    folder, v, run_id = registered["folder"], registered["version"], registered["run_id"]
    specs = [
        parse_policy_arg(f"onnx={folder}"),
        parse_policy_arg(f"ppo={folder}"),
        parse_policy_arg("ppo=models:/rlscale-policy@champion", fetch_dir=tmp_path / "fetched"),
        parse_policy_arg(f"ppo=models:/rlscale-policy/{v}"),
        parse_policy_arg(f"ppo={run_id}"),
    ]
    labels = [s.display for s in specs]
    assert labels == [
        f"onnx[{folder.name}]",
        f"ppo[{folder.name}]",
        f"ppo[rlscale-policy@champion=v{v}]",
        f"ppo[rlscale-policy/{v}]",
        f"ppo[run={run_id[:8]}]",
    ]
    assert specs[2].params["origin"] == f"models:/rlscale-policy/{v}"
    assert (tmp_path / "fetched").is_dir()
    episodes = evaluate("azure-conv", specs, **GRID).episodes
    by_label: dict[str, list[tuple]] = {label: [] for label in labels}
    for row in episodes:
        by_label[row["policy"]].append(
            (row["seed"], row["start_step"], row["cost_usd"], row["slo_attainment"])
        )
    reference = by_label[labels[0]]
    assert len(reference) == GRID["seeds"]
    for label in labels[1:]:
        assert by_label[label] == reference, label


def test_an_export_is_loaded_once_per_evaluation_not_per_episode(exported_policy, monkeypatch):
    import rlscale.agents.onnx_policy as onnx_policy

    calls = []
    real = onnx_policy.load_onnx_policy

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_policy, "load_onnx_policy", counting)
    evaluate("azure-conv", [f"ppo={exported_policy(0)}"], **{**GRID, "seeds": 3})
    assert len(calls) == 1


def test_a_ppo_spec_that_names_nothing_says_what_is_expected(registered):
    with pytest.raises(ScenarioError, match="no such folder; SPEC is models:/NAME@ALIAS"):
        parse_policy_arg("ppo=./no-such-export")
    with pytest.raises(ScenarioError, match="cannot fetch it from the registry at sqlite:"):
        parse_policy_arg("ppo=models:/rlscale-policy@nobody")
    with pytest.raises(ScenarioError, match="ppo=SPEC"):
        parse_policy_arg("ppo")
