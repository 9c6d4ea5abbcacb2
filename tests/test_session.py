"""The interactive session (editor and evaluation alike), its guard rails, the clicks-to-quality annotator and
the refiner's training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from polyrnn.build import VARIANTS, build_model, checkpoint_dict, save_checkpoint
from polyrnn.evaluation.clicks import clicks_to_quality, next_correction, worst_error
from polyrnn.geometry import is_simple, mask_iou, rasterize
from polyrnn.modeling.refiner import Refiner
from polyrnn.session import BoxEncoding, BoxSession, EngineConfig, State, splice

SQUARE = np.array([[40.0, 30.0], [120.0, 30.0], [120.0, 100.0], [40.0, 100.0]])


def _encoding(refiner=None, mask_model=None):
    torch.manual_seed(0)
    img = (np.random.default_rng(0).random((140, 180, 3)) * 255).astype(np.uint8)
    return BoxEncoding(
        img,
        (30.0, 20.0, 130.0, 110.0),
        polygon_model=build_model("tiny"),
        mask_model=mask_model,
        refiner=refiner,
        eos_threshold=2.0,
    )


def _session(engine="manual", **kw):
    enc = _encoding(**kw)
    start = State(SQUARE.copy(), np.zeros(4, bool))
    return BoxSession(enc, EngineConfig(name=engine), state=start)


def test_editor_operations_fix_the_annotators_vertices_and_undo_restores_exactly():
    s = _session()
    s.move(1, (125.0, 25.0))
    assert s.polygon[1].tolist() == [125.0, 25.0] and s.fixed.tolist() == [False, True, False, False]
    s.insert(2, (130.0, 70.0))
    assert len(s.polygon) == 5 and s.polygon[3].tolist() == [130.0, 70.0] and s.fixed[3]
    assert len(s.state.clicks) == 2 and s.state.clicks[-1].sign == 1  # dragged outward
    s.delete(0)
    assert len(s.polygon) == 4 and s.fixed.tolist() == [True, False, True, False]
    for expected in (5, 4, 4):
        s.undo()
        assert len(s.polygon) == expected
    assert np.array_equal(s.polygon, SQUARE) and not s.fixed.any() and not s.state.clicks
    with pytest.raises(ValueError, match="nothing to undo"):
        s.undo()
    with pytest.raises(IndexError):
        s.move(9, (1.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        s.move(0, (float("nan"), 1.0))


def test_guard_refuses_moved_fixed_vertices_self_intersections_and_far_changes():
    s = _session()
    manual = State(SQUARE.copy(), np.array([True, False, False, True]))
    ok = State(np.array([[40.0, 30.0], [110.0, 35.0], [118.0, 95.0], [40.0, 100.0]]), manual.fixed.copy())
    assert s._guard(manual, ok, 1) is ok
    moved_fixed = State(ok.polygon.copy(), ok.fixed.copy())
    moved_fixed.polygon[0] = [41.0, 30.0]
    assert s._guard(manual, moved_fixed, 1) is manual
    crossed = State(
        np.array([[40.0, 30.0], [120.0, 100.0], [120.0, 30.0], [40.0, 100.0]]), manual.fixed.copy()
    )
    assert not is_simple(crossed.polygon) and s._guard(manual, crossed, 1) is manual
    s.engine.confine = 0.1  # changes only within 10 px of the edit
    assert s._guard(manual, ok, 1) is manual


def test_splice_replaces_only_the_stretch_between_fixed_vertices():
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    poly = np.column_stack([100 + 50 * np.cos(t), 100 + 50 * np.sin(t)])
    fixed = np.zeros(24, bool)
    fixed[[3, 9]] = True
    big = np.column_stack(
        [
            100 + 60 * np.cos(np.linspace(0, 2 * np.pi, 400, endpoint=False)),
            100 + 60 * np.sin(np.linspace(0, 2 * np.pi, 400, endpoint=False)),
        ]
    )
    manual = State(poly.copy(), fixed.copy())
    manual.polygon[6] = big[100]  # the annotator dragged vertex 6 out to the bigger outline
    out = splice(manual, big, 6, reach=1e9, tolerance=0.5)
    assert out is not None and is_simple(out.polygon)
    kept = [tuple(p) for p in out.polygon]
    for k in [*range(0, 4), *range(9, 24)]:  # outside the stretch 3 .. 9: exactly where they were
        assert tuple(poly[k]) in kept
    assert tuple(big[100]) in kept and out.fixed.sum() == 3
    inside = [p for p in out.polygon if tuple(p) not in {tuple(q) for q in poly}]
    assert all(abs(np.hypot(*(p - 100)) - 60) < 1e-4 for p in inside if tuple(p) != tuple(big[100]))


def test_worst_error_and_the_annotators_correction():
    gt = np.zeros((60, 80), bool)
    gt[10:50, 10:70] = True
    pred = np.zeros_like(gt)
    pred[10:50, 10:66] = True  # a strip on the right is missed
    x, y, missed, dist = worst_error(pred, gt)
    assert missed and 66 <= x <= 70 and 10 <= y <= 50 and dist >= 2
    poly = np.array([[10.0, 10.0], [66.0, 10.0], [66.0, 50.0], [10.0, 50.0]])
    from polyrnn.evaluation.clicks import boundary_points

    c = next_correction([(poly, np.zeros(4, bool))], pred, gt, None, boundary_points(gt), near_px=0.0)
    assert c is not None and c.op == "insert" and c.missed
    assert c.point[0] >= 66 and (c.point[0] == 69.5 or c.point[1] in (10.5, 49.5))  # on the true boundary
    c = next_correction([(poly, np.zeros(4, bool))], pred, gt, None, boundary_points(gt), near_px=100.0)
    assert c is not None and c.op == "move" and c.index in (1, 2)
    assert next_correction([(poly, np.zeros(4, bool))], gt, gt, None, boundary_points(gt), 3.0) is None


def test_manual_clicks_to_quality_climbs_towards_the_ground_truth():
    s = _session()
    gt = rasterize([np.array([[30.0, 20.0], [135.0, 20.0], [135.0, 110.0], [30.0, 110.0]])], 140, 180)
    curve = clicks_to_quality(s, gt, None, max_corrections=6)
    assert len(curve) == 7 and curve[0] == pytest.approx(mask_iou(rasterize([SQUARE], 140, 180), gt))
    assert curve[-1] > curve[0] + 0.1 and all(b >= a - 1e-9 for a, b in zip(curve, curve[1:], strict=False))
    assert s.fixed.sum() >= 1 and np.all(s.polygon[s.fixed] >= 19)  # its vertices are on the true boundary


def test_refine_engine_keeps_fixed_vertices_and_gives_a_simple_polygon():
    mask_model = build_model("tiny-mask").eval()
    refiner = Refiner(feat_channels=16, size=2 * 28).eval()
    s = _session("refine", refiner=refiner, mask_model=mask_model)
    s.move(1, (126.0, 24.0))
    s.move(3, (35.0, 105.0))
    assert is_simple(s.polygon)
    placed = {(126.0, 24.0), (35.0, 105.0)}
    assert {tuple(p) for p in s.polygon[s.fixed]} == placed and len(s.state.clicks) == 2


def test_the_refiners_mask_is_averaged_with_its_reading_of_the_mirrored_crop():
    """With the mask model's mirror (the default), the object pass reads the mirrored crop's features with the
    maps mirrored too and averages the residuals flipped back: swapping the crop and its mirror flips the
    result; without the mirror the refiner reads the crop alone."""
    from polyrnn.encoding import Click

    torch.manual_seed(0)
    mask_model = build_model("tiny-mask").eval()
    refiner = Refiner(feat_channels=16, size=2 * 28).eval()
    enc = _encoding(refiner=refiner, mask_model=mask_model)
    feats, prob, mirrored = enc._views
    assert mirrored is not None and mirrored.shape == feats.shape and not torch.equal(mirrored, feats)
    maps = torch.rand(1, 5, 56, 56)
    with torch.inference_mode():
        a = refiner.mirror_averaged(feats, mirrored, maps)
        b = refiner.mirror_averaged(mirrored, feats, maps.flip(-1))
        plain = refiner.residual(feats, maps)
    assert torch.allclose(a.flip(-1), b, atol=1e-5) and not torch.allclose(a, plain, atol=1e-3)
    read = []  # what the object pass hands the refiner
    average = refiner.mirror_averaged

    def spy(f, m, mp):
        read.append((f, m, mp))
        return average(f, m, mp)

    refiner.mirror_averaged = spy  # type: ignore[method-assign]
    clicks = [Click(middle=(122.0, 65.0), sign=1)]
    assert enc.refined_mask(SQUARE, SQUARE[:1], clicks).shape == (224, 224)
    assert (
        len(read) == 1
        and read[0][0] is feats
        and read[0][1] is mirrored
        and read[0][2].shape == (1, 5, 56, 56)
    )
    no_mirror = _encoding(refiner=refiner, mask_model=mask_model)
    no_mirror.mask_flip = False
    assert no_mirror._views[2] is None and no_mirror.refined_mask(SQUARE, SQUARE[:1], clicks).shape == (
        224,
        224,
    )
    assert len(read) == 1  # the crop alone


def _blobs_and_tiny_mask(tmp_path, blobs):
    """A LabelMe folder with one ellipse per image (centre x, y and radius of each) and an untrained tiny mask
    model's checkpoint: (folder, checkpoint)."""
    from helpers import write_image

    data = tmp_path / "data"
    for i, (cx, cy, r) in enumerate(blobs):
        write_image(data / f"im{i}.jpg", 96, 80, seed=i)
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        pts = np.column_stack([cx + r * np.cos(t), cy + 0.8 * r * np.sin(t)])
        shapes = [{"label": "blob", "points": pts.tolist(), "shape_type": "polygon"}]
        (data / f"im{i}.json").write_text(json.dumps({"imagePath": f"im{i}.jpg", "shapes": shapes}))
    torch.manual_seed(0)
    mask = tmp_path / "mask.pt"
    save_checkpoint(mask, checkpoint_dict(build_model("tiny-mask"), VARIANTS["tiny-mask"]))
    return data, mask


def test_refiner_training_leaves_a_run_that_loads_for_its_mask_model(tmp_path):

    from polyrnn.build import CheckpointError, load_refiner
    from polyrnn.refine_training import load_refiner_config, ship_refiner, train_refiner

    rng = np.random.default_rng(0)
    data, mask = _blobs_and_tiny_mask(
        tmp_path, [(rng.uniform(35, 60), rng.uniform(30, 50), rng.uniform(14, 20)) for _ in range(6)]
    )
    cfg = load_refiner_config(
        "refiner",
        [
            f"mask_weights={mask}",
            f"train=[{data}]",
            "val_split=0.34",
            "copies=2",
            "epochs=2",
            "batch_size=4",
            "hidden=8",
            "reduce=8",
            f"out={tmp_path / 'runs'}",
            "min_size=10",
        ],
    )
    run = train_refiner(cfg, log=lambda *_: None)
    rows = (run / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and (run / "weights" / "best.pt").is_file() and (run / "results.png").is_file()
    model = load_refiner(run / "weights" / "last.pt", mask)
    assert isinstance(model, Refiner) and not model.training
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, checkpoint_dict(build_model("tiny-mask"), VARIANTS["tiny-mask"]))
    with pytest.raises(CheckpointError, match="another mask model"):
        load_refiner(run / "weights" / "last.pt", other)
    shipped = ship_refiner(run / "weights" / "best.pt", folder=tmp_path)
    assert load_refiner(shipped, mask).keep.dtype == torch.float32
    assert "refiner.pt" in (tmp_path / "SHA256SUMS").read_text()


def test_the_refine_engine_refuses_to_run_without_its_refiner():
    with pytest.raises(ValueError, match="refiner"):
        _session("refine")  # no mask model, no refiner: never a silent plain drag under the refine name


def test_vertex_ids_survive_edits_and_redo_restores_undone_work():
    torch.manual_seed(0)
    from polyrnn.build import build_model
    from polyrnn.encoding import BoxEncoding as Enc

    img = (np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)
    model = build_model("tiny")
    model.max_len = 12
    enc = Enc(img, (10.0, 10.0, 110.0, 80.0), polygon_model=model, eos_threshold=2.0)
    s = BoxSession(enc, EngineConfig(name="rnn"))
    ids0 = s.ids.copy()
    assert len(set(ids0.tolist())) == len(ids0)
    v0 = s.version
    dragged = int(s.ids[3])
    s.move(3, (60.0, 20.0))
    assert s.version == v0 + 1 and s.polygon[s.index_of(dragged)].tolist() == [60.0, 20.0]
    kept = [i for i in ids0[:3]]  # vertices before the edit are kept exactly: same ids
    assert all(i in s.ids for i in kept)
    after_move = (s.polygon.copy(), s.ids.copy())
    gone = int(s.ids[0])
    s.delete(0)
    with pytest.raises(KeyError):
        s.index_of(gone)
    s.undo()
    s.undo()
    np.testing.assert_array_equal(s.ids, ids0)
    s.redo()
    np.testing.assert_array_equal(s.polygon, after_move[0])
    np.testing.assert_array_equal(s.ids, after_move[1])
    s.move(1, (15.0, 15.0), predict=False)  # Alt+drag: nothing else moves
    assert s.fixed[1] and np.array_equal(np.delete(s.polygon, 1, 0), np.delete(after_move[0], 1, 0))
    with pytest.raises(ValueError, match="redo"):
        s.redo()  # a new operation forgets what could be redone
    new = s.insert(2, (30.0, 30.0), predict=False)
    assert len(set(new.ids.tolist())) == len(new.ids) and int(new.ids[3]) not in ids0


@pytest.mark.shared
def test_a_click_goes_through_the_guard_rails(datasets):
    """CVAT's clicks are session operations: the click comes out on its side, or nothing changes."""
    from shapely.geometry import Point, Polygon

    from polyrnn.data.instance import load_image
    from polyrnn.evaluation.clicks import worst_error
    from polyrnn.formats import load_dataset
    from polyrnn.geometry import rasterize
    from polyrnn.predictor import PolygonPredictor

    pred = PolygonPredictor.from_weights()
    insts = load_dataset(datasets / "coco-mini" / "val2017", min_size=32).instances[:6]
    for inst in insts:
        pred.set_image(load_image(inst.image_path))
        s = pred.new_session(inst.box_xyxy)
        before = s.polygon.copy()
        e = worst_error(rasterize([before], inst.height, inst.width), inst.mask(), inst.ignore_mask())
        if e is None:
            continue
        x, y, missed, _ = e
        s.click((x, y), missed)
        inside = Polygon(s.polygon).covers(Point(x, y))
        assert inside == missed or np.array_equal(s.polygon, before)
        assert len(s.state.clicks) == 1 and s.state.clicks[0].sign == (1 if missed else -1)
        s.undo()
        np.testing.assert_array_equal(s.polygon, before)


def test_an_engine_is_one_file_and_one_line(monkeypatch):
    """An engine added to the table is taken by the session, the Python API and evaluate."""
    from polyrnn.build import build_model
    from polyrnn.data import Instance
    from polyrnn.engines import ENGINES
    from polyrnn.evaluation.evaluate import EvalOptions, evaluate_instance
    from polyrnn.predictor import PolygonPredictor

    class Shift:  # moves the vertex after the dragged one by the same drag (the guard rails still apply)
        name = "shift"

        def check(self, encoding):
            return None

        def propose(self, encoding, config, before, manual, index):
            p = manual.polygon.copy()
            k = (index + 1) % len(p)
            if not manual.fixed[k]:
                p[k] += manual.polygon[index] - before.polygon[index]
            return State(p, manual.fixed.copy())

        def propose_click(self, encoding, config, before, clicks, point):
            return None

    monkeypatch.setitem(ENGINES, "shift", Shift())
    torch.manual_seed(0)
    model = build_model("tiny")
    model.max_len = 12
    pred = PolygonPredictor(model, engine="shift", eos_threshold=2.0)
    img = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    pred.set_image(img)
    square = np.array([[20.0, 20.0], [80.0, 20.0], [80.0, 60.0], [20.0, 60.0]])
    session = pred.new_session((10, 10, 110, 80), polygon=square)  # the editor's server opens these
    moved = session.move(1, (83.0, 20.0)).polygon
    np.testing.assert_allclose(moved, [[20, 20], [83, 20], [83, 60], [20, 60]])
    inst = Instance(
        Path("x.png"), (128, 96), "a", (20, 20, 60, 40), [np.array([[20, 20], [80, 20], [80, 60]], float)]
    )
    opts = EvalOptions(thresholds=(), baselines=(), max_corrections=2, engines=("shift", "manual"))
    res = evaluate_instance(model, inst, img, opts)
    assert set(res.curves) == {"shift", "manual"} and len(res.curves["shift"]) == 3


def test_splice_region_keeps_fixed_and_far_vertices_and_follows_the_contour_between():
    from polyrnn.engines.refine import splice_region

    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    poly = np.column_stack([100 + 50 * np.cos(t), 100 + 50 * np.sin(t)])
    fixed = np.zeros(24, bool)
    fixed[[2, 10]] = True
    u = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    big = np.column_stack([100 + 60 * np.cos(u), 100 + 60 * np.sin(u)])
    at = big[100] + 3.0  # a click just outside vertex 6's stretch (angle pi/2)
    out = splice_region(State(poly.copy(), fixed.copy()), big, at, reach=1e9, tolerance=0.5)
    assert out is not None and is_simple(out.polygon)
    kept = {tuple(p) for p in out.polygon}
    assert all(tuple(poly[k]) in kept for k in [*range(0, 3), *range(10, 24)])  # outside 2 .. 10: exact
    assert not any(tuple(poly[k]) in kept for k in range(3, 10))  # the stretch is the contour's now
    assert sorted(map(tuple, out.polygon[out.fixed])) == sorted([tuple(poly[2]), tuple(poly[10])])
    new = [p for p in out.polygon if tuple(p) not in {tuple(q) for q in poly}]
    assert new and all(abs(np.hypot(*(p - 100)) - 60) < 1e-4 for p in new)
    # far vertices are anchors too: with a small reach only the neighbourhood of the click changes
    near = splice_region(State(poly.copy(), np.zeros(24, bool)), big, at, reach=30.0, tolerance=0.5)
    assert near is not None
    gone = [k for k in range(24) if tuple(poly[k]) not in {tuple(p) for p in near.polygon}]
    assert gone and all(np.linalg.norm(poly[k] - at) <= 30.0 for k in gone)
    # nothing fixed or far: the outline is the contour's, simplified
    whole = splice_region(State(poly.copy(), np.zeros(24, bool)), big, at, reach=1e9, tolerance=0.5)
    assert whole is not None and not whole.fixed.any() and len(whole.polygon) < 400


def test_the_click_protocol_clicks_at_the_worst_error_with_its_sign():
    from polyrnn.evaluation.clicks import click_protocol

    gt = rasterize([np.array([[30.0, 20.0], [135.0, 20.0], [135.0, 110.0], [30.0, 110.0]])], 140, 180)

    class Recorder:  # grows the polygon to the ground truth on a positive click
        def __init__(self):
            self.polygon, self.fixed, self.long_side, self.calls = SQUARE.copy(), np.zeros(4, bool), 105.0, []

        def click(self, xy, positive):
            self.calls.append((xy, positive))
            if positive:
                self.polygon = np.array([[30.0, 20.0], [135.0, 20.0], [135.0, 110.0], [30.0, 110.0]])

        def move(self, index, xy):  # pragma: no cover - the click protocol never drags
            raise AssertionError

        insert = move

    r = Recorder()
    curve = click_protocol(r, gt, None, max_clicks=3)
    (xy, positive), *rest = r.calls
    assert positive and not rest  # one click, in the missed strip, then nothing is wrong
    assert not rasterize([SQUARE], 140, 180)[int(xy[1]), int(xy[0])] and gt[int(xy[1]), int(xy[0])]
    assert curve[0] < 0.8 and curve[1:] == [1.0, 1.0, 1.0]
    spill = Recorder()
    spill.polygon = np.array([[10.0, 5.0], [150.0, 5.0], [150.0, 130.0], [10.0, 130.0]])
    click_protocol(spill, gt, None, max_clicks=1)
    assert spill.calls and spill.calls[0][1] is False  # the polygon spilled: a negative click


def test_a_click_after_a_drag_keeps_the_dragged_vertex(datasets):
    """The refine engine splices a click's outline between the annotator's vertices, so a click after a drag
    can change the polygon and the dragged vertex stays exactly where it was put."""
    from polyrnn.data.instance import load_image
    from polyrnn.evaluation.clicks import worst_error
    from polyrnn.formats import load_dataset
    from polyrnn.predictor import PolygonPredictor

    pred = PolygonPredictor.from_weights()
    insts = load_dataset(datasets / "coco-mini" / "val2017", min_size=32).instances[:8]
    changed = 0
    for inst in insts:
        pred.set_image(load_image(inst.image_path))
        s = pred.new_session(inst.box_xyxy)
        k = int(np.argmax(s.polygon[:, 1]))
        s.move(k, (float(s.polygon[k, 0]), float(s.polygon[k, 1]) + 2.0))
        placed = s.polygon[s.fixed].copy()
        before = s.polygon.copy()
        e = worst_error(rasterize([before], inst.height, inst.width), inst.mask(), inst.ignore_mask())
        if e is None:
            continue
        s.click((e[0], e[1]), e[2])
        np.testing.assert_array_equal(s.polygon[s.fixed], placed)
        changed += not np.array_equal(s.polygon, before)
    assert changed >= 2


def test_a_sessions_detail_sets_its_vertex_density_and_corrections_keep_it(datasets):
    from polyrnn.data.instance import load_image
    from polyrnn.formats import load_dataset
    from polyrnn.predictor import PolygonPredictor

    pred = PolygonPredictor.from_weights()
    inst = max(
        load_dataset(datasets / "coco-mini" / "val2017", min_size=32).instances[:10],
        key=lambda i: i.box[2] * i.box[3],
    )
    pred.set_image(load_image(inst.image_path))
    dense, sparse = (
        pred.new_session(inst.box_xyxy, tolerance=0.5),
        pred.new_session(inst.box_xyxy, tolerance=4.0),
    )
    assert len(dense.polygon) > 1.5 * len(sparse.polygon) >= 4.5
    for s in (dense, sparse):
        k = int(np.argmax(s.polygon[:, 0]))
        s.move(k, (float(s.polygon[k, 0]) + 0.05 * s.long_side, float(s.polygon[k, 1])))
    assert len(dense.polygon) > 1.5 * len(sparse.polygon)


def test_far_changes_counts_the_far_vertices_an_edit_moved():
    from polyrnn.evaluation.clicks import far_changes

    before = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    after = before.copy()
    after[2] = [11.0, 11.0]  # near the edit
    assert far_changes(before, after, (10.0, 10.0), 5.0) == (3, 0)
    after[0] = [0.5, 0.0]  # far from it
    assert far_changes(before, after, (10.0, 10.0), 5.0) == (3, 1)
    assert far_changes(before, before[[1, 2, 3]], (10.0, 10.0), 5.0) == (3, 1)  # dropped counts as moved


def test_region_clicks_in_the_refiners_training_have_no_vertex_and_are_chosen_on_too(tmp_path):
    import math

    from polyrnn.refine_training import _maps, load_refiner_config, simulated_click, train_refiner

    gt = np.zeros((56, 56), bool)
    gt[10:40, 10:40] = True
    pred = np.zeros_like(gt)
    pred[10:40, 10:30] = True  # a strip on the right is missed
    vx, vy, x, y, sign = simulated_click(pred, gt, np.argwhere(gt)[:, ::-1] + 0.5, region=True)
    assert math.isnan(vx) and math.isnan(vy) and sign == 1 and gt[int(y), int(x)] and not pred[int(y), int(x)]
    drag = simulated_click(pred, gt, np.argwhere(gt)[:, ::-1] + 0.5)
    assert drag is not None and not math.isnan(drag[0])
    cur = torch.from_numpy(pred.astype(np.float32))[None]
    maps = _maps(cur, cur, [[(vx, vy, x, y, sign)]], 56)
    assert maps[0, 2].sum() == 0 and maps[0, 3].sum() > 0  # no vertex disk, a positive click disk
    maps = _maps(cur, cur, [[drag]], 56)
    assert maps[0, 2].sum() > 0

    data, mask = _blobs_and_tiny_mask(tmp_path, [(48.0, 40.0, 18.0)] * 4)
    cfg = load_refiner_config(
        "refiner",
        [
            f"mask_weights={mask}",
            f"train=[{data}]",
            "val_split=0.5",
            "copies=1",
            "epochs=1",
            "batch_size=2",
            "hidden=8",
            "reduce=8",
            "region_clicks=0.5",
            f"out={tmp_path / 'runs'}",
            "min_size=10",
        ],
    )
    run = train_refiner(cfg, log=lambda *_: None)
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert "val_iou_1" in header and "val_region_iou_1" in header


def _focused_encoding(min_side=0.0, input_size=224):
    from polyrnn.modeling.refiner import FocusPass

    refiner = Refiner(feat_channels=16, size=2 * 28).eval()
    refiner.focus_pass = FocusPass(Refiner(feat_channels=16, size=2 * 28).eval(), 0.6, min_side, input_size)
    return _encoding(refiner=refiner, mask_model=build_model("tiny-mask").eval())


def test_the_focus_pass_redraws_the_outline_finer_only_within_its_window(monkeypatch):
    from polyrnn.engines.refine import _cut_at_circle, _focus

    enc = _focused_encoding()
    # the object's right side is an arc; the annotator dragged its apex to (130, 65)
    t = np.linspace(-np.pi / 2, np.pi / 2, 41)
    truth = np.concatenate(
        [[[40.0, 30.0]], np.column_stack([120 + 10 * np.cos(t), 65 + 35 * np.sin(t)]), [[40.0, 100.0]]]
    )
    state = State(
        np.array([[40.0, 30.0], [120.0, 30.0], [130.0, 65.0], [120.0, 100.0], [40.0, 100.0]]),
        np.array([False, False, True, False, False]),
    )
    seen = []

    def focus_mask(window, before, fixed, clicks):  # the focus refiner's mask: the truth, over its window
        seen.append(window)
        return rasterize([window.image_to_crop(truth)], window.crop_size, window.crop_size).astype(bool)

    monkeypatch.setattr(enc, "focus_mask", focus_mask)
    at = np.array([130.0, 65.0])
    out = _focus(enc, EngineConfig(name="refine"), state, at, [], 0.5)
    assert out is not None and len(seen) == 1
    window = seen[0]
    assert window.side == round(0.6 * enc.crop.side) and abs(window.x0 + window.side / 2 - 130) <= 1
    radius = 0.45 * window.side
    kept = {tuple(q) for q in out.polygon}
    far = [tuple(q) for q in state.polygon if np.linalg.norm(q - at) > radius]
    assert far and all(q in kept for q in far)  # nothing outside the window's circle moves
    new = np.array([q for q in out.polygon if tuple(q) not in {tuple(p) for p in state.polygon}])
    assert len(new) and np.linalg.norm(new - at, axis=1).max() <= radius + 1e-6
    assert tuple(at) in kept and out.fixed[[tuple(q) for q in out.polygon].index(tuple(at))]
    assert is_simple(out.polygon)
    gt = rasterize([truth], 140, 180)
    assert (
        mask_iou(rasterize([out.polygon], 140, 180), gt)
        > mask_iou(rasterize([state.polygon], 140, 180), gt) + 0.01
    )
    # the vertices put where the polygon crosses the circle lie on it, the polygon's own are kept in order
    cut = _cut_at_circle(state, at, radius)
    added = [q for q in cut.polygon if tuple(q) not in {tuple(p) for p in state.polygon}]
    assert len(added) == 2 and np.allclose(np.linalg.norm(np.array(added) - at, axis=1), radius)
    assert [tuple(q) for q in cut.polygon if tuple(q) in {tuple(p) for p in state.polygon}] == [
        tuple(q) for q in state.polygon
    ]
    assert window.crop_size == 224
    # a focus pass that reads its window at 128 px: the same window, read coarser, through the real models
    coarse = _focused_encoding(input_size=128)
    read = []
    real = coarse.focus_mask
    monkeypatch.setattr(coarse, "focus_mask", lambda w, *a: read.append(w) or real(w, *a))
    _focus(coarse, EngineConfig(name="refine"), state, at, [], 0.5)
    assert (
        read[0].crop_size == 128
        and read[0].side == window.side
        and real(read[0], state.polygon, at[None], []).shape == (128, 128)
    )
    # a box smaller than the focus pass's min_side, or a session without it: no focus pass
    small = _focused_encoding(min_side=1000.0)
    assert _focus(small, EngineConfig(name="refine"), state, at, [], 0.5) is None
    s = BoxSession(
        enc, EngineConfig(name="refine", focus=False), state=State(SQUARE.copy(), np.zeros(4, bool))
    )
    seen.clear()
    s.move(1, (126.0, 24.0))
    assert not seen
    from polyrnn.predictor import PolygonPredictor

    assert PolygonPredictor(build_model("tiny"), focus=False).engine.focus is False  # serve --no-focus
    from polyrnn.build import Models

    swapped = PolygonPredictor(build_model("tiny"), focus=False, confine=0.5).with_models(
        Models(polygon=build_model("tiny"), polygon_path=Path("new.pt")), tolerance=1.0
    )  # the editor's swap to a learned model keeps every engine setting
    assert (swapped.engine.focus, swapped.engine.confine, swapped.engine.tolerance) == (False, 0.5, 1.0)
    assert PolygonPredictor(build_model("tiny")).engine.focus is True


@pytest.mark.parametrize(
    "bad",
    [
        "focus_input=-5",
        "focus_input=100000",
        "focus=nan",
        "focus=1e300",
        "focus_min=-1",
        "region_clicks=2",
        "name=../elsewhere",
        "name=/tmp/elsewhere",
    ],
)
def test_a_refiner_recipe_out_of_range_is_refused_before_anything_runs(bad, tmp_path, capsys):
    from polyrnn.cli import main

    assert main(["train-refiner", "focus=0.4", f"out={tmp_path}", bad]) == 2
    key = bad.split("=")[0]
    assert f"'{key}'" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_a_focus_refiner_trains_on_windows_and_ships_inside_the_refiner(tmp_path):
    from polyrnn.build import CheckpointError, load_refiner
    from polyrnn.refine_training import load_refiner_config, ship_refiner, train_refiner

    rng = np.random.default_rng(0)
    data, mask = _blobs_and_tiny_mask(
        tmp_path, [(rng.uniform(35, 60), rng.uniform(30, 50), rng.uniform(14, 20)) for _ in range(6)]
    )
    common = [
        f"mask_weights={mask}",
        f"train=[{data}]",
        "val_split=0.34",
        "epochs=1",
        "batch_size=4",
        "hidden=8",
        "reduce=8",
        f"out={tmp_path / 'runs'}",
        "min_size=10",
    ]
    lines: list[str] = []
    focus = train_refiner(
        load_refiner_config(
            "refiner", [*common, "copies=2", "focus=0.5", "focus_min=20", "focus_input=96", "name=focus"]
        ),
        log=lines.append,
    )
    said = next(x for x in lines if x.startswith("focus refiner:"))
    assert int(said.split()[2]) >= 4 and (focus / "results.csv").is_file()  # two windows per training object
    plain = train_refiner(
        load_refiner_config("refiner", [*common, "copies=1", "name=plain"]), log=lambda *_: None
    )
    shipped = ship_refiner(
        plain / "weights" / "best.pt", focus=focus / "weights" / "best.pt", folder=tmp_path
    )
    model = load_refiner(shipped, mask)
    assert model.focus_pass is not None and model.focus_pass.window == 0.5 and model.focus_pass.min_side == 20
    assert model.focus_pass.input_size == 96  # the window as its training read it
    assert "focus_pass" not in "".join(model.state_dict())  # the refiner's own weights are what they were
    with pytest.raises(CheckpointError, match="not a focus refiner"):
        ship_refiner(plain / "weights" / "best.pt", focus=plain / "weights" / "best.pt", folder=tmp_path)
    ckpt = torch.load(shipped, weights_only=True)
    ckpt["focus"]["window"] = 7.0
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="focus window"):
        load_refiner(tmp_path / "bad.pt")
    for window, min_side in ((float("nan"), 20.0), (0.5, float("nan")), (0.5, 1e300), (-1.0, 20.0)):
        ckpt["focus"]["window"], ckpt["focus"]["min_side"] = window, min_side
        torch.save(ckpt, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="out of range"):
            load_refiner(tmp_path / "bad.pt")
    ckpt["focus"]["window"], ckpt["focus"]["min_side"] = 0.5, 20.0
    for size in (8, 10**9, float("nan"), 100.5):
        ckpt["focus"]["input_size"] = size
        torch.save(ckpt, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="input_size"):
            load_refiner(tmp_path / "bad.pt")
    del ckpt["focus"]["input_size"]  # a checkpoint from before the setting: read at 224
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_refiner(tmp_path / "old.pt").focus_pass.input_size == 224
    for hidden in (10**12, float("inf"), "many", -3):  # refused before anything is allocated
        ckpt["focus"]["refiner_config"]["hidden"] = hidden
        torch.save(ckpt, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="refiner_config"):
            load_refiner(tmp_path / "bad.pt")
    del ckpt["focus"]["model"]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="malformed focus"):
        load_refiner(tmp_path / "bad.pt")


def test_a_click_the_engine_cannot_honour_is_honoured_plainly_and_undone_exactly():
    from shapely.geometry import Point, Polygon

    s = _session()  # the manual engine proposes nothing for a click
    s.move(2, (120.0, 100.0))  # a fixed vertex stays where the annotator put it
    before = s.polygon.copy()
    s.click((130.0, 60.0), True)  # outside, beside the right edge: the edge comes out to just past it
    assert Polygon(s.polygon).covers(Point(130.0, 60.0)) and len(s.polygon) == 6 and is_simple(s.polygon)
    new = s.polygon[~np.isin(s.polygon, before).all(1)]
    np.testing.assert_allclose(new, [[131.0, 59.0], [131.0, 61.0]])  # a flat bump, 1 px past it
    assert not s.fixed[~np.isin(s.polygon, before).all(1)].any()
    assert tuple(s.polygon[s.fixed][0]) == (120.0, 100.0) and s.state.clicks[-1].sign == 1
    s.click((60.0, 40.0), False)  # inside, near the top edge: a notch leaves it out
    assert not Polygon(s.polygon).covers(Point(60.0, 40.0)) and len(s.polygon) == 8 and is_simple(s.polygon)
    kept = s.polygon.copy()
    s.click((80.0, 60.0), True)  # on its side already: nothing moves, the click is remembered
    np.testing.assert_array_equal(s.polygon, kept)
    assert [c.sign for c in s.state.clicks[1:]] == [1, -1, 1]  # after the drag's
    s.undo()
    s.undo()
    s.undo()
    np.testing.assert_array_equal(s.polygon, before)


def test_a_plain_click_takes_the_point_in_strictly_even_beside_a_corner():
    from shapely.geometry import Point, Polygon

    from polyrnn.session import _plain_click

    square = State(SQUARE.copy(), np.zeros(4, bool))
    corner = np.array([124.0, 26.0])  # beyond the corner (120, 30): the outline's nearest point is a vertex
    out = _plain_click(square, corner, True)
    assert out is not None and is_simple(out.polygon)
    shape = Polygon(out.polygon)
    assert shape.covers(Point(*corner)) and shape.exterior.distance(Point(*corner)) > 0.1  # not on the edge
    # a U whose notch is too narrow for a 2-px bump from any edge: no plain click (the polygon stays)
    u = np.array([[0, 0], [30, 0], [30, 40], [21, 40], [21, 10], [19.5, 10], [19.5, 40], [0, 40]], float)
    assert _plain_click(State(u, np.zeros(8, bool)), np.array([20.2, 10.6]), True) is None
    # a wider one: the floor, nearest, is pulled up past the point
    u[4:6, 0] = (23.0, 17.0)
    u[3, 0], u[6, 0] = 23.0, 17.0
    out = _plain_click(State(u, np.zeros(8, bool)), np.array([20.0, 11.0]), True)
    assert out is not None and is_simple(out.polygon) and Polygon(out.polygon).covers(Point(20.0, 11.0))
    np.testing.assert_allclose(out.polygon[5:7], [[21.0, 12.0], [19.0, 12.0]])
    assert _plain_click(square, np.array([80.0, 60.0]), True) is None  # inside already


def _two_piece_object():
    """A session whose polygon is exactly the ground truth's first piece (SQUARE), with a second piece to its
    right that no polygon covers; new parts start from their box (``start="box"``)."""
    from polyrnn.session import ObjectSession

    enc = _encoding()
    enc.start = "box"
    first = BoxSession(enc, EngineConfig(name="manual"), state=State(SQUARE.copy(), np.zeros(4, bool)))
    piece = np.array([[140.0, 40.0], [175.0, 40.0], [175.0, 90.0], [140.0, 90.0]])
    gt = rasterize([SQUARE, piece], 140, 180)
    return ObjectSession(first), gt


def test_an_object_session_adds_parts_in_their_own_boxes():
    obj, _ = _two_piece_object()
    before = obj.first.polygon.copy()
    part = obj.add_part((175.0, 90.0, 140.0, 40.0))  # corners in any order
    assert len(obj.parts) == 2 and part.engine == obj.first.engine
    assert part.encoding.box == (140.0, 40.0, 175.0, 90.0) and part.encoding.image is obj.first.encoding.image
    assert np.array_equal(part.polygon, part.encoding.box_polygon())  # its own automatic start
    part.move(0, (138.0, 38.0))
    assert np.array_equal(obj.first.polygon, before)  # a part's correction changes no other part
    assert len(obj.polygons) == 2 and obj.long_side == obj.first.long_side
    clipped = obj.add_part((170.0, 100.0, 400.0, 300.0))
    assert clipped.encoding.box == (170.0, 100.0, 180.0, 140.0)  # clipped to the 180 x 140 image
    for bad in (
        (1.0, 2.0, float("nan"), 4.0),
        (500.0, 500.0, 600.0, 600.0),
        (5.0, 5.0, 5.2, 40.0),
        (1, 2, 3),
    ):
        with pytest.raises(ValueError):
            obj.add_part(bad)
    assert len(obj.parts) == 3


def test_the_annotators_add_a_part_for_a_piece_that_no_part_covers():
    from polyrnn.evaluation.clicks import click_protocol

    obj, gt = _two_piece_object()
    curve = clicks_to_quality(obj, gt, None, max_corrections=3)
    assert len(obj.parts) == 2 and obj.parts[1].encoding.box == (140.0, 40.0, 175.0, 90.0)  # the piece's box
    assert curve[0] < 0.8 and curve[1] > 0.97 and curve[1:] == [curve[1]] * 3  # one correction: whole object
    assert np.array_equal(obj.first.polygon, SQUARE)  # the first part was right and stays

    obj, gt = _two_piece_object()
    clicks = click_protocol(obj, gt, None, max_clicks=3)
    assert len(obj.parts) == 2 and clicks[1] == clicks[0] and clicks[2] > 0.97  # a box is two clicks

    # without parts (a plain session, or min_part=inf) the annotator drags the one polygon towards the piece
    obj, gt = _two_piece_object()
    curve = clicks_to_quality(obj, gt, None, max_corrections=2, min_part=float("inf"))
    assert len(obj.parts) == 1 and curve[1] < 0.97 and not np.array_equal(obj.first.polygon, SQUARE)
    obj, gt = _two_piece_object()
    clicks_to_quality(obj.first, gt, None, max_corrections=1)
    assert len(obj.parts) == 1
    # a piece smaller than the smallest part (0.6 box long sides here: 60 px, the piece is 50) gets no box
    obj, gt = _two_piece_object()
    clicks_to_quality(obj, gt, None, max_corrections=1, min_part=0.6)
    assert len(obj.parts) == 1


def test_a_piece_the_polygons_already_cover_gets_no_part():
    from polyrnn.evaluation.clicks import PART_COVER, Pieces

    gt = np.zeros((60, 80), bool)
    gt[10:50, 5:30] = gt[10:50, 40:75] = True
    pieces = Pieces.of(gt, None, min_side=8.0)
    assert pieces.boxable() == 2
    pred = np.zeros_like(gt)
    assert pieces.uncovered(pred, 50.5, 30.5) == (40.0, 10.0, 75.0, 50.0)
    pred[10:50, 40 : 40 + int(35 * PART_COVER) + 2] = True  # just over the share: it is that part's error
    assert pieces.uncovered(pred, 60.5, 30.5) is None
    assert pieces.uncovered(pred, 35.5, 30.5) is None  # not on the object
    ignore = np.zeros_like(gt)
    ignore[10:50, 5:30] = True  # an ignore region is no piece
    assert Pieces.of(gt, ignore, min_side=8.0).boxable() == 1
