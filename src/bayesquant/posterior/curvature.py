"""Curvature accumulators for the diagonal Laplace posterior, computed with module hooks.

Per-example squared gradients need no per-example backward pass: for a Linear layer y = W a the gradient
of example n's loss is G_n = Σ_t g_{n,t} a_{n,t}ᵀ (t runs over tokens or positions, g = ∂ℓ/∂y), so forward
hooks keep the inputs a, one `torch.autograd.grad` call returns the output gradients g of every module at
once, and Σ_n G_n² is formed here (BackPACK's trick, Dangel et al. 2020). Conv2d is the same with the
unfolded input (im2col). Weight gradients themselves are never computed.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from bayesquant.nn.patches import grouped_patches


def per_example_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The per-example weight gradients G_n, shape (B, *weight.shape), from one call's input and output grad."""
    if isinstance(module, nn.Linear):
        a = a.reshape(a.shape[0], -1, a.shape[-1])  # (B, T, in)
        g = g.reshape(g.shape[0], -1, g.shape[-1])  # (B, T, out)
        return torch.bmm(g.transpose(1, 2), a)  # (B, out, in)
    if isinstance(module, nn.Conv2d):
        B, groups = a.shape[0], module.groups
        cols = grouped_patches(module, a)  # (B, groups, cin_g·kh·kw, L)
        g = g.reshape(B, groups, -1, cols.shape[-1])  # (B, groups, out_g, L)
        G = torch.einsum("bgol,bgkl->bgok", g, cols)  # (B, groups, out_g, cin_g·kh·kw)
        return G.reshape(B, *module.weight.shape)
    raise TypeError(f"per-example gradients of {type(module).__name__} are not implemented")


CHUNK_ELEMENTS = 1 << 25  # per-example work tensors (unfolded patches, gradients) kept below 128 MB of float32


def _examples_per_chunk(module: nn.Module, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """How many examples' per-example gradients (and, for a convolution, unfolded patches) fit CHUNK_ELEMENTS."""
    per_example = module.weight.numel()
    if isinstance(module, nn.Conv2d):  # the patches: cin·kh·kw values at each output position
        per_example = max(
            per_example, sum(module.weight[0].numel() * module.groups * g[0, 0].numel() for _, g in calls)
        )
    return max(1, CHUNK_ELEMENTS // per_example)


def squared_grad_sum(module: nn.Module, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ_n G_n² over the batch, summing each example's gradient over every call of the module first. Examples
    are taken a chunk at a time, so a depthwise convolution's unfolded patches of a whole batch of 224 × 224
    images (gigabytes) are never held at once."""
    if len(calls) == 1 and isinstance(module, nn.Linear) and calls[0][0].dim() == 2:
        a, g = calls[0]  # one position per example: G_n = g_n a_nᵀ, so Σ_n G_n² = (g²)ᵀ (a²)
        return (g * g).T @ (a * a)
    n, step = calls[0][0].shape[0], _examples_per_chunk(module, calls)
    total = torch.zeros_like(module.weight, dtype=calls[0][0].dtype)
    for s in range(0, n, step):
        G = sum(per_example_grads(module, a[s : s + step], g[s : s + step]) for a, g in calls)
        total += (G * G).sum(0)
    return total


class InputRecorder:
    """Forward hooks keeping each module's inputs and outputs of the current forward pass."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.calls[name].append((args[0].detach(), out))

        return hook

    def clear(self) -> None:
        self.calls.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.calls.clear()

    def outputs(self) -> list[tuple[str, int, torch.Tensor]]:
        return [(n, k, out) for n, calls in self.calls.items() for k, (_a, out) in enumerate(calls)]

    def add_squared_grads(self, loss: torch.Tensor, into: dict[str, torch.Tensor], retain_graph: bool) -> None:
        """into[name] += Σ_n (∂(per-example part of `loss`)/∂W)² for every recorded module."""
        outs = self.outputs()
        grads = torch.autograd.grad(loss, [o for _, _, o in outs], retain_graph=retain_graph, allow_unused=True)
        by_module: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for (name, k, out), g in zip(outs, grads, strict=True):
            a = self.calls[name][k][0]
            by_module[name].append((a, torch.zeros_like(out) if g is None else g.detach()))
        for name, calls in by_module.items():
            dtype = into[name].dtype
            into[name] += squared_grad_sum(self.modules[name], [(a.to(dtype), g.to(dtype)) for a, g in calls])

    def add_input_squares(self, into: dict[str, torch.Tensor]) -> None:
        """into[name] += Σ_rows 2·a² per input column (the diagonal of the layer Hessian 2XXᵀ, summed)."""
        for name, calls in self.calls.items():
            module = self.modules[name]
            for a, _out in calls:
                a = a.to(into[name].dtype)
                if isinstance(module, nn.Conv2d):
                    cols = grouped_patches(module, a)  # (B, groups, cin_g·kh·kw, L)
                    into[name] += 2 * (cols * cols).sum((0, 3))  # (groups, cin_g·kh·kw)
                else:
                    into[name] += 2 * (a * a).reshape(-1, a.shape[-1]).sum(0)  # (in,)


def expand_layerwise(module: nn.Module, colsum: torch.Tensor) -> torch.Tensor:
    """Broadcast per-input-column curvature to the weight's shape (every output row sees the same columns)."""
    w = module.weight
    if isinstance(module, nn.Conv2d):
        out_g = w.shape[0] // module.groups
        per_group = colsum.reshape(module.groups, 1, -1).expand(module.groups, out_g, colsum.shape[-1])
        return per_group.reshape(w.shape).clone()
    return colsum.expand(w.shape).clone()


def layerwise_buffer(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """Zeros for `add_input_squares`: (in,) for Linear, (groups, cin_g·kh·kw) for Conv2d."""
    w = module.weight
    if isinstance(module, nn.Conv2d):
        return torch.zeros(module.groups, w[0].numel(), dtype=dtype)
    return torch.zeros(w.shape[1], dtype=dtype)
