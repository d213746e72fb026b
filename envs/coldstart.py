"""Cold-start durations of a new replica: provisioning, image pull, weight load, warm-up."""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from .profiles import ThroughputProfile
from .scenario import ColdStartConfig, Distribution, ScenarioError, data_root

COLD_START_LEVELS = 32
"""Number of quantiles per duration table; the simulator draws by inverse CDF on them."""


@dataclass(frozen=True)
class ColdStartModel:
    """Quantile tables (seconds, at levels (k + 0.5) / COLD_START_LEVELS) of each phase.

    Attributes:
        provisioning_s: node provisioning (requested -> node running).
        loading_s: image pull + weight load + engine warm-up (node running -> ready).
        warm_start_s: weight load + engine warm-up from a stopped standby replica.
    """

    provisioning_s: np.ndarray
    loading_s: np.ndarray
    warm_start_s: np.ndarray


SERVERLESSLLM_DIR = "serverlessllm_loading_times"
SERVERLESSLLM_COLD_LOADS: dict[str, float] = {
    # safetensors loads of 30 different copies in random order (cold page cache, as on a fresh
    # node), H100 host with local NVMe; value = checkpoint size in GB (~2 bytes x parameters,
    # model cards: 8.03B, 32.8B, 32.8B).
    "h100_2025/random/meta-llama_Llama-3.1-8B-Instruct_safetensors_30_random.json": 16.06,
    "h100_2025/random/Qwen_Qwen3-32B_safetensors_30_random.json": 65.6,
    "h100_2025/random/deepseek-ai_DeepSeek-R1-Distill-Qwen-32B_safetensors_30_random.json": 65.5,
}
ALIBABA_BASEMODEL = "alibaba_gentd26_diffusion_serving/basemodel_update_latency_anon.csv"
COLD_START_SAMPLES = 20_000
_Z90 = 1.2815515655446004
"""Standard-normal 90th percentile: a lognormal's sigma is ln(p90 / median) / _Z90."""


def quantile_levels(n: int = COLD_START_LEVELS) -> np.ndarray:
    """The table levels ``(k + 0.5) / n``, k = 0..n-1."""
    return (np.arange(n) + 0.5) / n


def _data_dir(data_dir: Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else data_root()


@functools.lru_cache(maxsize=8)
def _serverlessllm_s_per_gb(data_dir: Path) -> tuple[float, ...]:
    """Seconds per GB of checkpoint, one value per measured cold load (pooled over models)."""
    out: list[float] = []
    for rel, size_gb in SERVERLESSLLM_COLD_LOADS.items():
        path = data_dir / SERVERLESSLLM_DIR / rel
        if not path.is_file():
            raise ScenarioError(
                f"cold_start: weight-load data file {path} is missing (data: serverlessllm; "
                f"set $RLSCALE_DATA to the shared data folder)"
            )
        try:
            loads = json.loads(path.read_text())
            times = [float(item["loading_time"]) for item in loads]
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as err:
            raise ScenarioError(
                f"cold_start: {path} is not a JSON list of objects with a numeric "
                f"'loading_time' ({type(err).__name__}: {err})"
            ) from None
        out.extend(t / size_gb for t in times if t > 0)
    if not out:
        raise ScenarioError(
            f"cold_start: no positive loading_time in {data_dir / SERVERLESSLLM_DIR}"
        )
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _alibaba_basemodel_s(data_dir: Path) -> tuple[float, ...]:
    """Base-model load latencies of the Alibaba diffusion-serving trace, in seconds."""
    path = data_dir / ALIBABA_BASEMODEL
    if not path.is_file():
        raise ScenarioError(
            f"cold_start: load-latency data file {path} is missing (data: alibaba_basemodel)"
        )
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if "value" not in (reader.fieldnames or []):
            raise ScenarioError(f"cold_start: {path} has no 'value' column ({reader.fieldnames})")
        try:
            values_ms = [float(row["value"]) for row in reader]
        except ValueError as err:
            raise ScenarioError(f"cold_start: {path}: non-numeric 'value' ({err})") from None
    out = tuple(v / 1000.0 for v in values_ms if v > 0)
    if not out:
        raise ScenarioError(f"cold_start: {path} has no positive 'value'")
    return out


def empirical_durations_s(
    data: str, profile: ThroughputProfile, data_dir: Path | None = None
) -> np.ndarray:
    """Measured durations (seconds, before ``scale``) behind an empirical distribution.

    ``serverlessllm``: seconds per GB of the cold safetensors loads, times the profile's
    ``weights_gb``. Load time grows linearly with checkpoint size in these data (0.28 s/GB for
    8B, 0.29-0.31 s/GB for 32B); a 70B model on 4 GPUs is taken to load its 140 GB at the same
    rate, i.e. its shards read the one local disk one after another, the conservative case.

    ``alibaba_basemodel``: base-model load latencies of a production diffusion service (ms
    converted to s), used as recorded; the model there is not an LLM, so no size scaling.
    """
    root = _data_dir(data_dir).resolve()
    if data == "serverlessllm":
        return np.asarray(_serverlessllm_s_per_gb(root)) * profile.weights_gb
    if data == "alibaba_basemodel":
        return np.asarray(_alibaba_basemodel_s(root))
    raise ScenarioError(
        f"cold_start: unknown duration data '{data}'; known: serverlessllm, alibaba_basemodel"
    )


def _lognormal_sigma(dist: Distribution) -> float:
    assert dist.median_s is not None and dist.p90_s is not None  # guaranteed by Distribution
    return math.log(dist.p90_s / dist.median_s) / _Z90


def duration_quantiles_s(
    dist: Distribution,
    profile: ThroughputProfile,
    *,
    levels: np.ndarray | None = None,
    data_dir: Path | None = None,
) -> np.ndarray:
    """Exact quantiles (seconds) of one duration at ``levels`` (default: the table levels).

    Lognormal: ``median * exp(sigma * z)``; empirical: linear interpolation between the sorted
    measurements. Both multiplied by ``dist.scale``.
    """
    levels = quantile_levels() if levels is None else np.asarray(levels, dtype=float)
    if dist.data is not None:
        values = empirical_durations_s(dist.data, profile, data_dir)
        return np.quantile(values, levels) * dist.scale
    assert dist.median_s is not None
    z = np.asarray(special.ndtri(levels))
    return dist.median_s * np.exp(_lognormal_sigma(dist) * z) * dist.scale


def sample_duration_s(
    dist: Distribution,
    profile: ThroughputProfile,
    rng: np.random.Generator,
    n: int,
    *,
    data_dir: Path | None = None,
) -> np.ndarray:
    """``n`` independent draws (seconds) of one duration, by inverse CDF of its quantiles."""
    return duration_quantiles_s(dist, profile, levels=rng.random(n), data_dir=data_dir)


def build_cold_start(
    cfg: ColdStartConfig,
    profile: ThroughputProfile,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    n_samples: int = COLD_START_SAMPLES,
) -> ColdStartModel:
    """Quantile tables of the cold-start phases of one replica of ``profile``.

    ``provisioning_s`` holds the exact quantiles of the provisioning duration. ``loading_s``
    (image pull + weight load + engine warm-up) and ``warm_start_s`` (weight load + warm-up)
    are sums of independent durations, so their quantiles come from ``n_samples`` Monte Carlo
    draws with a fixed ``seed``; both sums share the same weight-load and warm-up draws, so a
    warm start is never slower than the loading phase of a cold one.

    :param cfg: the scenario's cold-start section.
    :param profile: the pool's throughput profile (its ``weights_gb`` scales weight loading).
    :param data_dir: shared data folder; None means :func:`rlscale.envs.scenario.data_root`.
    :param seed: seed of the Monte Carlo draws (the tables are deterministic given it).
    :param n_samples: Monte Carlo draws per phase.
    :raises ScenarioError: an empirical distribution whose data file is missing or malformed.
    """
    if n_samples < COLD_START_LEVELS:
        raise ScenarioError(f"cold_start: n_samples ({n_samples}) < {COLD_START_LEVELS} levels")
    rng = np.random.default_rng(seed)
    pull = sample_duration_s(cfg.image_pull, profile, rng, n_samples, data_dir=data_dir)
    weights = sample_duration_s(cfg.weight_load, profile, rng, n_samples, data_dir=data_dir)
    warmup = sample_duration_s(cfg.engine_warmup, profile, rng, n_samples, data_dir=data_dir)
    levels = quantile_levels()
    return ColdStartModel(
        provisioning_s=duration_quantiles_s(cfg.provisioning, profile, data_dir=data_dir),
        loading_s=np.quantile(pull + weights + warmup, levels),
        warm_start_s=np.quantile(weights + warmup, levels),
    )
