"""``rlscale data``: list the public datasets, fetch them into ``$RLSCALE_DATA``, refit tables.

What each dataset is and where it comes from is in the registry (envs/datasets.yaml); this
module downloads. Every file goes to ``<dest>.part`` beside its destination, is checked against
the registry's sha256 and only then renamed into place, so an interrupted or corrupted download
never leaves a file the simulator would read. A rerun skips the files already verified and
starts the others afresh: fetching is safe to repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tqdm import tqdm

from rlscale.envs.datasets import (
    MIRROR_ENV_VAR,
    RAW_BASE_URL,
    DataFile,
    Dataset,
    datasets,
    get_dataset,
)
from rlscale.envs.scenario import COLDSTART_DIR, DATA_ENV_VAR, ScenarioError, data_root

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


class DataFetchError(ScenarioError):
    """A download that failed or did not match the registry; the message names file and URL."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def source_base_url(mirror: str | None = None) -> str:
    """``mirror``, else ``$RLSCALE_DATA_MIRROR``, else the upstream source."""
    return mirror or os.environ.get(MIRROR_ENV_VAR) or RAW_BASE_URL


def _copy_hashing(src: IO[bytes], dst: IO[bytes], bar: tqdm | None) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK_BYTES):
        dst.write(chunk)
        digest.update(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return digest.hexdigest()


def _download(url: str, part: Path, bar: tqdm | None, timeout_s: float) -> str:
    """Stream ``url`` into ``part``; returns the sha256 of what was written."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, part.open("wb") as out:
            return _copy_hashing(resp, out, bar)
    except urllib.error.HTTPError as err:
        raise DataFetchError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataFetchError(f"could not download {url}: {reason}") from None


def _extract_member(archive: Path, member: str, part: Path, bar: tqdm, url: str) -> str:
    """Write ``member`` of a .tar.gz into ``part``; returns its sha256."""
    want = Path(member).name
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # by base name: upstream archives may hold a folder, and macOS '._<name>' files
            found = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == want]
            if not found:
                names = [m.name for m in tar.getmembers()]
                raise DataFetchError(f"archive {url} has no member {want}; it holds {names}")
            src = tar.extractfile(found[0])
            assert src is not None  # a regular file always has a stream
            with part.open("wb") as out:
                return _copy_hashing(src, out, bar)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataFetchError(f"archive {url} could not be read: {err}") from None


def _fetch_file(
    ds: Dataset, file: DataFile, dest: Path, *, base_url: str, bar: tqdm, timeout_s: float
) -> None:
    url = ds.url(file, base_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    archive = dest.with_name(dest.name + ".tar.gz.part")
    try:
        if file.archive_member is None:
            got = _download(url, part, bar, timeout_s)
        else:
            # the bar counts the files' own bytes; an archive's compressed size is not known
            _download(url, archive, None, timeout_s)
            got = _extract_member(archive, file.archive_member, part, bar, url)
        if got != file.sha256:
            raise DataFetchError(
                f"checksum mismatch for {ds.folder}/{file.path} downloaded from {url}: "
                f"expected sha256 {file.sha256}, got {got}; the download was deleted"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)


def _check_existing(ds: Dataset, root: Path, force: bool) -> dict[str, bool]:
    """Which files are already in place (verified); refuse to overwrite a differing one."""
    present = {}
    for f in ds.files:
        dest = root / ds.folder / f.path
        present[f.path] = dest.is_file() and sha256_of(dest) == f.sha256
        if dest.exists() and not present[f.path] and not force:
            raise DataFetchError(
                f"{dest} exists but is not the registry's file (sha256 differs); move it "
                f"away or pass --force to replace it"
            )
    return present


def fetch_dataset(
    ds: Dataset,
    root: Path,
    *,
    base_url: str = RAW_BASE_URL,
    force: bool = False,
    progress: bool = True,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, int]:
    """Download the files of ``ds`` that are not yet in ``root / ds.folder``, verified.

    :param base_url: the source (``https://raw.githubusercontent.com``) or a mirror laid out
        like it: ``<base_url>/<repo>/<commit>/<source path>``.
    :param force: replace files whose checksum differs (otherwise that is an error).
    :returns: counts of files ``fetched``, already ``present`` and ``skipped`` (not upstream).
    :raises DataFetchError: unreachable URL, checksum mismatch, bad archive, differing file.
    """
    fetchable = [f for f in ds.files if f.source is not None]
    if not fetchable:
        raise DataFetchError(f"dataset '{ds.name}' cannot be fetched: {ds.derived}")
    root = Path(root)
    present = _check_existing(ds, root, force)
    todo = [f for f in fetchable if not present[f.path]]
    done_bytes = sum(f.size_bytes for f in fetchable if present[f.path])
    with tqdm(
        total=sum(f.size_bytes for f in fetchable),
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        desc=ds.name,
        disable=not progress,
    ) as bar:
        for f in todo:
            _fetch_file(
                ds, f, root / ds.folder / f.path, base_url=base_url, bar=bar, timeout_s=timeout_s
            )
    return {
        "fetched": len(todo),
        "present": len(fetchable) - len(todo),
        "skipped": len(ds.files) - len(fetchable),
    }


def list_datasets(root: Path) -> list[dict[str, object]]:
    """One row per dataset: name, folder, files present (by size) of all, MB, license."""
    rows = []
    for ds in datasets().values():
        have = sum(
            (root / ds.folder / f.path).is_file()
            and (root / ds.folder / f.path).stat().st_size == f.size_bytes
            for f in ds.files
        )
        rows.append(
            {
                "name": ds.name,
                "folder": ds.folder,
                "present": f"{have}/{len(ds.files)}",
                "mb": ds.size_bytes / 1e6,
                "license": ds.license,
                "fetchable": any(f.source is not None for f in ds.files),
            }
        )
    return rows


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """``rlscale data list|fetch|fit-coldstart``."""
    p = sub.add_parser(
        "data",
        help="list, fetch and fit from the public datasets",
        description=(
            f"The public datasets the real-trace scenarios read from ${DATA_ENV_VAR}. The "
            "simulator itself needs none of them: the cold-start tables and throughput profiles "
            "fitted from them ship with the package."
        ),
    )
    dsub = p.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="the registered datasets and how much of each is here")
    dl.add_argument(
        "--data", type=Path, default=None, help=f"data folder (default ${DATA_ENV_VAR})"
    )
    f = dsub.add_parser(
        "fetch",
        help="download datasets from their source into the data folder, verified by sha256",
        description=(
            "Download each named dataset (all when none is named) from its upstream repository "
            "at the recorded commit, check every file's sha256 and move it into place. Files "
            "already there and verified are skipped, so a rerun resumes."
        ),
    )
    f.add_argument("names", nargs="*", metavar="NAME", help="datasets (see `rlscale data list`)")
    f.add_argument("--data", type=Path, default=None, help=f"data folder (default ${DATA_ENV_VAR})")
    f.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help=(
            f"fetch from URL/<repo>/<commit>/<path> instead of {RAW_BASE_URL} "
            f"(default ${MIRROR_ENV_VAR} when set)"
        ),
    )
    f.add_argument("--force", action="store_true", help="replace files whose sha256 differs")
    f.add_argument("--no-progress", action="store_true")
    fit = dsub.add_parser(
        "fit-coldstart",
        help="refit the shipped cold-start tables from the raw data",
        description="Fit the empirical cold-start duration tables and write them to --out.",
    )
    fit.add_argument(
        "--data", type=Path, default=None, help=f"data folder (default ${DATA_ENV_VAR})"
    )
    fit.add_argument(
        "--out", type=Path, default=COLDSTART_DIR, help=f"where they go (default {COLDSTART_DIR})"
    )


def run_data(args: argparse.Namespace) -> int:
    """Run ``rlscale data ...``; returns the exit code."""
    root = Path(args.data).expanduser().resolve() if args.data is not None else data_root()
    if args.data_command == "list":
        print(f"{'name':16s} {'present':>8s} {'MB':>7s}  {'folder':34s} license")
        for row in list_datasets(root):
            note = "" if row["fetchable"] else "  (derived: not fetchable)"
            print(
                f"{row['name']:16s} {row['present']:>8s} {row['mb']:7.1f}  {row['folder']:34s} "
                f"{row['license']}{note}"
            )
        print(f"data folder: {root} (${DATA_ENV_VAR})")
        return 0
    if args.data_command == "fit-coldstart":
        from rlscale.envs.coldstart import write_empirical_tables

        for path in write_empirical_tables(args.out, root):
            print(f"wrote {path}")
        return 0
    chosen = [get_dataset(n) for n in args.names]
    if not chosen:  # all of them, saying which cannot be fetched
        for ds in datasets().values():
            if any(f.source is not None for f in ds.files):
                chosen.append(ds)
            else:
                print(f"{ds.name}: skipped, {ds.derived}")
    base_url = source_base_url(args.mirror)
    for ds in chosen:
        counts = fetch_dataset(
            ds, root, base_url=base_url, force=args.force, progress=not args.no_progress
        )
        note = f"; not fetched: {ds.derived}" if ds.derived else ""
        print(
            f"{ds.name}: {counts['fetched']} fetched, {counts['present']} already present "
            f"-> {root / ds.folder}{note}"
        )
    return 0
