"""Networks made faster for inference only: every batch norm folded into the convolution before it, and
the weights laid out channels-last (what oneDNN's CPU convolutions, depthwise ones above all, run fastest
on). Outputs equal the unfolded network's up to float rounding (about 1e-5 relative).

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


def fold_for_inference(model: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution (in an ``nn.Sequential`` or a
    pair of :data:`BN_PAIRS`) into it, and lay the weights out channels-last; the model is put in eval mode
    and marked as folded. Returns how many batch norms were folded. Idempotent."""
    if getattr(model, FOLDED, False):
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
    for p in model.parameters():
        p.requires_grad_(False)
    setattr(model, FOLDED, True)
    return folded


def is_folded(model: nn.Module) -> bool:
    """Whether :func:`fold_for_inference` was applied to ``model`` or a module containing it."""
    return any(getattr(m, FOLDED, False) for m in model.modules())
