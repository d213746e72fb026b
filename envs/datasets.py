"""The public datasets the simulator can read from ``$RLSCALE_DATA``: the registry.

Every fact about a dataset (source repository and commit, license, folder under the data root,
each file's upstream path and sha256) lives in ``datasets.yaml`` beside this module; this module
only reads it. ``rlscale data list`` and ``rlscale data fetch`` (rlscale/datafetch.py) use it,
and error messages about a missing data file name the dataset that holds it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from .scenario import ScenarioError

REGISTRY_FILE = Path(__file__).resolve().parent / "datasets.yaml"
RAW_BASE_URL = "https://raw.githubusercontent.com"
"""Where the files come from: ``<base>/<repo>/<commit>/<source>``; a mirror replaces the base."""
MIRROR_ENV_VAR = "RLSCALE_DATA_MIRROR"
"""A mirror of :data:`RAW_BASE_URL` to fetch from instead (same layout below it)."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    Attributes:
        path: where it goes, relative to the dataset's folder.
        sha256: hex digest of the file as the simulator reads it.
        size_bytes: its size.
        source: its path in the upstream repository (None: not an upstream file, see
            :attr:`Dataset.derived`).
        archive_member: when ``source`` is a ``.tar.gz``, the member that is this file.
    """

    path: str
    sha256: str
    size_bytes: int
    source: str | None = None
    archive_member: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One public dataset: where it comes from, its license and its files."""

    name: str
    folder: str
    repo: str
    commit: str
    license: str
    cite: str
    what: str
    files: tuple[DataFile, ...]
    derived: str | None = None

    @property
    def homepage(self) -> str:
        """The upstream repository."""
        return f"https://github.com/{self.repo}"

    @property
    def size_bytes(self) -> int:
        """Total size of its files."""
        return sum(f.size_bytes for f in self.files)

    def url(self, file: DataFile, base_url: str = RAW_BASE_URL) -> str:
        """Download address of one file (``base_url`` is the source or a mirror of it)."""
        if file.source is None:
            raise ScenarioError(f"{self.name}/{file.path} is not an upstream file: {self.derived}")
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{file.source}"


def _file_from_dict(raw: dict) -> DataFile:
    return DataFile(
        path=raw["path"],
        sha256=raw["sha256"],
        size_bytes=int(raw["bytes"]),
        source=raw.get("source"),
        archive_member=raw.get("archive_member"),
    )


@functools.cache
def datasets() -> dict[str, Dataset]:
    """Every registered dataset by name, in registry order."""
    doc = yaml.safe_load(REGISTRY_FILE.read_text())
    out: dict[str, Dataset] = {}
    for raw in doc["datasets"]:
        files = tuple(_file_from_dict(f) for f in raw["files"])
        fields = {k: v for k, v in raw.items() if k != "files"}
        out[raw["name"]] = Dataset(files=files, **fields)
    return out


def get_dataset(name: str) -> Dataset:
    """The dataset of that name; the error lists the known ones."""
    known = datasets()
    if name not in known:
        raise ScenarioError(f"unknown dataset '{name}'; known datasets: {', '.join(known)}")
    return known[name]


def dataset_for_path(rel_path: str | Path) -> Dataset | None:
    """The dataset whose folder holds ``rel_path`` (relative to the data root), if any."""
    first = Path(rel_path).parts[0] if Path(rel_path).parts else ""
    return next((d for d in datasets().values() if d.folder == first), None)


def fetch_hint(rel_path: str | Path) -> str:
    """A sentence telling how to get a missing data file (for error messages)."""
    ds = dataset_for_path(rel_path)
    if ds is None:
        return "set $RLSCALE_DATA to the folder that holds it"
    if ds.derived is not None and all(f.source is None for f in ds.files):
        return f"it belongs to dataset '{ds.name}', which cannot be fetched: {ds.derived}"
    return f"get it with `rlscale data fetch {ds.name}` (or set $RLSCALE_DATA)"
