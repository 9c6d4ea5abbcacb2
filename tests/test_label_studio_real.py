"""The Label Studio back end against a real Label Studio (installed from PyPI in its own virtual environment;
``.ci/run`` installs it and sets ``POLYRNN_LABEL_STUDIO`` to its ``label-studio`` command).

One story, as a team would live it: Label Studio started on loopback with the settings the README gives, a
personal access token (Label Studio's default; legacy tokens are off), a project with the README's labelling
config made through the SDK, polyrnn connected with a login (Basic auth), predictions retrieved for the
imported tasks, two smart boxes in one annotation, an annotation submitted and one deleted (Label Studio's own
webhooks, which carry no credentials), "Start training", and the new model version served."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_image

pytestmark = pytest.mark.label_studio

README = Path(__file__).resolve().parents[1] / "README.md"
USER, PASSWORD = "ci@example.com", "ci-password-123"
BASIC = ("polyrnn", "basic-secret-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, seconds: float, proc: subprocess.Popen, auth: tuple[str, str] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, auth=auth).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def readme_label_config() -> str:
    """The labelling config the README gives (its ```xml block under "Label Studio")."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"```xml\n(<View>.*?</View>)\n```", text, re.S)
    assert found, "the README gives no labelling config"
    return found.group(1)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A real Label Studio on loopback: (base URL, personal access token)."""
    import httpx

    command = os.environ.get("POLYRNN_LABEL_STUDIO") or shutil.which("label-studio")
    if not command:
        if os.environ.get("POLYRNN_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail("POLYRNN_LABEL_STUDIO is not set but POLYRNN_REQUIRE_LABEL_STUDIO=1")
        pytest.skip("needs a Label Studio (POLYRNN_LABEL_STUDIO=path/to/label-studio)")
    data = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        # the README's settings for a back end on this machine (see "Inside Label Studio")
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }
    log = open(data / "label-studio.log", "w")
    proc = subprocess.Popen(
        [
            command,
            "start",
            "--no-browser",
            "--port",
            str(port),
            "--host",
            base,
            "--internal-host",
            "127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"{base}/health", 300, proc)
        web = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
        web.get("/user/login/")
        r = web.post(
            "/user/login/",
            data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": web.cookies["csrftoken"]},
            headers={"Referer": f"{base}/user/login/"},
        )
        assert r.status_code == 302, r.text[:500]
        r = web.post(
            "/api/token/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"], "Referer": base}
        )
        assert r.status_code == 201, r.text[:500]
        yield base, r.json()["token"]
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    """``polyrnn label-studio`` with Basic auth, fetching images from Label Studio with the token."""
    base, token = label_studio
    work = tmp_path_factory.mktemp("backend")
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": base,
        "LABEL_STUDIO_API_KEY": token,
        "BASIC_AUTH_USER": BASIC[0],
        "BASIC_AUTH_PASS": BASIC[1],
    }
    log = open(work / "backend.log", "w")
    cmd = [sys.executable, "-m", "polyrnn.cli", "label-studio", "--port", str(port), "--work-dir", str(work)]
    proc = subprocess.Popen(
        [*cmd, "--fit-epochs", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait(f"http://127.0.0.1:{port}/health", 120, proc, auth=BASIC)
        yield f"http://127.0.0.1:{port}", work
    finally:
        _stop(proc)
        log.close()


def _rect(x: float, y: float, w: float, h: float, label: str = "plant") -> dict:
    return {
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": 64,
        "original_height": 48,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def _until(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"{what} within {seconds} s")


def test_a_real_label_studio_predicts_collects_and_trains_with_polyrnn(
    label_studio, backend, datasets, tmp_path
):
    import httpx
    from label_studio_sdk import LabelStudio

    base, token = label_studio
    url, work = backend
    ls = LabelStudio(base_url=base, api_key=token)
    project = ls.projects.create(title="polyrnn CI", label_config=readme_label_config())
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {_access(base, token)}"}, timeout=60)

    # two uploaded images: the back end downloads them from Label Studio with the token
    files = {
        f"file{k}": (f"{name}.jpg", write_image(tmp_path / f"{name}.jpg", seed=k).read_bytes(), "image/jpeg")
        for k, name in enumerate(("a", "b"))
    }
    r = api.post(f"/api/projects/{project.id}/import", files=files)
    assert r.status_code == 201, r.text[:500]
    tasks = sorted(ls.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == 2
    # the first task gets a box (as a first labelling pass would), the second has none
    api.post(
        f"/api/tasks/{tasks[0].id}/annotations/", json={"result": [_rect(10, 10, 50, 60)]}
    ).raise_for_status()

    ml = ls.ml.create(
        url=url,
        project=project.id,
        title="polyrnn",
        is_interactive=True,
        auth_method="BASIC_AUTH",
        basic_auth_user=BASIC[0],
        basic_auth_pass=BASIC[1],
    )
    assert ls.ml.get(ml.id).state in ("CO", "CONNECTED"), "Label Studio could not connect to the back end"

    # offline: Label Studio's own JSON export through `predict --dataset`; its predictions.json attaches to
    # the same tasks through Label Studio's import-predictions call
    from polyrnn.batch.run import predict_dataset

    export = api.get(f"/api/projects/{project.id}/export", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text[:500]
    (tmp_path / "export.json").write_bytes(export.content)
    predict_dataset(tmp_path / "export.json", tmp_path / "run", image_dir=tmp_path, log=None)
    imports = (tmp_path / "run" / "labelstudio" / "predictions.json").read_bytes()
    r = api.post(
        f"/api/projects/{project.id}/import/predictions",
        content=imports,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (200, 201), r.text[:500]
    offline = api.get("/api/predictions/", params={"project": project.id}).json()
    assert [p["task"] for p in offline] == [tasks[0].id] and offline[0]["result"][0][
        "type"
    ] == "polygonlabels"
    api.delete(f"/api/predictions/{offline[0]['id']}/").raise_for_status()

    # retrieve predictions: a polygon for the task with a box, none (not an empty one) for the other
    r = api.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project.id},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert r.status_code == 200, r.text[:500]
    preds = api.get("/api/predictions/", params={"project": project.id}).json()
    by_task = {p["task"]: p for p in preds}
    assert set(by_task) == {tasks[0].id}, preds
    (poly,) = by_task[tasks[0].id]["result"]
    assert poly["type"] == "polygonlabels" and len(poly["value"]["points"]) >= 3
    assert poly["value"]["polygonlabels"] == ["plant"]

    # two smart boxes in one annotation: two polygons with different ids
    ids = []
    for box in (_rect(5, 5, 30, 30), _rect(40, 40, 50, 50, "weed")):
        r = api.post(
            f"/api/ml/{ml.id}/interactive-annotating",
            json={"task": tasks[1].id, "context": {"result": [box]}},
        )
        assert r.status_code == 200, r.text[:500]
        (result,) = r.json()["data"]["result"]
        ids.append(result["id"])
    assert len(set(ids)) == 2

    # a submitted annotation reaches the back end through Label Studio's own webhook, which carries no
    # credentials (polyrnn fetches what it names from Label Studio)
    hooks = [
        h
        for h in api.get("/api/webhooks/", params={"project": project.id}).json()
        if h["url"] == f"{url}/webhook"
    ]
    assert len(hooks) == 1 and not hooks[0]["headers"]
    polygon = {
        "type": "polygonlabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 64,
        "original_height": 48,
        "value": {"points": [[10, 10], [60, 12], [55, 70], [12, 65]], "polygonlabels": ["plant"]},
    }
    keep = api.post(f"/api/tasks/{tasks[1].id}/annotations/", json={"result": [polygon]}).json()
    gone = api.post(f"/api/tasks/{tasks[0].id}/annotations/", json={"result": [polygon]}).json()
    store = work / "annotations.json"
    _until(
        lambda: store.is_file() and f'"{gone["id"]}"' in store.read_text(), 60, "the back end collects both"
    )
    api.delete(f"/api/annotations/{gone['id']}/").raise_for_status()
    _until(
        lambda: f'"{gone["id"]}"' not in store.read_text(), 60, "a deleted annotation leaves the training set"
    )
    assert f'"{keep["id"]}"' in store.read_text()
    api.delete(f"/api/annotations/{keep['id']}/").raise_for_status()

    # the team's own polygons: three field images uploaded and outlined (crop -> plant)
    from polyrnn.formats import load_dataset

    field = datasets / "cwfid-train"
    stems = ("002_image", "005_image", "006_image")
    upload = {
        f"f{k}": (f"{s}.jpg", (field / f"{s}.jpg").read_bytes(), "image/jpeg") for k, s in enumerate(stems)
    }
    assert api.post(f"/api/projects/{project.id}/import", files=upload).status_code == 201
    outlines = [i for i in load_dataset(field).instances if i.image_path.stem in stems]
    ids = []
    for t in ls.tasks.list(project=project.id):
        stem = next((s for s in stems if t.data["image"].endswith(f"-{s}.jpg")), None)
        if stem is None:
            continue
        result = [
            {
                "type": "polygonlabels",
                "from_name": "label",
                "to_name": "image",
                "original_width": i.width,
                "original_height": i.height,
                "value": {
                    "points": (i.largest_polygon() / (i.width, i.height) * 100).tolist(),
                    "polygonlabels": ["plant" if i.class_name == "crop" else "weed"],
                },
            }
            for i in outlines
            if i.image_path.stem == stem
        ]
        ids.append(api.post(f"/api/tasks/{t.id}/annotations/", json={"result": result}).json()["id"])
    assert len(ids) == 3
    _until(lambda: all(f'"{a}"' in store.read_text() for a in ids), 60, "the back end collects the outlines")

    # "Start training": the back end learns (one image held out) and serves a new model version
    r = api.post(f"/api/ml/{ml.id}/train")
    assert r.status_code == 200, r.text[:500]
    httpx.get(f"{url}/health", auth=BASIC)
    version = _until(
        lambda: (v := httpx.get(f"{url}/health", auth=BASIC).json()["model_version"]) != "polyrnn" and v,
        600,
        "a new model version is served",
    )
    assert version.startswith("polyrnn-fit-")
    api.post(f"/api/ml/{ml.id}/versions")  # Label Studio reads the back end's version again
    r = api.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project.id},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert r.status_code == 200
    versions = {
        p["model_version"] for p in api.get("/api/predictions/", params={"project": project.id}).json()
    }
    assert version in versions, versions


def _access(base: str, token: str) -> str:
    import httpx

    r = httpx.post(f"{base}/api/token/refresh/", json={"refresh": token}, timeout=30)
    r.raise_for_status()
    return str(r.json()["access"])
