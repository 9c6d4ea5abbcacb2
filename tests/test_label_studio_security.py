"""The Label Studio back end is as safe as ``polyrnn serve``: only files under --images, downloads only from
Label Studio's own address (and its key nowhere else), the same guard, work off the event loop, 4xx for
every malformed body, webhook entries checked on receipt."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import write_image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polyrnn.data.instance import DataError  # noqa: E402
from polyrnn.integrations.label_studio import LabelStudioBackend, create_app  # noqa: E402

LOCAL = "http://127.0.0.1:9090"
CONFIG = """<View><Image name="img" value="$image"/>
<PolygonLabels name="label" toName="img"><Label value="thing"/></PolygonLabels></View>"""


class _Recorder(BaseHTTPRequestHandler):
    """Serves a PNG (slowly when asked) and records the Authorization header of every request."""

    seen: list[tuple[int, str | None]] = []
    body = b""
    slow = False
    redirect_to = "/"

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append((self.server.server_address[1], self.headers.get("Authorization")))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            if self.slow:
                for b in self.body[:20]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                self.wfile.write(self.body)
        except OSError:  # the client gave up (as it should with a slow server)
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def listeners(tmp_path):
    """Two HTTP servers: Label Studio's address and another one (an attacker's)."""
    _Recorder.seen = []
    _Recorder.body = write_image(tmp_path / "served.png").read_bytes()
    _Recorder.slow = False
    _Recorder.redirect_to = "/"
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()


@pytest.fixture
def folders(tmp_path):
    images = tmp_path / "images"
    write_image(images / "inside.png")
    secret = write_image(tmp_path / "outside" / "secret.png")
    (images / "link.png").symlink_to(secret)
    return images, secret


def test_only_files_under_images_are_read(tmp_path, folders):
    images, secret = folders
    backend = LabelStudioBackend(work_dir=tmp_path / "work", images=images)
    assert backend.image_path("/data/local-files/?d=images/inside.png") == images / "inside.png"
    messages = set()
    for url in (
        "/data/local-files/?d=../outside/secret.png",
        f"/data/local-files/?d={secret}",
        str(secret),
        "../outside/secret.png",
        f"file://{secret}",
        "/data/local-files/?d=link.png",
        "/etc/passwd",
        "/etc/no-such-file",
    ):
        with pytest.raises(DataError) as e:
            backend.image_path(url)
        messages.add(str(e.value).replace(url[:300], "URL"))
    assert len(messages) == 1, messages  # one error: it never tells whether a file exists


def test_downloads_only_from_label_studio_and_the_key_goes_nowhere_else(tmp_path, listeners):
    ls_url, other = listeners
    backend = LabelStudioBackend(work_dir=tmp_path / "work", url=ls_url, token="KEY", download_timeout=5)
    assert backend.image_path("/data/upload/1/a.png").read_bytes() == _Recorder.body
    assert backend.image_path(ls_url + "/data/upload/1/b.png").is_file()
    ls_port, other_port = (int(u.rsplit(":", 1)[1]) for u in (ls_url, other))
    for url in (other + "/x.png", f"ftp://127.0.0.1:{ls_port}/x.png", "//evil.example/x.png", "x.png"):
        with pytest.raises(DataError):
            backend.image_path(url)
    # a redirect from Label Studio's address to another is not followed (the key would go along)
    _Recorder.redirect_to = other + "/x.png"
    with pytest.raises(DataError):
        backend.client.download(ls_url + "/redirect", tmp_path / "cache")
    assert all(port == ls_port for port, _ in _Recorder.seen)
    assert all(auth == "Token KEY" for _, auth in _Recorder.seen)
    assert not [s for s in _Recorder.seen if s[0] == other_port]


def test_a_slow_download_is_cut_off(tmp_path, listeners):
    ls_url, _ = listeners
    _Recorder.slow = True
    backend = LabelStudioBackend(work_dir=tmp_path / "work", url=ls_url, download_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="longer than"):
        backend.image_path("/data/upload/1/slow.png")
    assert time.monotonic() - t0 < 5


@pytest.fixture
def client(tmp_path, folders):
    images, _ = folders
    backend = LabelStudioBackend(work_dir=tmp_path / "work", images=images, fit_async=False)
    return TestClient(create_app(backend), base_url=LOCAL), backend


def test_the_same_guard_as_serve(client):
    c, backend = client
    hook = json.dumps({"action": "START_TRAINING"})
    assert c.post("/webhook", content=hook, headers={"Content-Type": "text/plain"}).status_code == 415
    r = c.post(
        "/webhook",
        content=hook,
        headers={"Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400
    assert not (backend.work_dir / "fit").exists()
    assert c.get("/health").status_code == 200


def test_basic_auth_with_any_credentials_is_a_401_never_a_500(tmp_path):
    backend = LabelStudioBackend(work_dir=tmp_path / "work")
    c = TestClient(create_app(backend, basic_auth=("user", "pässword")), base_url=LOCAL)
    for value in ("Basic dXNlcjpwYXNz", "Basic " + "ü" * 10, "Bearer \xff"):
        r = c.get("/health", headers={"Authorization": value.encode("utf-8")})
        assert r.status_code == 401
    import base64

    good = "Basic " + base64.b64encode("user:pässword".encode()).decode()
    assert c.get("/health", headers={"Authorization": good}).status_code == 200


MALFORMED = [
    ("/predict", b'{"tasks": ['),
    ("/predict", b"[1]"),
    ("/predict", b'{"tasks": [5]}'),
    ("/predict", b'{"tasks": "x", "label_config": ""}'),
    (
        "/predict",
        b'{"tasks": [{"id": 1, "data": "x"}], "label_config": "'
        + CONFIG.replace('"', '\\"').encode()
        + b'"}',
    ),
    ("/predict", b'{"tasks": [{"id": 1, "data": {"image": 5}}], "label_config": "<View/>"}'),
    ("/predict", b'{"tasks": [], "label_config": 5}'),
    ("/predict", b'{"tasks": [], "params": [1]}'),
    (
        "/predict",
        b'{"tasks": [{"data": {"image": "/data/local-files/?d=inside.png"}}], "label_config": "<<<"}',
    ),
    ("/setup", b'{"schema": 5}'),
    ("/setup", b"null"),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "annotation": [1]}'),
    (
        "/webhook",
        b'{"action": "ANNOTATION_CREATED", "annotation": {"result": 5}, "task": {"data": {"image": "a"}}}',
    ),
    ("/webhook", b'{"action": 5}'),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "task": {"data": "x"}, "annotation": {"result": []}}'),
    ("/webhook", b"\xff\xfe"),
]


@pytest.mark.parametrize("path,body", MALFORMED)
def test_malformed_bodies_get_4xx(client, path, body):
    c, _ = client
    r = c.post(path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])


def test_rectangle_values_of_any_type_get_4xx_or_are_skipped(client):
    c, _ = client
    for value in (
        5,
        [],
        {"x": "a", "y": 1, "width": 2, "height": 3},
        {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": 5},
        {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": "x"},
    ):
        task = {
            "id": 1,
            "data": {"image": "/data/local-files/?d=inside.png"},
            "annotations": [{"result": [{"type": "rectanglelabels", "value": value}]}],
        }
        r = c.post("/predict", json={"tasks": [task], "label_config": CONFIG})
        assert r.status_code < 500, r.text[:200]


def _polygon(points) -> dict:
    return {"type": "polygonlabels", "value": {"points": points, "polygonlabels": ["thing"]}}


def test_bad_webhook_entries_are_refused_and_old_ones_skipped_in_a_fit(client):
    c, backend = client
    square = [[10, 10], [60, 10], [60, 60], [10, 60]]
    task = {"id": 3, "data": {"image": "/data/local-files/?d=inside.png"}}
    for bad in (
        {
            "action": "ANNOTATION_CREATED",
            "task": {"id": 3, "data": "x"},
            "annotation": {"id": 1, "result": [_polygon(square)]},
        },
        {
            "action": "ANNOTATION_CREATED",
            "task": task,
            "annotation": {"id": 2, "result": [_polygon([[1, 2], [3, "x"], [4, 5]])]},
        },
        {
            "action": "ANNOTATION_CREATED",
            "task": task,
            "annotation": {"id": 4, "result": [_polygon([[1, 2], [3, 4]])]},
        },
    ):
        r = c.post("/webhook", json=bad)
        assert r.status_code == 422, r.text
    nan = json.dumps(
        {
            "action": "ANNOTATION_CREATED",
            "task": {"data": {"image": "a.png"}},
            "annotation": {"id": 5, "result": [_polygon([[1, 2], [3, float("nan")], [4, 5]])]},
        }
    ).encode()  # NaN: Python's json writes it, and reads it back
    assert c.post("/webhook", content=nan, headers={"Content-Type": "application/json"}).status_code == 422
    assert (
        not (backend.work_dir / "annotations.json").is_file()
        or json.loads((backend.work_dir / "annotations.json").read_text()) == {}
    )
    # an entry stored by an earlier version is skipped in the fit and reported, not fatal
    (backend.work_dir / "annotations.json").write_text(json.dumps({"9": {"data": "x", "result": [5]}}))
    r = c.post("/webhook", json={"action": "START_TRAINING"})
    assert r.status_code == 201
    fit = r.json()["result"]["last_fit"]
    assert "no polygon annotation" in fit["error"] and fit["skipped"] and "annotation 9" in fit["skipped"][0]


def test_health_answers_while_predict_waits_on_a_slow_image(tmp_path, listeners):
    from polyrnn.server.http import running

    ls_url, _ = listeners
    _Recorder.slow = True
    backend = LabelStudioBackend(work_dir=tmp_path / "work", url=ls_url, download_timeout=6)
    with running(create_app(backend)) as url:
        body = json.dumps(
            {
                "tasks": [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(3)],
                "label_config": CONFIG,
            }
        ).encode()

        def slow_predict():
            req = urllib.request.Request(
                url + "/predict", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                urllib.request.urlopen(req, timeout=30).read()
            except OSError:
                pass

        worker = threading.Thread(target=slow_predict)
        worker.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            assert r.status == 200
        assert time.monotonic() - t0 < 1.0
        worker.join(timeout=40)


def test_too_many_tasks_are_refused(client):
    c, _ = client
    tasks = [{"id": i, "data": {"image": "x"}} for i in range(1001)]
    assert c.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).status_code == 422


def test_the_command_warns_when_it_serves_the_network_without_credentials(tmp_path, monkeypatch, capsys):
    import polyrnn.integrations.label_studio as ls
    import polyrnn.server.http as http
    from polyrnn.cli import main

    monkeypatch.setattr(http, "serve", lambda app, host, port: None)
    monkeypatch.setattr(ls.LabelStudioBackend, "annotator", lambda self: None)
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    assert main(["label-studio", "--host", "0.0.0.0", "--work-dir", str(tmp_path / "w")]) == 0
    assert "without BASIC_AUTH_USER" in capsys.readouterr().err
    assert Path(tmp_path / "w").is_dir()
