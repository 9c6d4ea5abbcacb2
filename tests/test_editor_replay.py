"""The editor is exactly what is measured: the simulated annotator through the real HTTP server (the page's
requests) gives the same IoU at every step as ``polyrnn evaluate`` (3 val2017 objects, and one the annotator
gives a further part; the benchmark: 60)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.shared
def test_the_editor_over_http_equals_evaluate(datasets):
    from editor_replay import replay

    r = replay(datasets / "coco-mini" / "val2017", limit=3, corrections=5)
    assert r["objects"] == 3 and r["engine"] == "refine"
    assert float(r["max_diff_per_step"].max()) <= 1e-6, r["max_diff_per_step"]
    assert r["identical_objects"] == 3
    assert r["requests"] > 3  # corrections went through the server


@pytest.mark.shared
def test_a_further_part_through_the_editor_equals_evaluate(datasets):
    """val2017 object 66 (box side >= 32 px) is given a second part within four corrections: through HTTP a
    new box's session, as the page's P joins it, with the same IoU at every step as evaluate's object
    session."""
    from editor_replay import replay

    r = replay(datasets / "coco-mini" / "val2017", limit=1, corrections=4, first=66)
    assert r["parts"] == 1  # the part went through the server
    assert float(r["max_diff_per_step"].max()) <= 1e-6, r["max_diff_per_step"]
