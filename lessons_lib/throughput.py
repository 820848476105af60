"""Lesson 08's measurements: GEMM points over rotating weight copies, and decode steps on a static KV cache.

scripts/benchmark.py runs them headlessly over every format and batch (the sections at the end of this module,
each checking a bench.Budget between measurements); the notebook calls them on a few.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import math
import os
import re
import statistics
import sys
import time
import traceback

import torch

from . import architecture, bench, kernels, validate


def error_text(e: BaseException) -> str:
    """The end of an exception's traceback, for a results file (every failure is data)."""
    if not isinstance(e, BaseException):
        raise validate.BadInput(f"e must be an exception, got {type(e).__name__}")
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:]


def finite(x):
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
    if torch.device(device).type == "cuda":  # a lookup: answered for CUDA on any machine
        return on_cuda
    # CPU: bf16 activations use bf16 arithmetic where the CPU has it, else fp32
    return "fp32" if on_cpu == "bf16" and not kernels.native_note("bf16", device)[0] else on_cpu


# ----------------------------------------------------------------------------------------------- GEMM sweep
def time_point(fn, args: list, device: torch.device, point_s: float) -> dict:
    """Eager timing (and, on CUDA, CUDA-graph timing) of fn over rotating args; seconds per call."""
    device = validate.device(device)
    if not isinstance(args, (list, tuple)) or not args:
        raise validate.BadInput("args must be a non-empty list of argument tuples (one per rotating copy)")
    validate.number(point_s, "point_s", 0, lo_open=True)
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
            out["graph_error"] = error_text(e)[-600:]
    return out


def timing_stats(secs: list) -> dict:
    """Median, IQR, quartiles and count of timed samples (seconds)."""
    med, iqr = bench.summarize(secs)
    q1, _, q3 = statistics.quantiles(secs, n=4)
    return {"median_s": med, "iqr_s": iqr, "q1_s": q1, "q3_s": q3, "repeats": len(secs)}


def rate_iqr(work: float, timing: dict) -> float:
    """IQR of work / time, from the time quartiles (1/x maps quartiles to quartiles)."""
    if not isinstance(timing, dict) or not {"q1_s", "q3_s"} <= set(timing):
        raise validate.BadInput("timing must be a dict with q1_s and q3_s, as bench.summarize returns")
    for q in ("q1_s", "q3_s"):
        validate.number(timing[q], f"timing[{q!r}]", 0, lo_open=True, todo="a time too short for the clock to see "
                        "has no rate: time more work per call (a larger batch or more repeats)")
    return validate.number(work, "work", 0) / timing["q1_s"] - work / timing["q3_s"]


def gemm_point(copies: list, batch: int, bw: float | None, peaks: dict, device: torch.device, point_s: float = 0.1) -> dict:
    """Time y = x @ W.T at one batch size over rotating weight copies; add bytes, FLOPs, rates and roofline fraction."""
    device = validate.device(device)
    if not isinstance(copies, (list, tuple)) or not copies:
        raise validate.BadInput("copies must be a non-empty list of quantized weights (throughput.rotating_copies)")
    batch = validate.integer(batch, "batch", lo=1)
    qw = copies[0]
    fmt, out_f, in_f = qw.fmt, qw.out_features, qw.in_features
    p = {"format": fmt, "out": out_f, "in": in_f, "batch": batch, "weight_bytes": qw.nbytes,
         "copies": len(copies), "act_dtype": str(qw.act_dtype).replace("torch.", "")}
    try:
        xs = [torch.randn(batch, in_f, device=device).to(qw.act_dtype) for _ in range(2)]
        args = [(copies[i % len(copies)], xs[i % 2]) for i in range(max(len(copies), 2))]
        p.update(time_point(lambda q, x: q(x), args, device, point_s))
    except Exception as e:  # noqa: BLE001
        p["error"] = error_text(e)[-1500:]
        return p
    best = p.get("graph", p["eager"])
    p["timer"] = "graph" if "graph" in p else "eager"
    act = torch.empty((), dtype=qw.act_dtype).element_size()
    flops = bench.gemm_flops(batch, out_f, in_f)
    moved = bench.gemm_bytes(batch, out_f, in_f, qw.nbytes, act, act)
    t = best["median_s"]
    p.update(flops=flops, bytes_moved=moved, intensity=finite(bench.arithmetic_intensity(flops, moved)),
             gb_per_s=finite(moved / t / 1e9), gb_per_s_iqr=finite(rate_iqr(moved, best) / 1e9),
             tflops=finite(flops / t / 1e12), tflops_iqr=finite(rate_iqr(flops, best) / 1e12))
    peak = peaks.get(compute_dtype(fmt, device))
    if bw and peak:
        p["roof_dtype"] = compute_dtype(fmt, device)
        p["roofline_s"] = finite(bench.roofline_time(flops, moved, peak, bw))
        p["fraction_of_roofline"] = finite(bench.roofline_fraction(t, flops, moved, peak, bw))
        p["bound"] = "memory" if moved / bw >= flops / peak else "compute"
    return p


def set_cache_length(cache, n: int) -> None:
    """Make a StaticCache believe it holds n tokens (its contents do not change decode speed)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(n)


def new_cache(model, batch: int, max_len: int, device: torch.device):
    """A StaticCache allocated up front for `batch` sequences of up to max_len tokens."""
    validate.causal_lm(model)
    device = validate.device(device)
    batch = validate.integer(batch, "batch", lo=1)
    max_len = validate.integer(max_len, "max_len", lo=1)
    from transformers import StaticCache  # noqa: PLC0415

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cache = StaticCache(config=c, max_cache_len=max_len)
    dtype = architecture.embedding(model).weight.dtype
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    cache.early_initialization(batch, kv_heads, head_dim, dtype, device)
    return cache


def cache_bytes_of(cache) -> int:
    """Bytes of a StaticCache's key and value tensors."""
    if not hasattr(cache, "layers"):
        raise validate.BadInput(f"cache must be a transformers StaticCache (throughput.new_cache), got {type(cache).__name__}")
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def step(model, cache, tok: torch.Tensor) -> torch.Tensor:
    """One forward on the cache; returns the next greedy token [batch, 1]."""
    logits = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def time_prefill(model, device, batch: int, prompt: int, vocab: int, reps: int = 5) -> dict:
    """Prefill of `prompt` tokens, timed `reps` times on a fresh cache length (eager)."""
    device = _timed(model, device, batch=batch, prompt=prompt, vocab=vocab)
    reps = validate.integer(reps, "reps", lo=4, todo="at least 4 runs to report a spread")
    cache = new_cache(model, batch, prompt + 8, device)
    ids = torch.randint(0, vocab, (batch, prompt), device=device)

    def once(i):
        set_cache_length(cache, 0)
        step(model, cache, ids)

    secs = bench.samples(once, warmup=1, repeats=reps, device=device)
    med, iqr = bench.summarize(secs)
    return {"median_s": med, "iqr_s": iqr, "tokens_per_s": batch * prompt / med,
            "tokens_per_s_iqr": bench.rate(batch * prompt, secs)[1]}


def _timed(model, device, **counts) -> torch.device:
    """The checks every timer shares: a model, a device torch can use here, whole positive counts (new_cache then
    checks that the model is a causal LM)."""
    validate.model(model)
    for name, v in counts.items():
        validate.integer(v, name, lo=1)
    _fits(model, counts.get("prompt", 0) + counts.get("new_tokens", 0), counts.get("vocab"))
    return validate.device(device)


def _fits(model, positions: int, vocab: int | None = None) -> None:
    """Refuse more positions than the model's config allows, or random token ids beyond its vocabulary."""
    most = architecture.max_positions(model)
    if most is not None and positions > most:
        raise validate.BadInput(f"{positions} positions (prompt and new tokens) do not fit the model's {most}: "
                                "time a shorter prompt or fewer new tokens")
    size = validate.vocab_size(model)
    if vocab is not None and size is not None and vocab > size:
        raise validate.BadInput(f"vocab {vocab} is larger than the model's vocabulary of {size}: token ids that large "
                                "fail inside the embedding; pass model.config.vocab_size")


def steps_that_fit(seconds_per_step: float, new_tokens: int, max_s: float) -> int:
    """Timed decode steps: new_tokens, fewer when a step is slow (at least 8)."""
    validate.number(seconds_per_step, "seconds_per_step", 0)
    new_tokens = validate.integer(new_tokens, "new_tokens", lo=1)
    validate.number(max_s, "max_s", 0, lo_open=True)
    return max(8, min(new_tokens, int(max_s / max(seconds_per_step, 1e-9))))


def time_decode_eager(model, device, batch: int, prompt: int, new_tokens: int, vocab: int,
                      max_s: float = 10.0) -> dict:
    """Per-token decode latency, eager: one Python-launched forward per token."""
    device = _timed(model, device, batch=batch, prompt=prompt, new_tokens=new_tokens, vocab=vocab)
    validate.number(max_s, "max_s", 0, lo_open=True)
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
    device = _timed(model, device, batch=batch, prompt=prompt, new_tokens=new_tokens, vocab=vocab)
    if device.type != "cuda":
        raise validate.BadInput("CUDA graphs need a CUDA device: use time_decode_eager on a CPU")
    validate.number(max_s, "max_s", 0, lo_open=True)
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
    validate.model(model)
    linear = kernels.linear_bytes(model)
    seen = {id(p) for m in model.modules() if isinstance(m, (torch.nn.Linear, kernels.QuantLinear))
            for p in m.parameters(recurse=False)}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in seen)
    return linear + other


def bytes_read_per_token(model) -> int:
    """Weight bytes one decode step reads: every linear (the head included) and the norms; one embedding row."""
    validate.model(model)
    emb = architecture.embedding(model).weight
    tied = architecture.head(model).weight.data_ptr() == emb.data_ptr()
    total = model_weight_bytes(model) - emb.numel() * emb.element_size() + emb.shape[1] * emb.element_size()
    return total + (emb.numel() * emb.element_size() if tied else 0)


def crossover_batch(out_features: int, in_features: int, weight_bytes: float, act_bytes: float, peak_flops: float,
                    bandwidth: float, most: int = 1 << 16) -> int | None:
    """Smallest batch at which y = x @ W.T takes longer to compute (at peak) than to move (at bandwidth)."""
    for name, v in (("peak_flops", peak_flops), ("bandwidth", bandwidth), ("act_bytes", act_bytes)):
        validate.number(v, name, 0, lo_open=True)
    most = validate.integer(most, "most", lo=1)
    for batch in range(1, most + 1):
        flops = bench.gemm_flops(batch, out_features, in_features)
        moved = bench.gemm_bytes(batch, out_features, in_features, weight_bytes, act_bytes, act_bytes)
        if flops / peak_flops >= moved / bandwidth:
            return batch
    return None


# ----------------------------------------------------------------------------------------------- benchmark sections
# Largest batch timed per (device type, format), where the kernel is naive or emulated and slows down a lot.
GEMM_BATCH_CAP = {("cuda", "int8_weight_only"): 64, ("cpu", "fp8_w8a8"): 16, ("cpu", "nf4"): 16, ("cpu", "fp16"): 16}
DECODE_BATCH_CAP = {("cuda", "int8_weight_only"): 1, ("cpu", "nf4"): 1, ("cpu", "fp8_w8a8"): 1}
# Batch-1 decode bars on a GPU: bf16 reaches 70% of its bandwidth floor, best 4-bit 2.5x bf16, FP8 1.6x bf16.
DECODE_TARGETS = {"bf16_fraction_of_floor": 0.70, "best_4bit_speedup": 2.5, "fp8_speedup": 1.6}


def batch_cap(fmt: str, device: torch.device, decode: bool = False) -> int:
    """The largest batch worth timing for `fmt` on this device type (GEMM sweep, or decode)."""
    kernels.format_info(fmt)  # an unknown name is a KeyError naming the formats
    return (DECODE_BATCH_CAP if decode else GEMM_BATCH_CAP).get((kernels.as_device(device).type, fmt), 1 << 30)


def strict_json(o):
    """A copy of nested results with nan/inf floats as None (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): strict_json(v) for k, v in o.items()}
    return [strict_json(v) for v in o] if isinstance(o, (list, tuple)) else o


def set_cpu_threads(device: torch.device, threads: int | None = None) -> str:
    """Set torch's CPU threads: as asked, else only the cores other processes leave free (returns a note).

    Threads that wait on each other at every op stall whenever one of them is descheduled: on a 2-core machine
    already running one busy process, two threads made decode 10-40x slower than one thread.
    """
    if threads is not None:
        threads = validate.integer(threads, "threads", lo=1, todo="pass how many CPU threads torch may use, or None "
                                   "to leave those other processes need")
        torch.set_num_threads(threads)
        return f"torch CPU threads set to {threads} (--threads)"
    if torch.device(device).type != "cpu" or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    free = max(1, int(cores - load + 0.5))
    if free >= torch.get_num_threads():
        return ""
    torch.set_num_threads(free)
    return f"torch CPU threads set to {free}: load {load:.1f} on {cores} cores leaves {free} free (--threads overrides)"


def free_memory() -> None:
    """Between measurements: on CUDA, collect all garbage and release the cached blocks; on a CPU, where a tensor goes
    with its last reference, only the young garbage (a full collection costs 0.3 s once transformers is imported)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
    else:
        gc.collect(1)  # also keeps an automatic collection out of the timing that follows


def environment(device: torch.device) -> dict:
    """Device name and properties, versions, torch.utils.collect_env's report, date, and the CPU's load."""
    device = validate.device(device)
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from torch.utils import collect_env  # noqa: PLC0415

    info = collect_env.get_env_info()._asdict()
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device_type": device.type, "name": kernels.device_name(device), "torch": torch.__version__,
           "collect_env": {k: v.splitlines() if k in ("pip_packages", "cpu_info") and v else v for k, v in info.items()}}
    for pkg in ("transformers", "bitsandbytes", "triton", "torchao"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(compute_capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
                   multiprocessors=p.multi_processor_count, l2_cache_bytes=getattr(p, "L2_cache_size", None),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        return env
    l3 = re.search(r"L3 cache:\s*([\d.]+)\s*([KMG])iB", info.get("cpu_info") or "")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    env.update(cpu_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), load_average_1min=load,
               cpu_capability=torch.backends.cpu.get_cpu_capability(),
               l3_cache_bytes=int(float(l3[1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[l3[2]]) if l3 else None)
    if load is not None and load > 0.5:
        env["warning"] = (f"the machine was busy (load average {load:.1f} on {os.cpu_count()} cores): CPU timings are "
                          "unreliable; a descheduled thread stalls every op (try --threads 1, or a quiet machine)")
    return env


def ceilings(device: torch.device, bw_bytes: int, matmul_n: int, dtypes: list, log=print) -> dict:
    """Measured bandwidth and matmul peaks, beside the datasheet row when the GPU is in the GPU table."""
    from . import hardware  # noqa: PLC0415

    device, out = validate.device(device), {"bandwidth": None, "matmul": {}, "datasheet": None}
    try:
        out["bandwidth"] = bench.measure_bandwidth(device, bw_bytes)
        log(f"bandwidth {out['bandwidth']['gb_per_s']:.0f} GB/s (iqr {out['bandwidth']['gb_per_s_iqr']:.0f})")
    except Exception as e:  # noqa: BLE001
        out["bandwidth"] = {"error": error_text(e)}
    try:  # decode streams its weights: its floor uses a read, not a copy
        out["read_bandwidth"] = bench.measure_read_bandwidth(device, bw_bytes)
        log(f"read bandwidth {out['read_bandwidth']['gb_per_s']:.0f} GB/s (sum reduction)")
    except Exception as e:  # noqa: BLE001
        out["read_bandwidth"] = {"error": error_text(e)}
    for dtype in dtypes:
        try:
            out["matmul"][dtype] = r = bench.measure_matmul_peak(device, dtype, matmul_n)
            log(f"matmul {dtype}: {r['tflops']:.1f} TFLOP/s (iqr {r['tflops_iqr']:.1f})")
        except Exception as e:  # noqa: BLE001
            out["matmul"][dtype] = {"error": error_text(e)}
        free_memory()
    name = bench.match_gpu(kernels.device_name(device)) if device.type == "cuda" else None
    if name:
        g = hardware.gpu(name)
        out["datasheet"] = {"table_name": g.name, "bandwidth_gbs": g.bandwidth_gbs, "rates_tflops": g.rates,
                            "source": g.source, "notes": g.notes}
        col = {"fp32": "fp32_tflops", "bf16": "bf16_tflops", "fp16": "fp16_tflops", "int8": "int8_tops",
               "fp8": "fp8_tflops"}
        ratios = {"bandwidth": finite(out["bandwidth"]["gb_per_s"] / g.bandwidth_gbs)} \
            if "gb_per_s" in out["bandwidth"] else {}
        ratios.update({d: finite(r["tflops"] / g.rates[col[d]]) for d, r in out["matmul"].items()
                       if "tflops" in r and g.rates.get(col[d])})
        out["measured_vs_datasheet"] = ratios
    elif device.type == "cuda":
        out["datasheet"] = {"error": f"no row of the GPU table matches {kernels.device_name(device)!r}"}
    return out


def ceiling_values(ceil: dict) -> tuple[float | None, dict]:
    """(bandwidth bytes/s, {dtype: FLOP/s}) from measured ceilings, skipping the failed ones."""
    if not isinstance(ceil, dict):
        raise validate.BadInput(f"ceil must be the dict throughput.ceilings returns, got {type(ceil).__name__}")
    bw = (ceil.get("bandwidth") or {}).get("gb_per_s")
    return (bw * 1e9 if bw else None), {d: r["tflops"] * 1e12 for d, r in ceil.get("matmul", {}).items() if "tflops" in r}


def _group(fmt: str, group_size: int | None) -> int | None:
    """The run's int4 group size for the int4 kernel; every other format keeps its own default."""
    return group_size if fmt == "int4_weight_only" else None


def gemm_format(w: torch.Tensor, fmt: str, batches: list, bw, peaks: dict, rotate_bytes: int, point_s: float,
                group_size: int | None = None, options: dict | None = None, log=print) -> list[dict]:
    """gemm_point at every batch of one format on one weight: quantized and checked once, over rotating copies."""
    (out_f, in_f), device = w.shape, w.device
    try:
        qw = kernels.quantize(fmt, w, group_size=_group(fmt, group_size), **(options or {}))
        err = kernels.check(qw, torch.randn(8, in_f, device=device), w)
        copies = rotating_copies(qw, rotate_bytes)
    except Exception as e:  # noqa: BLE001
        log(f"gemm {fmt} {out_f}x{in_f}: prepare failed {type(e).__name__}")
        return [{"format": fmt, "out": out_f, "in": in_f, "error": error_text(e)}]
    cap, points = batch_cap(fmt, device), []
    for batch in batches:
        if batch > cap:
            points.append({"format": fmt, "out": out_f, "in": in_f, "batch": batch,
                           "skipped": f"batch above {cap}: {kernels.native_note(fmt, device)[1]}"})
        else:
            points.append({**gemm_point(copies, batch, bw, peaks, device, point_s), "check": err})
    log(f"gemm {fmt:16s} {out_f}x{in_f} copies={len(copies)} err={err['kernel_error']:.1e} TFLOP/s by batch "
        + " ".join(f"{p['batch']}:{p.get('tflops') or float('nan'):.2g}" for p in points if "skipped" not in p))
    return points


def gemm_sweep(device: torch.device, shapes: list, batches: list, formats: list, probe: dict, bw, peaks: dict,
               budget: bench.Budget, until_s: float, rotate_bytes: int, point_s: float,
               group_size: int | None = None, points: list | None = None) -> list[dict]:
    """y = x @ W.T for every format, shape and batch; stops starting formats once budget.elapsed() > until_s."""
    device, points = validate.device(device), [] if points is None else points
    for out_f, in_f in shapes:
        gen = torch.Generator().manual_seed(out_f * 7 + in_f)
        w = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(device)
        for fmt in formats:
            if budget.elapsed() > until_s:
                budget.skip(f"gemm {out_f}x{in_f} {fmt} and later", "GEMM share of the budget used", for_budget=True)
                break
            points += gemm_format(w, fmt, batches, bw, peaks, rotate_bytes, point_s, group_size,
                                  probe[fmt].get("options", {}), budget.log)
            free_memory()
        del w
    return points


def random_llama(device: torch.device, shape: dict, dtype: torch.dtype = torch.bfloat16):
    """A LlamaForCausalLM of the given config shape with random weights, built on the device (speed only)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    device = validate.device(device)
    if not isinstance(shape, dict) or not {"hidden_size", "num_hidden_layers"} <= set(shape):
        raise validate.BadInput(f"shape must be a dict of LlamaConfig sizes with at least hidden_size and "
                                f"num_hidden_layers (LlamaConfig's defaults build a 6.7B model), got {shape!r}")
    config = LlamaConfig(**shape, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def guarded(fn, *args, **kwargs) -> dict:
    """fn(*args, **kwargs), or {'error': ...} if it raised; device memory is freed either way."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return {"error": error_text(e)[-1500:]}
    finally:
        free_memory()


def in_format(model, fmt: str, base: str, group_size: int | None = None, options: dict | None = None):
    """(model with its decoder linears in `fmt`, originals to restore or None): a converted copy on a CPU."""
    device = next(model.parameters()).device
    work = copy.deepcopy(model).to(kernels.default_act_dtype(fmt, device)) if fmt != base and device.type == "cpu" \
        else model
    if fmt in (base, "fp32", "bf16", "fp16"):
        return work, None
    opts = {"group_size": _group(fmt, group_size), **({"keep_codes": False} if fmt == "int4_weight_only" else {})}
    originals = kernels.swap_linears(work, fmt, **opts, **(options or {}))
    return work, (originals if work is model else None)


def decode_format(model, fmt: str, base: str, batches: list, prompt: int, new_tokens: int, mode_s: float,
                  budget: bench.Budget, group_size: int | None = None, options: dict | None = None) -> dict:
    """One format end to end: convert the decoder linears, time prefill and decode per batch, convert back."""
    device = next(model.parameters()).device
    t0 = time.monotonic()
    work, originals = in_format(model, fmt, base, group_size, options)
    res = {"format": fmt, "batches": {}, "convert_s": time.monotonic() - t0,
           "act_dtype": str(kernels.default_act_dtype(fmt, device)).replace("torch.", "")}
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            res["kept_aside_bytes"] = sum(p.numel() * p.element_size() for lin in (originals or {}).values()
                                          for p in lin.parameters())
        res.update(weight_bytes=model_weight_bytes(work), bytes_read_per_token=bytes_read_per_token(work))
        for batch in batches:
            if batch > batch_cap(fmt, device, decode=True):
                budget.skip(f"decode {fmt} batch {batch}", f"batch above the cap: {kernels.native_note(fmt, device)[1]}")
            elif budget.allows(f"decode {fmt} batch {batch}", 8):
                res["batches"][str(batch)] = decode_batch(work, batch, prompt, new_tokens, min(mode_s, budget.left()))
                budget.log(f"decode {fmt:16s} batch {batch}: " + " ".join(
                    f"{k}={v.get('tokens_per_s') or float('nan'):.1f}tok/s"
                    for k, v in res["batches"][str(batch)].items() if isinstance(v, dict)))
        if device.type == "cuda":
            res.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                       peak_note="includes the bf16 linears kept aside to restore (kept_aside_bytes)")
    finally:
        if originals is not None:
            kernels.restore_linears(work, originals)
        del work
        free_memory()
    return res


def decode_batch(model, batch: int, prompt: int, new_tokens: int, mode_s: float) -> dict:
    """Prefill (batch 1 only) and decode at one batch size: eager, and on CUDA as one CUDA graph per step."""
    device, vocab = next(model.parameters()).device, model.config.vocab_size
    graphs, out = device.type == "cuda", {}
    timing = (device, batch, prompt, new_tokens, vocab, mode_s)
    with torch.no_grad():
        if batch == 1:
            out["prefill"] = guarded(time_prefill, model, device, batch, prompt, vocab)
        if batch == 1 or not graphs:
            out["eager"] = guarded(time_decode_eager, model, *timing)
        if graphs:
            out["graph"] = guarded(time_decode_graph, model, *timing)
            if "error" in out["graph"] and "eager" not in out:  # no graph for this format: eager instead
                out["eager"] = guarded(time_decode_eager, model, *timing)
    eager, graph = out.get("eager", {}).get("tokens_per_s"), out.get("graph", {}).get("tokens_per_s")
    if eager and graph:
        out["graph_over_eager"] = graph / eager  # what removing launch overhead is worth at this batch
    return out


def best_tokens_per_s(r: dict, batch: int) -> float | None:
    """Best decode tokens/s of one format's results at a batch size, over the timing modes that worked."""
    modes = r.get("batches", {}).get(str(batch), {})
    vals = [m["tokens_per_s"] for k, m in modes.items() if k != "prefill" and isinstance(m, dict) and "tokens_per_s" in m]
    vals += [r["compiled"]["tokens_per_s"]] if batch == 1 and "tokens_per_s" in r.get("compiled", {}) else []
    return max(vals) if vals else None


def decode_floors(dec: dict, ceil: dict) -> dict:
    """Per format: weight bytes per token / measured read bandwidth (copy where none) = least batch-1 step time."""
    read = (ceil.get("read_bandwidth") or {}).get("gb_per_s")
    bw = read * 1e9 if read else ceiling_values(ceil)[0]
    floors = {}
    for r in dec["results"]:
        if "bytes_read_per_token" in r and bw:
            floor_s, best = r["bytes_read_per_token"] / bw, best_tokens_per_s(r, 1)
            floors[r["format"]] = {"bytes_read_per_token": r["bytes_read_per_token"], "floor_step_s": floor_s,
                                   "floor_tokens_per_s": 1 / floor_s, "best_batch1_tokens_per_s": best,
                                   "fraction_of_floor": finite(best * floor_s) if best else None,
                                   "floor_bandwidth": "read (sum reduction)" if read else "copy (read + written)"}
    return floors


def _bar(measured: float | None, target: float) -> dict:
    return {"measured": finite(measured), "target": target, "met": None if measured is None else measured >= target}


def decode_targets(dec: dict) -> dict:
    """DECODE_TARGETS, measured at batch 1: bf16's fraction of its floor, best 4-bit and FP8 speedups over bf16."""
    by = {r["format"]: best_tokens_per_s(r, 1) for r in dec["results"] if "batches" in r}
    by = {f: v for f, v in by.items() if v}
    bf16, four = by.get("bf16"), {f: by[f] for f in ("int4_weight_only", "nf4") if f in by}
    best4 = max(four, key=four.get) if four else None
    out = {"bf16_fraction_of_floor": _bar(dec.get("floors", {}).get("bf16", {}).get("fraction_of_floor"),
                                          DECODE_TARGETS["bf16_fraction_of_floor"]),
           "best_4bit_speedup": {**_bar(four[best4] / bf16 if bf16 and best4 else None,
                                        DECODE_TARGETS["best_4bit_speedup"]), **({"format": best4} if bf16 and best4 else {})},
           "fp8_speedup": _bar(by["fp8_w8a8"] / bf16 if bf16 and "fp8_w8a8" in by else None, DECODE_TARGETS["fp8_speedup"])}
    out["speedup_vs_bf16_batch1"] = {f: finite(v / bf16) for f, v in by.items()} if bf16 else {}
    out["compared"] = "best batch-1 decode tokens/s of each format over eager, CUDA graph and torch.compile"
    return out


def compiled_decode(model, prompt: int, new_tokens: int, mode: str = "reduce-overhead", log=print) -> dict:
    """Batch-1 decode steps of the model as it stands under torch.compile: compile time and tokens/s."""
    device, vocab = next(model.parameters()).device, model.config.vocab_size
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, mode=mode, dynamic=False)
        cache = new_cache(model, 1, prompt + new_tokens + 16, device)
        set_cache_length(cache, prompt)
        state = {"tok": torch.randint(0, vocab, (1, 1), device=device)}

        def once(i):  # cudagraph trees need the output cloned before the next replay
            state["tok"] = step(compiled, cache, state["tok"]).clone()

        t0 = time.monotonic()
        for i in range(3):  # the first calls compile (and record the CUDA graph)
            once(i)
        bench.synchronize(device)
        warm_s = time.monotonic() - t0
        log(f"compile: first 3 steps took {warm_s:.1f} s")
        secs = bench.samples(once, warmup=0, repeats=new_tokens, device=device)
    torch._dynamo.reset()
    return {"compile_and_warmup_s": warm_s, "mode": mode, **decode_result(secs, 1, cache)}


# ----------------------------------------------------------------------------------------------- the byte law
LINEAR_OPS = ("aten::mm", "aten::addmm", "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
              "aten::_weight_int4pack_mm", "aten::_int_mm", "aten::_scaled_mm")


def decode_vs_floor(model, formats: list, read_bw: float, prompt: int = 64, new_tokens: int = 16,
                    compiled: bool | tuple = True, group_size: int | None = 64, max_s: float = 5.0, log=print,
                    base: str = "fp32") -> list[dict]:
    """Batch-1 decode per format, eager and under torch.compile side by side, each against its bandwidth floor.

    The floor is bytes read per token / read_bw (a streaming read, bench.measure_read_bandwidth): the least time a
    step can take if it did nothing but read its weights. Speedups are over the first format (fp32); `base` is the
    model's own format (the others are converted copies); `compiled` is True, False, or the formats to compile."""
    validate.causal_lm(model)
    validate.number(read_bw, "read_bw", 0, lo_open=True, todo="bytes per second, from bench.measure_read_bandwidth")
    if isinstance(formats, str) or not isinstance(formats, (list, tuple)) or not formats:
        raise validate.BadInput(f"formats must be a non-empty list of kernels.FORMATS names, got {formats!r}")
    device, vocab = next(model.parameters()).device, model.config.vocab_size
    rows = []
    for fmt in formats:
        work, originals = in_format(model, fmt, base, group_size)
        try:
            with torch.no_grad():
                moved = bytes_read_per_token(work)
                row = {"format": fmt, "bytes_read_per_token": moved, "floor_s": moved / read_bw,
                       "eager": time_decode_eager(work, device, 1, prompt, new_tokens, vocab, max_s)}
                if compiled is True or (compiled and fmt in compiled):
                    row["compiled"] = compiled_decode(work, prompt, new_tokens, mode="default", log=log)
        finally:
            if originals is not None:
                kernels.restore_linears(work, originals)
            del work
            free_memory()
        for mode in ("eager", "compiled"):
            if mode in row:
                row[f"{mode}_fraction_of_floor"] = row["floor_s"] / row[mode]["step_median_s"]
        rows.append(row)
        log(f"byte law {fmt:16s} floor {row['floor_s'] * 1e3:.1f} ms, eager {row['eager']['step_median_s'] * 1e3:.1f} ms"
            + (f", compiled {row['compiled']['step_median_s'] * 1e3:.1f} ms" if "compiled" in row else ""))
    first = rows[0]
    for row in rows:
        row["bytes_ratio"] = first["bytes_read_per_token"] / row["bytes_read_per_token"]
        for mode in ("eager", "compiled"):
            if mode in row and mode in first:
                row[f"{mode}_speedup"] = first[mode]["step_median_s"] / row[mode]["step_median_s"]
    return rows


@contextlib.contextmanager
def _c_stderr_to_null():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs a line at each start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decode_profile(model, prompt: int = 64, steps: int = 4) -> dict:
    """Where a batch-1 decode step's time goes (torch.profiler): linear kernels, attention, other ops, the rest.

    'the rest' is wall time outside any torch op: Python, module calls, dispatch (and the profiler's own cost).
    The linear kernels' bytes / their time is the bandwidth they reach, to set beside the measured read bandwidth."""
    validate.causal_lm(model)
    prompt = validate.integer(prompt, "prompt", lo=1)
    steps = validate.integer(steps, "steps", lo=1)
    _fits(model, prompt + max(steps, 2))  # two warm-up steps, then the profiled ones, from the same position
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    device, vocab = next(model.parameters()).device, model.config.vocab_size
    cache = new_cache(model, 1, prompt + steps + 8, device)
    tok = torch.randint(0, vocab, (1, 1), device=device)
    with torch.no_grad():
        set_cache_length(cache, prompt)
        for _ in range(2):
            tok = step(model, cache, tok)
        set_cache_length(cache, prompt)
        with _c_stderr_to_null(), profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = step(model, cache, tok)
            wall = (time.perf_counter() - t0) / steps
    ms = {"linear kernels": 0.0, "attention": 0.0, "other torch ops": 0.0}
    for e in prof.key_averages():
        kind = "linear kernels" if e.key in LINEAR_OPS else "attention" if "scaled_dot_product" in e.key else \
            "other torch ops" if e.key.startswith("aten::") else None
        if kind:
            ms[kind] += e.self_cpu_time_total / 1e3 / steps
    ms["Python, modules, dispatch"] = max(0.0, wall * 1e3 - sum(ms.values()))
    linear = kernels.linear_bytes(model)  # the head included
    return {"step_ms": wall * 1e3, "ms": ms, "linear_bytes": linear,
            "linear_gb_per_s": linear / (ms["linear kernels"] / 1e3) / 1e9 if ms["linear kernels"] else None}
