"""Weight formats on real kernels: y = x @ W.T with W ([out, in], like nn.Linear) stored 8 ways.

    fp32, bf16, fp16  dense matmul (F.linear)
    int8_wo           int8 weights, per-row scales, float activations   torch._weight_int8pack_mm
    int8_w8a8         int8 weights and per-token int8 activations         torch._int_mm (int32 accumulate)
    int4_wo           4-bit weights, groups with scale and zero point     torch._weight_int4pack_mm (tinygemm on
                                                                          CUDA) / _weight_int4pack_mm_for_cpu
    nf4               bitsandbytes NF4, blocks of 64                      bnb.matmul_4bit
    fp8               e4m3 weights and per-token e4m3 activations          torch._scaled_mm (CUDA >= 8.9)

quantize(fmt, w) prepares a weight; calling the result on x runs the kernel. reference(x) computes the same
product in float32 from the dequantized operands the kernel really uses, so relative_error() checks the kernel
itself, and the quantization error is measured separately against the float weight. A format the device cannot
run raises UnsupportedKernel with the reason before any torch kernel is touched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FORMATS = ("fp32", "bf16", "fp16", "int8_wo", "int8_w8a8", "int4_wo", "nf4", "fp8")
# Largest relative error of the kernel against float32 on the same (dequantized) operands.
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 5e-3, "int8_wo": 1e-2, "int8_w8a8": 1e-2,
             "int4_wo": 2e-2, "nf4": 2e-2, "fp8": 2e-2}
# Bits per stored weight, before scales.
WEIGHT_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8_wo": 8, "int8_w8a8": 8, "int4_wo": 4, "nf4": 4, "fp8": 8}
FP8_MAX = 448.0  # largest finite float8_e4m3fn


class UnsupportedKernel(RuntimeError):
    """This device (or this shape) cannot run the asked-for kernel; the message says why."""


# ----------------------------------------------------------------------------------------------- devices
def compute_capability(device: str | torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device; None for a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU model name from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda (no CUDA GPU here)"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_act_dtype(fmt: str, device: str | torch.device) -> torch.dtype:
    """The activation dtype a format's kernel takes: its own for dense formats, bf16 for the quantized ones.

    bf16 on a CPU too: torch's CPU int8/int4 weight-only kernels are fast with bf16 activations; with fp32
    activations they measured 30-70x slower here (2048 x 2048, one thread, torch 2.13).
    """
    dense = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return dense.get(fmt, torch.bfloat16)


def inner_k_tiles(in_features: int) -> int:
    """Largest tinygemm innerKTiles (8, 4 or 2) that divides the input dimension into 16-wide k-tiles."""
    for tiles in (8, 4, 2):
        if in_features % (16 * tiles) == 0:
            return tiles
    return 0


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _bnb():
    """bitsandbytes, or None where it is not installed or does not load."""
    try:
        import bitsandbytes as bnb  # noqa: PLC0415  (optional dependency)
        return bnb
    except Exception:  # noqa: BLE001  (a broken install raises many kinds of errors)
        return None


def unsupported_reason(fmt: str, device: str | torch.device, out_features: int = 256, in_features: int = 512,
                       group_size: int | None = None) -> str | None:
    """Why this device cannot run `fmt` on a weight of this shape, or None if it should run."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}; choose one of {FORMATS}"
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return None if fmt in ("fp32", "bf16", "fp16") else f"{fmt} kernels are only wired up for CPU and CUDA here"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "a CUDA device was asked for, but this machine has no CUDA GPU"
    cc = compute_capability(device)
    n, k = out_features, in_features
    if fmt == "int8_wo" and not hasattr(torch, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no _weight_int8pack_mm"
    if fmt == "int8_w8a8":
        if cc is not None and cc < (7, 5):
            return f"int8 _int_mm needs int8 tensor cores (compute capability >= 7.5), found {_cc_text(cc)}"
        if cc is not None and (k % 8 or n % 8):
            return f"CUDA _int_mm needs in and out features that are multiples of 8, got in={k}, out={n}"
    if fmt == "int4_wo":
        g = group_size or 128
        if g not in (32, 64, 128, 256):
            return f"torch's int4 kernels take group sizes 32, 64, 128 or 256, got {g}"
        if k % g:
            return f"int4 group size {g} does not divide in_features={k}"
        if cc is not None:
            if cc < (8, 0):
                return ("int4 tinygemm (_weight_int4pack_mm) uses bf16 tensor-core mma (m16n8k16): it needs compute "
                        f"capability >= 8.0, found {_cc_text(cc)}")
            if not inner_k_tiles(k):
                return f"tinygemm needs in_features to be a multiple of 32, got {k}"
            if n % 8:
                return f"tinygemm needs out_features to be a multiple of 8, got {n}"
        else:
            if not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
                return f"torch {torch.__version__} has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)"
            if n % 16:
                return f"the CPU int4 kernel needs out_features to be a multiple of 16, got {n}"
    if fmt == "fp8":
        if not hasattr(torch, "float8_e4m3fn"):
            return f"torch {torch.__version__} has no float8_e4m3fn dtype"
        if cc is not None and cc < (8, 9):
            return f"fp8 _scaled_mm needs compute capability >= 8.9, found {_cc_text(cc)}"
        if k % 16 or n % 16:
            return f"_scaled_mm needs in and out features that are multiples of 16, got in={k}, out={n}"
    if fmt == "nf4":
        if _bnb() is None:
            return "bitsandbytes is not installed (or does not load): `pip install bitsandbytes`"
        if k % 64:
            return f"NF4 blocks of 64 need in_features to be a multiple of 64, got {k}"
    return None


def native_note(fmt: str, device: str | torch.device) -> tuple[bool, str]:
    """(native?, what actually runs) for a format that does run on this device."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if fmt == "fp32":
        return True, "cuBLAS fp32 GEMM (TF32 off)" if cuda else "oneDNN/MKL fp32 GEMM"
    if fmt in ("bf16", "fp16"):
        if cuda:
            cc = compute_capability(device)
            ok = fmt == "fp16" or cc >= (8, 0)
            return ok, f"cuBLAS {fmt} tensor-core GEMM" if ok else "bf16 without bf16 tensor cores (emulated)"
        flags = cpu_flags()
        hw = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[fmt]
        if any(f in flags for f in hw):
            return True, f"oneDNN {fmt} GEMM on {'/'.join(hw)} units"
        return False, f"this CPU has no {fmt} arithmetic ({' or '.join(hw)}): oneDNN converts to fp32 inside"
    cuda_note, cpu_note = KERNEL_NOTES.get(fmt, ((False, ""), (False, "")))
    return cuda_note if cuda else cpu_note


# What runs for each quantized format: ((native?, note) on CUDA, (native?, note) on a CPU).
KERNEL_NOTES = {
    "int8_wo": ((False, "torch's CUDA _weight_int8pack_mm is a naive kernel (one thread per output, CUDA cores, "
                        "float math): it runs, but is no tuned weight-only GEMM"),
                (True, "torch's CPU _weight_int8pack_mm (vectorized int8 -> float dot products)")),
    "int8_w8a8": ((True, "cuBLASLt int8 tensor-core GEMM via _int_mm (batch padded to >= 32 rows, multiple of 8)"),
                  (True, "oneDNN int8 GEMM via _int_mm (u8s8 or s8s8 VNNI where the CPU has it)")),
    "int4_wo": ((True, "tinygemm: int4 unpacked to bf16 in registers, bf16 mma.sync tensor cores"),
                (True, "torch's CPU _weight_int4pack_mm_for_cpu (AVX512/AVX2 dequantize-in-kernel)")),
    "nf4": ((True, "bitsandbytes gemm_4bit: fused NF4 kernel at small batch, dequantize + cuBLAS above"),
            (False, "no fused NF4 kernel on this CPU: bitsandbytes dequantizes the whole weight, then F.linear")),
    "fp8": ((True, "cuBLASLt/CUTLASS e4m3 tensor-core GEMM via _scaled_mm (batch padded to a multiple of 16)"),
            (False, "no FP8 arithmetic on a CPU: torch's CPU _scaled_mm emulates it (slow)")),
}


def require(fmt: str, device: str | torch.device, out_features: int = 256, in_features: int = 512,
            group_size: int | None = None) -> None:
    """Raise UnsupportedKernel, saying why, if this device cannot run `fmt` on this shape."""
    reason = unsupported_reason(fmt, device, out_features, in_features, group_size)
    if reason is not None:
        raise UnsupportedKernel(f"{fmt} on {device_name(device)}: {reason}")


# ----------------------------------------------------------------------------------------------- weights
def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _pad_rows(t: torch.Tensor, rows: int, value: float = 0.0) -> torch.Tensor:
    """t with extra rows of `value` appended up to `rows` rows (t itself when it has enough)."""
    return t if t.shape[0] >= rows else F.pad(t, (0, 0, 0, rows - t.shape[0]), value=value)


class QuantWeight:
    """A weight prepared for one kernel. Call it on x [batch, in] to get x @ W.T [batch, out]."""

    fmt = ""
    tensor_names: tuple = ()
    kernel = ""

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype):
        self.out_features, self.in_features = w.shape
        self.act_dtype = act_dtype
        self.device = w.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight the kernel multiplies by."""
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float32 x @ W.T from the operands the kernel really multiplies (dequantized)."""
        return x.to(self.act_dtype).float() @ self.dequantize().T

    @property
    def nbytes(self) -> int:
        """Bytes stored for this weight: values plus scales and zero points."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.tensor_names)

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
        dtype = default_act_dtype(fmt, w.device)
        super().__init__(w, dtype)
        self.fmt = fmt
        self.w = w.to(dtype).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)

    def dequantize(self) -> torch.Tensor:
        return self.w.float()


def _absmax_scale(t: torch.Tensor, qmax: float) -> torch.Tensor:
    """Per-row symmetric scale: row absmax / qmax, as float32 [rows, 1]."""
    return t.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax


def _quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (int8 values, float32 scales [rows, 1])."""
    scale = _absmax_scale(t, 127.0)
    return (t.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


class Int8WeightOnly(QuantWeight):
    """int8 weight with one scale per output row; activations stay float (torch._weight_int8pack_mm)."""

    fmt = "int8_wo"
    tensor_names = ("q", "scale")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype):
        super().__init__(w, act_dtype)
        q, scale = _quantize_int8(w)
        self.q, self.scale = q.contiguous(), scale.squeeze(1).to(act_dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.q, self.scale)

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.float()[:, None]


def _quantize_int8_act(x: torch.Tensor, per_token: bool, half_range: float = 127.0) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 activations with one scale (absmax / half_range) per token (row), or one for the whole tensor."""
    scale = _absmax_scale(x if per_token else x.reshape(1, -1), half_range)
    return (x.float() / scale).round().clamp(-128, 127).to(torch.int8), scale


class Int8W8A8(QuantWeight):
    """int8 weight (per-row scales) times int8 activations (per-token or per-tensor scales) via torch._int_mm."""

    fmt = "int8_w8a8"
    tensor_names = ("q", "scale")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, per_token: bool = True, act_half_range: float = 127.0):
        super().__init__(w, act_dtype)
        self._store(*_quantize_int8(w), per_token, act_half_range)

    def _store(self, q: torch.Tensor, scale: torch.Tensor, per_token: bool, act_half_range: float) -> None:
        self.q, self.scale = q.contiguous(), scale.float().reshape(1, -1).contiguous()  # scale [1, out]
        self.per_token, self.act_half_range = per_token, act_half_range
        self.min_rows = 32 if q.device.type == "cuda" else 1  # CUDA _int_mm: batch > 16 (we pad to 32, x8)

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16,
                   per_token: bool = True, act_half_range: float = 127.0) -> "Int8W8A8":
        """Wrap ready-made int8 codes q [out, in] with per-row scales [out] or [out, 1] (w = q * scale).

        act_half_range sets the activation grid: absmax / 127 (codes -127..127) by default; compressed-tensors
        checkpoints use absmax / 127.5 (codes -128..127)."""
        if q.dtype != torch.int8:
            raise TypeError(f"int8 codes must be a torch.int8 tensor, got {q.dtype}")
        require("int8_w8a8", q.device, q.shape[0], q.shape[1])
        self = cls.__new__(cls)
        QuantWeight.__init__(self, q, act_dtype)
        self._store(q, scale, per_token, act_half_range)
        return self

    def _act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _quantize_int8_act(x, self.per_token, self.act_half_range)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        rows = max(self.min_rows, _round_up(m, 8)) if self.min_rows > 1 else m
        xq, xs = self._act(_pad_rows(x, rows))  # zero rows pad the batch (CUDA _int_mm wants > 16 rows)
        acc = torch._int_mm(xq, self.q.t())
        return (acc[:m].float() * xs[:m] * self.scale).to(self.act_dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = self._act(x.to(self.act_dtype))
        return (xq.float() * xs) @ self.dequantize().T

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.T


class Int4WeightOnly(QuantWeight):
    """4-bit asymmetric groups along the input dim: w ~ (q - 8) * scale + zero, q in 0..15 (torch int4 kernels).

    Layout (read from torch's aten/src/ATen/native/cuda/int4mm.cu and gpt-fast/torchao):
    scales_and_zeros is [in / group, out, 2] holding (scale, zero); the CUDA packer takes uint8 [out, in / 2]
    with the even-index value in the high nibble; the CPU packer takes int32 [out, in] values 0..15.
    """

    fmt = "int4_wo"
    tensor_names = ("packed", "scales_and_zeros")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, group_size: int = 128, keep_codes: bool = True):
        cuda = w.device.type == "cuda"
        super().__init__(w, torch.bfloat16 if cuda else act_dtype)  # tinygemm takes bf16 activations only
        n, k = w.shape
        g = group_size
        store = torch.bfloat16 if cuda else self.act_dtype
        wg = w.float().reshape(n, k // g, g)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = ((hi - lo).clamp(min=1e-6) / 15).to(store).float()  # round to storage first: the kernel sees these
        zero = (lo + 8 * scale).to(store).float()
        q = ((wg - (zero - 8 * scale)) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        self._pack(q, scale.squeeze(-1), zero.squeeze(-1), g, keep_codes)

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                   act_dtype: torch.dtype = torch.bfloat16) -> "Int4WeightOnly":
        """Pack ready-made codes q (0..15, [out, in]; w = (q - 8) * scale + zero, scale and zero [out, in / group])."""
        if q.min() < 0 or q.max() > 15:
            raise ValueError("4-bit codes must lie in 0..15 (add 8 to signed codes -8..7)")
        require("int4_wo", q.device, q.shape[0], q.shape[1], group_size)
        self = cls.__new__(cls)
        QuantWeight.__init__(self, q, torch.bfloat16 if q.device.type == "cuda" else act_dtype)
        self._pack(q.to(torch.int32), scale.float(), zero.float(), group_size)
        return self

    def _pack(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
              keep_codes: bool = True) -> None:
        """Store scales and zeros as [in / group, out, 2] and the codes in the kernel's packed layout."""
        cuda = self.device.type == "cuda"
        self.group_size = group_size
        store = torch.bfloat16 if cuda else self.act_dtype
        self.scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(store)
        self.tiles = inner_k_tiles(q.shape[1])
        self.packed = self._pack_cuda(q) if cuda else torch._convert_weight_to_int4pack_for_cpu(q, self.tiles)
        self.codes = q.to(torch.uint8) if keep_codes else None  # only for dequantize(), never for the kernel

    def _pack_cuda(self, q: torch.Tensor) -> torch.Tensor:
        """tinygemm packing from uint8 [out, in/2] (torch >= 2.5); int32 [out, in] for older torch."""
        try:
            return torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), self.tiles)
        except RuntimeError:
            return torch._convert_weight_to_int4pack(q, self.tiles)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch._weight_int4pack_mm(x.contiguous(), self.packed, self.group_size, self.scales_and_zeros)
        return torch._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, self.group_size,
                                                 self.scales_and_zeros)

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
    tensor_names = ("packed",)

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, blocksize: int = 64):
        super().__init__(w, act_dtype)
        bnb = _bnb()
        self.bnb = bnb
        self.packed, self.state = bnb.functional.quantize_4bit(w.to(act_dtype).contiguous(), blocksize=blocksize,
                                                               quant_type="nf4")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.bnb.matmul_4bit(x, self.packed.t(), quant_state=self.state)

    def dequantize(self) -> torch.Tensor:
        return self.bnb.functional.dequantize_4bit(self.packed, self.state).float()

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.state.absmax.numel() * self.state.absmax.element_size()

    def clone(self) -> NF4:
        new = copy.copy(self)
        new.packed, new.state = self.packed.clone(), copy.copy(self.state)
        new.state.absmax = self.state.absmax.clone()
        return new


class FP8W8A8(QuantWeight):
    """e4m3 weight (per-row scales) times e4m3 activations (per-token scales) via torch._scaled_mm."""

    fmt = "fp8"
    tensor_names = ("q", "scale")

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype, rowwise: bool = True, fast_accum: bool = True):
        super().__init__(w, act_dtype)
        self.rowwise, self.fast_accum = rowwise, fast_accum
        scale = _absmax_scale(w, FP8_MAX) if rowwise else _absmax_scale(w.reshape(1, -1), FP8_MAX)
        self.q = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
        self.scale = scale.T.contiguous() if rowwise else scale.reshape(())  # [1, out] or a scalar
        self.min_rows = 16 if w.device.type == "cuda" else 1

    def _quantize_act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (rowwise) or per-tensor e4m3 activations and their float32 scales."""
        xs = _absmax_scale(x, FP8_MAX) if self.rowwise else _absmax_scale(x.reshape(1, -1), FP8_MAX).reshape(())
        return (x.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), xs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        xq, xs = self._quantize_act(_pad_rows(x, _round_up(m, self.min_rows)))  # zero rows pad to a multiple of 16
        y = torch._scaled_mm(xq, self.q.t(), scale_a=xs, scale_b=self.scale, out_dtype=self.act_dtype,
                             use_fast_accum=self.fast_accum)
        return y[:m]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = self._quantize_act(x.to(self.act_dtype))
        return (xq.float() * xs) @ self.dequantize().T

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * (self.scale.T if self.rowwise else self.scale)


def quantize(fmt: str, w: torch.Tensor, act_dtype: torch.dtype | None = None, group_size: int | None = None,
             **options) -> QuantWeight:
    """Prepare float weight w [out, in] (on its device) for `fmt`'s kernel; UnsupportedKernel if it can't run."""
    require(fmt, w.device, w.shape[0], w.shape[1], group_size)
    act = act_dtype or default_act_dtype(fmt, w.device)
    with torch.no_grad():
        if fmt in ("fp32", "bf16", "fp16"):
            return Dense(w, fmt)
        if fmt == "int8_wo":
            return Int8WeightOnly(w, act)
        if fmt == "int8_w8a8":
            return Int8W8A8(w, act, **options)
        if fmt == "int4_wo":
            return Int4WeightOnly(w, act, group_size or 128, **options)
        if fmt == "nf4":
            return NF4(w, act)
        return FP8W8A8(w, act, **options)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def check(qw: QuantWeight, x: torch.Tensor, w: torch.Tensor | None = None) -> dict:
    """Kernel error against float32 on the dequantized operands (and, given w, the full error vs float w)."""
    with torch.no_grad():
        y = qw(x.to(qw.act_dtype))
        out = {"kernel_error": relative_error(y, qw.reference(x)), "tolerance": TOLERANCE[qw.fmt]}
        out["passes"] = out["kernel_error"] <= out["tolerance"] and bool(torch.isfinite(y).all())
        if w is not None:
            out["error_vs_float"] = relative_error(y, x.float() @ w.float().T)
    return out


# ----------------------------------------------------------------------------------------------- probe
def probe(device: str | torch.device = "cpu", out_features: int = 256, in_features: int = 512,
          batch: int = 4, seed: int = 0) -> dict:
    """Try every format on a small case: does it run, natively or not, and does it agree with float32?"""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen).to(device)
    x = torch.randn(batch, in_features, generator=gen).to(device)
    results = {}
    for fmt in FORMATS:
        reason = unsupported_reason(fmt, device, out_features, in_features)
        results[fmt] = {"runs": False, "native": False, "reason": reason} if reason else _try(fmt, w, x)
    return results


# Variants the probe tries in order when the first one raises (e.g. rowwise FP8 scales need newer cuBLAS).
VARIANTS = {"fp8": ({}, {"fast_accum": False}, {"rowwise": False}, {"rowwise": False, "fast_accum": False})}


def _try(fmt: str, w: torch.Tensor, x: torch.Tensor) -> dict:
    """Quantize, run and check one format, trying its variants; the probe's entry for it."""
    failures = []
    for options in VARIANTS.get(fmt, ({},)):
        try:
            qw = quantize(fmt, w, **options)
            native, note = native_note(fmt, w.device)
            entry = {"runs": True, "native": native, "kernel": note, "options": options, **check(qw, x, w)}
            if failures:
                entry["failed_variants"] = failures
            return entry
        except Exception as e:  # noqa: BLE001  (whatever torch raises, the probe reports it)
            failures.append(f"{options or 'default'}: raised {type(e).__name__}: {_first_line(e)}")
    return {"runs": False, "native": False, "reason": "; ".join(failures)}


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:limit]


# ----------------------------------------------------------------------------------------------- modules
class QuantLinear(nn.Module):
    """nn.Linear stand-in that runs a QuantWeight's kernel on any leading batch shape."""

    def __init__(self, qw: QuantWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.qw = qw
        self.in_features, self.out_features = qw.in_features, qw.out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.qw(x.reshape(-1, shape[-1]).to(self.qw.act_dtype)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        """Stored bytes of weight and bias."""
        extra = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.qw.nbytes + extra

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.qw.fmt}"


def decoder_linears(model: nn.Module, skip: tuple = ("lm_head",)) -> dict[str, nn.Linear]:
    """name -> nn.Linear for every Linear of the model except those whose name contains a `skip` part."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s in name for s in skip)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def swap_linears(model: nn.Module, fmt: str, skip: tuple = ("lm_head",), **options) -> dict[str, nn.Linear]:
    """Replace the model's Linear layers by QuantLinear(fmt) in place; return the originals to restore later."""
    originals = decoder_linears(model, skip)
    swapped = {name: QuantLinear(quantize(fmt, lin.weight.detach(), **options), lin.bias)
               for name, lin in originals.items()}  # all or nothing: a failure leaves the model untouched
    for name, module in swapped.items():
        _set_module(model, name, module)
    return originals


def restore_linears(model: nn.Module, originals: dict[str, nn.Linear]) -> None:
    """Put back the Linear layers that swap_linears took out."""
    for name, lin in originals.items():
        _set_module(model, name, lin)


def linear_bytes(model: nn.Module) -> int:
    """Stored bytes of every nn.Linear and QuantLinear weight (and bias) in the model."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.nbytes
        elif isinstance(m, nn.Linear):
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


@dataclass(frozen=True)
class FormatInfo:
    """One line of the probe table, for printing."""

    fmt: str
    runs: bool
    native: bool
    detail: str


def probe_table(results: dict) -> list[FormatInfo]:
    """The probe's results as rows: format, runs, native, and the kernel or the reason it does not run."""
    return [FormatInfo(f, r["runs"], r.get("native", False), r.get("kernel") or r.get("reason", ""))
            for f, r in results.items()]
