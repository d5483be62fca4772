"""The packed QBNN format: b-bit codes of μ̂ and σ̂ with their grids, written and read with safetensors.

A QBNN directory holds two files:

    qbnn.safetensors   per Bayesian layer NAME: VPQ/JQ — NAME.mu.codes (packed b1-bit, `nn/packing.py`),
                       NAME.mu.scale, NAME.mu.zero (float16, one per row or one per tensor), NAME.sigma.codes
                       (b2-bit) with NAME.sigma.log_min, NAME.sigma.log_step (log grid) or NAME.sigma.scale,
                       NAME.sigma.zero (uniform grid); float/SPQ — NAME.mu, NAME.sigma (float32); NAME.bias
                       (float32) when the layer has one
    config.json        {"format": "bayesquant-qbnn", "format_version": 1, "net", "quant", "prior_std",
                       "layers": {NAME: spec}, "extra", "size"}

Decoding: μ̂ = scale·(code − zero); σ̂ = exp(log_min + log_step·code) (log) or scale·(code − zero) (uniform), the
grids read in float32. SPQ quantizes the sampled weights at run time, so it needs no stored codes. The size
report is measured from the written file (DESIGN §3) and compared with the same model written in float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import Tensor

from bayesquant.bnn.layers import inverse_softplus
from bayesquant.bnn.qbnn import (
    QBNN,
    Granularity,
    NetConfig,
    QBayesLayer,
    QuantConfig,
    SigmaQuantizer,
    _fixed,
    _rows,
    build_net,
    uniform_grid,
)
from bayesquant.errors import UserError
from bayesquant.nn.packing import pack_bits, unpack_bits
from bayesquant.paths import atomic_dir
from bayesquant.quantizers import fit_log
from bayesquant.quantizers.log import quantize_log
from bayesquant.quantizers.uniform import quantize_uniform

__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "decode_layer", "encode_layer", "load_qbnn", "save_qbnn"]

FORMAT = "bayesquant-qbnn"
FORMAT_VERSION = 1
WEIGHTS = "qbnn.safetensors"
CONFIG = "config.json"


def _uniform_codes(w2: Tensor, bits: int, symmetric: bool, fixed: float | None = None) -> dict[str, Tensor]:
    p = uniform_grid(w2.float(), bits, symmetric, fixed)
    return {"codes": quantize_uniform(w2.float(), p), "scale": p.scale.half(), "zero": p.zero.half()}


def encode_layer(layer: QBayesLayer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors `save_qbnn` writes for one layer, and its spec (how to decode them).

    VPQ/JQ: "mu.codes" (b1-bit, packed), "mu.scale", "mu.zero" (float16, one per row or tensor) and
    "sigma.codes" with "sigma.log_min", "sigma.log_step" (log) or "sigma.scale", "sigma.zero" (uniform).
    float/SPQ: "mu", "sigma" in float32. "bias" (float32) when the layer has one.
    """
    q = layer.quant
    mu, sigma = layer._clip(layer.mu.detach()).float(), layer.sigma.detach().float()
    spec: dict[str, Any] = {"shape": list(mu.shape), "granularity": q.granularity.value}
    out: dict[str, Tensor] = {}
    if q.mode.vpq:
        mu_rows = _rows(mu, Granularity.TENSOR if q.fixed_range else q.granularity)
        rows = mu_rows.shape[0]
        u = _uniform_codes(mu_rows, q.mu_bits, q.symmetric, _fixed(q))
        out |= {"mu.codes": pack_bits(u["codes"], q.mu_bits), "mu.scale": u["scale"], "mu.zero": u["zero"]}
        s2 = _rows(sigma, q.granularity)
        if q.sigma_quantizer == SigmaQuantizer.LOG:
            p = fit_log(s2.clamp_min(torch.finfo(torch.float32).tiny), q.sigma_bits)
            codes = quantize_log(s2.clamp_min(torch.finfo(torch.float32).tiny), p)
            out |= {"sigma.log_min": p.log_min.half(), "sigma.log_step": p.log_step.half()}
        else:
            u = _uniform_codes(s2, q.sigma_bits, q.symmetric)
            codes = u["codes"]
            out |= {"sigma.scale": u["scale"], "sigma.zero": u["zero"]}
        out["sigma.codes"] = pack_bits(codes, q.sigma_bits)
        spec |= {"mu": "uniform", "mu_bits": q.mu_bits, "sigma": q.sigma_quantizer.value, "sigma_bits": q.sigma_bits,
                 "rows": rows, "sigma_rows": s2.shape[0]}  # fmt: skip
    else:
        out |= {"mu": mu.contiguous(), "sigma": sigma.contiguous()}
        spec |= {"mu": "float", "sigma": "float"}
    if layer.bias is not None:
        out["bias"] = layer.bias.detach().float().contiguous()
    return out, spec


def decode_layer(t: dict[str, Tensor], spec: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(μ̂, σ̂) float32 in the layer's shape from `encode_layer`'s tensors (grids read in float32)."""
    shape = tuple(spec["shape"])
    if spec["mu"] == "float":
        return t["mu"].float().reshape(shape), t["sigma"].float().reshape(shape)
    n, rows = math.prod(shape), spec["rows"]
    mu_codes = unpack_bits(t["mu.codes"], spec["mu_bits"], n).view(rows, -1)
    mu = t["mu.scale"].float() * (mu_codes.float() - t["mu.zero"].float())
    s_rows = spec.get("sigma_rows", rows)
    s_codes = unpack_bits(t["sigma.codes"], spec["sigma_bits"], n).view(s_rows, -1).float()
    if spec["sigma"] == "log":
        sigma = torch.exp(t["sigma.log_min"].float() + t["sigma.log_step"].float() * s_codes)
    else:
        sigma = t["sigma.scale"].float() * (s_codes - t["sigma.zero"].float())
    return mu.reshape(shape), sigma.reshape(shape)


def _float_reference_bytes(model: QBNN) -> int:
    """Bytes of the same model written in the same format with float32 μ, σ (and biases): the baseline."""
    tensors = {}
    for name, layer in model.layers().items():
        tensors[f"{name}.mu"] = layer.mu.detach().float().contiguous()
        tensors[f"{name}.sigma"] = layer.sigma.detach().float().contiguous()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.detach().float().contiguous()
    return len(save(tensors))


def save_qbnn(model: QBNN, directory: str | Path, *, extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write `model` as DIR/qbnn.safetensors (codes and grids) + DIR/config.json, atomically; freezes the model
    to the stored values. Returns the size report, measured from the written file:

    packed_bytes (the weights file), float32_bytes (the same model written with float32 μ, σ), size_reduction =
    float32_bytes / packed_bytes, nominal_bits (code bits per weight: μ + σ), storable_bits (tensor bytes of
    the file × 8 per weight, grids and biases included).
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise UserError(f"--out {directory}: already exists and is not empty; choose another directory or --overwrite")
    tensors: dict[str, Tensor] = {}
    specs: dict[str, Any] = {}
    for name, layer in model.layers().items():
        t, spec = encode_layer(layer)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in t.items()}
        specs[name] = spec
        layer.freeze(*decode_layer(t, spec))
    n = model.n_weights()
    q = model.quant
    nominal = (q.mu_bits + q.sigma_bits) if q.mode.vpq else 64
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "net": model.net_config.to_dict(),
        "quant": q.to_dict(), "prior_std": model.prior_std, "layers": specs, "extra": extra or {},
    }  # fmt: skip
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        packed = (tmp / WEIGHTS).stat().st_size
        tensor_bytes = sum(v.numel() * v.element_size() for v in tensors.values())
        float_bytes = _float_reference_bytes(model)
        size = {
            "packed_bytes": packed, "float32_bytes": float_bytes, "size_reduction": float_bytes / packed,
            "tensor_bytes": tensor_bytes, "n_weights": n, "nominal_bits": nominal,
            "storable_bits": tensor_bytes * 8 / n,
        }  # fmt: skip
        config["size"] = size
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return size


def load_qbnn(directory: str | Path) -> tuple[QBNN, dict]:
    """A frozen `QBNN` and its config.json from a `save_qbnn` directory (safetensors: never pickle)."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG, directory / WEIGHTS
    if not (cfg_path.is_file() and w_path.is_file()):
        raise UserError(f"--model {directory}: not a QBNN directory (needs {CONFIG} and {WEIGHTS}); "
                        "create one with `bayesquant qbnn train --out DIR`")  # fmt: skip
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"--model {directory}: format {config.get('format')!r} v{config.get('format_version')}; "
                        f"this bayesquant reads {FORMAT} v{FORMAT_VERSION}")  # fmt: skip
    net_cfg = NetConfig(**config["net"])
    quant = QuantConfig.from_dict(config["quant"])
    model = QBNN.from_pretrained(build_net(net_cfg), net_cfg, quant, prior_std=config["prior_std"])
    tensors = load_file(str(w_path))
    for name, layer in model.layers().items():
        spec = config["layers"].get(name)
        if spec is None:
            raise UserError(f"--model {directory}: layer {name!r} missing from {CONFIG}")
        prefix = f"{name}."
        t = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        mu, sigma = decode_layer(t, spec)
        with torch.no_grad():
            layer.mu.copy_(mu)
            layer.rho.copy_(inverse_softplus(sigma.clamp_min(1e-30)).to(layer.rho))
            if layer.bias is not None:
                layer.bias.copy_(t["bias"])
        layer.freeze(mu, sigma)
    return model.eval(), config
