"""Speed of a model variant on this machine: medians of repeated runs after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from polyrnn.build import build_model, polygon_model
from polyrnn.modeling.losses import PolygonLoss
from polyrnn.predictor import PolygonPredictor


def _median_ms(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _ellipse_tokens(d: int, n: int) -> list[int]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c = d / 2 - 0.5
    cells = np.stack([np.round(c + 0.4 * d * np.cos(t)), np.round(c + 0.35 * d * np.sin(t))], 1).astype(int)
    toks = []
    for x, y in cells:
        v = int(y * d + x)
        if v not in toks:
            toks.append(v)
    return toks


def run_bench(variant: str = "lite", *, repeats: int = 10, steps: int = 20, train_batch: int = 8,
              threads: int | None = None, weights: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure parameters, encoder ms, decoder ms per step, automatic polygon ms (batch 1), correction ms
    and training instances/s (forward + backward, batch ``train_batch``, full model and frozen backbone).

    The automatic polygon is decoded for a fixed ``steps`` vertices (EOS disabled) so that an untrained
    model is timed on a realistic length.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = polygon_model(build_model(variant, weights), str(weights or variant)).eval()
    d = model.grid_size
    out: dict[str, Any] = {"variant": variant, "threads": torch.get_num_threads(), "repeats": repeats}
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["parameters_encoder"] = sum(p.numel() for p in model.encoder.parameters())
    image = torch.rand(1, 3, model.crop_size, model.crop_size) * 255

    with torch.inference_mode():
        out["encoder_ms"] = _median_ms(lambda: model.encode(image), repeats=repeats)
        _, static, _ = model.encode(image)
        state = model.decoder.init_state(1, static)
        prev, first, none = torch.tensor([5]), torch.tensor([3]), torch.tensor([-1])

        def one_step() -> None:
            model.decoder.step(static, prev, none, first, state)

        out["decoder_step_ms"] = _median_ms(one_step, repeats=max(repeats * 10, 50))

        def polygon() -> None:
            _, st, v = model.encode(image)
            idx, _ = model.first_vertices(v)
            model.decode(st, [int(idx[0, 0])], max_len=steps, eos_threshold=2.0)

        out["polygon_steps"] = steps
        out["automatic_polygon_ms"] = _median_ms(polygon, repeats=repeats)

    # a correction through the predictor: re-decode from the middle vertex on, encoder results cached
    pred = PolygonPredictor(model, eos_threshold=2.0)
    img = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    pred.set_image(img)
    pred.model.max_len = steps
    first_pred = pred.predict((100, 80, 400, 380))
    k = len(first_pred.vertices) // 2

    def correction() -> None:
        pred.correct(k, tuple(first_pred.vertices[k] + 6.0))

    out["correction_ms"] = _median_ms(correction, repeats=repeats)
    out["correction_vertices_redecoded"] = steps - k

    # training throughput, forward + backward, batch of polygons of ~20 vertices
    loss_fn = PolygonLoss(grid_size=d)
    toks = _ellipse_tokens(d, 20) + [d * d]
    tokens = torch.tensor([toks] * train_batch)
    zeros = torch.zeros(train_batch, d, d)
    batch = {
        "tokens": tokens,
        "lengths": torch.full((train_batch,), len(toks)),
        "boundary": zeros,
        "vertices": zeros,
    }
    images = torch.rand(train_batch, 3, model.crop_size, model.crop_size) * 255
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def train_step(frozen: bool) -> None:
        opt.zero_grad(set_to_none=True)
        if frozen:
            with torch.no_grad():
                feats = model.encoder.backbone(model.encoder.normalize(images))
            features = model.encoder.fusion(feats)
            outputs = model(images, tokens, features=features)
        else:
            outputs = model(images, tokens)
        loss_fn(outputs, batch)["loss"].backward()
        opt.step()

    r = max(3, repeats // 2)
    out["train_batch"] = train_batch
    out["train_instances_per_s"] = train_batch / (
        _median_ms(lambda: train_step(False), repeats=r, warmup=1) / 1000
    )
    model.encoder.backbone.eval()  # a frozen backbone keeps its batch-norm statistics
    out["train_instances_per_s_frozen_backbone"] = train_batch / (
        _median_ms(lambda: train_step(True), repeats=r, warmup=1) / 1000
    )
    return out


def format_bench(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"polyrnn bench: variant {r['variant']}, {r['threads']} threads, median of {r['repeats']} runs",
            f"  parameters              {r['parameters']:,} (encoder {r['parameters_encoder']:,})",
            f"  encoder                 {r['encoder_ms']:.1f} ms",
            f"  decoder step            {r['decoder_step_ms']:.2f} ms",
            f"  automatic polygon       {r['automatic_polygon_ms']:.1f} ms ({r['polygon_steps']} vertices, batch 1)",
            f"  correction              {r['correction_ms']:.1f} ms (re-decodes {r['correction_vertices_redecoded']} vertices)",
            f"  training                {r['train_instances_per_s']:.1f} instances/s (batch {r['train_batch']}, fine-tuned)",
            f"  training, frozen        {r['train_instances_per_s_frozen_backbone']:.1f} instances/s (backbone without gradients)",
        ]
    )
