"""Shared fixtures. Tests that read ../shared/datasets skip where it is absent (a user's clone), unless
POLYRNN_REQUIRE_SHARED=1 (set by .ci/run), where its absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("POLYRNN_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATASETS = SHARED / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "coco-mini").is_dir():
        if os.environ.get("POLYRNN_REQUIRE_SHARED") == "1":
            pytest.fail(f"{DATASETS} is missing but POLYRNN_REQUIRE_SHARED=1")
        pytest.skip(f"{DATASETS} not present")
    return DATASETS
