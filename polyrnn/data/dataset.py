"""Training samples: crop, target tokens and first-vertex targets of an instance, with the paper's
augmentations (flip, random context, random start) and optional jitter."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from polyrnn.config import INFERENCE, AugmentConfig
from polyrnn.data.augment import hflip, hflip_box, random_context
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Instance, load_image
from polyrnn.data.sequence import polygon_to_tokens
from polyrnn.geometry import rasterize


def first_vertex_targets(tokens: np.ndarray, grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(boundary, vertices) 0/1 float32 maps of shape (D, D): the polygon's edges drawn on the grid
    and its vertex cells."""
    d = grid_size
    boundary = np.zeros((d, d), np.uint8)
    vertices = np.zeros((d, d), np.float32)
    t = tokens[tokens < d * d]
    if len(t):
        cells = np.stack([t % d, t // d], axis=1).astype(np.int32)
        cv2.polylines(boundary, [cells.reshape(-1, 1, 2)], True, 1, 1)
        vertices[cells[:, 1], cells[:, 0]] = 1.0
    return boundary.astype(np.float32), vertices


def crop_mask_target(
    parts: Sequence[np.ndarray], occluders: Sequence[np.ndarray], crop: CropBox, size: int
) -> np.ndarray:
    """(size, size) float32 0/1 mask of the object's parts (image pixels), occluders cut out, over the
    crop window (mask pixel = crop_size / size crop pixels)."""
    scale = size / crop.crop_size

    def to_mask(polys: Sequence[np.ndarray]) -> np.ndarray:
        return rasterize([crop.image_to_crop(p) * scale for p in polys], size, size)

    m = to_mask(parts)
    if len(occluders):
        m &= ~to_mask(occluders)
    return m.astype(np.float32)


def _color_jitter(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    b, c, s = (1.0 + rng.uniform(-amount, amount, 3)).tolist()
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * s  # saturation
    x = (x - x.mean()) * c + x.mean()  # contrast
    x = x * b  # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


class PolygonDataset(Dataset):
    """Instances -> training samples.

    Each sample is a dict: ``image`` (3, crop, crop) uint8 tensor, ``tokens`` (T,) int64 (vertices then
    the end token), ``boundary`` and ``vertices`` (D, D) float32, ``index``; with ``mask_size`` > 0 also
    ``mask`` (mask_size, mask_size) float32, the whole object over the crop (the mask model's target).

    Randomness comes from ``seed``, the epoch (:meth:`set_epoch`) and the index, so a run is
    reproducible and resumes exactly, with any number of workers. Decoded images are kept in a small
    per-process cache; :class:`LengthGroupedBatchSampler` serves whole images in pools, so each image
    is decoded about once per epoch.
    """

    def __init__(
        self,
        instances: Sequence[Instance],
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        grid_size: int = 28,
        crop_size: int = 224,
        max_len: int = 70,
        seed: int = 0,
        image_cache: int = 40,
        mask_size: int = 0,
    ) -> None:
        self.instances = list(instances)
        self.mask_size = mask_size
        self.train = train
        self.augment = augment or AugmentConfig()
        self.grid_size, self.crop_size, self.max_len = grid_size, crop_size, max_len
        self.seed = seed
        self.epoch = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = image_cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.instances)

    def _image(self, inst: Instance) -> np.ndarray:
        key = str(inst.image_path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        img = load_image(inst.image_path)
        self._cache[key] = img
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def sample(self, index: int) -> dict[str, Any]:
        """The sample as numpy arrays plus its crop window (useful for inspection)."""
        inst = self.instances[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        img = self._image(inst)
        polygon = inst.largest_polygon()
        parts, occluders = list(inst.polygons), list(inst.occluders)
        box = inst.box
        a = self.augment
        context = INFERENCE.context  # the validation crop; training draws it from the augment range
        if rng is not None:
            if rng.random() < a.flip:
                w = img.shape[1]
                img, (polygon, *rest) = hflip(img, [polygon, *parts, *occluders])
                parts, occluders = rest[: len(parts)], rest[len(parts) :]
                box = hflip_box(box, w)
            x, y, w, h = box
            if a.scale_jitter > 0:
                s = 1.0 + rng.uniform(-a.scale_jitter, a.scale_jitter)
                x, y, w, h = x + w * (1 - s) / 2, y + h * (1 - s) / 2, w * s, h * s
            if a.shift_jitter > 0:
                dx, dy = rng.uniform(-a.shift_jitter, a.shift_jitter, 2) * max(w, h)
                x, y = x + dx, y + dy
            box = (x, y, w, h)
            context = random_context(rng, a.context_low, a.context_high)
        crop = CropBox.around(box, context=context, crop_size=self.crop_size, grid_size=self.grid_size)
        pixels = crop.crop_image(img)
        if rng is not None and a.color_jitter > 0:
            pixels = _color_jitter(pixels, a.color_jitter, rng)
        start_rng = rng if (rng is not None and a.random_start) else None
        tokens = polygon_to_tokens(polygon, crop, max_len=self.max_len, rng=start_rng)
        boundary, vertices = first_vertex_targets(tokens, self.grid_size)
        out = {
            "image": pixels,
            "tokens": tokens,
            "boundary": boundary,
            "vertices": vertices,
            "index": index,
            "crop": crop,
        }
        if self.mask_size > 0:
            out["mask"] = crop_mask_target(parts, occluders, crop, self.mask_size)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.sample(index)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(s["image"])).permute(2, 0, 1),  # (3, H, W) uint8
            "tokens": torch.from_numpy(s["tokens"]),
            "boundary": torch.from_numpy(s["boundary"]),
            "vertices": torch.from_numpy(s["vertices"]),
            "index": index,
        }
        if "mask" in s:
            out["mask"] = torch.from_numpy(s["mask"])
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples; tokens padded with -1 to the longest, ``lengths`` counts tokens incl. the end."""
    lengths = torch.tensor([len(s["tokens"]) for s in samples])
    tokens = torch.full((len(samples), int(lengths.max())), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        tokens[i, : len(s["tokens"])] = s["tokens"]
    out = {
        "images": torch.stack([s["image"] for s in samples]).float(),  # (B, 3, H, W) 0..255
        "tokens": tokens,
        "lengths": lengths,
        "boundary": torch.stack([s["boundary"] for s in samples]),
        "vertices": torch.stack([s["vertices"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }
    if "mask" in samples[0]:
        out["mask"] = torch.stack([s["mask"] for s in samples])
    return out


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar polygon length drawn from pools of whole images.

    Each epoch the images are shuffled and cut into pools of ``pool_images`` images; a pool's instances
    are sorted by target length, cut into batches, and all batches are shuffled. Padding to the longest
    polygon of a batch then wastes few decoder steps, and an image is needed only while its pool is
    served, so a per-process image cache of ``pool_images`` images decodes each JPEG once per epoch
    (with ``workers > 1`` each worker keeps its own cache). Seeded by (seed, epoch).

    Distributed (``world`` > 1 processes): every rank draws the same global batches of ``batch_size`` x
    ``world`` instances and takes its ``rank``-th share of each, so the ranks together see exactly the batches
    one process with the ``world``-times larger batch would (a global batch too small to split repeats its
    first instance for the ranks left empty: every rank steps the same number of times).
    """

    def __init__(
        self,
        instances: Sequence[Instance],
        lengths: Sequence[int],
        *,
        batch_size: int,
        seed: int = 0,
        pool_images: int = 32,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.rank, self.world = rank, world
        groups: dict[str, list[int]] = {}
        for i, inst in enumerate(instances):
            groups.setdefault(str(inst.image_path), []).append(i)
        self.groups = list(groups.values())
        self.lengths = list(lengths)
        self.batch_size, self.seed, self.pool_images, self.shuffle = batch_size, seed, pool_images, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches of the epoch (all of them with one process)."""
        out = self.global_batches()
        if self.world == 1:
            return out
        mine = []
        for gb in out:
            k = -(-len(gb) // self.world)
            mine.append(gb[self.rank * k : (self.rank + 1) * k] or gb[:1])
        return mine

    def global_batches(self) -> list[list[int]]:
        """The epoch's batches of ``batch_size`` x ``world`` instances, the same on every rank."""
        size = self.batch_size * self.world
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        order = rng.permutation(len(self.groups)) if self.shuffle else np.arange(len(self.groups))
        out: list[list[int]] = []
        for p in range(0, len(order), self.pool_images):
            pool = [i for g in order[p : p + self.pool_images] for i in self.groups[int(g)]]
            pool.sort(key=lambda i: (self.lengths[i], i))
            pool_batches = [pool[k : k + size] for k in range(0, len(pool), size)]
            if self.shuffle:
                pool_batches = [pool_batches[int(j)] for j in rng.permutation(len(pool_batches))]
            out.extend(pool_batches)
        return out

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()


def target_lengths(instances: Sequence[Instance], *, grid_size: int = 28, max_len: int = 70) -> list[int]:
    """Tokens per instance at the test-time crop (vertices + end): what batching by length sorts on."""
    return [
        len(
            polygon_to_tokens(
                i.largest_polygon(), CropBox.around(i.box, grid_size=grid_size), max_len=max_len
            )
        )
        for i in instances
    ]


def worker_init(_: int) -> None:
    """DataLoader workers: one OpenCV thread each, so loading never competes with the model's threads."""
    cv2.setNumThreads(1)


def usable(instances: Sequence[Instance], *, grid_size: int = 28, max_len: int = 70) -> list[Instance]:
    """Instances whose largest part gives at least 3 grid vertices at the test-time crop."""
    lengths = target_lengths(instances, grid_size=grid_size, max_len=max_len)
    return [inst for inst, n in zip(instances, lengths, strict=True) if n >= 4]
