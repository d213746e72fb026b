"""Export a stable-baselines3 PPO policy as a served artifact, and register it in MLflow.

:func:`export_ppo` writes the folder that :mod:`rlscale.agents.onnx_policy` loads: the actor's
deterministic action (argmax of each ``MultiDiscrete`` head) as ONNX, with the
``VecNormalize`` observation statistics baked into the graph, and a manifest with the
observation layout, the scaling constants of the simulator it was trained in, and the model's
sha256. The service then needs neither torch nor the training environment.

:func:`register_policy` logs that folder to an MLflow run, registers it as a new version of a
registered model (default ``rlscale-policy``) and points an alias (default ``champion``) at it;
a service started with ``--policy models:/rlscale-policy@champion`` picks it up.
The two steps also stand alone: :func:`log_policy` logs a verified folder to a run without
registering it (a sweep's trials), :func:`register_logged_policy` registers what a run logged
(a sweep's best trial, wherever it ran).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.agents.onnx_policy import (
    MANIFEST_NAME,
    MODEL_NAME,
    PolicyManifest,
    artifact_paths,
    load_onnx_policy,
    read_manifest,
    sha256_file,
)
from rlscale.common.budgets import BudgetConfig
from rlscale.envs.simulator import ClusterSimulator
from rlscale.training.model_registry import (
    CHAMPION_ALIAS,
    DEFAULT_MODEL_NAME,
    POLICY_ARTIFACT_PATH,
)

POLICY_EXPERIMENT = "rlscale-policies"


def manifest_for(
    sim: ClusterSimulator,
    *,
    name: str,
    sha256: str,
    training: dict[str, Any] | None = None,
) -> PolicyManifest:
    """The manifest of a policy trained on ``sim``'s scenario and workload."""
    sc = sim.scenario
    return PolicyManifest(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model={"file": MODEL_NAME, "sha256": sha256},
        pools=[
            {
                "name": p.name,
                "purchase": p.purchase,
                "quota": p.quota,
                "on_demand_price_usd_h": p.price_usd_h,
                "max_num_seqs": p.profile.max_num_seqs,
                "warm_pool_max": p.warm_pool_max,
            }
            for p in sim.pools
        ],
        observation={
            "names": sim.observation_names,
            "low": [float(x) for x in sim.obs_low],
            "high": [float(x) for x in sim.obs_high],
            "reference_rps": float(sim.reference_rps),
            "queue_timeout_s": sc.slo.timeout_s,
            "ttft_target_s": sc.slo.ttft_s,
            "tpot_target_s": sc.slo.tpot_s,
            "cache_hit_ratio": sc.workload.cache_hit_ratio,
            "budget": next(
                (
                    BudgetConfig(**b.model_dump(include=set(BudgetConfig.model_fields)))
                    for b in sc.budgets
                    if b.observed
                ),
                None,
            ),
            "batch_window_s": sim.batch_window_s,
        },
        action={"max_step": sc.max_step, "nvec": [int(n) for n in sim.action_nvec]},
        training={"scenario": sc.name, **(training or {})},
    )


def _actor_module(model: Any, vec_normalize: Any | None, nvec: list[int]) -> Any:
    """A torch module: raw observation -> deterministic MultiDiscrete action (int64)."""
    import torch

    policy = model.policy
    if vec_normalize is not None and getattr(vec_normalize, "norm_obs", False):
        rms = vec_normalize.obs_rms
        mean = torch.as_tensor(np.asarray(rms.mean), dtype=torch.float32)
        scale = torch.as_tensor(
            1.0 / np.sqrt(np.asarray(rms.var) + vec_normalize.epsilon), dtype=torch.float32
        )
        clip = float(vec_normalize.clip_obs)
    else:
        mean = scale = None
        clip = 0.0

    class Actor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = policy.pi_features_extractor
            self.mlp = policy.mlp_extractor
            self.head = policy.action_net
            if mean is not None:
                self.register_buffer("mean", mean)
                self.register_buffer("scale", scale)

        def normalized(self, observation: torch.Tensor) -> torch.Tensor:
            x = observation.float()
            if mean is not None:
                x = torch.clamp((x - self.mean) * self.scale, -clip, clip)
            return x

        def forward(self, observation: torch.Tensor) -> torch.Tensor:
            x = self.normalized(observation)
            logits = self.head(self.mlp.forward_actor(self.features(x)))
            heads = torch.split(logits, nvec, dim=1)
            return torch.stack([torch.argmax(h, dim=1) for h in heads], dim=1)

    return Actor().eval()


def export_ppo(
    model: Any,
    sim: ClusterSimulator,
    out_dir: str | Path,
    *,
    name: str = "ppo",
    vec_normalize: Any | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s policy as an artifact folder at ``out_dir``; returns the folder.

    :param model: a stable-baselines3 ``PPO`` (or any on-policy model with an
        ``ActorCriticPolicy``) trained on ``sim``'s ``MultiDiscrete`` action space.
    :param sim: the simulator it was trained in (its scenario and reference rate).
    :param vec_normalize: the ``VecNormalize`` wrapper used in training; default the one
        around the model's own env, if any. Exporting a model trained under normalization
        without its statistics would silently give other actions, so that is refused.
    :param training: provenance for the manifest (timesteps, MLflow run id, ...).
    :raises ValueError: the model's spaces are not ``sim``'s, or the export does not act as
        the model does.
    The artifact is verified by loading it back, and its actions are compared with
    ``model.predict(..., deterministic=True)`` on observations across the space, before the
    manifest is written.
    """
    import torch
    from stable_baselines3.common.vec_env import unwrap_vec_normalize

    env = model.get_env()
    trained_with = unwrap_vec_normalize(env) if env is not None else None
    if vec_normalize is None:
        vec_normalize = trained_with
    elif trained_with is not None and trained_with is not vec_normalize:
        raise ValueError("vec_normalize is not the VecNormalize around the model's env")

    obs_space, _ = sim.spaces()
    if model.observation_space.shape != obs_space.shape:
        raise ValueError(
            f"model observations {model.observation_space.shape} != simulator's {obs_space.shape}"
        )
    nvec = [int(n) for n in sim.action_nvec]
    model_nvec = getattr(model.action_space, "nvec", None)
    if model_nvec is None or [int(n) for n in model_nvec] != nvec:
        raise ValueError(f"model actions {model.action_space} != simulator's MultiDiscrete{nvec}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    actor = _actor_module(model, vec_normalize, nvec)
    example = torch.as_tensor(np.zeros((1, obs_space.shape[0]), dtype=np.float32))
    tmp_model = out / f".{MODEL_NAME}.tmp"
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        torch.onnx.export(
            actor,
            (example,),
            str(tmp_model),
            input_names=["observation"],
            output_names=["action"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    manifest = manifest_for(
        sim,
        name=name,
        sha256=sha256_file(tmp_model),
        training={"algorithm": type(model).__name__, **(training or {})},
    )
    _check_parity(model, vec_normalize, tmp_model, manifest, sim)
    # model first, manifest last: a watcher never sees a manifest whose model is not in place
    os.chmod(tmp_model, EXPORT_FILE_MODE)
    os.replace(tmp_model, out / MODEL_NAME)
    _write_atomic(out / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
    load_onnx_policy(out, pools=sim.pool_names)
    return out


PARITY_SAMPLES = 512
PARITY_TIE = 1e-4
"""Logit margins below this are ties: float32 sums in another order may pick either."""


def _check_parity(
    model: Any, vec_normalize: Any, onnx_path: Path, manifest: PolicyManifest, sim: Any
) -> None:
    """The exported graph picks the model's deterministic action on observations from a
    random rollout of ``sim``'s scenario and on samples across the space."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(onnx_path, Path(tmp) / MODEL_NAME)
        (Path(tmp) / MANIFEST_NAME).write_text(manifest.model_dump_json())
        policy = load_onnx_policy(tmp, pools=sim.pool_names)
    obs = np.concatenate([_rollout(sim, PARITY_SAMPLES // 2), _samples(sim, PARITY_SAMPLES // 2)])
    x = torch.as_tensor(obs)
    actor = _actor_module(model, vec_normalize, [int(n) for n in sim.action_nvec])
    with torch.no_grad():
        expected = actor(x).numpy()  # the torch graph that was exported: the same float32 math
        fed = actor.normalized(x)
        logits = model.policy.action_net(
            model.policy.mlp_extractor.forward_actor(model.policy.pi_features_extractor(fed))
        ).numpy()
        # and the model's own deterministic predict on those inputs
        predicted, _ = model.predict(fed.numpy(), deterministic=True)
    if not np.array_equal(expected, predicted):
        raise ValueError("the export's torch graph does not reproduce model.predict")
    got = policy.act(obs)
    rows = np.flatnonzero((got != expected).any(axis=1))
    heads = np.split(logits, np.cumsum(sim.action_nvec)[:-1], axis=1)
    margin = np.full(len(obs), np.inf)
    for h in heads:
        if h.shape[1] > 1:
            top2 = np.sort(h, axis=1)[:, -2:]
            margin = np.minimum(margin, top2[:, 1] - top2[:, 0])
    real = [int(i) for i in rows if margin[i] >= PARITY_TIE]
    if real:
        raise ValueError(
            f"the exported policy differs from model.predict on {len(real)} of {len(obs)} "
            "observations (a policy or feature extractor this exporter does not handle?)"
        )


def _rollout(sim: Any, n: int) -> np.ndarray:
    """Observations of one cluster of ``sim``'s scenario under random actions."""
    from rlscale.envs.simulator import ClusterSimulator

    probe = ClusterSimulator(sim.scenario, 1, workload=sim.workload)
    rng = np.random.default_rng(0)
    probe.reset_cluster(0, rng)
    out = np.empty((n, probe.obs.shape[1]), dtype=np.float32)
    for i in range(n):
        probe.step(rng.integers(0, probe.action_nvec)[None, :])
        out[i] = probe.obs[0]
        if probe.truncated()[0]:
            probe.reset_cluster(0, rng)
    return out


def _samples(sim: Any, n: int) -> np.ndarray:
    """Uniform samples near the low end of each entry (rates ~1x reference, shares < 1)."""
    rng = np.random.default_rng(1)
    lo, hi = sim.obs_low, sim.obs_high
    return rng.uniform(lo, np.minimum(hi, lo + 3.0), size=(n, lo.size)).astype(np.float32)


EXPORT_FILE_MODE = 0o644
"""Exported files are readable by all: a policy copied into an image runs as another user."""


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, EXPORT_FILE_MODE)  # mkstemp creates 0600
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log_policy(
    artifact_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> tuple[str, Any]:
    """Verify the artifact and log it under ``policy/`` of run ``run_id`` (a new run in
    ``rlscale-policies`` when None), without registering it; returns the run id and the
    loaded policy.

    :raises ArtifactError: the folder is not a valid artifact.
    """
    from rlscale.common.tracking import ensure_experiment, require_mlflow
    from rlscale.common.tracking import tracking_uri as default_uri

    require_mlflow()
    from mlflow import MlflowClient

    uri = default_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory(prefix="rlscale-register-") as staged:
        # exactly the two files, verified as copied: what is uploaded is what was checked
        manifest_path, folder = artifact_paths(artifact_dir)
        manifest = read_manifest(manifest_path)
        shutil.copyfile(manifest_path, Path(staged) / MANIFEST_NAME)
        staged_model = Path(staged) / manifest.model.file
        staged_model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / manifest.model.file, staged_model)
        policy = load_onnx_policy(staged)
        if run_id is None:
            exp_id = ensure_experiment(client, uri, POLICY_EXPERIMENT)
            run = client.create_run(exp_id, run_name=f"export {policy.name}")
            run_id = run.info.run_id
            client.log_dict(run_id, json.loads(manifest.model_dump_json()), "manifest.json")
            client.set_terminated(run_id)
        client.log_artifacts(run_id, staged, artifact_path=POLICY_ARTIFACT_PATH)
    return run_id, policy


def register_policy(
    artifact_dir: str | Path,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str | None = CHAMPION_ALIAS,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> int:
    """Register the artifact as a new version of ``model_name``; returns the version number.

    The folder is verified first (a corrupt artifact is never registered), logged under
    ``policy/`` of run ``run_id`` (a new run when None; :func:`log_policy`), registered, tagged
    with the policy version, and ``alias`` is moved to it (None leaves aliases alone).

    :raises ArtifactError: the folder is not a valid artifact.
    """
    run_id, policy = log_policy(artifact_dir, tracking_uri=tracking_uri, run_id=run_id)
    return _new_version(model_name, alias, tracking_uri, run_id, policy)


def register_logged_policy(
    run_id: str,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str | None = CHAMPION_ALIAS,
    tracking_uri: str | None = None,
) -> int:
    """Register the policy run ``run_id`` logged under ``policy/`` (:func:`log_policy`) as a
    new version of ``model_name`` and move ``alias`` to it; returns the version number. The
    logged files are downloaded and verified first, as :func:`register_policy` verifies a
    folder (``rlscale sweep`` registers its best trial this way, wherever the trial ran).

    :raises ArtifactError: the logged folder is not a valid artifact.
    """
    from rlscale.training.model_registry import fetch_policy, registry_client

    client = registry_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="rlscale-register-") as dst:
        fetched = fetch_policy(run_id, dst, client=client)
        policy = load_onnx_policy(fetched.folder)
    return _new_version(model_name, alias, tracking_uri, run_id, policy)


def _new_version(
    model_name: str, alias: str | None, tracking_uri: str | None, run_id: str, policy: Any
) -> int:
    """A new version of ``model_name`` from ``policy/`` of run ``run_id`` (verified as
    ``policy``), tagged with its version and checksum; ``alias`` moved to it when given."""
    from rlscale.common.tracking import require_mlflow
    from rlscale.common.tracking import tracking_uri as default_uri

    mlflow = require_mlflow()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=default_uri(tracking_uri))
    artifact_uri = client.get_run(run_id).info.artifact_uri
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            model_name, description="rlscale autoscaling policies (ONNX + manifest)"
        )
    mv = client.create_model_version(
        model_name,
        source=f"{artifact_uri}/{POLICY_ARTIFACT_PATH}",
        run_id=run_id,
        tags={"policy_version": policy.version, "sha256": policy.manifest.model.sha256},
    )
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    return int(mv.version)


def export_saved(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    scenario: str | Path,
    vec_normalize_path: str | Path | None,
    workload_seed: int = 0,
    name: str | None = None,
) -> Path:
    """Export a PPO saved with ``model.save`` (and ``VecNormalize.save``) for ``scenario``.

    :param vec_normalize_path: the saved ``VecNormalize`` statistics; None only for a model
        trained without normalization (a saved model does not say which it was).
    :param workload_seed: the seed of the training env's workload (its reference rate).
    :raises ValueError: unreadable files, or a model or statistics whose spaces are not the
        scenario's. A model trained on another scenario with the same pools and layout
        cannot be told apart: the scenario named here is the one recorded.
    """
    import pickle

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    venv = InferenceClusterVecEnv(1, scenario=str(scenario), workload_seed=workload_seed)
    norm = None
    try:
        if vec_normalize_path is not None:
            norm = VecNormalize.load(str(vec_normalize_path), venv)
            if not isinstance(norm, VecNormalize):
                raise TypeError(f"{vec_normalize_path} holds a {type(norm).__name__}")
            norm.training = False
        model = PPO.load(str(model_path), env=norm or venv, device="cpu")
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        TypeError,
        AttributeError,
        AssertionError,  # SB3 asserts that the statistics' shape fits the env
        pickle.UnpicklingError,
    ) as err:
        what = "statistics" if norm is None and vec_normalize_path is not None else "model"
        raise ValueError(f"cannot load the saved {what}: {type(err).__name__}: {err}") from None
    label = name or f"ppo-{venv.sim.scenario.name}"
    training = {
        "model_file": Path(model_path).name,
        "vec_normalize": vec_normalize_path is not None,
        "workload_seed": workload_seed,
    }
    return export_ppo(model, venv.sim, out_dir, name=label, vec_normalize=norm, training=training)


def add_export_parser(sub: Any) -> Any:
    """The ``export-policy`` subcommand."""
    p = sub.add_parser(
        "export-policy",
        help="export a saved stable-baselines3 PPO as a served policy (ONNX + manifest)",
        description=(
            "Write the folder rlscale serve and rlscale evaluate load: the PPO's deterministic "
            "action as ONNX with the VecNormalize statistics baked in, and a manifest. The "
            "export is checked against the model's own predictions before it is written."
        ),
    )
    p.add_argument("--model", required=True, type=Path, help="PPO saved with model.save()")
    norm = p.add_mutually_exclusive_group(required=True)
    norm.add_argument("--vecnormalize", type=Path, help="VecNormalize saved with .save()")
    norm.add_argument(
        "--no-vecnormalize",
        action="store_true",
        help="the model was trained without VecNormalize (say so: a saved model cannot tell)",
    )
    p.add_argument("--scenario", required=True, help="the scenario it was trained on")
    p.add_argument("--workload-seed", type=int, default=0, help="the training env's (default 0)")
    p.add_argument("--name", default=None, help="policy name (default ppo-SCENARIO)")
    p.add_argument("--out", required=True, type=Path, help="the artifact folder to write")
    return p


def run_export(args: Any) -> int:
    """``rlscale export-policy``: prints one JSON line of what was written."""
    import sys

    from rlscale.agents.onnx_policy import ArtifactError

    try:
        folder = export_saved(
            args.model,
            args.out,
            scenario=args.scenario,
            vec_normalize_path=args.vecnormalize,
            workload_seed=args.workload_seed,
            name=args.name,
        )
    except (ValueError, ArtifactError, OSError) as err:
        print(f"rlscale export-policy: {err}", file=sys.stderr)
        return 2
    manifest = read_manifest(folder)
    print(json.dumps({"folder": str(folder), "policy_version": manifest.version}))
    return 0


def add_register_parser(sub: Any) -> Any:
    """The ``register-policy`` subcommand."""
    p = sub.add_parser(
        "register-policy",
        help="verify an exported policy and register it in the MLflow model registry",
        description=(
            "Verify the exported policy in FOLDER (manifest, checksum, model), log it to an "
            "MLflow run, register it as a new version of --name and move --alias to it. "
            "The registry is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."
        ),
    )
    p.add_argument("folder", help="the exported policy (manifest.json + model.onnx)")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"default {DEFAULT_MODEL_NAME}")
    p.add_argument(
        "--alias", default=CHAMPION_ALIAS, help=f"alias to move to it (default {CHAMPION_ALIAS})"
    )
    p.add_argument("--no-alias", action="store_true", help="register without moving an alias")
    return p


def run_register(args: Any) -> int:
    """``rlscale register-policy``: prints one JSON line of what was registered."""
    import sys

    from rlscale.agents.onnx_policy import ArtifactError
    from rlscale.common.tracking import TrackingError, require_mlflow
    from rlscale.common.tracking import tracking_uri as default_uri

    alias = None if args.no_alias else args.alias
    try:
        require_mlflow()
    except TrackingError as err:
        print(f"rlscale register-policy: {err}", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    try:
        version = register_policy(args.folder, model_name=args.name, alias=alias)
        manifest = read_manifest(args.folder)
    except (ArtifactError, TrackingError, MlflowException, OSError) as err:
        print(f"rlscale register-policy: {err}", file=sys.stderr)
        return 2
    uri = f"models:/{args.name}@{alias}" if alias else f"models:/{args.name}/{version}"
    print(
        json.dumps(
            {
                "registered_model": args.name,
                "version": version,
                "alias": alias,
                "policy_version": manifest.version,
                "serve_with": uri,
                "tracking_uri": default_uri(),
            }
        )
    )
    return 0
