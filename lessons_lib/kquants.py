"""GGUF's block formats from scratch: Q8_0 and Q4_0 (32 weights, one FP16 scale), and the k-quants Q4_K and Q6_K
(super-blocks of 256 weights whose sub-block scales and minimums are themselves quantized to 6 or 8 bits), written
in llama.cpp's byte layout so that `gguf.quants.dequantize` reads them; and the importance matrix (per input
channel, the mean squared activation) that weights the rounding error when scales are chosen, as llama.cpp's
imatrix does."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import validate
from .quantize import storage_bits

QK_K = 256  # weights per k-quant super-block
FORMATS = ("Q8_0", "Q4_0", "Q4_K", "Q6_K")
BLOCK = {"Q8_0": 32, "Q4_0": 32, "Q4_K": QK_K, "Q6_K": QK_K}
BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_K": 144, "Q6_K": 210}  # bytes per block (ggml's type sizes)


@dataclass(frozen=True)
class KQuant:
    """A tensor in a GGUF format: the blocks as bytes [rows, bytes] and the values they stand for, as the course's
    own code reconstructs them (float32, the input's shape)."""

    fmt: str
    blocks: np.ndarray
    values: torch.Tensor

    def bits_per_weight(self) -> float:
        """8 x bytes stored / weights."""
        return 8 * self.blocks.size / self.values.numel()


def bits_per_weight(fmt: str) -> float:
    """Bits per weight of a GGUF format, every scale counted: bytes per block x 8 / weights per block."""
    validate.choice(fmt, "GGUF format", FORMATS)
    return 8 * BYTES[fmt] / BLOCK[fmt]


def flat_bits_per_weight(fmt: str) -> float:
    """Q8_0 and Q4_0 by quantize.storage_bits (code + one 16-bit scale per 32 weights), the course's one definition."""
    bits = {"Q8_0": 8, "Q4_0": 4}[validate.choice(fmt, "flat GGUF format", ("Q8_0", "Q4_0"))]
    return storage_bits(bits, 32, 16)


def _check_importance(importance: torch.Tensor | None, cols: int) -> None:
    """None, or one nonnegative finite value per input channel."""
    if importance is not None:
        validate.tensor(importance, "importance", dims=1, kind="float")
        if importance.shape[0] != cols or bool((importance < 0).any()):
            raise validate.BadInput(f"importance must hold one nonnegative value per input channel ({cols}), "
                                    f"got shape {tuple(importance.shape)}: use kquants.importance_matrix(...)")
        if not bool((importance > 0).any()):
            raise validate.BadInput("importance is zero for every input channel, so it weighs nothing: pass None for "
                                    "plain error, or kquants.importance_matrix(...) measured on real text")


def _check(x: torch.Tensor, fmt: str, importance: torch.Tensor | None) -> np.ndarray:
    validate.choice(fmt, "GGUF format", FORMATS)
    validate.tensor(x, "weight", dims=2, kind="float", todo="a [out, in] weight; blocks run along each row")
    if x.shape[1] % BLOCK[fmt]:
        raise validate.BadInput(f"{fmt} works in blocks of {BLOCK[fmt]} weights along a row: the input dimension "
                                f"{x.shape[1]} is not a multiple of {BLOCK[fmt]} (llama.cpp falls back to another type "
                                f"for such tensors)")
    _check_importance(importance, x.shape[1])
    return x.detach().float().numpy()


def _roundf(a: np.ndarray) -> np.ndarray:
    """Round half away from zero (C's roundf), as ggml does."""
    return np.sign(a) * np.floor(np.abs(a) + np.float32(0.5))


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16)


def _q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, 32)
    d = np.abs(b).max(1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _roundf(b * inv).astype(np.int8)
    d16 = _f16(d)
    blocks = np.concatenate([d16.view(np.uint8), q.view(np.uint8)], 1)
    return blocks, q.astype(np.float32) * d16.astype(np.float32)


def _q4_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, 32)
    signed_max = np.take_along_axis(b, np.abs(b).argmax(1)[:, None], 1)  # the largest |w|, with its sign
    d = signed_max / np.float32(-8)  # so that this weight maps to code 0 (-8) and the grid spans [-8, 7]
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.trunc(b * inv + np.float32(8.5)).astype(np.float32).astype(np.uint8).clip(0, 15)
    d16 = _f16(d)
    qs = q[:, :16] | (q[:, 16:] << np.uint8(4))
    values = d16.astype(np.float32) * (q.astype(np.int8) - np.int8(8)).astype(np.float32)
    return np.concatenate([d16.view(np.uint8), qs], 1), values


def _fit_affine(x: np.ndarray, w: np.ndarray, levels: int, candidates: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Per row of x: scale d >= 0 and offset m <= 0 minimising sum w (d q + m - x)^2 over codes q in 0..levels-1;
    candidate grids as llama.cpp's make_qkx2_quants (range / (levels - 1 + delta)), each refined by weighted least
    squares."""
    lo, hi = np.minimum(x.min(1, keepdims=True), 0), x.max(1, keepdims=True)
    span = np.maximum(hi - lo, 1e-30)
    best_err = np.full(lo.shape, np.inf)
    best_d, best_m = span / (levels - 1), lo.copy()
    for delta in np.linspace(-1, 1, candidates, dtype=np.float32):
        q = np.clip(np.round((x - lo) * ((levels - 1 + delta) / span)), 0, levels - 1)
        sw, swq, swq2 = w.sum(1, keepdims=True), (w * q).sum(1, keepdims=True), (w * q * q).sum(1, keepdims=True)
        swx, swqx = (w * x).sum(1, keepdims=True), (w * q * x).sum(1, keepdims=True)
        det = sw * swq2 - swq * swq
        ok = det > 1e-30
        d = np.where(ok, (sw * swqx - swq * swx) / np.where(ok, det, 1), span / (levels - 1))
        m = np.where(ok, (swq2 * swx - swq * swqx) / np.where(ok, det, 1), lo)
        pos = m > 0  # the offset must be <= 0 (stored as a nonnegative minimum): refit the scale alone
        d = np.where(pos, swqx / np.maximum(swq2, 1e-30), d)
        m = np.where(pos, 0, m)
        d = np.maximum(d, 0)
        err = (w * (d * q + m - x) ** 2).sum(1, keepdims=True)
        better = err < best_err
        best_err, best_d, best_m = np.where(better, err, best_err), np.where(better, d, best_d), np.where(better, m, best_m)
    return best_d, -best_m


def _fit_symmetric(x: np.ndarray, w: np.ndarray, qmax: int, candidates: int = 11) -> np.ndarray:
    """Per row: the scale d minimising sum w (d q - x)^2 over codes q in -qmax-1..qmax (weighted least squares over
    a grid of candidate scales around absmax / qmax)."""
    amax = np.maximum(np.abs(x).max(1, keepdims=True), 1e-30)
    best_err, best_d = np.full(amax.shape, np.inf), amax / qmax
    for delta in np.linspace(-0.9, 0.9, candidates, dtype=np.float32):
        q = np.clip(np.round(x * ((qmax + delta) / amax)), -qmax - 1, qmax)
        d = (w * q * x).sum(1, keepdims=True) / np.maximum((w * q * q).sum(1, keepdims=True), 1e-30)
        err = (w * (d * q - x) ** 2).sum(1, keepdims=True)
        better = err < best_err
        best_err, best_d = np.where(better, err, best_err), np.where(better, d, best_d)
    return best_d


def _q4_k(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.size // QK_K
    sub, sw = x.reshape(-1, 32), w.reshape(-1, 32)
    scale, minimum = (a.reshape(n, 8) for a in _fit_affine(sub, sw, 16))
    # the 8 scales and 8 minimums of a super-block become 6-bit integers times one FP16 scale each
    d16 = _f16(scale.max(1, keepdims=True) / 63)
    dmin16 = _f16(minimum.max(1, keepdims=True) / 63)
    d, dmin = d16.astype(np.float32), dmin16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.clip(np.round(scale / d), 0, 63), 0).astype(np.uint8)
        mn = np.where(dmin > 0, np.clip(np.round(minimum / dmin), 0, 63), 0).astype(np.uint8)
    step = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    offset = (dmin * mn.astype(np.float32)).reshape(n, 8, 1)
    xb = x.reshape(n, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.clip(np.round((xb + offset) / step), 0, 15), 0).astype(np.uint8)
    scales = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6), (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], 1).astype(np.uint8)
    qc = q.reshape(n, 4, 2, 32)
    qs = (qc[:, :, 0] | (qc[:, :, 1] << np.uint8(4))).reshape(n, 128)
    values = step * q.astype(np.float32) - offset
    return np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), scales, qs], 1), values


def _q6_k(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.size // QK_K
    scale = _fit_symmetric(x.reshape(-1, 16), w.reshape(-1, 16), 31).reshape(n, 16)
    # 16 signed 8-bit sub-block scales times one FP16 scale per super-block
    d16 = _f16(np.abs(scale).max(1, keepdims=True) / 127)
    d = d16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(d > 0, np.clip(np.round(scale / d), -128, 127), 0).astype(np.int8)
    step = (d * ls.astype(np.float32)).reshape(n, 16, 1)
    xb = x.reshape(n, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (np.where(step != 0, np.clip(np.round(xb / step), -32, 31), 0) + 32).astype(np.uint8).reshape(n, 2, 128)
    ql = ((q[:, :, :64] & 15) | ((q[:, :, 64:] & 15) << 4)).reshape(n, 128)
    hi = (q >> 4) & 3
    qh = sum(hi[:, :, 32 * s:32 * (s + 1)] << (2 * s) for s in range(4)).astype(np.uint8).reshape(n, 64)
    values = step * (q.reshape(n, 16, 16).astype(np.int8) - np.int8(32)).astype(np.float32)
    return np.concatenate([ql, qh, ls.view(np.uint8), d16.view(np.uint8)], 1), values


def quantize(x: torch.Tensor, fmt: str, importance: torch.Tensor | None = None) -> KQuant:
    """x ([out, in]) in a GGUF format. Q8_0 / Q4_0 follow ggml's reference rounding byte for byte; Q4_K / Q6_K choose
    each sub-block's scale (and minimum) by a search that minimises the rounding error weighted by `importance`
    (per input channel; None: every weight counts the same), then quantize those scales as the format stores them."""
    a = _check(x, fmt, importance)
    if fmt in ("Q8_0", "Q4_0"):
        if importance is not None:
            raise validate.BadInput(f"{fmt} has one rounding rule and no scale search: importance applies to Q4_K and Q6_K")
        blocks, values = (_q8_0 if fmt == "Q8_0" else _q4_0)(a)
    else:
        w = np.ones_like(a) if importance is None else np.broadcast_to(importance.float().numpy(), a.shape).copy()
        blocks, values = (_q4_k if fmt == "Q4_K" else _q6_k)(a, w.astype(np.float32) + np.float32(1e-12))
    rows = x.shape[0]
    return KQuant(fmt, blocks.reshape(rows, -1), torch.from_numpy(np.ascontiguousarray(values.reshape(x.shape))))


def gguf_dequantize(kq: KQuant) -> torch.Tensor:
    """What gguf's own decoder reads from the blocks (the bit-exactness check)."""
    if not isinstance(kq, KQuant):
        raise validate.BadInput(f"kq must be a kquants.KQuant (from kquants.quantize), got {type(kq).__name__}")
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return torch.from_numpy(dequantize(kq.blocks, GGMLQuantizationType[kq.fmt]).copy())


def importance_matrix(model, windows: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per input channel of each named linear layer, the mean of the squared activations over every calibration
    token (llama.cpp's imatrix): the weight of that channel's rounding error in the layer's output error."""
    from .activations import run_with_input_hooks
    from .models import linear_weights

    names = list(linear_weights(model)) if names is None else names
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def update(n: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        sums[n] = sums.get(n, 0) + flat.pow(2).sum(0)
        counts[n] = counts.get(n, 0) + flat.shape[0]

    run_with_input_hooks(model, windows, {n: (lambda x, n=n: update(n, x)) for n in names})
    return {n: sums[n] / counts[n] for n in names}


def weighted_error(x: torch.Tensor, x_hat: torch.Tensor, importance: torch.Tensor | None = None) -> float:
    """sum_j importance_j (x - x_hat)^2 / sum_j importance_j x^2: the expected relative output error of a layer whose
    inputs are uncorrelated with mean squares `importance` (plain relative MSE when None)."""
    validate.tensor(x, "x", dims=2, kind="float", todo="pass the weight [out, in] that was quantized")
    validate.tensor(x_hat, "x_hat", dims=2, kind="float", todo="pass its reconstruction (kquants.quantize(x, fmt).values)")
    if x_hat.shape != x.shape:
        raise validate.BadInput(f"x_hat {tuple(x_hat.shape)} must have x's shape {tuple(x.shape)}: pass x's reconstruction")
    _check_importance(importance, x.shape[1])
    w = torch.ones(x.shape[-1]) if importance is None else importance.float()
    return float(((x - x_hat).pow(2) * w).sum() / (x.pow(2) * w).sum().clamp_min(1e-30))
