"""Bit packing of b-bit integer codes (b = 1..8) into bytes, vectorised.

Layout (little-endian bit order): code i occupies bits [i·b, (i+1)·b) of one long bit stream, and bit k of
the stream is bit (k mod 8) of byte ⌊k/8⌋. So n codes take exactly ⌈n·b/8⌉ bytes, the unused high bits of
the last byte are zero, and a code may straddle a byte boundary (b = 3, 5, 6, 7).

Implementation: 8 consecutive codes fill exactly b bytes, so codes are padded to a multiple of 8, each row
of 8 is combined into one 64-bit word (8·b ≤ 56 bits for b ≤ 7) and the word is cut into b bytes; unpacking
runs the same steps backwards. Only the 8 lanes and the b bytes are looped over, never the elements.

>>> codes = torch.tensor([5, 3, 7])
>>> pack_bits(codes, 3)  # 5 | 3 << 3 | 7 << 6 = 0b1_1101_1101
tensor([221,   1], dtype=torch.uint8)
>>> unpack_bits(pack_bits(codes, 3), 3, 3)
tensor([5, 3, 7], dtype=torch.uint8)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack_bits", "packed_nbytes", "unpack_bits"]


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: must be an integer in 1..8")
    return bits


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by `n` codes of `bits` bits: ⌈n·bits/8⌉."""
    _check_bits(bits)
    if n < 0:
        raise ValueError(f"n={n}: the number of codes cannot be negative")
    return (n * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer `codes` in [0, 2**bits) into a uint8 tensor of ⌈n·bits/8⌉ bytes.

    codes: integer tensor of n elements, (n,) or any shape (read in row-major order).
    Returns a new 1-D uint8 tensor on the codes' device.
    """
    bits = _check_bits(bits)
    if not isinstance(codes, Tensor):
        raise ValueError(f"codes: expected a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype == torch.bool or codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise ValueError(f"codes: expected an integer tensor, got dtype {codes.dtype}; round and cast first")
    flat = codes.reshape(-1)
    n = flat.numel()
    nbytes = packed_nbytes(n, bits)
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    lo, hi = torch.aminmax(flat)
    if int(lo) < 0 or int(hi) >= 1 << bits:
        raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}; got values in [{int(lo)}, {int(hi)}]")
    if bits == 8:
        return flat.to(torch.uint8, copy=True)
    rows = -(-n // 8)
    lanes = torch.zeros(rows * 8, dtype=torch.int64, device=codes.device)
    lanes[:n] = flat
    shifts = torch.arange(8, device=codes.device) * bits  # (8,) bit offset of each code inside its word
    words = (lanes.view(rows, 8) << shifts).sum(dim=1)  # (rows,) disjoint bit fields, so sum == OR
    byte_shifts = torch.arange(bits, device=codes.device) * 8  # (bits,)
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8)  # (rows, bits)
    return out.view(-1)[:nbytes].clone()


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of `pack_bits`: the first `n` codes of `packed` as a uint8 tensor of shape (n,).

    packed: 1-D uint8 tensor of exactly ⌈n·bits/8⌉ bytes.
    """
    bits = _check_bits(bits)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        what = f"{packed.dtype} tensor of shape {tuple(packed.shape)}" if isinstance(packed, Tensor) else packed
        raise ValueError(f"packed: expected a 1-D uint8 tensor, got {what}")
    nbytes = packed_nbytes(n, bits)
    if packed.numel() != nbytes:
        raise ValueError(f"packed has {packed.numel()} bytes; {n} codes of {bits} bits need exactly {nbytes}")
    if bits == 8:
        return packed.clone()
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, uint8 arithmetic only
        lanes = [(packed >> k) & mask for k in range(0, 8, bits)]  # scalar shifts vectorise; a stack is fastest
        return torch.stack(lanes, dim=1).view(-1)[:n]
    rows = -(-n // 8)
    wide = torch.int32 if bits == 3 else torch.int64  # a word holds 8·bits bits
    padded = torch.zeros(rows, bits, dtype=wide, device=packed.device)
    padded.view(-1)[:nbytes] = packed
    words = padded[:, 0].clone()  # (rows,) the loops below run over the bits bytes of a word, not elements
    for k in range(1, bits):
        words |= padded[:, k] << (8 * k)
    lanes = [((words >> (j * bits)) & mask).to(torch.uint8) for j in range(8)]
    return torch.stack(lanes, dim=1).view(-1)[:n]
