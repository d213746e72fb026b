"""A job for the backends' tests that spawned workers can import by name: task 0 fails at
once; every other task takes 0.3 s and then leaves a mark, so a test counts how many ran."""

from __future__ import annotations

import time
from pathlib import Path


def setup(folder: str) -> Path:
    return Path(folder)


def run(folder: Path, task: int) -> int:
    if task == 0:
        raise ValueError("task 0 failed")
    time.sleep(0.3)
    (folder / f"{task}.done").touch()
    return task
