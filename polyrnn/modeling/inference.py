"""Networks made faster for inference only: every batch norm folded into the convolution before it, and
the weights laid out channels-last (what oneDNN's CPU convolutions, depthwise ones above all, run fastest
on). Outputs equal the unfolded network's up to float rounding (about 1e-5 relative).

Optionally the convolutions' weights are also stored in bfloat16 (``dtype``): on CPUs with AMX matrix units
oneDNN then runs them about twice as fast (the 3x3 convolutions of the fusion, the mask head and the refiner
four times), at bfloat16's rounding (8 significant bits per layer's output). The networks' entry points
(:class:`~polyrnn.modeling.encoder.Encoder`, :class:`~polyrnn.modeling.mask_net.MaskHead`,
:meth:`~polyrnn.modeling.refiner.Refiner.residual`) cast their input to their weights' type
(:func:`compute_dtype`) and give float32 back, so callers see float32 either way. Which precision a process
uses is :func:`polyrnn.runtime.resolve_precision`'s.

A folded network has no batch-norm parameters left: it cannot be trained or saved as a checkpoint
(:func:`polyrnn.build.checkpoint_dict` refuses it); load the file again for that.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FOLDED = "_polyrnn_folded"

#: (convolution, batch norm) attribute pairs of modules that are not ``nn.Sequential``, by class name
BN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "EfficientNetLite0Taps": (("_conv_stem", "_bn0"),),
    "MBConv": (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
}

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not isinstance(conv, _CONVS) or not isinstance(bn, nn.BatchNorm2d):
        return False
    fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())
    return True


def fold_for_inference(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> int:
    """Fold, in place, every batch norm that directly follows a convolution (in an ``nn.Sequential`` or a
    pair of :data:`BN_PAIRS`) into it, and lay the weights out channels-last, the convolutions' parameters in
    ``dtype`` (float32 or bfloat16; other parameters and buffers stay float32); the model is put in eval mode
    and marked as folded. Returns how many batch norms were folded. Idempotent (a second call with another
    ``dtype`` is refused with ``ValueError``)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"inference weights are float32 or bfloat16, not {dtype}")
    if getattr(model, FOLDED, False):
        if compute_dtype(model) != dtype:
            raise ValueError(f"already folded in {compute_dtype(model)}; load it again for {dtype}")
        return 0
    model.eval()
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = [n for n, _ in module.named_children()]
            for a, b in zip(names, names[1:], strict=False):
                folded += _fold_pair(module, a, b)
        for conv_name, bn_name in BN_PAIRS.get(type(module).__name__, ()):
            folded += _fold_pair(module, conv_name, bn_name)
    model.eval()  # the new identities too
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for module in model.modules():
        if isinstance(module, _CONVS):
            module.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    setattr(model, FOLDED, True)
    return folded


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The type ``model``'s convolutions compute in: their weights' (float32 for a network without any)."""
    for module in model.modules():
        if isinstance(module, _CONVS):
            return module.weight.dtype
    return torch.float32


def is_folded(model: nn.Module) -> bool:
    """Whether :func:`fold_for_inference` was applied to ``model`` or a module containing it."""
    return any(getattr(m, FOLDED, False) for m in model.modules())
