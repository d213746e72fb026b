"""The exported policy: ONNX export of PPO, the observation from raw metrics, verification."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from rlscale.agents.base import decision_to_action
from rlscale.agents.observe import observe
from rlscale.agents.onnx_policy import (
    MANIFEST_NAME,
    MODEL_NAME,
    ArtifactError,
    load_onnx_policy,
    observation_from_state,
    read_manifest,
    sha256_file,
)
from rlscale.envs.observation import observation_names, observation_size
from rlscale.envs.simulator import ClusterSimulator

onnx = pytest.importorskip("onnx")

OBS_3_POOLS = observation_size(3)
"""Observation entries of the fixtures' scenario (azure-conv: three pools)."""


@pytest.fixture
def artifact(exported_policy, tmp_path: Path) -> Path:
    """A private copy of an exported artifact, free to damage."""
    folder = tmp_path / "policy"
    shutil.copytree(exported_policy(0), folder)
    return folder


def test_onnx_actions_equal_sb3_deterministic_actions(exported_policy):
    folder, model, norm, venv = exported_policy(0, with_model=True)
    policy = load_onnx_policy(folder)
    rng = np.random.default_rng(1)
    lo, hi = venv.sim.obs_low, venv.sim.obs_high
    obs = rng.uniform(lo, np.minimum(hi, lo + 3.0), size=(400, lo.size)).astype(np.float32)
    expected, _ = model.predict(norm.normalize_obs(obs), deterministic=True)
    got = policy.act(obs)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # the normalization is in the graph: the raw observation differs from the normalized one
    assert not np.allclose(norm.normalize_obs(obs), obs)


def _mismatches(names: list[str], got: np.ndarray, want: np.ndarray) -> list[str]:
    """``name: got != want`` for every entry that differs by more than float32 rounding."""
    close = np.isclose(got, want, rtol=1e-6, atol=1e-7)
    return [f"{names[k]}: {got[k]!r} != {want[k]!r}" for k in np.flatnonzero(~close)]


@pytest.mark.parametrize(
    "scenario",
    [
        "azure-conv",
        "spot-traces",
        "synthetic-2week",
        "servegen-m-large",
        "synthetic-4day-budget",
        "azure-conv-batch",
    ],
)
def test_observation_from_state_is_the_simulators_observation(scenario):
    """Raw metrics (what a live cluster reports) give the kernel's observation, every entry."""
    from rlscale.training.export import manifest_for

    sim = ClusterSimulator(scenario, 1)
    sim.reset_cluster(0, np.random.default_rng(3))
    names = sim.observation_names
    rng = np.random.default_rng(4)
    manifest = manifest_for(sim, name="x", sha256="0" * 64)
    if sim.observes_budget:  # the budget's entries come from the state's budget, as served
        assert manifest.observation.budget.name == sim.scenario.budgets[0].name
        assert names[-1] == "budget/time_left_share"
    if scenario == "servegen-m-large":
        assert manifest.observation.cache_hit_ratio > 0  # the cache factor is exercised
    for step in range(60):
        sim.step(rng.integers(0, sim.action_nvec)[None, :])
        got = observation_from_state(observe(sim, 0), manifest)
        assert _mismatches(names, got, sim.obs[0]) == [], f"step {step}"


def test_a_budget_observing_policy_needs_the_budget_in_the_state():
    """The service never guesses a spend: without the observed budget the observation fails
    (and the service falls back)."""
    from dataclasses import replace

    from rlscale.training.export import manifest_for

    sim = ClusterSimulator("synthetic-4day-budget", 1)
    sim.reset_cluster(0, np.random.default_rng(0))
    manifest = manifest_for(sim, name="x", sha256="0" * 64)
    state = observe(sim, 0)
    assert state.budget is not None and state.budget.name == "daily"
    with pytest.raises(ValueError, match=r"observes budget 'daily'.*carries none"):
        observation_from_state(replace(state, budget=None), manifest)
    other = replace(state.budget, name="monthly")
    with pytest.raises(ValueError, match="carries 'monthly'"):
        observation_from_state(replace(state, budget=other), manifest)


def test_the_observation_has_no_entry_without_a_live_counterpart():
    sim = ClusterSimulator("synthetic-2week", 1)  # a scenario with a budget
    assert sim.scenario.budget_usd
    names = observation_names(sim.pool_names)
    assert not {"episode_progress", "budget_spent"} & {n.split("/")[-1] for n in names}
    assert sim.obs.shape[1] == len(names) == 17 + 9 * len(sim.pools)
    sim.reset_cluster(0, np.random.default_rng(0))
    sim.step(sim.noop_action()[None, :])
    info = sim.step_info(0)  # the budget is reported instead
    assert info["cost/budget_spent"] == pytest.approx(info["cost/total_usd"] / 6000)


def test_a_manifest_of_the_older_layout_is_refused_with_the_fix(artifact):
    _edit_manifest(artifact, observation__episode_progress=0.5)
    with pytest.raises(ArtifactError, match=r"older observation layout.*export it again"):
        load_onnx_policy(artifact)


def test_decisions_round_trip_to_the_models_actions(exported_policy):
    policy = load_onnx_policy(exported_policy(0))
    sim = ClusterSimulator("azure-conv", 1)
    sim.reset_cluster(0, np.random.default_rng(0))
    max_step = sim.scenario.max_step
    checked = 0
    for _ in range(40):
        state = observe(sim, 0)
        decision, memory = policy.decide(state, policy.initial_memory())
        assert memory == {}
        action = decision_to_action(decision, state, sim.pool_names, max_step)
        raw = policy.act(observation_from_state(state, policy.manifest)[None, :])[0]
        P = len(sim.pool_names)
        np.testing.assert_array_equal(action[P:], raw[P:])
        for j, pool in enumerate(state.pools):
            target = round(pool.desired) + int(raw[j]) - max_step
            if 0 <= target <= pool.quota:  # else the decision is clipped, as the env would
                assert action[j] == raw[j]
                checked += 1
        sim.step(action[None, :])
    assert checked > 40


def test_exported_files_are_readable_by_all(exported_policy):
    """An export copied into an image is read by the service's own user (uid 10001)."""
    from rlscale.training.export import EXPORT_FILE_MODE

    folder = exported_policy(0)
    for name in (MANIFEST_NAME, MODEL_NAME):
        assert (folder / name).stat().st_mode & 0o777 == EXPORT_FILE_MODE == 0o644, name


def test_manifest_records_layout_and_checksum(exported_policy):
    folder = exported_policy(0)
    manifest = read_manifest(folder)
    assert manifest.model.sha256 == sha256_file(folder / MODEL_NAME)
    assert manifest.pool_names == ["h100", "a100", "h100-spot"]
    assert manifest.observation.names == observation_names(manifest.pool_names)
    assert manifest.training["algorithm"] == "PPO"
    assert manifest.training["scenario"] == "azure-conv"
    assert load_onnx_policy(folder).version == f"ppo-azure-conv-0@{manifest.model.sha256[:12]}"


def _edit_manifest(folder: Path, **changes) -> None:
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    (folder / MANIFEST_NAME).write_text(json.dumps(raw))


def test_corrupt_model_is_refused_by_checksum(artifact):
    blob = bytearray((artifact / MODEL_NAME).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (artifact / MODEL_NAME).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_onnx_policy(artifact)


def test_truncated_model_with_matching_checksum_is_not_loadable(artifact):
    model = artifact / MODEL_NAME
    model.write_bytes(model.read_bytes()[:200])
    _edit_manifest(artifact, model__sha256=sha256_file(model))
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        load_onnx_policy(artifact)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / MANIFEST_NAME).unlink(), "no manifest"),
        (lambda f: (f / MANIFEST_NAME).write_text("{not json"), "unreadable manifest"),
        (lambda f: _edit_manifest(f, format="rlscale-policy/9"), "format"),
        (lambda f: _edit_manifest(f, model__sha256="xyz"), "sha256"),
        (lambda f: _edit_manifest(f, observation__names=["a"] * OBS_3_POOLS), "observation layout"),
        (lambda f: _edit_manifest(f, action__max_step=7), "nvec"),
        (lambda f: _edit_manifest(f, model__file="../model.onnx"), "inside the artifact"),
        (lambda f: (f / MODEL_NAME).unlink(), "unreadable model"),
        (lambda f: _edit_manifest(f, surprise=1), "surprise"),
    ],
)
def test_bad_artifacts_are_refused_with_the_reason(artifact, damage, message):
    damage(artifact)
    with pytest.raises(ArtifactError, match=message):
        load_onnx_policy(artifact)


def test_pools_must_match_the_scenarios(artifact):
    with pytest.raises(ArtifactError, match="differ from the scenario"):
        load_onnx_policy(artifact, pools=["h100", "a100"])


def _graph_model(path: Path, n_in: int, n_out: int, offset: int) -> None:
    """A valid ONNX model: action = int64(observation @ 0) + offset, shape [batch, n_out]."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((n_in, n_out), dtype=np.float32), "w")
    b = numpy_helper.from_array(np.array(offset, dtype=np.int64), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["observation", "w"], ["y"]),
            helper.make_node("Cast", ["y"], ["yi"], to=TensorProto.INT64),
            helper.make_node("Add", ["yi", "b"], ["action"]),
        ],
        "probe",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("action", TensorProto.INT64, ["batch", n_out])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("n_in", "n_out", "offset", "message"),
    [
        (OBS_3_POOLS, 6, 0, None),  # inside the action space: accepted
        (OBS_3_POOLS, 6, 1000, "outside MultiDiscrete"),
        (OBS_3_POOLS, 4, 2, "expected integer actions of shape"),
        (OBS_3_POOLS - 6, 6, 2, f"input width {OBS_3_POOLS - 6}"),
    ],
)
def test_model_interface_is_probed(artifact, n_in, n_out, offset, message):
    model = artifact / MODEL_NAME
    _graph_model(model, n_in, n_out, offset)
    _edit_manifest(artifact, model__sha256=sha256_file(model))
    if message is None:
        policy = load_onnx_policy(artifact)
        assert (policy.act(np.zeros((3, n_in), dtype=np.float32)) == 0).all()
    else:
        with pytest.raises(ArtifactError, match=message):
            load_onnx_policy(artifact)


def test_export_refuses_a_model_of_another_scenario(exported_policy, tmp_path):
    from rlscale.training.export import export_ppo

    _, model, norm, _ = exported_policy(0, with_model=True)
    other = ClusterSimulator("servegen-m-small", 1)
    if other.spaces()[0].shape == model.observation_space.shape:
        pytest.skip("servegen-m-small happens to have the same layout")
    with pytest.raises(ValueError, match="simulator's"):
        export_ppo(model, other, tmp_path / "x", vec_normalize=norm)
    assert not (tmp_path / "x" / MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    ("scenario", "baseline", "share"),
    [
        ("azure-conv", "static", "slo_attainment"),
        ("azure-conv-batch", "spot_aware", "batch_attainment"),
    ],
)
def test_an_exported_policy_is_evaluated_beside_the_baselines(
    exported_policy, scenario, baseline, share
):
    """The export runs in the evaluation beside the baselines; one trained on azure-conv-batch
    (what the learned policy makes of batch work needs it) with the per-class accounting."""
    from rlscale.experiments.evaluate import evaluate, parse_policy_arg

    folder = exported_policy(0, scenario)
    spec = parse_policy_arg(f"onnx={folder}")
    assert spec.display == f"onnx[{folder.name}]"
    result = evaluate(
        scenario,
        [spec, baseline],
        seeds=1,
        max_windows=1,
        include_oracle=False,
        progress=False,
    )
    summary = result.results.policies[spec.display]
    assert summary.mean("cost_usd") > 0
    assert 0.0 <= summary.mean(share) <= 1.0


def test_evaluate_names_a_missing_export():
    from rlscale.envs.scenario import ScenarioError
    from rlscale.experiments.evaluate import parse_policy_arg

    with pytest.raises(ScenarioError, match="no exported policy at /nonexistent"):
        parse_policy_arg("onnx=/nonexistent")


def test_export_takes_the_normalization_from_the_models_env(exported_policy, tmp_path):
    """Forgetting vec_normalize must not export a policy that acts otherwise."""
    from rlscale.training.export import export_ppo

    _, model, norm, venv = exported_policy(0, with_model=True)
    folder = export_ppo(model, venv.sim, tmp_path / "auto")  # no vec_normalize given
    obs = np.random.default_rng(2).uniform(0, 2, (200, venv.sim.obs_low.size))
    obs = np.clip(obs, venv.sim.obs_low, venv.sim.obs_high).astype(np.float32)
    expected, _ = model.predict(norm.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(load_onnx_policy(folder).act(obs), expected)


def test_from_state_is_fresh_by_default():
    from rlscale.serving.schemas import RecommendationRequest

    sim = ClusterSimulator("azure-conv", 1)
    sim.reset_cluster(0, np.random.default_rng(0))
    body = RecommendationRequest.from_state(observe(sim, 0))
    assert abs(body.timestamp - time.time()) < 5
    assert [p.name for p in body.pools] == sim.pool_names


@pytest.mark.parametrize("scenario", ["azure-conv", "servegen-m-large"])
def test_the_service_feeds_the_policy_the_envs_observation(scenario):
    """For the same cluster state, the observation the service builds from its request body
    (through JSON and the service's parsing: defaults, clipping, the week clock) is the env's,
    feature by feature. azure-conv: three pools (two on demand, one spot); servegen-m-large:
    a response cache."""
    from rlscale.envs.env import InferenceClusterEnv
    from rlscale.serving.schemas import EPOCH_MONDAY_S, RecommendationRequest
    from rlscale.serving.service import DecisionService, load_policy
    from rlscale.training.export import manifest_for

    env = InferenceClusterEnv(scenario=scenario)
    sim = env.sim
    if scenario == "azure-conv":
        assert [p.purchase for p in sim.pools] == ["on_demand", "on_demand", "spot"]
    service = DecisionService(sim.scenario, None, load_policy("hpa", sim.scenario))
    manifest = manifest_for(sim, name="x", sha256="0" * 64)
    assert manifest.observation.names == env.observation_names
    env.action_space.seed(6)
    obs, _ = env.reset(seed=5)
    for step in range(40):
        state = observe(sim, 0)
        body = RecommendationRequest.from_state(
            state, timestamp=EPOCH_MONDAY_S + state.time_of_week_s
        )
        request = RecommendationRequest.model_validate_json(body.model_dump_json())
        got = observation_from_state(service.to_state(request), manifest)
        assert _mismatches(env.observation_names, got, obs) == [], f"step {step}"
        obs, *_ = env.step(env.action_space.sample())
