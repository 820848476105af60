"""Exercise checkers: each expected answer is computed by the course's own tools, never typed in."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Callable

import torch

from . import bench, codebooks, decide, formats, fp8, gptq, smoothquant, validate
from . import quantize
from . import hardware as hw


@dataclass(frozen=True)
class Exercise:
    """A question, how to compute its answer, the accepted relative tolerance, and a hint."""

    question: str
    expected: Callable[[], float | str]
    rel_tol: float
    hint: str


EXERCISES: dict[str, Exercise] = {
    "00.kv_bytes_8b": Exercise(
        "Bytes of KV cache per token for Llama-3-8B with an FP16 cache (hardware.LLAMA3_8B).",
        lambda: hw.LLAMA3_8B.kv_bytes_per_token("fp16"), 1e-6,
        "K and V (2) x layers x KV heads x head dim x bytes per value; grouped-query attention means KV heads, not query heads.",
    ),
    "00.h100_int4_floor_ms": Exercise(
        "Bandwidth floor in ms per decode step for Llama-3-70B with 4-bit weights (no scales) on one H100 SXM, batch 1, KV cache ignored.",
        lambda: hw.decode_step_floor_s(hw.gpu("H100 SXM"), 1, hw.weight_bytes(hw.LLAMA3_70B.parameters, "int4")) * 1e3, 0.01,
        "Every weight byte is read once per step: bytes / datasheet bandwidth. 4-bit is half a byte per weight.",
    ),
    "00.h200_fp8_kv_tokens": Exercise(
        "Tokens of FP16 KV cache that fit beside Llama-3-70B in FP8 on one H200, with 90% of memory usable.",
        lambda: hw.kv_tokens_that_fit(hw.gpu("H200"), 1, hw.weight_bytes(hw.LLAMA3_70B.parameters, "fp8"),
                                      hw.LLAMA3_70B.kv_bytes_per_token("fp16")), 0.01,
        "(0.9 x memory - weight bytes) / KV bytes per token; memory in the table is in GB (1e9 bytes).",
    ),
    "00.share_of_180ms": Exercise(
        "The scenario's 180 ms per token on 2x A100 80GB (FP16, tensor parallel, batch 1, 4096-token context): what fraction of it is the bandwidth floor?",
        lambda: hw.plan(hw.LLAMA3_70B, "fp16", "A100 80GB", n_gpus=2).step_ms / 180.0, 0.02,
        "Use hardware.plan(...) for the floor of one decode step in ms, then divide by 180.",
    ),
    "01.e5m2_max": Exercise(
        "The largest finite value of FP8 E5M2.",
        lambda: formats.get("fp8_e5m2").max_finite, 1e-9,
        "E5M2 is IEEE-style: the all-ones exponent is Inf/NaN, so the top finite exponent is 30 - bias 15; "
        "the mantissa is 1.11 in binary.",
    ),
    "01.e4m3_finite_values": Exercise(
        "The number of distinct finite values of FP8 E4M3FN (+0 and -0 counted once).",
        lambda: formats.get("fp8_e4m3").n_finite, 0,
        "256 patterns; in the fn variant only S.1111.111 is NaN (two patterns); +0 and -0 are one value.",
    ),
    "01.fp16_min_subnormal": Exercise(
        "The smallest positive FP16 value.",
        lambda: formats.get("fp16").min_subnormal, 1e-9,
        "A subnormal has exponent field 0 (exponent 1 - bias) and only the last mantissa bit set: 2**(1-15-10).",
    ),
    "02.bpw_asym_g64": Exercise(
        "Bits per weight of 4-bit asymmetric quantization in groups of 64, with a 16-bit scale and a 4-bit zero-point per group.",
        lambda: quantize.rtn_bits_per_weight(4, "group", (64, 64), 64, symmetric=False), 1e-9,
        "4 bits of code, plus (16 + 4) bits shared by the 64 weights of a group.",
    ),
    "02.int8_step": Exercise(
        "The step (scale) of symmetric INT8 with one scale per tensor, for a tensor whose largest |value| is 6.35.",
        lambda: quantize.quantize_rtn(torch.tensor([6.35, -1.0]), 8, "tensor").scale.item(), 1e-5,
        "Symmetric INT8 uses codes -127..127: the largest |value| maps to 127.",
    ),
    "02.int8_worst_error": Exercise(
        "The largest rounding error any value of that tensor (largest |value| 6.35, symmetric INT8 per tensor) can have.",
        lambda: quantize.quantize_rtn(torch.tensor([6.35, -1.0]), 8, "tensor").scale.item() / 2, 1e-5,
        "Round-to-nearest is off by at most half a step.",
    ),
    "03.bpp_dq": Exercise(
        "Bits per parameter of NF4 in blocks of 64 with double quantization (8-bit absmax in blocks of 256, one fp32 scale each).",
        lambda: codebooks.bnb_bits_per_weight(64, double_quant=True), 1e-6,
        "4 bits of code + 8 bits of absmax per 64 weights + 32 bits per 256 absmax values.",
    ),
    "03.bpp_block128": Exercise(
        "Bits per parameter of NF4 in blocks of 128, without double quantization.",
        lambda: codebooks.bnb_bits_per_weight(128, double_quant=False), 1e-6,
        "4 bits of code + one fp32 absmax per 128 weights.",
    ),
    "03.gb_70b_nf4_dq": Exercise(
        "GB (1e9 bytes) for all of Llama-3-70B's parameters in NF4, blocks of 64, with double quantization.",
        lambda: hw.LLAMA3_70B.parameters * codebooks.bnb_bits_per_weight(64, double_quant=True) / 8 / 1e9, 0.005,
        "parameters x bits per parameter / 8 bytes; hardware.LLAMA3_70B.parameters has the count.",
    ),
    "04.min_tokens_full_rank": Exercise(
        "The fewest calibration tokens for which the Hessian of SmolLM2-135M's down_proj can be positive definite "
        "without dampening (hardware.SMOLLM2_135M has the shape).",
        lambda: hw.SMOLLM2_135M.mlp, 0,
        "H = 2 X^T X / n is a sum of one rank-1 matrix per token; it is [in x in], and down_proj's input is the MLP's "
        "intermediate width.",
    ),
    "04.bpw_g128_act_order": Exercise(
        "Bits per weight of a 4-bit symmetric GPTQ checkpoint of a 4096 x 4096 layer, groups of 128 with 16-bit scales, "
        "plus act-order's g_idx (one int32 group index per input column).",
        lambda: quantize.rtn_bits_per_weight(4, "group", (4096, 4096), 128) + 32 * 4096 / 4096**2, 1e-9,
        "4 bits of code + 16 bits of scale per 128 weights + 32 bits per input column shared by the layer's 4096 rows.",
    ),
    "04b.rank_after_3_windows": Exercise(
        "The largest rank the Hessian of SmolLM2-135M's down_proj can have after 3 calibration windows of 256 tokens "
        "(hardware.SMOLLM2_135M has the shape).",
        lambda: min(3 * 256, hw.SMOLLM2_135M.mlp), 0,
        "Each token adds one rank-1 term x x^T, and the rank cannot exceed the matrix's size [in x in].",
    ),
    "04b.windows_70b_down": Exercise(
        "The fewest calibration windows of 2048 tokens for which the Hessian of Llama-3-70B's down_proj can be full rank "
        "without dampening (hardware.LLAMA3_70B has the shape).",
        lambda: math.ceil(hw.LLAMA3_70B.mlp / 2048), 0,
        "Full rank needs at least as many tokens as down_proj has inputs: the MLP's intermediate width, in windows of "
        "2048 (round up).",
    ),
    "05.folded_norm_weight": Exercise(
        "An RMSNorm channel has weight 0.8 and AWQ picks scale s = 2.5 for it. What is the norm's weight after folding?",
        lambda: _folded_norm_weight(0.8, 2.5), 1e-6,
        "The linear layers after the norm multiply that input column by s; the norm must divide its output by s.",
    ),
    "05.keep_1pct_fp16_overhead": Exercise(
        "Keeping 1% of input channels in fp16 and the rest in 4-bit groups of 128 (16-bit scales, symmetric): by what "
        "fraction does storage per weight grow over plain 4-bit? (e.g. 0.05 for 5%)",
        lambda: (0.01 * 16 + 0.99 * quantize.rtn_bits_per_weight(4, "group", (4096, 4096), 128))
        / quantize.rtn_bits_per_weight(4, "group", (4096, 4096), 128) - 1, 1e-6,
        "Mixed storage: 1% of weights at 16 bits, 99% at 4 + 16/128 bits; divide by 4 + 16/128 and subtract 1.",
    ),
    "06.smoothing_factor": Exercise(
        "A channel's largest |activation| is 40 and the largest |weight| in its column is 0.5. SmoothQuant's factor s "
        "for it at alpha = 0.5?",
        lambda: smoothquant.smoothing_factors(torch.tensor([40.0]), torch.tensor([0.5]), 0.5).item(), 1e-5,
        "s = max|X|^alpha / max|W|^(1 - alpha); at alpha = 0.5 both are square roots.",
    ),
    "06.codes_left": Exercise(
        "Per-tensor symmetric INT8 with absmax 1200: how many distinct nonnegative codes do values in [0, 6] get?",
        lambda: len(torch.unique(quantize.quantize_rtn(torch.cat([torch.tensor([1200.0]), torch.linspace(0, 6, 10001)]),
                                                       8, "tensor").q.flatten()[1:])), 0,
        "The step is 1200 / 127; count the codes round(x / step) for x from 0 to 6 (0 counts).",
    ),
    "06.int8_vs_fp16_floor": Exercise(
        "(An interview question.) Llama-3-70B on 2x A100 80GB at batch 1 with a 4096-token FP16 KV cache: "
        "by what factor is the decode-step floor of FP16 weights larger than that of INT8 weights?",
        lambda: hw.plan(hw.LLAMA3_70B, "fp16", "A100 80GB", n_gpus=2).step_ms
        / hw.plan(hw.LLAMA3_70B, "int8", "A100 80GB", n_gpus=2).step_ms, 1e-4,
        "Both read every weight byte and the whole KV cache once per step; only the weight bytes halve. "
        "hardware.plan(...).step_ms gives each floor.",
    ),
    "07.grad_shift": Exercise(
        "The smallest integer k such that 3e-6 * 2**k is at least FP8 E4M3's smallest normal value.",
        lambda: math.ceil(math.log2(formats.get("fp8_e4m3").min_normal / 3e-6)), 0,
        "E4M3's smallest normal value is 2**(1 - 7) = 2**-6; solve 3e-6 * 2**k >= 2**-6 for k and round up.",
    ),
    "07.kv_fp8_bytes": Exercise(
        "Bytes of KV cache per token for Llama-3-70B with an FP8 cache (hardware.LLAMA3_70B).",
        lambda: hw.LLAMA3_70B.kv_bytes_per_token("fp8"), 1e-6,
        "K and V (2) x 80 layers x 8 KV heads x 128 head dim x 1 byte.",
    ),
    "08.h200_ridge": Exercise(
        "The H200's ridge point for bf16 from its datasheet (989.5 TFLOP/s dense, 4.8 TB/s), in FLOP per byte.",
        lambda: hw.ridge_intensity(hw.gpu("H200"), "bf16"), 1e-3,
        "Peak FLOP/s divided by bytes/s: the intensity at which memory time and compute time are equal.",
    ),
    "08.int4_gemv_us": Exercise(
        "Least time in microseconds to read a 14336 x 4096 weight in 4-bit (no scales) at the H200's datasheet bandwidth.",
        lambda: 14336 * 4096 * 0.5 / (hw.gpu("H200").bandwidth_gbs * 1e9) * 1e6, 1e-3,
        "Bytes = weights x 0.5; time = bytes / (4800e9 bytes/s); multiply by 1e6 for microseconds.",
    ),
    "08b.w4a16_gemv_bytes": Exercise(
        "Bytes the W4A16 kernel must move at batch 1 for Llama-3-8B's MLP gate projection (14336 x 4096): 4-bit codes, a 16-bit "
        "scale and a 16-bit zero per group of 128 inputs, bf16 input vector read and bf16 output written, each once.",
        lambda: _gemv().gemv_bytes("w4a16", 1, 14336, 4096, 128), 1e-6,
        "Codes: 14336 x 4096 / 2 bytes; scales and zeros: 14336 x (4096 / 128) x 2 values x 2 bytes; x: 4096 x 2; "
        "y: 14336 x 2.",
    ),
    "09.scenario_chat": Exercise(
        "Llama-3-70B, batch 1, 4096-token context, 50 ms per token, quality cost at most 5%: which deployment?",
        lambda: decide.course_choice(batch=1, context=4096, latency_ms=50.0, max_quality_cost=0.05), 0,
        "Drop what does not fit, then what is too slow (floor / kernel efficiency), then what costs too much quality; "
        "of the rest take the lowest $/M tokens. decide.assess does the arithmetic.",
    ),
    "09.scenario_strict": Exercise(
        "As the scenario, but with at most 1% quality cost: which deployment?",
        lambda: decide.course_choice(batch=1, context=4096, latency_ms=50.0, max_quality_cost=0.01), 0,
        "Which formats cost at most 1% in lessons 03-07? Then apply the latency rule and take the cheapest.",
    ),
    "09.scenario_batch": Exercise(
        "16 sequences at once, 100 ms per token, quality cost at most 5%: which deployment?",
        lambda: decide.course_choice(batch=16, context=4096, latency_ms=100.0, max_quality_cost=0.05), 0,
        "The KV cache of 16 x 4096 tokens must fit beside the weights; cost per token falls with the batch.",
    ),
    "09.a100_to_h100_floor": Exercise(
        "Factor by which the decode-step bandwidth floor shrinks from one A100 80GB (INT8) to one H100 SXM (FP8).",
        lambda: hw.gpu("H100 SXM").bandwidth_gbs / hw.gpu("A100 80GB").bandwidth_gbs, 1e-3,
        "INT8 and FP8 are both one byte per weight, so only the bandwidth changes (datasheets, lessons_lib/resources/gpus.csv).",
    ),
    "07b.nvfp4_70b_gb": Exercise(
        "GB (1e9 bytes) for all of Llama-3-70B's parameters in NVFP4, every block scale counted (tensor scales amortised).",
        lambda: hw.LLAMA3_70B.parameters * _microscaling().bits_per_weight("nvfp4") / 8 / 1e9, 0.005,
        "4 bits per element plus one 8-bit E4M3 scale per 16 elements: bits per weight x parameters / 8.",
    ),
    "07b.q4_k_bits": Exercise(
        "Bits per weight of GGUF's Q4_K: a super-block of 256 weights holds 128 bytes of 4-bit codes, 12 bytes of 6-bit "
        "sub-block scales and minimums, and two FP16 super-block scales.",
        lambda: _kquants().bits_per_weight("Q4_K"), 1e-9,
        "Count the bytes of one super-block (128 + 12 + 2 + 2), times 8, divided by 256.",
    ),
}


def _folded_norm_weight(weight: float, scale: float) -> float:
    """Fold one AWQ scale into a one-channel RMSNorm with lessons_lib.awq and read the norm's weight back."""
    awq = _awq()
    norm, lin = torch.nn.RMSNorm(1), torch.nn.Linear(1, 1, bias=False)
    norm.weight.data.fill_(weight)
    awq.fold_scales(awq.Mapping("norm", norm, [lin], lin), torch.tensor([scale]))
    return norm.weight.item()


def _microscaling():
    """lessons_lib.microscaling, imported when an exercise needs it."""
    from . import microscaling  # noqa: PLC0415

    return microscaling


def _kquants():
    """lessons_lib.kquants, imported when an exercise needs it."""
    from . import kquants  # noqa: PLC0415

    return kquants


def _mxfp4_inputs(gen: torch.Generator) -> tuple:
    n, blocks = int(torch.randint(2, 7, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen))
    packed = torch.randint(0, 256, (n, blocks * 16), generator=gen).to(torch.uint8)
    return packed, torch.randint(118, 134, (n, blocks), generator=gen).to(torch.uint8)


def _mxfp4_solution(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The library's MXFP4 decode of pairs-packed codes and E8M0 scale bytes."""
    mx = _microscaling()
    return mx.decode(mx.Encoded(mx.FORMATS["mxfp4"], mx.unpack_bits(packed, 4), scales))


def _mxfp4_diagnose(args: tuple, got: torch.Tensor, expected: torch.Tensor) -> str:
    """Name the usual slips of MXFP4 decoding, else the first element that differs."""
    packed, scales = args
    swapped = ((packed & 0xF) << 4 | packed >> 4).to(torch.uint8)
    if torch.allclose(got, _mxfp4_solution(swapped, scales)):
        return "the two codes of each byte are swapped: the low nibble holds the even element"
    if torch.allclose(got.abs(), expected.abs()):
        return "the signs are off: bit 3 of each code is the sign"
    if torch.allclose(got, _mxfp4_solution(packed, scales) * 2.0**127) or torch.allclose(got, expected * 2):
        return "the scale exponent is off: an E8M0 byte b means 2**(b - 127)"
    return _where(got, expected)


def _gemv():
    """lessons_lib.gemv, imported when an exercise needs it (it imports Triton)."""
    from . import gemv  # noqa: PLC0415

    return gemv


@dataclass(frozen=True)
class CodeExercise:
    """A function to write: the checker calls it and the library on fresh random inputs and says what differs."""

    question: str
    solution: Callable  # the library's answer the learner's function is checked against
    inputs: Callable[[torch.Generator], tuple]
    diagnose: Callable[[tuple, torch.Tensor, torch.Tensor], str]
    hint: str
    elementwise: bool = False  # the function takes one set of Python numbers; inputs are columns of them
    rtol: float = 1e-5
    atol: float = 1e-5


def _where(got: torch.Tensor, expected: torch.Tensor) -> str:
    """The element that differs most, by index, with both values."""
    diff = torch.nan_to_num((got.double() - expected.double()).abs(), nan=math.inf)
    i = tuple(int(k) for k in torch.unravel_index(diff.argmax(), diff.shape))
    return f"element {list(i)} is {got[i].item():.6g}, expected {expected[i].item():.6g}"


def _slips(*slips: tuple[str, Callable]) -> Callable[[tuple, torch.Tensor, torch.Tensor], str]:
    """A diagnose function: the first usual slip whose result the answer reproduces, else where it differs."""
    def diagnose(args: tuple, got: torch.Tensor, expected: torch.Tensor) -> str:
        for message, slip in slips:
            alt = torch.as_tensor(slip(*args)).float()
            if alt.shape == got.shape and torch.allclose(got, alt, rtol=1e-4, atol=1e-6, equal_nan=True):
                return message
        return _where(got, expected)
    diagnose.slips = slips
    return diagnose


def _each(fn: Callable) -> Callable:
    """fn applied to each row of its column arguments (Python numbers in, a float64 tensor out)."""
    return lambda *cols: torch.tensor([float(fn(*(c[k].item() for c in cols))) for k in range(len(cols[0]))],
                                      dtype=torch.float64)


def _decode_e4m3_diagnose(args: tuple, got: torch.Tensor, expected: torch.Tensor) -> str:
    """Name the field of the first byte decoded wrongly: sign, subnormal, the top exponent, NaN, or the bias."""
    bytes_ = args[0]
    wrong = ~(torch.isclose(got, expected, rtol=1e-6) | (got.isnan() & expected.isnan()))
    b = int(bytes_[wrong.nonzero()[0, 0]])
    sign, e, m = b >> 7, (b >> 3) & 15, b & 7
    fields = f"byte {b:#04x} = S {sign} E {e:04b} M {m:03b}"
    if e == 15 and m == 7:
        return f"{fields} is NaN in E4M3FN (only S.1111.111 is NaN; there is no Inf)"
    if e == 15:
        return f"{fields} is a normal number in E4M3FN (no Inf): (-1)**{sign} * (1 + {m}/8) * 2**(15 - 7)"
    if e == 0:
        return f"{fields} is subnormal: no implicit 1, the value is (-1)**{sign} * {m}/8 * 2**(1 - 7)"
    value, yours = formats.get("fp8_e4m3").decode(b), got[wrong][0].item()
    if yours == -value:
        return f"{fields} should be {value:g}, you gave {yours:g}: the sign bit is bit 7 (1 = negative)"
    if yours != 0 and math.isfinite(yours) and math.log2(abs(value / yours)).is_integer():
        return f"{fields} should be {value:g}, you gave {yours:g}: a power of two off, so look at the bias (7)"
    return f"{fields} should be {value:g} = (-1)**{sign} * (1 + {m}/8) * 2**({e} - 7); you gave {yours:g}"


def _gptq_step(w: torch.Tensor, u: torch.Tensor, i: int, q: torch.Tensor) -> torch.Tensor:
    """gptq.gptq_quantize's update for one column: column i becomes q, its error (w_i - q) / U_ii moves onto later columns."""
    out = w.clone()
    err = (w[:, i] - q) / u[i, i]
    out[:, i + 1:] -= torch.outer(err, u[i, i + 1:])
    out[:, i] = q
    return out


def _later(i: int, w: torch.Tensor) -> torch.Tensor:
    """1 on the columns after i, 0 elsewhere."""
    return (torch.arange(w.shape[1]) > i).float()


def _normalized(s: torch.Tensor) -> torch.Tensor:
    """s / sqrt(max(s) * min(s)): AWQ's normalization."""
    return s / (s.max() * s.min()).sqrt()


def _awq():
    """lessons_lib.awq, imported when an exercise needs it."""
    from . import awq  # noqa: PLC0415

    return awq


def _gptq_inputs(gen: torch.Generator) -> tuple:
    rows, cols = int(torch.randint(3, 9, (1,), generator=gen)), int(torch.randint(6, 17, (1,), generator=gen))
    x = torch.randn(4 * cols, cols, generator=gen) * (torch.rand(cols, generator=gen) + 0.2)
    h = gptq.hessian(x)
    u = gptq._inverse_cholesky(h.double() + 0.01 * h.diagonal().mean() * torch.eye(cols, dtype=torch.float64)).float()
    w, i = torch.randn(rows, cols, generator=gen), int(torch.randint(0, cols - 1, (1,), generator=gen))
    return w, u, i, torch.round(w[:, i] * 2) / 2


def _w8a8_solution(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """INT8 per token times INT8 per output channel, symmetric: the product of the two fake-quantized operands."""
    return quantize.fake_quant(x, 8, "token").double() @ quantize.fake_quant(w, 8, "channel").double().T


def _w8a8_inputs(gen: torch.Generator) -> tuple:
    t, n, k = (int(torch.randint(2, 9, (1,), generator=gen)) for _ in range(3))
    x = torch.randn(t, 8 * k, generator=gen) * (torch.rand(t, 1, generator=gen) * 10 + 0.1)
    x[:, 0] *= 30  # one outlier channel, as real activations have
    return x, torch.randn(4 * n, 8 * k, generator=gen) * 0.05


def _gemm_time(batch, out_features, in_features, bytes_per_weight, peak_flops, bandwidth) -> float:
    """bench.roofline_time of y = x @ W^T with 2-byte activations and outputs."""
    weights = out_features * in_features * bytes_per_weight
    return bench.roofline_time(bench.gemm_flops(batch, out_features, in_features),
                               bench.gemm_bytes(batch, out_features, in_features, weights), peak_flops, bandwidth)


def _gemm_inputs(gen: torch.Generator) -> tuple:
    n = 12
    pick = lambda options: torch.tensor(options, dtype=torch.float64)[torch.randint(0, len(options), (n,), generator=gen)]  # noqa: E731
    return (pick([1, 2, 8, 16, 64, 256, 1024, 4096]), pick([1024, 4096, 14336]), pick([1024, 4096, 8192]),
            pick([0.5, 1.0, 2.0]), pick([1e14, 4e14, 9.89e14, 1.979e15]), pick([1.0e12, 3.35e12, 4.8e12]))


def _int4_inputs(gen: torch.Generator) -> tuple:
    n, groups, g = int(torch.randint(2, 9, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen)), 32
    packed = torch.randint(0, 256, (n, groups * g // 2), generator=gen).to(torch.uint8)
    return packed, torch.rand(n, groups, generator=gen) + 0.5, torch.randn(n, groups, generator=gen), g


def _int4_diagnose(args: tuple, got: torch.Tensor, expected: torch.Tensor) -> str:
    """Name the usual slips of unpacking and dequantizing 4-bit codes, else the first element that differs."""
    packed, scale, zero, g = args
    dq = _gemv().dequantize_int4
    swapped = ((packed & 0xF) << 4 | packed >> 4).to(torch.uint8)
    if torch.allclose(got, dq(swapped, scale, zero, g), atol=1e-5):
        return "the two codes of each byte are swapped: the high nibble (byte >> 4) holds the even column"
    if torch.allclose(got, dq(packed, scale, zero + 8 * scale, g), atol=1e-5):
        return "the offset is missing: the weight is (q - 8) * scale + zero"
    return _where(got, expected)


CODE_EXERCISES: dict[str, CodeExercise] = {
    "01.decode_e4m3": CodeExercise(
        "Write decode_e4m3(byte) -> float: the value of one FP8 E4M3FN byte (an int 0..255): 1 sign bit, 4 exponent "
        "bits with bias 7, 3 mantissa bits. The checker tries every byte, in a random order.",
        _each(formats.get("fp8_e4m3").decode), lambda gen: (torch.randperm(256, generator=gen),),
        _decode_e4m3_diagnose,
        "split the byte into sign (bit 7), exponent (bits 6-3) and mantissa (bits 2-0) with >> and &; an exponent "
        "field of 0 means subnormal (no implicit 1); E4M3FN has no Inf, and one NaN pattern per sign (return math.nan).",
        elementwise=True,
    ),
    "02.quantize_per_row": CodeExercise(
        "Write quantize_per_row(w, bits) -> w_hat: symmetric round-to-nearest with one scale per output row "
        "(absmax / (2**(bits - 1) - 1)), codes clamped to +-(2**(bits - 1) - 1), returned dequantized (codes x scale).",
        lambda w, bits: quantize.fake_quant(w, bits, "channel"),
        lambda gen: (torch.randn(int(torch.randint(2, 9, (1,), generator=gen)), 64, generator=gen)
                     * torch.rand(1, 64, generator=gen) * 3, [4, 8][int(torch.randint(0, 2, (1,), generator=gen))]),
        _slips(("one scale for the whole tensor: take the absmax over each row (amax(dim=1, keepdim=True))",
                lambda w, bits: quantize.fake_quant(w, bits, "tensor")),
               ("one scale per column: a weight's output row is dim 0, so reduce over dim=1",
                lambda w, bits: quantize.fake_quant(w.T.contiguous(), bits, "channel").T),
               ("the grid is too coarse: a symmetric grid has 2**(bits - 1) - 1 steps each side of zero",
                lambda w, bits: quantize.fake_quant(w, bits - 1, "channel"))),
        "one scale per row: the row's absmax over dim 1 (keepdim=True) divided by the largest code; round, clamp, "
        "multiply back. Guard an all-zero row with scale.clamp_min(1e-12).",
    ),
    "03.quantize_to_levels": CodeExercise(
        "Write quantize_to_levels(w, levels, block) -> w_hat: split w (flattened) into blocks of `block` values, divide "
        "each block by its absmax, replace every value by the nearest of `levels` (e.g. NF4's 16), scale back.",
        lambda w, levels, block: codebooks.quantize_codebook(w, levels, block),
        lambda gen: (torch.randn(int(torch.randint(2, 6, (1,), generator=gen)), 128, generator=gen)
                     * torch.rand(1, 128, generator=gen), codebooks.nf4_levels().float(), 32),
        _slips(("one absmax for the whole tensor: each block of `block` values has its own",
                lambda w, levels, block: codebooks.quantize_codebook(w, levels, w.numel())),
               ("one absmax per row: blocks run over the flattened tensor, `block` values each",
                lambda w, levels, block: codebooks.quantize_codebook(w, levels, w.shape[1]))),
        "reshape to (-1, block) for one absmax per block; the nearest level is the argmin over the levels of "
        "|value - level| (broadcast the values against the levels); multiply back and reshape to w's shape.",
    ),
    "04.gptq_step": CodeExercise(
        "Write gptq_step(w, u, i, q) -> w_new: GPTQ's update after quantizing column i of w [rows, cols] to q [rows]; u is "
        "the upper Cholesky factor of the inverse Hessian. Column i becomes q; every later column j moves by "
        "-(w[:, i] - q) / u[i, i] * u[i, j]; earlier columns stay.",
        _gptq_step, _gptq_inputs,
        _slips(("the error moves the wrong way: subtract err x u[i, j] from the later columns",
                lambda w, u, i, q: _gptq_step(w, u, i, q) + 2 * (w - _gptq_step(w, u, i, q)) * _later(i, w)),
               ("the error is not divided by u[i, i]",
                lambda w, u, i, q: _gptq_step(w, u, i, q) + (w - _gptq_step(w, u, i, q)) * (1 - u[i, i]) * _later(i, w)),
               ("no error feedback: only column i changes (that is round-to-nearest)",
                lambda w, u, i, q: torch.cat([w[:, :i], q[:, None], w[:, i + 1:]], 1))),
        "work on a copy (w.clone()); the column's error is divided by u[i, i] and moves against row i of u, to the right "
        "of i: an outer product of two vectors (torch.outer).",
    ),
    "05.awq_scales": CodeExercise(
        "Write awq_scales(x_mean, w_mean, alpha) -> s: AWQ's candidate scale per input channel, "
        "s = x_mean**alpha / (w_mean**(1 - alpha) + 1e-4), clamped below at 1e-4, then divided by sqrt(max(s) * min(s)) "
        "so that max(s) * min(s) = 1.",
        lambda x_mean, w_mean, alpha: _awq().candidate_scales(x_mean, w_mean, alpha, True),
        lambda gen: (torch.rand(48, generator=gen) ** 3 * 5 + 0.01, torch.rand(48, generator=gen) * 0.9 + 0.05,
                     round(float(torch.rand(1, generator=gen)), 2)),
        _slips(("not normalized: divide by sqrt(max(s) * min(s)) at the end",
                lambda x_mean, w_mean, alpha: (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)),
               ("the exponents are swapped: alpha goes on the activations, 1 - alpha on the weights",
                lambda x_mean, w_mean, alpha: _normalized((x_mean.pow(1 - alpha) / (w_mean.pow(alpha) + 1e-4)).clamp(min=1e-4)))),
        "compute s elementwise, clamp it, then divide by the geometric mean of its largest and smallest values.",
    ),
    "06.w8a8_matmul": CodeExercise(
        "Write w8a8_matmul(x, w) -> y [tokens, out]: x [tokens, in] to INT8 with one symmetric scale per token (row), w "
        "[out, in] with one per output channel (row), both absmax / 127; multiply the integer codes (accumulate in "
        "int32, or float64), then multiply by the token's and the channel's scales.",
        _w8a8_solution, _w8a8_inputs,
        _slips(("one scale for all of x: per token means absmax over each row of x",
                lambda x, w: quantize.fake_quant(x, 8, "tensor").double() @ quantize.fake_quant(w, 8, "channel").double().T),
               ("one scale for all of w: per channel means absmax over each row of w",
                lambda x, w: quantize.fake_quant(x, 8, "token").double() @ quantize.fake_quant(w, 8, "tensor").double().T),
               ("the integer product is not rescaled: multiply by sx [tokens, 1] * sw [1, out]",
                lambda x, w: quantize.quantize_rtn(x, 8, "token").q.double() @ quantize.quantize_rtn(w, 8, "channel").q.double().T)),
        "each operand gets its own absmax per row / 127, rounded and clamped to +-127; the product of the codes is off "
        "by a factor sx [tokens, 1] times sw^T [1, out].",
        rtol=1e-4,
    ),
    "07.fp8_per_tensor": CodeExercise(
        "Write fp8_per_tensor(x) -> x_hat: one dynamic scale for the whole tensor so that its absmax lands on E4M3's "
        "largest value (448), cast x / scale to torch.float8_e4m3fn, and return the codes back in float32 times the scale.",
        lambda x: fp8.quantize(x, "e4m3", "tensor"),
        lambda gen: (torch.randn(int(torch.randint(2, 9, (1,), generator=gen)), 64, generator=gen)
                     * 10.0 ** float(torch.randint(-4, 4, (1,), generator=gen)),),
        _slips(("no scale: values beyond 448 saturate and small ones lose their digits; divide by absmax / 448 first",
                lambda x: fp8.cast(x, "e4m3")),
               ("that is E5M2's range (57344): E4M3FN's largest value is 448",
                lambda x: fp8.cast(x / (x.abs().amax() / 57344), "e4m3") * (x.abs().amax() / 57344)),
               ("one scale per row: the recipe here is one per tensor",
                lambda x: fp8.quantize(x, "e4m3", "row"))),
        "torch.finfo(torch.float8_e4m3fn).max is E4M3FN's largest value; the scale maps the tensor's absmax onto it.",
    ),
    "08.gemm_time": CodeExercise(
        "Write gemm_time(batch, out_features, in_features, bytes_per_weight, peak_flops, bandwidth) -> seconds: the "
        "roofline's least time for y = x @ W^T: 2 x batch x out x in FLOPs at peak_flops (FLOP/s), or the bytes moved "
        "(the weight once, 2-byte inputs and outputs) at bandwidth (bytes/s), whichever is slower.",
        _each(_gemm_time), _gemm_inputs,
        _slips(("compute and memory add up here: the roofline takes the slower of the two (max), not their sum",
                _each(lambda b, o, i, bpw, p, bw: 2 * b * o * i / p + (o * i * bpw + 2 * b * i + 2 * b * o) / bw)),
               ("a multiply-add is 2 FLOPs: 2 x batch x out x in",
                _each(lambda b, o, i, bpw, p, bw: max(b * o * i / p, (o * i * bpw + 2 * b * i + 2 * b * o) / bw))),
               ("the bytes leave out the activations: add 2 x batch x in (inputs) and 2 x batch x out (outputs)",
                _each(lambda b, o, i, bpw, p, bw: max(2 * b * o * i / p, o * i * bpw / bw)))),
        "FLOPs over the peak is one time, bytes over the bandwidth the other; the roofline's floor is the larger.",
        elementwise=True, atol=0.0,
    ),
    "07b.decode_mxfp4": CodeExercise(
        "Write decode_mxfp4(packed, scales) -> float32 [rows, 32 x blocks]: packed is uint8 [rows, 16 x blocks] (element "
        "2j in the low nibble, 2j + 1 in the high one; each nibble an E2M1 code: sign, 2 exponent bits, 1 mantissa bit), "
        "scales is uint8 [rows, blocks] of E8M0 bytes, one per 32 elements.",
        _mxfp4_solution, _mxfp4_inputs, _mxfp4_diagnose,
        "E2M1 magnitudes by code & 7: [0, 0.5, 1, 1.5, 2, 3, 4, 6]; code & 8 is the sign; an E8M0 byte b is 2**(b - 127); "
        "repeat each block's scale 32 times along the row (repeat_interleave).",
    ),
    "08b.dequantize_int4": CodeExercise(
        "Write dequantize(packed, scale, zero, group_size) -> float32 [out, in]: packed is uint8 [out, in / 2] (column "
        "2j in the high nibble, 2j + 1 in the low one), scale and zero are [out, in / group_size], w = (q - 8) * scale "
        "+ zero: what the W4A16 kernel does in registers.",
        lambda *a: _gemv().dequantize_int4(*a), _int4_inputs, _int4_diagnose,
        "packed >> 4 and packed & 0xF give the two codes; interleave them (torch.stack(..., dim=-1).reshape); "
        "repeat each group's scale and zero group_size times along the inputs (repeat_interleave).",
    ),
}


def check_code(key: str, answer, trials: int = 3, seed: int = 0) -> bool:
    """Run the learner's function beside the library's on fresh random inputs; print what differs; True when right."""
    if key not in CODE_EXERCISES:
        raise validate.UnknownName(f"unknown code exercise {key!r}; the code exercises are {sorted(CODE_EXERCISES)}")
    ex = CODE_EXERCISES[key]
    trials = validate.integer(trials, "trials", lo=1, todo="the checker runs the function on at least one fresh input")
    if answer is None:
        print(f"[{key}] not answered yet. {ex.question}\nHint: {ex.hint}")
        return False
    if not callable(answer):
        print(f"[{key}] expected a function, got {type(answer).__name__}. Hint: {ex.hint}")
        return False
    call = _each(answer) if ex.elementwise else answer
    gen = torch.Generator().manual_seed(seed)
    for t in range(trials):
        args = ex.inputs(gen)
        expected = torch.as_tensor(ex.solution(*args)).float()
        try:
            got = torch.as_tensor(call(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])).float()
        except Exception as e:  # noqa: BLE001  (the learner's error, reported)
            print(f"[{key}] your function raised {type(e).__name__}: {e}. Hint: {ex.hint}")
            return False
        if got.shape != expected.shape:
            print(f"[{key}] not quite: shape {tuple(got.shape)}, expected {tuple(expected.shape)} (inputs: "
                  f"{[tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]}). Hint: {ex.hint}")
            return False
        if not torch.allclose(got, expected, rtol=ex.rtol, atol=ex.atol, equal_nan=True):
            print(f"[{key}] not quite on random input {t + 1}: {ex.diagnose(args, got, expected)}. Hint: {ex.hint}")
            return False
    print(f"[{key}] correct: matches the library on {trials} random inputs (to {ex.rtol:g}).")
    return True


def _tolerance(rel_tol: float) -> str:
    """How close an answer must be, in words."""
    if rel_tol == 0:
        return "exactly"
    within = f"within {rel_tol * 100:g}%" if rel_tol >= 1e-4 else f"within a relative {rel_tol:.0e}"
    return f"{within}, or equal to it rounded to the digits you gave (3 or more)"


def _label(x: str) -> str:
    """A label compared without case or whitespace: '1x H100 SXM fp8' == '1x h100  sxm FP8' == '1xH100SXMfp8'."""
    return "".join(x.split()).casefold()


def _rounds_to(value: float, expected: float) -> bool:
    """True when `value` (at least 3 significant digits) is `expected` rounded (half up or half even) to value's last digit."""
    d = Decimal(repr(value)).normalize()
    sign, digits, exponent = d.as_tuple()
    if len(digits) < 3 or not isinstance(exponent, int):
        return False
    exact, step = Decimal(repr(float(expected))), Decimal(1).scaleb(exponent)
    return any(exact.quantize(step, rounding=r) == d for r in (ROUND_HALF_UP, ROUND_HALF_EVEN))  # Python's round() is half-even


def _number(answer) -> float | None:
    """A real number answer (int, float, numpy or 0-d torch scalar); None for booleans, strings, NaN, Inf, ..."""
    if isinstance(answer, bool) or type(answer).__name__ == "bool_":
        return None
    if isinstance(answer, torch.Tensor):
        if answer.numel() != 1 or answer.dtype == torch.bool:
            return None
        answer = answer.item()
    if not isinstance(answer, numbers.Real):
        return None
    value = float(answer)
    return value if math.isfinite(value) else None


def check(key: str, answer) -> bool:
    """Print whether `answer` to exercise `key` is right (with a hint if not, and the tolerance); return True when right."""
    if isinstance(key, str) and key in CODE_EXERCISES:
        return check_code(key, answer)
    if not isinstance(key, str) or key not in EXERCISES:
        raise validate.UnknownName(f"unknown exercise {key!r}; known: {sorted(EXERCISES)}")
    ex = EXERCISES[key]
    if answer is None:
        print(f"[{key}] not answered yet. {ex.question}\nHint: {ex.hint}")
        return False
    expected = ex.expected()
    if isinstance(expected, str):  # a choice, e.g. a deployment label: compared without case or spaces
        if not isinstance(answer, str):
            print(f"[{key}] expected a label (a string such as {expected.split()[0]!r}...), got {answer!r}. Hint: {ex.hint}")
            return False
        right = _label(answer) == _label(expected)
        print(f"[{key}] correct (labels compared without case or spaces)." if right else
              f"[{key}] not quite: {answer!r} is not the best choice. Hint: {ex.hint}")
        return right
    value = _number(answer)
    if value is None:
        kind = "True/False" if isinstance(answer, bool) else "not a finite number" if isinstance(answer, (float, int)) else type(answer).__name__
        print(f"[{key}] expected a finite number, got {answer!r} ({kind}). Hint: {ex.hint}")
        return False
    if ex.rel_tol == 0:
        right = value == expected
    else:
        right = math.isclose(value, expected, rel_tol=ex.rel_tol, abs_tol=1e-12) or _rounds_to(value, expected)
    if right:
        print(f"[{key}] correct ({_tolerance(ex.rel_tol)}).")
        return True
    direction = "too high" if value > expected else "too low"
    print(f"[{key}] not quite: {value:.6g} is {direction} (the answer must be right {_tolerance(ex.rel_tol)}). Hint: {ex.hint}")
    return False
