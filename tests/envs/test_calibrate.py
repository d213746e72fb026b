"""Throughput-profile calibration against the Argonne vLLM rows (envs/calibrate.py, profiles.py)."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlscale.envs.calibrate import (
    ARGONNE_DIR,
    MAPE_LIMIT,
    QUANT_FILE,
    QUANT_SPECS,
    REQUIRED_PROFILES,
    RESULTS_FILE,
    TTFT_FILE,
    ProfileFit,
    batch_latency_s,
    concurrency,
    read_bench_rows,
    run_calibrate,
    write_profiles,
)
from rlscale.envs.profiles import ThroughputProfile, list_profiles, load_profile
from rlscale.envs.scenario import PROFILE_DIR, ScenarioError, data_root

DATA = data_root()
pytestmark = pytest.mark.skipif(
    not (DATA / ARGONNE_DIR / RESULTS_FILE).is_file(),
    reason=f"Argonne benchmark data not found under {DATA} (set $RLSCALE_DATA)",
)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One full run of `rlscale calibrate` into a temporary folder (refit from the data)."""
    out = tmp_path_factory.mktemp("profiles")
    return run_calibrate(DATA, out), out


@pytest.fixture(scope="module")
def fitted(calibration: tuple[dict, Path]) -> dict[str, ThroughputProfile]:
    _, out = calibration
    return {name: load_profile(name, profile_dir=out) for name in REQUIRED_PROFILES}


@pytest.mark.parametrize("name", REQUIRED_PROFILES)
def test_required_profile_fits_within_mape_limit(calibration: tuple[dict, Path], name: str) -> None:
    summary, out = calibration
    row = next(r for r in summary["profiles"] if r["profile"] == name)
    doc = yaml.safe_load((out / f"{name}.yaml").read_text())
    measured = np.array([r["measured_s"] for r in doc["fit"]["rows"]])
    predicted = np.array([r["predicted_s"] for r in doc["fit"]["rows"]])
    # The MAPE is recomputed from the written rows, over every row of the configuration.
    mape = float(np.mean(np.abs(predicted - measured) / measured))
    assert mape < MAPE_LIMIT, f"{name}: MAPE {mape:.1%} >= {MAPE_LIMIT:.0%}"
    assert row["mape"] == pytest.approx(mape, abs=1e-5)
    # the iteration model needs rows at several lengths; a scaled variant (too few rows for
    # it) is its reference's model times one measured ratio, checked on the rows there are
    scaled = "scaled" in doc["fit"]
    assert len(measured) == row["rows"] >= (4 if scaled else 11)
    assert min(row[k] for k in ("iter_base_s", "iter_per_seq_s", "prefill_per_token_s")) >= 0
    assert row["iter_per_ctx_token_s"] > 0, "attention over the KV cache must show up"
    assert summary["all_pass"]


def test_ttft_row_pins_prefill_cost(calibration: tuple[dict, Path]) -> None:
    summary, _ = calibration
    by_name = {r["profile"]: r for r in summary["profiles"]}
    for name, ttft in (("h100x1-llama3-8b", 0.426), ("a100x1-llama3-8b", 1.04)):
        assert by_name[name]["ttft_measured_s"] == pytest.approx(ttft, rel=0.01)
        assert by_name[name]["ttft_predicted_s"] == pytest.approx(ttft, rel=0.05)


def test_written_yaml_round_trips(calibration: tuple[dict, Path], tmp_path: Path) -> None:
    summary, out = calibration
    assert sorted(Path(p).name for p in summary["files"]) == sorted(
        f"{n}.yaml" for n in REQUIRED_PROFILES
    )
    assert Path(summary["plot"]).stat().st_size > 10_000
    profiles = [load_profile(n, profile_dir=out) for n in REQUIRED_PROFILES]
    write_profiles(profiles, tmp_path, data_dir=DATA)
    for prof in profiles:
        again = load_profile(prof.name, profile_dir=tmp_path)
        assert again == prof
        assert load_profile(tmp_path / f"{prof.name}.yaml") == prof
        fit = yaml.safe_load((tmp_path / f"{prof.name}.yaml").read_text())["fit"]
        assert {"batch_size", "io_tokens", "measured_s", "predicted_s", "in_fit"} <= set(
            fit["rows"][0]
        )
    assert list_profiles(tmp_path) == sorted(REQUIRED_PROFILES)


def test_shipped_profiles_match_a_refit(fitted: dict[str, ThroughputProfile]) -> None:
    """experiments/profiles/ must be what `rlscale calibrate` writes today (not stale)."""
    for name, prof in fitted.items():
        shipped = load_profile(name)
        for field in dataclasses.fields(ThroughputProfile):
            a, b = getattr(shipped, field.name), getattr(prof, field.name)
            if isinstance(a, float):
                assert a == pytest.approx(b, rel=1e-6), (name, field.name)
            else:
                assert a == b, (name, field.name)


def test_h100_is_faster_than_a100(fitted: dict[str, ThroughputProfile]) -> None:
    h100, a100 = fitted["h100x1-llama3-8b"], fitted["a100x1-llama3-8b"]
    for batch in (1, 16, 64):
        for length in (128, 2048):
            assert batch_latency_s(h100, batch, length) < batch_latency_s(a100, batch, length)
    assert h100.prefill_per_token_s < a100.prefill_per_token_s
    assert h100.kv_cache_tokens > a100.kv_cache_tokens
    h70, a70 = fitted["h100x4-llama3-70b"], fitted["a100x4-llama3-70b"]
    assert batch_latency_s(h70, 16, 1024) < batch_latency_s(a70, 16, 1024)


def test_kv_limit_reproduces_a100_slowdown(fitted: dict[str, ThroughputProfile]) -> None:
    a100 = fitted["a100x1-llama3-8b"]
    measured = {
        (r.batch_size, r.io_tokens): r.latency_s
        for r in read_bench_rows(DATA)[("Nvidia A100 GPU", 1, "meta-llama/Meta-Llama-3-8B")]
    }
    # 64 sequences x 4096 tokens do not fit 40 GB; 32 x 4096 do.
    assert concurrency(64, 2048, a100.kv_cache_tokens, a100.max_num_seqs) < 64
    assert concurrency(32, 2048, a100.kv_cache_tokens, a100.max_num_seqs) == 32
    pred = batch_latency_s(a100, 64, 2048)
    assert pred == pytest.approx(measured[(64, 2048)], rel=0.1)
    # Without the limit the same parameters miss the 125 s row badly.
    unlimited = dataclasses.replace(a100, kv_cache_tokens=10**9)
    assert batch_latency_s(unlimited, 64, 2048) < 0.8 * measured[(64, 2048)]
    # 4x A100 40GB with a 70B model: 6x slower at L=2048 B=16 than B=1 (waves of 3).
    a70 = fitted["a100x4-llama3-70b"]
    assert 8_192 < a70.kv_cache_tokens < 16_384
    ratio = batch_latency_s(a70, 16, 2048) / batch_latency_s(a70, 1, 2048)
    assert 5.0 < ratio < 7.5


def test_llama2_70b_is_a_fair_proxy_on_h100() -> None:
    """The A100 70B profile uses Llama-2-70B rows; on 4x H100 both models were measured."""
    bench = read_bench_rows(DATA)
    l3 = {
        (r.batch_size, r.io_tokens): r.latency_s
        for r in bench[("Nvidia H100 GPU", 4, "meta-llama/Meta-Llama-3-70B")]
    }
    l2 = {
        (r.batch_size, r.io_tokens): r.latency_s
        for r in bench[("Nvidia H100 GPU", 4, "meta-llama/Llama-2-70b-hf")]
    }
    ratios = np.array([l2[k] / l3[k] for k in l3.keys() & l2.keys()])
    assert len(ratios) >= 15
    assert np.mean(np.abs(ratios - 1.0)) < 0.05


def test_throughput_column_counts_input_and_output_tokens() -> None:
    path = DATA / ARGONNE_DIR / RESULTS_FILE
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Framework"] == "vLLM"]
    for r in rows[:200]:
        tokens = int(r["Batch Size"]) * 2 * int(r["Input Output Length"])
        assert float(r["Throughput"]) == pytest.approx(tokens / float(r["Latency"]), rel=1e-6)


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ScenarioError, match="h100x1-llama3-8b") as err:
        load_profile("h100x9-llama9-1t")
    assert "h100x9-llama9-1t" in str(err.value)


def test_malformed_profile_names_file_and_field(tmp_path: Path) -> None:
    doc = yaml.safe_load((PROFILE_DIR / "h100x1-llama3-8b.yaml").read_text())
    del doc["kv_cache_tokens"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match="kv_cache_tokens") as err:
        load_profile("broken", profile_dir=tmp_path)
    assert "broken.yaml" in str(err.value)
    doc["kv_cache_tokens"] = -5
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match="kv_cache_tokens"):
        load_profile("broken", profile_dir=tmp_path)


def _copy_argonne(tmp_path: Path) -> Path:
    target = tmp_path / ARGONNE_DIR
    target.mkdir()
    for name in (RESULTS_FILE, TTFT_FILE, QUANT_FILE):
        shutil.copy(DATA / ARGONNE_DIR / name, target / name)
    return target


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    target = _copy_argonne(tmp_path)
    (target / TTFT_FILE).unlink()
    with pytest.raises(ScenarioError, match=TTFT_FILE):
        run_calibrate(tmp_path, tmp_path / "out")
    (target / RESULTS_FILE).unlink()
    with pytest.raises(ScenarioError, match=RESULTS_FILE):
        run_calibrate(tmp_path, tmp_path / "out")


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    target = _copy_argonne(tmp_path)
    path = target / RESULTS_FILE
    text = path.read_text().splitlines()
    text[0] = text[0].replace("Latency", "Time")
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ScenarioError, match="Latency") as err:
        run_calibrate(tmp_path, tmp_path / "out")
    assert RESULTS_FILE in str(err.value)
    assert not (tmp_path / "out").exists()


def test_profile_fit_exposes_errors(calibration: tuple[dict, Path]) -> None:
    from rlscale.envs.calibrate import fit_calibration

    fits: list[ProfileFit] = fit_calibration(DATA)
    mi250 = next(f for f in fits if f.profile.name == "mi250x1-llama3-8b")
    # Rows above the MI250 concurrency cap are predicted and reported but not fitted.
    assert sum(mi250.in_fit) == 15 and len(mi250.rows) == 20
    assert mi250.profile.fit_mape == pytest.approx(float(np.mean(np.abs(mi250.rel_errors))))
    assert all(math.isfinite(v) for v in mi250.predicted_s)


# --- quantized variants (A100_H100_quant_all_results.csv) ---------------------------------


def _quant_latency(hardware: str, framework: str, types: str) -> dict[tuple[int, int], float]:
    """(length, batch) -> measured latency, read straight from the CSV."""
    with (DATA / ARGONNE_DIR / QUANT_FILE).open(newline="") as fh:
        return {
            (int(r["Input Output Length"]), int(r["Batch Size"])): float(r["latency"])
            for r in csv.DictReader(fh)
            if r["Hardware"] == hardware
            and r["Framework"] == framework
            and r["kv_cache_dtype"] == types
        }


def test_quantized_variants_are_in_the_calibration_and_say_where_they_come_from(
    fitted: dict[str, ThroughputProfile],
) -> None:
    for spec in QUANT_SPECS:
        prof = fitted[spec.name]
        assert prof.fit_mape < MAPE_LIMIT
        assert QUANT_FILE in prof.source and "user's decision" in prof.source


def test_fp8_weights_are_faster_than_fp16_on_h100_as_measured(
    fitted: dict[str, ThroughputProfile],
) -> None:
    fp16, fp8 = fitted["h100x1-llama3-8b"], fitted["h100x1-llama3-8b-fp8"]
    measured = _quant_latency("Nvidia H100 GPU", "vLLM", "Weight = fp8, KV Cache = fp8")
    base = _quant_latency("Nvidia H100 GPU", "vLLM", "Weight = fp16, KV Cache = fp16")
    for length, batch in ((128, 1), (1024, 16), (2048, 64)):
        assert measured[length, batch] < base[length, batch]  # the data's own claim
        assert batch_latency_s(fp8, batch, length) < batch_latency_s(fp16, batch, length)
    # one byte per KV value: the cache holds twice the tokens (and more, with 8 GB of weights)
    assert fitted["h100x1-llama3-8b-kvfp8"].kv_cache_tokens == 2 * fp16.kv_cache_tokens


def test_fp8_kv_cache_slows_the_a100_at_long_contexts(fitted: dict[str, ThroughputProfile]):
    """The A100 has no FP8 units: the measured FP8-KV batches at 2048 tokens take far longer,
    and the fitted profile keeps that (a user should not pick it for speed)."""
    fp16, kvfp8 = fitted["a100x1-llama3-8b"], fitted["a100x1-llama3-8b-kvfp8"]
    measured = _quant_latency("Nvidia A100 GPU", "vLLM", "Weight = fp16, KV Cache = fp8")
    assert measured[2048, 32] == pytest.approx(batch_latency_s(kvfp8, 32, 2048), rel=0.15)
    assert batch_latency_s(kvfp8, 32, 2048) > 2 * batch_latency_s(fp16, 32, 2048)


def test_int8_weights_scale_the_a100_by_the_measured_ratio(fitted: dict[str, ThroughputProfile]):
    int8 = _quant_latency("Nvidia A100 GPU", "TensorRT-LLM", "Weight = int8, KV Cache = int8")
    fp16 = _quant_latency("Nvidia A100 GPU", "TensorRT-LLM", "Weight = fp16, KV Cache = int8")
    assert len(int8) == 4 and set(int8) == set(fp16)
    ratio = math.exp(np.mean([math.log(int8[k] / fp16[k]) for k in int8]))
    prof, ref = fitted["a100x1-llama3-8b-int8"], fitted["a100x1-llama3-8b"]
    assert 0.6 < ratio < 0.8
    for field in ("iter_base_s", "iter_per_seq_s", "iter_per_ctx_token_s", "prefill_per_token_s"):
        assert getattr(prof, field) == pytest.approx(ratio * getattr(ref, field), rel=1e-9)
    errors = [abs(ratio * fp16[k] - int8[k]) / int8[k] for k in int8]
    assert prof.fit_mape == pytest.approx(float(np.mean(errors)))
    assert prof.weights_gb == 8.0 and prof.kv_cache_tokens > ref.kv_cache_tokens


def test_missing_quantization_file_is_named(tmp_path: Path) -> None:
    target = _copy_argonne(tmp_path)
    (target / QUANT_FILE).unlink()
    with pytest.raises(ScenarioError, match=QUANT_FILE):
        run_calibrate(tmp_path, tmp_path / "out")


def test_the_quantized_scenario_pool_is_cheaper_per_request_than_fp16_on_the_same_gpu():
    from rlscale.envs.capacity import scenario_capacities_rps
    from rlscale.envs.scenario import load_scenario

    quant, plain = load_scenario("azure-conv-quant"), load_scenario("azure-conv")
    q_cap, p_cap = scenario_capacities_rps(quant), scenario_capacities_rps(plain)
    price = {p.name: p.price_usd_h for p in [*quant.pools, *plain.pools]}
    assert price["a100-int8"] == price["a100"]
    assert q_cap["a100-int8"] > 1.4 * p_cap["a100"]
    assert price["a100-int8"] / q_cap["a100-int8"] < price["a100"] / p_cap["a100"]
