"""A kernel of the course's own (lesson 08b): W4A16 and FP8 weight-only GEMV / skinny GEMM in Triton.

y = x @ W.T for a small batch x [M, K] (M = 1..16, 16-bit activations) and a weight W [N, K] stored as
    w4a16  4-bit codes, two per byte (column 2j in the high nibble, 2j + 1 in the low one), one scale and one
           zero per group of `group_size` inputs: w = (q - 8) * scale + zero. The course's int4 format
           (kernels.Int4WeightOnly, the llm-compressor W4A16 path with zero = 0), packed as torch's CUDA packer takes it.
    fp8    e4m3 codes, one float32 scale per output row: w = q * scale.
Each kernel reads every weight byte once, dequantizes it in registers and accumulates in float32; split-K lets
more programs share a short, wide weight. On a GPU the kernels are compiled; on a CPU they run only under
Triton's interpreter (TRITON_INTERPRET=1, set on import where there is no GPU): the same code, exact enough to
check, far too slow to time.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

_INTERPRET_ENV = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available() and _INTERPRET_ENV is None:
    os.environ["TRITON_INTERPRET"] = "1"  # a CPU runs Triton only under its interpreter, chosen at import (and
    # read again later by Triton itself, so it stays set in this process)
try:
    import triton
    import triton.language as tl
except ImportError as e:  # the GPU lane brings its own Triton; the CPU lane pins one for the interpreter
    raise ImportError("lesson 08b needs Triton: `pip install triton==3.9.0` (CPU lane, for its interpreter; a "
                      "286 MB wheel), or the Triton that comes with a CUDA build of torch") from e

from . import fp8, kernels, validate  # noqa: E402  (after TRITON_INTERPRET is set)

ACT_DTYPES = (torch.bfloat16, torch.float16)  # the A16 of W4A16
TOLERANCE = 1e-2  # relative error against float32 on the same dequantized weight (16-bit output rounding)


class KernelError(ValueError):
    """The inputs cannot go to this kernel; the message says what to change."""


# ----------------------------------------------------------------------------------------------- the kernels
@triton.jit
def w4a16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K, K_PER_SPLIT, GROUP,
                 stride_xm, stride_wn, stride_sn, stride_ys, stride_ym,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # the batch rows of this program
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # its output features (rows of W)
    rb = tl.arange(0, BLOCK_K // 2)  # packed bytes along K: two 4-bit codes each
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT  # split-K: this program's slice of the inputs
    for k0 in range(k_start, tl.minimum(k_start + K_PER_SPLIT, K), BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=rm[:, None] < M, other=0.0)
        packed = tl.load(w_ptr + rn[:, None] * stride_wn + (k0 // 2 + rb)[None, :], mask=rn[:, None] < N, other=0)
        q = tl.reshape(tl.join(packed >> 4, packed & 0xF), (BLOCK_N, BLOCK_K))  # high nibble = even column
        g = k0 // GROUP  # BLOCK_K divides GROUP: one scale and one zero per row for the whole tile
        s = tl.load(s_ptr + rn * stride_sn + g, mask=rn < N, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rn * stride_sn + g, mask=rn < N, other=0.0).to(tl.float32)
        w = (q.to(tl.float32) - 8.0) * s[:, None] + z[:, None]  # dequantized in registers, never stored
        if DOT_F32:  # the interpreter cannot multiply bf16 (see DOT_F32 below): the same product in float32
            acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
        elif BLOCK_M >= 16:  # skinny GEMM: tensor cores, 16-bit operands, float32 accumulator
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        else:  # GEMV: multiply and sum along K on the CUDA cores, all in float32
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
    out = y_ptr + pid_k * stride_ys + rm[:, None] * stride_ym + rn[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def fp8_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, K_PER_SPLIT,
               stride_xm, stride_wn, stride_ys, stride_ym,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, tl.minimum(k_start + K_PER_SPLIT, K), BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0.0)
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                    other=0.0)  # one byte per weight, e4m3
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        elif BLOCK_M >= 16:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)  # per-channel: the scale factors out of the sum over K
    out = y_ptr + pid_k * stride_ys + rm[:, None] * stride_ym + rn[None, :]
    tl.store(out, acc * s[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N))


INTERPRET = isinstance(w4a16_kernel, triton.runtime.interpreter.InterpretedFunction)
if INTERPRET and not isinstance(tl.zeros, triton.runtime.interpreter.InterpretedFunction):
    raise ImportError("Triton was imported before lessons_lib.gemv without its interpreter (bitsandbytes imports it), "
                      "so its kernels cannot run on this CPU: restart Python and import lessons_lib.gemv first, or "
                      "start Python with TRITON_INTERPRET=1")


DOT_F32_NOTE = ("Triton's interpreter stores bfloat16 as raw 16-bit patterns and does not compute on them (its debugging "
                "guide says so; a bf16 tl.dot multiplies the bit patterns, triton-lang/triton#11584): under the "
                "interpreter, the tensor-core branch multiplies bf16 inputs in float32 instead; fp16 inputs run the "
                "16-bit tl.dot itself")


def check_device(device: torch.device) -> None:
    """Refuse a launch these kernels cannot make: CPU tensors without the interpreter, or a non-CUDA device."""
    if not isinstance(device, torch.device):
        raise KernelError(f"device must be a torch.device (a tensor's .device), got {type(device).__name__}")
    if device.type == "cpu" and not INTERPRET:
        raise KernelError("these Triton kernels were compiled for a GPU, and the tensors are on the CPU: move them "
                          "to the CUDA device, or run on small shapes under Triton's interpreter (TRITON_INTERPRET=1 "
                          "before Python starts; the default on a machine without a GPU)")
    if device.type not in ("cpu", "cuda"):
        raise KernelError(f"Triton kernels run on CUDA devices (or the CPU interpreter), not on {device.type}")


# ----------------------------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class Config:
    """Tile sizes and split-K of one launch (num_warps only matters when compiled)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def default_config(m: int, n: int, k: int, group_size: int | None = None, programs: int | None = None) -> Config:
    """Tiles for batch m: CUDA-core GEMV up to 4 rows, 16-row tensor-core tiles above; split K until about
    `programs` programs run (4 per GPU multiprocessor; none on a CPU)."""
    m, n, k = (validate.integer(v, name, lo=1) for v, name in ((m, "m"), (n, "n"), (k, "k")))
    for v, name in ((group_size, "group_size"), (programs, "programs")):
        if v is not None:
            validate.integer(v, name, lo=1)
    block_m = _pow2_at_least(m) if m <= 4 else 16
    block_n = 32 if block_m < 16 else 64
    block_k = 128 // block_m if block_m < 16 else 64  # the GEMV's [M, N, K] product stays about 4k values
    block_k = min(max(block_k, 16), group_size or 128)
    split = 1
    tiles_n = -(-n // block_n) * -(-m // block_m)
    while programs and tiles_n * split < programs and k // (block_k * split * 2) >= 4:
        split *= 2
    return Config(block_m, block_n, block_k, split, 4)


def _check_x(x: torch.Tensor, k: int) -> None:
    if x.dim() != 2:
        raise KernelError(f"x must be [batch, in_features], got shape {tuple(x.shape)}: reshape it to 2-D first")
    if x.dtype not in ACT_DTYPES:
        raise KernelError(f"activations must be 16-bit ({ACT_DTYPES}), got {x.dtype}: pass x.to(torch.bfloat16)")
    if x.shape[1] != k:
        raise KernelError(f"x has {x.shape[1]} features, the weight takes {k}")


def _check_config(cfg: Config, group_size: int | None) -> None:
    for name in ("block_m", "block_n", "block_k"):
        v = getattr(cfg, name)
        if v < 1 or v & (v - 1):
            raise KernelError(f"{name} must be a power of two (tl.arange needs one), got {v}")
    if cfg.block_m >= 16 and (cfg.block_n < 16 or cfg.block_k < 16):
        raise KernelError("tensor-core tiles (block_m >= 16) need block_n and block_k of at least 16")
    if group_size is not None and (group_size % cfg.block_k or cfg.block_k < 2):
        raise KernelError(f"block_k={cfg.block_k} must divide the group size {group_size} (one scale per tile)")
    if cfg.split_k < 1:
        raise KernelError(f"split_k must be at least 1, got {cfg.split_k}")


def _launch(kernel, x: torch.Tensor, n: int, k: int, cfg: Config, args: tuple, extra: tuple = ()) -> torch.Tensor:
    """Run a kernel on the grid (N tiles, K splits, M tiles); sum split-K partials in float32."""
    check_device(x.device)
    m = x.shape[0]
    steps = -(-k // cfg.block_k)
    k_per_split = -(-steps // cfg.split_k) * cfg.block_k
    splits = -(-k // k_per_split)
    y = torch.empty((splits, m, n) if splits > 1 else (m, n), device=x.device,
                    dtype=torch.float32 if splits > 1 else x.dtype)
    grid = (-(-n // cfg.block_n), splits, -(-m // cfg.block_m))
    options = {} if INTERPRET else {"num_warps": cfg.num_warps}
    dot_f32 = INTERPRET and cfg.block_m >= 16 and x.dtype == torch.bfloat16  # see DOT_F32_NOTE
    kernel[grid](x, *args, y, m, n, k, k_per_split, *extra, x.stride(0), args[0].stride(0),
                                  *([args[1].stride(0)] if kernel is w4a16_kernel else []),
                                  y.stride(0) if splits > 1 else 0, y.stride(-2),
                                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, DOT_F32=dot_f32, **options)
    return y.sum(0).to(x.dtype) if splits > 1 else y


# ----------------------------------------------------------------------------------------------- weights
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [N, K] -> uint8 [N, K / 2]: column 2j in the high nibble, 2j + 1 in the low one."""
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise KernelError(f"codes must be an integer torch.Tensor [out, in], got {type(q).__name__}")
    if q.dim() != 2 or q.shape[1] % 2:
        raise KernelError(f"codes must be [out, in] with an even number of inputs, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise KernelError("4-bit codes must lie in 0..15 (add 8 to signed codes -8..7)")
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4 | q[:, 1::2]).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] -> codes [N, K] (uint8): what the kernel does in registers with >> 4 and & 0xF."""
    if not isinstance(packed, torch.Tensor) or packed.dim() != 2:
        raise KernelError(f"packed 4-bit weights are a 2-D uint8 torch.Tensor [out, in / 2], got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise KernelError(f"packed 4-bit weights are uint8, got {packed.dtype}")
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 [N, K] from packed codes and per-group scale and zero ([N, K / group]): (q - 8) * scale + zero."""
    q = unpack_int4(packed).float()
    n, k = q.shape
    group_size = validate.integer(group_size, "group_size", lo=1)
    if k % group_size:
        raise validate.BadInput(f"group_size {group_size} must divide the {k} columns the codes unpack to")
    groups = (n, k // group_size)
    for t, name in ((scale, "scale"), (zero, "zero")):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != groups:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise validate.BadInput(f"{name} must be a tensor of shape {groups} (one per row and group of {group_size}),"
                                    f" got {got}: pass the scale and zero the packing came with (gemv.weight_for(...))")
    validate.tensor(scale, "scale", kind="float")
    validate.tensor(zero, "zero", kind="float")
    if not bool((scale > 0).all()):
        raise validate.BadInput("scale must be positive everywhere: pass the scales the packing came with")
    s = scale.float().repeat_interleave(group_size, dim=1)[:, :k]
    z = zero.float().repeat_interleave(group_size, dim=1)[:, :k]
    return (q - 8) * s + z


class W4A16:
    """4-bit weight in groups (the course's int4 format), multiplied by the Triton W4A16 kernel."""

    fmt = "w4a16_triton"
    tensor_names = ("packed", "scale", "zero")

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 act_dtype: torch.dtype = torch.bfloat16):
        n, half = packed.shape
        k = 2 * half
        if packed.dtype != torch.uint8:
            raise KernelError(f"packed codes must be uint8 [out, in / 2] (pack_int4), got {packed.dtype}")
        if group_size < 16 or group_size % 16 or k % group_size:
            raise KernelError(f"group_size must be a multiple of 16 that divides in_features={k}, got {group_size}")
        if scale.shape != (n, k // group_size) or zero.shape != scale.shape:
            raise KernelError(f"scale and zero must be [out, in / group] = {(n, k // group_size)}, got "
                              f"{tuple(scale.shape)} and {tuple(zero.shape)}")
        if act_dtype not in ACT_DTYPES:
            raise KernelError(f"act_dtype must be one of {ACT_DTYPES}, got {act_dtype}")
        self.packed, self.group_size, self.act_dtype = packed.contiguous(), group_size, act_dtype
        self.scale, self.zero = scale.to(act_dtype).contiguous(), zero.to(act_dtype).contiguous()
        self.out_features, self.in_features, self.device = n, k, packed.device
        self.config: Config | None = None  # None: default_config for each batch

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                   act_dtype: torch.dtype = torch.bfloat16) -> W4A16:
        """From codes 0..15 [out, in] and scale, zero [out, in / group] (kernels.Int4WeightOnly.from_codes' inputs)."""
        return cls(pack_int4(q), scale, zero, group_size, act_dtype)

    @classmethod
    def from_int4(cls, qw) -> W4A16:
        """The same codes, scales and zeros as a kernels.Int4WeightOnly (built with keep_codes=True)."""
        if getattr(qw, "codes", None) is None:
            raise KernelError("this int4 weight kept no codes: quantize it with keep_codes=True")
        sz = qw.scales_and_zeros.transpose(0, 1)  # [out, groups, 2]
        return cls.from_codes(qw.codes, sz[..., 0], sz[..., 1], qw.group_size, torch.bfloat16)

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight the kernel multiplies by."""
        return dequantize_int4(self.packed, self.scale, self.zero, self.group_size)

    def __call__(self, x: torch.Tensor, config: Config | None = None) -> torch.Tensor:
        _check_x(x, self.in_features)
        cfg = config or self.config or default_config(x.shape[0], self.out_features, self.in_features,
                                                      self.group_size, _programs(x.device))
        _check_config(cfg, self.group_size)
        return _launch(w4a16_kernel, x.contiguous(), self.out_features, self.in_features, cfg,
                       (self.packed, self.scale, self.zero), (self.group_size,))

    nbytes = kernels.QuantWeight.nbytes  # stored bytes of tensor_names: packed codes plus scales and zeros
    clone = kernels.QuantWeight.clone  # a copy with its own storage (to rotate among copies bigger than the cache)


class FP8:
    """e4m3 weight with one float32 scale per output row, multiplied by the Triton FP8 weight-only kernel."""

    fmt = "fp8_triton"
    tensor_names = ("q", "scale")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16):
        if q.dtype != torch.float8_e4m3fn or q.dim() != 2:
            raise KernelError(f"FP8 weights are float8_e4m3fn [out, in], got {q.dtype} {tuple(q.shape)}")
        if scale.numel() != q.shape[0]:
            raise KernelError(f"one scale per output row: expected {q.shape[0]} scales, got {scale.numel()}")
        if act_dtype not in ACT_DTYPES:
            raise KernelError(f"act_dtype must be one of {ACT_DTYPES}, got {act_dtype}")
        self.q, self.scale, self.act_dtype = q.contiguous(), scale.reshape(-1).float().contiguous(), act_dtype
        self.out_features, self.in_features = q.shape
        self.device = q.device
        self.config: Config | None = None

    @classmethod
    def from_float(cls, w: torch.Tensor, act_dtype: torch.dtype = torch.bfloat16) -> FP8:
        """Per-row absmax scaling to e4m3's largest value, 448 (as kernels' FP8 weights are scaled)."""
        scale, top = fp8.scales(w, "e4m3", "row")[:, 0], fp8.max_value("e4m3")  # lesson 07's scaling
        return cls((w.float() / scale[:, None]).clamp(-top, top).to(torch.float8_e4m3fn), scale, act_dtype)

    @classmethod
    def from_fp8(cls, qw) -> FP8:
        """The same e4m3 codes and per-row scales as a kernels.FP8W8A8 (rowwise)."""
        if getattr(qw, "rowwise", True) is False:
            raise KernelError("this FP8 weight has one scale per tensor: build it rowwise")
        return cls(qw.q, qw.scale.reshape(-1), torch.bfloat16)

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale[:, None]

    def __call__(self, x: torch.Tensor, config: Config | None = None) -> torch.Tensor:
        _check_x(x, self.in_features)
        cfg = config or self.config or default_config(x.shape[0], self.out_features, self.in_features, None,
                                                      _programs(x.device))
        _check_config(cfg, None)
        return _launch(fp8_kernel, x.contiguous(), self.out_features, self.in_features, cfg,
                       (self.q, self.scale))

    nbytes = W4A16.nbytes
    clone = W4A16.clone


@functools.lru_cache(maxsize=8)
def _programs(device: torch.device) -> int | None:
    """Programs worth splitting K for: 4 per multiprocessor on a GPU; no split on a CPU (interpreter)."""
    if device.type != "cuda":
        return None
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def weight_for(kind: str, w: torch.Tensor, group_size: int = 128):
    """The course's own quantization of float weight w [out, in] (kernels.quantize), handed to a Triton kernel.

    kind "w4a16": the int4_weight_only codes, scales and zeros; "fp8": the fp8_w8a8 e4m3 codes and row scales
    (its activation quantization is not used: this kernel takes 16-bit activations).
    """
    if kind == "w4a16":
        return W4A16.from_int4(kernels.quantize("int4_weight_only", w, group_size=group_size, keep_codes=True))
    if kind == "fp8":
        return FP8.from_fp8(kernels.quantize("fp8_w8a8", w))
    raise KernelError(f"kind must be 'w4a16' or 'fp8', got {kind!r}")


def swap_linears(model: torch.nn.Module, kind: str, group_size: int = 128, skip: tuple = ()) -> dict:
    """Put every decoder nn.Linear of the model on a Triton kernel in place; return the originals (restore_linears)."""
    originals = kernels.decoder_linears(model, skip)
    for name, lin in originals.items():
        kernels._set_module(model, name, kernels.QuantLinear(weight_for(kind, lin.weight.detach(), group_size),
                                                             lin.bias))
    return originals


# ----------------------------------------------------------------------------------------------- checks
def dequantized_matmul(weight, x: torch.Tensor) -> torch.Tensor:
    """float32 x @ W.T from the dequantized weight: what the kernel must reproduce."""
    return x.float() @ weight.dequantize().T


def check(weight, x: torch.Tensor, **launch) -> dict:
    """Kernel against reference dequantize + matmul: relative error, worst element, and pass/fail."""
    y = weight(x, **launch)
    ref = dequantized_matmul(weight, x)
    err = kernels.relative_error(y, ref)
    return {"batch": x.shape[0], "out": weight.out_features, "in": weight.in_features,
            "relative_error": err, "max_abs_error": (y.float() - ref).abs().max().item(),
            "passes": err <= TOLERANCE and bool(torch.isfinite(y).all())}


def gemv_bytes(kind: str, batch: int, out_features: int, in_features: int, group_size: int = 128,
               act_bytes: int = 2) -> int:
    """Least bytes a W4A16 or FP8 product moves: every weight byte (codes + scales) once, x read, y written."""
    n, k = (validate.integer(v, name, lo=1) for v, name in ((out_features, "out_features"), (in_features, "in_features")))
    batch = validate.integer(batch, "batch", lo=1)
    act_bytes = validate.integer(act_bytes, "act_bytes", lo=1)
    if kind == "w4a16" and (validate.integer(group_size, "group_size", lo=1) > k or k % group_size):
        raise KernelError(f"group_size {group_size} must divide in_features {k}")
    if kind == "w4a16":
        weight = n * k // 2 + 2 * n * (k // group_size) * act_bytes  # codes + a 16-bit scale and zero per group
    elif kind == "fp8":
        weight = n * k + 4 * n  # e4m3 codes + a float32 scale per row
    elif kind == "bf16":
        weight = 2 * n * k
    else:
        raise KernelError(f"kind must be 'w4a16', 'fp8' or 'bf16', got {kind!r}")
    return weight + batch * k * act_bytes + batch * n * act_bytes
