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


def require_extra(module: str, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional extra's package, or skip (a plain dev install), or fail where CI installed the
    extras (POLYRNN_REQUIRE_EXTRAS=1)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("POLYRNN_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"{module} is missing but POLYRNN_REQUIRE_EXTRAS=1 (pip install -e '.[{extra}]')")
        pytest.skip(f"needs pip install 'polyrnn[{extra}]'")
