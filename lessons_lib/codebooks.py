"""4-bit codebooks: NF4 built from normal quantiles, as QLoRA describes it."""
from __future__ import annotations

import torch

from . import validate

from .quantize import storage_bits


def nf4_levels() -> torch.Tensor:
    """NF4's 16 levels, ascending: 8 positive and 7 negative normal quantiles plus an exact zero, in [-1, 1]."""
    # The outermost quantile: midway between those of 15 and 16 equal-probability bins (QLoRA, appendix E).
    offset = (1 - 1 / (2 * 15) + 1 - 1 / (2 * 16)) / 2
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)])
    return torch.sort(levels / levels.max()).values


BNB_QUANT_TYPES = ("nf4", "fp4")
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def check_bnb_4bit(quant_type: str, blocksize: int) -> None:
    """Refuse 4-bit settings that bitsandbytes does not implement, naming the ones it does."""
    if not isinstance(quant_type, str) or quant_type not in BNB_QUANT_TYPES:
        raise validate.UnknownName(f"bitsandbytes 4-bit quant_type must be one of {BNB_QUANT_TYPES}, got {quant_type!r}")
    if isinstance(blocksize, bool) or blocksize not in BNB_BLOCKSIZES:
        raise validate.BadInput(f"bitsandbytes 4-bit blocksize must be one of {BNB_BLOCKSIZES}, got {blocksize!r}")


def bnb_levels(quant_type: str) -> torch.Tensor:
    """The 16 levels bitsandbytes itself uses for nf4 or fp4, ascending (read from the library)."""
    import bitsandbytes.functional as bnbf

    check_bnb_4bit(quant_type, 64)
    return bnbf.get_4bit_type(quant_type, device="cpu").double().sort().values


def int4_levels() -> torch.Tensor:
    """Symmetric INT4 on [-1, 1]: k/7 for k = -7..7 (15 levels, zero exact)."""
    return torch.arange(-7, 8, dtype=torch.float64) / 7


def fp4_e2m1_levels() -> torch.Tensor:
    """The OCP FP4 E2M1 values (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) scaled to [-1, 1]."""
    from .formats import get

    return torch.unique(get("fp4_e2m1").values()) / 6


def _blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    from .quantize import check_float

    check_float(w, "weight")
    block = validate.integer(block, "block", lo=2, todo="a block is a whole number of weights, e.g. 64")
    if w.numel() % block:
        raise ValueError(f"{w.numel()} values do not split into blocks of {block}: choose a block size that divides it")
    return w.detach().double().reshape(-1, block)


def quantize_codebook(w: torch.Tensor, levels: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Blockwise absmax scaling, then each value to the nearest codebook level (as bitsandbytes does)."""
    if not isinstance(levels, torch.Tensor) or not levels.is_floating_point() or levels.dim() != 1 \
            or levels.numel() < 2 or not bool(torch.isfinite(levels).all()) or not (levels.min() >= -1 and levels.max() <= 1):
        raise validate.BadInput("levels must be a 1-D float tensor of at least 2 finite values in [-1, 1] "
                                "(e.g. codebooks.nf4_levels())")
    rows = _blocks(w, block)
    absmax = rows.abs().amax(1, keepdim=True).clamp_min(1e-12)
    levels = levels.to(rows).sort().values
    idx = torch.bucketize(rows / absmax, (levels[1:] + levels[:-1]) / 2)  # nearest level = between midpoints
    return (levels[idx] * absmax).reshape(w.shape).to(w.dtype)


def normalized_blocks(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """All values divided by their block's absmax: the data a 4-bit codebook has to represent."""
    rows = _blocks(w, block)
    return (rows / rows.abs().amax(1, keepdim=True).clamp_min(1e-12)).flatten()


def lloyd_max(samples: torch.Tensor, n_levels: int = 16, iters: int = 60, max_samples: int = 2_000_000) -> torch.Tensor:
    """The MSE-optimal codebook for `samples` (1-D k-means / Lloyd-Max), started from evenly spaced quantiles."""
    validate.tensor(samples, "samples", kind="float")
    n_levels = validate.integer(n_levels, "n_levels", lo=2)
    iters = validate.integer(iters, "iters", lo=1)
    max_samples = validate.integer(max_samples, "max_samples", lo=2)
    x = samples.detach().double().flatten()
    x = x[:: max(1, x.numel() // max_samples)]  # a regular subsample keeps the fit fast
    if x.numel() < n_levels:
        raise ValueError(f"need at least {n_levels} samples to fit {n_levels} levels, got {x.numel()}")
    levels = torch.quantile(x[:: max(1, x.numel() // 1_000_000)], torch.linspace(0.01, 0.99, n_levels, dtype=torch.float64))
    for _ in range(iters):
        edges = (levels[1:] + levels[:-1]) / 2
        idx = torch.bucketize(x, edges)
        sums = torch.zeros(n_levels, dtype=torch.float64).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=n_levels).double()
        levels = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
    return levels


def bnb_roundtrip(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False):
    """Quantize with bitsandbytes' real kernel and dequantize again; return (reconstruction, quant_state, packed)."""
    import bitsandbytes.functional as bnbf

    check_bnb_4bit(quant_type, blocksize)
    validate.tensor(w, "w", dims=(1, 2, 3, 4), kind="float", todo="pass a weight tensor, e.g. a linear layer's [out, in]")
    validate.flag(double_quant, "double_quant")
    packed, state = bnbf.quantize_4bit(w.detach().float().contiguous(), blocksize=blocksize, quant_type=quant_type,
                                        compress_statistics=double_quant)
    return bnbf.dequantize_4bit(packed, state).reshape(w.shape), state, packed


def bnb_bits_per_weight(blocksize: int = 64, double_quant: bool = False, block2: int = 256, n: int | None = None) -> float:
    """quantize.storage_bits of bitsandbytes 4-bit: fp32 absmax per block, or 8-bit absmax + one fp32 per block2 of them.

    n: the weight count of one tensor, to count its last partial blocks and double quantization's fp32 offset exactly."""
    blocksize = validate.integer(blocksize, "blocksize", lo=1)
    validate.flag(double_quant, "double_quant")
    block2 = validate.integer(block2, "block2", lo=1)
    if n is not None:
        n = validate.integer(n, "n", lo=1)
        blocks = -(-n // blocksize)
        scale_bytes = blocks + 4 * -(-blocks // block2) + 4 if double_quant else 4 * blocks
        return 8 * (-(-n // 2) + scale_bytes) / n
    if not double_quant:
        return storage_bits(4, blocksize, 32)
    return storage_bits(storage_bits(4, blocksize, 8), blocksize * block2, 32)


def bnb_measured_bits_per_weight(packed: torch.Tensor, state) -> float:
    """Bits per weight counted from what bitsandbytes actually stores (packed codes, scales, nested scales, offset)."""
    validate.tensor(packed, "packed", finite=False)
    if not hasattr(state, "absmax") or not hasattr(state, "shape"):
        raise validate.BadInput("state must be the quant_state bitsandbytes returns (codebooks.bnb_roundtrip)")
    n_bytes = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if state.nested:
        n_bytes += state.state2.absmax.numel() * state.state2.absmax.element_size() + state.offset.element_size()
    n_weights = 1
    for d in state.shape:
        n_weights *= d
    return 8 * n_bytes / n_weights
