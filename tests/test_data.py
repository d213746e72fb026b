"""Running without the public datasets, and `rlscale data list|fetch|fit-coldstart`.

Downloads are tested against a real HTTP server on loopback serving a temporary folder laid out
like the source (``<repo>/<commit>/<path>``); no test reaches the internet.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlscale.cli import main
from rlscale.datafetch import DataFetchError, fetch_dataset, sha256_of
from rlscale.envs.coldstart import load_empirical_table
from rlscale.envs.datasets import MIRROR_ENV_VAR, DataFile, Dataset, datasets, get_dataset
from rlscale.envs.scenario import COLDSTART_DIR, ScenarioError, data_root

DATA = data_root()


def _rlscale(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlscale.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


# --------------------------------------------------------------------------------------------
# No data at all
# --------------------------------------------------------------------------------------------


def test_simulate_synthetic_runs_with_an_empty_data_folder(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "sim"
    proc = _rlscale(
        "simulate",
        "--scenario",
        "synthetic-2week",
        "--hours",
        "1",
        "--no-plot",
        "--out",
        str(out),
        env={"RLSCALE_DATA": str(empty)},
    )
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert totals["scenario"] == "synthetic-2week" and totals["completed"] > 0
    assert list(empty.iterdir()) == []


def test_a_real_trace_scenario_without_data_says_what_to_fetch(tmp_path: Path) -> None:
    proc = _rlscale(
        "simulate",
        "--scenario",
        "azure-conv",
        "--hours",
        "0.1",
        "--no-plot",
        "--out",
        str(tmp_path / "sim"),
        env={"RLSCALE_DATA": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "rlscale data fetch azure-llm-2023" in proc.stderr


# --------------------------------------------------------------------------------------------
# A local source
# --------------------------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_source(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(base_url, folder)``: an HTTP server on loopback serving ``folder``; stopped after."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _toy(files: dict[str, bytes], *, archived: dict[str, bytes] | None = None) -> Dataset:
    """A dataset of the given files (plain, and members of one .tar.gz each)."""
    entries = [
        DataFile(
            path=name,
            sha256=hashlib.sha256(body).hexdigest(),
            size_bytes=len(body),
            source=f"up/{name}",
        )
        for name, body in files.items()
    ]
    for name, body in (archived or {}).items():
        entries.append(
            DataFile(
                path=name,
                sha256=hashlib.sha256(body).hexdigest(),
                size_bytes=len(body),
                source=f"up/{name}.tar.gz",
                archive_member=name,
            )
        )
    return Dataset(
        name="toy",
        folder="toy_data",
        repo="someone/toy",
        commit="0" * 40,
        license="MIT",
        cite="",
        what="a test dataset",
        files=tuple(entries),
    )


def _serve(ds: Dataset, served: Path, bodies: dict[str, bytes]) -> None:
    """Lay the files of ``ds`` out below ``served`` as the source does."""
    for f in ds.files:
        assert f.source is not None
        target = served / ds.repo / ds.commit / f.source
        target.parent.mkdir(parents=True, exist_ok=True)
        body = bodies[f.path]
        if f.archive_member is None:
            target.write_bytes(body)
            continue
        with tarfile.open(target, "w:gz") as tar:
            # a macOS resource file beside the member, as in the upstream archives
            for name, data in ((f"._{f.archive_member}", b"junk"), (f.archive_member, body)):
                info = tarfile.TarInfo(f"trace/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


PLAIN = {"a.csv": b"x,y\n1,2\n" * 1000, "sub/b.json": b'{"data": [1, 2, 3]}'}
PACKED = {"c.csv": b"t,value\n" + b"1,22.7\n" * 500}


def test_fetch_downloads_verifies_and_resumes(
    http_source: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base_url, served = http_source
    ds = _toy(PLAIN, archived=PACKED)
    _serve(ds, served, {**PLAIN, **PACKED})
    root = tmp_path / "data"
    # a stale partial download from an interrupted run is not trusted
    (root / "toy_data").mkdir(parents=True)
    (root / "toy_data" / "a.csv.part").write_bytes(b"x,y\n1,")

    counts = fetch_dataset(ds, root, base_url=base_url)
    assert counts == {"fetched": 3, "present": 0, "skipped": 0}
    for name, body in {**PLAIN, **PACKED}.items():
        assert (root / "toy_data" / name).read_bytes() == body
    assert sorted(p.name for p in (root / "toy_data").rglob("*")) == [
        "a.csv",
        "b.json",
        "c.csv",
        "sub",
    ]
    assert "toy" in capsys.readouterr().err  # the progress bar

    (root / "toy_data" / "a.csv").unlink()
    counts = fetch_dataset(ds, root, base_url=base_url, progress=False)
    assert counts == {"fetched": 1, "present": 2, "skipped": 0}


def test_checksum_mismatch_deletes_the_download_and_names_the_file(
    http_source: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, served = http_source
    ds = _toy(PLAIN)
    _serve(ds, served, {**PLAIN, "sub/b.json": b'{"data": [1, 2, 4]}'})
    root = tmp_path / "data"
    with pytest.raises(DataFetchError, match=r"checksum mismatch for toy_data/sub/b\.json") as err:
        fetch_dataset(ds, root, base_url=base_url, progress=False)
    assert f"{base_url}/someone/toy/{'0' * 40}/up/sub/b.json" in str(err.value)
    assert not (root / "toy_data" / "sub" / "b.json").exists()
    assert list((root / "toy_data" / "sub").iterdir()) == []  # no .part left


def test_missing_file_and_unreachable_server_name_the_url(
    http_source: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, _ = http_source  # serves nothing
    ds = _toy(PLAIN)
    with pytest.raises(DataFetchError, match=r"could not download http://127\.0\.0\.1.*HTTP 404"):
        fetch_dataset(ds, tmp_path, base_url=base_url, progress=False)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(DataFetchError, match=rf"could not download http://127\.0\.0\.1:{port}/"):
        fetch_dataset(ds, tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_differing_local_file_is_kept_unless_forced(
    http_source: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, served = http_source
    ds = _toy(PLAIN)
    _serve(ds, served, PLAIN)
    mine = tmp_path / "toy_data" / "a.csv"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own edits\n")
    with pytest.raises(DataFetchError, match="--force"):
        fetch_dataset(ds, tmp_path, base_url=base_url, progress=False)
    assert mine.read_bytes() == b"my own edits\n"
    assert not (tmp_path / "toy_data" / "sub").exists()  # refused before downloading anything
    fetch_dataset(ds, tmp_path, base_url=base_url, progress=False, force=True)
    assert mine.read_bytes() == PLAIN["a.csv"]


def test_a_derived_dataset_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(DataFetchError, match="cannot be fetched: the file is a filtered subset"):
        fetch_dataset(get_dataset("aws-spot-price"), tmp_path, progress=False)


def test_unknown_dataset_lists_the_known_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ScenarioError, match="known datasets: azure-llm-2023, mooncake"):
        get_dataset("azure")
    assert main(["data", "fetch", "azure", "--no-progress"]) == 2
    assert "serverlessllm" in capsys.readouterr().err


def test_data_list_shows_every_dataset_and_what_is_here(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["data", "list", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, ds in datasets().items():
        line = next(row for row in out.splitlines() if row.startswith(f"{name} "))
        assert f"0/{len(ds.files)}" in line and ds.folder in line


# --------------------------------------------------------------------------------------------
# The registry against the real files
# --------------------------------------------------------------------------------------------

needs_shared_data = pytest.mark.skipif(
    not (DATA / "serverlessllm_loading_times").is_dir(),
    reason=f"public datasets not found at {DATA}; set RLSCALE_DATA to their folder",
)


@needs_shared_data
def test_registry_checksums_are_those_of_the_shared_files() -> None:
    for ds in datasets().values():
        for f in ds.files:
            path = DATA / ds.folder / f.path
            assert path.stat().st_size == f.size_bytes, path
            assert sha256_of(path) == f.sha256, path
    folders = {p.parent.name for p in DATA.glob("*/SOURCE.md")}
    assert folders == {ds.folder for ds in datasets().values()}


@needs_shared_data
def test_cli_fetches_from_a_mirror_and_refits_the_shipped_tables(
    http_source: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, served = http_source
    sllm = get_dataset("serverlessllm")
    ali = get_dataset("alibaba-gentd26")
    # of the Alibaba folder, only the file the cold-start table needs (it comes in an archive)
    basemodel = dataclasses.replace(
        ali, files=tuple(f for f in ali.files if f.path == "basemodel_update_latency_anon.csv")
    )
    for ds in (sllm, basemodel):
        _serve(ds, served, {f.path: (DATA / ds.folder / f.path).read_bytes() for f in ds.files})
    root = tmp_path / "data"
    proc = _rlscale(
        "data", "fetch", "serverlessllm", "--data", str(root), env={MIRROR_ENV_VAR: base_url}
    )
    assert proc.returncode == 0, proc.stderr
    assert "serverlessllm: 12 fetched, 0 already present" in proc.stdout
    assert "serverlessllm" in proc.stderr  # the progress bar
    assert fetch_dataset(basemodel, root, base_url=base_url, progress=False)["fetched"] == 1

    out = tmp_path / "tables"
    proc = _rlscale("data", "fit-coldstart", "--data", str(root), "--out", str(out), env={})
    assert proc.returncode == 0, proc.stderr
    for table in ("serverlessllm", "alibaba_basemodel"):
        assert (out / f"{table}.yaml").read_text() == (COLDSTART_DIR / f"{table}.yaml").read_text()
    assert load_empirical_table("serverlessllm", out).samples == 90
