"""An INT8 / INT4 KV cache: keys per channel and values per token (KIVI, Liu et al. 2024, arXiv:2402.02750) or both
per token, asymmetric round-to-nearest; applied through lesson 07's attention hook (fp8.kv_cache), and its memory
per token with every scale and zero-point counted."""
from __future__ import annotations

import torch

from . import fp8, validate
from . import hardware as hw
from .quantize import fake_quant, storage_bits

# name -> (bits, how keys share a scale, how values share one); fp8_e4m3 is lesson 07's cache with a per-tensor scale
FORMATS = {"fp16": (16, None, None), "fp8_e4m3": (8, "tensor", "tensor"),
           "int8_per_token": (8, "token", "token"), "int4_per_token": (4, "token", "token"),
           "int8_kivi": (8, "channel", "token"), "int4_kivi": (4, "channel", "token")}
TOKEN_GROUP = 32  # KIVI's keys share a scale per channel over groups of this many tokens


def _per_token(t: torch.Tensor, bits: int) -> torch.Tensor:
    """One scale and zero-point per token and head, over the head dimension."""
    return fake_quant(t.reshape(-1, t.shape[-1]).float(), bits, "channel", symmetric=False).reshape(t.shape)


def _per_channel(t: torch.Tensor, bits: int, group: int = TOKEN_GROUP) -> torch.Tensor:
    """One scale and zero-point per channel and head, over groups of `group` tokens (a ragged last group is its own)."""
    b, h, s, d = t.shape
    out = torch.empty_like(t, dtype=torch.float32)
    for start in range(0, s, group):
        chunk = t[:, :, start:start + group].float().transpose(2, 3)  # [b, h, d, tokens]
        out[:, :, start:start + group] = fake_quant(chunk.reshape(-1, chunk.shape[-1]), bits, "channel",
                                                    symmetric=False).reshape(chunk.shape).transpose(2, 3)
    return out


def transform(fmt: str):
    """The function (key, value) -> (key, value) that rounds a cache in `fmt`."""
    bits, keys, values = FORMATS[validate.choice(fmt, "KV cache format", FORMATS)]

    def apply(key: torch.Tensor, value: torch.Tensor):
        if keys is None:
            return key, value
        if keys == "tensor":
            return (fp8.quantize(t.reshape(-1, t.shape[-1]).float(), "e4m3", "tensor", scale=None).reshape(t.shape)
                    for t in (key, value))
        k = _per_channel(key, bits) if keys == "channel" else _per_token(key, bits)
        return k, _per_token(value, bits)

    apply.__name__ = fmt
    return apply


def cache(model, fmt: str):
    """Within the block, the model attends over keys and values rounded as a `fmt` cache stores them."""
    return fp8.kv_cache(model, transform=transform(fmt))


def bits_per_value(fmt: str, head_dim: int, group: int = TOKEN_GROUP) -> float:
    """Mean stored bits per cached number, K and V together: code plus a 16-bit scale and 16-bit zero-point per
    token (over head_dim values) or per channel (over `group` tokens); FP8's per-tensor scale is negligible."""
    bits, keys, _ = FORMATS[validate.choice(fmt, "KV cache format", FORMATS)]
    head_dim = validate.integer(head_dim, "head_dim", lo=1)
    group = validate.integer(group, "group", lo=1)
    if keys in (None, "tensor"):
        return float(bits)
    value_bits = storage_bits(bits, head_dim, 16, 16)
    key_bits = storage_bits(bits, group if keys == "channel" else head_dim, 16, 16)
    return (key_bits + value_bits) / 2


def bytes_per_token(shape: hw.ModelShape, fmt: str) -> float:
    """KV cache bytes per token over all layers (hardware's count of K and V values x bits_per_value / 8)."""
    hw.check_shape(shape)
    return shape.kv_bytes_per_token("fp16") / 2 * bits_per_value(fmt, shape.head_dim) / 8
