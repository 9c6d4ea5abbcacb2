"""The ``polyrnn`` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyrnn import formats
from polyrnn.config import INFERENCE, MASK_FLIP, REJOIN
from polyrnn.data import DataError
from polyrnn.formats import load_dataset
from polyrnn.runtime import PRECISION_ENV, PRECISIONS, THREADS_ENV, set_precision, set_threads

if TYPE_CHECKING:
    from polyrnn.evaluation.evaluate import EvalOptions


class CLIError(Exception):
    """A user-facing error: printed as ``polyrnn: error: ...`` with exit code 2."""


def _focus_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--focus",
        action=argparse.BooleanOptionalAction,
        default=INFERENCE.focus,
        help="after each correction, the refiner's focus pass redraws a window around it finer (default: on; "
        "--no-focus: corrections about 5x faster on a CPU, a little less accurate)",
    )


def _number(kind: type, lo: float, hi: float) -> Any:
    """An argparse ``type``: a finite ``kind`` (int or float) from ``lo`` to ``hi``, else a usage error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"{text} is not in {lo:g}..{hi:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``polyrnn predict: error: ... (--help for usage)``), exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_dataset_args(p: argparse.ArgumentParser, *, min_size_default: float = 0.0) -> None:
    p.add_argument(
        "dataset", help="dataset path: COCO JSON or folder, YOLO root, LabelMe / Cityscapes / mask folder"
    )
    p.add_argument(
        "--format",
        choices=formats.DATASET_FORMATS,
        default=None,
        help="dataset format (detected when omitted)",
    )
    p.add_argument(
        "--min-size",
        type=_number(float, 0, 1e6),
        default=min_size_default,
        metavar="PX",
        help="keep instances whose box's longer side is at least PX pixels",
    )
    p.add_argument("--classes", default=None, help="comma-separated class names to keep")
    p.add_argument("--include-crowd", action="store_true", help="keep crowd regions (skipped by default)")


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    classes = set(c.strip() for c in args.classes.split(",")) if args.classes else None
    return load_dataset(
        args.dataset, args.format, include_crowd=args.include_crowd, min_size=args.min_size, classes=classes
    )


# --- data ------------------------------------------------------------------------------------------
def cmd_data_stats(args: argparse.Namespace) -> int:
    from polyrnn.data.stats import dataset_stats, format_stats

    stats = dataset_stats(_load(args))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from polyrnn.data.stats import render_instance, save_png

    ds = _load(args)
    if not 0 <= args.index < len(ds):
        raise CLIError(f"--index {args.index} out of range: the dataset has {len(ds)} instances")
    inst = ds.instances[args.index]
    save_png(args.out, render_instance(inst, context=args.context, grid_size=args.grid_size))
    print(f"wrote {args.out}: instance {args.index} ({inst.class_name}, {inst.source})")
    return 0


def _grid_sizes(text: str) -> list[int]:
    """Grid sizes from "28,56,112": whole numbers from 2 to 1024."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or not all(2 <= d <= 1024 for d in sizes):
        raise CLIError(f"--grid-sizes must be whole numbers from 2 to 1024, comma-separated, got '{text}'")
    return sizes


def cmd_data_ceiling(args: argparse.Namespace) -> int:
    from polyrnn.data.ceiling import ceiling

    ds = _load(args)
    sizes = _grid_sizes(args.grid_sizes)
    rows = {
        str(d): ceiling(ds.instances, grid_size=d, context=args.context, max_len=args.max_len) for d in sizes
    }
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "instances": len(ds),
                    "context": args.context,
                    "max_len": args.max_len,
                    "mean_iou": rows,
                },
                indent=2,
            )
        )
    else:
        print(
            f"quantisation ceiling on {args.dataset}: {len(ds)} instances, largest part, "
            f"{args.context:.0%} context, max {args.max_len} vertices"
        )
        for d, v in rows.items():
            print(f"  D = {d:>4}: mean IoU {100 * v:.2f} %")
    return 0


# --- model ----------------------------------------------------------------------------------------
def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise CLIError(f"--box must be x1,y1,x2,y2 in pixels, got '{text}'")
    return vals  # type: ignore[return-value]


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding it: the cheap check before a
    model loads (an image over the pixel limit is refused here too)."""
    from polyrnn.data.common import image_size
    from polyrnn.data.instance import MAX_PIXELS

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{path}: no such image file")
    w, h = image_size(p)
    if w * h > MAX_PIXELS:
        raise CLIError(f"{path}: {w}x{h} pixels, more than polyrnn decodes ({MAX_PIXELS:,})")
    return w, h


def _check_weights(*paths: str | None) -> None:
    for path in paths:
        if path is not None and path != "none" and not Path(path).is_file():
            raise CLIError(f"{path}: no such weights file")


def _check_box_in_image(box: tuple[float, float, float, float], size: tuple[int, int]) -> None:
    x1, y1, x2, y2 = box
    w, h = size
    if not all(math.isfinite(v) for v in box) or x2 <= x1 or y2 <= y1:
        raise CLIError(f"--box {x1:g},{y1:g},{x2:g},{y2:g}: needs x2 > x1 and y2 > y1")
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise CLIError(f"--box {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {w}x{h} image")
    from polyrnn.geometry import within_image

    try:  # a little past the edge is clipped; far past it is a typo
        within_image([(x1, y1), (x2, y2)], size, what=f"--box {x1:g},{y1:g},{x2:g},{y2:g}")
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_predict_dataset(args: argparse.Namespace) -> int:
    from polyrnn.batch.run import Shard, merge, predict_dataset
    from polyrnn.runtime import resolve_threads

    if args.image == "merge":
        if not args.dir:
            raise CLIError("polyrnn predict merge DIR: give the output folder")
        summary = merge(Path(args.dir), review_below=args.review_below, allow_partial=args.allow_partial)
        _print_predict_summary(summary)
        return 0
    if args.image or args.box:
        raise CLIError("--dataset traces a whole dataset: give no IMAGE and no --box")
    if not args.out:
        raise CLIError("--dataset needs --out DIR (where the shards and outputs go)")
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    _check_weights(args.weights, args.mask_weights)
    result = predict_dataset(
        args.dataset,
        args.out,
        format=args.format,
        image_dir=args.images,
        weights=args.weights,
        mask_weights=args.mask_weights,
        variant=args.variant,
        shard=Shard.parse(args.shard),
        workers=args.workers,
        threads=resolve_threads(args.threads),
        runner=args.runner,
        ray_address=args.ray_address,
        review_below=args.review_below,
        allow_outside=args.allow_outside_images,
        start=getattr(args, "start", "auto"),
        tolerance=getattr(args, "tolerance", INFERENCE.tolerance),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    rate = result["objects"] / result["seconds"] if result["seconds"] else 0.0
    print(
        f"shard {result['shard']}: {result['images']} images, {result['objects']} objects in "
        f"{result['seconds']:.1f} s ({rate:.2f} objects/s); {result['errors']} unreadable images, "
        f"{result['skipped_boxes']} boxes skipped; {result['done_before']} images were done before"
    )
    if "merged" in result:
        _print_predict_summary(result["merged"])
    else:
        print(f"when every shard has finished: polyrnn predict merge {args.out}")
    return 0


def _print_predict_summary(summary: dict[str, Any]) -> None:
    print(
        f"{summary['objects']} objects on {summary['images']} images (mean score {summary['mean_score']}); "
        f"{summary['skipped']} skipped (skipped.csv)"
        + (f"; {summary['review']} to review first (review.csv)" if summary["review"] is not None else "")
    )
    for fmt, path in summary["outputs"].items():
        print(f"  {fmt:12s} {path}")


def cmd_predict(args: argparse.Namespace) -> int:
    if args.dataset or args.image == "merge":
        return cmd_predict_dataset(args)
    if not args.image or not args.box:
        raise CLIError("give an IMAGE and --box x1,y1,x2,y2, or --dataset BOXES --out DIR")
    # cheap checks first: the model loads in seconds, a typo should not wait for it
    box = _parse_box(args.box)
    _check_box_in_image(box, _image_size(args.image))
    _check_weights(args.weights, args.mask_weights)
    from polyrnn.build import CheckpointError
    from polyrnn.data import load_image
    from polyrnn.predictor import PolygonPredictor

    try:
        pred = PolygonPredictor.from_weights(
            args.weights,
            variant=args.variant,
            mask_weights=args.mask_weights,
            start=getattr(args, "start", "auto"),
            tolerance=getattr(args, "tolerance", INFERENCE.tolerance),
        )
    except CheckpointError as e:
        raise CLIError(str(e)) from e
    pred.set_image(load_image(args.image))
    try:
        p = pred.predict(box)
    except ValueError as e:
        raise CLIError(str(e)) from e
    polygon = [[round(float(x), 2), round(float(y), 2)] for x, y in p.vertices]
    if args.json:
        out: dict[str, object] = {
            "image": str(args.image),
            "box": list(box),
            "source": p.source,
            "polygon": polygon,
        }
        if p.probs is not None:  # the mask's outline has no per-vertex probability
            out["probs"] = [round(float(v), 4) for v in p.probs]
        print(json.dumps(out))
        return 0
    origin = {
        "mask": "the mask model's outline",
        "box": "the box: this model loses to it on its domain",
    }.get(p.source, "recurrent decoder; probability per vertex")
    print(f"{len(p.vertices)} vertices (x, y image pixels; {origin}):")
    for k, (x, y) in enumerate(p.vertices):
        print(f"  {x:8.2f} {y:8.2f}" + (f"  {p.probs[k]:.3f}" if p.probs is not None else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from polyrnn.bench import format_bench, run_bench

    _check_weights(args.weights, args.mask_weights)
    from polyrnn.build import CheckpointError

    try:
        r = run_bench(
            args.variant,
            repeats=args.repeats,
            steps=args.steps,
            weights=args.weights,
            mask_weights=args.mask_weights,
            refiner_weights=args.refiner_weights,
            focus=args.focus,
            train=not args.no_train,
        )
    except CheckpointError as e:
        raise CLIError(str(e)) from e
    print(json.dumps(r, indent=2) if args.json else format_bench(r))
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """``polyrnn train --nproc N ...``: the same command under torchrun with N processes on this machine."""
    from torch.distributed.run import main as torchrun

    argv = ["train", "--config", args.config, *args.overrides]
    for flag in ("out", "name", "device", "workers", "epochs", "threads"):
        if getattr(args, flag, None) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    argv += ["--resume"] if args.resume else []
    try:
        torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "polyrnn.cli", *argv])
    except Exception as e:  # torchrun raises ChildFailedError after the ranks printed their errors
        raise CLIError(f"distributed training failed: {type(e).__name__}") from e
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from polyrnn.config import load_train_config
    from polyrnn.training import TrainingError, run_training

    if args.nproc < 1:
        raise CLIError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args)
    overrides = list(args.overrides)
    for key, value in (
        ("out", args.out),
        ("name", args.name),
        ("device", args.device),
        ("workers", args.workers),
        ("epochs", args.epochs),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_train_config(args.config, overrides)
        run = run_training(cfg, resume=args.resume)
    except (ValueError, TrainingError) as e:
        raise CLIError(str(e)) from e
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {run}")
    return 0


def cmd_train_refiner(args: argparse.Namespace) -> int:
    from polyrnn.refine_training import load_refiner_config, train_refiner

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    try:
        cfg = load_refiner_config(args.config, overrides)
        run = train_refiner(cfg, log=lambda m: print(m, flush=True))
    except ValueError as e:
        raise CLIError(str(e)) from e
    print(f"run folder: {run}")
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise CLIError(f"{what}: empty list")
    return vals


def _next_run_dir(parent: Path, name: str = "exp") -> Path:
    """``parent/exp``, or ``exp2``, ``exp3``, ... when taken."""
    k = 1
    while (parent / (name if k == 1 else f"{name}{k}")).exists():
        k += 1
    return parent / (name if k == 1 else f"{name}{k}")


def _eval_options(args: argparse.Namespace, start: str) -> EvalOptions:
    from polyrnn.evaluation.clicks import MIN_PART
    from polyrnn.evaluation.evaluate import BASELINES, EvalOptions

    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise CLIError(f"--baselines: unknown {bad} (choose from {', '.join(BASELINES)})")
    from polyrnn.session import ENGINES

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise CLIError(f"--engines: unknown {bad} (choose from {', '.join(ENGINES)})")
    return EvalOptions(
        engines=engines,
        thresholds=_int_list(args.thresholds, "--thresholds"),
        noc=_int_list(args.noc, "--noc"),
        baselines=baselines,
        max_corrections=args.max_corrections,
        start=start,
        eos_threshold=args.eos_threshold,
        rejoin=args.rejoin if args.rejoin >= 0 else None,
        mask_flip=args.mask_flip,
        mask_tolerance=getattr(args, "tolerance", INFERENCE.tolerance),
        focus=args.focus,
        min_part=MIN_PART if args.parts else math.inf,
    )


def _print_eval_summary(report: dict[str, Any], paths: list[Path]) -> None:
    a = report["automatic"]
    print(
        f"automatic: mean IoU {100 * a['mean_iou']:.1f}, class-mean {100 * a['class_mean_iou']:.1f} "
        f"(grid ceiling {100 * report['ceiling']['mean_iou']:.1f})"
    )
    for name, b in report["baselines"].items():
        print(f"baseline {name}: mean IoU {100 * b['mean_iou']:.1f}")
    for row in report["annotator"]:
        print(
            f"T={row['threshold']}: {row['mean_clicks']:.2f} corrections "
            f"({row['clicks_per_gt_vertex']:.2f} per GT vertex, "
            f"{row['clicks_per_human_vertex']:.2f} per human vertex), mean IoU {100 * row['mean_iou']:.1f}"
        )
    print("NoC: " + ", ".join(f"@{k} {v:.2f}" for k, v in report["noc"].items()))
    print("report: " + ", ".join(str(p) for p in paths))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from polyrnn.build import CheckpointError, load_models
    from polyrnn.evaluation.evaluate import evaluate_dataset
    from polyrnn.evaluation.report import build_meta, summarize_results, write_report

    _eval_options(args, "rnn")  # option errors before anything loads
    _check_weights(args.weights, args.mask_weights)
    ds = _load(args)
    instances = ds.instances[: args.limit] if args.limit else ds.instances
    if not instances:
        raise CLIError(f"{args.dataset}: no instances to evaluate (after --min-size / --classes)")
    try:
        models = load_models(args.weights, args.mask_weights, refiner_weights=args.refiner_weights)
    except CheckpointError as e:
        raise CLIError(str(e)) from e
    if args.start == "mask" and models.mask is None:
        raise CLIError("--start mask needs a mask model (--mask-weights)")
    start = args.start if args.start != "auto" else ("mask" if models.mask is not None else "rnn")
    options = _eval_options(args, start)
    if "refine" in options.engines and models.refiner is None:
        print(
            "no refiner paired: the refine engine is left out (--refiner-weights adds one)", file=sys.stderr
        )
        options = replace(options, engines=tuple(e for e in options.engines if e != "refine"))
    if "mask" in options.baselines and models.mask is None:
        print(
            "no mask model paired: the mask baseline is left out (--mask-weights adds one)", file=sys.stderr
        )
        options = replace(options, baselines=tuple(b for b in options.baselines if b != "mask"))
    out = Path(args.out) if args.out else _next_run_dir(Path("runs/evaluate"))
    print(f"evaluating {len(instances)} instances of {args.dataset} -> {out}", file=sys.stderr)
    results = evaluate_dataset(
        models.polygon,
        instances,
        options,
        mask_model=models.mask,
        refiner=models.refiner,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    meta = build_meta(
        weights=models.polygon_path,
        mask_weights=models.mask_path,
        dataset=str(args.dataset),
        fmt=ds.format,
        min_size=args.min_size,
        limit=args.limit or 0,
        instances=len(instances),
        options=options,
        command=["polyrnn", *sys.argv[1:]],
        precision=models.precision,
    )
    report = {"meta": meta, **summarize_results(results, options)}
    _print_eval_summary(report, write_report(report, out, results))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _check_weights(args.weights, args.mask_weights)
    from polyrnn.build import CheckpointError
    from polyrnn.predictor import PolygonPredictor

    try:
        from polyrnn.server.app import create_app
        from polyrnn.server.demo import demo_folder
        from polyrnn.server.http import serve
        from polyrnn.server.store import AnnotationStore, StoreError
    except ImportError as e:
        raise CLIError(f"polyrnn serve needs the serve extra: pip install 'polyrnn[serve]' ({e})") from e
    try:
        folder = Path(args.image_dir) if args.image_dir else demo_folder()
        store = AnnotationStore(folder, args.out)
    except (StoreError, RuntimeError) as e:
        raise CLIError(str(e)) from e
    if not store.names:
        raise CLIError(f"{folder}: no images (.jpg, .png, ...) in this folder")
    from polyrnn.learning import LearnError, ModelVersions

    # the folder's own learned model (polyrnn models DIR), unless a model was chosen on the command line
    versions = ModelVersions(store.state_dir / "models")
    chosen = bool(args.model or args.weights or args.mask_weights or args.refiner_weights)
    current = None
    if not chosen:
        try:
            current = versions.current()
        except LearnError as e:
            print(f"warning: {e}; serving the shipped models", file=sys.stderr)
    try:
        predictor = PolygonPredictor.from_weights(
            args.weights,
            variant=args.variant,
            mask_weights=current.mask if current else args.mask_weights,
            refiner_weights=(current.refiner or "none") if current else args.refiner_weights,
            engine=args.engine,
            start=current.start if current else getattr(args, "start", "auto"),
            tolerance=current.tolerance if current else getattr(args, "tolerance", INFERENCE.tolerance),
            focus=args.focus,
        )
    except (CheckpointError, ValueError) as e:
        raise CLIError(str(e)) from e
    from polyrnn.server.guard import is_loopback

    token = args.token
    if not is_loopback(args.host):
        import secrets

        token = token or secrets.token_urlsafe(18)
        print(
            f"warning: serving on {args.host}, not only this machine: every request needs the token below",
            file=sys.stderr,
        )
    name = str(args.model or args.weights or (current.path.name if current else f"shipped {args.variant}"))
    app = create_app(store, predictor, model_name=name, host=args.host, token=token)
    if not args.no_learn and not chosen and args.variant == "lite":
        _start_learner(app.app.state.ctx, store, args)  # type: ignore[attr-defined]
    elif not args.no_learn:
        print(
            "note: a model was chosen on the command line: the editor does not learn (polyrnn learn does)",
            file=sys.stderr,
        )
    for line in store.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if store.cleaned:
        print(f"removed {store.cleaned} temporary file(s) left by an interrupted save", file=sys.stderr)
    print(
        f"polyrnn serve: {len(store.names)} images in {folder}; annotations -> {store.root}", file=sys.stderr
    )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    query = f"?token={token}" if token else ""
    print(f"open http://{shown}:{args.port}/{query} (Ctrl+C to stop)", file=sys.stderr)
    serve(app, host=args.host, port=args.port)
    return 0


def _start_learner(ctx: Any, store: Any, args: argparse.Namespace) -> None:
    """The editor's own learning (polyrnn.server.learner) in a thread of this process; each new version (or
    a rollback with ``polyrnn models``) is swapped into the running editor."""
    import threading

    from polyrnn.build import load_models
    from polyrnn.learning import LearnOptions
    from polyrnn.server.learner import Learner

    def on_model(folder: Any, start: str) -> None:
        if folder is None:
            models = load_models()
        else:
            models = load_models(mask_weights=folder.mask, refiner_weights=folder.refiner or "none")
        name = folder.path.name if folder else f"shipped {args.variant}"
        tolerance = folder.tolerance if folder else INFERENCE.tolerance
        predictor = ctx.predictor.with_models(models, start=start, tolerance=tolerance)
        ctx.swap(predictor, name + (" (from the box)" if start == "box" else ""))
        print(f"polyrnn serve: now serving {ctx.model_name}", file=sys.stderr, flush=True)

    options = LearnOptions(
        mask_epochs=args.learn_epochs,
        refiner_epochs=args.learn_epochs,
        corrections=3,
        max_train=LEARN_MAX_TRAIN,
        max_held=LEARN_MAX_HELD,
    )
    learner = Learner(store=store, every=args.learn_every, options=options, on_model=on_model)
    ctx.learner = learner
    threading.Thread(target=learner.run, name="polyrnn-learner", daemon=True).start()
    print(
        f"polyrnn serve: learns from your polygons every {args.learn_every} accepted ones (--no-learn: off); "
        f"versions in {learner.versions.root}",
        file=sys.stderr,
    )


def cmd_models(args: argparse.Namespace) -> int:
    from polyrnn.learning import LearnError, ModelVersions
    from polyrnn.server.store import AnnotationStore, StoreError

    try:
        store = AnnotationStore(args.folder, args.out)
    except (StoreError, RuntimeError) as e:
        raise CLIError(str(e)) from e
    versions = ModelVersions(store.state_dir / "models")
    if args.use:
        try:
            versions.use(args.use)
        except LearnError as e:
            raise CLIError(str(e)) from None
        print(f"{args.use} is now in use (a running polyrnn serve switches within seconds)")
        return 0
    rows = versions.table()
    if args.json:
        print(json.dumps({"current": versions.current_name(), "versions": rows}, indent=1))
        return 0
    print(f"{'':2}{'version':8} {'polygons':>8} {'held-out automatic IoU':>24} {'seconds':>8}")
    print(f"{'*' if versions.current_name() == 'shipped' else ' '} shipped")
    for r in rows:
        if "error" in r:
            print(f"{'*' if r['current'] else ' '} {r['name']:8} unusable: {r['error']}")
            continue
        fig = f"{100 * (r['automatic_before'] or 0):.1f} -> {100 * (r['automatic'] or 0):.1f}"
        print(
            f"{'*' if r['current'] else ' '} {r['name']:8} {r['polygons']:>8} {fig:>24} {r['seconds']:>8.0f}"
        )
    return 0


def cmd_label_studio(args: argparse.Namespace) -> int:
    try:
        from polyrnn.integrations.label_studio import backend_from_env, create_app
        from polyrnn.server.http import serve
    except ImportError as e:
        raise CLIError(
            f"the Label Studio back end needs its extra: pip install 'polyrnn[label-studio]' ({e})"
        ) from e
    if args.images and not Path(args.images).is_dir():
        raise CLIError(f"--images {args.images}: not a folder")
    backend = backend_from_env(
        work_dir=Path(args.work_dir),
        images=Path(args.images) if args.images else None,
        fit_epochs=args.fit_epochs,
        fit_every=args.fit_every,
        model=args.model,
    )
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    app = create_app(backend, basic_auth=(user, password) if user and password else None, host=args.host)
    from polyrnn.server.guard import is_loopback

    if not is_loopback(args.host) and not (user and password):
        print(
            f"warning: serving on {args.host} without BASIC_AUTH_USER/BASIC_AUTH_PASS: anyone who reaches "
            "this port can run predictions and start fine-tuning",
            file=sys.stderr,
        )
    backend.annotator()  # load the models before the first request
    print(
        f"polyrnn Label Studio back end: http://{args.host}:{args.port} (model {backend.model_version}); "
        f"add it under Settings > Model of a project; work folder {args.work_dir}",
        file=sys.stderr,
    )
    serve(app, host=args.host, port=args.port)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from polyrnn.formats import export_folder
    from polyrnn.server.store import AnnotationStore

    src = Path(args.folder)
    if not src.is_dir():
        raise CLIError(f"{src}: not a folder")
    store = AnnotationStore(src)
    labels = store.labels() if (store.state_dir / "labels.json").is_file() else []
    summary = export_folder(src, args.to, Path(args.out), exclude=[store.state_dir], labels=labels)
    for s in summary["skipped"][:10]:
        print(f"skipped {s.where}: {s.reason}", file=sys.stderr)
    print(
        f"exported {summary['instances']} instances on {summary['images']} images as {args.to}: "
        f"{summary['path']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="polyrnn",
        description="Polygon-RNN: trace an object's outline as a polygon from a box, and correct it.",
    )
    common = _Parser(add_help=False)
    common.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help=f"CPU threads for torch (default 1, or ${THREADS_ENV}; 0 = all cores)",
    )
    common.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help=f"the type the mask model and the refiners compute in (default: ${PRECISION_ENV}, else auto: "
        "bfloat16 on a CPU with AMX matrix units, about twice as fast there; float32 elsewhere)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data(sub, common)
    _add_predict(sub, common)
    _add_bench(sub, common)
    _add_train(sub, common)
    _add_train_refiner(sub, common)
    _add_evaluate(sub, common)
    _add_label_studio(sub, common)
    _add_serve(sub, common)
    _add_export(sub, common)
    _add_learn(sub, common)
    return parser


def _add_learn(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common],
        name="learn",
        help="fine-tune the models on your accepted polygons -> a model folder (--model elsewhere)",
        description="polyrnn learn FOLDER --out MODEL_DIR [--from MODEL_DIR]: holds out a slice of FOLDER's "
        "images to choose the epochs and writes MODEL_DIR only when it beats the model it started from",
    )
    p.add_argument("folder", help="accepted polygons: a dataset in any supported format")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to write")
    p.add_argument(
        "--from", dest="from_model", default=None, metavar="MODEL_DIR", help="start from this model folder"
    )
    p.add_argument("--format", default=None, choices=formats.DATASET_FORMATS, help="detected when omitted")
    p.add_argument("--epochs", type=_number(int, 1, 200), default=6, help="mask model epochs (best kept)")
    p.add_argument("--refiner-epochs", type=_number(int, 1, 200), default=6, help="refiner epochs")
    p.add_argument(
        "--holdout", type=_number(float, 0.05, 0.5), default=0.2, help="fraction of images held out"
    )
    p.add_argument("--seed", type=_number(int, 0, 2**31), default=0)
    p.set_defaults(func=cmd_learn)


def cmd_learn(args: argparse.Namespace) -> int:
    from polyrnn.learning import LearnError, LearnOptions, ModelFolder, learn_folder

    if not Path(args.folder).exists():
        raise CLIError(f"{args.folder}: no such file or folder")
    try:
        start = ModelFolder.read(args.from_model) if args.from_model else None
        options = LearnOptions(
            mask_epochs=args.epochs, refiner_epochs=args.refiner_epochs, holdout=args.holdout, seed=args.seed
        )
        report = learn_folder(
            args.folder,
            out=args.out,
            start=start,
            format=args.format,
            options=options,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except LearnError as e:
        raise CLIError(str(e)) from None
    held = report["held_out"]
    before, after = held["before"], held["after"]
    k = len(after["curve"]) - 1
    print(
        f"held out {held['images']} images ({after['instances']} polygons): automatic IoU "
        f"{100 * before['automatic']:.1f} -> {100 * after['automatic']:.1f}, mean IoU over 0..{k} "
        f"corrections {100 * before['score']:.1f} -> {100 * after['score']:.1f} ({report['seconds']:.0f} s)"
    )
    if not report["accepted"]:
        print(f"not better than the model it started from: {args.out} was not written", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: use it with --model {args.out}")
    return 0


def _add_data(sub: Any, common: argparse.ArgumentParser) -> None:

    data = sub.add_parser(parents=[common], name="data", help="inspect datasets: stats, show, ceiling")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser(
        parents=[common],
        name="stats",
        help="images, instances, classes, vertex counts, what was skipped and why",
    )
    _add_dataset_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_stats)
    p = dsub.add_parser(
        parents=[common], name="show", help="draw instance I's crop with its ground truth and grid polygon"
    )
    _add_dataset_args(p)
    p.add_argument("--index", type=_number(int, 0, 10**9), required=True, metavar="I")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--context", type=_number(float, 0, 1), default=0.15)
    p.add_argument("--grid-size", type=_number(int, 2, 1024), default=28)
    p.set_defaults(func=cmd_data_show)
    p = dsub.add_parser(
        parents=[common], name="ceiling", help="IoU of the quantised ground truth: the grid's accuracy limit"
    )
    _add_dataset_args(p, min_size_default=32.0)
    p.add_argument("--grid-sizes", default="28,56,112", help="comma-separated D values")
    p.add_argument("--context", type=_number(float, 0, 1), default=0.15)
    p.add_argument("--max-len", type=_number(int, 3, 10_000), default=70)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_ceiling)

    def data_help(_: argparse.Namespace) -> int:
        data.print_help()
        return 2

    data.set_defaults(func=data_help)


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common],
        name="predict",
        help="trace objects from their boxes: one box in an image, or every box of a dataset",
        description="polyrnn predict IMAGE --box x1,y1,x2,y2 | polyrnn predict --dataset BOXES --out DIR "
        "[--shard i/n] | polyrnn predict merge DIR",
    )
    _add_model_option(p)
    p.add_argument("image", nargs="?", help="image file (or 'merge' to merge the shards of DIR)")
    p.add_argument("dir", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--box", default=None, help="x1,y1,x2,y2 in image pixels")
    p.add_argument("--weights", default=None, help="polyrnn checkpoint (default: the shipped model)")
    p.add_argument("--variant", default="lite", choices=["tiny", "lite", "vgg16"])
    p.add_argument(
        "--mask-weights",
        default=None,
        help="mask model for the automatic polygon (default: the one paired with the weights; none: no mask)",
    )
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("whole datasets")
    g.add_argument(
        "--dataset",
        default=None,
        metavar="BOXES",
        help="boxes: COCO JSON/folder, YOLO, LabelMe, Label Studio JSON export, CVAT XML",
    )
    g.add_argument(
        "--format", default=None, choices=formats.BOX_FORMATS, help="format of BOXES (detected when omitted)"
    )
    g.add_argument("--images", default=None, metavar="DIR", help="image folder (COCO, Label Studio, CVAT)")
    g.add_argument("--out", default=None, metavar="DIR", help="output folder (resumed when it exists)")
    g.add_argument(
        "--shard", default="0/1", metavar="i/n", help="this job's share of the images (default 0/1)"
    )
    g.add_argument(
        "--workers", type=_number(int, 1, 4096), default=1, help="processes on this machine, or Ray actors"
    )
    g.add_argument(
        "--runner", default="local", choices=["local", "ray"], help="local processes, or Ray Data actors"
    )
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    g.add_argument(
        "--review-below",
        type=_number(float, 0, 10),
        default=None,
        metavar="S",
        help="list objects scored below S in review.csv",
    )
    g.add_argument("--allow-partial", action="store_true", help="merge: write what finished shards hold")
    g.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="read images that the box file places outside the image folder (absolute or ../ names, links "
        "leading out); by default they are skipped into skipped.csv",
    )
    p.set_defaults(func=cmd_predict)


def _add_bench(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(parents=[common], name="bench", help="measure model speed on this machine")
    p.add_argument("--variant", default="lite", choices=["tiny", "lite", "vgg16"])
    p.add_argument("--weights", default=None)
    p.add_argument("--repeats", type=_number(int, 1, 100_000), default=10)
    p.add_argument("--steps", type=_number(int, 3, 10_000), default=20, help="vertices per automatic polygon")
    p.add_argument(
        "--mask-weights", default=None, help="mask model (default: the one paired with the weights)"
    )
    p.add_argument(
        "--refiner-weights",
        default=None,
        help="correction refiner (default: shipped, with the shipped mask model; none: no refiner)",
    )
    _focus_flag(p)
    p.add_argument("--no-train", action="store_true", help="skip the training-throughput measurement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(parents=[common], name="train", help="train a model from a YAML recipe")
    p.add_argument(
        "--config", required=True, help="YAML recipe: a path or a packaged name (tiny, lite, vgg16)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=3e-4 model.hidden=32"
    )
    p.add_argument("--out", default=None, help="parent folder of run folders (default runs/train)")
    p.add_argument("--name", default=None, help="run folder name (default: the recipe's)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--workers", type=_number(int, 0, 4096), default=None, help="data-loading processes")
    p.add_argument("--epochs", type=_number(int, 1, 100_000), default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/NAME from weights/last.pt")
    p.add_argument(
        "--nproc",
        type=_number(int, 1, 4096),
        default=1,
        help="data-parallel processes on this machine (starts torchrun; batch_size is per process)",
    )
    p.set_defaults(func=cmd_train)


def _add_train_refiner(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common], name="train-refiner", help="train the correction engine's refiner (recipe refiner)"
    )
    p.add_argument("--config", default="refiner", help="YAML recipe: a path or a packaged name (refiner)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=4")
    p.add_argument("--name", default=None, help="run folder name (default: the recipe's)")
    p.set_defaults(func=cmd_train_refiner)


def _add_evaluate(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common],
        name="evaluate",
        help="IoU, simulated annotator, NoC and baselines on a dataset -> report",
    )
    _add_model_option(p)
    p.add_argument("--dataset", required=True, help="dataset path (any supported format)")
    p.add_argument(
        "--format",
        choices=formats.DATASET_FORMATS,
        default=None,
        help="dataset format (detected when omitted)",
    )
    p.add_argument(
        "--min-size",
        type=_number(float, 0, 1e6),
        default=0.0,
        metavar="PX",
        help="keep boxes whose longer side >= PX",
    )
    p.add_argument("--classes", default=None, help="comma-separated class names to keep")
    p.add_argument("--include-crowd", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--weights", default=None, help="polygon model checkpoint (default: the shipped lite model)"
    )
    p.add_argument(
        "--mask-weights",
        default=None,
        help="mask model checkpoint (default: the shipped lite-mask model, when present)",
    )
    p.add_argument(
        "--start",
        choices=["auto", "rnn", "mask", "box"],
        default="auto",
        help="automatic polygon: the mask model's (auto when one is loaded), the decoder's, or the box "
        "(a model folder that loses to the box on its domain says so)",
    )
    p.add_argument("--out", default=None, help="report folder (default runs/evaluate/expN)")
    p.add_argument("--baselines", default="box,grabcut,mask", help="comma-separated: box, grabcut, mask")
    p.add_argument("--thresholds", default="1,2,3,4", help="simulated annotator thresholds T (grid cells)")
    p.add_argument("--noc", default="85,90", help="IoU levels (percent) for NoC")
    p.add_argument(
        "--max-corrections",
        type=_number(int, 0, 1000),
        default=20,
        help="clicks to quality: corrections per object",
    )
    p.add_argument(
        "--engines",
        default="refine,rnn,manual",
        help="correction engines for clicks to quality, the default first (refine, rnn, manual)",
    )
    p.add_argument(
        "--refiner-weights",
        default=None,
        help="correction refiner (default: shipped, with the shipped mask model; none: no refiner)",
    )
    p.add_argument("--eos-threshold", type=_number(float, 0, 2), default=0.5, help="stop when p(end) >= this")
    p.add_argument(
        "--rejoin",
        type=_number(int, -1, 1000),
        default=REJOIN,
        metavar="CELLS",
        help=f"after a correction, keep the old polygon once the re-prediction comes within CELLS "
        f"of it (default {REJOIN}, as the editor; -1: re-predict everything, the paper)",
    )
    p.add_argument(
        "--mask-flip",
        action=argparse.BooleanOptionalAction,
        default=MASK_FLIP,
        help="average the mask with its mirrored crop's (default: on, as the editor)",
    )
    _focus_flag(p)
    p.add_argument(
        "--parts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the simulated annotators add a part (a box) for a piece of the object that no part covers, as "
        "a person does with P in the editor (default: on; --no-parts: one polygon per object)",
    )
    p.add_argument(
        "--limit",
        type=_number(int, 0, 10**9),
        default=0,
        metavar="N",
        help="only the first N instances (quick looks)",
    )
    p.set_defaults(func=cmd_evaluate)


def _add_label_studio(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common],
        name="label-studio",
        help="serve polyrnn as a Label Studio ML back end (predict, fit)",
    )
    _add_model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=9090)
    p.add_argument(
        "--images", default=None, help="folder holding the tasks' images (else downloaded from LS)"
    )
    p.add_argument(
        "--work-dir", default="runs/label-studio", help="collected annotations and fine-tuned models"
    )
    p.add_argument(
        "--fit-epochs", type=_number(int, 1, 1000), default=2, help="epochs of each fine-tuning job"
    )
    p.add_argument(
        "--fit-every",
        type=_number(int, 0, 10**6),
        default=0,
        help="fine-tune after this many new annotations (0: on Start training)",
    )
    p.set_defaults(func=cmd_label_studio)


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(parents=[common], name="serve", help="the annotation tool in the browser")
    p.add_argument(
        "image_dir",
        nargs="?",
        default=None,
        help="folder of images to annotate (default: a few demo photographs)",
    )
    _add_model_option(p)
    p.add_argument("--weights", default=None, help="polygon model checkpoint (default: the shipped model)")
    p.add_argument(
        "--mask-weights", default=None, help="mask model for the automatic polygon (default: shipped)"
    )
    p.add_argument(
        "--refiner-weights",
        default=None,
        help="correction refiner (default: shipped, with the shipped mask model; none: no refiner)",
    )
    p.add_argument(
        "--engine",
        default=None,
        choices=["refine", "rnn", "manual"],
        help="how a dragged vertex updates the polygon (default: refine when a refiner is paired)",
    )
    p.add_argument("--variant", default="lite", choices=["tiny", "lite", "vgg16"])
    _focus_flag(p)
    p.add_argument(
        "--out", default=None, help="folder for the LabelMe JSON files (default: beside each image)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument(
        "--token",
        default=None,
        help="session token required on every request (generated when --host is not loopback)",
    )
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000)
    p.add_argument("--no-learn", action="store_true", help="do not learn from the accepted polygons")
    p.add_argument(
        "--learn-every",
        type=_number(int, 2, 10**6),
        default=LEARN_EVERY,
        help=f"learn after this many newly accepted polygons (default {LEARN_EVERY})",
    )
    p.add_argument(
        "--learn-epochs",
        type=_number(int, 1, 100),
        default=3,
        help="epochs of each learning job (mask, refiner)",
    )
    p.set_defaults(func=cmd_serve)
    m = sub.add_parser(
        parents=[common],
        name="models",
        help="the models an annotation folder has learned: list them, or put one in use (roll back)",
    )
    m.add_argument("folder", help="the image folder polyrnn serve annotates")
    m.add_argument("--out", default=None, help="the annotation folder, when serve was given --out")
    m.add_argument("--use", default=None, metavar="VERSION", help="put this version (or 'shipped') in use")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        parents=[common],
        name="export",
        help="convert a folder of LabelMe annotations to COCO, YOLO or LabelMe",
    )
    p.add_argument("folder", help="folder of LabelMe JSON files (what polyrnn serve saves)")
    p.add_argument("--to", required=True, choices=formats.EXPORTS)
    p.add_argument("out", help="output folder")
    p.set_defaults(func=cmd_export)


LEARN_EVERY = 30  # polyrnn serve: accepted polygons between two learning jobs (benchmarks/adaptation.py)
LEARN_MAX_TRAIN, LEARN_MAX_HELD = 200, 60  # polygons a job learns from / checks on: its time stays bounded


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL_DIR",
        help="a model folder written by `polyrnn learn` (its mask model and refiner)",
    )


def _apply_model(args: argparse.Namespace) -> None:
    """``--model MODEL_DIR``: the folder's mask model and refiner in place of ``--mask-weights`` and
    ``--refiner-weights`` (giving both is refused)."""
    if not getattr(args, "model", None):
        return
    from polyrnn.learning import LearnError, ModelFolder

    if getattr(args, "mask_weights", None) or getattr(args, "refiner_weights", None):
        raise CLIError("--model gives the mask model and refiner: leave out --mask-weights/--refiner-weights")
    try:
        folder = ModelFolder.read(args.model)
    except LearnError as e:
        raise CLIError(str(e)) from None
    args.mask_weights = str(folder.mask)
    if getattr(args, "start", "auto") == "auto":  # box where its model loses to the box on its domain
        args.start = folder.start
    args.tolerance = folder.tolerance  # its domain's vertex density
    if hasattr(args, "refiner_weights"):
        args.refiner_weights = str(folder.refiner) if folder.refiner is not None else "none"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        set_threads(getattr(args, "threads", None))
        set_precision(getattr(args, "precision", None))
        _apply_model(args)
        return int(args.func(args))
    except (DataError, CLIError, FileNotFoundError, ValueError) as e:
        print(f"polyrnn: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("polyrnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("polyrnn: error: out of memory (a smaller image, box or batch?)", file=sys.stderr)
        return 2
    except Exception as e:  # a command never ends in a traceback; POLYRNN_DEBUG=1 shows it
        if os.environ.get("POLYRNN_DEBUG"):
            raise
        print(
            f"polyrnn: error: {type(e).__name__}: {_one_line(e)} (POLYRNN_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    sys.exit(main())
