"""polyrnn as a Label Studio ML back end: ``polyrnn label-studio --port 9090``.

It speaks the HTTP protocol Label Studio's ML back ends speak (the one ``label_studio_ml``'s
``LabelStudioMLBase`` serves: ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``), so a
project connects to it under Settings > Model like any back end:

* ``predict``: each task's rectangles (its annotation's or prediction's ``rectanglelabels``) or, when a
  user draws a box with a smart tool, that rectangle (the request's ``context``) become ``polygonlabels``
  results in percent of the image, each with the confidence of :mod:`polyrnn.batch.annotate`;
* ``fit``: submitted polygons (webhooks ``ANNOTATION_CREATED`` / ``_UPDATED`` / ``_DELETED``) are kept in the
  work folder; ``START_TRAINING`` (the project's "Start training" button), or every ``fit_every`` new
  annotations, fine-tunes the mask model on them for ``fit_epochs`` epochs (a short, bounded job in a
  background thread), writes a new checkpoint and serves it under a new ``model_version``.

Images: a task's URL is resolved under ``images`` (``/data/local-files/?d=...``, uploads by file name), else
downloaded from Label Studio (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, as its own back ends do).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import threading
import time
import urllib.parse
import urllib.request
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
from polyrnn.formats.labelstudio import label_studio_image, ls_box, ls_results, polygon_result
from polyrnn.io import atomic_write_json

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")
MAX_TASKS = 1000  # tasks in one /predict request
MAX_IMAGE_BYTES = 100 * 2**20  # a downloaded task image


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would send the API key along to wherever it leads."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        mask_weights: the mask model to serve (default: the shipped one, or the last fine-tuned).
        download_timeout: seconds a task image may take to download, in all.
    """

    work_dir: Path
    images: Path | None = None
    url: str | None = None
    token: str | None = None
    fit_epochs: int = 2
    fit_every: int = 0
    fit_async: bool = True
    mask_weights: str | None = None
    download_timeout: float = 30.0
    _annotator: Any = field(default=None, init=False, repr=False)
    _predictor: Any = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _training: threading.Thread | None = field(default=None, init=False, repr=False)
    _new: int = field(default=0, init=False)
    last_fit: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if state.get("mask_weights"):
            self.mask_weights = state["mask_weights"]

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

                self._annotator = Annotator.from_weights(mask_weights=self.mask_weights)
            return self._annotator

    # --- images ------------------------------------------------------------------------------------
    def image_path(self, url: Any) -> Path:
        """A task image's file: found under ``images`` (nothing outside it is ever read), or downloaded from
        Label Studio's own address (``url``: its origin only, http(s), :data:`MAX_IMAGE_BYTES` within
        ``download_timeout`` seconds; kept in the work folder). Anything else is one
        :class:`~polyrnn.data.instance.DataError`, the same whether or not such a file exists."""
        if not isinstance(url, str) or not url or len(url) > 4096:
            raise DataError("a task's image URL must be a string of at most 4096 characters")
        local = label_studio_image(url, self.images) if self.images is not None else None
        if local is not None:
            return local
        full = self._label_studio_url(url)
        if full is None:
            where = f"under --images {self.images}" if self.images is not None else "under --images (not set)"
            raise DataError(
                f"image '{url[:300]}' is not {where} and not on Label Studio's address "
                f"(LABEL_STUDIO_URL={self.url or 'not set'})"
            )
        return self._download(full)

    def _label_studio_url(self, url: str) -> str | None:
        """``url`` as an address on Label Studio's own origin (a relative ``/data/...`` joined to it), or
        None: another host, port or scheme, ``file:``, no LABEL_STUDIO_URL."""
        if not self.url:
            return None
        base = urllib.parse.urlsplit(self.url)
        if base.scheme not in ("http", "https") or not base.netloc:
            return None
        parsed = urllib.parse.urlsplit(url)
        if not parsed.scheme and not parsed.netloc:
            if not url.startswith("/"):
                return None
            full = urllib.parse.urlunsplit((base.scheme, base.netloc, parsed.path, parsed.query, ""))
        elif (parsed.scheme, parsed.netloc.lower()) == (base.scheme, base.netloc.lower()):
            full = url
        else:
            return None
        return full

    def _download(self, full: str) -> Path:
        """Fetch ``full`` (Label Studio's origin, checked by the caller) with the API key; no redirects (the
        key would follow them), at most :data:`MAX_IMAGE_BYTES`, ``download_timeout`` seconds in all."""
        cache = self.work_dir / "images" / hashlib.sha1(full.encode("utf-8", "surrogateescape")).hexdigest()
        if cache.is_file():
            return cache
        req = urllib.request.Request(
            full, headers={"Authorization": f"Token {self.token}"} if self.token else {}
        )
        opener = urllib.request.build_opener(_NoRedirect)
        deadline = time.monotonic() + self.download_timeout
        data = bytearray()
        try:
            with opener.open(req, timeout=min(10.0, self.download_timeout)) as r:
                if int(r.headers.get("Content-Length") or 0) > MAX_IMAGE_BYTES:
                    raise DataError(f"image '{full}' is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                while chunk := r.read1(1 << 16):
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise DataError(f"image '{full}' is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                    if time.monotonic() > deadline:
                        raise DataError(f"image '{full}' took longer than {self.download_timeout:g} s")
        except (OSError, ValueError, http.client.HTTPException) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"image '{full}' could not be downloaded ({type(e).__name__})") from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        from polyrnn.io import atomic_write_bytes

        atomic_write_bytes(cache, bytes(data))
        return cache

    # --- predict -----------------------------------------------------------------------------------
    def predict(
        self, tasks: list[dict[str, Any]], *, label_config: str, context: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One prediction per task: ``{"result": [polygonlabels...], "score", "model_version"}``; the boxes
        are the ``context``'s rectangles when given (interactive), else the task's own."""
        ctl = parse_label_config(label_config)
        return [self._predict_task(task, ctl, context) for task in tasks]

    def _predict_task(
        self, task: dict[str, Any], ctl: Controls, context: dict[str, Any] | None
    ) -> dict[str, Any]:
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
        pixel, _ = ImageBoxes(key=str(task.get("id")), path=path, objects=boxes, normalized=True).pixel_boxes(
            (w, h)
        )
        traced: list[Any] = []
        if pixel:
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
            r = polygon_result(poly, label, (w, h), score=t.score, id=f"p{len(results)}")
            results.append({**r, "from_name": ctl.from_name, "to_name": ctl.to_name})
        score = float(np.mean([r["score"] for r in results])) if results else 0.0
        return {"result": results, "score": round(score, 4), "model_version": self.model_version}

    def _session_start(self, annotator: Any, image: np.ndarray, box: tuple[float, ...]) -> Any:
        """The automatic polygon of an interactive box through a :class:`~polyrnn.session.BoxSession` (the
        code the editor and CVAT run), with the annotator's confidence."""
        from polyrnn.batch.annotate import SCORE, Traced, confidences
        from polyrnn.predictor import PolygonPredictor

        if self._predictor is None or self._predictor.model is not annotator.polygon_model:
            self._predictor = PolygonPredictor(annotator.polygon_model, mask_model=annotator.mask_model)
        self._predictor.set_image(image)
        session = self._predictor.new_session(tuple(box))  # type: ignore[arg-type]
        enc = session.encoding
        score = confidences(enc.mask_probability(), None)[SCORE] if enc.mask_model is not None else 0.0
        return Traced(session.polygon.copy(), float(score), session.source, {})

    # --- fit ---------------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Keep a submitted annotation (or forget a deleted one); fine-tune on START_TRAINING or every
        ``fit_every`` new annotations. Returns what was done. An annotation that cannot be trained on is
        refused (``ValueError`` naming the field) before anything is stored."""
        store = self.work_dir / "annotations.json"
        entry = _training_entry(data) if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") else None
        with self._lock:
            kept = self._kept(store)
            ann, task = data.get("annotation"), data.get("task")
            ann, task = ann if isinstance(ann, dict) else {}, task if isinstance(task, dict) else {}
            key = str(ann.get("id", task.get("id")))[:100]
            if event == "ANNOTATION_DELETED":
                kept.pop(key, None)
            elif entry is not None and entry["result"]:
                kept[key] = entry
                self._new += 1
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
        """Write the kept polygons as a COCO file, fine-tune the served mask model on them, serve it."""
        from polyrnn.build import default_weights
        from polyrnn.config import load_train_config
        from polyrnn.training import run_training

        n = int(self._state().get("fits", 0)) + 1
        folder = self.work_dir / "fit" / f"data-{n}"
        skipped: list[str] = []
        count = self._write_coco(kept, folder, skipped)
        if count == 0:
            return {"error": "no polygon annotation with a readable image to train on", "skipped": skipped}
        init = self.mask_weights or str(default_weights("lite-mask"))
        overrides = [
            f"data.train=[{folder / 'instances.json'}]",
            "data.val_split=0",
            f"init_weights={init}",
            f"epochs={self.fit_epochs}",
            "lr_step=0",
            f"out={self.work_dir / 'runs'}",
            f"name=fit-{n}",
            "workers=0",
        ]
        run = run_training(load_train_config("lite-mask-ft", overrides), log=lambda *_: None)
        weights = str(run / "weights" / "last.pt")
        version = f"polyrnn-fit-{n}"
        with self._lock:
            self.mask_weights, self._annotator = weights, None
            atomic_write_json(
                self.work_dir / "state.json", {"mask_weights": weights, "model_version": version, "fits": n}
            )
        return {"model_version": version, "weights": weights, "instances": count, "skipped": skipped}

    def _write_coco(self, kept: dict[str, Any], folder: Path, skipped: list[str]) -> int:
        """The kept annotations as ``folder/instances.json`` (:func:`polyrnn.formats.coco.write_coco`; the
        images stay where they are); returns the objects written. An entry that cannot be used (its image is
        gone, or it was stored before entries were checked) is left out with its reason in ``skipped``."""
        from polyrnn.data.common import image_size
        from polyrnn.data.instance import Instance
        from polyrnn.formats.coco import write_coco

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
        if insts:
            classes = sorted({i.class_name for i in insts})
            write_coco(insts, folder / "instances.json", root=folder, classes=classes, decimals=6)
        return len(insts)


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
    return {"data": task["data"], "result": polys}


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
    annotation: dict[str, Any] | None = None
    task: dict[str, Any] | None = None


def _basic_auth(user: str, password: str) -> Any:
    """A middleware that answers 401 unless the request carries these HTTP Basic credentials (compared as
    bytes: any header text gets a 401, never an error)."""
    import base64

    from polyrnn.server.guard import same_secret

    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def check(request: Request, call_next: Any) -> Any:
        if not same_secret(request.headers.get("authorization", ""), want):
            return JSONResponse(
                {"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
            )
        return await call_next(request)

    return check


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
    def webhook(body: _Webhook) -> Any:
        if body.action not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, status_code=200)
        data = body.model_dump(exclude={"action"})
        try:
            return {"result": backend.fit(body.action, data), "status": "ok"}
        except ValueError as e:
            raise HTTPException(422, f"{body.action}: {e}") from None

    return Guard(app, bind_host=host, max_body=max_body)


def backend_from_env(**kw: Any) -> LabelStudioBackend:
    """A back end with Label Studio's address and key from ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``."""
    return LabelStudioBackend(
        url=os.environ.get("LABEL_STUDIO_URL"), token=os.environ.get("LABEL_STUDIO_API_KEY"), **kw
    )
