"""Weight formats on real kernels: y = x @ W.T, W [out, in] stored in 8 formats, one FORMATS entry each.

quantize(fmt, w) refuses what cannot run (UnsupportedKernel, saying why); qw(x) runs the kernel and qw.dequantized_matmul(x)
the same product in float32 from the dequantized operands. lessons_lib.probing tries every entry on a device.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import fp8, validate
from .models import decoder_linears
from .quantize import absmax_scale, check_float, quantize_rtn, relative_error  # noqa: F401 (used as kernels.relative_error)

RENAMED = {"int8_wo": "int8_weight_only", "int4_wo": "int4_weight_only", "fp8": "fp8_w8a8"}  # old names, refused


class UnsupportedKernel(RuntimeError):
    """This device (or this shape) cannot run the asked-for kernel; the message says why."""


# ----------------------------------------------------------------------------------------------- devices
def as_device(device) -> torch.device:
    """A device name torch knows ('cpu', 'cuda', 'cuda:1'; whether it is here is for the caller to say)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise validate.BadInput(f"device must be 'cpu' or 'cuda', got {device!r}") from None


def compute_capability(device: str | torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device; None for a CPU."""
    device = validate.device(device)
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
    except OSError:
        return None


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU model name from /proc/cpuinfo."""
    device = as_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda (no CUDA GPU here)"
    return _cpuinfo("model name") or "cpu"


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (empty where /proc/cpuinfo is missing)."""
    return set((_cpuinfo("flags") or "").split())


def default_act_dtype(fmt: str, device: str | torch.device) -> torch.dtype:
    """The activation dtype a format's kernel takes: its own for dense formats, bf16 for the quantized ones."""
    # bf16 on a CPU too: torch's CPU int8/int4 kernels measured 30-70x slower with fp32 (2048^2, 1 thread, torch 2.13)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(fmt, torch.bfloat16)


def inner_k_tiles(in_features: int) -> int:
    """Largest tinygemm innerKTiles (8, 4 or 2) that divides the input dimension into 16-wide k-tiles."""
    in_features = validate.integer(in_features, "in_features", lo=1)
    return next((t for t in (8, 4, 2) if in_features % (16 * t) == 0), 0)


def _bnb():
    """bitsandbytes, or None where it is not installed or does not load."""
    try:
        import bitsandbytes as bnb  # noqa: PLC0415  (optional dependency)
        return bnb
    except Exception:  # noqa: BLE001  (a broken install raises many kinds of errors)
        return None


# ----------------------------------------------------------------------------------------------- weights
class QuantWeight:
    """A weight prepared for one kernel. Call it on x [batch, in] to get x @ W.T [batch, out]."""

    fmt = ""
    tensor_names: tuple = ()

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype):
        self.out_features, self.in_features = w.shape
        self.act_dtype, self.device = act_dtype, w.device

    any_float = False  # True where the kernel converts activations itself (the W8A8 formats quantize them)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, in] @ W.T, refused with what to do if x's shape, dtype or device is not the kernel's."""
        if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == self.in_features
                and x.device == self.device and (x.dtype == self.act_dtype or self.any_float and x.is_floating_point())):
            self._refuse(x)
        return self._matmul(x)

    def _refuse(self, x) -> None:
        want = "a floating-point" if self.any_float else str(self.act_dtype).replace("torch.", "")
        got = (f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')} on {x.device}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise validate.BadInput(f"{self.fmt or type(self).__name__} takes x as a [batch, {self.in_features}] {want} "
                                f"tensor on {self.device}, got {got}: use x.reshape(-1, {self.in_features})"
                                f".to('{self.device}', {self.act_dtype})")

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight the kernel multiplies by."""
        raise NotImplementedError

    def dequantized_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """float32 x @ W.T from the operands the kernel really multiplies (dequantized)."""
        return x.to(self.act_dtype).float() @ self.dequantize().T

    @property
    def nbytes(self) -> int:
        """Bytes stored for this weight: values plus scales and zero points."""
        return sum(tensor_bytes(getattr(self, n)) for n in self.tensor_names)

    def clone(self) -> QuantWeight:
        """A copy with its own storage (to rotate among copies bigger than the cache)."""
        new = copy.copy(self)
        for n in self.tensor_names:
            setattr(new, n, getattr(self, n).clone())
        return new


class Dense(QuantWeight):
    """fp32 / bf16 / fp16 weight, dense matmul."""

    tensor_names = ("w",)

    def __init__(self, w: torch.Tensor, fmt: str = "bf16"):
        super().__init__(w, default_act_dtype(fmt, w.device))
        self.fmt, self.w = fmt, w.to(self.act_dtype).contiguous()

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)

    def dequantize(self) -> torch.Tensor:
        return self.w.float()


class Int8WeightOnly(QuantWeight):
    """int8 weight with one scale per output row; activations stay float (torch._weight_int8pack_mm)."""

    fmt = "int8_weight_only"
    tensor_names = ("q", "scale")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype):
        super().__init__(w, act_dtype)
        r = quantize_rtn(w.float(), 8, "channel", symmetric=True)  # lesson 02's RTN per channel
        self.q, self.scale = r.q.to(torch.int8).contiguous(), r.scale.squeeze(1).to(act_dtype)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.q, self.scale)

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.float()[:, None]


class _W8A8(QuantWeight):
    """8-bit weight (scale [1, out] or a scalar) times 8-bit activations: _act(x) -> (codes, scales), _mm the GEMM."""

    tensor_names = ("q", "scale")
    any_float = True
    pad = (1, 1)  # (fewest rows, multiple of) the CUDA GEMM takes: zero rows pad the batch; a CPU takes any

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        least, multiple = self.pad if self.device.type == "cuda" else (1, 1)
        rows = max(least, -(-m // multiple) * multiple)
        return self._mm(*self._act(x if rows == m else F.pad(x, (0, 0, 0, rows - m))))[:m]

    def dequantized_matmul(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = self._act(x.to(self.act_dtype))
        return (xq.float() * xs) @ self.dequantize().T

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.reshape(-1, 1)


class Int8W8A8(_W8A8):
    """int8 weight (per-row scales) times int8 activations (per-token or per-tensor scales) via torch._int_mm."""

    fmt = "int8_w8a8"
    pad = (32, 8)  # CUDA _int_mm: batch > 16 (we pad to 32, x8)

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, per_token: bool = True, act_half_range: float = 127.0):
        super().__init__(w, act_dtype)
        r = quantize_rtn(w.float(), 8, "channel", symmetric=True)  # lesson 02's RTN per channel
        self._store(r.q.to(torch.int8), r.scale, per_token, act_half_range)

    def _store(self, q: torch.Tensor, scale: torch.Tensor, per_token: bool, act_half_range: float) -> None:
        self.q, self.scale = q.contiguous(), scale.float().reshape(1, -1).contiguous()  # scale [1, out]
        self.per_token = validate.flag(per_token, "per_token")
        self.act_half_range = validate.number(act_half_range, "act_half_range", 1, 127.5,
                                              todo="the largest activation code: 127, or 127.5 as compressed-tensors")

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16,
                   per_token: bool = True, act_half_range: float = 127.0) -> "Int8W8A8":
        """Wrap ready-made int8 codes q [out, in] with per-row scales [out] or [out, 1] (w = q * scale)."""
        if q.dtype != torch.int8:
            raise TypeError(f"int8 codes must be a torch.int8 tensor, got {q.dtype}")
        require("int8_w8a8", q.device, q.shape[0], q.shape[1])
        self = cls.__new__(cls)
        QuantWeight.__init__(self, q, act_dtype)
        self._store(q, scale, per_token, act_half_range)
        return self

    def _act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # one scale per token (or for the tensor): absmax / 127, codes -127..127; compressed-tensors' 127.5: -128..127
        rows = x if self.per_token else x.reshape(1, -1)
        scale = absmax_scale(rows.float(), self.act_half_range)  # lesson 02's symmetric scale
        return (x.float() / scale).round().clamp(-128, 127).to(torch.int8), scale

    def _mm(self, xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu" and not fast_int8_cpu():  # same int32 sums (exact below 2^24), float units
            acc = xq.float() @ self.q.t().float()
        else:
            acc = torch._int_mm(xq, self.q.t()).float()
        return (acc * xs * self.scale).to(self.act_dtype)


def fast_int8_cpu() -> bool:
    """True where this CPU's int8 GEMM (oneDNN behind torch._int_mm) has AVX512 (VNNI) units; on AVX2 it is ~20x
    slower than fp32, so Int8W8A8 there multiplies the same int8 codes on float units (QHT_INT8_MM=1 forces _int_mm)."""
    return os.environ.get("QHT_INT8_MM") == "1" or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class Int4WeightOnly(QuantWeight):
    """4-bit asymmetric groups along the input dim: w ~ (q - 8) * scale + zero, q in 0..15 (torch int4 kernels)."""

    # Layout (torch's aten/src/ATen/native/cuda/int4mm.cu, gpt-fast, torchao): scales_and_zeros [in / group, out, 2];
    # CUDA packs uint8 [out, in / 2] (torch >= 2.5), even index in the high nibble; the CPU int32 [out, in] 0..15.
    fmt = "int4_weight_only"
    tensor_names = ("packed", "scales_and_zeros")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, group_size: int = 128, keep_codes: bool = True):
        super().__init__(w, torch.bfloat16 if w.device.type == "cuda" else act_dtype)  # tinygemm: bf16 only
        # GGUF Q4_1's grid (lesson 02): codes 0..15 span each group's [min, max], w = q * scale + min
        r = quantize_rtn(w.float(), 4, "group", group_size, symmetric=False, float_offset=True)
        scale, zero = r.scale.reshape(self.out_features, -1), (r.zero + 8 * r.scale).reshape(self.out_features, -1)
        self._pack(r.q.reshape(w.shape), scale, zero, group_size, keep_codes)  # the kernel's zero sits at code 8

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                   act_dtype: torch.dtype = torch.bfloat16) -> "Int4WeightOnly":
        """Pack ready-made codes q (0..15, [out, in]; w = (q - 8) * scale + zero, scale and zero [out, in / group])."""
        if q.min() < 0 or q.max() > 15:
            raise ValueError("4-bit codes must lie in 0..15 (add 8 to signed codes -8..7)")
        require("int4_weight_only", q.device, q.shape[0], q.shape[1], group_size)
        self = cls.__new__(cls)
        QuantWeight.__init__(self, q, torch.bfloat16 if q.device.type == "cuda" else act_dtype)
        self._pack(q.to(torch.int32), scale.float(), zero.float(), group_size)
        return self

    def _pack(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
              keep_codes: bool = True) -> None:
        """Store scales and zeros as [in / group, out, 2] and the codes in the kernel's packed layout."""
        self.group_size, self.tiles = group_size, inner_k_tiles(q.shape[1])
        self.scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(self.act_dtype)
        self.packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), self.tiles) \
            if self.device.type == "cuda" else torch._convert_weight_to_int4pack_for_cpu(q, self.tiles)
        self.codes = q.to(torch.uint8) if keep_codes else None  # only for dequantize(), never for the kernel

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        mm = torch._weight_int4pack_mm if self.device.type == "cuda" else torch._weight_int4pack_mm_for_cpu
        return mm(x.contiguous(), self.packed, self.group_size, self.scales_and_zeros)

    def dequantize(self) -> torch.Tensor:
        if self.codes is None:
            raise RuntimeError("built with keep_codes=False: the packed layout is not unpacked here")
        n, k = self.out_features, self.in_features
        sz = self.scales_and_zeros.float().transpose(0, 1)  # [out, groups, 2]
        q = self.codes.float().reshape(n, k // self.group_size, self.group_size)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).reshape(n, k)


class NF4(QuantWeight):
    """bitsandbytes NF4: 4-bit codes from the normal-quantile table, one absmax per block of 64."""

    fmt = "nf4"
    tensor_names = ("packed", "absmax")  # absmax: the quantization state's, one per block

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, blocksize: int = 64):
        super().__init__(w, act_dtype)
        self.bnb = _bnb()
        self.packed, self.state = self.bnb.functional.quantize_4bit(w.to(act_dtype).contiguous(),
                                                                    blocksize=blocksize, quant_type="nf4")
        self.absmax = self.state.absmax

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.bnb.matmul_4bit(x, self.packed.t(), quant_state=self.state)

    def dequantize(self) -> torch.Tensor:
        return self.bnb.functional.dequantize_4bit(self.packed, self.state).float()

    def clone(self) -> NF4:
        new = super().clone()
        new.state = copy.copy(self.state)
        new.state.absmax = new.absmax
        return new


class FP8W8A8(_W8A8):
    """e4m3 weight (per-row scales) times e4m3 activations (per-token scales) via torch._scaled_mm."""

    fmt = "fp8_w8a8"
    pad = (16, 16)  # _scaled_mm: zero rows pad the batch to a multiple of 16

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, rowwise: bool = True, fast_accum: bool = True):
        super().__init__(w, act_dtype)
        self.rowwise, self.fast_accum = validate.flag(rowwise, "rowwise"), validate.flag(fast_accum, "fast_accum")
        self.q, scale = self._act(w)  # lesson 07's scaling recipes
        self.scale = scale.T.contiguous() if rowwise else scale.reshape(())  # [1, out] or a scalar

    def _act(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = fp8.scales(t, "e4m3", "row" if self.rowwise else "tensor")[:None if self.rowwise else 1, :1].contiguous()
        m = fp8.max_value("e4m3")
        return (t.float() / s).clamp(-m, m).to(fp8.DTYPES["e4m3"]).contiguous(), s

    def _mm(self, xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return torch._scaled_mm(xq, self.q.t(), scale_a=xs if self.rowwise else xs.reshape(()), scale_b=self.scale,
                                out_dtype=self.act_dtype, use_fast_accum=self.fast_accum)


# ----------------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Format:
    """Everything the course knows about one weight format, in one place."""

    name: str
    bits: int  # per stored weight, before scales
    tolerance: float  # largest relative error of the kernel against float32 on the same dequantized operands
    storage: str  # what a deployment planner counts per weight (a hardware.BYTES_PER_WEIGHT key)
    computes_in: tuple[str, str]  # (on CUDA, on a CPU): which measured matmul peak bounds its compute
    build: Callable[..., QuantWeight]  # (w, act_dtype, group_size, **options) -> QuantWeight
    notes: Callable[[torch.device], tuple[bool, str]]  # device -> (native?, what actually runs there)
    cannot_run: Callable[[int, int, int | None, tuple | None], str | None] = lambda n, k, g, cc: None
    groups: tuple[int, ...] = ()  # group sizes the kernel takes, the default first; () = no groups
    min_cc: tuple = ()  # ((major, minor), why): the oldest CUDA compute capability its kernel runs on
    variants: tuple[dict, ...] = field(default=({},))  # options the probe tries in order when one raises

    @property
    def is_float(self) -> bool:
        """A plain float format (fp32, bf16, fp16): stored as itself, runs on any device."""
        return self.storage == self.name


def _missing(op: str) -> str | None:
    return None if hasattr(torch, op) else f"torch {torch.__version__} has no {op}: upgrade torch"


def _int4_rule(n: int, k: int, g: int | None, cc: tuple | None) -> str | None:
    if cc is None:
        return _missing("_weight_int4pack_mm_for_cpu") or (
            f"the CPU int4 kernel needs out_features to be a multiple of 16, got {n}" if n % 16 else None)
    if not inner_k_tiles(k):
        return f"tinygemm needs in_features to be a multiple of 32, got {k}"
    return f"tinygemm needs out_features to be a multiple of 8, got {n}" if n % 8 else None


def _on(cuda: tuple[bool, str], cpu: tuple[bool, str]) -> Callable[[torch.device], tuple[bool, str]]:
    """A quantized format's notes: one fixed kernel on CUDA, another on a CPU."""
    return lambda device: cuda if device.type == "cuda" else cpu


def _dense_note(fmt: str) -> Callable[[torch.device], tuple[bool, str]]:
    """A float format's notes: native where the device has arithmetic in that type."""
    def note(device: torch.device) -> tuple[bool, str]:
        if fmt == "fp32":
            return True, "cuBLAS fp32 GEMM (TF32 off)" if device.type == "cuda" else "oneDNN/MKL fp32 GEMM"
        if device.type == "cuda":
            ok = fmt == "fp16" or compute_capability(device) >= (8, 0)
            return ok, f"cuBLAS {fmt} tensor-core GEMM" if ok else "bf16 without bf16 tensor cores (emulated)"
        hw = (f"avx512_{fmt}", f"amx_{fmt}")
        if any(flag in cpu_flags() for flag in hw):
            return True, f"oneDNN {fmt} GEMM on {'/'.join(hw)} units"
        return False, f"this CPU has no {fmt} arithmetic ({' or '.join(hw)}): oneDNN converts to fp32 inside"
    return note


def _dense(name: str, tolerance: float, roof: tuple[str, str]) -> Format:
    return Format(name, 16 if name != "fp32" else 32, tolerance, name, roof, lambda w, act, g: Dense(w, name),
                  _dense_note(name))


FORMATS: dict[str, Format] = {f.name: f for f in (
    _dense("fp32", 1e-4, ("fp32", "fp32")),
    _dense("bf16", 1e-2, ("bf16", "bf16")),
    _dense("fp16", 5e-3, ("fp16", "fp32")),
    Format("int8_weight_only", 8, 1e-2, "int8", ("fp32", "bf16"), lambda w, act, g: Int8WeightOnly(w, act),
           _on((False, "torch's CUDA _weight_int8pack_mm is a naive kernel (one thread per output, CUDA cores, float "
                        "math): it runs, but is no tuned weight-only GEMM"),
                (True, "torch's CPU _weight_int8pack_mm (vectorized int8 -> float dot products)")),
           lambda n, k, g, cc: _missing("_weight_int8pack_mm")),
    Format("int8_w8a8", 8, 1e-2, "int8", ("int8", "int8"), lambda w, act, g, **o: Int8W8A8(w, act, **o),
           _on((True, "cuBLASLt int8 tensor-core GEMM via _int_mm (batch padded to >= 32 rows, multiple of 8)"),
                (True, "oneDNN int8 GEMM via _int_mm with AVX512 VNNI; on an AVX2 CPU the same int8 codes on float units (kernels.fast_int8_cpu)")),
           lambda n, k, g, cc: (f"CUDA _int_mm needs in and out features that are multiples of 8, got in={k}, out={n}"
                                if cc and (k % 8 or n % 8) else None),
           min_cc=((7, 5), "int8 _int_mm needs int8 tensor cores (compute capability >= 7.5)")),
    Format("int4_weight_only", 4, 2e-2, "int4", ("bf16", "bf16"),
           lambda w, act, g, **o: Int4WeightOnly(w, act, g, **o),
           _on((True, "tinygemm: int4 unpacked to bf16 in registers, bf16 mma.sync tensor cores"),
                (True, "torch's CPU _weight_int4pack_mm_for_cpu (AVX512/AVX2 dequantize-in-kernel)")),
           _int4_rule, groups=(128, 32, 64, 256), min_cc=((8, 0), "int4 tinygemm (_weight_int4pack_mm) uses bf16 "
                                                           "tensor-core mma (m16n8k16): it needs compute capability "
                                                           ">= 8.0")),
    Format("nf4", 4, 2e-2, "nf4", ("bf16", "bf16"), lambda w, act, g: NF4(w, act, g),
           _on((True, "bitsandbytes gemm_4bit: fused NF4 kernel at small batch, dequantize + cuBLAS above"),
                (False, "no fused NF4 kernel on this CPU: bitsandbytes dequantizes the whole weight, then F.linear")),
           lambda n, k, g, cc: None if _bnb() else "bitsandbytes is not installed (or does not load): "
                                                   "`pip install bitsandbytes`", groups=(64,)),
    Format("fp8_w8a8", 8, 2e-2, "fp8", ("fp8", "fp32"), lambda w, act, g, **o: FP8W8A8(w, act, **o),
           _on((True, "cuBLASLt/CUTLASS e4m3 tensor-core GEMM via _scaled_mm (batch padded to a multiple of 16)"),
                (False, "no FP8 arithmetic on a CPU: torch's CPU _scaled_mm emulates it (slow)")),
           lambda n, k, g, cc: (f"torch {torch.__version__} has no float8_e4m3fn dtype: upgrade torch"
                                if not hasattr(torch, "float8_e4m3fn") else
                                f"_scaled_mm needs in and out features that are multiples of 16, got in={k}, out={n}"
                                if k % 16 or n % 16 else None),
           min_cc=((8, 9), "fp8 _scaled_mm needs compute capability >= 8.9"),
           variants=({}, {"fast_accum": False}, {"rowwise": False}, {"rowwise": False, "fast_accum": False})),
)}


def format_info(fmt: str) -> Format:
    """The registry entry of `fmt`; a KeyError that names the choices (and the new name of an old one)."""
    if fmt not in FORMATS:
        hint = f" ({fmt!r} is now called {RENAMED[fmt]!r})" if fmt in RENAMED else ""
        raise KeyError(f"unknown format {fmt!r}{hint}; choose one of {tuple(FORMATS)}")
    return FORMATS[fmt]


def _group_reason(f: Format, k: int, group_size: int | None) -> str | None:
    if not f.groups:
        return None if group_size is None else f"{f.name} has no groups: leave group_size=None"
    g = group_size or f.groups[0]
    if g not in f.groups:
        return f"{f.name} takes group sizes {sorted(f.groups)}, got {g}"
    if k % g:
        return (f"group size {g} does not divide in_features={k}: choose one that does, "
                f"{[d for d in sorted(f.groups) if k % d == 0] or 'none of the supported sizes'}")
    return None


def unsupported_reason(fmt: str, device: str | torch.device, out_features: int = 256, in_features: int = 512,
                       group_size: int | None = None) -> str | None:
    """Why this device cannot run `fmt` on a weight of this shape, or None if it should run."""
    try:
        f = format_info(fmt)
    except KeyError as e:
        return e.args[0]
    device = as_device(device)
    out_features = validate.integer(out_features, "out_features", lo=1)
    in_features = validate.integer(in_features, "in_features", lo=1)
    if group_size is not None:
        group_size = validate.integer(group_size, "group_size", lo=1, todo="leave it None for the format's default")
    if device.type not in ("cpu", "cuda"):
        return None if f.is_float else f"{fmt} kernels are only wired up for CPU and CUDA here"
    if device.type == "cuda" and torch.version.cuda is None:
        return (f"a CUDA device was asked for, but this torch ({torch.__version__}) is a CPU-only build: install a "
                "CUDA build of torch (https://pytorch.org/get-started) or use device='cpu'")
    if device.type == "cuda" and not torch.cuda.is_available():
        return "a CUDA device was asked for, but this machine has no CUDA GPU: use device='cpu'"
    reason, cc = _group_reason(f, in_features, group_size), compute_capability(device)
    if reason is None and cc is not None and f.min_cc and cc < f.min_cc[0]:
        reason = f"{f.min_cc[1]}, found {cc[0]}.{cc[1]}"
    return reason or f.cannot_run(out_features, in_features, group_size, cc)


def require(fmt: str, device: str | torch.device, out_features: int = 256, in_features: int = 512,
            group_size: int | None = None) -> None:
    """Raise UnsupportedKernel, saying why, if this device cannot run `fmt` on this shape."""
    reason = unsupported_reason(fmt, device, out_features, in_features, group_size)
    if reason is not None:
        raise UnsupportedKernel(f"{fmt} on {device_name(device)}: {reason}")


def native_note(fmt: str, device: str | torch.device) -> tuple[bool, str]:
    """(native?, what actually runs) for a format that does run on this device."""
    return format_info(fmt).notes(as_device(device))


def quantize(fmt: str, w: torch.Tensor, act_dtype: torch.dtype | None = None, group_size: int | None = None,
             device: str | torch.device | None = None, **options) -> QuantWeight:
    """Prepare float weight w [out, in] (on `device`, default its own) for `fmt`'s kernel; refuse what can't run."""
    check_float(w, "weight")
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features] like nn.Linear.weight, got shape "
                         f"{tuple(w.shape)}: pass a layer's .weight (reshape a stacked tensor to one matrix first)")
    device = as_device(device) if device is not None else w.device
    if act_dtype is not None and act_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise validate.BadInput(f"act_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {act_dtype!r}")
    require(fmt, device, w.shape[0], w.shape[1], group_size)
    f = FORMATS[fmt]
    with torch.no_grad():
        qw = f.build(w.detach().to(device), act_dtype or default_act_dtype(fmt, device),
                     group_size or (f.groups[0] if f.groups else None), **options)
    qw.fmt = fmt
    return qw


def check(qw: QuantWeight, x: torch.Tensor, w: torch.Tensor | None = None) -> dict:
    """Kernel error against float32 on the dequantized operands (and, given w, the full error vs float w)."""
    with torch.no_grad():
        y = qw(x.to(qw.act_dtype))
        out = {"kernel_error": relative_error(y, qw.dequantized_matmul(x)), "tolerance": FORMATS[qw.fmt].tolerance}
        out["passes"] = out["kernel_error"] <= out["tolerance"] and bool(torch.isfinite(y).all())
        if w is not None:
            out["error_vs_float"] = relative_error(y, x.float() @ w.float().T)
    return out


# ----------------------------------------------------------------------------------------------- modules
class QuantLinear(nn.Module):
    """nn.Linear stand-in that runs a QuantWeight's kernel on any leading batch shape."""

    def __init__(self, qw: QuantWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.qw = qw
        self.in_features, self.out_features = qw.in_features, qw.out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qw(x.reshape(-1, x.shape[-1]).to(self.qw.act_dtype)).to(x.dtype)
        y = y if self.bias is None else y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        """Stored bytes of weight and bias."""
        return self.qw.nbytes + (0 if self.bias is None else tensor_bytes(self.bias))

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.qw.fmt}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def swap_linears(model: nn.Module, fmt: str, skip: tuple = (), **options) -> dict[str, nn.Linear]:
    """Replace the model's Linear layers by QuantLinear(fmt) in place; return the originals to restore later."""
    originals = decoder_linears(model, skip)
    swapped = {name: QuantLinear(quantize(fmt, lin.weight.detach(), **options), lin.bias)
               for name, lin in originals.items()}  # all or nothing: a failure leaves the model untouched
    for name, module in swapped.items():
        _set_module(model, name, module)
    return originals


def restore_linears(model: nn.Module, originals: dict[str, nn.Linear]) -> None:
    """Put back the Linear layers that swap_linears took out."""
    validate.model(model)
    modules = dict(model.named_modules())
    if not isinstance(originals, dict) or any(not isinstance(n, str) or n not in modules or not n for n in originals):
        raise validate.BadInput("originals must be the dict that swap_linears(model, ...) returned for this model "
                                "(names of its swapped layers)")
    for name, lin in originals.items():
        _set_module(model, name, lin)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores; for a tensor subclass holding packed data (torchao's), the sum of its inner tensors."""
    if not isinstance(t, torch.Tensor):
        raise validate.BadInput(f"t must be a torch.Tensor, got {type(t).__name__}")
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        return sum(tensor_bytes(getattr(t, name)) for name in t.__tensor_flatten__()[0])
    return t.numel() * t.element_size()


def linear_bytes(model: nn.Module) -> int:
    """Stored bytes of every nn.Linear and QuantLinear weight (and bias) in the model."""
    validate.model(model)
    return sum(m.nbytes if isinstance(m, QuantLinear) else sum(tensor_bytes(p) for p in m.parameters(recurse=False))
               for m in model.modules() if isinstance(m, (QuantLinear, nn.Linear)))
