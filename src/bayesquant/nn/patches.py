"""The input patches a Conv2d multiplies with its weight (im2col), as the layer itself pads its input.

Used wherever a quantity is built from a convolution's inputs: the GPTQ Hessian and the layer-wise and
per-example curvatures of the posteriors. Handles `padding="same"/"valid"`, the non-zero padding modes, and
EfficientNet's `Conv2dStaticSamePadding` (a ZeroPad2d applied inside its forward, after any forward hook has
seen the unpadded input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def static_padding(conv: nn.Conv2d) -> tuple[int, ...] | None:
    """The F.pad arguments a Conv2d subclass applies inside its forward (EfficientNet's Conv2dStaticSamePadding:
    a ZeroPad2d, or Identity where no padding is needed); None for nn.Conv2d's own forward. Any other forward
    override is refused: what it does to the input is unknown."""
    if type(conv).forward is nn.Conv2d.forward:
        return None
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        return tuple(pad.padding)
    if pad is None or type(pad).__name__ != "Identity":
        raise TypeError(f"{type(conv).__name__} overrides nn.Conv2d.forward; what it does to its input is unknown")
    return None


def _padded(module: nn.Conv2d, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution sees it, and the zero padding F.unfold must still add."""
    static = static_padding(module)
    if static is not None:
        a = F.pad(a, static)
    if module.padding_mode != "zeros":
        return F.pad(a, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
    if isinstance(module.padding, str):  # "same" / "valid": resolve to explicit zero padding
        if module.padding == "valid":
            return a, (0, 0)
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(t % 2 for t in total):  # odd totals: PyTorch puts the extra row/column at the end
            a = F.pad(a, (0, total[1] % 2, 0, total[0] % 2))
        return a, (total[0] // 2, total[1] // 2)
    return a, tuple(module.padding)


def conv_patches(module: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col of a conv input `a` (B, C, H, W): (B, C·kh·kw, L), channel-major like the weight's (C, kh, kw)
    layout, one column per output position."""
    a, pad = _padded(module, a)
    return F.unfold(a, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride)


def grouped_patches(module: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """`conv_patches` split by the convolution's groups: (B, groups, C/groups·kh·kw, L). Output channels of
    group g see only the rows of group g (a depthwise convolution: one input channel each)."""
    cols = conv_patches(module, a)
    return cols.reshape(a.shape[0], module.groups, -1, cols.shape[-1])
