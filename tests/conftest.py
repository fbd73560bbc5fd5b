"""Suite-wide pytest hooks: the run's header names the CPU it ran on; markers by folder and need.

The layout says what a test needs: ``x11/`` opens a window under Xvfb, ``browser/`` drives
headless chromium. A module that skips without PyTorch is marked ``torch``, one that reads
``../shared/datasets`` ``datasets``, so ``pytest -m "not slow and not datasets"`` runs anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from edge_app import cpuinfo

FOLDER_MARKS = {"x11": "x11", "browser": "browser"}


def pytest_report_header(config):
    """The CPU model and the SIMD features the INT8 kernels depend on, so a failure report says which CPU failed."""
    return f"cpu: {cpuinfo.describe()}"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 10 s")


@lru_cache(maxsize=None)
def _needs(path: str) -> tuple[str, ...]:
    text = Path(path).read_text(encoding="utf-8")
    needs = []
    if 'importorskip("torch")' in text or "import torch" in text:
        needs.append("torch")
    if '"shared" / "datasets"' in text or "DATASETS" in text:
        needs.append("datasets")
    return tuple(needs)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        for folder, mark in FOLDER_MARKS.items():
            if folder in path.parts:
                item.add_marker(getattr(pytest.mark, mark))
        for mark in _needs(str(path)):
            item.add_marker(getattr(pytest.mark, mark))
