"""Cold-start tables (envs/coldstart.py) and spot markets (envs/spot.py) built from the data."""

from __future__ import annotations

import csv
import itertools
import json
import math
import typing
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from rlscale.envs.coldstart import (
    ALIBABA_BASEMODEL,
    COLD_START_LEVELS,
    EMPIRICAL_DATA,
    SERVERLESSLLM_DIR,
    build_cold_start,
    empirical_quantiles_s,
    fit_empirical_table,
    load_empirical_table,
    quantile_levels,
    read_alibaba_basemodel_s,
    read_serverlessllm_s_per_gb,
    write_empirical_tables,
)
from rlscale.envs.profiles import ThroughputProfile
from rlscale.envs.scenario import (
    COLDSTART_DIR,
    ColdStartConfig,
    Distribution,
    ScenarioError,
    SpotConfig,
    data_root,
)
from rlscale.envs.spot import build_spot_market

DATA = data_root()
PRICE_TSV = "aws_spot_price_gpu_2022-05-31/aws_spot_prices_gpu_2022-05-31.tsv"
PREEMPT_1 = "spot_traces_skypilot/preemption/1-node/aws-04-22-2023/us-east-1c_v100_1.json"
PREEMPT_4 = "spot_traces_skypilot/preemption/4-node/aws-08-03-2023/us-east-1f_v100_1.json"
needs_data = pytest.mark.skipif(
    not (DATA / SERVERLESSLLM_DIR).is_dir() or not (DATA / PRICE_TSV).is_file(),
    reason=f"shared datasets not found under {DATA} (set $RLSCALE_DATA)",
)
COLD_START_FILES = [f for source in EMPIRICAL_DATA.values() for f in source.files]
needs_cold_start_data = pytest.mark.skipif(
    not all((DATA / f).is_file() for f in COLD_START_FILES),
    reason=f"cold-start raw data not under {DATA}; `rlscale data fetch serverlessllm "
    f"alibaba-gentd26` gets it (or set $RLSCALE_DATA)",
)


def _profile(name: str, weights_gb: float) -> ThroughputProfile:
    # Only weights_gb matters for cold starts; the rest are placeholders.
    return ThroughputProfile(
        name=name,
        gpu="test",
        gpus_per_replica=1,
        model="test",
        weights_gb=weights_gb,
        iter_base_s=0.01,
        iter_per_seq_s=1e-4,
        iter_per_ctx_token_s=1e-7,
        prefill_per_token_s=1e-5,
        kv_cache_tokens=100_000,
        max_num_seqs=256,
        fit_mape=0.0,
        fit_rows=0,
        source="test",
    )


LLAMA_8B = _profile("8b", 16.0)
LLAMA_70B = _profile("70b", 140.0)


# --------------------------------------------------------------------------------------------
# Cold starts
# --------------------------------------------------------------------------------------------


def test_cold_start_tables_sorted_positive_and_ordered() -> None:
    small = build_cold_start(ColdStartConfig(), LLAMA_8B)
    big = build_cold_start(ColdStartConfig(), LLAMA_70B)
    for model in (small, big):
        for table in (model.provisioning_s, model.loading_s, model.warm_start_s):
            assert table.shape == (COLD_START_LEVELS,)
            assert np.all(table > 0)
            assert np.all(np.diff(table) >= 0)
        assert np.all(model.warm_start_s < model.loading_s)
    assert np.median(big.loading_s) > np.median(small.loading_s) + 20.0
    assert np.all(big.warm_start_s > small.warm_start_s)
    # Provisioning does not depend on the model.
    np.testing.assert_allclose(big.provisioning_s, small.provisioning_s)


def test_cold_start_is_deterministic_for_a_seed() -> None:
    a = build_cold_start(ColdStartConfig(), LLAMA_8B, seed=3)
    b = build_cold_start(ColdStartConfig(), LLAMA_8B, seed=3)
    np.testing.assert_array_equal(a.loading_s, b.loading_s)


def test_lognormal_provisioning_quantiles_are_exact() -> None:
    cfg = ColdStartConfig(
        provisioning=Distribution(median_s=60, p90_s=120),
        image_pull=Distribution(median_s=1, p90_s=1),
        weight_load=Distribution(median_s=1, p90_s=1),
        engine_warmup=Distribution(median_s=1, p90_s=1),
    )
    model = build_cold_start(cfg, LLAMA_8B)
    levels = quantile_levels()
    sigma = math.log(2.0) / 1.2815515655446004
    # Levels (k + 0.5) / 32 straddle the median: entries 15 and 16 are symmetric around 60 s.
    assert model.provisioning_s[15] * model.provisioning_s[16] == pytest.approx(60.0**2)
    assert np.interp(0.9, levels, np.log(model.provisioning_s)) == pytest.approx(
        math.log(120.0), abs=0.02
    )
    assert np.log(model.provisioning_s[-1] / 60.0) > sigma  # the upper tail reaches past p90
    # Constant phases: loading = 3 s, warm start = 2 s exactly.
    np.testing.assert_allclose(model.loading_s, 3.0)
    np.testing.assert_allclose(model.warm_start_s, 2.0)


def test_empirical_weight_load_and_scale() -> None:
    ones = Distribution(median_s=1e-3, p90_s=1e-3)
    base = dict(provisioning=ones, image_pull=ones, engine_warmup=ones)
    sllm = build_cold_start(
        ColdStartConfig(weight_load=Distribution(data="serverlessllm"), **base), LLAMA_8B
    )
    # ServerlessLLM: Llama-3.1-8B safetensors, cold page cache, mean 4.44 s for 16 GB.
    assert 3.5 < float(np.median(sllm.warm_start_s)) < 6.0
    doubled = build_cold_start(
        ColdStartConfig(weight_load=Distribution(data="serverlessllm", scale=2.0), **base), LLAMA_8B
    )
    np.testing.assert_allclose(doubled.warm_start_s, 2 * sllm.warm_start_s, rtol=0.01)
    ali = build_cold_start(
        ColdStartConfig(
            provisioning=Distribution(data="alibaba_basemodel"), image_pull=ones, engine_warmup=ones
        ),
        LLAMA_8B,
    )
    # SOURCE.md: base-model load p50 22.7 s, max 79.4 s.
    assert ali.provisioning_s[15] < 22.7 < ali.provisioning_s[16] + 0.5
    assert ali.provisioning_s[-1] < 79.5


def test_missing_raw_data_names_the_file_and_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"rlscale data fetch serverlessllm"):
        read_serverlessllm_s_per_gb(tmp_path)
    with pytest.raises(ScenarioError, match=r"basemodel_update_latency_anon\.csv"):
        fit_empirical_table("alibaba_basemodel", tmp_path)
    bad = tmp_path / ALIBABA_BASEMODEL
    bad.parent.mkdir(parents=True)
    bad.write_text("timestamp_anon,latency\n1,2\n")
    with pytest.raises(ScenarioError, match="'value'"):
        read_alibaba_basemodel_s(tmp_path)


def test_missing_or_bad_table_names_the_fit_command(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"serverlessllm\.yaml is missing.*fit-coldstart"):
        build_cold_start(ColdStartConfig(), LLAMA_8B, table_dir=tmp_path)
    (tmp_path / "serverlessllm.yaml").write_text(
        "name: serverlessllm\nunit: s_per_gb\nsamples: 2\nsource: {files: []}\n"
        "levels: [0.0, 1.0]\nvalues: [2.0, 1.0]\n"
    )
    with pytest.raises(ScenarioError, match="non-decreasing"):
        build_cold_start(ColdStartConfig(), LLAMA_8B, table_dir=tmp_path)
    with pytest.raises(ScenarioError, match="known: serverlessllm, alibaba_basemodel"):
        load_empirical_table("nvme")


def test_shipped_tables_name_their_source_and_command() -> None:
    for data, source in EMPIRICAL_DATA.items():
        files = source.files
        assert load_empirical_table(data).source_files == files
        head = (COLDSTART_DIR / f"{data}.yaml").read_text().splitlines()[: 2 + len(files)]
        assert "`rlscale data fit-coldstart`" in head[0]
        assert "Source: dataset " in head[1]
        assert [line.strip("# ") for line in head[2:]] == list(files)


@needs_cold_start_data
def test_shipped_tables_match_a_refit_from_the_data(tmp_path: Path) -> None:
    """experiments/coldstart/ must be what `rlscale data fit-coldstart` writes today."""
    write_empirical_tables(tmp_path, DATA)
    for data in EMPIRICAL_DATA:
        shipped, refit = load_empirical_table(data), load_empirical_table(data, tmp_path)
        np.testing.assert_array_equal(shipped.levels, refit.levels)
        np.testing.assert_array_equal(shipped.values, refit.values)
        assert shipped.samples == refit.samples


@needs_cold_start_data
def test_shipped_tables_give_the_raw_data_quantiles() -> None:
    """The simulator's quantiles from the tables are those of the raw measurements."""
    levels = np.random.default_rng(0).random(20_000)
    # serverlessllm: 90 loads, every one a knot, so the same numbers as numpy on the raw data.
    raw = read_serverlessllm_s_per_gb(DATA) * LLAMA_70B.weights_gb
    np.testing.assert_allclose(
        empirical_quantiles_s("serverlessllm", LLAMA_70B, levels),
        np.quantile(raw, levels),
        rtol=1e-12,
    )
    # alibaba_basemodel: 7,531 loads kept as 1,001 quantiles; the 32-level tables the
    # simulator draws from stay within 1% of the raw data's (0.65% measured, in the gap at 5-20 s).
    raw = read_alibaba_basemodel_s(DATA)
    table = np.quantile(
        empirical_quantiles_s("alibaba_basemodel", LLAMA_8B, levels), quantile_levels()
    )
    np.testing.assert_allclose(
        table, np.quantile(np.quantile(raw, levels), quantile_levels()), rtol=1e-2
    )


# --------------------------------------------------------------------------------------------
# Spot markets
# --------------------------------------------------------------------------------------------


def test_ou_price_and_hazard_preemption() -> None:
    cfg = SpotConfig(mean_discount=0.35, reversion_per_h=0.5, volatility=0.1, hazard_per_h=0.2)
    m = build_spot_market(cfg, on_demand_price_usd_h=10.0, n_steps=7, control_interval_s=30.0)
    assert m.price_usd_h is None
    assert m.ou_mean_usd_h == pytest.approx(3.5)
    assert m.ou_reversion_per_h == 0.5
    assert m.ou_vol_usd_h == pytest.approx(0.35)
    np.testing.assert_allclose(m.preempt_prob, 1.0 - math.exp(-0.2 * 30.0 / 3600.0))
    np.testing.assert_array_equal(m.capacity_share, np.ones(7))
    assert (m.fulfil_prob, m.notice_s) == (cfg.fulfil_prob, cfg.notice_s)
    # Over one hour of intervals the survival matches exp(-hazard).
    hour = build_spot_market(cfg, on_demand_price_usd_h=10.0, n_steps=120, control_interval_s=30.0)
    assert np.prod(1.0 - hour.preempt_prob) == pytest.approx(math.exp(-0.2))


def _tsv_series(instance_type: str, zone: str) -> tuple[float, list[tuple[float, float]]]:
    with (DATA / PRICE_TSV).open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    start = min(datetime.fromisoformat(r["Timestamp"]).timestamp() for r in rows)
    series = sorted(
        (datetime.fromisoformat(r["Timestamp"]).timestamp(), float(r["SpotPrice"]))
        for r in rows
        if r["InstanceType"] == instance_type
        and r["AvailabilityZoneId"] == zone
        and r["ProductDescription"] == "Linux/UNIX"
    )
    return start, series


@needs_data
def test_trace_price_follows_the_tsv() -> None:
    # g5.48xlarge has two rows in use1-az1, use1-az2 and use1-az5; the tie goes to use1-az1.
    cfg = SpotConfig(price="trace", instance_type="g5.48xlarge", mean_discount=0.4)
    m = build_spot_market(cfg, on_demand_price_usd_h=20.0, n_steps=2000, control_interval_s=30.0)
    start, series = _tsv_series("g5.48xlarge", "use1-az1")
    (_, p0), (t1, p1) = series
    assert m.price_usd_h is not None and m.price_usd_h.shape == (2000,)
    n_trace = 678  # ceil((23:59:29 - 18:20:41) / 30 s)
    path = m.price_usd_h[:n_trace]
    assert path.mean() == pytest.approx(0.4 * 20.0)
    change = int(np.flatnonzero(np.diff(path))[0]) + 1
    assert start + 30.0 * (change - 1) < t1 <= start + 30.0 * change
    assert path[change] / path[0] == pytest.approx(p1 / p0)
    assert np.all(path[:change] == path[0]) and np.all(path[change:] == path[change])
    np.testing.assert_array_equal(m.price_usd_h[n_trace : 2 * n_trace], path)  # tiled
    other = build_spot_market(
        SpotConfig(price="trace", instance_type="g5.48xlarge", availability_zone="use1-az5"),
        on_demand_price_usd_h=20.0,
        n_steps=n_trace,
        control_interval_s=30.0,
    )
    assert other.price_usd_h is not None and not np.array_equal(other.price_usd_h, path)


@needs_data
def test_trace_price_needs_a_known_instance_type() -> None:
    kw = dict(on_demand_price_usd_h=10.0, n_steps=10, control_interval_s=30.0)
    with pytest.raises(ScenarioError, match=r"instance_type.*p3\.2xlarge"):
        build_spot_market(SpotConfig(price="trace"), **kw)
    with pytest.raises(ScenarioError, match=r"'h100\.nope'.*g5\.xlarge"):
        build_spot_market(SpotConfig(price="trace", instance_type="h100.nope"), **kw)
    with pytest.raises(ScenarioError, match="use1-az2"):
        build_spot_market(
            SpotConfig(price="trace", instance_type="p3.2xlarge", availability_zone="mars-az1"),
            **kw,
        )


@needs_data
def test_trace_preemption_reproduces_the_drops() -> None:
    doc = json.loads((DATA / PREEMPT_1).read_text())
    counts = np.array(doc["data"])
    drops = int(np.sum(np.diff(counts) < 0))
    assert doc["metadata"]["gap_seconds"] == 32 and drops == 41
    cfg = SpotConfig(preemption="trace", preemption_trace=PREEMPT_1)
    n_trace = math.ceil(len(counts) * 32 / 30)
    m = build_spot_market(cfg, on_demand_price_usd_h=3.0, n_steps=n_trace, control_interval_s=30.0)
    assert int(np.sum(m.preempt_prob > 0)) == drops
    assert m.preempt_prob.sum() == pytest.approx(drops)  # 1-node: each drop loses everything
    assert set(np.unique(m.capacity_share)) == {0.0, 1.0}
    assert m.capacity_share.mean() == pytest.approx(counts.mean(), abs=0.01)
    # Coarser than the trace (300 s intervals over 32 s ticks): still 41 preemptions.
    coarse = build_spot_market(
        cfg, on_demand_price_usd_h=3.0, n_steps=2130, control_interval_s=300.0
    )
    assert coarse.preempt_prob.sum() == pytest.approx(drops)
    # 4-node trace: the share lost per drop.
    four = json.loads((DATA / PREEMPT_4).read_text())["data"]
    expected = sum((a - b) / a for a, b in itertools.pairwise(four) if b < a)
    m4 = build_spot_market(
        SpotConfig(preemption="trace", preemption_trace=PREEMPT_4),
        on_demand_price_usd_h=3.0,
        n_steps=len(four) * 10,
        control_interval_s=30.0,
    )
    assert m4.preempt_prob.sum() == pytest.approx(expected)
    assert m4.capacity_share.max() == 1.0
    assert m4.capacity_share.min() >= 0.0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"data": [1, 0]}), "metadata"),
        (json.dumps({"metadata": {}, "data": [1, 0]}), "gap_seconds"),
        (json.dumps({"metadata": {"gap_seconds": 30}}), "'data'"),
        (json.dumps({"metadata": {"gap_seconds": 30}, "data": [1, -1]}), "'data'"),
    ],
)
def test_malformed_preemption_trace_is_named(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "trace.json"
    path.write_text(content)
    cfg = SpotConfig(preemption="trace", preemption_trace=str(path))
    with pytest.raises(ScenarioError, match=match) as err:
        build_spot_market(cfg, on_demand_price_usd_h=1.0, n_steps=4, control_interval_s=30.0)
    assert "trace.json" in str(err.value)


def test_missing_traces_and_bad_arguments(tmp_path: Path) -> None:
    kw = dict(on_demand_price_usd_h=1.0, n_steps=4, control_interval_s=30.0, data_dir=tmp_path)
    with pytest.raises(ScenarioError, match="us-east-1c"):
        build_spot_market(SpotConfig(preemption="trace", preemption_trace=PREEMPT_1), **kw)
    with pytest.raises(ScenarioError, match="aws_spot_prices_gpu"):
        build_spot_market(SpotConfig(price="trace", instance_type="g5.xlarge"), **kw)
    tsv = tmp_path / "prices.tsv"
    tsv.write_text("InstanceType\tSpotPrice\nx\t1\n")
    with pytest.raises(ScenarioError, match=r"prices\.tsv.*AvailabilityZoneId"):
        build_spot_market(SpotConfig(price="trace", price_trace=str(tsv), instance_type="x"), **kw)
    with pytest.raises(ScenarioError, match="n_steps"):
        build_spot_market(
            SpotConfig(), on_demand_price_usd_h=1.0, n_steps=0, control_interval_s=30.0
        )
    with pytest.raises(ScenarioError, match="on_demand_price_usd_h"):
        build_spot_market(
            SpotConfig(), on_demand_price_usd_h=0.0, n_steps=3, control_interval_s=30.0
        )


def test_every_data_name_a_scenario_accepts_has_a_table() -> None:
    accepted = typing.get_args(Distribution.model_fields["data"].annotation)
    names = {a for arg in accepted for a in typing.get_args(arg)}
    assert names == set(EMPIRICAL_DATA)
    assert all(load_empirical_table(name).name == name for name in names)
