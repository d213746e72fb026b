"""``rlscale train``: PPO on the batched simulator, tracked in MLflow, registered as challenger.

One run, start to end:

1. The settings (:class:`~rlscale.training.config.TrainConfig`) are recorded whole: MLflow
   params, ``config.json`` and the scenario file as artifacts.
2. stable-baselines3 PPO learns on :class:`~rlscale.envs.sb3_vec_env.InferenceClusterVecEnv`
   (``n_envs`` clusters in one kernel call per step) under ``VecNormalize``, with
   :class:`~rlscale.training.policy.MultiDiscretePolicy` (SB3's MLP policy with every action
   head in one tensor: the same distribution in a fraction of the torch calls). Episodes start
   only in the training part of the workload's split; with ``randomize`` each episode draws its
   rates, prices, preemptions and cold starts from the scenario's randomization ranges.
3. The SLO is a constraint: the price of a violation is a Lagrange multiplier adapted after
   every rollout (:mod:`rlscale.training.lagrange`), logged as ``lagrange/price_usd``.
4. Every ``eval_every`` steps the deterministic policy runs on the validation windows
   (:mod:`rlscale.training.validate`): ``eval/cost_usd``, ``eval/slo_attainment``, ...
5. Every ``checkpoint_every`` steps, and on Ctrl-C or SIGTERM, a checkpoint (model, normalization
   statistics as plain arrays, multiplier, validation history) goes to the run's artifacts;
   ``rlscale train --resume RUN_ID`` continues the same MLflow run to the planned timesteps.
6. At the end: the training report (learning curves, every validation) is attached to the run,
   and, with ``register``, the policy ``select`` picks (by default the cheapest validation that
   met the target) is exported to ONNX (:func:`~rlscale.training.export.export_ppo`) and
   registered as a new version of ``model_name`` (``rlscale-policy``) with ``alias``
   (``challenger``).

Metrics keys: SB3's own (``train/approx_kl``, ``rollout/ep_rew_mean``, ``time/fps``) through an
SB3 logger output format, plus ``eval/...``, ``lagrange/...``, ``rollout/attainment``,
``rollout/randomization/...`` and ``time/env_steps_per_s``; MLflow's system metrics beside
them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.envs.mix import mix_sizes, mixes_workloads
from rlscale.envs.scenario import ScenarioError, load_scenario, scenario_path
from rlscale.training.config import (
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_json,
)
from rlscale.training.lagrange import LagrangeMultiplier, episode_window
from rlscale.training.learning_curves import REPORT_FILE, Curve, plot_learning_curves
from rlscale.training.validate import ValidationResult, Validator

TRAIN_EXPERIMENT = "rlscale-train"
CHECKPOINT_DIR = "checkpoints/latest"
"""Artifact path of the run's latest checkpoint (overwritten at each save)."""
MODEL_FILE = "model.zip"
NORM_FILE = "normalization.npz"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
CURVES_FILE = "learning_curves.png"
BEST_DIR = "best"
"""The best validated policy so far: ``policy.pt`` (weights), the normalization, ``best.json``."""

# settings a resumed run may change: they do not change what is learned
_RESUME_MUTABLE = frozenset({"progress", "tracking_uri", "out_dir"})

OnValidation = Callable[[ValidationResult, str], None]
"""Called with each validation of a run and the run's id, after it is logged (:func:`train`)."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_id: str
    timesteps: int
    status: str
    run_dir: Path
    validations: list[ValidationResult] = field(default_factory=list)
    export_dir: Path | None = None
    model_version: int | None = None

    def summary(self) -> dict[str, Any]:
        """The one-line JSON the command prints last."""
        last = self.validations[-1] if self.validations else None
        return {
            "run_id": self.run_id,
            "status": self.status,
            "timesteps": self.timesteps,
            "run_dir": str(self.run_dir),
            "export": str(self.export_dir) if self.export_dir else None,
            "model_version": self.model_version,
            **({k: round(v, 6) for k, v in last.metrics().items()} if last else {}),
        }


# --- MLflow pieces --------------------------------------------------------------------------


def _sb3_mlflow_writer(client: Any, run_id: str) -> Any:
    """An SB3 logger output format that sends every numeric key to the MLflow run."""
    from stable_baselines3.common.logger import KVWriter

    class MLflowOutputFormat(KVWriter):
        def write(
            self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0
        ) -> None:
            metrics = {}
            for key, value in key_values.items():
                excluded = key_excluded.get(key) or ()
                if "mlflow" in excluded or isinstance(value, bool):
                    continue
                if isinstance(value, int | float | np.integer | np.floating) and math.isfinite(
                    float(value)
                ):
                    metrics[key] = float(value)
            _log_metrics(client, run_id, metrics, step)

        def close(self) -> None:
            pass

    return MLflowOutputFormat()


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    from rlscale.common.tracking import log_metrics

    if metrics:
        log_metrics(client, run_id, metrics, step)


# --- checkpoints -----------------------------------------------------------------------------


def _save_normalization(vn: Any, path: Path) -> None:
    """VecNormalize's running statistics as plain arrays (no pickle)."""
    np.savez(
        path,
        obs_mean=vn.obs_rms.mean,
        obs_var=vn.obs_rms.var,
        obs_count=np.array(vn.obs_rms.count),
        ret_mean=np.array(vn.ret_rms.mean),
        ret_var=np.array(vn.ret_rms.var),
        ret_count=np.array(vn.ret_rms.count),
    )


def _load_normalization(vn: Any, path: Path) -> None:
    with np.load(path) as z:
        if z["obs_mean"].shape != vn.obs_rms.mean.shape:
            raise ScenarioError(
                f"checkpoint normalization has {z['obs_mean'].shape} observations, the env "
                f"{vn.obs_rms.mean.shape}: was the scenario changed?"
            )
        vn.obs_rms.mean = z["obs_mean"].copy()
        vn.obs_rms.var = z["obs_var"].copy()
        vn.obs_rms.count = float(z["obs_count"])
        vn.ret_rms.mean = float(z["ret_mean"])
        vn.ret_rms.var = float(z["ret_var"])
        vn.ret_rms.count = float(z["ret_count"])


# --- the run ---------------------------------------------------------------------------------


class _Trainer:
    """Holds one run's pieces; :func:`train` drives it."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume_run: str | None = None,
        tags: dict[str, str] | None = None,
        on_validation: OnValidation | None = None,
    ) -> None:
        from mlflow import MlflowClient

        from rlscale.common.tracking import ensure_experiment, require_mlflow, tracking_uri

        require_mlflow()
        self.config = config
        self.uri = tracking_uri(config.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.scenario = load_scenario(config.scenario)
        if mixes_workloads(self.scenario, config.randomize):
            # too few envs for the workloads mixed: said before a run exists, not after
            mix_sizes(config.n_envs, [w.share for w in self.scenario.randomization.workloads])
        if resume_run is None:
            exp_id = ensure_experiment(self.client, self.uri, TRAIN_EXPERIMENT)
            name = config.run_name or (
                f"{self.scenario.name}__ppo__{config.seed}__{int(time.time())}"
            )
            run = self.client.create_run(
                exp_id, run_name=name, tags={"rlscale.command": "train", **(tags or {})}
            )
            self.run_id = run.info.run_id
        else:
            self.run_id = resume_run
            self.client.update_run(self.run_id, status="RUNNING")
        self.run_dir = Path(config.out_dir) / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.validations: list[ValidationResult] = []
        self.updated_timesteps = 0  # env steps behind the current weights
        self.best: dict[str, float] | None = None  # the cheapest validation meeting the SLO
        self.lagrange = LagrangeMultiplier(
            price_usd=(
                config.lagrange_init_usd
                if config.lagrange_init_usd is not None
                else self.scenario.reward.slo_violation_usd
            ),
            base_target=min(
                self.scenario.slo.target_attainment + config.attainment_margin,
                LagrangeMultiplier.MAX_TARGET,
            ),
            lr=config.lagrange_lr if config.lagrangian else 0.0,
            min_usd=config.lagrange_min_usd,
            max_usd=max(config.lagrange_max_usd, config.lagrange_min_usd),
        )
        self.monitor = None
        self.on_validation = on_validation

    # -- set-up --

    def log_settings(self) -> None:
        from rlscale.common.tracking import log_params

        settings = sorted(self.config.to_dict().items())
        log_params(
            self.client,
            self.run_id,
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in settings},
        )
        self.client.set_tag(self.run_id, "rlscale.scenario", self.scenario.name)
        (self.run_dir / CONFIG_FILE).write_text(config_json(self.config) + "\n")
        self.client.log_artifact(self.run_id, str(self.run_dir / CONFIG_FILE))
        self.client.log_artifact(self.run_id, str(scenario_path(self.config.scenario)), "scenario")

    def mix_record(self) -> dict[str, Any]:
        """The workloads training mixed, for the export's training record (none: not mixed)."""
        return {} if self.mixed is None else {"mixed_workloads": self.mixed}

    def build(self, resume_from: Path | None) -> None:
        import torch
        from stable_baselines3.common.logger import HumanOutputFormat, Logger
        from stable_baselines3.common.vec_env import VecNormalize

        from rlscale.envs.mix import MixedSimulator
        from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv
        from rlscale.training.policy import load_ppo, new_ppo

        cfg = self.config
        torch.set_num_threads(max(1, cfg.torch_threads))
        self.venv = InferenceClusterVecEnv(
            cfg.n_envs, scenario=self.scenario, split="train", randomize=cfg.randomize
        )
        self.sim = self.venv.sim
        # what the policy is exported against: the scenario's own workload (with a mix of
        # workloads, the part that runs it; the others share its pools and layout)
        self.scenario_sim = self.sim.primary if isinstance(self.sim, MixedSimulator) else self.sim
        self.mixed = self.sim.mix_info() if isinstance(self.sim, MixedSimulator) else None
        self.venv.seed(cfg.seed)
        self.vn = VecNormalize(
            self.venv,
            norm_obs=cfg.norm_obs,
            norm_reward=cfg.norm_reward,
            clip_obs=cfg.clip_obs,
            gamma=cfg.gamma,
        )
        # lagrange_window 0: each dual step pools an episode's worth of rollouts
        self.lagrange.window = cfg.lagrange_window or episode_window(
            self.scenario_sim.episode_steps, cfg.n_steps
        )
        if resume_from is None:
            self.model = new_ppo(self.vn, cfg.ppo_kwargs())
            hold_prior(self.model, self.sim.noop_action(), cfg.hold_prior)
        else:
            state = json.loads((resume_from / STATE_FILE).read_text())
            _load_normalization(self.vn, resume_from / NORM_FILE)
            self.model = load_ppo(resume_from / MODEL_FILE, self.vn)
            self.model.num_timesteps = self.updated_timesteps = int(state["timesteps"])
            self.lagrange.load(state["lagrange"])
            self.validations = [ValidationResult(**v) for v in state.get("validations", [])]
            if (resume_from / BEST_DIR / "best.json").is_file():
                shutil.rmtree(self.run_dir / BEST_DIR, ignore_errors=True)
                shutil.copytree(resume_from / BEST_DIR, self.run_dir / BEST_DIR)
                self.best = json.loads((self.run_dir / BEST_DIR / "best.json").read_text())
            # fresh episode draws, not the ones the interrupted run already saw
            self.venv.seed(cfg.seed + 1 + int(state["timesteps"]))
        self.sim.set_violation_price(self.lagrange.price_usd)
        outputs = [_sb3_mlflow_writer(self.client, self.run_id)]
        if not cfg.progress:
            outputs.append(HumanOutputFormat(sys.stdout))
        self.model.set_logger(Logger(None, outputs))
        self.validator = Validator(
            self.scenario,
            max_windows=cfg.eval_windows,
            seeds=cfg.eval_seeds,
            mixed=self.mixed is not None,  # selection sees the mix's fresh traffic too
        )

    # -- during training --

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic policy on raw observations."""
        action, _ = self.model.predict(self.vn.normalize_obs(obs), deterministic=True)
        return action

    def validate(self) -> ValidationResult:
        result = self.validator.run(self.act, self.model.num_timesteps)
        self.validations.append(result)
        metrics = result.metrics()
        if self.config.lagrangian:
            metrics["lagrange/target"] = self.lagrange.observe_served(result.slo_attainment)
            metrics["lagrange/offset"] = self.lagrange.offset
        if result.slo_attainment >= result.target and (
            self.best is None or result.cost_usd < self.best["cost_usd"]
        ):
            self._save_best(result)
        if self.best is not None:
            metrics["eval/best_cost_usd"] = self.best["cost_usd"]
        _log_metrics(self.client, self.run_id, metrics, self.model.num_timesteps)
        if self.on_validation is not None:
            self.on_validation(result, self.run_id)
        return result

    def _save_best(self, result: ValidationResult) -> None:
        """Keep the current weights and normalization as the best validated policy."""
        import torch

        folder = self.run_dir / BEST_DIR
        tmp = self.run_dir / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(self.model.policy.state_dict(), tmp / "policy.pt")
        _save_normalization(self.vn, tmp / NORM_FILE)
        self.best = {
            "timesteps": int(result.timesteps),
            "cost_usd": result.cost_usd,
            "slo_attainment": result.slo_attainment,
        }
        (tmp / "best.json").write_text(json.dumps(self.best))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def select_policy(self) -> dict[str, Any]:
        """Load the policy to export: the best validated one (``select="best"``, when one met
        the target), else the last; returns what was chosen."""
        import torch

        if self.config.select == "best" and self.best is not None:
            folder = self.run_dir / BEST_DIR
            state = torch.load(folder / "policy.pt", weights_only=True)
            self.model.policy.load_state_dict(state)
            _load_normalization(self.vn, folder / NORM_FILE)
            return {"selected": "best", **self.best}
        last = self.validations[-1] if self.validations else None
        return {
            "selected": "last",
            "timesteps": int(self.model.num_timesteps),
            **({"cost_usd": last.cost_usd, "slo_attainment": last.slo_attainment} if last else {}),
        }

    def checkpoint(self) -> Path:
        """Save a resumable checkpoint locally and to the run's artifacts."""
        folder = self.run_dir / "checkpoint"
        tmp = self.run_dir / ".checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save(tmp / MODEL_FILE, exclude=["env", "logger"])
        _save_normalization(self.vn, tmp / NORM_FILE)
        state = {
            "timesteps": int(self.model.num_timesteps),
            "lagrange": self.lagrange.state(),
            "validations": [v.to_dict() for v in self.validations],
            "saved_at": time.time(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if (self.run_dir / BEST_DIR / "best.json").is_file():
            shutil.copytree(self.run_dir / BEST_DIR, tmp / BEST_DIR)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        self.client.log_artifacts(self.run_id, str(folder), CHECKPOINT_DIR)
        return folder

    def finish(self, status: str) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(self.run_id, status=status)


def hold_prior(model: Any, noop: np.ndarray, p: float) -> None:
    """Start the policy holding: each head picks its no-op (``noop``: replicas unchanged, an
    empty warm pool) with probability ``p``, the other choices sharing the rest.

    A uniform start random-walks the replica counts: an exploring "-" is soon undone by a
    "+", and at the quota "+" is clipped and harmless, so counts drift to the quota and
    scaling down earns little credit. Starting from holding, a step down persists and its
    saving is what the advantage sees. Only the output layer's bias is set; ``p`` of 0 (or a
    head of one choice) leaves SB3's initialization as it is.
    """
    import torch

    if p <= 0.0:
        return
    nvec = [int(n) for n in model.action_space.nvec]
    bias = torch.zeros(sum(nvec))
    offset = 0
    for n, hold in zip(nvec, noop, strict=True):
        if n > 1:
            bias[offset + int(hold)] = math.log(p * (n - 1) / (1.0 - p))
        offset += n
    with torch.no_grad():
        model.policy.action_net.bias.copy_(bias)


def _callback(trainer: _Trainer, pbar: Any) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    cfg = trainer.config

    class TrainCallback(BaseCallback):
        """Lagrangian dual step per rollout; validation and checkpoints between updates (where
        the weights and the step count agree); progress."""

        def _on_training_start(self) -> None:
            self._good = 0.0
            self._demand = 0.0
            self._drawn: dict[str, list[float]] = {}
            self._t0 = time.perf_counter()
            self._aside_s = 0.0  # validation and checkpoint time, not training speed
            self._n0 = self.num_timesteps
            self._next_eval = _next_multiple(self.num_timesteps, cfg.eval_every)
            self._next_ckpt = _next_multiple(self.num_timesteps, cfg.checkpoint_every)

        def _on_rollout_start(self) -> None:
            n = self.num_timesteps
            trainer.updated_timesteps = n
            t = time.perf_counter()
            if cfg.eval_every and n >= self._next_eval:
                self._next_eval = _next_multiple(n, cfg.eval_every)
                result = trainer.validate()
                if pbar is not None:
                    pbar.set_postfix(_postfix(result, trainer.lagrange.price_usd), refresh=False)
            if cfg.checkpoint_every and n >= self._next_ckpt:
                self._next_ckpt = _next_multiple(n, cfg.checkpoint_every)
                trainer.checkpoint()
            self._aside_s += time.perf_counter() - t

        def _on_step(self) -> bool:
            good, demand = trainer.sim.step_requests()
            self._good += float(good.sum())
            self._demand += float(demand.sum())
            for info in self.locals.get("infos") or ():
                for key, value in info.items():  # the finished episodes' drawn multipliers
                    if key.startswith("randomization/"):
                        self._drawn.setdefault(key, []).append(float(value))
            if pbar is not None:
                pbar.update(self.num_timesteps - pbar.n)
            return True

        def _on_rollout_end(self) -> None:
            attainment = self._good / self._demand if self._demand > 0 else 1.0
            price = trainer.lagrange.update(self._good, self._demand)
            trainer.sim.set_violation_price(price)
            elapsed = max(time.perf_counter() - self._t0 - self._aside_s, 1e-9)
            self.logger.record("rollout/attainment", attainment)
            self.logger.record("lagrange/price_usd", price)
            self.logger.record("lagrange/target", trainer.lagrange.target)
            self.logger.record("time/env_steps_per_s", (self.num_timesteps - self._n0) / elapsed)
            for key, values in self._drawn.items():
                self.logger.record(f"rollout/{key}", float(np.mean(values)))
            self._drawn = {}
            if pbar is not None:
                pbar.set_postfix(
                    _postfix(trainer.validations[-1] if trainer.validations else None, price),
                    refresh=False,
                )
            self._good = self._demand = 0.0

    return TrainCallback()


def _next_multiple(n: int, every: int) -> int:
    return (n // every + 1) * every if every else sys.maxsize


def _postfix(result: ValidationResult | None, price: float) -> dict[str, str]:
    out = {"price": f"{price:.3g}$"}
    if result is not None:
        out["eval_cost"] = f"{result.cost_usd:.2f}$"
        out["eval_att"] = f"{result.slo_attainment:.2%}"
    return out


def _checkpoint_of(trainer: _Trainer) -> Path | None:
    """The resumed run's latest checkpoint, downloaded from its artifacts."""
    from mlflow.exceptions import MlflowException

    dest = trainer.run_dir / ".resume"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        folder = Path(trainer.client.download_artifacts(trainer.run_id, CHECKPOINT_DIR, str(dest)))
    except (MlflowException, OSError):
        return None
    return folder if (folder / STATE_FILE).is_file() else None


def resume_config(run_id: str, args: argparse.Namespace | None = None) -> TrainConfig:
    """The recorded config of run ``run_id``; flags may change only what does not change what
    is learned (progress, where output goes)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from rlscale.common.tracking import require_mlflow, tracking_uri

    require_mlflow()
    uri = tracking_uri(getattr(args, "tracking_uri", None))
    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory(prefix="rlscale-resume-") as dest:
        try:
            client.get_run(run_id)
            recorded_file = Path(client.download_artifacts(run_id, CONFIG_FILE, dest))
        except MlflowException as err:
            raise ScenarioError(
                f"--resume {run_id}: no such training run in {uri} ({err.message.splitlines()[0]})"
            ) from None
        recorded = json.loads(recorded_file.read_text())
    if args is None:
        return TrainConfig.from_dict(recorded)
    merged = config_from_args(args, base=recorded)
    changed = sorted(
        k for k, v in merged.to_dict().items() if k not in _RESUME_MUTABLE and recorded.get(k) != v
    )
    if changed:
        raise ScenarioError(
            f"--resume {run_id}: a resumed run keeps its recorded settings; these differ: "
            + ", ".join(f"{k}={recorded.get(k)!r}->{merged.to_dict()[k]!r}" for k in changed)
        )
    return merged


def train(
    config: TrainConfig,
    *,
    resume: str | None = None,
    tags: dict[str, str] | None = None,
    on_validation: OnValidation | None = None,
    register_version: bool = True,
) -> TrainResult:
    """Train (or resume) one run; see the module docstring.

    :param resume: an MLflow run id of ``rlscale train`` to continue from its last checkpoint
        (``config`` must be that run's recorded config: :func:`resume_config`).
    :param tags: extra tags of a new MLflow run (a sweep's trial: its parent run).
    :param on_validation: called with every validation once it is logged (a sweep's trial
        reports it to Ray Tune); None: nothing else happens.
    :param register_version: with ``config.register``, add the export to the model registry
        (False: export and log it under the run's ``policy/`` only, as a sweep's trials do:
        the sweep registers its best one).
    :raises ScenarioError: bad settings, or nothing to resume.
    """
    from tqdm import tqdm

    trainer = _Trainer(config, resume_run=resume, tags=tags, on_validation=on_validation)
    resume_from = None
    if resume is None:
        trainer.log_settings()
    else:
        resume_from = _checkpoint_of(trainer)
        if resume_from is None:
            trainer.client.update_run(trainer.run_id, status="FAILED")
            raise ScenarioError(f"--resume {resume}: the run has no checkpoint to resume from")
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        trainer.monitor = SystemMetricsMonitor(
            trainer.run_id,
            sampling_interval=10,
            resume_logging=resume is not None,
            tracking_uri=trainer.uri,
        )
        trainer.monitor.start()
    except Exception:  # system metrics are a nicety; psutil may be missing
        trainer.monitor = None
    status = "FAILED"
    pbar = None
    previous_term = _term_as_interrupt()
    try:
        trainer.build(resume_from)
        if resume_from is not None:  # loaded (its best policy copied into the run folder)
            shutil.rmtree(trainer.run_dir / ".resume", ignore_errors=True)
        done = int(trainer.model.num_timesteps)
        left = config.total_timesteps - done
        pbar = tqdm(
            total=config.total_timesteps,
            initial=done,
            desc=f"train {trainer.scenario.name}",
            unit="step",
            unit_scale=True,
            disable=not config.progress,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        if left > 0:
            trainer.model.learn(
                total_timesteps=left,
                callback=_callback(trainer, pbar if config.progress else None),
                reset_num_timesteps=False,
            )
        pbar.close()
        trainer.validate()
        trainer.checkpoint()
        result = _finish_run(trainer, register_version=register_version)
        status = result.status
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        if pbar is not None:
            pbar.close()
        if hasattr(trainer, "model"):
            # the weights are those of the last finished update: a partial rollout is lost,
            # so the resumed run collects it again and ends at the planned timesteps
            trainer.model.num_timesteps = trainer.updated_timesteps
            trainer.checkpoint()
        steps = int(getattr(getattr(trainer, "model", None), "num_timesteps", 0))
        print(
            f"\ninterrupted at {steps} steps; continue with: rlscale train --resume "
            f"{trainer.run_id}",
            file=sys.stderr,
        )
        return TrainResult(
            trainer.run_id,
            steps,
            status,
            trainer.run_dir,
            trainer.validations,
        )
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        trainer.finish(status)


def _term_as_interrupt() -> Any:
    """Make SIGTERM (what Kubernetes and most schedulers send before killing) stop training
    as Ctrl-C does: checkpoint, then exit resumable. Returns the handler it replaced (None off
    the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _finish_run(trainer: _Trainer, *, register_version: bool = True) -> TrainResult:
    """Report, export and registration of a run that reached its timesteps."""
    cfg = trainer.config
    selected = trainer.select_policy()
    report = {
        "run_id": trainer.run_id,
        "exported": selected,
        "scenario": trainer.scenario.name,
        "timesteps": int(trainer.model.num_timesteps),
        "target_attainment": trainer.scenario.slo.target_attainment,
        "lagrange": {**trainer.lagrange.state(), "target": trainer.lagrange.target},
        "validation_windows": trainer.validator.windows,
        "validation_windows_by_workload": trainer.validator.workload_windows,
        "validations": [v.to_dict() for v in trainer.validations],
        "config": cfg.to_dict(),
    }
    report_path = trainer.run_dir / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    trainer.client.log_artifact(trainer.run_id, str(report_path))
    exported = selected.get("timesteps") if selected else None
    curves = plot_learning_curves(
        [Curve(trainer.scenario.name, trainer.validations, exported)],
        trainer.scenario.slo.target_attainment,
        trainer.run_dir / CURVES_FILE,
        title=trainer.scenario.name,
    )
    if curves is not None:
        trainer.client.log_artifact(trainer.run_id, str(curves))
    result = TrainResult(
        trainer.run_id,
        int(trainer.model.num_timesteps),
        "FINISHED",
        trainer.run_dir,
        trainer.validations,
    )
    if cfg.register:
        from rlscale.training.export import export_ppo, log_policy, register_policy

        export_dir = trainer.run_dir / "policy"
        export_ppo(
            trainer.model,
            trainer.scenario_sim,
            export_dir,
            name=f"ppo-{trainer.scenario.name}",
            vec_normalize=trainer.vn,
            training={
                "run_id": trainer.run_id,
                "timesteps": int(trainer.model.num_timesteps),
                "seed": cfg.seed,
                "lagrange_price_usd": trainer.lagrange.price_usd,
                "selected": selected["selected"],
                "selected_timesteps": int(selected["timesteps"]),
                **trainer.mix_record(),
            },
        )
        result.export_dir = export_dir
        if register_version:
            result.model_version = register_policy(
                export_dir,
                model_name=cfg.model_name,
                alias=cfg.alias,
                tracking_uri=trainer.uri,
                run_id=trainer.run_id,
            )
        else:
            log_policy(export_dir, tracking_uri=trainer.uri, run_id=trainer.run_id)
    return result


# --- command line --------------------------------------------------------------------------


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``rlscale train``."""
    p = sub.add_parser(
        "train",
        help="train a PPO scaler (MLflow-tracked), register it as challenger",
        description=(
            "Train a PPO autoscaling policy on a scenario's training windows, validate it on "
            "its validation windows (cost and SLO attainment), checkpoint it, export it to ONNX "
            "and register it in MLflow as NAME@challenger. The SLO target is a constraint "
            "(adapted violation price). Ctrl-C saves a checkpoint: --resume RUN_ID continues."
        ),
    )
    p.add_argument("--config", default=None, help="YAML or JSON file of settings (see below)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="continue an MLflow run")
    add_config_arguments(p)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run ``rlscale train``; prints the run's summary as JSON on the last line."""
    from rlscale.common.tracking import TrackingError

    try:
        config = resume_config(args.resume, args) if args.resume else config_from_args(args)
        result = train(config, resume=args.resume)
    except TrackingError as err:
        print(f"rlscale train: {err}", file=sys.stderr)
        return 2
    for v in result.validations[-1:]:
        print(
            f"validation at {v.timesteps} steps: cost {v.cost_usd:.2f} USD per episode "
            f"({v.cost_usd_per_h:.3f} USD/h), attainment {v.slo_attainment:.3%} "
            f"(target {v.target:.1%}); run folder {result.run_dir}"
        )
    print(json.dumps(result.summary()))
    return 0 if result.status == "FINISHED" else 130
