"""Affine quantization with round-to-nearest: scales, zero-points, granularity, and the model-wide swap."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import validate
from .models import linear_weights

GRANULARITIES = ("tensor", "channel", "token", "group")  # channel: per output row of a weight; token: per row of activations


def check_float(x: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Refuse integer tensors and tensors holding NaN or Inf, with a message that says what to do."""
    return validate.tensor(x, name, kind="float")


def check_bits(bits: int, symmetric: bool) -> None:
    """Bits must be an integer in 1..16 (2..16 for a symmetric grid, which needs a sign)."""
    validate.flag(symmetric, "symmetric")
    low = 2 if symmetric else 1
    if isinstance(bits, bool) or not (isinstance(bits, int) and low <= bits <= 16):
        raise validate.BadInput(f"bits must be an integer in {low}..16 for a {'symmetric' if symmetric else 'asymmetric'} "
                                f"grid, got {bits!r}")


def divisors_hint(n: int) -> list[int]:
    """Group sizes that divide n: the multiples of 16 where any do (kernels want them), else every divisor above 1."""
    return [g for g in range(16, n + 1, 16) if n % g == 0] or [g for g in range(2, n + 1) if n % g == 0]


def _rows(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """Reshape so that each row shares one scale."""
    validate.choice(granularity, "granularity", GRANULARITIES)
    if granularity != "group" and group_size is not None:
        raise validate.BadInput(f"group_size={group_size!r} applies to granularity='group' only, got "
                                f"granularity={granularity!r}: pass granularity='group' or leave group_size out")
    if granularity == "tensor":
        return x.reshape(1, -1)
    if x.dim() != 2:
        raise ValueError(f"{granularity} granularity needs a 2-D tensor [rows, columns], got shape {tuple(x.shape)}")
    if granularity != "group":
        return x
    if isinstance(group_size, bool) or not (isinstance(group_size, int) and group_size > 0):
        raise validate.BadInput(f"granularity='group' needs a positive integer group_size, got {group_size!r}")
    if x.shape[1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input dimension {x.shape[1]} "
                         f"(shape {tuple(x.shape)}); sizes that do: {divisors_hint(x.shape[1])}")
    return x.reshape(-1, group_size)


def absmax_scale(rows: torch.Tensor, qmax: float, clip: float = 1.0) -> torch.Tensor:
    """The symmetric scale of each row (last dimension): its largest magnitude, times clip, maps to code qmax."""
    validate.number(qmax, "qmax", 0, lo_open=True, todo="the largest code, e.g. 127 for 8 bits (2 ** (bits - 1) - 1)")
    validate.number(clip, "clip", 0, 1, lo_open=True, todo="the fraction of the row's largest magnitude kept, in (0, 1]")
    return (rows.abs().amax(-1, keepdim=True) * clip / qmax).clamp_min(1e-12)  # an all-zero row: a tiny scale


@dataclass
class Quantized:
    """Integer codes with their scale and zero-point per row of `rows` (see _rows), and the float reconstruction."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    dequantized: torch.Tensor


def quantize_rtn(x: torch.Tensor, bits: int = 8, granularity: str = "tensor", group_size: int | None = None,
                 symmetric: bool = True, clip: float = 1.0, float_offset: bool = False) -> Quantized:
    """Round-to-nearest affine quantization: q = clamp(round(x / scale) + zero), x_hat = (q - zero) * scale.

    Symmetric: zero = 0, scale = absmax / (2**(bits-1) - 1). Asymmetric: codes 0..2**bits - 1 span [min, max]
    (widened to include 0) with an integer zero-point, as GPTQ and AWQ store it. float_offset=True instead
    keeps the row minimum itself as a float offset, x_hat = q * scale + min, as GGUF's Q4_1 stores it.
    clip < 1 shrinks the range, trading clipped outliers for a finer step.
    """
    check_float(x, "x")
    check_bits(bits, symmetric)
    validate.number(clip, "clip", 0, 1, lo_open=True, todo="clip is the fraction of the range kept, e.g. 0.9")
    validate.flag(float_offset, "float_offset")
    if symmetric and float_offset:
        raise ValueError("float_offset applies to asymmetric grids only: pass symmetric=False")
    rows = _rows(x.float(), granularity, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1  # restricted range +-qmax: zero sits exactly in the middle
        qmin = -qmax
        scale = absmax_scale(rows, qmax, clip)
        zero = torch.zeros_like(scale)
    elif float_offset:
        qmax = 2**bits - 1
        lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
        scale = ((hi - lo) * clip / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round((rows - lo) / scale), 0, qmax)
        return Quantized(q.to(torch.int32), scale, lo, (q * scale + lo).reshape(x.shape).to(x.dtype))
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = rows.amin(1, keepdim=True) * clip, rows.amax(1, keepdim=True) * clip
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # keep 0 exactly representable (padding, ReLU zeros)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale.clamp_min(1e-12))
    scale = scale.clamp_min(1e-12)  # an all-zero row gets a tiny scale instead of a division by zero
    q = torch.clamp(torch.round(rows / scale) + zero, qmin, qmax)
    return Quantized(q.to(torch.int32), scale, zero, ((q - zero) * scale).reshape(x.shape).to(x.dtype))


def fake_quant(x: torch.Tensor, bits: int = 8, granularity: str = "tensor", group_size: int | None = None,
               symmetric: bool = True, float_offset: bool = False) -> torch.Tensor:
    """x quantized and dequantized again: the values the integer codes stand for."""
    return quantize_rtn(x, bits, granularity, group_size, symmetric, float_offset=float_offset).dequantized


def storage_bits(code_bits: float, weights_per_scale: float | None = None, scale_bits: float = 16,
                 zero_bits: float = 0) -> float:
    """Bits stored per weight: its code plus its share of one scale (and zero-point) per `weights_per_scale` weights."""
    validate.number(code_bits, "code_bits", 0, lo_open=True, todo="bits per code, e.g. 4")
    if weights_per_scale is not None:
        validate.number(weights_per_scale, "weights_per_scale", 1, todo="weights sharing one scale, e.g. a group of 64")
    validate.number(scale_bits, "scale_bits", 0)
    validate.number(zero_bits, "zero_bits", 0)
    return code_bits if weights_per_scale is None else code_bits + (scale_bits + zero_bits) / weights_per_scale


def rtn_bits_per_weight(bits: int, granularity: str, shape: tuple, group_size: int | None = None,
                        symmetric: bool = True, scale_bits: int = 16, float_offset: bool = False) -> float:
    """storage_bits of RTN codes on a weight of `shape`: one scale (and zero-point: `bits` bits, or a 16-bit offset) per
    tensor, row or group."""
    check_bits(bits, symmetric)
    validate.choice(granularity, "granularity", GRANULARITIES)
    scale_bits = validate.integer(scale_bits, "scale_bits", lo=1, hi=64)
    validate.flag(float_offset, "float_offset")
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise validate.BadInput(f"shape must be a weight's (rows, columns), two positive integers, got {shape!r}")
    rows, cols = shape
    n_scales = {"tensor": 1, "channel": rows, "token": rows}.get(granularity)
    if n_scales is not None and group_size is not None:  # quantize_rtn refuses the same: groups only with 'group'
        raise validate.BadInput(f"group_size applies to granularity='group' only, got {granularity!r} with group_size="
                                f"{group_size}: leave group_size out, or use 'group'")
    if n_scales is None:
        _rows(torch.empty(shape), granularity, group_size)  # validates the group size
        n_scales = rows * cols // group_size
    return storage_bits(bits, rows * cols / n_scales, scale_bits, 0 if symmetric else 16 if float_offset else bits)


def error_stats(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """Mean squared error, worst absolute error, and MSE relative to the tensor's mean square (inf for an all-zero x)."""
    validate.tensor(x, "x", kind="float")
    validate.tensor(x_hat, "x_hat", kind="float")
    if x.shape != x_hat.shape:
        raise validate.BadInput(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    err = (x.float() - x_hat.float())
    mse, power = err.pow(2).mean().item(), x.float().pow(2).mean().item()
    rel = mse / power if power > 0 else (0.0 if mse == 0 else math.inf)
    return {"mse": mse, "max_abs": err.abs().max().item(), "rel_mse": rel}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32: how far a (a kernel's output) is from b (the reference), as a fraction of b."""
    validate.tensor(a, "a", kind="float")
    validate.tensor(b, "b (the reference)", kind="float")
    if a.shape != b.shape:
        raise validate.BadInput(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    if not bool(b.any()):  # relative to zero is undefined (it printed 2e30)
        if not bool(a.any()):
            return 0.0
        raise validate.BadInput("the reference b is all zeros, so an error relative to it is undefined: compare the "
                                "absolute error ((a - b).norm()) instead")
    return ((a - b).norm() / b.norm()).item()


@contextmanager
def swapped_weights(model, transform, names: list[str] | None = None):
    """Within the block, the decoder's linear weights (or only `names`) hold transform(weight); restored after.

    `transform` may also be a dict {name: function}, one function per layer (then only those layers change)."""
    weights = linear_weights(model)
    if isinstance(transform, dict):
        if not transform or not all(callable(f) for f in transform.values()):
            raise validate.BadInput("transform must be a function of a weight, or a non-empty dict {layer name: function}")
    elif not callable(transform):
        raise validate.BadInput(f"transform must be a function of a weight (e.g. lambda w: gptq.rtn(w, 4, 64)), got "
                                f"{type(transform).__name__}")
    names = list(transform) if isinstance(transform, dict) and names is None else names
    if names is not None:
        names = validate.texts(names, "names", "pass layer names from models.linear_weights(model)")
        unknown = [n for n in names if n not in weights]
        if unknown:
            raise validate.UnknownName(f"no linear layers named {unknown[:3]}; see models.linear_weights(model) for the names")
    chosen = weights if names is None else {n: weights[n] for n in names}
    saved = {n: w.data.clone() for n, w in chosen.items()}
    try:
        for n, w in chosen.items():
            new = (transform[n] if isinstance(transform, dict) else transform)(w.data)
            if not isinstance(new, torch.Tensor) or new.shape != w.shape:
                raise validate.BadInput(f"transform must return a tensor of the weight's shape {tuple(w.shape)} for "
                                        f"{n}, got {tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__}"
                                        ": return the dequantized weight, not codes or a packed layout")
            w.data = new
        yield model
    finally:
        for n, w in chosen.items():
            w.data = saved[n]


def quantized_weights(model, bits: int, granularity: str = "channel", group_size: int | None = None,
                      symmetric: bool = True, names: list[str] | None = None, float_offset: bool = False):
    """Within the block, the decoder's linear weights (or only `names`) hold their RTN-quantized values."""
    check_bits(bits, symmetric)
    _rows(torch.zeros(1, group_size if isinstance(group_size, int) and not isinstance(group_size, bool) and group_size > 0
                      else 1), granularity, group_size)  # the settings, checked before any weight changes
    return swapped_weights(model, lambda w: fake_quant(w, bits, granularity, group_size, symmetric, float_offset), names)


@contextmanager
def quantized_activations(model, bits: int = 8, granularity: str = "token", symmetric: bool = True):
    """Within the block, every decoder linear layer sees its input RTN-quantized (per tensor or per token)."""
    if granularity not in ("tensor", "token"):
        raise validate.UnknownName(f"activations are quantized per 'tensor' or per 'token', got {granularity!r}")
    check_bits(bits, symmetric)

    def rtn(x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x.reshape(-1, x.shape[-1]), bits, granularity, None, symmetric).reshape(x.shape)

    with transformed_inputs(model, rtn):
        yield model


@contextmanager
def transformed_inputs(model, transform):
    """Within the block, every decoder linear layer sees transform(its input) instead of its input."""
    validate.model(model)
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda _m, args: (transform(args[0]),) + args[1:])
               for n in linear_weights(model)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
