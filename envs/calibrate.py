"""Calibration: fit throughput profiles to measured vLLM batches (Argonne LLM-Inference-Bench).

The data (``llm_inference_bench_argonne/All_results.csv``, vLLM rows) are offline batches: ``B``
requests, each with ``L`` prompt tokens and ``L`` output tokens, submitted at once; ``Latency`` is
the time until the whole batch is done. (``Throughput`` counts prompt *and* output tokens,
``B * 2L / Latency``, so it is not a decode rate and is not used.)

Latency of one batch under the iteration model of :mod:`rlscale.envs.profiles`
(``iter_s = a + c*b + k*ctx + p*q``): a wave of ``s`` sequences runs

* one prefill iteration over ``q = s*L`` prompt tokens, which emits each sequence's first
  token: ``a + c*s + p*s*L``;
* then ``L - 1`` decode iterations; in decode iteration ``j`` (1..L-1) each sequence attends over
  ``L + j`` cached tokens, so ``ctx = s*(L + j)`` and the sum over ``j`` is ``1.5*s*L*(L - 1)``.

So ``wave(s) = L*a + c*s*L + p*s*L + 1.5*k*s*L*(L - 1)``. Only ``c + p`` is identified by these
rows (both multiply ``s*L``); the measured time-to-first-token of a 16 x 1024-token batch
(``all_results_TTFT_ITL.csv``) pins ``p``, and where no TTFT row exists (70B models) ``p`` is
scaled from the same GPU's 8B profile by parameter count per GPU.

KV-cache limit: a replica holds ``kv_cache_tokens`` tokens; a sequence of the batch needs up to
``2L``, so at most ``m = min(B, max_num_seqs, kv_cache_tokens // 2L)`` run together and the batch
runs in ``ceil(B / m)`` waves (full waves of ``m``, then the remainder). vLLM admits sequences on
their prompt length and preempts (recomputes) when the cache fills, which costs about as much as
waiting for a slot; whole waves fit the KV-bound rows (A100 8B at L=2048 B=64, 4xA100 70B at
B=16) to a few percent, while fractional waves (``B/m`` waves of ``m``) under-predict them by up
to 17%.

The model is linear in ``(a, c, k, p)``, so minimizing the relative error
``(pred - meas) / meas`` with ``a, c, k, p >= 0`` is a bounded linear least-squares problem,
solved exactly with :func:`scipy.optimize.lsq_linear` (no start point, no local minima).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import lsq_linear

from .profiles import ThroughputProfile, profile_to_dict
from .scenario import PROFILE_DIR, ScenarioError, data_root

ARGONNE_DIR = "llm_inference_bench_argonne"
RESULTS_FILE = "All_results.csv"
TTFT_FILE = "all_results_TTFT_ITL.csv"
QUANT_FILE = "A100_H100_quant_all_results.csv"
QUANT_COLUMNS = (
    "Hardware",
    "Num of Hardware",
    "Framework",
    "Model",
    "Input Output Length",
    "Batch Size",
    "kv_cache_dtype",
    "latency",
)
FP16 = "Weight = fp16, KV Cache = fp16"
"""``kv_cache_dtype`` of the quantization file's unquantized rows (its column names both)."""
RESULTS_COLUMNS = (
    "Hardware",
    "Num of Hardware",
    "Framework",
    "Model",
    "Input Output Length",
    "Batch Size",
    "Latency",
)
TTFT_COLUMNS = (
    "Hardware",
    "Num of Hardware",
    "Framework",
    "Model",
    "Input Length",
    "Batch Size",
    "TTFT Latency",
)
FRAMEWORK = "vLLM"

MAPE_LIMIT = 0.15
"""A profile is usable when its mean absolute relative error on its rows is below this."""

GIB = 2**30
GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default ``gpu_memory_utilization``: the share of GPU memory it may use at all."""
VLLM_MAX_NUM_SEQS = 256
"""vLLM's default ``--max-num-seqs``."""


@dataclass(frozen=True)
class ModelArch:
    """KV-cache geometry of a served model (from its Hugging Face ``config.json``)."""

    layers: int
    kv_heads: int
    head_dim: int
    params_b: float
    """Parameter count in billions (scales the prefill cost where no TTFT was measured)."""
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache per token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


# config.json of meta-llama/Meta-Llama-3-8B: num_hidden_layers 32, num_key_value_heads 8,
# hidden_size 4096 / num_attention_heads 32 = head dim 128; fp16 -> 128 KiB per token.
LLAMA3_8B = ModelArch(layers=32, kv_heads=8, head_dim=128, params_b=8.03)
# meta-llama/Meta-Llama-3-70B: 80 layers, 8 KV heads, 8192 / 64 = 128 -> 320 KiB per token.
LLAMA3_70B = ModelArch(layers=80, kv_heads=8, head_dim=128, params_b=70.55)
# meta-llama/Llama-2-70b-hf has the same 80-layer GQA-8 attention (320 KiB per token).
LLAMA2_70B = ModelArch(layers=80, kv_heads=8, head_dim=128, params_b=68.98)
# Llama-3-8B with an FP8 KV cache: one byte per value, 64 KiB per token.
LLAMA3_8B_KV_FP8 = ModelArch(layers=32, kv_heads=8, head_dim=128, params_b=8.03, dtype_bytes=1)


@dataclass(frozen=True)
class ProfileSpec:
    """Which measured rows make a profile, and the hardware facts the fit does not estimate."""

    name: str
    hardware: str
    """``Hardware`` value of the rows, e.g. ``Nvidia A100 GPU``."""
    gpus: int
    """``Num of Hardware`` of the rows (tensor-parallel degree) = GPUs per replica."""
    data_model: str
    """``Model`` value of the rows (may be a proxy of the served model)."""
    served_model: str
    gpu: str
    gpu_mem_gib: float
    arch: ModelArch
    weights_gb: float
    source: str
    max_num_seqs: int = VLLM_MAX_NUM_SEQS
    prefill_from: str | None = None
    """Profile whose fitted prefill cost, scaled by parameters per GPU, stands in for a TTFT."""
    quant: str | None = None
    """A quantized variant: the ``kv_cache_dtype`` of its rows in :data:`QUANT_FILE` (which
    names the weights' and the KV cache's types); None: ``All_results.csv``'s fp16 rows."""
    scaled_from: str | None = None
    """A variant with too few rows of its own for the iteration model: this profile's
    parameters times one speed ratio, measured between :attr:`quant` rows and
    :attr:`ratio_base` rows of :attr:`framework` that differ only in the weights' type."""
    ratio_base: str | None = None
    framework: str = FRAMEWORK

    @property
    def kv_cache_tokens(self) -> int:
        """KV-cache capacity: ``(gpus * mem * 0.9 - weights) / kv bytes per token``."""
        return kv_cache_tokens(
            gpus=self.gpus,
            gpu_mem_gib=self.gpu_mem_gib,
            weights_gb=self.weights_gb,
            kv_bytes_per_token=self.arch.kv_bytes_per_token,
        )


_ARGONNE = "Argonne LLM-Inference-Bench (arXiv 2411.00136) All_results.csv, vLLM"
PROFILE_SPECS: tuple[ProfileSpec, ...] = (
    ProfileSpec(
        name="a100x1-llama3-8b",
        hardware="Nvidia A100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B",
        # ALCF Polaris nodes carry A100 SXM4 40 GB; the data agree: with 40 GB the L=2048 B=64
        # batch overflows the KV cache and runs in two waves (125.7 s measured vs ~90 s trend).
        gpu="A100-SXM4-40GB",
        gpu_mem_gib=40.0,
        arch=LLAMA3_8B,
        weights_gb=16.0,
        source=f"{_ARGONNE} rows, 1x A100 40GB, Meta-Llama-3-8B; TTFT from {TTFT_FILE}",
    ),
    ProfileSpec(
        name="h100x1-llama3-8b",
        hardware="Nvidia H100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B",
        gpu="H100-80GB",
        gpu_mem_gib=80.0,
        arch=LLAMA3_8B,
        weights_gb=16.0,
        source=f"{_ARGONNE} rows, 1x H100 80GB, Meta-Llama-3-8B; TTFT from {TTFT_FILE}",
    ),
    ProfileSpec(
        name="mi250x1-llama3-8b",
        hardware="AMD MI250 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B",
        # One "GPU" here is one GCD (half an MI250 card, 64 GB): batch-1 decode moves the 16 GB
        # of weights at ~1 TB/s, ~65% of one GCD's 1.6 TB/s, the same efficiency as the A100.
        gpu="MI250-GCD-64GB",
        gpu_mem_gib=64.0,
        arch=LLAMA3_8B,
        weights_gb=16.0,
        # At batch 64 this ROCm stack slows far beyond the iteration model (L=2048: 287 s, 4.4x
        # batch 32; not the KV cache, which holds batch 32 at L=2048 at normal speed). From
        # L=512 up, two waves of 32 are faster than one batch of 64, so an operator caps
        # concurrency at 32; the fit uses rows with B <= 32 and the MAPE covers all rows.
        max_num_seqs=32,
        source=(
            f"{_ARGONNE} rows, 1x AMD MI250 (one GCD, 64 GB), Meta-Llama-3-8B; TTFT from "
            "all_results_TTFT_ITL.csv; max_num_seqs 32 because batch 64 is anomalously slow "
            "on this stack (fit on B<=32, error reported on all rows)"
        ),
    ),
    ProfileSpec(
        name="h100x4-llama3-70b",
        hardware="Nvidia H100 GPU",
        gpus=4,
        data_model="meta-llama/Meta-Llama-3-70B",
        served_model="meta-llama/Meta-Llama-3-70B",
        gpu="H100-80GB",
        gpu_mem_gib=80.0,
        arch=LLAMA3_70B,
        weights_gb=140.0,
        prefill_from="h100x1-llama3-8b",
        source=(
            f"{_ARGONNE} rows, 4x H100 80GB tensor parallel, Meta-Llama-3-70B; no TTFT row: "
            "prefill cost = h100x1-llama3-8b's x (70.55B / 8.03B params) / 4 GPUs"
        ),
    ),
    ProfileSpec(
        name="a100x4-llama3-70b",
        hardware="Nvidia A100 GPU",
        gpus=4,
        data_model="meta-llama/Llama-2-70b-hf",
        served_model="meta-llama/Meta-Llama-3-70B",
        gpu="A100-SXM4-40GB",
        gpu_mem_gib=40.0,
        arch=LLAMA2_70B,
        weights_gb=140.0,
        prefill_from="a100x1-llama3-8b",
        source=(
            f"{_ARGONNE} rows, 4x A100 40GB tensor parallel. PROXY: the data has no vLLM "
            "Meta-Llama-3-70B rows on A100, so the 11 meta-llama/Llama-2-70b-hf rows are used "
            "(same 80-layer GQA-8 architecture; on 4x H100 the two models' rows agree within "
            "a few percent). No TTFT row: prefill cost = a100x1-llama3-8b's x (68.98B / 8.03B "
            "params) / 4 GPUs"
        ),
    ),
)
_QUANT = f"Argonne LLM-Inference-Bench (arXiv 2411.00136) {QUANT_FILE}"
_NO_ACCURACY = (
    "; the data has no accuracy figures: whether the variant's quality is acceptable is the "
    "user's decision"
)
QUANT_SPECS: tuple[ProfileSpec, ...] = (
    ProfileSpec(
        name="h100x1-llama3-8b-fp8",
        hardware="Nvidia H100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B (FP8 weights, FP8 KV cache)",
        gpu="H100-80GB",
        gpu_mem_gib=80.0,
        arch=LLAMA3_8B_KV_FP8,
        weights_gb=8.0,
        quant="Weight = fp8, KV Cache = fp8",
        prefill_from="h100x1-llama3-8b",
        source=(
            f"{_QUANT} vLLM rows 'Weight = fp8, KV Cache = fp8', 1x H100 80GB, Meta-Llama-3-8B; "
            "no TTFT row: prefill cost held to h100x1-llama3-8b's (no FP8 prefill speed-up "
            "assumed)" + _NO_ACCURACY
        ),
    ),
    ProfileSpec(
        name="h100x1-llama3-8b-kvfp8",
        hardware="Nvidia H100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B (FP8 KV cache)",
        gpu="H100-80GB",
        gpu_mem_gib=80.0,
        arch=LLAMA3_8B_KV_FP8,
        weights_gb=16.0,
        quant="Weight = fp16, KV Cache = fp8",
        prefill_from="h100x1-llama3-8b",
        source=(
            f"{_QUANT} vLLM rows 'Weight = fp16, KV Cache = fp8', 1x H100 80GB, "
            "Meta-Llama-3-8B; no TTFT row: prefill cost held to h100x1-llama3-8b's" + _NO_ACCURACY
        ),
    ),
    ProfileSpec(
        name="a100x1-llama3-8b-kvfp8",
        hardware="Nvidia A100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B (FP8 KV cache)",
        gpu="A100-SXM4-40GB",
        gpu_mem_gib=40.0,
        arch=LLAMA3_8B_KV_FP8,
        weights_gb=16.0,
        quant="Weight = fp16, KV Cache = fp8",
        prefill_from="a100x1-llama3-8b",
        source=(
            f"{_QUANT} vLLM rows 'Weight = fp16, KV Cache = fp8', 1x A100 40GB, "
            "Meta-Llama-3-8B (the A100 has no FP8 units: attention over the cache converts, "
            "and long batches run far slower than fp16); no TTFT row: prefill cost held to "
            "a100x1-llama3-8b's" + _NO_ACCURACY
        ),
    ),
    ProfileSpec(
        name="a100x1-llama3-8b-int8",
        hardware="Nvidia A100 GPU",
        gpus=1,
        data_model="meta-llama/Meta-Llama-3-8B",
        served_model="meta-llama/Meta-Llama-3-8B (INT8 weights)",
        gpu="A100-SXM4-40GB",
        gpu_mem_gib=40.0,
        arch=LLAMA3_8B,
        weights_gb=8.0,
        quant="Weight = int8, KV Cache = int8",
        scaled_from="a100x1-llama3-8b",
        ratio_base="Weight = fp16, KV Cache = int8",
        framework="TensorRT-LLM",
        source=(
            f"{_QUANT} has INT8 weights only on TensorRT-LLM, 4 rows (in=out=1024, batch 1-64): "
            "a100x1-llama3-8b's iteration costs x the geometric-mean latency ratio of its "
            "'Weight = int8, KV Cache = int8' rows to the 'Weight = fp16, KV Cache = int8' rows "
            "of the same batches (only the weights differ); KV cache fp16 with the 8 GB of "
            "weights; the MAPE is that ratio's error on the 4 int8 rows" + _NO_ACCURACY
        ),
    ),
)
"""Quantized variants, fitted from :data:`QUANT_FILE` after the fp16 profiles they lean on."""

PROFILE_SPECS = PROFILE_SPECS + QUANT_SPECS
REQUIRED_PROFILES: tuple[str, ...] = tuple(s.name for s in PROFILE_SPECS)


@dataclass(frozen=True)
class BenchRow:
    """One measured offline batch."""

    batch_size: int
    io_tokens: int
    """Prompt tokens = output tokens per request (``Input Output Length``)."""
    latency_s: float


@dataclass(frozen=True)
class TtftRow:
    """Measured time-to-first-token of one batch (``all_results_TTFT_ITL.csv``)."""

    batch_size: int
    prompt_tokens: int
    ttft_s: float


@dataclass(frozen=True)
class ProfileFit:
    """A fitted profile with the evidence behind it."""

    profile: ThroughputProfile
    spec: ProfileSpec
    rows: tuple[BenchRow, ...]
    predicted_s: tuple[float, ...]
    in_fit: tuple[bool, ...]
    ttft: TtftRow | None
    prefill_prior_s: float | None
    ratio: float | None = None
    """A scaled variant's latency ratio to its reference (``ProfileSpec.scaled_from``)."""

    @property
    def rel_errors(self) -> np.ndarray:
        """(predicted - measured) / measured for each row."""
        meas = np.array([r.latency_s for r in self.rows])
        return (np.array(self.predicted_s) - meas) / meas


# ---------------------------------------------------------------------------------------------
# The batch model
# ---------------------------------------------------------------------------------------------


def kv_cache_tokens(
    *,
    gpus: int,
    gpu_mem_gib: float,
    weights_gb: float,
    kv_bytes_per_token: int,
    mem_utilization: float = GPU_MEMORY_UTILIZATION,
) -> int:
    """Tokens of KV cache one replica holds: ``(gpus * mem * util - weights) / bytes per token``.

    Memory and weights are both taken in GiB. The nominal weight sizes (16 for 8B, 140 for 70B)
    exceed the true checkpoints (15.0 and ~130 GiB); the excess stands in for the activation
    workspace and CUDA graphs that vLLM also subtracts before sizing its cache. For 4x A100 40 GB
    serving a 70B model this gives 13,107 tokens, inside the bracket the data imply (L=256 B=16,
    8,192 tokens, runs at normal speed; L=512 B=16, 16,384 tokens, runs 2.1x slower).

    :raises ScenarioError: when the weights do not fit at all.
    """
    free_bytes = (gpus * gpu_mem_gib * mem_utilization - weights_gb) * GIB
    if free_bytes < kv_bytes_per_token:
        raise ScenarioError(
            f"no room for a KV cache: {gpus} x {gpu_mem_gib} GiB x {mem_utilization} "
            f"holds less than the {weights_gb} GB of weights plus one token"
        )
    return int(free_bytes // kv_bytes_per_token)


def concurrency(batch_size: int, io_tokens: int, kv_tokens: int, max_num_seqs: int) -> int:
    """Sequences of an offline batch that run together: ``min(B, max_num_seqs, kv // 2L)``."""
    return max(1, min(batch_size, max_num_seqs, kv_tokens // (2 * io_tokens)))


def _wave_features(seqs: np.ndarray, io_tokens: np.ndarray) -> np.ndarray:
    """Coefficients of (a, c, k, p) in the duration of one wave of ``seqs`` sequences."""
    s = seqs.astype(float)
    L = io_tokens.astype(float)
    return np.stack([L, s * L, 1.5 * s * L * (L - 1.0), s * L], axis=-1)


def batch_features(
    batch_size: np.ndarray, io_tokens: np.ndarray, kv_tokens: int, max_num_seqs: int
) -> np.ndarray:
    """Design matrix [n, 4]: batch latency = features @ (a, c, k, p), waves included."""
    B = np.asarray(batch_size, dtype=np.int64)
    L = np.asarray(io_tokens, dtype=np.int64)
    m = np.maximum(1, np.minimum(np.minimum(B, max_num_seqs), kv_tokens // (2 * L)))
    full_waves = B // m
    remainder = B - full_waves * m
    return (
        full_waves[:, None] * _wave_features(m, L)
        + _wave_features(remainder, L) * (remainder > 0)[:, None]
    )


def _params(profile: ThroughputProfile) -> np.ndarray:
    return np.array(
        [
            profile.iter_base_s,
            profile.iter_per_seq_s,
            profile.iter_per_ctx_token_s,
            profile.prefill_per_token_s,
        ]
    )


def batch_latency_s(profile: ThroughputProfile, batch_size: int, io_tokens: int) -> float:
    """Predicted seconds for an offline batch of ``batch_size`` requests of ``io_tokens`` in/out.

    This is the quantity measured in ``All_results.csv``; the simulator itself uses the
    per-iteration model, of which this is the closed form for equal-length requests.
    """
    X = batch_features(
        np.array([batch_size]), np.array([io_tokens]), profile.kv_cache_tokens, profile.max_num_seqs
    )
    return float(X[0] @ _params(profile))


def ttft_s(profile: ThroughputProfile, batch_size: int, prompt_tokens: int) -> float:
    """Predicted time to first token of a batch: one prefill iteration over all prompts."""
    return (
        profile.iter_base_s
        + profile.iter_per_seq_s * batch_size
        + profile.prefill_per_token_s * batch_size * prompt_tokens
    )


# ---------------------------------------------------------------------------------------------
# Reading the data
# ---------------------------------------------------------------------------------------------

RowKey = tuple[str, int, str]
"""(Hardware, Num of Hardware, Model)."""


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ScenarioError(
            f"calibration data file {path} is missing (set $RLSCALE_DATA to the shared data folder)"
        )
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        # Headers are stripped: the TTFT file's last header carries a trailing space.
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ScenarioError(f"{path}: required column(s) {missing} absent; header is {header}")
        reader.fieldnames = header
        return [row for row in reader if any(v for v in row.values())]


def _float(row: dict[str, str], column: str, path: Path) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ScenarioError(
            f"{path}: column '{column}' has a non-numeric value {row[column]!r}"
        ) from None


def _int(row: dict[str, str], column: str, path: Path) -> int:
    # Counts are written as "16" or, in some exports, "16.0".
    return int(_float(row, column, path))


def _grouped_bench_rows(path, columns, key, latency_column, keep=None):
    """The rows of the Argonne CSV at ``path`` as :class:`BenchRow`, grouped by ``key(row)``
    and sorted by (length, batch); ``keep(row)`` filters them first.

    :raises ScenarioError: file missing, a required column absent, or a non-numeric value.
    """
    out: dict = {}
    for row in _read_csv(path, columns):
        if keep is not None and not keep(row):
            continue
        out.setdefault(key(row), []).append(
            BenchRow(
                batch_size=_int(row, "Batch Size", path),
                io_tokens=_int(row, "Input Output Length", path),
                latency_s=_float(row, latency_column, path),
            )
        )
    for rows in out.values():
        rows.sort(key=lambda r: (r.io_tokens, r.batch_size))
    return out


def read_bench_rows(data_dir: Path | None = None) -> dict[RowKey, list[BenchRow]]:
    """The vLLM rows of ``All_results.csv`` grouped by (hardware, GPUs, model).

    :raises ScenarioError: file missing, a required column absent, or a non-numeric value.
    """
    path = Path(data_dir or data_root()) / ARGONNE_DIR / RESULTS_FILE
    return _grouped_bench_rows(
        path,
        RESULTS_COLUMNS,
        lambda row: (
            row["Hardware"].strip(),
            _int(row, "Num of Hardware", path),
            row["Model"].strip(),
        ),
        "Latency",
        keep=lambda row: row["Framework"].strip() == FRAMEWORK,
    )


QuantKey = tuple[str, int, str, str, str]
"""(Hardware, Num of Hardware, Model, Framework, kv_cache_dtype)."""


def read_quant_rows(data_dir: Path | None = None) -> dict[QuantKey, list[BenchRow]]:
    """The rows of :data:`QUANT_FILE` by (hardware, GPUs, model, framework, types).

    :raises ScenarioError: file missing, a required column absent, or a non-numeric value.
    """
    path = Path(data_dir or data_root()) / ARGONNE_DIR / QUANT_FILE
    return _grouped_bench_rows(
        path,
        QUANT_COLUMNS,
        lambda row: (
            row["Hardware"].strip(),
            _int(row, "Num of Hardware", path),
            row["Model"].strip(),
            row["Framework"].strip(),
            row["kv_cache_dtype"].strip(),
        ),
        "latency",
    )


def read_ttft_rows(data_dir: Path | None = None) -> dict[RowKey, TtftRow]:
    """The vLLM rows of ``all_results_TTFT_ITL.csv`` by (hardware, GPUs, model)."""
    path = Path(data_dir or data_root()) / ARGONNE_DIR / TTFT_FILE
    out: dict[RowKey, TtftRow] = {}
    for row in _read_csv(path, TTFT_COLUMNS):
        if row["Framework"].strip() != FRAMEWORK:
            continue
        key = (
            row["Hardware"].strip(),
            _int(row, "Num of Hardware", path),
            row["Model"].strip(),
        )
        out[key] = TtftRow(
            batch_size=_int(row, "Batch Size", path),
            prompt_tokens=_int(row, "Input Length", path),
            ttft_s=_float(row, "TTFT Latency", path),
        )
    return out


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _spec(name: str) -> ProfileSpec:
    for spec in PROFILE_SPECS:
        if spec.name == name:
            return spec
    raise ScenarioError(
        f"no calibration spec for profile '{name}'; known: {list(REQUIRED_PROFILES)}"
    )


def fit_profile(
    spec: ProfileSpec,
    rows: Sequence[BenchRow],
    *,
    ttft: TtftRow | None = None,
    prefill_prior_s: float | None = None,
) -> ProfileFit:
    """Fit ``a, c, k, p >= 0`` of one profile by minimizing relative latency error.

    :param spec: which rows and hardware facts.
    :param rows: the measured batches of that configuration.
    :param ttft: a measured time-to-first-token, added as one more relative residual; it
        separates the prefill cost ``p`` from the per-sequence cost ``c``.
    :param prefill_prior_s: where no TTFT exists, a prefill cost per token that ``p`` is held
        to (as a relative residual); exactly one of ``ttft`` and ``prefill_prior_s`` is needed.
    :raises ScenarioError: no rows, or neither/both of ``ttft`` and ``prefill_prior_s``.
    """
    if not rows:
        raise ScenarioError(
            f"profile '{spec.name}': no {spec.framework} rows for "
            f"{spec.hardware} x{spec.gpus} {spec.data_model}"
            + (f" '{spec.quant}' in {QUANT_FILE}" if spec.quant else f" in {RESULTS_FILE}")
        )
    if (ttft is None) == (prefill_prior_s is None):
        raise ScenarioError(
            f"profile '{spec.name}': give a TTFT row or a prefill prior (exactly one) to "
            "separate the prefill cost from the per-sequence cost"
        )
    kv = spec.kv_cache_tokens
    batch = np.array([r.batch_size for r in rows])
    length = np.array([r.io_tokens for r in rows])
    y = np.array([r.latency_s for r in rows])
    X = batch_features(batch, length, kv, spec.max_num_seqs)
    # Rows above max_num_seqs measure a regime the profile forbids (see the MI250 spec); they
    # are still predicted (as waves) and count in the reported error.
    in_fit = batch <= spec.max_num_seqs
    A = X[in_fit] / y[in_fit, None]
    b = np.ones(int(in_fit.sum()))
    if ttft is not None:
        extra = np.array([1.0, ttft.batch_size, 0.0, ttft.batch_size * ttft.prompt_tokens])
        A = np.vstack([A, extra / ttft.ttft_s])
    else:
        A = np.vstack([A, np.array([0.0, 0.0, 0.0, 1.0 / prefill_prior_s])])
    b = np.append(b, 1.0)
    # Columns differ by ~10 orders of magnitude (a multiplies L, k multiplies s*L^2).
    col_scale = np.linalg.norm(A, axis=0)
    col_scale[col_scale == 0] = 1.0
    sol = lsq_linear(A / col_scale, b, bounds=(0.0, np.inf), method="bvls")
    a, c, k, p = (sol.x / col_scale).tolist()
    predicted = X @ np.array([a, c, k, p])
    rel = np.abs(predicted - y) / y
    profile = ThroughputProfile(
        name=spec.name,
        gpu=spec.gpu,
        gpus_per_replica=spec.gpus,
        model=spec.served_model,
        weights_gb=spec.weights_gb,
        iter_base_s=a,
        iter_per_seq_s=c,
        iter_per_ctx_token_s=k,
        prefill_per_token_s=p,
        kv_cache_tokens=kv,
        max_num_seqs=spec.max_num_seqs,
        fit_mape=float(rel.mean()),
        fit_rows=len(rows),
        source=spec.source,
    )
    return ProfileFit(
        profile=profile,
        spec=spec,
        rows=tuple(rows),
        predicted_s=tuple(float(v) for v in predicted),
        in_fit=tuple(bool(v) for v in in_fit),
        ttft=ttft,
        prefill_prior_s=prefill_prior_s,
    )


def _prefill_prior(spec: ProfileSpec, reference: ThroughputProfile) -> float:
    """Prefill cost per token scaled from a reference profile by parameters per GPU.

    Prefill is compute-bound (~2 FLOP per parameter per token), so its cost per token grows with
    the parameter count and shrinks with the tensor-parallel degree; TP communication is ignored.
    """
    ref = _spec(reference.name)
    return (
        reference.prefill_per_token_s
        * (spec.arch.params_b / ref.arch.params_b)
        * (ref.gpus / spec.gpus)
    )


def _spec_rows(
    spec: ProfileSpec,
    bench: dict[RowKey, list[BenchRow]],
    quant: dict[QuantKey, list[BenchRow]],
    types: str | None = None,
) -> list[BenchRow]:
    """The measured rows of ``spec`` (of its ``types`` in the quantization file, when given)."""
    if spec.quant is None:
        return bench.get((spec.hardware, spec.gpus, spec.data_model), [])
    key = (spec.hardware, spec.gpus, spec.data_model, spec.framework, types or spec.quant)
    return quant.get(key, [])


def weight_ratio(rows: Sequence[BenchRow], base: Sequence[BenchRow]) -> float:
    """Geometric mean of ``rows``' latency over ``base``'s for the same (length, batch).

    :raises ScenarioError: a row without its base twin.
    """
    twins = {(r.io_tokens, r.batch_size): r.latency_s for r in base}
    keys = [(r.io_tokens, r.batch_size) for r in rows]
    missing = [k for k in keys if k not in twins]
    if missing or not rows:
        raise ScenarioError(f"no base rows (length, batch) {missing} for the ratio")
    logs = [math.log(r.latency_s / twins[(r.io_tokens, r.batch_size)]) for r in rows]
    return math.exp(sum(logs) / len(logs))


def fit_scaled_profile(
    spec: ProfileSpec,
    reference: ThroughputProfile,
    rows: Sequence[BenchRow],
    base: Sequence[BenchRow],
    ratio: float | None = None,
) -> ProfileFit:
    """A variant with too few rows for the iteration model: ``reference``'s costs times the
    measured latency ratio of ``rows`` to their ``base`` twins (see ``ProfileSpec.scaled_from``).

    :param ratio: the ratio to use (default: measured from ``rows`` and ``base``).
    :raises ScenarioError: no rows, or a row without its base twin.
    """
    if not rows:
        raise ScenarioError(
            f"profile '{spec.name}': no {spec.framework} rows '{spec.quant}' for "
            f"{spec.hardware} x{spec.gpus} {spec.data_model} in {QUANT_FILE}"
        )
    measured_ratio = weight_ratio(rows, base)
    ratio = measured_ratio if ratio is None else ratio
    twins = {(r.io_tokens, r.batch_size): r.latency_s for r in base}
    predicted = [ratio * twins[(r.io_tokens, r.batch_size)] for r in rows]
    rel = [abs(p - r.latency_s) / r.latency_s for p, r in zip(predicted, rows, strict=True)]
    profile = ThroughputProfile(
        name=spec.name,
        gpu=spec.gpu,
        gpus_per_replica=spec.gpus,
        model=spec.served_model,
        weights_gb=spec.weights_gb,
        iter_base_s=reference.iter_base_s * ratio,
        iter_per_seq_s=reference.iter_per_seq_s * ratio,
        iter_per_ctx_token_s=reference.iter_per_ctx_token_s * ratio,
        prefill_per_token_s=reference.prefill_per_token_s * ratio,
        kv_cache_tokens=spec.kv_cache_tokens,
        max_num_seqs=spec.max_num_seqs,
        fit_mape=float(np.mean(rel)),
        fit_rows=len(rows),
        source=spec.source,
    )
    return ProfileFit(
        profile=profile,
        spec=spec,
        rows=tuple(rows),
        predicted_s=tuple(predicted),
        in_fit=(True,) * len(rows),
        ttft=None,
        prefill_prior_s=None,
        ratio=ratio,
    )


def fit_calibration(data_dir: Path | None = None) -> list[ProfileFit]:
    """Fit every profile in :data:`PROFILE_SPECS`, with the rows and checks behind each."""
    bench = read_bench_rows(data_dir)
    ttfts = read_ttft_rows(data_dir)
    quant = read_quant_rows(data_dir)
    fits: dict[str, ProfileFit] = {}
    # Specs are ordered so that a reference is fitted before the profiles that use it.
    for spec in PROFILE_SPECS:
        key = (spec.hardware, spec.gpus, spec.data_model)
        if spec.scaled_from is not None:
            fits[spec.name] = fit_scaled_profile(
                spec,
                fits[spec.scaled_from].profile,
                _spec_rows(spec, bench, quant),
                _spec_rows(spec, bench, quant, spec.ratio_base),
            )
        elif spec.prefill_from is not None:
            fits[spec.name] = fit_profile(
                spec,
                _spec_rows(spec, bench, quant),
                prefill_prior_s=_prefill_prior(spec, fits[spec.prefill_from].profile),
            )
        else:
            if key not in ttfts:
                raise ScenarioError(
                    f"profile '{spec.name}': no vLLM TTFT row for {key} in {TTFT_FILE}"
                )
            fits[spec.name] = fit_profile(spec, bench.get(key, []), ttft=ttfts[key])
    return list(fits.values())


def fit_profiles(data_dir: Path | None = None) -> list[ThroughputProfile]:
    """Fit every profile from the Argonne vLLM rows (``data_dir`` defaults to the data root)."""
    return [f.profile for f in fit_calibration(data_dir)]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _fit_record(fit: ProfileFit) -> dict[str, Any]:
    """The YAML ``fit`` section: the error and every row, measured against predicted."""
    rel = fit.rel_errors
    spec = fit.spec
    kv = fit.profile.kv_cache_tokens
    record: dict[str, Any] = {
        "mape": round(float(np.abs(rel).mean()), 6),
        "max_abs_rel_error": round(float(np.abs(rel).max()), 6),
        "rows_in_fit": int(sum(fit.in_fit)),
        "data": {
            "file": f"{ARGONNE_DIR}/{QUANT_FILE if spec.quant else RESULTS_FILE}",
            "hardware": spec.hardware,
            "num_of_hardware": spec.gpus,
            "framework": spec.framework,
            "model": spec.data_model,
            **({"kv_cache_dtype": spec.quant} if spec.quant else {}),
        },
        "kv_cache": {
            "gpu_mem_gib": spec.gpu_mem_gib,
            "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
            "weights_gb": spec.weights_gb,
            "kv_bytes_per_token": spec.arch.kv_bytes_per_token,
            "tokens": kv,
        },
    }
    if fit.ttft is not None:
        record["ttft"] = {
            "file": f"{ARGONNE_DIR}/{TTFT_FILE}",
            "batch_size": fit.ttft.batch_size,
            "prompt_tokens": fit.ttft.prompt_tokens,
            "measured_s": round(fit.ttft.ttft_s, 6),
            "predicted_s": round(
                ttft_s(fit.profile, fit.ttft.batch_size, fit.ttft.prompt_tokens), 6
            ),
        }
    if fit.ratio is not None:
        record["scaled"] = {
            "from_profile": spec.scaled_from,
            "latency_ratio": round(fit.ratio, 6),
            "base_kv_cache_dtype": spec.ratio_base,
        }
    if fit.prefill_prior_s is not None:
        record["prefill_prior"] = {
            "from_profile": spec.prefill_from,
            "prefill_per_token_s": float(fit.prefill_prior_s),
        }
    record["rows"] = [
        {
            "batch_size": r.batch_size,
            "io_tokens": r.io_tokens,
            "concurrency": concurrency(r.batch_size, r.io_tokens, kv, fit.profile.max_num_seqs),
            "measured_s": round(r.latency_s, 6),
            "predicted_s": round(pred, 6),
            "rel_error": round(float(e), 6),
            "in_fit": used,
        }
        for r, pred, e, used in zip(fit.rows, fit.predicted_s, rel, fit.in_fit, strict=True)
    ]
    return record


def _write_fits(fits: Sequence[ProfileFit], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fit in fits:
        doc = profile_to_dict(fit.profile)
        doc["fit"] = _fit_record(fit)
        path = out_dir / f"{fit.profile.name}.yaml"
        header = (
            f"# Throughput profile {fit.profile.name}: fitted by `rlscale calibrate` "
            "(envs/calibrate.py); do not edit by hand.\n"
        )
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=100))
        paths.append(path)
    return paths


def write_profiles(
    profiles: Sequence[ThroughputProfile],
    out_dir: Path = PROFILE_DIR,
    *,
    data_dir: Path | None = None,
) -> list[Path]:
    """Write one ``<name>.yaml`` per profile: its fields, the fit error and every row used.

    The measured-vs-predicted table is rebuilt from the data with each profile's own
    parameters, so a profile edited or refitted elsewhere is reported as it is.

    :raises ScenarioError: a profile with no calibration spec, or missing data.
    """
    bench = read_bench_rows(data_dir)
    ttfts = read_ttft_rows(data_dir)
    quant = read_quant_rows(data_dir)
    fits = []
    for profile in profiles:
        spec = _spec(profile.name)
        rows = _spec_rows(spec, bench, quant)
        if spec.scaled_from is not None:
            ref = next((p for p in profiles if p.name == spec.scaled_from), None)
            if ref is None:
                raise ScenarioError(f"profile '{spec.name}' is scaled from '{spec.scaled_from}'")
            fit = fit_scaled_profile(
                spec,
                ref,
                rows,
                _spec_rows(spec, bench, quant, spec.ratio_base),
                ratio=profile.iter_base_s / ref.iter_base_s,
            )
            fits.append(replace(fit, profile=profile))
            continue
        X = batch_features(
            np.array([r.batch_size for r in rows]),
            np.array([r.io_tokens for r in rows]),
            profile.kv_cache_tokens,
            profile.max_num_seqs,
        )
        prior = None
        if spec.prefill_from is not None:
            ref = next((p for p in profiles if p.name == spec.prefill_from), None)
            prior = _prefill_prior(spec, ref) if ref is not None else None
        fits.append(
            ProfileFit(
                profile=profile,
                spec=spec,
                rows=tuple(rows),
                predicted_s=tuple(float(v) for v in X @ _params(profile)),
                in_fit=tuple(r.batch_size <= profile.max_num_seqs for r in rows),
                ttft=ttfts.get((spec.hardware, spec.gpus, spec.data_model)),
                prefill_prior_s=prior,
            )
        )
    return _write_fits(fits, out_dir)


# ---------------------------------------------------------------------------------------------
# Report: table, plot, summary
# ---------------------------------------------------------------------------------------------


def plot_calibration(fits: Sequence[ProfileFit], path: Path) -> Path:
    """Measured (markers) vs predicted (lines) batch latency against batch size, per profile."""
    # Figure + Agg canvas directly: no pyplot, so no global backend switch in the caller.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(fits))
    nrows = math.ceil(len(fits) / cols)
    fig = Figure(figsize=(5.0 * cols, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, fit in zip(axes, fits, strict=False):
        prof = fit.profile
        lengths = sorted({r.io_tokens for r in fit.rows})
        for i, length in enumerate(lengths):
            color = colormaps["viridis"](0.9 * i / max(1, len(lengths) - 1))
            pts = [r for r in fit.rows if r.io_tokens == length]
            ax.scatter(
                [r.batch_size for r in pts], [r.latency_s for r in pts], color=color, zorder=3
            )
            grid = np.arange(1, max(r.batch_size for r in pts) + 1)
            pred = batch_features(
                grid, np.full_like(grid, length), prof.kv_cache_tokens, prof.max_num_seqs
            ) @ _params(prof)
            ax.plot(grid, pred, color=color, label=f"L={length}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("batch latency (s)")
        ax.set_title(f"{prof.name}\nMAPE {prof.fit_mape:.1%}, {prof.fit_rows} rows", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title="in = out tokens", title_fontsize=7, loc="upper left")
    for ax in axes[len(fits) :]:
        ax.set_visible(False)
    fig.suptitle("vLLM batch latency: measured (dots) vs fitted iteration model (lines)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _summary_row(fit: ProfileFit) -> dict[str, Any]:
    p = fit.profile
    rel = np.abs(fit.rel_errors)
    row: dict[str, Any] = {
        "profile": p.name,
        "rows": p.fit_rows,
        "rows_in_fit": int(sum(fit.in_fit)),
        "mape": p.fit_mape,
        "max_abs_rel_error": float(rel.max()),
        "iter_base_s": p.iter_base_s,
        "iter_per_seq_s": p.iter_per_seq_s,
        "iter_per_ctx_token_s": p.iter_per_ctx_token_s,
        "prefill_per_token_s": p.prefill_per_token_s,
        "kv_cache_tokens": p.kv_cache_tokens,
        "max_num_seqs": p.max_num_seqs,
        "passes": p.fit_mape < MAPE_LIMIT,
    }
    if fit.ttft is not None:
        row["ttft_measured_s"] = fit.ttft.ttft_s
        row["ttft_predicted_s"] = ttft_s(p, fit.ttft.batch_size, fit.ttft.prompt_tokens)
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of the calibration summary rows."""
    head = (
        f"{'profile':<24} {'rows':>4} {'MAPE':>6} {'max':>6} {'a (s)':>9} {'c (s/seq)':>10} "
        f"{'k (s/tok)':>10} {'p (s/tok)':>10} {'kv tokens':>10} {'seqs':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['profile']:<24} {r['rows']:>4} {r['mape']:>6.1%} {r['max_abs_rel_error']:>6.1%} "
            f"{r['iter_base_s']:>9.3g} {r['iter_per_seq_s']:>10.3g} "
            f"{r['iter_per_ctx_token_s']:>10.3g} {r['prefill_per_token_s']:>10.3g} "
            f"{r['kv_cache_tokens']:>10,} {r['max_num_seqs']:>5}"
        )
    return "\n".join(lines)


def run_calibrate(data_dir: Path | None, out_dir: Path) -> dict[str, Any]:
    """Fit all profiles, write their YAMLs and ``calibration.png`` into ``out_dir``, print a table.

    :param data_dir: the shared data folder; None means :func:`rlscale.envs.scenario.data_root`.
    :param out_dir: where the profile YAMLs and the plot go (normally ``experiments/profiles``).
    :returns: a JSON-able summary: one row per profile (rows, MAPE, parameters, KV tokens,
        pass/fail against :data:`MAPE_LIMIT`), the files written and whether all passed.
    :raises ScenarioError: a data file or a required column is missing.
    """
    data_dir = Path(data_dir) if data_dir is not None else data_root()
    fits = fit_calibration(data_dir)
    files = _write_fits(fits, Path(out_dir))
    plot = plot_calibration(fits, Path(out_dir) / "calibration.png")
    rows = [_summary_row(f) for f in fits]
    print(format_table(rows))
    failed = [r["profile"] for r in rows if not r["passes"]]
    if failed:
        print(f"MAPE >= {MAPE_LIMIT:.0%} for: {failed}")
    return {
        "data_dir": str(data_dir),
        "out_dir": str(out_dir),
        "mape_limit": MAPE_LIMIT,
        "profiles": rows,
        "files": [str(p) for p in files],
        "plot": str(plot),
        "all_pass": not failed,
    }
