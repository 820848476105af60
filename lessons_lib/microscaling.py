"""Microscaling from the bits up: OCP MX blocks (32 elements share one E8M0 power-of-two scale) for MXFP8 (E4M3),
MXFP6 (E2M3, E3M2) and MXFP4 (E2M1), and NVIDIA's NVFP4 (16 E2M1 elements share an E4M3 scale; one FP32 scale per
tensor).

encode() returns the real bits: one code per element (the element format's bit pattern) and one byte per block
scale; packed() lays the codes out as bytes (a little-endian bit stream: two FP4 codes per byte, low nibble first,
as torchao and compressed-tensors store them) and gguf_blocks() as GGUF's MXFP4 / NVFP4 blocks. decode() turns the
bits back into float32. On a CPU (and on any GPU before Blackwell) all of this is emulated numerics: only tensor
cores of compute capability 10.x / 12.x multiply these bits directly.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import validate
from .formats import FloatFormat, get
from .quantize import storage_bits

# Element formats (OCP MX spec v1.0, section 5.3): FP6 and FP4 have no Inf or NaN; conversions saturate.
ELEMENTS: dict[str, FloatFormat] = {
    "e4m3": get("fp8_e4m3"),
    "e3m2": FloatFormat("FP6 E3M2", 3, 2, 3, "none", "saturate"),
    "e2m3": FloatFormat("FP6 E2M3", 2, 3, 1, "none", "saturate"),
    "e2m1": get("fp4_e2m1"),
}
# Block-scale formats: E8M0 (a bare power of two, bias 127), E4M3 (NVFP4), and two float scales for comparison.
SCALES = {"e8m0": 8, "e4m3": 8, "fp16": 16, "fp32": 32}
BLOCKS = (8, 16, 32, 64, 128, 256)  # block sizes an emulated scheme may use (the standard formats fix theirs)
E4M3_TINY = 2.0**-6  # smallest normal E4M3: NVFP4 block scales are clamped to [2**-6, 448] (torchao, NVIDIA)


@dataclass(frozen=True)
class Scheme:
    """A block format: `block` consecutive elements of `element` share one scale stored as `scale`.

    tensor_scale: NVFP4's second level, one FP32 scale per tensor that lets E4M3 block scales use their range."""

    name: str
    element: str
    block: int
    scale: str
    tensor_scale: bool = False

    @property
    def element_format(self) -> FloatFormat:
        return ELEMENTS[self.element]

    @property
    def emax(self) -> int:
        """Exponent of the element's largest power of two (2 for E2M1, 8 for E4M3): the MX scale aims amax there."""
        return int(np.floor(np.log2(self.element_format.max_finite)))


FORMATS: dict[str, Scheme] = {s.name.lower().replace(" ", "_"): s for s in (
    Scheme("MXFP8", "e4m3", 32, "e8m0"),
    Scheme("MXFP6_E3M2", "e3m2", 32, "e8m0"),
    Scheme("MXFP6_E2M3", "e2m3", 32, "e8m0"),
    Scheme("MXFP4", "e2m1", 32, "e8m0"),
    Scheme("NVFP4", "e2m1", 16, "e4m3", tensor_scale=True),
)}


def scheme(element: str, block: int, scale: str, tensor_scale: bool = False) -> Scheme:
    """An emulated block format for experiments (e.g. E2M1 with FP16 scales in blocks of 64)."""
    validate.choice(element, "element format", ELEMENTS)
    validate.choice(scale, "scale format", SCALES)
    block = validate.integer(block, "block", todo=f"pass one of {BLOCKS}")  # a whole float (64 / 2) is its int
    if block not in BLOCKS:
        raise validate.BadInput(f"block must be one of {BLOCKS}, got {block!r}")
    validate.flag(tensor_scale, "tensor_scale")
    if tensor_scale and scale != "e4m3":
        raise validate.BadInput("a tensor scale only helps E4M3 block scales (their range is narrow): pass scale='e4m3'")
    return Scheme(f"{element} {scale} scale, block {block}" + (" + tensor scale" if tensor_scale else ""),
                  element, block, scale, tensor_scale)


def _scheme(fmt: str | Scheme, block: int | None = None) -> Scheme:
    if isinstance(fmt, Scheme):
        s = fmt
    else:
        s = FORMATS[validate.choice(fmt, "microscaling format", FORMATS,
                                    "or build an emulated one with microscaling.scheme(element, block, scale)")]
    if block is not None and block != s.block:
        raise validate.BadInput(f"{s.name} defines blocks of {s.block} elements only, got block={block!r}: leave block "
                                f"out, or emulate another size with microscaling.scheme({s.element!r}, {block}, {s.scale!r})")
    return s


@dataclass(frozen=True)
class Encoded:
    """The bits of a tensor in a block format: element codes (uint8, x's shape), block scales (uint8 bit patterns
    for E8M0 / E4M3, float for FP16 / FP32 scales; shape [..., width / block]) and NVFP4's FP32 tensor scale."""

    scheme: Scheme
    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: float | None = None

    @property
    def shape(self) -> tuple:
        return tuple(self.codes.shape)

    def nbytes(self) -> int:
        """Bytes actually stored: packed codes, every block scale, the tensor scale."""
        scale_bytes = self.scales.numel() * SCALES[self.scheme.scale] // 8
        return packed(self).numel() + scale_bytes + (4 if self.tensor_scale is not None else 0)

    def bits_per_weight(self) -> float:
        """Measured storage per element: 8 x nbytes / elements."""
        return 8 * self.nbytes() / self.codes.numel()


def _check_input(x: torch.Tensor, s: Scheme) -> torch.Tensor:
    validate.tensor(x, "x", kind="float", todo="a weight or activation tensor, blocks run along its last dimension")
    if x.dim() == 0:
        raise validate.BadInput("x must have at least one dimension (blocks run along the last one)")
    if x.shape[-1] % s.block:
        good = [w for w in (x.shape[-1] - x.shape[-1] % s.block, x.shape[-1] + s.block - x.shape[-1] % s.block) if w]
        raise validate.BadInput(f"{s.name}: the last dimension ({x.shape[-1]}, shape {tuple(x.shape)}) is not a "
                                f"multiple of its block of {s.block}: pad or cut it to a multiple such as {good}")
    return x.float()


def element_codes(y: torch.Tensor, element: str) -> torch.Tensor:
    """Round y (already divided by its scale) to the element format, ties to even, saturating; return bit patterns."""
    f = ELEMENTS[validate.choice(element, "element format", ELEMENTS)]
    validate.tensor(y, "y", kind="float", nonempty=False, todo="NaN or Inf has no code in FP4 / FP6: find where it came from")
    magnitudes = f.values()[: 2 ** (f.bits - 1)]
    magnitudes = magnitudes[~magnitudes.isnan()]  # E4M3FN's pattern 0x7F is NaN
    mids = ((magnitudes[1:] + magnitudes[:-1]) / 2).float()  # exact in float32 for these small grids
    a = y.float().abs().clamp(max=f.max_finite).contiguous()
    code = torch.bucketize(a, mids)  # the nearest magnitude; a value on a midpoint gets the lower one ...
    on_mid = (a == mids[code.clamp(max=len(mids) - 1)]) & (code % 2 == 1)
    code = code + on_mid  # ... unless that code is odd: ties go to the even code (mantissa bit 0)
    return code.to(torch.uint8) | (torch.signbit(y).to(torch.uint8) << (f.bits - 1))  # sign kept for -0, as the spec does


def element_values(codes: torch.Tensor, element: str) -> torch.Tensor:
    """Each code's value in the element format (float32)."""
    f = ELEMENTS[validate.choice(element, "element format", ELEMENTS)]
    validate.tensor(codes, "codes", kind="integer", nonempty=False, todo="pass the codes of microscaling.encode(...)")
    table = f.values().float()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= len(table)):
        raise validate.BadInput(f"{element} codes run from 0 to {len(table) - 1}, got {int(codes.min())} to "
                                f"{int(codes.max())}")
    return table[codes.long()]


def e8m0_value(byte: torch.Tensor) -> torch.Tensor:
    """An E8M0 scale byte as float32: 2**(byte - 127) (255 would be NaN; encode never writes it)."""
    validate.tensor(byte, "byte", kind="integer", todo="pass the scale bytes of microscaling.encode(...).scales")
    if int(byte.min()) < 0 or int(byte.max()) > 255:
        raise validate.BadInput(f"an E8M0 scale is one byte, 0 to 255, got {int(byte.min())} to {int(byte.max())}")
    value = torch.ldexp(torch.ones(byte.shape), byte.long() - 127)
    return value.masked_fill(byte == 255, float("nan"))  # the format's one NaN encoding


def _block_amax(x: torch.Tensor, block: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], -1, block).abs().amax(-1)


def _repeat(s: torch.Tensor, block: int) -> torch.Tensor:
    return s.repeat_interleave(block, dim=-1)


def encode(x: torch.Tensor, fmt: str | Scheme, block: int | None = None, tensor_scale: float | None = None) -> Encoded:
    """x in a block format, as bits. MX: scale = 2**(floor(log2 amax) - emax) (the OCP spec's rule, as torchao's
    FLOOR mode and gguf). NVFP4: tensor scale = amax / (448 x 6) unless given; block scale = E4M3(amax_block / 6 /
    tensor scale); elements = E2M1(x / (tensor scale x block scale)), computed in torchao's order of operations."""
    s = _scheme(fmt, block)
    x = _check_input(x, s)
    el = s.element_format
    amax = _block_amax(x, s.block)
    if tensor_scale is not None and not s.tensor_scale:
        raise validate.BadInput(f"{s.name} has no tensor scale: leave tensor_scale out")
    ts = None
    if s.scale == "e8m0":
        exponent = torch.frexp(amax)[1] - 1 - s.emax  # floor(log2(amax)) - emax
        byte = torch.where(amax > 0, exponent.clamp(-127, 127) + 127, torch.zeros_like(exponent)).to(torch.uint8)
        y = torch.ldexp(x, -_repeat(byte.long() - 127, s.block))
        return Encoded(s, element_codes(y, s.element), byte)
    if s.scale == "e4m3":
        if s.tensor_scale:
            ts = validate.number(tensor_scale, "tensor_scale", 0, lo_open=True) if tensor_scale is not None else \
                max(float(x.abs().max()) / (448.0 * el.max_finite), 2.0**-126)
            ts32 = torch.tensor(ts, dtype=torch.float32)
            ts = float(ts32)
            scale8 = (amax / el.max_finite / ts32).clamp(E4M3_TINY, 448.0).to(torch.float8_e4m3fn)
            y = x * _repeat((1.0 / ts32) / scale8.float(), s.block)
        else:
            scale8 = (amax / el.max_finite).clamp(E4M3_TINY, 448.0).to(torch.float8_e4m3fn)
            y = x * _repeat(1.0 / scale8.float(), s.block)
        return Encoded(s, element_codes(y, s.element), scale8.view(torch.uint8), ts)
    dtype = torch.float16 if s.scale == "fp16" else torch.float32
    scale = (amax / el.max_finite).to(dtype).float().clamp_min(torch.finfo(dtype).tiny)
    return Encoded(s, element_codes(x / _repeat(scale, s.block), s.element), scale.to(dtype))


def _encoded(enc) -> Encoded:
    if not isinstance(enc, Encoded):
        raise validate.BadInput(f"enc must be what microscaling.encode(x, fmt) returns, got {type(enc).__name__}")
    return enc


def block_scales(enc: Encoded) -> torch.Tensor:
    """Each block's scale as float32 (times the tensor scale for NVFP4)."""
    _encoded(enc)
    if enc.scheme.scale == "e8m0":
        return e8m0_value(enc.scales)
    if enc.scheme.scale == "e4m3":
        s = enc.scales.view(torch.float8_e4m3fn).float()
        return s * enc.tensor_scale if enc.tensor_scale is not None else s
    return enc.scales.float()


def decode(enc: Encoded) -> torch.Tensor:
    """The float32 values the bits stand for: element value x block scale (x tensor scale)."""
    if not isinstance(enc, Encoded):
        raise validate.BadInput(f"decode needs what microscaling.encode returns, got {type(enc).__name__}")
    return element_values(enc.codes, enc.scheme.element) * _repeat(block_scales(enc), enc.scheme.block)


def fake_quantize(x: torch.Tensor, fmt: str | Scheme) -> torch.Tensor:
    """x through the block format and back (float32, x's shape)."""
    return decode(encode(x, fmt)).to(x.dtype)


def _check_bit_stream(t, bits, name: str, packed_bytes: bool) -> int:
    """pack_bits' input (codes of `bits` bits) or unpack_bits' (packed bytes): integers in range, whole words per row;
    returns bits as an int."""
    bits = validate.integer(bits, "bits", todo="pass 4, 6 or 8")
    if bits not in (4, 6, 8):
        raise validate.BadInput(f"bits must be 4, 6 or 8, got {bits!r}")
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dim() < 1:
        raise validate.BadInput(f"{name} must be an integer tensor with a last dimension (element_codes makes codes), "
                                f"got {type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
    multiple = {4: 1, 6: 3, 8: 1}[bits] if packed_bytes else {4: 2, 6: 4, 8: 1}[bits]  # one word's bytes / codes
    most = 255 if packed_bytes else 2**bits - 1
    if t.shape[-1] % multiple:
        raise validate.BadInput(f"the last dimension of {name} ({t.shape[-1]}) must be a multiple of {multiple} to "
                                f"hold whole {bits}-bit words: pad the row first")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > most):
        raise validate.BadInput(f"{name} must lie in 0..{most} for {bits}-bit packing, got {int(t.min())}..{int(t.max())}")
    return bits


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of `bits` bits as a little-endian bit stream per row: 4-bit pairs share a byte (first in the low nibble),
    four 6-bit codes fill three bytes. Returns uint8 [..., width * bits / 8]."""
    bits = _check_bit_stream(codes, bits, "codes", packed_bytes=False)
    if bits == 8:
        return codes.to(torch.uint8).clone()
    per = 2 if bits == 4 else 4
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], -1, per)
    word = sum(c[..., i] << (bits * i) for i in range(per))  # per codes -> one little-endian word
    n_bytes = per * bits // 8
    out = torch.stack([(word >> (8 * i)) & 0xFF for i in range(n_bytes)], -1)
    return out.reshape(*codes.shape[:-1], -1).to(torch.uint8)


def unpack_bits(packed_: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of pack_bits."""
    bits = _check_bit_stream(packed_, bits, "packed", packed_bytes=True)
    if bits == 8:
        return packed_.clone()
    per, n_bytes = (2, 1) if bits == 4 else (4, 3)
    b = packed_.to(torch.int32).reshape(*packed_.shape[:-1], -1, n_bytes)
    word = sum(b[..., i] << (8 * i) for i in range(n_bytes))
    out = torch.stack([(word >> (bits * i)) & (2**bits - 1) for i in range(per)], -1)
    return out.reshape(*packed_.shape[:-1], -1).to(torch.uint8)


def packed(enc: Encoded) -> torch.Tensor:
    """The element codes as bytes (pack_bits with the element's width)."""
    _encoded(enc)
    return pack_bits(enc.codes, enc.scheme.element_format.bits)


def gguf_blocks(enc: Encoded) -> np.ndarray:
    """The tensor as GGUF stores it, uint8 [rows, bytes]. MXFP4: per 32 elements one E8M0 byte, then 16 bytes with
    element j in the low and j + 16 in the high nibble. NVFP4: per 64 elements four E4M3 scale bytes, then for each
    16 elements 8 bytes (j low, j + 8 high); GGUF keeps the tensor scale outside the blocks."""
    name = _encoded(enc).scheme.name
    if name not in ("MXFP4", "NVFP4"):
        raise validate.BadInput(f"GGUF stores MXFP4 and NVFP4 blocks only, not {name}")
    codes = enc.codes.reshape(-1, enc.codes.shape[-1])
    scales = enc.scales.reshape(codes.shape[0], -1)
    if name == "MXFP4":
        c = codes.reshape(codes.shape[0], -1, 2, 16)
        qs = c[..., 0, :] | (c[..., 1, :] << 4)
        return torch.cat([scales[..., None], qs], -1).reshape(codes.shape[0], -1).numpy()
    if codes.shape[1] % 64:
        raise validate.BadInput(f"GGUF's NVFP4 super-block holds 64 elements: width {codes.shape[1]} is not a multiple of 64")
    c = codes.reshape(codes.shape[0], -1, 4, 2, 8)
    qs = (c[..., 0, :] | (c[..., 1, :] << 4)).reshape(codes.shape[0], -1, 32)
    return torch.cat([scales.reshape(codes.shape[0], -1, 4), qs], -1).reshape(codes.shape[0], -1).numpy()


def bits_per_weight(fmt: str | Scheme, shape: tuple | None = None) -> float:
    """Storage per element with every scale counted (quantize.storage_bits, the course's one definition); NVFP4's
    32-bit tensor scale is spread over `shape`'s elements (amortised away when shape is None)."""
    s = _scheme(fmt)
    group = storage_bits(s.element_format.bits, s.block, SCALES[s.scale])
    if shape is not None and (isinstance(shape, str) or not isinstance(shape, (tuple, list, torch.Size)) or not shape
                              or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise validate.BadInput(f"shape must be a tensor's shape (whole numbers >= 1), e.g. (4096, 4096), got {shape!r}")
    if shape is None or not s.tensor_scale:
        return group
    return group + 32 / int(np.prod(shape))



@contextmanager
def quantized_inputs(model, fmt: str | Scheme):
    """Within the block, every decoder linear layer sees its input through `fmt` (blocks along the features; NVFP4's
    tensor scale taken from each call's input, as a dynamic activation scale)."""
    from .models import linear_weights

    s = _scheme(fmt)
    modules = dict(model.named_modules())

    def hook(_module, args):
        return (fake_quantize(args[0], s),) + args[1:]

    handles = [modules[n].register_forward_pre_hook(hook) for n in linear_weights(model)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
