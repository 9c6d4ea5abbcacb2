"""Speed of the models on this machine: every part timed in the same warm loop, medians with spread.

The parts of one interactive round are timed one after another in each iteration, so that a busy machine
slows them alike and a whole polygon is never reported faster than its own encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyrnn.build import SHIPPED, Models, build_model, load_models, polygon_model
from polyrnn.modeling.losses import PolygonLoss
from polyrnn.predictor import PolygonPredictor


def _spread(ms: list[float]) -> dict[str, float]:
    """Median and the 10th / 90th percentiles of a list of milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
    }


def _ellipse_tokens(d: int, n: int) -> list[int]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c = d / 2 - 0.5
    cells = np.stack([np.round(c + 0.4 * d * np.cos(t)), np.round(c + 0.35 * d * np.sin(t))], 1).astype(int)
    toks: list[int] = []
    for x, y in cells:
        v = int(y * d + x)
        if v not in toks:
            toks.append(v)
    return toks


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def _interactive(models: Models, *, repeats: int, steps: int, focus: bool = True) -> dict[str, Any]:
    """Encoder, decoder step, the decoder's automatic polygon (``steps`` vertices), the predictor's
    automatic polygon (what the editor shows: the mask model's when one is paired) and a correction."""
    model = models.polygon
    image = torch.rand(1, 3, model.crop_size, model.crop_size) * 255
    # EOS off: fixed lengths; corrections by the default engine (refine when a refiner is paired)
    pred = PolygonPredictor(
        model, mask_model=models.mask, refiner=models.refiner, eos_threshold=2.0, focus=focus
    )
    rgb = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    pred.set_image(rgb)
    model.max_len = steps
    _, static, _ = model.encode(image)
    state = model.decoder.init_state(1, static)
    prev, first, none = torch.tensor([5]), torch.tensor([3]), torch.tensor([-1])

    def rnn_polygon() -> None:
        _, st, v = model.encode(image)
        idx, _ = model.first_vertices(v)
        model.decode(st, [int(idx[0, 0])], max_len=steps, eos_threshold=2.0)

    boxes = [(100.0 + i, 80.0, 400.0, 380.0) for i in range(repeats + 2)]  # a new box: no cache hit

    def automatic(i: int) -> Any:
        return pred.predict(boxes[i])

    def correction(p: Any) -> None:
        k = len(p.vertices) // 2
        pred.correct(k, tuple(p.vertices[k] + 6.0), box=p.box)

    parts: dict[str, list[float]] = {
        "encoder": [],
        "decoder_step": [],
        "rnn_polygon": [],
        "automatic": [],
        "correction": [],
    }
    with torch.inference_mode():
        for i in range(repeats + 2):  # the first two rounds warm up
            times = {
                "encoder": _timed(lambda: model.encode(image)),
                "decoder_step": _timed(lambda: model.decoder.step(static, prev, none, first, state)),
                "rnn_polygon": _timed(rnn_polygon),
            }
            t0 = time.perf_counter()
            p = automatic(i)
            times["automatic"] = (time.perf_counter() - t0) * 1000.0
            times["correction"] = _timed(partial(correction, p))
            if i >= 2:
                for k, v in times.items():
                    parts[k].append(v)
    return {k: _spread(v) for k, v in parts.items()}


def _training(models: Models, *, repeats: int, batch_size: int) -> dict[str, float]:
    """Training instances/s (forward + backward) of the polygon model, fine-tuned and with a frozen
    backbone."""
    model = models.polygon
    d = model.grid_size
    loss_fn = PolygonLoss(grid_size=d)
    toks = _ellipse_tokens(d, 20) + [d * d]
    tokens = torch.tensor([toks] * batch_size)
    zeros = torch.zeros(batch_size, d, d)
    batch = {
        "tokens": tokens,
        "lengths": torch.full((batch_size,), len(toks)),
        "boundary": zeros,
        "vertices": zeros,
    }
    images = torch.rand(batch_size, 3, model.crop_size, model.crop_size) * 255
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step(frozen: bool) -> None:
        opt.zero_grad(set_to_none=True)
        if frozen:
            with torch.no_grad():
                taps = model.encoder.backbone(model.encoder.normalize(images))
            outputs = model(images, tokens, features=model.encoder.fusion(taps))
        else:
            outputs = model(images, tokens)
        loss_fn(outputs, batch)["loss"].backward()
        opt.step()

    out = {}
    for name, frozen in (("fine_tuned", False), ("frozen_backbone", True)):
        if frozen:
            model.encoder.backbone.eval()  # a frozen backbone keeps its batch-norm statistics
        step(frozen)
        ms = [_timed(partial(step, frozen)) for _ in range(max(2, repeats // 3))]
        out[name] = batch_size / (float(np.median(ms)) / 1000)
    model.eval()
    return out


def run_bench(
    variant: str = "lite",
    *,
    repeats: int = 10,
    steps: int = 20,
    train_batch: int = 8,
    weights: str | Path | None = None,
    mask_weights: str | Path | None = None,
    refiner_weights: str | Path | None = None,
    focus: bool = True,
    train: bool = True,
) -> dict[str, Any]:
    """Measure the models :func:`polyrnn.build.load_models` pairs (the shipped ones by default): parameters,
    (an untrained ``variant`` when no weights ship for it) the interactive round's parts (milliseconds:
    median, p10, p90 over ``repeats`` rounds after two warm-up
    rounds) and, with ``train``, training instances/s (batch ``train_batch``). ``refiner_weights``: the
    correction refiner (default: the shipped one; "none": none); ``focus``: its focus pass (as ``serve``).

    Decoding runs a fixed ``steps`` vertices (end token disabled) so that any model is timed on a realistic
    length; the automatic polygon from a mask model is its mask's outline (mirror averaging included).
    """
    torch.manual_seed(0)
    if weights is None and variant not in SHIPPED:  # an architecture without trained weights: speed only
        models = Models(
            polygon=polygon_model(build_model(variant, shipped=False)), polygon_path=Path(variant)
        )
    else:
        models = load_models(weights, mask_weights, variant=variant, refiner_weights=refiner_weights)
    models.polygon.eval()
    model = models.polygon
    out: dict[str, Any] = {
        "variant": variant,
        "weights": str(models.polygon_path),
        "mask_weights": str(models.mask_path) if models.mask_path else None,
        "engine": (
            ("refine + focus pass" if focus and models.refiner.focus_pass is not None else "refine")
            if models.refiner is not None and models.mask is not None
            else "rnn"
        ),
        "threads": torch.get_num_threads(),
        "precision": models.precision,
        "repeats": repeats,
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_encoder": sum(p.numel() for p in model.encoder.parameters()),
        "ms": _interactive(models, repeats=repeats, steps=steps, focus=focus),
    }
    if train:
        out["train_batch"] = train_batch
        out["train_instances_per_s"] = _training(models, repeats=repeats, batch_size=train_batch)
    return out


def format_bench(r: dict[str, Any]) -> str:
    def row(label: str, key: str, note: str = "") -> str:
        s = r["ms"][key]
        return f"  {label:<22}{s['median']:8.1f} ms  (p10 {s['p10']:.1f}, p90 {s['p90']:.1f}){note}"

    automatic = "mask model's outline" if r["mask_weights"] else f"decoder, {r['steps']} vertices"
    lines = [
        f"polyrnn bench: {r['weights']}" + (f" + {r['mask_weights']}" if r["mask_weights"] else ""),
        f"  {r['threads']} thread(s), {r['precision']}, {r['repeats']} rounds after 2 warm-up rounds, "
        "every part in each round",
        f"  parameters            {r['parameters']:,} (encoder {r['parameters_encoder']:,})",
        row("encoder", "encoder"),
        row("decoder step", "decoder_step"),
        row("decoder polygon", "rnn_polygon", f"  encoder + {r['steps']} vertices"),
        row("automatic polygon", "automatic", f"  a new box, as the editor: {automatic}"),
        row("correction", "correction", f"  drag a vertex ({r['engine']} engine)"),
    ]
    if "train_instances_per_s" in r:
        t = r["train_instances_per_s"]
        lines.append(
            f"  training              {t['fine_tuned']:.1f} instances/s fine-tuned, "
            f"{t['frozen_backbone']:.1f} with a frozen backbone (batch {r['train_batch']})"
        )
    return "\n".join(lines)
