"""Property and fuzz tests for both servers: schemathesis generates requests from each server's own OpenAPI
schema, and a Hypothesis state machine opens, edits and saves hypothesis-made LabelMe files through the
HTTP API as the page does, with other tools writing the files in between. Asserted throughout: no 5xx, no
crash, bounded memory, and every shape an edit did not touch written back unchanged."""

from __future__ import annotations

import json
import math
import resource

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402
from test_server import make_images, tiny_predictor  # noqa: E402

from polyrnn.server.app import create_app  # noqa: E402
from polyrnn.server.store import AnnotationStore  # noqa: E402

HOST = {"Host": "127.0.0.1:8000"}
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: a CI failure reproduces
)
MEMORY_GROWTH_MB = 1000  # a fuzz test may raise the process's peak memory by at most this much


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _serve_app(tmp_path_factory):
    folder = make_images(tmp_path_factory.mktemp("fuzz") / "imgs", 2)
    return create_app(AnnotationStore(folder), tiny_predictor(), model_name="tiny")


def _ls_app(tmp_path_factory):
    from polyrnn.integrations.label_studio import LabelStudioBackend
    from polyrnn.integrations.label_studio import create_app as ls_create_app

    work = tmp_path_factory.mktemp("ls-fuzz")
    make_images(work / "images", 1)
    return ls_create_app(LabelStudioBackend(work_dir=work / "work", images=work / "images", fit_async=False))


def _fuzz_every_operation(app) -> list[str]:
    """Run generated requests against every operation of the app's OpenAPI schema; returns the operations."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=HOST)
    start, done = _peak_mb(), []
    for result in schema.get_all_operations():
        op = result.ok()

        @FAST
        @given(op.as_strategy())
        def run(case):
            response = case.call(headers=HOST)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        run()
        done.append(f"{op.method.upper()} {op.path}")
    assert _peak_mb() - start < MEMORY_GROWTH_MB
    return done


def test_serve_never_answers_5xx(tmp_path_factory):
    done = _fuzz_every_operation(_serve_app(tmp_path_factory))
    assert {"POST /api/sessions/{sid}", "PUT /api/annotations/{name}", "PUT /api/labels"} <= set(done)


def test_label_studio_back_end_never_answers_5xx(tmp_path_factory):
    done = _fuzz_every_operation(_ls_app(tmp_path_factory))
    assert {"POST /predict", "POST /webhook", "POST /setup"} <= set(done)


# --- open -> edit -> save with hypothesis-made LabelMe files --------------------------------------------
finite = st.floats(min_value=-50, max_value=250, allow_nan=False)
odd_number = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.integers(-(10**20), 10**20))
text = st.text(max_size=20)
odd_value = st.one_of(st.none(), st.booleans(), odd_number, text, st.lists(st.integers(), max_size=3))
point = st.one_of(
    st.tuples(finite, finite).map(list),
    st.lists(odd_number, min_size=0, max_size=3),
    odd_value,
)
shape = st.one_of(
    st.fixed_dictionaries(
        {"label": text, "points": st.lists(st.tuples(finite, finite).map(list), min_size=3, max_size=12)},
        optional={"shape_type": st.just("polygon"), "group_id": st.one_of(st.none(), st.integers(0, 9))},
    ),
    st.fixed_dictionaries(
        {"label": st.one_of(text, odd_value), "points": st.one_of(st.lists(point, max_size=6), odd_value)},
        optional={
            "shape_type": st.one_of(
                st.sampled_from(["polygon", "rectangle", "circle", "point", "line", "linestrip", "mask"]),
                odd_value,
            ),
            "group_id": odd_value,
            "flags": st.one_of(
                st.dictionaries(text, st.one_of(st.booleans(), odd_value), max_size=2), odd_value
            ),
            "description": st.one_of(text, odd_value),
            "custom": odd_value,
        },
    ),
    odd_value,
)
document = st.fixed_dictionaries(
    {"shapes": st.lists(shape, max_size=6)},
    optional={"version": text, "flags": st.dictionaries(text, st.booleans(), max_size=2), "imagePath": text},
)
new_polygon = st.lists(
    st.tuples(st.floats(0, 160, allow_nan=False), st.floats(0, 120, allow_nan=False)).map(list),
    min_size=3,
    max_size=10,
)


class EditorSession(RuleBasedStateMachine):
    """One image, edited through the HTTP API as the page does (open, add, change, delete, save with the
    version it read), while another tool rewrites the file now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.client = TestClient(self.app, base_url="http://127.0.0.1:8000")
        self.path = self.store.image_dir / "img0.json"
        self.path.unlink(missing_ok=True)
        self.opened: dict | None = None
        self.shapes: list = []
        self.touched: set[int] = set()

    def _ok(self, r) -> None:
        assert r.status_code < 500, r.text[:300]

    @rule(doc=document)
    def another_tool_writes_the_file(self, doc):
        self.path.write_text(json.dumps(doc))

    @rule()
    def open_image(self):
        r = self.client.get("/api/annotations/img0.png")
        self._ok(r)
        assert r.status_code == 200
        self.opened = r.json()
        self.shapes = list(self.opened["shapes"])
        self.touched = set()
        self.on_disk = (
            json.loads(self.path.read_text()) if self.path.is_file() and not self.opened["error"] else None
        )

    @precondition(lambda self: self.opened is not None)
    @rule(points=new_polygon, label=text)
    def add_polygon(self, points, label):
        self.shapes.append({"label": label, "points": points, "shape_type": "polygon"})

    @precondition(lambda self: self.opened is not None and self.shapes)
    @rule(k=st.integers(0, 50), points=new_polygon)
    def edit_polygon(self, k, points):
        k %= len(self.shapes)
        if self.shapes[k].get("shape_type") == "polygon":
            self.shapes[k] = dict(self.shapes[k], points=points)
            self.touched.add(k)

    @precondition(lambda self: self.opened is not None and self.shapes)
    @rule(k=st.integers(0, 50))
    def delete_shape(self, k):
        del self.shapes[k % len(self.shapes)]
        self.touched = {i if i < k % (len(self.shapes) + 1) else i - 1 for i in self.touched if i != k}
        self.touched.add(-1)  # indices shifted: compare by identity below only when nothing was deleted

    @precondition(lambda self: self.opened is not None)
    @rule()
    def save(self):
        body = {"shapes": self.shapes, "version": self.opened["version"], "replace_unreadable": False}
        on_disk_before = self.path.read_bytes() if self.path.is_file() else None
        r = self.client.put("/api/annotations/img0.png", json=body)
        self._ok(r)
        if r.status_code == 409 or self.opened["error"]:
            now = self.path.read_bytes() if self.path.is_file() else None
            assert now == on_disk_before  # a refused save writes nothing
            self.opened = None
            return
        assert r.status_code == 200, r.text[:300]
        saved = json.loads(self.path.read_text())["shapes"]
        assert len(saved) == len(self.shapes)
        if self.on_disk is not None and -1 not in self.touched:
            before = self.on_disk.get("shapes", [])
            for i, s in enumerate(saved):
                if i < len(before) and i not in self.touched:
                    assert repr(s) == repr(before[i]) or s == before[i], (s, before[i])
        self.opened = None

    @rule(
        box=st.tuples(odd_number, odd_number, odd_number, odd_number),
        point=st.tuples(odd_number, odd_number),
        op=st.sampled_from(["move", "alt-move", "insert", "delete", "undo", "redo", "accept"]),
        vertex=st.integers(0, 40),
        version=st.integers(0, 3),
    )
    def model_calls(self, box, point, op, vertex, version):
        """The model's routes with generated numbers: a box, a session, an operation on it."""
        big = [x if math.isfinite(x) else 1e308 for x in box]
        self._ok(self.client.post("/api/predict", json={"image": "img0.png", "box": big}))
        r = self.client.post("/api/sessions", json={"image": "img0.png", "box": big})
        self._ok(r)
        sid = r.json()["session"] if r.status_code == 200 else "none"
        xy = [v if math.isfinite(v) else -1e308 for v in point]
        body = {"version": version, "op": op, "vertex": vertex, "point": xy}
        self._ok(self.client.post(f"/api/sessions/{sid}", json=body))

    @invariant()
    def memory_is_bounded(self):
        grown = _peak_mb() - self.start_mb
        assert grown < MEMORY_GROWTH_MB, f"the process grew by {grown:.0f} MB"


def test_open_edit_save_keeps_what_the_edit_did_not_touch(tmp_path_factory):
    app = _serve_app(tmp_path_factory)
    EditorSession.app = app
    EditorSession.store = app.app.state.ctx.store
    EditorSession.start_mb = _peak_mb()
    EditorSession.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    EditorSession.TestCase().runTest()
