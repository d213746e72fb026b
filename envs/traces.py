"""Recorded request traces: parsing, validation, and the ServeGen arrival process.

Three request-level formats become a :class:`TraceRequests` (one row per request, time 0 = the
earliest request):

- ``azure``: CSV ``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock timestamps such as
  ``2023-11-16 18:15:46.6805900`` (any number of fractional digits).
- ``mooncake``: JSON lines with ``timestamp`` (ms), ``input_length``, ``output_length``.
- ``csv``: ``timestamp_s,prompt_tokens,output_tokens[,tenant][,class]``, where ``class`` is
  a request class (``interactive`` or ``batch``; empty = interactive).

ServeGen publishes no requests, only per-client 10-minute windows of (rate, inter-arrival law);
:func:`read_servegen` loads them as a :class:`ServeGenTrace` and
:func:`sample_renewal_arrivals` draws arrivals from such windows.

Ordering: a row may be earlier than the latest row before it by up to
:data:`BACKWARDS_TOLERANCE_S` (clock jitter between frontends); such traces are stably sorted.
A larger step back means a broken or concatenated file and raises :class:`ScenarioError`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import gamma as gamma_fn

from .datasets import fetch_hint
from .scenario import (
    DATA_ENV_VAR,
    REQUEST_CLASSES,
    ScenarioError,
    data_root,
    resolve_data_path,
)

BACKWARDS_TOLERANCE_S = 1.0
"""Largest step back in time (seconds) tolerated, and repaired by sorting, in a trace."""

SERVEGEN_LAWS = ("Gamma", "Weibull")
"""Inter-arrival laws ServeGen fits; law code k + 1 in :attr:`ServeGenTrace.law`."""

_SERVEGEN_FILE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_SERVEGEN_COLUMNS = ("window_start_s", "rate", "cv", "pattern", "param1", "param2")
_AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_CSV_HEADER = ("timestamp_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class TraceRequests:
    """Requests of a recorded trace, sorted by time.

    Attributes:
        source: the file read.
        time_s: float64 [N], arrival time in seconds; 0 is the earliest request.
        prompt_tokens: float64 [N], prompt (context) tokens per request.
        output_tokens: float64 [N], generated tokens per request.
        tenant: int32 [N], index into ``tenant_names``.
        tenant_names: tenant ids; ``("default",)`` when the file has none.
        batch: bool [N], the requests of class ``batch``; None when the file gives no class
            (then every request is interactive unless the scenario draws a batch share).
    """

    source: str
    time_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    tenant: np.ndarray
    tenant_names: tuple[str, ...]
    batch: np.ndarray | None = None

    @property
    def n_requests(self) -> int:
        """Number of requests."""
        return int(self.time_s.shape[0])

    def time_scaled(self, time_scale: float) -> TraceRequests:
        """The same requests with every arrival time multiplied by ``time_scale``."""
        if time_scale == 1.0:
            return self
        return dataclasses.replace(self, time_s=self.time_s * time_scale)


@dataclass(frozen=True)
class ServeGenTrace:
    """Per-client rate windows of a ServeGen model folder.

    Attributes:
        source: the folder read.
        client_names: ``chunk-<id>`` per client, sorted by id.
        window_s: window length in seconds (600 upstream).
        window_start_s: float64 [W], start of each window.
        rate: float64 [C, W], mean requests/s of each client in each window (0 = none).
        cv: float64 [C, W], recorded coefficient of variation of inter-arrival times.
        law: int8 [C, W], 0 = no requests, 1 = Gamma, 2 = Weibull.
        shape: float64 [C, W], the law's shape parameter (param1).
        scale: float64 [C, W], the law's fitted scale (param2); sampling trusts ``rate`` instead.
    """

    source: str
    client_names: tuple[str, ...]
    window_s: float
    window_start_s: np.ndarray
    rate: np.ndarray
    cv: np.ndarray
    law: np.ndarray
    shape: np.ndarray
    scale: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        """bool [W]: windows in which no client has any request (collection gaps)."""
        return ~(self.law > 0).any(axis=0)

    @property
    def duration_s(self) -> float:
        """Seconds covered by the windows."""
        return float(self.window_start_s[-1] - self.window_start_s[0] + self.window_s)


# --- file access and field checks ---------------------------------------------------------------


def trace_path(path: str | Path, *, want_dir: bool = False) -> Path:
    """Resolve a trace path (see :func:`resolve_data_path`) and fail clearly if it is missing."""
    resolved = resolve_data_path(path)
    if not resolved.exists():
        raise ScenarioError(
            f"workload.path: trace '{path}' not found; looked at {resolved} (relative paths are "
            f"taken below the data root {data_root()}, set by the {DATA_ENV_VAR} environment "
            f"variable, then below the current directory {Path.cwd()}); {fetch_hint(path)}"
        )
    if want_dir and not resolved.is_dir():
        raise ScenarioError(f"workload.path: {resolved} must be a folder of chunk-<id>-trace.csv")
    if not want_dir and resolved.is_dir():
        raise ScenarioError(f"workload.path: {resolved} is a folder; this trace kind needs a file")
    return resolved


def _bad(path: Path, line: int, field: str, value: object, why: str) -> ScenarioError:
    return ScenarioError(f"{path}, line {line}: field '{field}' {why} (got {value!r})")


def _token_count(text: object, path: Path, line: int, field: str) -> float:
    """A token count: a non-negative whole number, given as an int or a numeric string."""
    if isinstance(text, bool):
        raise _bad(path, line, field, text, "must be a non-negative whole number of tokens")
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _bad(
            path, line, field, text, "must be a non-negative whole number of tokens"
        ) from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise _bad(path, line, field, text, "must be a non-negative whole number of tokens")
    return value


def _seconds(text: object, path: Path, line: int, field: str) -> float:
    if isinstance(text, bool):
        raise _bad(path, line, field, text, "must be a number")
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _bad(path, line, field, text, "must be a number") from None
    if not math.isfinite(value):
        raise _bad(path, line, field, text, "must be finite")
    return value


def _order(time_s: np.ndarray, lines: np.ndarray, path: Path, field: str) -> np.ndarray | None:
    """Permutation that sorts mildly unordered times; None when already sorted."""
    if time_s.size < 2:
        return None
    running_max = np.maximum.accumulate(time_s)
    back = running_max[:-1] - time_s[1:]
    if not (back > 0).any():
        return None
    worst = int(np.argmax(back))
    if back[worst] > BACKWARDS_TOLERANCE_S:
        raise ScenarioError(
            f"{path}, line {int(lines[worst + 1])}: field '{field}' goes back in time by "
            f"{back[worst]:.3f} s (more than the {BACKWARDS_TOLERANCE_S} s tolerated); "
            "the trace must be in time order"
        )
    return np.argsort(time_s, kind="stable")


def _requests(
    path: Path,
    time_field: str,
    time_s: list[float],
    lines: list[int],
    prompt: list[float],
    output: list[float],
    tenant: list[str] | None,
    batch: list[bool] | None = None,
) -> TraceRequests:
    if not time_s:
        raise ScenarioError(f"{path}: the trace has no requests")
    t = np.asarray(time_s, dtype=np.float64)
    p = np.asarray(prompt, dtype=np.float64)
    o = np.asarray(output, dtype=np.float64)
    if tenant is None:
        names: tuple[str, ...] = ("default",)
        ten = np.zeros(t.shape[0], dtype=np.int32)
    else:
        uniq, inverse = np.unique(np.asarray(tenant, dtype=object).astype(str), return_inverse=True)
        names = tuple(str(u) for u in uniq)
        ten = inverse.astype(np.int32)
    b = None if batch is None else np.asarray(batch, dtype=bool)
    perm = _order(t, np.asarray(lines), path, time_field)
    if perm is not None:
        t, p, o, ten = t[perm], p[perm], o[perm], ten[perm]
        b = None if b is None else b[perm]
    return TraceRequests(str(path), t - t.min(), p, o, ten, names, b)


# --- request-level formats ----------------------------------------------------------------------


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with the file line each ends on."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        return [(reader.line_num, row) for row in reader if row and any(row)]


class _ClockParser:
    """``YYYY-MM-DD HH:MM:SS[.f...]`` as (day number, seconds of day), split by hand.

    numpy's datetime64 rejects some fractional widths across versions, and datetime.fromisoformat
    takes at most 6 digits; splitting keeps every digit and costs ~1 us a row.
    """

    def __init__(self) -> None:
        self._days: dict[str, int] = {}

    def __call__(self, text: str) -> tuple[int, float]:
        date_part, _, clock = text.strip().replace("T", " ").partition(" ")
        day = self._days.get(date_part)
        if day is None:
            day = dt.date.fromisoformat(date_part).toordinal()
            self._days[date_part] = day
        hh, mm, ss = clock.split(":")
        h, m, s = int(hh), int(mm), float(ss)
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
            raise ValueError(text)
        return day, h * 3600 + m * 60 + s


def read_azure(path: Path) -> TraceRequests:
    """Azure LLM inference trace (Splitwise, 2023): ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    rows = _read_rows(path)
    if not rows or tuple(c.strip() for c in rows[0][1]) != _AZURE_HEADER:
        got = rows[0][1] if rows else "an empty file"
        raise ScenarioError(
            f"{path}, line 1: expected the header {','.join(_AZURE_HEADER)}, got {got}"
        )
    parse_clock = _ClockParser()
    days: list[int] = []
    sod: list[float] = []
    lines: list[int] = []
    prompt: list[float] = []
    output: list[float] = []
    for line, row in rows[1:]:
        if len(row) != 3:
            raise _bad(path, line, "TIMESTAMP", ",".join(row), "row must have 3 fields")
        try:
            day, sec = parse_clock(row[0])
        except ValueError:
            raise _bad(
                path, line, "TIMESTAMP", row[0], "must look like 2023-11-16 18:15:46.6805900"
            ) from None
        days.append(day)
        sod.append(sec)
        lines.append(line)
        prompt.append(_token_count(row[1], path, line, "ContextTokens"))
        output.append(_token_count(row[2], path, line, "GeneratedTokens"))
    # whole days and seconds of day stay apart until the first day is removed: an absolute
    # float64 second count would round off the 7th fractional digit
    day_arr = np.asarray(days, dtype=np.int64)
    time_s = ((day_arr - (day_arr.min() if days else 0)) * 86400.0 + np.asarray(sod)).tolist()
    return _requests(path, "TIMESTAMP", time_s, lines, prompt, output, None)


def read_mooncake(path: Path) -> TraceRequests:
    """Mooncake (FAST'25) JSON lines: ``timestamp`` (ms), ``input_length``, ``output_length``."""
    time_s: list[float] = []
    lines: list[int] = []
    prompt: list[float] = []
    output: list[float] = []
    with path.open() as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                raise _bad(
                    path, line, "(json)", text.strip()[:80], f"is not valid JSON: {err}"
                ) from None
            if not isinstance(rec, dict):
                raise _bad(path, line, "(json)", text.strip()[:80], "must be a JSON object")
            for field in ("timestamp", "input_length", "output_length"):
                if field not in rec:
                    raise _bad(path, line, field, None, "is missing")
            time_s.append(_seconds(rec["timestamp"], path, line, "timestamp") / 1000.0)
            lines.append(line)
            prompt.append(_token_count(rec["input_length"], path, line, "input_length"))
            output.append(_token_count(rec["output_length"], path, line, "output_length"))
    return _requests(path, "timestamp", time_s, lines, prompt, output, None)


def read_csv_trace(path: Path) -> TraceRequests:
    """Plain CSV ``timestamp_s,prompt_tokens,output_tokens[,tenant][,class]``; an empty tenant
    is "default", an empty class "interactive"."""
    rows = _read_rows(path)
    header = tuple(c.strip() for c in rows[0][1]) if rows else ()
    extra = header[len(_CSV_HEADER) :]
    if header[: len(_CSV_HEADER)] != _CSV_HEADER or extra not in _CSV_OPTIONAL:
        raise ScenarioError(
            f"{path}, line 1: expected the header {','.join(_CSV_HEADER)}[,tenant][,class], got "
            f"{','.join(header) if header else 'an empty file'}"
        )
    n_fields = len(header)
    col_tenant = header.index("tenant") if "tenant" in extra else -1
    col_class = header.index("class") if "class" in extra else -1
    time_s: list[float] = []
    lines: list[int] = []
    prompt: list[float] = []
    output: list[float] = []
    tenant: list[str] | None = [] if col_tenant >= 0 else None
    batch: list[bool] | None = [] if col_class >= 0 else None
    for line, row in rows[1:]:
        if len(row) != n_fields:
            raise _bad(path, line, "(row)", ",".join(row), f"row must have {n_fields} fields")
        time_s.append(_seconds(row[0], path, line, "timestamp_s"))
        lines.append(line)
        prompt.append(_token_count(row[1], path, line, "prompt_tokens"))
        output.append(_token_count(row[2], path, line, "output_tokens"))
        if tenant is not None:
            tenant.append(row[col_tenant].strip() or "default")
        if batch is not None:
            batch.append(_request_class(row[col_class], path, line) == "batch")
    return _requests(path, "timestamp_s", time_s, lines, prompt, output, tenant, batch)


_CSV_OPTIONAL = ((), ("tenant",), ("class",), ("tenant", "class"), ("class", "tenant"))


def _request_class(value: str, path: Path, line: int) -> str:
    """A ``class`` field: one of :data:`~rlscale.envs.scenario.REQUEST_CLASSES`, empty =
    interactive."""
    v = value.strip() or REQUEST_CLASSES[0]
    if v not in REQUEST_CLASSES:
        raise _bad(path, line, "class", value, f"must be one of {', '.join(REQUEST_CLASSES)}")
    return v


def read_trace(kind: str, path: str | Path) -> TraceRequests:
    """A request-level trace of format ``kind`` (``azure``, ``mooncake`` or ``csv``)."""
    readers = {"azure": read_azure, "mooncake": read_mooncake, "csv": read_csv_trace}
    if kind not in readers:
        raise ScenarioError(
            f"workload.kind '{kind}' is not a request-level trace ({sorted(readers)})"
        )
    return readers[kind](trace_path(path))


# --- ServeGen -----------------------------------------------------------------------------------


def _float_column(values: list[str], lines: np.ndarray, path: Path, field: str) -> np.ndarray:
    """Parse a non-negative column at numpy speed; on failure find the first bad row."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except ValueError:
        arr = None
    if arr is not None and (np.isfinite(arr) & (arr >= 0)).all():
        return arr
    for i, text in enumerate(values):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v >= 0):
            raise _bad(path, int(lines[i]), field, text, "must be a non-negative number")
    raise AssertionError("unreachable")  # pragma: no cover


def _read_servegen_client(path: Path) -> tuple[np.ndarray, ...]:
    # 162 files x 2,016 rows: splitting the whole file at once is ~5x faster than csv.reader
    text = path.read_text().replace("\r", "").rstrip()
    if not text.strip():
        raise ScenarioError(f"{path}: empty ServeGen trace file")
    rows = text.split("\n")
    flat = text.replace("\n", ",").split(",")
    n_cols = len(_SERVEGEN_COLUMNS)
    if len(flat) != n_cols * len(rows):
        for i, row in enumerate(rows, start=1):
            if row.count(",") != n_cols - 1:
                raise _bad(
                    path,
                    i,
                    "(row)",
                    row,
                    f"row must have the 6 fields {','.join(_SERVEGEN_COLUMNS)}",
                )
    lines = np.arange(1, len(rows) + 1)
    cols = [flat[k::n_cols] for k in range(n_cols)]
    start = _float_column(cols[0], lines, path, "window_start_s")
    rate = _float_column(cols[1], lines, path, "rate")
    cv = _float_column(cols[2], lines, path, "cv")
    p1 = _float_column(cols[4], lines, path, "param1")
    p2 = _float_column(cols[5], lines, path, "param2")
    pattern = np.char.strip(np.asarray(cols[3]))
    law = np.zeros(pattern.shape[0], dtype=np.int8)
    for code, name in enumerate(SERVEGEN_LAWS, start=1):
        law[pattern == name] = code
    checks = (
        (law == 0) & (pattern != ""),
        (law == 0) & (rate > 0),
        (law > 0) & (rate > 0) & ~(p1 > 0),
        (law > 0) & (rate > 0) & ~(p2 > 0),
    )
    for k, bad in enumerate(checks):
        if bad.any():
            i = int(np.argmax(bad))
            name = str(pattern[i])
            field, value, why = [
                ("pattern", name, f"must be one of {SERVEGEN_LAWS} or empty"),
                ("pattern", name, f"is empty but rate is {rate[i]}"),
                ("param1", cols[4][i], f"(the shape) must be positive for pattern {name}"),
                ("param2", cols[5][i], f"(the scale) must be positive for pattern {name}"),
            ][k]
            raise _bad(path, int(lines[i]), field, value, why)
    law[rate <= 0] = 0
    return start, rate, cv, law, p1, p2


def read_servegen(folder: str | Path) -> ServeGenTrace:
    """A ServeGen model folder of ``chunk-<id>-trace.csv`` files, one client per file."""
    root = trace_path(folder, want_dir=True)
    files = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _SERVEGEN_FILE.match(p.name))
    )
    if not files:
        raise ScenarioError(f"workload.path: {root} holds no chunk-<id>-trace.csv files")
    starts = None
    per_field: list[list[np.ndarray]] = [[] for _ in range(5)]
    for _, p in files:
        start, *fields = _read_servegen_client(p)
        if starts is None:
            starts = start
            steps = np.diff(start)
            if steps.size and (steps[0] <= 0 or not np.allclose(steps, steps[0])):
                bad = int(np.argmax(~np.isclose(steps, steps[0]))) if steps[0] > 0 else 0
                raise _bad(
                    p,
                    bad + 2,
                    "window_start_s",
                    float(start[bad + 1]),
                    "must grow in equal steps",
                )
        elif start.shape != starts.shape or not np.allclose(start, starts):
            n = min(start.size, starts.size)
            differs = ~np.isclose(start[:n], starts[:n])
            bad = int(np.argmax(differs)) if differs.any() else n
            raise ScenarioError(
                f"{p}: window_start_s does not match {files[0][1].name} ({start.size} vs "
                f"{starts.size} windows; first difference at line {bad + 1})"
            )
        for acc, arr in zip(per_field, fields, strict=True):
            acc.append(arr)
    assert starts is not None
    window_s = float(starts[1] - starts[0]) if starts.size > 1 else 600.0
    rate, cv, law, shape, scale = (np.stack(acc) for acc in per_field)
    return ServeGenTrace(
        source=str(root),
        client_names=tuple(f"chunk-{i}" for i, _ in files),
        window_s=window_s,
        window_start_s=starts - starts[0],
        rate=rate,
        cv=cv,
        law=law.astype(np.int8),
        shape=shape,
        scale=scale,
    )


# --- renewal arrivals ---------------------------------------------------------------------------


def law_cv(law: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Coefficient of variation of Gamma (law 1) or Weibull (law 2) inter-arrival times."""
    law = np.asarray(law)
    shape = np.asarray(shape, dtype=np.float64)
    gamma_cv = 1.0 / np.sqrt(shape)
    g1 = gamma_fn(1.0 + 1.0 / shape)
    with np.errstate(over="ignore", invalid="ignore"):
        weibull_cv = np.sqrt(np.maximum(gamma_fn(1.0 + 2.0 / shape) / (g1 * g1) - 1.0, 0.0))
    return np.where(law == 1, gamma_cv, weibull_cv)


def _unit_gaps(
    rng: np.random.Generator, law: np.ndarray, shape: np.ndarray, weibull_mean: np.ndarray
) -> np.ndarray:
    """Inter-arrival times of mean 1 with the law's shape (``weibull_mean`` = Gamma(1 + 1/k))."""
    out = np.empty(law.shape[0])
    g = law == 1
    out[g] = rng.standard_gamma(shape[g]) / shape[g]
    w = ~g
    out[w] = rng.weibull(shape[w]) / weibull_mean[w]
    return out


def _first_arrival(rng: np.random.Generator, law: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Time to the first arrival of a stationary renewal process with unit mean gaps.

    That is U x (a length-biased gap): Gamma(k+1) for Gamma(k), and lambda * G^(1/k) with
    G ~ Gamma(1 + 1/k) for Weibull(k). Starting each window at an arrival instead would add
    about (1 + cv^2) / 2 requests per window, which for cv ~ 10 is far more than the window holds.
    """
    out = np.empty(law.shape[0])
    g = law == 1
    out[g] = rng.standard_gamma(shape[g] + 1.0) / shape[g]
    w = ~g
    k = shape[w]
    out[w] = rng.standard_gamma(1.0 + 1.0 / k) ** (1.0 / k) / gamma_fn(1.0 + 1.0 / k)
    return out * rng.random(law.shape[0])


def sample_renewal_arrivals(
    rng: np.random.Generator,
    start_s: np.ndarray,
    duration_s: np.ndarray,
    rate_rps: np.ndarray,
    law: np.ndarray,
    shape: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times of independent stationary renewal processes, one per segment.

    Segment ``j`` covers ``[start_s[j], start_s[j] + duration_s[j])``; its gaps follow
    ``law[j]`` (1 Gamma, 2 Weibull) with shape ``shape[j]``, rescaled so the mean gap is
    ``1 / rate_rps[j]``. Gaps are drawn in bulk, a little more than the segment needs, then topped
    up for the few segments that fell short, so there is no Python loop over requests.

    Returns:
        (time_s, segment): float64 arrival times and the int64 segment of each, in no particular
        order (sorting 10^7 arrivals would cost more than drawing them; binning needs no order).
    """
    law = np.asarray(law, dtype=np.int8)
    shape = np.asarray(shape, dtype=np.float64)
    n_expected = np.asarray(rate_rps, dtype=np.float64) * np.asarray(duration_s, dtype=np.float64)
    cv = law_cv(law, shape)
    with np.errstate(over="ignore"):
        weibull_mean = np.where(law == 2, gamma_fn(1.0 + 1.0 / shape), 1.0)
    # positions are in units of the mean gap: the segment ends at its expected count
    pos = _first_arrival(rng, law, shape)
    times: list[np.ndarray] = []
    segments: list[np.ndarray] = []
    todo = np.flatnonzero(pos < n_expected)
    times.append(pos[todo])
    segments.append(todo)
    while todo.size:
        remaining = n_expected[todo] - pos[todo]
        # ~2 sigma of the sum of gaps: most segments finish in one round, and a top-up round
        # for the rest is cheaper than drawing 4 sigma for all
        margin = np.minimum(2.0 * cv[todo] * np.sqrt(remaining), remaining)
        n_draw = np.ceil(remaining + margin + 4.0).astype(np.int64)
        seg = np.repeat(todo, n_draw)
        csum = np.cumsum(_unit_gaps(rng, law[seg], shape[seg], weibull_mean[seg]))
        ends = np.cumsum(n_draw)
        before = np.concatenate(([0.0], csum[ends[:-1] - 1]))
        local = csum - np.repeat(before - pos[todo], n_draw)
        keep = local < n_expected[seg]
        times.append(local[keep])
        segments.append(seg[keep])
        pos[todo] = local[ends - 1]
        todo = todo[pos[todo] < n_expected[todo]]
    seg_all = np.concatenate(segments)
    offset = np.concatenate(times) / np.asarray(rate_rps, dtype=np.float64)[seg_all]
    return np.asarray(start_s, dtype=np.float64)[seg_all] + offset, seg_all
