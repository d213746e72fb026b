"""Throughput profiles: how fast one replica of an instance type serves the model.

One continuous-batching iteration of a replica holding ``b`` sequences whose KV cache holds
``ctx`` tokens in all, while prefilling ``q`` new prompt tokens, takes

    iter_s = iter_base_s + iter_per_seq_s * b + iter_per_ctx_token_s * ctx
             + prefill_per_token_s * q

and emits one token per decoding sequence. A replica holds at most ``max_num_seqs`` sequences
and at most ``kv_cache_tokens`` tokens of context. Profiles are fitted by ``rlscale calibrate``
from measured vLLM rows and stored as YAML in ``experiments/profiles/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .scenario import PROFILE_DIR, ScenarioError


@dataclass(frozen=True)
class ThroughputProfile:
    """Fitted iteration-time model of one replica (see the module docstring)."""

    name: str
    gpu: str
    gpus_per_replica: int
    model: str
    weights_gb: float
    iter_base_s: float
    iter_per_seq_s: float
    iter_per_ctx_token_s: float
    prefill_per_token_s: float
    kv_cache_tokens: int
    max_num_seqs: int
    fit_mape: float
    fit_rows: int
    source: str


_FLOAT_FIELDS = (
    "weights_gb",
    "iter_base_s",
    "iter_per_seq_s",
    "iter_per_ctx_token_s",
    "prefill_per_token_s",
    "fit_mape",
)
_INT_FIELDS = ("gpus_per_replica", "kv_cache_tokens", "max_num_seqs", "fit_rows")
_STR_FIELDS = ("name", "gpu", "model", "source")


def list_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    """Names of the profiles stored in ``profile_dir`` (one ``<name>.yaml`` each)."""
    return sorted(p.stem for p in Path(profile_dir).glob("*.yaml"))


def profile_to_dict(profile: ThroughputProfile) -> dict[str, Any]:
    """The profile's fields as plain Python values, in declaration order (YAML-ready)."""
    return {f.name: getattr(profile, f.name) for f in fields(ThroughputProfile)}


def profile_from_dict(raw: Any, source: str = "<dict>") -> ThroughputProfile:
    """Build a profile from a mapping; keys beyond the dataclass fields (fit details) are ignored.

    :param raw: mapping with every field of :class:`ThroughputProfile`.
    :param source: where the mapping came from, named in error messages.
    :raises ScenarioError: a field is missing, has the wrong type or a negative value.
    """
    if not isinstance(raw, dict):
        raise ScenarioError(f"profile {source}: expected a mapping, got {type(raw).__name__}")
    missing = [f.name for f in fields(ThroughputProfile) if f.name not in raw]
    if missing:
        raise ScenarioError(f"profile {source}: missing field(s) {missing}")
    values: dict[str, Any] = {}
    for key in _STR_FIELDS:
        if not isinstance(raw[key], str):
            raise ScenarioError(f"profile {source}: '{key}' must be a string (got {raw[key]!r})")
        values[key] = raw[key]
    for key in _INT_FIELDS:
        # bool is an int subclass; `true` in YAML is never a count.
        if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 0:
            raise ScenarioError(
                f"profile {source}: '{key}' must be a non-negative integer (got {raw[key]!r})"
            )
        values[key] = raw[key]
    for key in _FLOAT_FIELDS:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ScenarioError(
                f"profile {source}: '{key}' must be a non-negative number (got {value!r})"
            )
        values[key] = float(value)
    for key in ("gpus_per_replica", "max_num_seqs", "kv_cache_tokens"):
        if values[key] < 1:
            raise ScenarioError(f"profile {source}: '{key}' must be >= 1 (got {values[key]})")
    return ThroughputProfile(**values)


def load_profile(name: str | Path, profile_dir: Path = PROFILE_DIR) -> ThroughputProfile:
    """A stored profile by name (``<profile_dir>/<name>.yaml``), or a YAML file by path.

    :param name: profile name such as ``h100x1-llama3-8b``, or a path to a YAML file.
    :param profile_dir: folder searched for names; defaults to ``experiments/profiles/``.
    :raises ScenarioError: unknown name (the message lists the known ones), bad YAML or fields.
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        path = Path(profile_dir) / f"{name}.yaml"
    if not path.exists():
        raise ScenarioError(
            f"unknown throughput profile '{name}'; known profiles in {profile_dir}: "
            f"{list_profiles(profile_dir)} (run `rlscale calibrate` to fit them)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"profile {path} is not valid YAML: {err}") from None
    return profile_from_dict(raw, str(path))


def saturation_batch(
    profile: ThroughputProfile,
    prompt_tokens: float,
    output_tokens: float,
    *,
    max_batched_tokens: int = 8192,
) -> float:
    """Sequences one replica holds at its largest batch for a request mix (at least 1).

    As large as sequence slots, the KV cache (full context per sequence, as the simulator
    admits) and the iteration token budget allow.
    """
    b = min(
        float(profile.max_num_seqs),
        profile.kv_cache_tokens / (prompt_tokens + output_tokens),
        float(max_batched_tokens),
    )
    return max(b, 1.0)


def replica_capacity_rps(
    profile: ThroughputProfile,
    prompt_tokens: float,
    output_tokens: float,
    *,
    max_batched_tokens: int = 8192,
) -> float:
    """Requests per second one replica sustains at its largest batch for a request mix.

    At batch ``b`` a request costs its prefill, ``prefill_per_token_s * prompt``, plus its share
    of ``output`` decode iterations, ``output * iter_s(b) / b``, with the batch holding on
    average ``prompt + output / 2`` context tokens per sequence; ``b`` is
    :func:`saturation_batch`. So

        capacity_rps = 1 / (prefill_per_token_s * prompt + output * iter_s(b) / b)

    It is the saturation throughput that plots draw as "ready capacity" and that rule-based
    scalers size replicas by; :func:`rlscale.envs.capacity.pool_capacities_rps` applies it to
    every pool of a scenario.
    """
    if prompt_tokens <= 0 or output_tokens <= 0:
        raise ValueError(
            f"prompt_tokens and output_tokens must be positive, got {prompt_tokens}, "
            f"{output_tokens}"
        )
    b = saturation_batch(
        profile, prompt_tokens, output_tokens, max_batched_tokens=max_batched_tokens
    )
    ctx = b * (prompt_tokens + output_tokens / 2.0)
    iter_s = profile.iter_base_s + profile.iter_per_seq_s * b + profile.iter_per_ctx_token_s * ctx
    per_request_s = profile.prefill_per_token_s * prompt_tokens + output_tokens * iter_s / b
    return 1.0 / per_request_s


def slo_capacity_rps(
    profile: ThroughputProfile,
    prompt_tokens: float,
    output_tokens: float,
    *,
    tpot_s: float,
    max_batched_tokens: int = 8192,
) -> float:
    """Requests/s one replica serves with its time per output token at ``tpot_s``.

    In steady state a replica at batch ``b`` spends a share of each second prefilling, which
    stretches every decode iteration: TPOT(b) = iter_s(b) + b * prompt * prefill_s / output,
    linear in ``b``. The saturation throughput (:func:`replica_capacity_rps`) may sit at a batch
    whose TPOT breaks the SLO, so sizing by it would plan for latency the SLO forbids; this is
    the throughput at the largest batch whose TPOT meets ``tpot_s`` (never above saturation).
    """
    sat = replica_capacity_rps(
        profile, prompt_tokens, output_tokens, max_batched_tokens=max_batched_tokens
    )
    ctx_per_seq = prompt_tokens + output_tokens / 2.0
    slope = (
        profile.iter_per_seq_s
        + profile.iter_per_ctx_token_s * ctx_per_seq
        + prompt_tokens * profile.prefill_per_token_s / output_tokens
    )
    b = (tpot_s - profile.iter_base_s) / slope if slope > 0 else math.inf
    b_sat = saturation_batch(
        profile, prompt_tokens, output_tokens, max_batched_tokens=max_batched_tokens
    )
    if b >= b_sat:
        return sat
    b = max(b, 1.0)  # a replica that breaks TPOT even alone still serves one at a time
    iter_s = (
        profile.iter_base_s
        + profile.iter_per_seq_s * b
        + profile.iter_per_ctx_token_s * (b * ctx_per_seq)
    )
    return min(
        sat, 1.0 / (profile.prefill_per_token_s * prompt_tokens + output_tokens * iter_s / b)
    )
