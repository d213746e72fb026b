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

from dataclasses import dataclass


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
