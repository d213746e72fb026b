"""The one typed configuration of ``rlscale train``.

Every setting of a training run is a field of :class:`TrainConfig`, with its default and a
one-line help. The command line's flags are generated from the fields (``--n-envs 32``), an
optional YAML or JSON file (``--config FILE``) maps onto the same fields, and the whole config
is recorded in the run (MLflow params and ``config.json``), so a run is reproducible from what
it logged. Precedence: defaults < config file < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlscale.envs.scenario import ScenarioError
from rlscale.training.model_registry import CHALLENGER_ALIAS, DEFAULT_MODEL_NAME

TRAIN_SCENARIO = "synthetic-4day"
"""The default scenario: its workload is generated, so training runs without any dataset."""


def _f(default: Any, help: str) -> Any:
    """A field with its default and one line of help (what ``--help`` prints)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Settings of one PPO training run (CleanRL style: one dataclass, documented fields)."""

    # --- what to learn ---
    scenario: str = _f(TRAIN_SCENARIO, "shipped scenario name or YAML path")
    total_timesteps: int = _f(1_000_000, "environment steps to train for, all envs together")
    seed: int = _f(0, "seed of PPO, the envs' episode draws and the validation windows")
    randomize: bool = _f(
        True, "domain randomization: draw each episode's ranges from the scenario's section"
    )
    # --- PPO (stable-baselines3) ---
    n_envs: int = _f(32, "clusters simulated at once (one batched kernel call per step)")
    n_steps: int = _f(256, "steps per env between PPO updates (rollout = n_envs * n_steps)")
    batch_size: int = _f(2048, "minibatch size of a PPO update")
    n_epochs: int = _f(5, "passes over each rollout")
    learning_rate: float = _f(3e-4, "Adam learning rate")
    gamma: float = _f(0.995, "discount per decision step (30 s: a horizon of about 100 min)")
    gae_lambda: float = _f(0.95, "GAE lambda")
    clip_range: float = _f(0.2, "PPO clipping")
    ent_coef: float = _f(0.005, "entropy bonus")
    vf_coef: float = _f(0.5, "value loss weight")
    max_grad_norm: float = _f(0.5, "gradient clipping")
    net_arch: list[int] = field(
        default_factory=lambda: [128, 128],
        metadata={"help": "hidden layer sizes of policy and value networks"},
    )
    hold_prior: float = _f(
        0.8, "initial probability of each action head's no-op (hold replicas, empty warm pool)"
    )
    norm_obs: bool = _f(True, "normalize observations (VecNormalize; baked into the export)")
    norm_reward: bool = _f(True, "normalize rewards by the running return's spread")
    clip_obs: float = _f(10.0, "clip normalized observations to +-this")
    # --- the SLO as a constraint (Lagrangian relaxation) ---
    lagrangian: bool = _f(
        True,
        "adapt the price of a violation (a Lagrange multiplier) so that attainment meets the "
        "target; off: the scenario's fixed slo_violation_usd",
    )
    lagrange_init_usd: float | None = _f(
        None, "starting price per violation in USD (default: the scenario's slo_violation_usd)"
    )
    lagrange_lr: float = _f(0.2, "dual step in log space per rollout")
    lagrange_min_usd: float = _f(1e-4, "floor of the violation price")
    lagrange_max_usd: float = _f(10.0, "ceiling of the violation price")
    lagrange_window: int = _f(
        1,
        "rollouts whose requests each dual step pools (0: one training episode's worth, "
        "ceil(episode_steps / n_steps), at most 16; pooling was measured no better)",
    )
    attainment_margin: float = _f(
        0.002, "train toward target + margin, so that the deterministic policy clears the target"
    )
    # --- validation, checkpoints, output ---
    eval_every: int = _f(
        250_000,
        "validate every this many env steps (0: only at the end); each validation also steers "
        "the rollouts' attainment target so that the served policy meets the SLO",
    )
    eval_windows: int = _f(
        4, "validation windows per evaluation and workload (from its training part)"
    )
    eval_seeds: int = _f(1, "seeds per validation window")
    select: str = _f(
        "best",
        "the policy exported: best (the cheapest validation meeting the SLO target; the last "
        "when none did) or last",
    )
    checkpoint_every: int = _f(100_000, "save a resumable checkpoint every this many env steps")
    out_dir: str = _f("out/train", "where run folders go: OUT_DIR/RUN_ID/")
    model_name: str = _f(DEFAULT_MODEL_NAME, "registered model to add the trained policy to")
    alias: str = _f(
        CHALLENGER_ALIAS, "alias moved to the new version (the promotion gate reads it)"
    )
    register: bool = _f(True, "export to ONNX and register the policy when training ends")
    tracking_uri: str | None = _f(None, "MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    run_name: str | None = _f(None, "MLflow run name (default {scenario}__ppo__{seed}__{time})")
    torch_threads: int = _f(1, "torch intra-op threads (the simulator uses its own)")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        problems = []
        for name in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_envs * self.n_steps < self.batch_size:
            problems.append(
                f"batch_size={self.batch_size} is larger than a rollout "
                f"(n_envs * n_steps = {self.n_envs * self.n_steps}); lower it or raise n_steps"
            )
        for name in (
            "eval_every",
            "checkpoint_every",
            "eval_seeds",
            "eval_windows",
            "lagrange_window",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            problems.append(f"gamma={self.gamma}, gae_lambda={self.gae_lambda} must be in (0, 1]")
        if not 0 < self.lagrange_min_usd <= self.lagrange_max_usd:
            problems.append("need 0 < lagrange_min_usd <= lagrange_max_usd")
        if self.select not in ("best", "last"):
            problems.append(f"select={self.select!r} must be 'best' or 'last'")
        if not 0.0 <= self.hold_prior < 1.0:
            problems.append(f"hold_prior={self.hold_prior} must be in [0, 1)")
        if not self.net_arch or any(int(n) < 1 for n in self.net_arch):
            problems.append(f"net_arch={self.net_arch} needs positive layer sizes")
        if problems:
            raise ScenarioError("train config: " + "; ".join(problems))

    def ppo_kwargs(self) -> dict[str, Any]:
        """stable-baselines3 ``PPO``'s keyword arguments from these settings (training and
        ``rlscale bench train`` build their PPO from this)."""
        return {
            "learning_rate": self.learning_rate,
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "gamma": self.gamma,
            "gae_lambda": self.gae_lambda,
            "clip_range": self.clip_range,
            "ent_coef": self.ent_coef,
            "vf_coef": self.vf_coef,
            "max_grad_norm": self.max_grad_norm,
            "policy_kwargs": {"net_arch": {"pi": list(self.net_arch), "vf": list(self.net_arch)}},
            "seed": self.seed,
            "device": "cpu",
            "verbose": 0,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (what the run records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """A config from ``values`` (unknown keys are an error naming the known ones)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ScenarioError(
                f"{source}: unknown train settings {unknown}; known: {sorted(known)}"
            )
        return cls(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML or JSON file (a mapping of field names to values)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ScenarioError(f"--config {p}: cannot read it: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ScenarioError(
            f"--config {p}: expected a mapping of settings, got {type(raw).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def _base_type(tp: Any) -> Any:
    """The type under ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field; defaults stay None so that only the flags
    given override the config file."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("settings (TrainConfig; also in --config FILE)")
    for f in dataclasses.fields(TrainConfig):
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default {default})"
        if tp is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            group.add_argument(
                flag, dest=f.name, type=item, nargs="+", default=None, help=help_text
            )
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then ``base`` (a config file's or a resumed run's settings), then the flags
    given on the command line."""
    values = dict(base or {})
    config_file = getattr(args, "config", None)
    if config_file:
        values.update(load_config_file(config_file))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig.from_dict(values, source=str(config_file or "train settings"))


def config_json(config: TrainConfig) -> str:
    """The config as the JSON the run records."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
