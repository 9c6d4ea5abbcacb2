"""Learning from a team's polygons: ``polyrnn learn`` writes a model folder only when it beats the model it
started from on held-out images; ``--model`` serves it everywhere; versions and rollback. Three field images
of ``cwfid-train`` (a domain far from COCO, where the shipped model starts far behind) keep it short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from polyrnn.learning import LearnError, LearnOptions, ModelFolder, ModelVersions, learn

FAST = LearnOptions(mask_epochs=1, refiner_epochs=1, corrections=2, holdout=0.34, copies=1)


@pytest.fixture(scope="module")
def field(datasets, tmp_path_factory) -> Path:
    """Three cwfid field images with their LabelMe polygons, copied into a folder of their own."""
    src = datasets / "cwfid-train"
    folder = tmp_path_factory.mktemp("field")
    for stem in ("002_image", "005_image", "006_image"):
        shutil.copy(src / f"{stem}.jpg", folder)
        shutil.copy(src / f"{stem}.json", folder)
    return folder


@pytest.fixture(scope="module")
def learned(field, tmp_path_factory) -> tuple[Path, dict]:
    from polyrnn.formats import load_dataset

    out = tmp_path_factory.mktemp("models") / "field-v1"
    report = learn(
        load_dataset(field).instances, out=out, options=FAST, source=str(field), log=lambda m: None
    )
    return out, report


@pytest.mark.shared
def test_learning_beats_the_shipped_model_on_held_out_images_and_says_so(learned, field):
    out, report = learned
    assert report["accepted"], report
    before, after = report["held_out"]["before"], report["held_out"]["after"]
    assert after["score"] > before["score"] and after["automatic"] > before["automatic"]
    assert report["held_out"]["images"] == 1 and report["learned_from"]["images"] == 3
    folder = ModelFolder.read(out)
    assert folder.mask.is_file() and folder.refiner is not None
    info = json.loads((out / "model.json").read_text())
    assert info["format"] == "polyrnn-model" and info["started_from"] == "shipped"
    # the team's vertex density: the coarsest outline simplification within 0.5 IoU of the best
    from polyrnn.learning import TOLERANCES

    outline = info["outline"]
    assert outline["tolerance"] in TOLERANCES and folder.tolerance == outline["tolerance"]
    best = max(outline["iou"].values())
    assert outline["iou"][str(outline["tolerance"])] >= best - 0.005
    coarser = [t for t in TOLERANCES if t > outline["tolerance"]]
    assert all(outline["iou"][str(t)] < best - 0.005 for t in coarser)
    assert outline["vertices"][str(TOLERANCES[-1])] <= outline["vertices"][str(TOLERANCES[0])]
    assert info["learned_from"]["source"] == str(field) and info["learned_from"]["classes"] == [
        "crop",
        "weed",
    ]


@pytest.mark.shared
def test_a_model_folder_is_read_strictly(learned, tmp_path):
    out, _ = learned
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ModelFolder.read(copy)
    with open(copy / "mask.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(LearnError, match="changed since"):
        ModelFolder.read(copy)
    with pytest.raises(LearnError, match="not a model folder"):
        ModelFolder.read(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text('{"format": "x"}')
    with pytest.raises(LearnError, match="format"):
        ModelFolder.read(tmp_path / "bad")


@pytest.mark.shared
def test_model_serves_everywhere_with_dash_dash_model(learned, field, capsys):
    """``predict --model`` traces with the learned mask model: another polygon than the shipped one's, closer
    to the team's outline; ``--model`` with ``--mask-weights`` is refused."""
    from polyrnn.cli import main
    from polyrnn.formats import load_dataset
    from polyrnn.geometry import mask_iou, rasterize

    out, _ = learned
    inst = max(load_dataset(field).instances, key=lambda i: i.long_side)
    box = ",".join(f"{v:.1f}" for v in inst.box_xyxy)
    polys = {}
    for name, extra in (("shipped", []), ("learned", ["--model", str(out)])):
        assert main(["predict", str(inst.image_path), "--box", box, "--json", *extra]) == 0
        polys[name] = np.asarray(json.loads(capsys.readouterr().out)["polygon"])
    assert polys["shipped"].shape != polys["learned"].shape or not np.allclose(
        polys["shipped"], polys["learned"]
    )
    ious = {k: mask_iou(rasterize([p], inst.height, inst.width), inst.mask()) for k, p in polys.items()}
    assert ious["learned"] > ious["shipped"]
    assert (
        main(["predict", str(inst.image_path), "--box", box, "--model", str(out), "--mask-weights", "x"]) == 2
    )
    assert "leave out --mask-weights" in capsys.readouterr().err
    assert main(["predict", str(inst.image_path), "--box", box, "--model", str(field)]) == 2
    assert "not a model folder" in capsys.readouterr().err


@pytest.mark.shared
def test_versions_list_and_roll_back(learned, field, tmp_path, capsys):
    from polyrnn.cli import main

    out, _ = learned
    folder = tmp_path / "images"
    shutil.copytree(field, folder)
    versions = ModelVersions(folder / ".polyrnn" / "models")
    assert versions.current_name() == "shipped" and versions.next_name() == "v1"
    shutil.copytree(out, versions.root / "v1")
    versions.use("v1")
    assert versions.current().path.name == "v1" and versions.next_name() == "v2"
    assert main(["models", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "* v1" in table and "  shipped" in table
    assert main(["models", str(folder), "--use", "shipped"]) == 0
    assert versions.current_name() == "shipped"
    assert main(["models", str(folder), "--use", "v7"]) == 2
    assert "no model version 'v7'" in capsys.readouterr().err


def test_learning_needs_two_images(tmp_path):
    from helpers import write_image

    from polyrnn.data.instance import Instance

    img = write_image(tmp_path / "a.jpg")
    square = np.array([[5.0, 5.0], [40.0, 5.0], [40.0, 40.0], [5.0, 40.0]])
    insts = [Instance(img, (64, 48), "a", (5, 5, 35, 35), [square])]
    with pytest.raises(LearnError, match="at least 2 images"):
        learn(insts, out=tmp_path / "m", options=FAST, log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_where_the_model_loses_to_the_box_polygons_start_from_the_box(tmp_path):
    """choose_start: the box where its mean IoU beats the model's on the team's polygons; a predictor (and
    the batch annotator) started from the box gives the box itself, and a correction still works from it."""
    from helpers import write_image

    from polyrnn.batch.annotate import Annotator
    from polyrnn.build import load_models
    from polyrnn.data.instance import load_image
    from polyrnn.learning import choose_start
    from polyrnn.predictor import PolygonPredictor

    assert choose_start({"automatic": 0.57, "box": 0.66}) == "box"
    assert choose_start({"automatic": 0.75, "box": 0.66}) == "auto"
    image = load_image(write_image(tmp_path / "a.png", 96, 80))
    models = load_models()
    pred = PolygonPredictor(models.polygon, mask_model=models.mask, refiner=models.refiner, start="box")
    pred.set_image(image)
    box = (10.0, 12.0, 70.0, 60.0)
    p = pred.predict(box)
    assert p.source == "box" and np.allclose(p.vertices, [[10, 12], [70, 12], [70, 60], [10, 60]])
    moved = pred.correct(1, (60.0, 30.0))
    assert np.allclose(moved.vertices[moved.fixed][0], (60.0, 30.0))
    (traced,) = Annotator(models, start="box").annotate(image, [box])
    assert traced.source == "box" and np.allclose(traced.polygon, p.vertices)


@pytest.mark.shared
def test_the_cvat_handler_serves_a_model_folder(learned):
    from polyrnn.integrations.cvat.main import predictor_for

    out, _ = learned
    pred = predictor_for(str(out))
    folder = ModelFolder.read(out)
    assert pred.engine.start == folder.start and pred.refiner is not None
    assert pred.engine.tolerance == folder.tolerance
    with pytest.raises(LearnError):
        predictor_for(str(out.parent / "nothing"))


def test_the_editor_counts_accepted_polygons_without_rereading_unchanged_files(tmp_path, monkeypatch):
    from helpers import write_image

    from polyrnn.server.learner import Learner
    from polyrnn.server.store import AnnotationStore

    for k in range(3):
        write_image(tmp_path / f"im{k}.png", seed=k)
    store = AnnotationStore(tmp_path)
    shape = {"label": "a", "points": [[1, 1], [20, 1], [20, 20]], "shape_type": "polygon"}
    store.save("im0.png", [shape, shape], (64, 48))
    learner = Learner(store=store, every=5, options=FAST, on_model=lambda folder, start: None)
    assert learner.accepted() == 2
    reads = []
    real = store.count
    monkeypatch.setattr(store, "count", lambda name: reads.append(name) or real(name))
    assert learner.accepted() == 2 and reads == []  # nothing changed: nothing read
    store.save("im1.png", [shape], (64, 48))
    assert learner.accepted() == 3 and reads == ["im1.png"]
    status = learner.status()
    assert status["model"] == "shipped" and status["next_at"] == 5 and not status["learning"]


def test_a_job_learns_from_a_bounded_sample():
    from polyrnn.learning import _capped

    items = list(range(500))
    kept = _capped(items, 200, seed=0)  # type: ignore[arg-type]
    assert len(kept) == 200 and kept == sorted(kept) and len(set(kept)) == 200
    assert _capped(items, 200, seed=0) == kept and _capped(items, 0, seed=0) == items  # type: ignore[arg-type]
    assert _capped(items[:50], 200, seed=0) == items[:50]  # type: ignore[arg-type]
