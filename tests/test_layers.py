"""Layers import downwards only: envs < agents < experiments / training < serving, common below
all of them. A lower layer that imports an upper one makes a cycle waiting to happen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "rlscale/common": ("agents", "envs", "experiments", "training", "serving"),
    "envs": ("agents", "experiments", "training", "serving"),
    "agents": ("experiments", "training", "serving"),
}
"""Folder -> the layers of ``rlscale`` its modules must not import."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(folder):
    files = sorted((ROOT / folder).glob("*.py"))
    assert files, f"no modules in {folder}"
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports(path)
        for layer in FORBIDDEN[folder]
        if name == f"rlscale.{layer}" or name.startswith(f"rlscale.{layer}.")
    ]
    assert not bad, "\n".join(bad)


def test_report_reads_results_without_importing_the_evaluation():
    """The report renders an Evaluation; it does not import the module that runs the grid."""
    assert "rlscale.experiments.evaluate" not in _imports(ROOT / "experiments/report.py")
    assert "rlscale.experiments.report" not in _imports(ROOT / "experiments/results.py")
