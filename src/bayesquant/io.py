"""The packed checkpoint: save and load a quantized zoo model, and measure its size.

A checkpoint is a directory with two files:

    model.safetensors   the whole state dict: QuantLinear/QuantConv2d/QuantEmbedding buffers (packed codes,
                        float16 grids, perm or segmap) and every remaining float parameter and buffer; tied tensors
                        stored once
    config.json         {"format": "bayesquant-packed", "format_version": 2, "key": zoo key, "method", "plan",
                        "extra", "modules": {qualified name: spec()}, "file": {"name", "bytes", "sha256"},
                        "size": size report}
    source/             only for a model loaded from a Hugging Face directory ("key" is then that directory and
                        "source": "source"): its transformers config.json and tokenizer files, so the checkpoint
                        loads without the original directory

Loading rebuilds the zoo model (architecture, tokenizer, task), swaps in empty packed modules from their
specs and loads the tensors with safetensors (never pickle), with strict key checking.

Sizes are measured (DESIGN §3): `storable_bits` = bytes of every stored tensor of the quantized modules
except their bias (codes, scales, zeros, codebooks, perms or segment maps) × 8 / number of quantized weights,
read from the safetensors header of the written file. Quantized embedding tables (`--embedding-bits`) are
counted in a line of their own, "embeddings", so that storable bits compare the layers every method quantizes.

>>> path = save_quantized(model, "out/lenet-rtn4", key="lenet5-mnist", method="rtn")  # doctest: +SKIP
>>> load_quantized(path).meta["size"]["storable_bits"]  # doctest: +SKIP
4.5
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from bayesquant.errors import ModelError, UserError
from bayesquant.models.zoo import HF_SOURCE, LoadedModel
from bayesquant.nn.layers import (
    TIED,
    QuantEmbedding,
    QuantTiedLinear,
    module_from_spec,
    module_specs,
    quant_tensor_names,
    set_submodule,
)
from bayesquant.paths import atomic_dir

__all__ = [
    "CONFIG",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS",
    "is_packed_dir",
    "load_quantized",
    "read_config",
    "save_quantized",
    "size_report",
]

FORMAT = "bayesquant-packed"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)  # version 2 adds the segment-map permutation (spec "perm": "segments"); 1 is a subset
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SOURCE = "source"
_RECREATE = "re-create it with `bayesquant quantize ... --out DIR`"


def _rebuild(key: str) -> LoadedModel:
    """The float zoo model `key` that a checkpoint's tensors are loaded into (tests monkeypatch this)."""
    from bayesquant.models import load_model
    from bayesquant.models.zoo import ZOO

    if key not in ZOO and not Path(key).is_dir():
        raise ModelError(
            f"the checkpoint was quantized from {key!r}, which is not a zoo model: load it in Python into the float "
            "model it came from, load_quantized(DIR, model=LoadedModel(...))"
        )
    return load_model(key, weights=False)  # the packed tensors replace every weight


# ---------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tensor_bytes(path: Path) -> dict[str, int]:
    """Stored bytes of every tensor in a safetensors file, from its header's data offsets."""
    try:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > path.stat().st_size - 8:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(fh.read(n))
        return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc}); {_RECREATE}") from None


def _json_ready(name: str, value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name}: must be JSON-serialisable (plain dicts, lists, numbers, strings): {exc}") from None
    return value


def is_packed_dir(path: str | Path) -> bool:
    """True when `path` is a directory written by `save_quantized` (its config.json names the format)."""
    try:
        return json.loads((Path(path) / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(directory: str | Path) -> dict:
    """The validated config.json of a packed checkpoint; ModelError when missing, invalid or of another version."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ModelError(f"{path}: missing; {directory} is not a bayesquant packed model directory ({_RECREATE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); {_RECREATE}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelError(f"{path}: format {found!r} is not {FORMAT!r}; {_RECREATE}")
    if config.get("format_version") not in READS_VERSIONS:
        raise ModelError(
            f"{path}: format_version {config.get('format_version')!r} is not supported "
            f"(this bayesquant reads {' and '.join(map(str, READS_VERSIONS))}); {_RECREATE}"
        )
    for k, kind in (("key", str), ("modules", dict), ("file", dict)):
        if not isinstance(config.get(k), kind):
            raise ModelError(f"{path}: the entry {k!r} is missing or not a {kind.__name__}; {_RECREATE}")
    if config.get("source", SOURCE) != SOURCE:
        raise ModelError(f"{path}: the entry 'source' must be {SOURCE!r}, not {config['source']!r}; {_RECREATE}")
    return config


def _verify(path: Path, record: dict) -> None:
    """Check the weights file against the size and sha256 recorded in config.json."""
    if not path.is_file():
        raise ModelError(f"{path}: missing; {_RECREATE}")
    size, want = path.stat().st_size, record.get("bytes")
    if size != want:
        raise ModelError(f"{path}: {size} bytes, config.json records {want} (truncated or changed); {_RECREATE}")
    if _sha256(path) != record.get("sha256"):
        raise ModelError(f"{path}: sha256 differs from config.json (corrupt or changed); {_RECREATE}")


def _check_target(directory: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier packed checkpoint."""
    if directory.exists():
        if not directory.is_dir():
            raise UserError(f"--out {directory}: exists and is not a directory; choose another path")
        if any(directory.iterdir()) and not is_packed_dir(directory):
            raise UserError(f"--out {directory}: a non-empty directory that is not a packed model; choose another path")


# ---------------------------------------------------------------- size


EMBEDDING = QuantEmbedding.__name__  # reported apart: storable bits count the layers the method quantized


def _rows(specs: dict[str, dict], tensor_bytes: dict[str, int]) -> tuple[list[dict], dict]:
    """Per-module size rows and their totals (n_weights, nominal_bits, storable_bits, bytes)."""
    rows, total_bytes, total_n, total_code_bits = [], 0, 0, 0.0
    for name, spec in specs.items():
        n = math.prod(spec["shape"])
        nbytes = sum(tensor_bytes[f"{name}.{t}"] for t in quant_tensor_names(spec))
        cols = math.prod(spec["shape"][1:])
        nominal = sum(seg["bits"] * seg["n_cols"] for seg in spec["segments"]) / cols
        rows.append({"module": name, "n_weights": n, "nominal_bits": nominal, "storable_bits": nbytes * 8 / n,
                     "bytes": nbytes})  # fmt: skip
        total_bytes, total_n, total_code_bits = total_bytes + nbytes, total_n + n, total_code_bits + nominal * n
    totals = {
        "n_weights": total_n,
        "nominal_bits": total_code_bits / total_n if total_n else None,
        "storable_bits": total_bytes * 8 / total_n if total_n else None,
        "bytes": total_bytes,
    }
    return rows, totals


def _report(specs: dict[str, dict], tensor_bytes: dict[str, int]) -> dict:
    """The size report from module specs and the stored bytes of every tensor (by state-dict name)."""
    tied = {name: spec["tied_to"] for name, spec in specs.items() if spec.get("type") == TIED}  # no tensors
    specs = {name: spec for name, spec in specs.items() if name not in tied}
    quant = {f"{name}.{t}" for name, spec in specs.items() for t in quant_tensor_names(spec)}
    missing = sorted(quant - tensor_bytes.keys())
    if missing:
        raise ModelError(f"quantized tensors missing from the stored state dict: {', '.join(missing[:5])}")
    tables = {name: spec for name, spec in specs.items() if spec.get("type") == EMBEDDING}
    rows, totals = _rows({k: v for k, v in specs.items() if k not in tables}, tensor_bytes)
    report = {
        "n_quantized_weights": totals["n_weights"],
        "nominal_bits": totals["nominal_bits"],
        "storable_bits": totals["storable_bits"],
        "quantized_bytes": totals["bytes"],
        # every other stored tensor: float parameters and buffers, biases
        "other_bytes": sum(v for k, v in tensor_bytes.items() if k not in quant),
        "modules": rows,
    }
    if tables:  # quantized embedding tables, counted apart from the layers above
        emb_rows, emb = _rows(tables, tensor_bytes)
        report["embeddings"] = {**emb, "modules": emb_rows}
        if tied:  # output layers that read a table: its weights, counted once
            report["embeddings"]["tied"] = tied
    return report


def size_report(source: nn.Module | LoadedModel | str | Path) -> dict:
    """Measured size of a model with packed modules, or of a checkpoint directory (read from its file header).

    Returns {"n_quantized_weights", "nominal_bits" (mean code width), "storable_bits" (quantized tensor bytes
    × 8 / n_quantized_weights), "quantized_bytes", "other_bytes", "modules": per-module rows} over the quantized
    Linear/Conv2d layers; with quantized embedding tables also "embeddings": {"n_weights", "nominal_bits",
    "storable_bits", "bytes", "modules"} for those, which the first figures leave out.
    """
    if isinstance(source, (str, Path)):
        directory = Path(source)
        specs = read_config(directory)["modules"]
        sizes = _tensor_bytes(directory / WEIGHTS)
    else:
        module = source.module if isinstance(source, LoadedModel) else source
        specs = module_specs(module)
        sizes, seen = {}, set()
        for k, t in module.state_dict(keep_vars=True).items():
            ptr = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
            sizes[k] = 0 if ptr in seen else t.numel() * t.element_size()  # tied tensors are stored once
            seen.add(ptr)
    return _report(specs, sizes)


# ---------------------------------------------------------------- save / load


def save_quantized(
    model: nn.Module | LoadedModel,
    directory: str | Path,
    *,
    key: str,
    method: str,
    plan: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `model` (with packed modules) to `directory` atomically; returns the directory.

    key: the zoo key the model was built from (load_quantized rebuilds it); method: e.g. "gptq";
    plan, extra: JSON-serialisable records kept in config.json. An existing `directory` is replaced only if
    it is empty or an earlier packed checkpoint. A LoadedModel from a Hugging Face directory also writes its
    transformers config and tokenizer to `source/`.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    hf = isinstance(model, LoadedModel) and model.meta.get("source") == HF_SOURCE
    directory = Path(directory)
    specs = module_specs(module)
    if not specs:
        raise UserError("save_quantized: the model has no packed modules (QuantLinear, …); quantize it first")
    plan, extra = _json_ready("plan", plan), _json_ready("extra", extra)
    _check_target(directory)
    with atomic_dir(directory) as tmp:
        weights = tmp / WEIGHTS
        st_save_model(module, str(weights), metadata={"format": "pt", "bayesquant": f"{FORMAT}/{FORMAT_VERSION}"})
        size = _report(specs, _tensor_bytes(weights))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "key": key,
            "method": method,
            "plan": plan,
            "extra": extra,
            "modules": specs,
            "file": {"name": WEIGHTS, "bytes": weights.stat().st_size, "sha256": _sha256(weights)},
            "size": size,
            **({"source": SOURCE} if hf else {}),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if hf:
            module.config.save_pretrained(tmp / SOURCE)
            model.tokenizer.save_pretrained(tmp / SOURCE)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_quantized(directory: str | Path, model: LoadedModel | None = None) -> LoadedModel:
    """Load a checkpoint written by `save_quantized`: the zoo model with its packed modules, `meta` = config.
    `model`: the float model to load into instead of rebuilding one (a model of your own, built as the one that
    was quantized; its modules are replaced in place).

    Raises ModelError when config.json is missing or invalid, or when model.safetensors does not match the
    size and sha256 recorded in it (truncated or tampered).
    """
    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS
    _verify(weights, config["file"])
    if model is not None and not isinstance(model, LoadedModel):
        raise UserError(f"model={type(model).__name__}: give a LoadedModel (the float model, as given to quantize)")
    loaded = model
    if loaded is None:
        source = config.get("source")
        try:
            loaded = _rebuild(str(directory / source) if source else config["key"])
        except ModelError as exc:
            raise ModelError(f"{directory}: {exc}") from None
    loaded.key = config["key"]
    module = loaded.module
    tied = {k: spec for k, spec in config["modules"].items() if isinstance(spec, dict) and spec.get("type") == TIED}
    for name, spec in config["modules"].items():
        if name in tied:
            continue  # after the tables they read
        try:
            old = module.get_submodule(name)
        except AttributeError:
            raise ModelError(f"{directory}: module {name!r} does not exist in {config['key']}; {_RECREATE}") from None
        try:
            new = module_from_spec(spec)
        except ValueError as exc:
            raise ModelError(f"{directory}/{CONFIG}: module {name!r}: {exc}; {_RECREATE}") from None
        old_shape = tuple(getattr(old, "weight", torch.empty(0)).shape)
        if old_shape != new.weight_shape:
            raise ModelError(
                f"{directory}: module {name!r} has weight {old_shape} in {config['key']} but {new.weight_shape} "
                f"in the checkpoint; {_RECREATE}"
            )
        set_submodule(module, name, new)
    for name, spec in tied.items():
        try:
            table = module.get_submodule(str(spec.get("tied_to")))
            module.get_submodule(name)
            set_submodule(module, name, QuantTiedLinear(table, spec["tied_to"]))
        except (AttributeError, TypeError) as exc:
            raise ModelError(f"{directory}/{CONFIG}: tied module {name!r}: {exc}; {_RECREATE}") from None
    try:
        st_load_model(module, weights, strict=True)
    except Exception as exc:  # safetensors raises RuntimeError/SafetensorError for key or shape mismatches
        raise ModelError(f"{weights}: does not fit {config['key']} ({exc}); {_RECREATE}") from None
    loaded.module = module.eval()
    loaded.meta = config
    return loaded
