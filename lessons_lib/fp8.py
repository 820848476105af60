"""FP8 scaling recipes on real tensors: per tensor (static or dynamic), per row, 128 x 128 blocks, 1 x 128 groups,
and an FP8 KV cache. Casts go through torch's float8 dtypes, so every value is one the hardware can hold."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import validate
from .quantize import check_float

DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
GRANULARITIES = ("tensor", "row", "block", "group")  # block: b x b tiles (weights); group: 1 x b per row (activations)


def _dtype(fmt: str) -> torch.dtype:
    return DTYPES[validate.choice(fmt, "FP8 format", DTYPES)]


def _scale(scale, name: str = "scale"):
    """A positive finite number, or a tensor of them (one per scaling unit, broadcastable to x)."""
    if isinstance(scale, torch.Tensor):
        validate.tensor(scale, name, kind="float")
        if not bool((scale > 0).all()):
            raise validate.BadInput(f"{name} must be positive everywhere (it divides x): use fp8.scales(x, fmt)")
        return scale
    return validate.number(scale, name, 0, None, lo_open=True, todo="a scale divides x: use e.g. fp8.static_scale(calib)")


def max_value(fmt: str) -> float:
    """Largest finite value: 448 for E4M3 (fn variant), 57344 for E5M2."""
    return torch.finfo(_dtype(fmt)).max


def cast(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """x rounded to FP8 and back to float32, saturating at +-max (as production recipes clamp before the cast)."""
    m = max_value(fmt)
    check_float(x, "x")
    return x.float().clamp(-m, m).to(_dtype(fmt)).float()


def range_report(x: torch.Tensor, fmt: str = "e4m3", scale: float | torch.Tensor = 1.0) -> dict:
    """Cast x / scale to FP8: share of values that overflow (beyond max), underflow (nonzero -> 0), and the error."""
    check_float(x, "x")
    scale = _scale(scale)
    if isinstance(scale, torch.Tensor):
        validate.broadcasts(scale, x.shape, "scale", "one number, or a tensor broadcastable to x (fp8.scales(x, fmt, ...))")
    y = x.float() / scale
    q = cast(y, fmt)
    nonzero = y != 0
    err = (q * scale - x.float()).pow(2).mean() / x.float().pow(2).mean().clamp(min=1e-30)
    return {"overflow": (y.abs() > max_value(fmt)).float().mean().item(),
            "underflow": ((q == 0) & nonzero).float().mean().item(), "rel_mse": err.item()}


def _pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.pad(x, (0, -x.shape[1] % cols, 0, -x.shape[0] % rows))


def scales(x: torch.Tensor, fmt: str = "e4m3", granularity: str = "tensor", block: int = 128) -> torch.Tensor:
    """absmax / max for each scaling unit, broadcast back to x's shape (ragged edge blocks are allowed)."""
    check_float(x, "x")
    _dtype(fmt)
    validate.choice(granularity, "granularity", GRANULARITIES)
    block = validate.integer(block, "block", lo=1, todo="scaling blocks are a whole number of values, e.g. 128")
    if x.dim() != 2 and granularity != "tensor":
        raise ValueError(f"{granularity} scaling needs a 2-D tensor [rows, columns], got shape {tuple(x.shape)}")
    a = x.float().abs()
    if granularity == "tensor":
        s = a.amax().expand_as(a)
    elif granularity == "row":
        s = a.amax(1, keepdim=True).expand_as(a)
    elif granularity == "block":
        p = _pad(a, block, block)
        tiles = p.reshape(p.shape[0] // block, block, p.shape[1] // block, block).amax((1, 3))
        s = tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)[: a.shape[0], : a.shape[1]]
    else:
        p = _pad(a, 1, block)
        groups = p.reshape(p.shape[0], -1, block).amax(-1)
        s = groups.repeat_interleave(block, 1)[:, : a.shape[1]]
    return (s / max_value(fmt)).clamp(min=1e-12)


def quantize(x: torch.Tensor, fmt: str = "e4m3", granularity: str = "tensor", block: int = 128,
             scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """x through FP8 and back: dynamic scales per `granularity`, or a given (static, calibrated) scale."""
    check_float(x, "x")
    s = scales(x, fmt, granularity, block) if scale is None else torch.as_tensor(_scale(scale), dtype=torch.float32)
    validate.broadcasts(s, x.shape, "scale", "one per-tensor number, or a tensor broadcastable to x (fp8.scales(x, fmt, ...))")
    return cast(x.float() / s, fmt) * s


def static_scale(calibration: torch.Tensor, fmt: str = "e4m3") -> float:
    """One per-tensor scale from calibration data (its absmax / max), to reuse on every later input."""
    check_float(calibration, "calibration")
    if calibration.numel() == 0:
        raise ValueError("calibration is empty: pass at least one activation tensor")
    return max(calibration.abs().max().item() / max_value(fmt), 1e-12)


@contextmanager
def kv_cache(model, fmt: str = "e4m3", scale: float | None = 1.0, transform=None):
    """Within the block, keys and values are rounded to FP8 (after RoPE, as a KV cache stores them) before attention.

    scale=1.0 is what vLLM uses when a checkpoint carries no KV scales; None scales each call's keys and values
    dynamically per tensor. transform: a function (key, value) -> (key, value) on [batch, kv heads, tokens, head dim]
    used instead of the FP8 rounding (lessons_lib.kvcache's INT8 / INT4 caches pass theirs)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _dtype(fmt)
    validate.causal_lm(model)
    if scale is not None:
        _scale(scale)
    if transform is not None and not callable(transform):
        raise validate.BadInput(f"transform must be a function (key, value) -> (key, value), got {transform!r}")

    def attention(module, query, key, value, attention_mask, **kwargs):
        if transform is not None:
            key, value = (t.to(key.dtype) for t in transform(key, value))
        else:
            key, value = (quantize(t.reshape(-1, t.shape[-1]), fmt, "tensor", scale=scale).reshape(t.shape).to(t.dtype)
                          for t in (key, value))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    name = f"qht_fp8_kv_{fmt}" if transform is None else f"qht_kv_{getattr(transform, '__name__', 'custom')}"
    AttentionInterface.register(name, attention)
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
