"""Convolution input patches (im2col) as the layer pads them, and the GPTQ Hessian of grouped convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesquant.nn.patches import conv_patches, grouped_patches
from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.hessian import HessianAccumulator
from bayesquant.solvers.rtn import rtn_quantize


class StaticSame(nn.Conv2d):
    """EfficientNet's Conv2dStaticSamePadding: TensorFlow's asymmetric "same" padding, applied in forward."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, size: int, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, groups=groups, bias=False)
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, None, self.stride, 0, self.dilation, self.groups)


CONVS = {
    "padding 1, stride 2": lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False),
    "same, even kernel": lambda: nn.Conv2d(3, 5, 2, padding="same", bias=False),
    "same, dilation 2": lambda: nn.Conv2d(3, 5, 3, padding="same", dilation=2, bias=False),
    "valid": lambda: nn.Conv2d(3, 5, 3, padding="valid", bias=False),
    "reflect": lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect", bias=False),
    "static same, stride 2": lambda: StaticSame(3, 5, 3, 2, 9),
    "depthwise": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
    "depthwise, static same": lambda: StaticSame(6, 12, 5, 2, 9, groups=6),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", CONVS)
def test_patches_times_the_weight_is_the_convolution(name):
    torch.manual_seed(0)
    conv = CONVS[name]().double()
    x = torch.randn(2, conv.in_channels, 9, 9, dtype=torch.float64)
    out = conv(x)
    cols = grouped_patches(conv, x)  # (B, G, c, L)
    w = conv.weight.reshape(conv.groups, conv.out_channels // conv.groups, -1)  # (G, out/G, c)
    y = torch.einsum("goc,bgcl->bgol", w, cols).reshape(out.shape)
    torch.testing.assert_close(y, out)
    if conv.groups == 1:
        torch.testing.assert_close(conv_patches(conv, x), cols[:, 0])


def test_grouped_hessian_is_the_mean_of_the_groups_hessians():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)
    acc = HessianAccumulator(conv)
    xs = [torch.randn(3, 4, 6, 6) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1) for _ in range(2)]
    for x in xs:
        acc.add_batch(x)
    per_group = []
    for g in range(4):
        rows = torch.cat([F.unfold(x[:, g : g + 1].double(), 3, padding=1).transpose(1, 2).reshape(-1, 9) for x in xs])
        per_group.append(2 * rows.T @ rows / len(rows))
    assert acc.H.shape == (9, 9)
    torch.testing.assert_close(acc.H.double(), torch.stack(per_group).mean(0), rtol=1e-5, atol=1e-5)


def test_gptq_on_a_depthwise_convolution_lowers_each_groups_own_error():
    """With the groups' mean Hessian, GPTQ still lowers the exact objective Σ_g eᵀ H_g e below round-to-nearest's,
    for inputs whose channels have different spatial correlations."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    smooth = torch.randn(64, 16, 12, 12).cumsum(-1).cumsum(-2)  # strongly correlated neighbouring pixels
    x = torch.where(torch.arange(16).view(1, 16, 1, 1) % 2 == 0, smooth, torch.randn(64, 16, 12, 12))
    acc = HessianAccumulator(conv)
    acc.add_batch(x)
    cols = grouped_patches(conv, x).double()  # (B, G, 9, L)
    X = cols.permute(1, 0, 3, 2).reshape(16, -1, 9)
    Hg = 2 * X.transpose(1, 2) @ X / X.shape[1]
    W = conv.weight.detach().flatten(1)

    def objective(Q: torch.Tensor) -> float:
        E = (W - Q).double().unsqueeze(1)  # (G, 1, 9)
        return float((E @ Hg @ E.transpose(1, 2)).sum())

    rtn = objective(rtn_quantize(W, 3).dequantize())
    gptq = objective(gptq_quantize(W, acc.H, 3).dequantized)
    assert gptq < 0.5 * rtn
