"""polyrnn as a Label Studio ML back end: ``polyrnn label-studio --port 9090``.

It speaks the HTTP protocol Label Studio's ML back ends speak (the one ``label_studio_ml``'s
``LabelStudioMLBase`` serves: ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``), so a
project connects to it under Settings > Model like any back end:

* ``predict``: each task's rectangles (its annotation's or prediction's ``rectanglelabels``) or, when a
  user draws a box with a smart tool, that rectangle (the request's ``context``) become ``polygonlabels``
  results in percent of the image, each with the confidence of :mod:`polyrnn.batch.annotate`;
* ``fit``: submitted polygons (webhooks ``ANNOTATION_CREATED`` / ``_UPDATED`` / ``_DELETED``) are kept in the
  work folder; ``START_TRAINING`` (the project's "Start training" button), or every ``fit_every`` new
  annotations, learns from them with :func:`polyrnn.learning.learn` (``fit_epochs`` epochs, in a background
  thread) and serves the resulting model folder under a new ``model_version`` when it beats the served model
  on a held-out slice of the annotations.

Images: a task's URL is resolved under ``images`` (``/data/local-files/?d=...``, uploads by file name), else
downloaded from Label Studio (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, as its own back ends do).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from polyrnn.data.instance import DataError, Skip, load_image
from polyrnn.formats.base import ImageBoxes
from polyrnn.formats.labelstudio import BOX_TYPES, label_studio_image, ls_box, ls_results, polygon_result
from polyrnn.integrations.label_studio_client import LabelStudioClient
from polyrnn.io import atomic_write_json

KEEP_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")  # one, or a list (import)
FORGET_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")  # LS 1.x sends the plural with a list of ids
TRAIN_EVENTS = (*KEEP_EVENTS, *FORGET_EVENTS, "START_TRAINING")

log = logging.getLogger("polyrnn.label_studio")
MAX_TASKS = 1000  # tasks in one /predict request


@dataclass(frozen=True)
class Controls:
    """What a project's labelling config names: the PolygonLabels tag (``from_name``), the Image tag it
    points at (``to_name``), the task data key holding the image URL, and the polygon labels."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


def parse_label_config(config: str) -> Controls:
    """The :class:`Controls` of a labelling config; ``ValueError`` naming what is missing."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise ValueError(f"label config is not XML ({e})") from None
    poly = next(root.iter("PolygonLabels"), None)
    if poly is None:
        raise ValueError("the label config has no <PolygonLabels> tag: polyrnn answers with polygons")
    to_name = poly.get("toName", "")
    image = next((e for e in root.iter("Image") if e.get("name") == to_name), None)
    if image is None:
        raise ValueError(f"<PolygonLabels toName={to_name!r}> names no <Image> tag")
    key = image.get("value", "$image").lstrip("$")
    labels = tuple(str(e.get("value")) for e in poly.iter("Label") if e.get("value") is not None)
    return Controls(poly.get("name", "label"), to_name, key, labels)


@dataclass
class LabelStudioBackend:
    """The back end's state: the models (loaded once), the work folder, the collected annotations.

    Args:
        work_dir: annotations collected for ``fit``, fine-tuning runs and ``state.json`` (the served mask
            weights and model version, so a restart serves the last fine-tuned model).
        images: folder where task images are found (optional; else they are downloaded).
        url, token: Label Studio's address and API key, for downloading task images.
        fit_epochs: epochs of each fine-tuning job (bounded: the job is short).
        fit_every: start a job after this many new annotations (0: only on START_TRAINING).
        fit_async: run jobs in a background thread (the webhook answers at once).
        model: a model folder (``polyrnn learn``) to serve (default: the shipped models, or the last one
            learned here).
        download_timeout: seconds a task image may take to download, in all.
    """

    work_dir: Path
    images: Path | None = None
    url: str | None = None
    token: str | None = None
    fit_epochs: int = 2
    fit_every: int = 0
    fit_async: bool = True
    model: str | None = None
    download_timeout: float = 30.0
    _annotator: Any = field(default=None, init=False, repr=False)
    _predictor: Any = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _training: threading.Thread | None = field(default=None, init=False, repr=False)
    _new: int = field(default=0, init=False)
    client: LabelStudioClient = field(init=False, repr=False)
    last_fit: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.client = LabelStudioClient(url=self.url, token=self.token, timeout=self.download_timeout)
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if state.get("model"):
            self.model = state["model"]

    # --- models ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.work_dir / "state.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @property
    def model_version(self) -> str:
        return str(self._state().get("model_version") or "polyrnn")

    def annotator(self) -> Any:
        with self._lock:
            if self._annotator is None:
                from polyrnn.batch.annotate import Annotator
                from polyrnn.learning import ModelFolder

                folder = ModelFolder.read(self.model) if self.model else None
                self._annotator = Annotator.from_weights(
                    mask_weights=str(folder.mask) if folder else None,
                    **(folder.inference() if folder else {}),
                )
            return self._annotator

    # --- images ------------------------------------------------------------------------------------
    def image_path(self, url: Any) -> Path:
        """A task image's file: found under ``images`` (nothing outside it is ever read), or downloaded from
        Label Studio's own address (:meth:`LabelStudioClient.download`; kept in the work folder). Anything
        else is one :class:`~polyrnn.data.instance.DataError`, the same whether or not such a file exists."""
        if not isinstance(url, str) or not url or len(url) > 4096:
            raise DataError("a task's image URL must be a string of at most 4096 characters")
        local = label_studio_image(url, self.images) if self.images is not None else None
        if local is not None:
            return local
        full = self.client.on_origin(url)
        if full is None:
            where = f"under --images {self.images}" if self.images is not None else "under --images (not set)"
            raise DataError(
                f"image '{url[:300]}' is not {where} and not on Label Studio's address "
                f"(LABEL_STUDIO_URL={self.url or 'not set'})"
            )
        return self.client.download(full, self.work_dir / "images")

    # --- predict -----------------------------------------------------------------------------------
    def predict(
        self, tasks: list[dict[str, Any]], *, label_config: str, context: dict[str, Any] | None = None
    ) -> list[dict[str, Any] | list[Any]]:
        """One answer per task, in order: a prediction ``{"result": [polygonlabels...], "score",
        "model_version"}``, or ``[]`` (no prediction: Label Studio stores nothing and asks again later) when
        the task has no box to trace. The boxes are the ``context``'s rectangles when given (a smart tool's
        box), else the task's own (its first annotation's, else its first prediction's). Boxes are
        ``rectanglelabels`` or ``rectangle`` results, rotated ones by their bounds (:data:`BOX_TYPES`)."""
        ctl = parse_label_config(label_config)
        return [self._predict_task(task, ctl, context) for task in tasks]

    def _predict_task(
        self, task: dict[str, Any], ctl: Controls, context: dict[str, Any] | None
    ) -> dict[str, Any] | list[Any]:
        data = task.get("data")
        url = data.get(ctl.data_key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise DataError(f"task {task.get('id')}: data has no '{ctl.data_key}' (the Image tag's value)")
        path = self.image_path(url)
        image = load_image(path)
        h, w = image.shape[:2]
        given = (context or {}).get("result") if isinstance(context, dict) else None
        source = [r for r in given if isinstance(r, dict)] if isinstance(given, list) else []
        interactive = bool(source)  # a box the user just drew with a smart tool
        source = source or ls_results(task)
        skipped: list[Skip] = []
        where = f"task {task.get('id')} result"
        boxes = [b for k, r in enumerate(source) if (b := ls_box(r, f"{where}[{k}]", skipped))]
        entry = ImageBoxes(key=str(task.get("id")), path=path, objects=boxes, normalized=True)
        pixel, bad = entry.pixel_boxes((w, h))
        if not pixel:  # nothing to trace: no prediction rather than an empty one stored under this version
            kinds = sorted({str(r.get("type")) for r in source}) or ["no results"]
            why = "; ".join(str(k) for k in [*skipped, *bad][:3])
            log.info(
                "task %s: no box to trace (%s%s); answered with no prediction. Boxes are %s results.",
                task.get("id"),
                ", ".join(kinds),
                f": {why}" if why else "",
                " or ".join(BOX_TYPES),
            )
            return []
        annotator = self.annotator()
        with self._model_lock:  # one model, several request threads
            if interactive:  # the editor's session for the box drawn (its start: the same polygon)
                traced = [self._session_start(annotator, image, b) for _, b in pixel]
            else:
                traced = annotator.annotate(image, [b for _, b in pixel])
        results: list[dict[str, Any]] = []
        for (obj, box), t in zip(pixel, traced, strict=True):
            x1, y1, x2, y2 = box
            poly = t.polygon if t.polygon is not None else np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
            label = obj.class_name if obj.class_name in ctl.labels or not ctl.labels else ctl.labels[0]
            # ids unique across calls: Label Studio merges each smart-tool answer into the annotation, where
            # a repeated id would replace the polygon that has it
            r = polygon_result(poly, label, (w, h), score=t.score, id=uuid.uuid4().hex[:10])
            results.append({**r, "from_name": ctl.from_name, "to_name": ctl.to_name})
        score = float(np.mean([r["score"] for r in results])) if results else 0.0
        return {"result": results, "score": round(score, 4), "model_version": self.model_version}

    def _session_start(self, annotator: Any, image: np.ndarray, box: tuple[float, ...]) -> Any:
        """The automatic polygon of an interactive box through a :class:`~polyrnn.session.BoxSession` (the
        code the editor and CVAT run), with the annotator's confidence."""
        from polyrnn.batch.annotate import SCORE, Traced, confidences
        from polyrnn.predictor import PolygonPredictor

        if self._predictor is None or self._predictor.model is not annotator.polygon_model:
            self._predictor = PolygonPredictor(
                annotator.polygon_model,
                mask_model=annotator.mask_model,
                start=annotator.start,
                tolerance=annotator.tolerance,
            )
        self._predictor.set_image(image)
        session = self._predictor.new_session(tuple(box))  # type: ignore[arg-type]
        enc = session.encoding
        score = confidences(enc.mask_probability(), None)[SCORE] if enc.mask_model is not None else 0.0
        return Traced(session.polygon.copy(), float(score), session.source, {})

    # --- fit ---------------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Keep submitted annotations (``ANNOTATION_CREATED``/``_UPDATED``, and ``ANNOTATIONS_CREATED`` with
        lists, as an import sends them), forget deleted ones (``ANNOTATION(S)_DELETED``: one, or a list of
        ids; a cancelled annotation is forgotten too), and fine-tune on ``START_TRAINING`` or every
        ``fit_every`` new annotations. Returns what was done. An annotation that cannot be trained on is
        refused (``ValueError`` naming the field) before anything is stored."""
        store = self.work_dir / "annotations.json"
        keep = [(k, _training_entry(d)) for k, d in webhook_annotations(event, data)]
        forget = webhook_deleted(event, data)
        with self._lock:
            kept = self._kept(store)
            for key in forget:
                kept.pop(key, None)
            for key, entry in keep:
                if entry["result"] and not entry.get("cancelled"):
                    kept[key] = {"data": entry["data"], "result": entry["result"]}
                    self._new += 1
                else:  # skipped, or every polygon removed: nothing to learn from any more
                    kept.pop(key, None)
            atomic_write_json(store, kept)
            due = event == "START_TRAINING" or (self.fit_every > 0 and self._new >= self.fit_every)
            if not due:
                return {"annotations": len(kept), "training": self.is_training()}
            if self.is_training():
                return {"annotations": len(kept), "training": True, "note": "a fine-tuning job is running"}
            self._new = 0
            job = threading.Thread(target=self._fit_job, args=(dict(kept),), daemon=True)
            self._training = job
            job.start()
        if not self.fit_async:
            job.join()
        return {"annotations": len(kept), "training": self.is_training(), "last_fit": self.last_fit}

    def fit_notified(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """:meth:`fit` for a webhook that carries no credentials (Label Studio creates the ML back end's
        webhook without any): the payload is only a notice. Each annotation it names is fetched from Label
        Studio's API with the API key, and only what Label Studio answers is kept (a deleted one: 404, is
        forgotten); ``START_TRAINING`` is never taken from it. ``PermissionError`` when it cannot be checked
        (no LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)."""
        if event == "START_TRAINING":
            raise PermissionError("START_TRAINING needs the back end's credentials")
        if not self.url or not self.token:
            raise PermissionError(
                "a webhook without credentials is only taken when polyrnn can check it with Label Studio: "
                "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        ids = [k for k, _ in webhook_annotations(event, data)] + webhook_deleted(event, data)
        fetched: list[dict[str, Any]] = []
        gone: list[str] = []
        for key in dict.fromkeys(ids):
            if not key.isdigit():
                raise ValueError(f"annotation id {key!r} is not a number")
            ann = self.client.get_json(f"/api/annotations/{key}/")
            task_id = ann.get("task") if isinstance(ann, dict) else None
            task = self.client.get_json(f"/api/tasks/{int(task_id)}/") if isinstance(task_id, int) else None
            if isinstance(ann, dict) and isinstance(task, dict):
                fetched.append({"annotation": ann, "task": task})
            else:
                gone.append(key)
        out = self.fit("ANNOTATIONS_DELETED", {"annotations": [{"id": k} for k in gone]}) if gone else {}
        if fetched:
            out = self.fit(
                "ANNOTATIONS_CREATED",
                {"annotation": [f["annotation"] for f in fetched], "task": [f["task"] for f in fetched]},
            )
        return {**out, "checked_with_label_studio": len(fetched), "gone": len(gone)}

    @staticmethod
    def _kept(store: Path) -> dict[str, Any]:
        try:
            kept = json.loads(store.read_text(encoding="utf-8")) if store.is_file() else {}
        except (OSError, ValueError):
            kept = {}
        return kept if isinstance(kept, dict) else {}

    def is_training(self) -> bool:
        return self._training is not None and self._training.is_alive()

    def _fit_job(self, kept: dict[str, Any]) -> None:
        try:
            self.last_fit = self._fine_tune(kept)
        except Exception as e:  # a failed job must not take the back end down; it is reported
            self.last_fit = {"error": f"{type(e).__name__}: {e}"}

    def _fine_tune(self, kept: dict[str, Any]) -> dict[str, Any]:
        """Learn from the kept polygons with :func:`polyrnn.learning.learn` (the one fine-tuning path:
        ``polyrnn learn`` and the editor's own learning use it too), starting from the served model; serve
        the result under a new model version when it beats the served one on its held-out slice."""
        from polyrnn.learning import LearnError, LearnOptions, ModelFolder, learn

        n = int(self._state().get("fits", 0)) + 1
        skipped: list[str] = []
        insts = self._instances(kept, skipped)
        if not insts:
            return {"error": "no polygon annotation with a readable image to train on", "skipped": skipped}
        start = ModelFolder.read(self.model) if self.model else None
        out = self.work_dir / "models" / f"fit-{n}"
        options = LearnOptions(mask_epochs=self.fit_epochs, refiner_epochs=self.fit_epochs, corrections=3)
        try:
            report = learn(insts, out=out, start=start, options=options, source="label-studio", log=log.info)
        except LearnError as e:
            return {"error": str(e), "instances": len(insts), "skipped": skipped}
        figures = {"held_out": report["held_out"], "instances": len(insts), "skipped": skipped}
        if not report["accepted"]:
            return {"refused": "not better than the served model on the held-out annotations", **figures}
        version = f"polyrnn-fit-{n}"
        with self._lock:
            self.model, self._annotator = str(out), None
            atomic_write_json(
                self.work_dir / "state.json", {"model": str(out), "model_version": version, "fits": n}
            )
        return {"model_version": version, "model": str(out), **figures}

    def _instances(self, kept: dict[str, Any], skipped: list[str]) -> list[Any]:
        """The kept annotations' polygons as instances on their images (found or downloaded as for a
        prediction). An entry that cannot be used (its image is gone, or it was stored before entries were
        checked) is left out with its reason in ``skipped``."""
        from polyrnn.data.common import image_size
        from polyrnn.data.instance import Instance

        insts: list[Instance] = []
        for key, item in kept.items():
            try:
                entry = _training_entry(
                    {"annotation": {"result": item["result"]}, "task": {"data": item["data"]}}
                )
                url = next((v for v in entry["data"].values() if isinstance(v, str)), "")
                path = self.image_path(url)
                w, h = image_size(path)
            except (DataError, ValueError, KeyError, TypeError) as e:  # stored before entries were checked
                skipped.append(f"annotation {key}: {e}")
                continue
            for r in entry["result"]:
                pts = np.asarray(r["value"]["points"], dtype=np.float64) / 100.0 * (w, h)
                x, y = pts.min(axis=0)
                bw, bh = pts.max(axis=0) - (x, y)
                label = r["value"]["polygonlabels"][0]
                insts.append(Instance(path, (w, h), label, (float(x), float(y), float(bw), float(bh)), [pts]))
        return insts


def _training_entry(data: dict[str, Any]) -> dict[str, Any]:
    """``{"data": task data, "result": [polygonlabels results]}`` of a webhook's annotation, checked: the
    task's ``data`` an object with an image URL, each polygon 3 to 100,000 finite points in 0..100 % with
    a text label. ``ValueError`` naming the field otherwise."""
    ann, task = data.get("annotation"), data.get("task")
    if not isinstance(ann, dict) or not isinstance(ann.get("result", []), list):
        raise ValueError("annotation.result must be a list of results")
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("task.data must be an object holding the image URL")
    if not any(isinstance(v, str) and v for v in task["data"].values()):
        raise ValueError("task.data holds no image URL")
    polys = []
    for k, r in enumerate(ann.get("result") or []):
        if not isinstance(r, dict) or r.get("type") != "polygonlabels":
            continue
        where = f"annotation.result[{k}].value"
        v = r.get("value")
        if not isinstance(v, dict):
            raise ValueError(f"{where} must be an object")
        pts = v.get("points")
        if not isinstance(pts, list) or not 3 <= len(pts) <= 100_000:
            raise ValueError(f"{where}.points must hold 3 to 100000 points")
        for p in pts:
            ok = isinstance(p, list) and len(p) == 2
            if not ok or not all(
                isinstance(c, int | float) and math.isfinite(c) and -1 <= c <= 101 for c in p
            ):
                raise ValueError(f"{where}.points must be [x, y] numbers in 0..100 (percent of the image)")
        labels = v.get("polygonlabels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{where}.polygonlabels must be a list of labels")
        polys.append(r)
    return {"data": task["data"], "result": polys, "cancelled": bool(ann.get("was_cancelled"))}


def webhook_annotations(event: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(annotation id, ``{"annotation", "task"}``) of each annotation a keep event carries: one
    (``ANNOTATION_CREATED``/``_UPDATED``), or the lists of ``ANNOTATIONS_CREATED`` (annotations and their
    tasks, in the same order; paired by task id where the lists differ). ``ValueError`` for a bad one."""
    if event not in KEEP_EVENTS:
        return []
    anns, tasks = data.get("annotation"), data.get("task")
    if event != "ANNOTATIONS_CREATED":
        anns, tasks = [anns], [tasks]
    if not isinstance(anns, list) or not isinstance(tasks, list):
        raise ValueError(f"{event}: annotation and task must be lists")
    if len(anns) > 10_000:
        raise ValueError(f"{event}: at most 10000 annotations in one webhook")
    by_id = {t.get("id"): t for t in tasks if isinstance(t, dict) and "id" in t}
    out = []
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise ValueError(f"{event}: annotation[{k}] must be an object")
        task = tasks[k] if len(tasks) == len(anns) else by_id.get(ann.get("task"))
        task = task if isinstance(task, dict) else {}
        key = str(ann.get("id", task.get("id")))[:100]
        out.append((key, {"annotation": ann, "task": task}))
    return out


def webhook_deleted(event: str, data: dict[str, Any]) -> list[str]:
    """The ids of the annotations a delete event names: ``ANNOTATIONS_DELETED``'s ``annotations`` list of
    ``{"id"}``, or an ``ANNOTATION_DELETED``'s annotation."""
    if event not in FORGET_EVENTS:
        return []
    items = data.get("annotations") if event == "ANNOTATIONS_DELETED" else [data.get("annotation")]
    if not isinstance(items, list) or len(items) > 100_000:
        raise ValueError(f"{event}: annotations must be a list of at most 100000 {{id}}")
    return [str(a["id"])[:100] for a in items if isinstance(a, dict) and "id" in a]


class _Setup(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_: str = Field(default="", alias="schema", max_length=1_000_000)


class _Predict(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_TASKS)
    label_config: str = Field(default="", max_length=1_000_000)
    params: dict[str, Any] = Field(default_factory=dict)


class _Webhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str = Field(default="", max_length=100)
    annotation: dict[str, Any] | list[dict[str, Any]] | None = None  # a list: ANNOTATIONS_CREATED
    task: dict[str, Any] | list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None  # ANNOTATIONS_DELETED: [{"id": ...}]


def _basic_auth(user: str, password: str) -> Any:
    """A middleware that answers 401 unless the request carries these HTTP Basic credentials (compared as
    bytes: any header text gets a 401, never an error). ``/webhook`` is let through with
    ``request.state.credentialed`` saying whether it had them: Label Studio creates the ML back end's
    webhook without credentials, so such a webhook is taken only as a notice checked with Label Studio
    (:meth:`LabelStudioBackend.fit_notified`)."""
    import base64

    from polyrnn.server.guard import same_secret

    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def check(request: Request, call_next: Any) -> Any:
        ok = same_secret(request.headers.get("authorization", ""), want)
        request.state.credentialed = ok
        if not ok and request.url.path != "/webhook":
            return JSONResponse(
                {"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
            )
        return await call_next(request)

    return check


def _webhook_answer(
    backend: LabelStudioBackend, action: str, data: dict[str, Any], credentialed: bool
) -> Any:
    """A webhook's answer: with credentials (or none configured) its payload is taken; without, it is a
    notice checked with Label Studio. 401 / 422 / 424 (Label Studio could not be asked) with the reason."""
    try:
        if credentialed:
            return {"result": backend.fit(action, data), "status": "ok"}
        return {"result": backend.fit_notified(action, data), "status": "ok"}
    except PermissionError as e:
        raise HTTPException(401, f"{action}: {e}") from None
    except DataError as e:  # Label Studio could not be asked: a dependency failed, not this request
        raise HTTPException(424, f"{action}: {e}") from None
    except ValueError as e:
        raise HTTPException(422, f"{action}: {e}") from None


def create_app(
    backend: LabelStudioBackend,
    *,
    basic_auth: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    max_body: int = 32 * 2**20,
) -> Any:
    """The HTTP app Label Studio calls (FastAPI), behind the same :class:`~polyrnn.server.guard.Guard` as
    ``polyrnn serve`` (``host``: the bound address, for the Host allow-list; same-origin changes; JSON bodies
    up to ``max_body``), and HTTP Basic credentials when ``basic_auth`` is given. Model calls and downloads
    run in worker threads, never on the event loop, so ``/health`` answers while they work."""
    from fastapi.exceptions import RequestValidationError

    from polyrnn.server.guard import Guard, invalid_request

    app = FastAPI(title="polyrnn Label Studio ML back end", docs_url=None, redoc_url=None)

    if basic_auth is not None:
        app.middleware("http")(_basic_auth(*basic_auth))
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "polyrnn", "model_version": backend.model_version}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return {}

    @app.post("/setup")
    def setup(body: _Setup) -> dict[str, Any]:
        try:
            parse_label_config(body.schema_)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"model_version": backend.model_version}

    @app.post("/predict")
    def predict(body: _Predict) -> dict[str, Any]:
        try:
            results = backend.predict(
                body.tasks, label_config=body.label_config, context=body.params.get("context")
            )
        except (ValueError, DataError, TypeError) as e:
            raise HTTPException(400, str(e)) from None
        return {"results": results}

    @app.post("/webhook", status_code=201)
    def webhook(body: _Webhook, request: Request) -> Any:
        if body.action not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, status_code=200)
        data = body.model_dump(exclude={"action"})
        return _webhook_answer(backend, body.action, data, getattr(request.state, "credentialed", True))

    return Guard(app, bind_host=host, max_body=max_body)


def backend_from_env(**kw: Any) -> LabelStudioBackend:
    """A back end with Label Studio's address and key from ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``."""
    return LabelStudioBackend(
        url=os.environ.get("LABEL_STUDIO_URL"), token=os.environ.get("LABEL_STUDIO_API_KEY"), **kw
    )
