"""Cold-start durations of a new replica: provisioning, image pull, weight load, warm-up.

Measured durations (``data: serverlessllm`` / ``alibaba_basemodel`` in a scenario) come from
quantile tables shipped in ``experiments/coldstart/``, fitted from the public datasets by
``rlscale data fit-coldstart``; the simulator never reads the raw data itself.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import special

from .datasets import dataset_for_path, fetch_hint
from .profiles import ThroughputProfile
from .scenario import COLDSTART_DIR, ColdStartConfig, Distribution, ScenarioError, data_root

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
TABLE_MAX_KNOTS = 1001
"""A table keeps every sorted measurement up to this many, else this many even quantiles."""
FIT_COMMAND = "rlscale data fit-coldstart"
_Z90 = 1.2815515655446004
"""Standard-normal 90th percentile: a lognormal's sigma is ln(p90 / median) / _Z90."""


@dataclass(frozen=True)
class EmpiricalTable:
    """The empirical quantile function of one measured duration, as shipped in the package.

    ``values[i]`` is the quantile at ``levels[i]``; quantiles between knots interpolate linearly,
    which is exactly numpy's default (linear) quantile of the measurements when every sorted
    measurement is a knot (``levels = i / (n - 1)``).

    Attributes:
        name: the scenario's ``data`` name (``serverlessllm``, ``alibaba_basemodel``).
        unit: ``s_per_gb`` (times the profile's ``weights_gb``) or ``s``.
        levels: float64 [K] in [0, 1], increasing, from 0 to 1.
        values: float64 [K], non-decreasing.
        samples: how many measurements the table was fitted from.
        source_files: the files it was fitted from, relative to ``$RLSCALE_DATA``.
    """

    name: str
    unit: str
    levels: np.ndarray
    values: np.ndarray
    samples: int
    source_files: tuple[str, ...]


def quantile_levels(n: int = COLD_START_LEVELS) -> np.ndarray:
    """The table levels ``(k + 0.5) / n``, k = 0..n-1."""
    return (np.arange(n) + 0.5) / n


def _data_dir(data_dir: Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else data_root()


def _missing(path: Path, rel: str) -> ScenarioError:
    return ScenarioError(
        f"cold_start: data file {path} is missing; {fetch_hint(rel)}. The simulator itself "
        f"reads the table shipped in {COLDSTART_DIR}; the data is needed only to refit it "
        f"(`{FIT_COMMAND}`)"
    )


def read_serverlessllm_s_per_gb(data_dir: Path | None = None) -> np.ndarray:
    """Seconds per GB of checkpoint, one value per measured cold load (pooled over models)."""
    root = _data_dir(data_dir)
    out: list[float] = []
    for rel, size_gb in SERVERLESSLLM_COLD_LOADS.items():
        path = root / SERVERLESSLLM_DIR / rel
        if not path.is_file():
            raise _missing(path, f"{SERVERLESSLLM_DIR}/{rel}")
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
        raise ScenarioError(f"cold_start: no positive loading_time in {root / SERVERLESSLLM_DIR}")
    return np.asarray(out)


def read_alibaba_basemodel_s(data_dir: Path | None = None) -> np.ndarray:
    """Base-model load latencies of the Alibaba diffusion-serving trace, in seconds."""
    path = _data_dir(data_dir) / ALIBABA_BASEMODEL
    if not path.is_file():
        raise _missing(path, ALIBABA_BASEMODEL)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if "value" not in (reader.fieldnames or []):
            raise ScenarioError(f"cold_start: {path} has no 'value' column ({reader.fieldnames})")
        try:
            values_ms = [float(row["value"]) for row in reader]
        except ValueError as err:
            raise ScenarioError(f"cold_start: {path}: non-numeric 'value' ({err})") from None
    out = np.asarray([v / 1000.0 for v in values_ms if v > 0])
    if not out.size:
        raise ScenarioError(f"cold_start: {path} has no positive 'value'")
    return out


@dataclass(frozen=True)
class EmpiricalSource:
    """Where an empirical duration comes from: the raw files and how to read them."""

    unit: str
    """``s_per_gb`` (times the profile's ``weights_gb``) or ``s``."""
    read: Callable[[Path | None], np.ndarray]
    """The measurements from the data folder (None: ``$RLSCALE_DATA``)."""
    files: tuple[str, ...]
    """The files read, relative to the data folder."""
    what: str


EMPIRICAL_DATA: dict[str, EmpiricalSource] = {
    "serverlessllm": EmpiricalSource(
        unit="s_per_gb",
        read=read_serverlessllm_s_per_gb,
        files=tuple(f"{SERVERLESSLLM_DIR}/{rel}" for rel in SERVERLESSLLM_COLD_LOADS),
        what="seconds per GB of checkpoint of cold safetensors loads from local NVMe "
        "(ServerlessLLM benchmarks, H100 host, 30 random copies each of Llama-3.1-8B, Qwen3-32B "
        "and DeepSeek-R1-Distill-Qwen-32B); times the profile's weights_gb",
    ),
    "alibaba_basemodel": EmpiricalSource(
        unit="s",
        read=read_alibaba_basemodel_s,
        files=(ALIBABA_BASEMODEL,),
        what="base-model load latencies of a production diffusion service (Alibaba GenTD26), s",
    ),
}
"""The scenario's ``data`` names of measured durations, each with its source."""


def _unknown_data(data: str) -> ScenarioError:
    return ScenarioError(
        f"cold_start: unknown duration data '{data}'; known: {', '.join(EMPIRICAL_DATA)}"
    )


def fit_empirical_table(data: str, data_dir: Path | None = None) -> EmpiricalTable:
    """Fit the quantile table of ``data`` from the raw files under ``data_dir``.

    Up to :data:`TABLE_MAX_KNOTS` measurements, every sorted one is a knot (the table is the
    data, reduced to what the simulator uses); beyond, the quantiles at that many even levels.
    """
    if data not in EMPIRICAL_DATA:
        raise _unknown_data(data)
    source = EMPIRICAL_DATA[data]
    samples = np.sort(source.read(data_dir))
    n = samples.size
    if n <= TABLE_MAX_KNOTS:
        levels = np.arange(n) / max(n - 1, 1)
        values = samples
    else:
        levels = np.linspace(0.0, 1.0, TABLE_MAX_KNOTS)
        values = np.quantile(samples, levels)
    return EmpiricalTable(data, source.unit, levels, values, n, source.files)


def write_empirical_tables(
    out_dir: Path = COLDSTART_DIR, data_dir: Path | None = None
) -> list[Path]:
    """Fit every empirical cold-start table from the data and write ``<out_dir>/<name>.yaml``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for data, source in EMPIRICAL_DATA.items():
        table = fit_empirical_table(data, data_dir)
        files = source.files
        dataset = dataset_for_path(files[0])
        doc = {
            "name": table.name,
            "unit": table.unit,
            "what": source.what,
            "source": {
                "dataset": dataset.name if dataset else None,
                "url": dataset.homepage if dataset else None,
                "commit": dataset.commit if dataset else None,
                "license": dataset.license if dataset else None,
                "files": list(files),
            },
            "regenerate": FIT_COMMAND,
            "samples": table.samples,
            "levels": [float(x) for x in table.levels],
            "values": [float(x) for x in table.values],
        }
        header = (
            f"# Cold-start duration table '{data}', fitted by `{FIT_COMMAND}` "
            "(envs/coldstart.py); do not edit.\n"
            f"# Source: dataset {doc['source']['dataset']} ({doc['source']['url']}), "
            "these files under $RLSCALE_DATA:\n" + "".join(f"#   {f}\n" for f in files)
        )
        body = yaml.safe_dump(doc, sort_keys=False, width=100, default_flow_style=None)
        path = out_dir / f"{data}.yaml"
        path.write_text(header + body)
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=16)
def load_empirical_table(data: str, table_dir: Path = COLDSTART_DIR) -> EmpiricalTable:
    """The shipped table of ``data`` (``<table_dir>/<data>.yaml``).

    :raises ScenarioError: unknown data name, missing or malformed table (named with the fix).
    """
    if data not in EMPIRICAL_DATA:
        raise _unknown_data(data)
    path = Path(table_dir) / f"{data}.yaml"
    if not path.is_file():
        raise ScenarioError(
            f"cold_start: table {path} is missing; `{FIT_COMMAND}` writes it from the data"
        )
    try:
        doc = yaml.safe_load(path.read_text())
        levels = np.asarray(doc["levels"], dtype=float)
        values = np.asarray(doc["values"], dtype=float)
        table = EmpiricalTable(
            name=doc["name"],
            unit=doc["unit"],
            levels=levels,
            values=values,
            samples=int(doc["samples"]),
            source_files=tuple(doc["source"]["files"]),
        )
    except (yaml.YAMLError, TypeError, KeyError, ValueError) as err:
        raise ScenarioError(
            f"cold_start: table {path} is malformed ({type(err).__name__}: {err}); "
            f"rewrite it with `{FIT_COMMAND}`"
        ) from None
    ok = (
        levels.ndim == 1
        and levels.size >= 2
        and levels.shape == values.shape
        and levels[0] == 0.0
        and levels[-1] == 1.0
        and np.all(np.diff(levels) > 0)
        and np.all(np.diff(values) >= 0)
        and np.all(values > 0)
        and table.unit == EMPIRICAL_DATA[data].unit
    )
    if not ok:
        raise ScenarioError(
            f"cold_start: table {path} needs increasing levels from 0 to 1, as many "
            f"non-decreasing positive values, and unit {EMPIRICAL_DATA[data].unit}; "
            f"rewrite it with `{FIT_COMMAND}`"
        )
    return table


def empirical_quantiles_s(
    data: str,
    profile: ThroughputProfile,
    levels: np.ndarray,
    *,
    table_dir: Path = COLDSTART_DIR,
) -> np.ndarray:
    """Quantiles (seconds, before ``scale``) of an empirical duration at ``levels``.

    ``serverlessllm``: seconds per GB of the cold safetensors loads, times the profile's
    ``weights_gb``. Load time grows linearly with checkpoint size in these data (0.28 s/GB for
    8B, 0.29-0.31 s/GB for 32B); a 70B model on 4 GPUs is taken to load its 140 GB at the same
    rate, i.e. its shards read the one local disk one after another, the conservative case.

    ``alibaba_basemodel``: base-model load latencies of a production diffusion service (ms
    converted to s), used as recorded; the model there is not an LLM, so no size scaling.
    """
    table = load_empirical_table(data, Path(table_dir))
    q = np.interp(levels, table.levels, table.values)
    return q * profile.weights_gb if table.unit == "s_per_gb" else q


def _lognormal_sigma(dist: Distribution) -> float:
    assert dist.median_s is not None and dist.p90_s is not None  # guaranteed by Distribution
    return math.log(dist.p90_s / dist.median_s) / _Z90


def duration_quantiles_s(
    dist: Distribution,
    profile: ThroughputProfile,
    *,
    levels: np.ndarray | None = None,
    table_dir: Path = COLDSTART_DIR,
) -> np.ndarray:
    """Exact quantiles (seconds) of one duration at ``levels`` (default: the table levels).

    Lognormal: ``median * exp(sigma * z)``; empirical: linear interpolation in the shipped
    table (:func:`empirical_quantiles_s`). Both multiplied by ``dist.scale``.
    """
    levels = quantile_levels() if levels is None else np.asarray(levels, dtype=float)
    if dist.data is not None:
        return empirical_quantiles_s(dist.data, profile, levels, table_dir=table_dir) * dist.scale
    assert dist.median_s is not None
    z = np.asarray(special.ndtri(levels))
    return dist.median_s * np.exp(_lognormal_sigma(dist) * z) * dist.scale


def sample_duration_s(
    dist: Distribution,
    profile: ThroughputProfile,
    rng: np.random.Generator,
    n: int,
    *,
    table_dir: Path = COLDSTART_DIR,
) -> np.ndarray:
    """``n`` independent draws (seconds) of one duration, by inverse CDF of its quantiles."""
    return duration_quantiles_s(dist, profile, levels=rng.random(n), table_dir=table_dir)


def build_cold_start(
    cfg: ColdStartConfig,
    profile: ThroughputProfile,
    *,
    table_dir: Path = COLDSTART_DIR,
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
    :param table_dir: folder of the empirical tables (default: the ones shipped in the package).
    :param seed: seed of the Monte Carlo draws (the tables are deterministic given it).
    :param n_samples: Monte Carlo draws per phase.
    :raises ScenarioError: an empirical distribution whose table is missing or malformed.
    """
    if n_samples < COLD_START_LEVELS:
        raise ScenarioError(f"cold_start: n_samples ({n_samples}) < {COLD_START_LEVELS} levels")
    rng = np.random.default_rng(seed)
    pull = sample_duration_s(cfg.image_pull, profile, rng, n_samples, table_dir=table_dir)
    weights = sample_duration_s(cfg.weight_load, profile, rng, n_samples, table_dir=table_dir)
    warmup = sample_duration_s(cfg.engine_warmup, profile, rng, n_samples, table_dir=table_dir)
    levels = quantile_levels()
    return ColdStartModel(
        provisioning_s=duration_quantiles_s(cfg.provisioning, profile, table_dir=table_dir),
        loading_s=np.quantile(pull + weights + warmup, levels),
        warm_start_s=np.quantile(weights + warmup, levels),
    )
