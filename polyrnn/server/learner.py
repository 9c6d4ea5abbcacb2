"""The editor learns by itself: after every ``every`` newly accepted polygons of the folder, a background
process (low priority, one thread) runs :func:`polyrnn.learning.learn` on all of them, starting from the
model in use; a result that beats it on its held-out slice becomes the next version in
``<folder>/.polyrnn/models/`` (:class:`~polyrnn.learning.ModelVersions`) and is swapped in: the sessions
already open finish with the model they started with, the next box uses the new one.

One thread of the server owns the learner (:meth:`Learner.run`): it counts the accepted polygons every few
seconds, starts a job when one is due and none is running, and collects the job's report.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from polyrnn.learning import LearnOptions, ModelFolder, ModelVersions


def _job(
    folder: str, image_root: str, exclude: str, out: str, start: str | None, options: dict, report: str
) -> None:
    """The learning process: nice, one thread, the folder's polygons -> ``out`` (a version) or nothing;
    its report (or error) as JSON in ``report``."""
    try:
        os.nice(10)
    except OSError:  # not allowed to lower it: run as is
        pass
    import torch

    torch.set_num_threads(1)
    from polyrnn.formats.labelme import read_labelme
    from polyrnn.io import atomic_write_json
    from polyrnn.learning import LearnError, learn

    try:
        ds = read_labelme(Path(folder), exclude=[Path(exclude)], image_root=Path(image_root))
        result = learn(
            ds.instances,
            out=out,
            start=ModelFolder.read(start) if start else None,
            options=LearnOptions(**options),
            source=folder,
            log=lambda _m: None,
        )
    except (LearnError, ValueError, OSError, RuntimeError) as e:
        result = {"accepted": False, "error": f"{type(e).__name__}: {e}"}
    atomic_write_json(Path(report), result)


class Learner:
    """Learning for one annotation folder (the store's): counts accepted polygons, runs jobs, keeps versions.

    Args:
        store: the editor's :class:`~polyrnn.server.store.AnnotationStore`.
        every: learn after this many newly accepted polygons (counted since the last job started).
        options: what each job trains (:class:`~polyrnn.learning.LearnOptions`).
        on_model: called with the new model folder (or None: the shipped models) and where its polygons
            start (``auto`` or ``box``) when the one in use changes.
        check_at: with the shipped models, after this many accepted polygons compare their automatic polygon
            with the box on them (:func:`~polyrnn.learning.choose_start`): where the box wins, polygons start
            from the box until a learned model beats it.
        poll: seconds between two looks at the folder and the job.
    """

    def __init__(
        self,
        *,
        store: Any,
        every: int,
        options: LearnOptions,
        on_model: Callable[[ModelFolder | None, str], None],
        poll: float = 2.0,
        check_at: int = 8,
    ) -> None:
        self.store = store
        self.every = every
        self.options = options
        self.on_model = on_model
        self.poll = poll
        self.versions = ModelVersions(Path(store.state_dir) / "models")
        self._proc: Any = None
        self._pending: tuple[str, Path] | None = None  # (version name, report file) of the running job
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts: dict[str, tuple[tuple[int, int], int]] = {}  # name -> ((mtime, size), shapes)
        self._current = self.versions.current_name()
        self.last: dict[str, Any] = {}
        self.learned_at = self._learned_at()
        self.check_at = check_at
        current = self.versions.current()
        self.start = current.start if current is not None else "auto"
        self.domain: dict[str, Any] = {}  # the shipped models' check on this folder's polygons

    # --- what the page shows -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        current = self.versions.current()
        return {
            "model": self.versions.current_name(),
            "learned_from": current.info.get("learned_from", {}).get("instances") if current else 0,
            "learning": self.is_learning(),
            "accepted": self.accepted(),
            "next_at": self.learned_at + self.every,
            "every": self.every,
            "start": self.start,
            "domain": self.domain,
            "last": self.last,
        }

    def is_learning(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def accepted(self) -> int:
        """Shapes saved in the folder (what the tool has accepted). A file is read again only when its size or
        modification time changed: a poll of a large folder is a ``stat`` per image."""
        total = 0
        for name in self.store.names:
            try:
                st = self.store.annotation_file(name).stat()
            except OSError:  # not annotated yet (or gone)
                self._counts.pop(name, None)
                continue
            key = (st.st_mtime_ns, st.st_size)
            hit = self._counts.get(name)
            if hit is None or hit[0] != key:
                hit = (key, self.store.count(name))
                self._counts[name] = hit
            total += hit[1]
        return total

    def _learned_at(self) -> int:
        current = self.versions.current()
        return int(current.info.get("learned_from", {}).get("instances", 0)) if current else 0

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Look at the folder and the job every ``poll`` seconds until :meth:`stop`."""
        while not self._stop.wait(self.poll):
            try:
                self.step()
            except Exception as e:  # the editor must go on whatever a job does; the page shows it
                self.last = {"error": f"{type(e).__name__}: {e}"}

    def stop(self) -> None:
        self._stop.set()
        if self.is_learning():
            self._proc.terminate()

    def step(self) -> None:
        """One look: a version changed by ``polyrnn models --use`` is put in use; a finished job's result
        is taken; a job is started when one is due."""
        with self._lock:
            name = self.versions.current_name()
            if name != self._current:  # rolled back (or forward) from the command line
                self._current = name
                folder = self.versions.current()
                self.start = folder.start if folder is not None else "auto"
                self.on_model(folder, self.start)
            if name == "shipped" and not self.domain and self.accepted() >= self.check_at:
                self._check_domain()
            if self._pending is not None and not self.is_learning():
                self._finish()
            if self._pending is None and self.accepted() >= self.learned_at + self.every:
                self._start()

    def _start(self) -> None:
        name = self.versions.next_name()
        self.versions.root.mkdir(parents=True, exist_ok=True)
        report = self.versions.root / f".{name}.report.json"
        report.unlink(missing_ok=True)
        current = self.versions.current()
        self.learned_at = self.accepted()
        args = (
            str(self.store.root),
            str(self.store.image_dir),
            str(self.store.state_dir),
            str(self.versions.root / name),
            str(current.path) if current else None,
            asdict(self.options),
            str(report),
        )
        self._proc = mp.get_context("spawn").Process(target=_job, args=args, daemon=True)
        self._proc.start()
        self._pending = (name, report)
        self.last = {"started": time.time(), "version": name, "polygons": self.learned_at}

    def _finish(self) -> None:
        assert self._pending is not None
        name, report = self._pending
        self._pending, self._proc = None, None
        try:
            result = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"accepted": False, "error": "the learning process ended without a report"}
        report.unlink(missing_ok=True)
        held = result.get("held_out", {})
        self.last = {
            "version": name,
            "accepted": bool(result.get("accepted")),
            "error": result.get("error"),
            "before": held.get("before", {}).get("automatic"),
            "after": held.get("after", {}).get("automatic"),
            "seconds": result.get("seconds"),
            "finished": time.time(),
        }
        if result.get("accepted") and (self.versions.root / name).is_dir():
            self.versions.use(name)
            self._current = name
            folder = self.versions.current()
            self.start = folder.start if folder is not None else "auto"
            self.on_model(folder, self.start)

    def _check_domain(self, limit: int = 60) -> None:
        """The shipped models on (at most ``limit`` of) this folder's accepted polygons: their automatic
        polygon against the box. Where the box wins, polygons start from the box (``start``)."""
        from polyrnn.formats.labelme import read_labelme
        from polyrnn.learning import choose_start, held_out_figures, shipped_files

        ds = read_labelme(
            Path(self.store.root), exclude=[Path(self.store.state_dir)], image_root=self.store.image_dir
        )
        insts = [i for i in ds.instances if not i.iscrowd][:limit]
        if not insts:
            self.domain = {"instances": 0}
            return
        mask, refiner = shipped_files()
        figures = held_out_figures(mask, refiner, insts, corrections=0)
        self.domain = {k: figures[k] for k in ("instances", "automatic", "box")}
        start = choose_start(figures)
        if start != self.start:
            self.start = start
            self.on_model(None, start)
