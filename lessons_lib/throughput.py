"""Lesson 08's measurements: GEMM points over rotating weight copies, and decode steps on a static KV cache.

scripts/benchmark.py runs them headlessly over every format and batch; the notebook calls them on a few.
"""
from __future__ import annotations

import math
import statistics
import time
import traceback

import torch

from . import bench, kernels


def _error_text(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:]


def _finite(x):
    """x rounded to 6 significant digits, or None for nan/inf/None (strict JSON)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def rotating_copies(qw: kernels.QuantWeight, rotate_bytes: int, most: int = 512) -> list:
    """qw and clones of it, enough that cycling through them reads `rotate_bytes` (so no call finds W in cache)."""
    return [qw] + [qw.clone() for _ in range(max(2, min(most, math.ceil(rotate_bytes / qw.nbytes))) - 1)]


def compute_dtype(fmt: str, device: torch.device) -> str:
    """Which measured matmul peak bounds a format's compute (its roofline roof)."""
    on_cuda, on_cpu = kernels.format_info(fmt).computes_in
    if device.type == "cuda":
        return on_cuda
    # CPU: bf16 activations use bf16 arithmetic where the CPU has it, else fp32
    return "fp32" if on_cpu == "bf16" and not kernels.native_note("bf16", device)[0] else on_cpu


# ----------------------------------------------------------------------------------------------- GEMM sweep
def time_point(fn, args: list, device: torch.device, point_s: float) -> dict:
    """Eager timing (and, on CUDA, CUDA-graph timing) of fn over rotating args; seconds per call."""
    n = len(args)
    call = lambda i: fn(*args[i % n])  # noqa: E731  (consecutive calls use different copies)
    t1 = statistics.median(bench.samples(call, warmup=2, repeats=4, inner=1, device=device))
    inner = max(1, min(n, round(1e-3 / max(t1, 1e-9))))  # samples of about 1 ms or more
    repeats = bench.adaptive_repeats(t1 * inner, point_s, lo=6, hi=200)
    secs = bench.samples(call, warmup=inner, repeats=repeats, inner=inner, device=device)
    out = {"eager": timing_stats(secs), "calls_per_sample": inner}
    if device.type == "cuda":
        try:
            out["graph"] = timing_stats(bench.graph_samples(fn, args, bench.adaptive_repeats(t1 * n, point_s, 6, 100)))
        except Exception as e:  # noqa: BLE001
            out["graph_error"] = _error_text(e)[-600:]
    return out


def timing_stats(secs: list) -> dict:
    """Median, IQR, quartiles and count of timed samples (seconds)."""
    med, iqr = bench.summarize(secs)
    q1, _, q3 = statistics.quantiles(secs, n=4)
    return {"median_s": med, "iqr_s": iqr, "q1_s": q1, "q3_s": q3, "repeats": len(secs)}


def rate_iqr(work: float, timing: dict) -> float:
    """IQR of work / time, from the time quartiles (1/x maps quartiles to quartiles)."""
    return work / timing["q1_s"] - work / timing["q3_s"]


def gemm_point(copies: list, batch: int, bw: float | None, peaks: dict, device: torch.device, point_s: float = 0.1) -> dict:
    """Time y = x @ W.T at one batch size over rotating weight copies; add bytes, FLOPs, rates and roofline fraction."""
    qw = copies[0]
    fmt, out_f, in_f = qw.fmt, qw.out_features, qw.in_features
    p = {"format": fmt, "out": out_f, "in": in_f, "batch": batch, "weight_bytes": qw.nbytes,
         "copies": len(copies), "act_dtype": str(qw.act_dtype).replace("torch.", "")}
    try:
        xs = [torch.randn(batch, in_f, device=device).to(qw.act_dtype) for _ in range(2)]
        args = [(copies[i % len(copies)], xs[i % 2]) for i in range(max(len(copies), 2))]
        p.update(time_point(lambda q, x: q(x), args, device, point_s))
    except Exception as e:  # noqa: BLE001
        p["error"] = _error_text(e)[-1500:]
        return p
    best = p.get("graph", p["eager"])
    p["timer"] = "graph" if "graph" in p else "eager"
    act = torch.empty((), dtype=qw.act_dtype).element_size()
    flops = bench.gemm_flops(batch, out_f, in_f)
    moved = bench.gemm_bytes(batch, out_f, in_f, qw.nbytes, act, act)
    t = best["median_s"]
    p.update(flops=flops, bytes_moved=moved, intensity=_finite(bench.arithmetic_intensity(flops, moved)),
             gb_per_s=_finite(moved / t / 1e9), gb_per_s_iqr=_finite(rate_iqr(moved, best) / 1e9),
             tflops=_finite(flops / t / 1e12), tflops_iqr=_finite(rate_iqr(flops, best) / 1e12))
    peak = peaks.get(compute_dtype(fmt, device))
    if bw and peak:
        p["roof_dtype"] = compute_dtype(fmt, device)
        p["roofline_s"] = _finite(bench.roofline_time(flops, moved, peak, bw))
        p["fraction_of_roofline"] = _finite(bench.roofline_fraction(t, flops, moved, peak, bw))
        p["bound"] = "memory" if moved / bw >= flops / peak else "compute"
    return p


def set_cache_length(cache, n: int) -> None:
    """Make a StaticCache believe it holds n tokens (its contents do not change decode speed)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(n)


def new_cache(model, batch: int, max_len: int, device: torch.device):
    """A StaticCache allocated up front for `batch` sequences of up to max_len tokens."""
    from transformers import StaticCache  # noqa: PLC0415

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cache = StaticCache(config=c, max_cache_len=max_len)
    dtype = model.model.embed_tokens.weight.dtype
    cache.early_initialization(batch, c.num_key_value_heads, head_dim, dtype, device)
    return cache


def cache_bytes_of(cache) -> int:
    """Bytes of a StaticCache's key and value tensors."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def step(model, cache, tok: torch.Tensor) -> torch.Tensor:
    """One forward on the cache; returns the next greedy token [batch, 1]."""
    logits = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def time_prefill(model, device, batch: int, prompt: int, vocab: int, reps: int = 5) -> dict:
    """Prefill of `prompt` tokens, timed `reps` times on a fresh cache length (eager)."""
    cache = new_cache(model, batch, prompt + 8, device)
    ids = torch.randint(0, vocab, (batch, prompt), device=device)

    def once(i):
        set_cache_length(cache, 0)
        step(model, cache, ids)

    secs = bench.samples(once, warmup=1, repeats=reps, device=device)
    med, iqr = bench.summarize(secs)
    return {"median_s": med, "iqr_s": iqr, "tokens_per_s": batch * prompt / med,
            "tokens_per_s_iqr": bench.rate(batch * prompt, secs)[1]}


def steps_that_fit(seconds_per_step: float, new_tokens: int, max_s: float) -> int:
    """Timed decode steps: new_tokens, fewer when a step is slow (at least 8)."""
    return max(8, min(new_tokens, int(max_s / max(seconds_per_step, 1e-9))))


def time_decode_eager(model, device, batch: int, prompt: int, new_tokens: int, vocab: int,
                      max_s: float = 10.0) -> dict:
    """Per-token decode latency, eager: one Python-launched forward per token."""
    cache = new_cache(model, batch, prompt + new_tokens + 8, device)
    set_cache_length(cache, prompt)
    tok = torch.randint(0, vocab, (batch, 1), device=device)
    state = {"tok": tok}

    def once(i):
        state["tok"] = step(model, cache, state["tok"])

    warm = bench.samples(once, warmup=1, repeats=4, device=device)  # also warms up; then time from `prompt`
    set_cache_length(cache, prompt)
    secs = bench.samples(once, warmup=0, repeats=steps_that_fit(min(warm), new_tokens, max_s), device=device)
    return decode_result(secs, batch, cache)


def time_decode_graph(model, device, batch: int, prompt: int, new_tokens: int, vocab: int,
                      max_s: float = 10.0) -> dict:
    """Per-token decode latency with launch overhead removed: the whole step captured in one CUDA graph."""
    cache = new_cache(model, batch, prompt + new_tokens + 8, device)
    tok = torch.randint(0, vocab, (batch, 1), device=device)
    static = tok.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up off the capture stream (lazy init, cuBLAS workspaces)
        set_cache_length(cache, prompt)
        for _ in range(2):
            static.copy_(step(model, cache, static))
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    t0 = time.monotonic()
    with torch.cuda.graph(graph):
        static.copy_(step(model, cache, static))
    capture_s = time.monotonic() - t0
    set_cache_length(cache, prompt)
    static.copy_(tok)
    warm = bench.samples(lambda i: graph.replay(), warmup=0, repeats=4, device=device)
    set_cache_length(cache, prompt)
    steps = steps_that_fit(min(warm), new_tokens, max_s)
    secs = bench.samples(lambda i: graph.replay(), warmup=0, repeats=steps, device=device)
    result = decode_result(secs, batch, cache)
    result["capture_s"] = capture_s
    return result


def decode_result(secs: list, batch: int, cache) -> dict:
    med, iqr = bench.summarize(secs)
    tps, tps_iqr = bench.rate(batch, secs)
    return {"step_median_s": med, "step_iqr_s": iqr, "tokens_per_s": tps, "tokens_per_s_iqr": tps_iqr,
            "steps": len(secs), "kv_cache_bytes": cache_bytes_of(cache)}


def model_weight_bytes(model) -> int:
    """Bytes of every weight the model stores: quantized linears at their packed size, the rest as is."""
    linear = kernels.linear_bytes(model)
    seen = {id(p) for m in model.modules() if isinstance(m, (torch.nn.Linear, kernels.QuantLinear))
            for p in m.parameters(recurse=False)}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in seen)
    return linear + other


def bytes_read_per_token(model) -> int:
    """Weight bytes one decode step reads: every linear (lm_head included) and the norms; one embedding row."""
    emb = model.model.embed_tokens.weight
    tied = model.lm_head.weight.data_ptr() == emb.data_ptr()
    total = model_weight_bytes(model) - emb.numel() * emb.element_size() + emb.shape[1] * emb.element_size()
    return total + (emb.numel() * emb.element_size() if tied else 0)


def crossover_batch(out_features: int, in_features: int, weight_bytes: float, act_bytes: float, peak_flops: float,
                    bandwidth: float, most: int = 1 << 16) -> int | None:
    """Smallest batch at which y = x @ W.T takes longer to compute (at peak) than to move (at bandwidth)."""
    for batch in range(1, most + 1):
        flops = bench.gemm_flops(batch, out_features, in_features)
        moved = bench.gemm_bytes(batch, out_features, in_features, weight_bytes, act_bytes, act_bytes)
        if flops / peak_flops >= moved / bandwidth:
            return batch
    return None
