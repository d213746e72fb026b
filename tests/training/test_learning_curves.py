"""``python -m rlscale.training.learning_curves``: several runs' validations on one figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from rlscale.training.learning_curves import REPORT_FILE, main, read_report
from rlscale.training.validate import ValidationResult


def _run(folder: Path, seed: int, costs: list[float], exported: int | None, target=0.99) -> Path:
    """A run folder with a training report of validations every 1000 steps at ``costs``."""
    folder.mkdir(parents=True)
    validations = [
        ValidationResult(
            timesteps=1000 * (k + 1),
            cost_usd=c,
            cost_usd_per_h=c / 24.0,
            slo_attainment=0.995,
            min_attainment=0.99,
            meets_target=1.0,
            target=target,
        ).to_dict()
        for k, c in enumerate(costs)
    ]
    report = {
        "run_id": f"run{seed}",
        "scenario": "quick",
        "target_attainment": target,
        "exported": None if exported is None else {"selected": "best", "timesteps": exported},
        "validations": validations,
        "config": {"seed": seed},
    }
    (folder / REPORT_FILE).write_text(json.dumps(report))
    return folder


def test_runs_are_drawn_on_one_figure_with_what_each_exported(tmp_path, capsys):
    a = _run(tmp_path / "a", 0, [300.0, 200.0, 250.0], exported=2000)
    b = _run(tmp_path / "b", 1, [310.0, 290.0], exported=None)
    curve, scenario, target = read_report(a)
    assert (curve.label, curve.exported_timesteps, scenario, target) == (
        "seed 0",
        2000,
        "quick",
        0.99,
    )
    assert [v.cost_usd for v in curve.validations] == [300.0, 200.0, 250.0]
    out = tmp_path / "plots" / "curves.png"
    assert main([str(a), str(b / REPORT_FILE), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (600, 800)  # 8 x 6 in at 100 dpi


def test_a_folder_without_a_report_and_mixed_targets_are_refused(tmp_path, capsys):
    a = _run(tmp_path / "a", 0, [300.0], exported=1000)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "curves.png"
    assert main([str(a), str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "empty: no training_report.json" in capsys.readouterr().err
    other = _run(tmp_path / "other", 1, [300.0], exported=None, target=0.95)
    assert main([str(a), str(other), "--out", str(out)]) == 2
    assert "attainment targets differ ([0.95, 0.99])" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / REPORT_FILE).write_text("{}")
    assert main([str(tmp_path / "bad"), "--out", str(out)]) == 2
    assert "not a readable training report" in capsys.readouterr().err
    assert not out.exists()
