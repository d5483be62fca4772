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


def _padded(module: nn.Conv2d, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution sees it, and the zero padding F.unfold must still add."""
    static = getattr(module, "static_padding", None)
    if isinstance(static, nn.ZeroPad2d):
        a = static(a)
    elif type(module).forward is not nn.Conv2d.forward and not (static is None or type(static).__name__ == "Identity"):
        raise TypeError(f"{type(module).__name__} overrides nn.Conv2d.forward; its input patches are unknown")
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
