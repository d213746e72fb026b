"""Workload series (envs/workload.py) and trace parsing (envs/traces.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlscale.envs.scenario import ScenarioError, WorkloadConfig, data_root
from rlscale.envs.traces import law_cv, sample_renewal_arrivals
from rlscale.envs.workload import (
    QUANTILE_LEVELS,
    WorkloadSeries,
    build_workload,
    causal_forecast_rps,
    length_moments,
)

DATA = data_root()
AZURE_CONV = "azure_llm_trace_2023/AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = "azure_llm_trace_2023/AzureLLMInferenceTrace_code.csv"
MOONCAKE_CONV = "mooncake_fast25_traces/conversation_trace.jsonl"
SG_LARGE = "servegen_alibaba_language/m-large"
SG_SMALL = "servegen_alibaba_language/m-small"


def needs(*paths: str) -> pytest.MarkDecorator:
    """Skip unless the shared datasets are present."""
    missing = [p for p in paths if not (DATA / p).exists()]
    return pytest.mark.skipif(
        bool(missing), reason=f"{missing} not found under {DATA} (set $RLSCALE_DATA)"
    )


def build(seed: int = 0, substep_s: float = 1.0, **cfg: object) -> WorkloadSeries:
    return build_workload(
        WorkloadConfig(**cfg), substep_s=substep_s, control_interval_s=30.0, seed=seed
    )


def azure_rows(rel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds from the first row, prompt and output tokens, read independently of traces.py."""
    with (DATA / rel).open() as fh:
        rows = list(csv.DictReader(fh))
    stamps = np.array([r["TIMESTAMP"][:26] for r in rows], dtype="datetime64[us]")
    t = (stamps - stamps[0]) / np.timedelta64(1, "s")
    prompt = np.array([int(r["ContextTokens"]) for r in rows])
    output = np.array([int(r["GeneratedTokens"]) for r in rows])
    return t, prompt, output


def assert_series_shapes(s: WorkloadSeries) -> None:
    n = s.n_bins
    for arr in (s.arrivals, s.prompt_tokens, s.output_tokens, s.forecast_rps, s.gaps):
        assert arr.shape == (n,)
    k = round(s.control_interval_s / s.substep_s)
    assert s.tenant_token_share.shape == (math.ceil(n / k), len(s.tenant_names))
    assert s.tenant_token_share.dtype == np.float32
    np.testing.assert_allclose(s.tenant_token_share.sum(axis=1), 1.0, atol=1e-5)
    assert s.prompt_quantiles.shape == (QUANTILE_LEVELS,)
    assert np.all(np.diff(s.prompt_quantiles) >= 0)
    assert np.isfinite(s.forecast_rps).all() and (s.forecast_rps >= 0).all()
    assert 0 <= s.start_s_of_week < 7 * 86400


# --- recorded traces ----------------------------------------------------------------------------


@needs(AZURE_CONV, AZURE_CODE)
@pytest.mark.parametrize(("rel", "rows"), [(AZURE_CONV, 19_366), (AZURE_CODE, 8_819)])
def test_azure_replays_every_request_and_token(rel: str, rows: int) -> None:
    t, prompt, output = azure_rows(rel)
    s = build(kind="azure", path=rel)
    assert_series_shapes(s)
    assert not s.stochastic and s.tenant_names == ("default",) and not s.gaps.any()
    assert s.arrivals.sum() == rows == t.size
    assert s.prompt_tokens.sum() == prompt.sum()
    assert s.output_tokens.sum() == output.sum()
    assert s.n_bins == math.floor(t[-1]) + 1
    # bin 0 holds the first request; per-bin counts match an independent binning
    np.testing.assert_array_equal(s.arrivals, np.bincount(t.astype(int), minlength=s.n_bins))
    np.testing.assert_allclose(
        s.prompt_quantiles[QUANTILE_LEVELS // 2], np.median(prompt), rtol=0.1
    )


@needs(MOONCAKE_CONV)
def test_mooncake_replays_every_request_and_token() -> None:
    recs = [json.loads(line) for line in (DATA / MOONCAKE_CONV).read_text().splitlines()]
    s = build(kind="mooncake", path=MOONCAKE_CONV)
    assert_series_shapes(s)
    assert s.arrivals.sum() == len(recs) == 12_031
    assert s.prompt_tokens.sum() == sum(r["input_length"] for r in recs)
    assert s.output_tokens.sum() == sum(r["output_length"] for r in recs)
    assert s.n_bins == recs[-1]["timestamp"] // 1000 + 1


@needs(AZURE_CONV)
def test_time_scale_stretches_and_halves_the_rate() -> None:
    base = build(kind="azure", path=AZURE_CONV)
    slow = build(kind="azure", path=AZURE_CONV, time_scale=2.0)
    assert slow.arrivals.sum() == base.arrivals.sum()
    assert slow.mean_rps == pytest.approx(base.mean_rps / 2, rel=1e-3)
    assert slow.n_bins == pytest.approx(2 * base.n_bins, abs=2)


@needs(AZURE_CONV)
def test_window_cuts_the_trace_and_moves_the_clock() -> None:
    t, prompt, _ = azure_rows(AZURE_CONV)
    s = build(
        kind="azure",
        path=AZURE_CONV,
        window_start_h=0.25,
        window_hours=0.25,
        start_weekday=2,
        start_hour=9.0,
    )
    inside = (t >= 900) & (t < 1800)
    assert s.n_bins == 900
    assert s.arrivals.sum() == inside.sum()
    assert s.prompt_tokens.sum() == prompt[inside].sum()
    assert s.start_s_of_week == (2 * 24 + 9) * 3600 + 900
    with pytest.raises(ScenarioError, match=r"window_start_h=2.0.*0\.97\d* h long"):
        build(kind="azure", path=AZURE_CONV, window_start_h=2.0)
    with pytest.raises(ScenarioError, match=r"window_hours=1.0.*past the end"):
        build(kind="azure", path=AZURE_CONV, window_start_h=0.5, window_hours=1.0)


@needs(AZURE_CONV)
def test_rate_scale_thins_and_superposes_deterministically() -> None:
    base = build(kind="azure", path=AZURE_CONV)
    n = base.arrivals.sum()
    half = build(kind="azure", path=AZURE_CONV, rate_scale=0.5)
    assert half.n_bins == base.n_bins
    assert half.arrivals.sum() == pytest.approx(n / 2, abs=4 * math.sqrt(n / 4))
    more = build(kind="azure", path=AZURE_CONV, rate_scale=2.5, seed=3)
    assert more.arrivals.sum() == pytest.approx(2.5 * n, abs=4 * math.sqrt(n / 4))
    again = build(kind="azure", path=AZURE_CONV, rate_scale=2.5, seed=3)
    np.testing.assert_array_equal(more.arrivals, again.arrivals)
    other = build(kind="azure", path=AZURE_CONV, rate_scale=2.5, seed=4)
    assert not np.array_equal(more.arrivals, other.arrivals)
    # copies keep the token mix
    assert more.prompt_tokens.sum() / more.arrivals.sum() == pytest.approx(
        base.prompt_tokens.sum() / n, rel=0.03
    )
    target = build(kind="azure", path=AZURE_CONV, target_mean_rps=11.0)
    assert target.mean_rps == pytest.approx(11.0, rel=0.02)
    with pytest.raises(ScenarioError, match=r"rate_scale=2\.0 and target_mean_rps=11\.0"):
        build(kind="azure", path=AZURE_CONV, rate_scale=2.0, target_mean_rps=11.0)


def write_csv(path: Path, rows: list[tuple], header: str) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_csv_tenant_shares_follow_tokens(tmp_path: Path) -> None:
    rows = [(0.5, 100, 0, "a"), (3.0, 50, 50, "b"), (4.0, 100, 0, "a"), (75.0, 10, 10, "b")]
    p = write_csv(tmp_path / "t.csv", rows, "timestamp_s,prompt_tokens,output_tokens,tenant")
    s = build(kind="csv", path=str(p))
    assert_series_shapes(s)
    assert s.tenant_names == ("a", "b")
    assert s.n_bins == 75 and s.tenant_token_share.shape == (3, 2)
    np.testing.assert_allclose(s.tenant_token_share, [[2 / 3, 1 / 3], [0.5, 0.5], [0, 1]])
    # time 0 is the first request (0.5 s), so the last one (74.5 s later) is in the last bin
    assert s.arrivals[[0, 2, 3, 74]].tolist() == [1, 1, 1, 1] and s.arrivals.sum() == 4


def test_prompt_only_requests_make_a_finite_output_class() -> None:
    """Half the requests generate no token: their class holds no output and neutral ratios,
    never 0/0 (a NaN there would reach every kernel step)."""
    from rlscale.envs.workload import CP_OUTPUT, CP_PHI, CP_PSHIFT, CP_SHARE, output_classes

    table = output_classes(np.array([100.0, 200, 300, 400]), np.array([0.0, 0, 50, 150]))
    assert np.isfinite(table).all()
    assert table[0, CP_SHARE] == 0.5 and table[0, CP_OUTPUT] == 0.0
    assert table[0, CP_PHI] == 1.0 and table[0, CP_PSHIFT] == 0.0
    # the answering class as before: (50^2 + 150^2) / 2 / (2 * 100^2), and its prompts weighted
    # by output (300 x 50 + 400 x 150) / 200 against their mean 350
    assert table[1, CP_OUTPUT] == 2.0 and table[1, CP_PHI] == pytest.approx(0.625)
    assert table[1, CP_PSHIFT] == pytest.approx(25.0)


def test_csv_slightly_unordered_rows_are_sorted(tmp_path: Path) -> None:
    rows = [(10.0, 1, 1), (9.6, 2, 2), (12.0, 3, 3)]
    s = build(
        kind="csv",
        path=str(write_csv(tmp_path / "u.csv", rows, "timestamp_s,prompt_tokens,output_tokens")),
    )
    assert s.arrivals.tolist() == [2, 0, 1]  # time 0 = the earliest request (9.6 s)
    assert s.prompt_tokens.tolist() == [3, 0, 3]


# --- forecast -----------------------------------------------------------------------------------


@pytest.mark.parametrize("days", [0.5, 3.0])
def test_forecast_is_causal(days: float) -> None:
    dt = 10.0
    n = round(days * 86400 / dt)
    t = np.arange(n) * dt
    rng = np.random.default_rng(0)
    x = rng.poisson(dt * (5 + 3 * np.sin(2 * np.pi * t / 86400)))
    gaps = np.zeros(n, dtype=bool)
    gaps[5000:5060] = True
    f = causal_forecast_rps(x, substep_s=dt, control_interval_s=30.0, gaps=gaps)
    for cut in (1, 100, n // 2, n - 7):
        y = x.astype(float).copy()
        y[cut:] = rng.poisson(50.0, n - cut)
        g = gaps.copy()
        g[cut:] = False
        fy = causal_forecast_rps(y, substep_s=dt, control_interval_s=30.0, gaps=g)
        np.testing.assert_array_equal(f[: cut + 1], fy[: cut + 1])
    assert f[0] == 0.0
    late = slice(n // 2, None)
    # it tracks the rate: within 15% on average once history exists
    truth = 5 + 3 * np.sin(2 * np.pi * (t[late] + 15) / 86400)
    assert np.mean(np.abs(f[late] - truth) / truth) < 0.15


def test_seasonal_forecast_sees_yesterdays_spike() -> None:
    dt = 60.0
    n = round(3 * 86400 / dt)
    x = np.full(n, 10.0 * dt)
    day = round(86400 / dt)
    spike = slice(day + 600, day + 620)
    x[spike] *= 4
    f = causal_forecast_rps(x, substep_s=dt, control_interval_s=60.0)
    # the same minutes a day later are forecast high, before any of today's data shows it
    assert f[spike.start + day + 5] > 30 and f[spike.start + day - 10] == pytest.approx(10.0)


def test_forecast_of_a_trace_is_causal_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 1800, 9000))
    head = "timestamp_s,prompt_tokens,output_tokens"
    a = write_csv(tmp_path / "a.csv", [(t, 10, 5) for t in times], head)
    # time 0 is the first request (a fraction of a second in): bins before 900 end before 950 s
    changed = np.where(times > 950, 1790.0, times)
    b = write_csv(tmp_path / "b.csv", [(t, 10, 5) for t in np.sort(changed)], head)
    fa = build(kind="csv", path=str(a)).forecast_rps
    fb = build(kind="csv", path=str(b)).forecast_rps
    np.testing.assert_array_equal(fa[:901], fb[:901])
    assert not np.array_equal(fa, fb)


# --- ServeGen -----------------------------------------------------------------------------------


def aggregate_rate(name: str) -> np.ndarray:
    with (DATA / f"servegen_alibaba_language/{name}_aggregate_rate.csv").open() as fh:
        return np.array([float(r["total_rate"]) for r in csv.DictReader(fh)])


@needs(SG_LARGE)
def test_servegen_matches_the_aggregate_rate_and_the_target() -> None:
    # hours 20-22 of day 3: windows 468..479
    s = build(kind="servegen", path=SG_LARGE, window_start_h=78.0, window_hours=2.0)
    assert_series_shapes(s)
    assert len(s.tenant_names) == 162 and s.tenant_names[0] == "chunk-0"
    assert s.n_bins == 7200 and not s.gaps.any()
    expected = aggregate_rate("m-large")[468:480].mean()
    assert s.mean_rps == pytest.approx(expected, rel=0.02)
    mean_prompt, _ = length_moments(WorkloadConfig(kind="csv", path="x").prompt_tokens)
    assert s.prompt_tokens.sum() / s.arrivals.sum() == pytest.approx(mean_prompt, rel=0.02)
    assert s.start_s_of_week == 78 * 3600.0
    t = build(
        kind="servegen", path=SG_LARGE, window_start_h=78.0, window_hours=2.0, target_mean_rps=20
    )
    assert t.mean_rps == pytest.approx(20.0, rel=0.03)
    # the aggregate keeps its shape: per-10-minute rates scale together
    per_window = t.arrivals.reshape(12, 600).mean(axis=1)
    scale = 20.0 / expected
    np.testing.assert_allclose(per_window, aggregate_rate("m-large")[468:480] * scale, rtol=0.15)
    again = build(
        kind="servegen", path=SG_LARGE, window_start_h=78.0, window_hours=2.0, target_mean_rps=20
    )
    np.testing.assert_array_equal(t.arrivals, again.arrivals)


@needs(SG_SMALL)
def test_servegen_collection_gaps_are_marked_and_empty() -> None:
    # m-small windows 1332..1335 are empty for every client
    s = build(
        kind="servegen",
        path=SG_SMALL,
        window_start_h=1330 * 600 / 3600,
        window_hours=2.0,
        target_mean_rps=20,
    )
    expect = np.zeros(7200, dtype=bool)
    expect[1200:3600] = True
    np.testing.assert_array_equal(s.gaps, expect)
    assert s.arrivals[s.gaps].sum() == 0
    assert (s.arrivals.reshape(12, 600).sum(axis=1)[~expect[::600]] > 0).all()
    with pytest.raises(ScenarioError, match="collection gap"):
        build(kind="servegen", path=SG_SMALL, window_start_h=1332 * 600 / 3600, window_hours=0.5)


def first_row(rel: str, pattern: str, column: int, lo: float, hi: float) -> list[str]:
    """The first row of a ServeGen client file with that pattern and ``lo < row[column] < hi``."""
    with (DATA / rel).open() as fh:
        for row in csv.reader(fh):
            if row[3] == pattern and lo < float(row[column]) < hi:
                return row
    raise AssertionError(f"no {pattern} row with column {column} in ({lo}, {hi}) in {rel}")


@needs(SG_LARGE)
def test_servegen_gamma_window_keeps_its_cv_and_rate() -> None:
    row = first_row(f"{SG_LARGE}/chunk-0-trace.csv", "Gamma", 2, 1.5, 3.0)
    rate, cv, shape = float(row[1]), float(row[2]), float(row[4])
    duration = 200_000 / rate  # one long window: ~200k requests
    t, _ = sample_renewal_arrivals(
        np.random.default_rng(0),
        np.zeros(1),
        np.array([duration]),
        np.array([rate]),
        np.array([1]),
        np.array([shape]),
    )
    gaps = np.diff(np.sort(t))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


@needs(SG_LARGE)
def test_servegen_weibull_window_keeps_its_fitted_shape() -> None:
    # ServeGen's Weibull fits do not reproduce the cv column (law cv / column cv ~0.8 in the
    # median): the sampler keeps the fitted shape, so the sample cv is the law's. A shape above
    # 0.7 keeps the tail light enough for the sample cv to settle.
    row = first_row(f"{SG_LARGE}/chunk-1-trace.csv", "Weibull", 4, 0.7, 1.5)
    rate, shape = float(row[1]), float(row[4])
    t, _ = sample_renewal_arrivals(
        np.random.default_rng(1),
        np.zeros(1),
        np.array([200_000 / rate]),
        np.array([rate]),
        np.array([2]),
        np.array([shape]),
    )
    gaps = np.diff(np.sort(t))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(float(law_cv(2, shape)), rel=0.1)


@pytest.mark.parametrize(("law", "shape"), [(1, 0.02), (2, 0.3)])
def test_short_bursty_windows_get_the_right_mean_count(law: int, shape: float) -> None:
    # ~12 requests per 600 s window with cv ~7 (Gamma) / ~6 (Weibull): a window that began at an
    # arrival instead of mid-gap would hold several times more
    n_seg = 20_000
    t, seg = sample_renewal_arrivals(
        np.random.default_rng(2),
        np.arange(n_seg) * 600.0,
        np.full(n_seg, 600.0),
        np.full(n_seg, 0.02),
        np.full(n_seg, law),
        np.full(n_seg, shape),
    )
    assert t.size / n_seg == pytest.approx(12.0, rel=0.06)
    assert ((t >= seg * 600.0) & (t < seg * 600.0 + 600.0)).all()


def servegen_folder(tmp_path: Path, rows: list[str], name: str = "chunk-0-trace.csv") -> Path:
    folder = tmp_path / "sg"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("rate", [20.0, 400.0])
def test_servegen_per_bin_dispersion_follows_cv(tmp_path: Path, rate: float) -> None:
    # 400 req/s is drawn per bin (central limit), 20 req/s request by request: the Fano factor of
    # 1 s counts of a renewal process is ~cv^2 either way
    shape = 4.0  # Gamma, cv 0.5
    rows = [f"{w * 600},{rate},0.5,Gamma,{shape},{1 / (rate * shape)}" for w in range(12)]
    s = build(kind="servegen", path=str(servegen_folder(tmp_path, rows)))
    assert s.n_bins == 7200
    assert s.mean_rps == pytest.approx(rate, rel=0.01)
    assert s.arrivals.var() / s.arrivals.mean() == pytest.approx(0.25, rel=0.15)
    mean_out, _ = length_moments(WorkloadConfig(kind="csv", path="x").output_tokens)
    assert s.output_tokens.sum() / s.arrivals.sum() == pytest.approx(mean_out, rel=0.02)


def test_servegen_time_scale_stretches_windows(tmp_path: Path) -> None:
    rows = ["0,10.0,1.0,Gamma,1.0,0.1", "600,0,0,,0,0", "1200,30.0,1.0,Gamma,1.0,0.033"]
    folder = servegen_folder(tmp_path, rows)
    s = build(kind="servegen", path=str(folder), time_scale=2.0, start_hour=6.0)
    assert s.n_bins == 3600 and s.start_s_of_week == 6 * 3600
    per_window = s.arrivals.reshape(3, 1200).mean(axis=1)
    np.testing.assert_allclose(per_window, [5.0, 0.0, 15.0], rtol=0.1, atol=1e-9)
    # the only client is empty in the middle window: a collection gap, 1200 stretched seconds
    np.testing.assert_array_equal(np.flatnonzero(s.gaps), np.arange(1200, 2400))
    # the forecast holds the level seen before the gap instead of decaying to zero
    assert s.forecast_rps[2399] == pytest.approx(s.forecast_rps[1201], rel=1e-9)
    assert s.forecast_rps[1201] == pytest.approx(5.0, rel=0.3)


# --- synthetic ----------------------------------------------------------------------------------


def synthetic(**syn: object) -> WorkloadSeries:
    return build(kind="synthetic", synthetic={"days": 14.0, **syn})


def test_synthetic_has_weekly_seasonality_and_expected_tokens() -> None:
    s = synthetic(weekend_factor=0.6, noise_cv=0.2)
    assert_series_shapes(s)
    assert s.stochastic and s.n_bins == 14 * 86400
    day = s.arrivals.reshape(14, 86400).sum(axis=1)
    weekend = np.isin(np.arange(14) % 7, [5, 6])
    assert day[weekend].mean() / day[~weekend].mean() == pytest.approx(0.6, rel=0.05)
    assert s.mean_rps == pytest.approx(20 * (5 + 2 * 0.6) / 7, rel=0.05)
    mean_prompt, _ = length_moments(WorkloadConfig(kind="csv", path="x").prompt_tokens)
    np.testing.assert_allclose(s.prompt_tokens, s.arrivals * mean_prompt)
    hourly = s.arrivals[:86400].reshape(24, 3600).sum(axis=1)
    assert abs(int(np.argmax(hourly)) - 14) <= 1  # peak_hour default 14
    t = build(kind="synthetic", synthetic={"days": 2.0}, target_mean_rps=7.0)
    assert t.mean_rps == pytest.approx(7.0, rel=1e-9)


def test_synthetic_forecast_sees_announced_bursts_only() -> None:
    bursts = [
        {"day": 2, "hour": 10, "duration_h": 2, "multiplier": 3, "announced": True},
        {"day": 3, "hour": 10, "duration_h": 2, "multiplier": 3, "announced": False},
    ]
    s = synthetic(noise_cv=0.0, bursts=bursts)
    at = lambda d, h: round((d * 24 + h) * 3600)  # noqa: E731
    base = s.forecast_rps[at(1, 11)]
    assert s.forecast_rps[at(2, 11)] == pytest.approx(3 * base)
    # arrivals are the rate at the bin centre, the forecast a mean over the next 30 bins
    assert s.arrivals[at(2, 11)] == pytest.approx(3 * base, rel=1e-3)
    assert s.forecast_rps[at(3, 11)] == pytest.approx(base)  # unannounced: not in the forecast
    assert s.arrivals[at(3, 11)] == pytest.approx(3 * base, rel=1e-3)
    # the forecast covers the next interval, so it rises 30 bins ahead of an announced burst
    assert s.forecast_rps[at(2, 10) - 15] > 1.5 * s.forecast_rps[at(2, 10) - 40]


def test_synthetic_random_bursts_change_load_not_forecast() -> None:
    calm = synthetic(random_bursts_per_week=0.0)
    wild = synthetic(random_bursts_per_week=3.0)
    np.testing.assert_array_equal(calm.forecast_rps, wild.forecast_rps)
    ratio = wild.arrivals / calm.arrivals
    assert ratio.max() >= 2.0 and ratio.min() == pytest.approx(1.0)
    assert (ratio > 1.5).sum() >= 1800  # at least one burst of >= 0.5 h


# --- bad input ----------------------------------------------------------------------------------

AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens"
OK_ROW = "2023-11-16 18:15:46.6805900,374,44"


@pytest.mark.parametrize(
    ("kind", "name", "text", "match"),
    [
        ("azure", "a.csv", f"{AZURE_HEAD}\n{OK_ROW}\n2023-11-16 18:15:47.1,abc,5\n",
         r"line 3: field 'ContextTokens'.*'abc'"),
        ("azure", "a.csv", f"{AZURE_HEAD}\n{OK_ROW}\n2023-11-16 18:15:47.1,12,-5\n",
         r"line 3: field 'GeneratedTokens'.*'-5'"),
        ("azure", "a.csv", f"{AZURE_HEAD}\n{OK_ROW}\n2023-11-16 25:15:47.1,12,5\n",
         r"line 3: field 'TIMESTAMP'.*25:15:47"),
        ("azure", "a.csv", f"{AZURE_HEAD}\n{OK_ROW}\nyesterday,12,5\n",
         r"line 3: field 'TIMESTAMP'.*'yesterday'"),
        ("azure", "a.csv", f"{AZURE_HEAD}\n{OK_ROW}\n2023-11-16 18:15:36.0,12,5\n",
         r"line 3: field 'TIMESTAMP' goes back in time by 10\.68"),
        ("azure", "a.csv", f"time,a,b\n{OK_ROW}\n", r"line 1: expected the header"),
        ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
         '{"timestamp": 10, "input_length": 5}\n', r"line 2: field 'output_length' is missing"),
        ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 5.5, "output_length": 1}\n',
         r"line 1: field 'input_length'.*5\.5"),
        ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n',
         r"line 2: field '\(json\)' is not valid JSON"),
        ("csv", "c.csv", "timestamp_s,prompt_tokens,output_tokens\n1.0,5,5\nsoon,5,5\n",
         r"line 3: field 'timestamp_s'.*'soon'"),
        ("csv", "c.csv", "timestamp_s,prompt_tokens,output_tokens\n1.0,5\n",
         r"line 2: .*row must have 3 fields"),
        ("csv", "c.csv", "timestamp_s,prompt_tokens,output_tokens\n", r"has no requests"),
    ],
)  # fmt: skip
def test_bad_trace_rows_name_line_field_and_value(
    tmp_path: Path, kind: str, name: str, text: str, match: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScenarioError, match=match) as err:
        build(kind=kind, path=str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("600,0.5,2.0,Pareto,1.0,2.0", r"line 2: field 'pattern'.*must be one of.*'Pareto'"),
        ("600,fast,2.0,Gamma,1.0,2.0", r"line 2: field 'rate'.*'fast'"),
        ("600,0.5,2.0,Gamma,-1.0,2.0", r"line 2: field 'param1'.*'-1.0'"),
        ("600,0.5,2.0,Gamma,1.0", r"line 2: field '\(row\)'.*6 fields"),
        ("600,0.5,2.0,,0,0", r"line 2: field 'pattern' is empty but rate is 0.5"),
    ],
)
def test_bad_servegen_rows_name_line_field_and_value(tmp_path: Path, row: str, match: str) -> None:
    folder = servegen_folder(tmp_path, ["0,0.5,2.0,Gamma,0.25,8.0", row])
    with pytest.raises(ScenarioError, match=match):
        build(kind="servegen", path=str(folder))


def test_missing_and_misplaced_sources_say_where_they_looked(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"no_such_trace\.csv.*RLSCALE_DATA"):
        build(kind="azure", path="no_such_trace.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match=r"holds no chunk-<id>-trace\.csv"):
        build(kind="servegen", path=str(empty))
    f = tmp_path / "f.csv"
    f.write_text(AZURE_HEAD + "\n" + OK_ROW + "\n")
    with pytest.raises(ScenarioError, match="must be a folder"):
        build(kind="servegen", path=str(f))
    with pytest.raises(ScenarioError, match="is a folder"):
        build(kind="azure", path=str(empty))


def test_window_with_no_requests_is_an_error(tmp_path: Path) -> None:
    rows = [(0.0, 5, 5), (10.0, 5, 5), (7200.0, 5, 5)]
    p = write_csv(tmp_path / "g.csv", rows, "timestamp_s,prompt_tokens,output_tokens")
    with pytest.raises(ScenarioError, match=r"window_start_h=0.5, window_hours=1.0: no request"):
        build(kind="csv", path=str(p), window_start_h=0.5, window_hours=1.0)
    with pytest.raises(ScenarioError, match=r"time_scale=2\.0 applies to recorded traces"):
        build(kind="synthetic", time_scale=2.0)
